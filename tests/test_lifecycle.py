"""
Graceful stop (lbproxy.control.lifecycle) driven by a task.Clock.
"""

from __future__ import annotations

from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from lbproxy.control.events import EventBus
from lbproxy.control.lifecycle import ABORT_AFTER, IDrainable, Lifecycle, LocalDrain


class Conn:
    """
    A connection that records when it was closed or aborted and leaves
    its table when it goes (at once on abort, C{fin_delay} after close, or
    never if C{stubborn}).
    """

    def __init__(self, table: set, clock: task.Clock, stubborn: bool = False) -> None:
        self.table = table
        self.clock = clock
        self.stubborn = stubborn
        self.closed_at: float | None = None
        self.aborted_at: float | None = None
        table.add(self)

    def close(self, why: str) -> None:
        self.closed_at = self.clock.seconds()
        if not self.stubborn:
            self.table.discard(self)

    def abort(self, why: str) -> None:
        self.aborted_at = self.clock.seconds()
        self.table.discard(self)


class Engine:
    def __init__(self) -> None:
        self.open: set = set()
        self.accepting = True

    def stop_accepting(self) -> None:
        self.accepting = False


def make(clock: task.Clock) -> tuple[Engine, LocalDrain]:
    engine = Engine()
    drain = LocalDrain(clock, engine.stop_accepting, lambda: list(engine.open), lambda: len(engine.open))
    return engine, drain


def result_of(d: defer.Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def test_local_drain_provides_idrainable():
    """
    LocalDrain is an IDrainable.
    """
    clock = task.Clock()
    verifyObject(IDrainable, make(clock)[1])


def test_connections_that_end_within_grace_finish():
    """
    Accepting stops at once; connections that end before the grace period
    are never closed, and the drain fires as soon as the last one ends
    (not at the end of the grace period).
    """
    clock = task.Clock()
    engine, drain = make(clock)
    conns = [Conn(engine.open, clock) for _ in range(3)]
    out = result_of(drain.drain(30, 5))
    assert not engine.accepting
    assert out == []
    clock.advance(1)
    for c in conns:
        engine.open.discard(c)
    clock.advance(0.2)
    assert out == [(3, 0)]
    assert all(c.closed_at is None and c.aborted_at is None for c in conns)


def test_leftovers_are_closed_spread_over_the_window():
    """
    What is still open at the end of the grace period is closed one by one
    over the spread window, not all at once.
    """
    clock = task.Clock()
    engine, drain = make(clock)
    conns = [Conn(engine.open, clock) for _ in range(10)]
    out = result_of(drain.drain(2, 5))
    clock.pump([0.05] * 200)
    times = sorted(c.closed_at for c in conns)
    assert times[0] >= 2.0
    assert times[-1] - times[0] >= 0.8 * 5 * 9 / 10
    assert times[-1] <= 2 + 5
    assert out == [(0, 10)]


def test_connection_still_open_after_close_is_reset():
    """
    A connection still open ABORT_AFTER seconds after its FIN is reset.
    """
    clock = task.Clock()
    engine, drain = make(clock)
    stubborn = Conn(engine.open, clock, stubborn=True)
    out = result_of(drain.drain(1, 0))
    clock.advance(1)
    assert stubborn.closed_at == 1 and stubborn.aborted_at is None
    assert out == []
    clock.advance(ABORT_AFTER)
    assert stubborn.aborted_at == 1 + ABORT_AFTER
    clock.advance(0.1)
    assert out == [(0, 1)]


def test_force_resets_everything_now():
    """
    force() (a second SIGTERM) resets every open connection at once and
    fires the drain.
    """
    clock = task.Clock()
    engine, drain = make(clock)
    conns = [Conn(engine.open, clock) for _ in range(4)]
    out = result_of(drain.drain(30, 5))
    clock.advance(1)
    drain.force()
    assert [c.aborted_at for c in conns] == [1] * 4
    assert out == [(0, 4)]


def test_nothing_open_drains_at_once():
    """
    With no connection open the drain fires immediately.
    """
    clock = task.Clock()
    _, drain = make(clock)
    assert result_of(drain.drain(30, 5)) == [(0, 0)]


class FakeReactor(task.Clock):
    def __init__(self) -> None:
        super().__init__()
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1

    def callFromThread(self, f, *a):
        f(*a)


def test_lifecycle_states_events_and_exit():
    """
    The first signal makes the state C{stopping} (status and a lifecycle
    event say so), the process is stopped once drained, and the result
    counts finished and cut connections.
    """
    reactor = FakeReactor()
    engine, drain = make(reactor)
    conns = [Conn(engine.open, reactor) for _ in range(2)]
    events = EventBus()
    seen: list = []
    events.subscribe(lambda e: seen.append((e.type, e.data["state"])))
    life = Lifecycle(drain, reactor, grace=3, spread=1, events=events, install_signals=False)
    assert life.status() == {"state": "running"}
    life.signalled("SIGTERM")
    assert life.status()["state"] == "stopping"
    assert seen == [("lifecycle", "stopping")]
    engine.open.discard(conns[0])
    reactor.pump([0.1] * 60)
    assert life.result == (1, 1)
    assert reactor.stops == 1
    assert seen[-1] == ("lifecycle", "stopped")


def test_second_signal_stops_at_once():
    """
    A second SIGTERM while stopping cuts every connection and stops the
    process without waiting for the grace period.
    """
    reactor = FakeReactor()
    engine, drain = make(reactor)
    conns = [Conn(engine.open, reactor) for _ in range(3)]
    life = Lifecycle(drain, reactor, grace=30, spread=5, install_signals=False)
    life.signalled()
    reactor.advance(1)
    assert reactor.stops == 0
    life.signalled()
    assert reactor.stops == 1
    assert all(c.aborted_at == 1 for c in conns)


def test_worker_pool_provides_idrainable(factories):
    """
    The worker pool is the IDrainable of --workers (it drains over AMP).
    """
    from lbproxy.control.workers import WorkerPool
    from tests.integration.relay_harness import make_balancer

    clock = task.Clock()
    pool = WorkerPool({"workers": 2, "listen-tcp": ("127.0.0.1", 0, 16)}, make_balancer(clock, factories, [1]), clock)
    verifyObject(IDrainable, pool)


def test_signal_handlers_are_ours_while_running_and_restored_after():
    """
    Once running, SIGTERM and SIGINT go to the lifecycle (not to twistd's
    handler that re-raises the signal); stopping the service puts back
    the handlers it found.
    """
    import signal

    class Running(FakeReactor):
        def callWhenRunning(self, f, *a):
            f(*a)

    reactor = Running()
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    life = Lifecycle(make(reactor)[1], reactor)
    life.startService()
    try:
        assert signal.getsignal(signal.SIGTERM) == life._signalled
        assert signal.getsignal(signal.SIGINT) == life._signalled
    finally:
        life.stopService()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_drain_over_a_balancer_closes_only_open_connections(factories):
    """
    LocalDrain.of_balancer reads the balancer's connections per backend:
    one that ended during the spread is not closed again, the others are.
    """
    from tests.test_balancer import FakeConnection, make as make_balancer

    b, clock = make_balancer(factories, n=2)
    conns = []
    for i in range(4):
        assert b.admit()
        c = b.route(("192.0.2.1", i))
        conn = FakeConnection()
        conn.candidate = c
        b.connection_opened(c, conn, 0.001)
        conns.append(conn)
    stopped = []
    drain = LocalDrain.of_balancer(clock, lambda: stopped.append(True), b)
    drain.drain(1, 4)
    assert stopped == [True]
    clock.advance(1)
    gone = [c for c in conns if c.closed is None][-1]
    b.connections[gone.candidate.id].discard(gone)
    clock.pump([0.5] * 7)  # past the spread, before any reset
    assert gone.closed is None
    assert sum(1 for c in conns if c.closed == ("close", "shutdown")) == 3
