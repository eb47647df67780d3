"""
C{--workers}: real worker processes sharing one port with SO_REUSEPORT,
driven by a L{WorkerPool} in the test's reactor over AMP.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from lbproxy.control.controller import ConfigController
from lbproxy.control.store.memory import MemoryStore
from lbproxy.control.workers import CHANNEL_FD, WorkerPool
from lbproxy.model.changes import replace_config
from lbproxy.model.config import Backend, Config, StrategyChoice
from tests.integration import relay_harness as h

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers are Linux-only"),
]


def until(predicate, timeout=20.0, step=0.05):
    """Wait for a condition; workers are processes, so allow longer."""
    return h.until(predicate, timeout, step)


@pytest.fixture
def pool_of(factories):
    """Start a 2-worker pool over given backend ports, following a config
    controller as in twistd; stopped after the test."""
    started = []

    def make(ports, engine="fast"):
        balancer = h.make_balancer(reactor, factories, ports)
        pool = WorkerPool(
            {"workers": 2, "engine": engine, "listen-tcp": ("127.0.0.1", 0, 128)}, balancer, reactor
        )
        pool.controller = ConfigController(balancer, MemoryStore(balancer.config))
        pool.controller.observe(pool)
        pool.startService()
        started.append(pool)
        return pool, balancer

    yield make
    for pool in started:
        pytest_twisted.blockon(pool.stopService())


def reporting(pool):
    return all(w is not None and w.listening and w.report is not None for w in pool.workers)


def totals(pool, name):
    return [w.report[name] for w in pool.workers]


def _open_echoing(port, n):
    socks = []
    for _ in range(n):
        s = h.client(port)
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        socks.append(s)
    return socks


def _still_echo(socks):
    alive = 0
    for s in socks:
        try:
            s.sendall(b"y")
            if s.recv(1) == b"y":
                alive += 1
        except OSError:
            pass
    return alive


@pytest.mark.parametrize("engine", ["fast", "twisted"])
@pytest_twisted.inlineCallbacks
def test_connections_split_and_a_killed_worker_restarts(engine, pool_of):
    """Two workers share the port: 40 held connections land on both PIDs and
    the parent's counters are their sums.  SIGKILL of one worker loses
    exactly its connections; the other's keep echoing; the dead worker is
    replaced by a new process that takes new connections."""
    echo = h.serve(reactor, h.Echo)
    try:
        pool, balancer = pool_of([echo.getHost().port], engine)
        yield until(lambda: reporting(pool))
        socks = yield deferToThread(_open_echoing, pool.port, 40)
        yield until(lambda: balancer.totals.active == 40 and all(totals(pool, "accepted")))
        per_worker = totals(pool, "active")
        assert sum(per_worker) == 40 and min(per_worker) > 0, per_worker
        assert balancer.pool.stats["b1"].active == 40
        assert balancer.pool.stats["b1"].total == 40

        victim = pool.workers[0]
        os.kill(victim.pid, signal.SIGKILL)
        yield victim.ended
        alive = yield deferToThread(_still_echo, socks)
        assert alive == per_worker[1]
        for s in socks:
            s.close()

        yield until(lambda: reporting(pool))
        assert pool.workers[0].pid != victim.pid and pool.restarts == 1
        more = yield deferToThread(_open_echoing, pool.port, 40)
        yield until(lambda: all(totals(pool, "active")))
        for s in more:
            s.close()
        # The killed worker's finished connections still count.
        yield until(lambda: balancer.totals.active == 0)
        assert balancer.totals.accepted == 80
    finally:
        yield echo.stopListening()


@pytest_twisted.inlineCallbacks
def test_config_change_reaches_every_worker(pool_of):
    """A config change made through the controller (as the admin API
    makes it) reaches both workers, each acknowledges the new version, and
    from then on every new connection, whichever worker takes it, goes to
    the new backend; a worker killed and started again has that version
    from its start."""
    a = h.serve(reactor, h.Named, name="a")
    b = h.serve(reactor, h.Named, name="b")
    try:
        pool, balancer = pool_of([a.getHost().port])
        yield until(lambda: reporting(pool))
        assert [w.applied for w in pool.workers] == [1, 1]
        backends = (Backend(id="b2", host="127.0.0.1", port=b.getHost().port),)
        imported = Config(version=1, backends=backends, strategy=StrategyChoice("round-robin"))
        new, _ = yield pool.controller.change(lambda c: (replace_config(c, imported), None))

        yield until(lambda: [w.applied for w in pool.workers] == [new.version] * 2)
        assert [w["applied_version"] for w in pool.status()["workers"]] == [new.version] * 2
        got = yield deferToThread(h.names, pool.port, 20)
        assert got == [b"b\n"] * 20
        yield until(lambda: sum(totals(pool, "accepted")) == 20)
        assert all(totals(pool, "accepted"))

        # A worker started again gets the config of now, not the first one.
        victim = pool.workers[0]
        os.kill(victim.pid, signal.SIGKILL)
        yield victim.ended
        yield until(lambda: reporting(pool))
        assert pool.workers[0].pid != victim.pid and pool.workers[0].applied == new.version
        assert (yield deferToThread(h.names, pool.port, 20)) == [b"b\n"] * 20
    finally:
        yield a.stopListening()
        yield b.stopListening()


@pytest_twisted.inlineCallbacks
def test_worker_argv_names_only_the_channel(pool_of):
    """Nothing but the channel's file descriptor is on a worker's command
    line (no config, no JSON: C{ps} shows nothing of the pool)."""
    pool, _ = pool_of([h.dead_port()])
    yield until(lambda: reporting(pool))
    for w in pool.workers:
        with open(f"/proc/{w.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")[:-1]
        assert argv[1:] == [b"-m", b"lbproxy.control.worker_main", str(CHANNEL_FD).encode()]


def test_port_in_use_fails_at_start(factories):
    """A listen port already taken by a non-reuseport socket fails the
    pool's start, before any worker is spawned."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        balancer = h.make_balancer(reactor, factories, [h.dead_port()])
        pool = WorkerPool(
            {"workers": 2, "engine": "fast", "listen-tcp": ("127.0.0.1", taken.getsockname()[1], 128)},
            balancer, reactor,
        )
        with pytest.raises(OSError):
            pool.startService()
        assert pool.workers == [None, None]
    finally:
        taken.close()


@pytest_twisted.inlineCallbacks
def test_health_results_reach_workers_and_restarted_ones(pool_of):
    """Active checks run once, in the parent: their results are forwarded,
    so every worker stops routing to a backend the parent marks down, and
    a worker started after that knows it from the start."""
    a = h.serve(reactor, h.Named, name="a")
    b = h.serve(reactor, h.Named, name="b")
    try:
        pool, balancer = pool_of([a.getHost().port, b.getHost().port])
        yield until(lambda: reporting(pool))
        while balancer.pool.health["b1"].healthy:
            balancer.health_result("b1", False, "check failed: test")
        # A poll is answered after every command sent before it: once it
        # is, both workers have taken the health results.
        yield pool.refresh()
        assert (yield deferToThread(h.names, pool.port, 20)) == [b"b\n"] * 20

        victim = pool.workers[1]
        os.kill(victim.pid, signal.SIGKILL)
        yield victim.ended
        yield until(lambda: reporting(pool))
        assert (yield deferToThread(h.names, pool.port, 20)) == [b"b\n"] * 20
        yield until(lambda: pool.workers[1].report["accepted"] > 0)
    finally:
        yield a.stopListening()
        yield b.stopListening()
