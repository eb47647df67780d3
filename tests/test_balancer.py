"""
The balancer's per-connection policy, with a fake clock and fake
connections (no sockets).
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.interfaces import IBalancer, IRelayedConnection
from lbproxy.model.changes import add_backend, set_strategy, update_backend
from lbproxy.model.config import Backend, Config, ProxySettings, StrategyChoice
from lbproxy.model.errors import ConfigError
from lbproxy.policy.balancer import Balancer
from lbproxy.policy.pool import AccessRecord


@implementer(IRelayedConnection)
class FakeConnection:
    idle_mark = 0
    idle_since = 0.0

    def __init__(self):
        self.bytes_up = 0
        self.bytes_down = 0
        self.closed = None

    def abort(self, why):
        self.closed = ("abort", why)

    def close(self, why):
        self.closed = ("close", why)


def make(factories, n=3, settings=ProxySettings(), **config):
    clock = Clock()
    c = Config(
        version=1,
        backends=tuple(Backend(f"b{i}", "127.0.0.1", 9000 + i) for i in range(n)),
        **config,
    )
    return Balancer(c, factories, settings, reactor=clock), clock


def record(backend="b0", up=0, down=0):
    return AccessRecord("192.0.2.1:1", backend, up, down, 0.0, "ok")


def test_provides_interfaces(factories):
    """The balancer provides IBalancer; the test double IRelayedConnection."""
    b, _ = make(factories)
    assert verifyObject(IBalancer, b)
    assert verifyObject(IRelayedConnection, FakeConnection())


def test_admit_enforces_the_connection_limit(factories):
    """Past max_connections admit() refuses and counts; a finished
    connection frees a slot."""
    b, _ = make(factories, settings=ProxySettings(max_connections=2))
    assert b.admit() and b.admit()
    assert not b.admit()
    assert b.totals.rejected == 1
    b.client_failed(record(None))
    assert b.admit()
    assert b.totals.accepted == 3


def test_route_excludes_tried_backends(factories):
    """A retry never returns a backend already tried; when all were tried
    there is no backend, counted."""
    b, _ = make(factories)
    tried = set()
    for _ in range(3):
        c = b.route(("192.0.2.1", 1), frozenset(tried))
        assert c.id not in tried
        tried.add(c.id)
    assert b.route(("192.0.2.1", 1), frozenset(tried)) is None
    assert b.totals.no_backend == 1


def test_backend_connection_limit_is_respected(factories):
    """A backend at its own max_connections is skipped by every strategy."""
    b, _ = make(factories, n=2)
    b.apply(update_backend(b.config, "b0", {"max_connections": 1})[0])
    c = b.route(("192.0.2.1", 1))
    conn = FakeConnection()
    first = c
    b.connection_opened(c, conn, 0.001)
    if first.id == "b0":
        assert {b.route(("192.0.2.1", 1)).id for _ in range(4)} == {"b1"}
    else:
        c2 = b.route(("192.0.2.1", 1))
        b.connection_opened(c2, FakeConnection(), 0.001)
        assert {b.route(("192.0.2.1", 1)).id for _ in range(4)} == {"b1"}


def test_counters_survive_strategy_switch_and_pool_edits(factories):
    """Switching strategy, adding a backend and changing a weight keep every
    backend's live counters."""
    b, _ = make(factories)
    c = b.route(("192.0.2.1", 1))
    conn = FakeConnection()
    b.connection_opened(c, conn, 0.002)
    conn.bytes_up, conn.bytes_down = 10, 20
    stats = b.pool.stats[c.id]
    b.apply(set_strategy(b.config, StrategyChoice("least-connections")))
    b.apply(add_backend(b.config, {"host": "127.0.0.1", "port": 9100})[0])
    b.apply(update_backend(b.config, c.id, {"weight": 5})[0])
    assert b.pool.stats[c.id] is stats
    assert (stats.active, stats.total) == (1, 1)
    assert b.bytes_of(c.id) == (10, 20)
    b.connection_closed(c, conn, record(c.id, 10, 20))
    assert (stats.active, stats.bytes_up, stats.bytes_down) == (0, 10, 20)
    assert b.bytes_of(c.id) == (10, 20)


def test_apply_is_atomic_on_a_bad_strategy(factories):
    """A config naming an unknown strategy is refused by check() and apply()
    and leaves the balancer as it was."""
    b, _ = make(factories)
    bad = set_strategy(b.config, StrategyChoice("nope"))
    before = (b.config, b.strategy, b.pool.candidates)
    with pytest.raises(ConfigError):
        b.check(bad)
    with pytest.raises(ConfigError):
        b.apply(bad)
    assert (b.config, b.strategy, b.pool.candidates) == before


def test_idle_sweep_closes_only_idle_connections(factories):
    """A connection whose byte counters do not move for the idle timeout is
    closed cleanly; one that moves is left alone."""
    b, clock = make(factories, settings=ProxySettings(idle_timeout=10))
    b.start(interval=1)
    idle, busy = FakeConnection(), FakeConnection()
    for conn in (idle, busy):
        b.connection_opened(b.route(("192.0.2.1", 1)), conn, 0.001)
    for _ in range(9):
        busy.bytes_up += 1
        clock.advance(1)
    assert idle.closed is None
    for _ in range(3):
        busy.bytes_down += 1
        clock.advance(1)
    assert idle.closed == ("close", "idle-timeout")
    assert busy.closed is None
    assert b.totals.idle_timeouts == 1
    b.stop()


def test_force_close_aborts_every_connection_of_a_backend(factories):
    """close_connections aborts all of one backend's connections, no
    others."""
    b, _ = make(factories, n=2)
    conns = {}
    for i in range(4):
        c = b.route(("192.0.2.1", i))
        conn = FakeConnection()
        b.connection_opened(c, conn, 0.001)
        conns.setdefault(c.id, []).append(conn)
    assert b.close_connections("b0", "forced") == 2
    assert [x.closed for x in conns["b0"]] == [("abort", "forced")] * 2
    assert [x.closed for x in conns["b1"]] == [None, None]


def test_config_changes_publish_events(factories):
    """An operator's state change publishes a backend event from the
    balancer, then the config event from the bus observing the controller
    (the balancer itself makes no config event: workers apply without one)."""
    from lbproxy.control.controller import ConfigController
    from lbproxy.control.store.memory import MemoryStore

    b, _ = make(factories)
    events = []
    b.events.subscribe(events.append)
    b.apply(b.config.__class__(version=2, backends=b.config.backends, strategy=b.config.strategy))
    assert events == []
    controller = ConfigController(b, MemoryStore(b.config))
    controller.observe(b.events)
    controller.change(lambda c: (update_backend(c, "b1", {"state": "disabled"})[0], None))
    assert [(e.type, e.data.get("version") or e.data.get("state")) for e in events] == [
        ("backend", "disabled"), ("config", 3),
    ]
    assert "b1" not in {c.id for c in b.pool.candidates}
    assert b.backend_view(b.config.backend("b1"))["state"] == "disabled"


def test_route_records_decisions_cheaply(factories):
    """Each routing decision lands in the route recorder's counts, drained
    as one batch."""
    b, _ = make(factories, n=2)
    for i in range(5):
        b.route((f"192.0.2.{i}", 1))
    batch = b.routes.drain()
    assert batch["total"] == 5 and batch["counts"] == {"b0": 3, "b1": 2}
    assert b.routes.drain() is None


def test_followers_hear_health_results_and_forced_closes(factories):
    """A follower (the worker pool) is told of every active health result
    and every forced close, including the drain timeout's, until it stops
    following."""
    b, clock = make(factories, n=2, drain_timeout=5.0)
    heard = []
    unfollow = b.follow(lambda kind, args: heard.append((kind, args)))
    b.health_result("b0", True, "check passed")
    b.close_connections("b1", "forced")
    b.apply(update_backend(b.config, "b0", {"state": "draining"})[0])
    clock.advance(5)
    assert heard == [
        ("health", ("b0", True, "check passed")),
        ("close", ("b1", "forced")),
        ("close", ("b0", "drain-timeout")),
    ]
    unfollow()
    b.health_result("b0", False, "check failed: x")
    assert len(heard) == 3
