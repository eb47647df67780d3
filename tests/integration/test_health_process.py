"""
A real backend process dies and comes back while clients stream through
lbproxy (ProxyFactory + Balancer + HealthChecker in the test reactor, real
loopback sockets): new connections leave it within C{fall x interval} (or at
once by passive ejection), the event bus says C{down} and why, and after a
restart on the same port it returns through slow start.
"""

from __future__ import annotations

import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task

from lbproxy.health.checker import HealthChecker
from lbproxy.model.checks import HealthCheck, Outlier
from lbproxy.model.config import Backend, Config, StrategyChoice
from lbproxy.policy.balancer import Balancer
from lbproxy.relay.twisted_engine import ProxyFactory
from tests.integration import relay_harness as h

pytestmark = pytest.mark.integration

#: The backend: greets with its name, then echoes; prints its port.
BACKEND = r"""
import asyncio, sys
name, port = sys.argv[1], int(sys.argv[2])

async def handle(reader, writer):
    writer.write(name.encode() + b"\n")
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


class BackendProcess(protocol.ProcessProtocol):
    """A backend process; C{ready} fires with its port, C{ended} on exit."""

    def __init__(self) -> None:
        self.ready: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._out = b""
        self.port: int | None = None

    def outReceived(self, data: bytes) -> None:
        self._out += data
        if self.port is None and b"\n" in self._out:
            self.port = int(self._out.split(b"\n", 1)[0])
            self.ready.callback(self.port)

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(reason)
        self.ended.callback(None)

    def kill(self) -> None:
        if not self.ended.called:
            self.transport.signalProcess("KILL")


@defer.inlineCallbacks
def spawn(name: str, port: int = 0):
    proc = BackendProcess()
    reactor.spawnProcess(proc, sys.executable, [sys.executable, "-c", BACKEND, name, str(port)], env=None)
    yield bounded(proc.ready, 10)
    return proc


def bounded(d, seconds):
    return d.addTimeout(seconds, reactor)


def until(predicate, timeout=10.0, step=0.02):
    """Wait without blocking the reactor; see L{relay_harness.until}."""
    return h.until(predicate, timeout, step)

class Streamer(protocol.Protocol):
    """A client: learns its backend from the greeting, then streams a
    ping every 50 ms and counts the echoes."""

    def __init__(self, log):
        self.log = log
        self.backend = None
        self.echoed = 0
        self.closed = False
        self._buf = b""
        self._pinger = None

    def connectionMade(self):
        self.opened = reactor.seconds()

    def dataReceived(self, data):
        if self.backend is None:
            self._buf += data
            if b"\n" not in self._buf:
                return
            name, _, data = self._buf.partition(b"\n")
            self.backend = name.decode()
            self.log.append((self.opened, self.backend))
            self._pinger = task.LoopingCall(self.transport.write, b"ping")
            self._pinger.clock = reactor
            self._pinger.start(0.05)
        self.echoed += len(data)

    def connectionLost(self, reason):
        self.closed = True
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()


class Rig:
    """lbproxy in the test reactor, two backend processes, and a stream of
    new clients every 50 ms."""

    def __init__(self, factories, **settings):
        self.factories = factories
        self.settings = settings
        self.procs = {}
        self.clients = []
        self.log = []
        self.events = []
        self._stops = []

    @defer.inlineCallbacks
    def start(self):
        for name in ("A", "B"):
            self.procs[name] = yield spawn(name)
        config = Config(
            version=1,
            backends=tuple(
                Backend(name, "127.0.0.1", self.procs[name].port, weight=10) for name in ("A", "B")
            ),
            strategy=StrategyChoice("weighted-round-robin"),
            **self.settings,
        )
        self.balancer = Balancer(config, self.factories, reactor=reactor)
        self.balancer.events.subscribe(
            lambda e: self.events.append((reactor.seconds(), e.data)) if e.type == "backend" else None
        )
        self.balancer.start(interval=0.05)
        self._stops.append(self.balancer.stop)
        self.checker = HealthChecker(self.balancer, reactor=reactor)
        self.checker.startService()
        self._stops.append(self.checker.stopService)
        listener = reactor.listenTCP(0, ProxyFactory(self.balancer, reactor), interface="127.0.0.1")
        self._stops.append(listener.stopListening)
        self.port = listener.getHost().port
        self._opener = task.LoopingCall(self.open_client)
        self._opener.clock = reactor
        self._opener.start(0.05)
        self._stops.append(self._opener.stop)

    def open_client(self):
        d = protocol.ClientCreator(reactor, Streamer, self.log).connectTCP("127.0.0.1", self.port)
        d.addCallback(self.clients.append)
        d.addErrback(lambda f: None)

    def since(self, t):
        return [name for (opened, name) in self.log if opened >= t]

    def event(self, bid, state, after=0.0):
        for t, data in self.events:
            if data["id"] == bid and data["state"] == state and t >= after:
                return t, data
        return None

    @defer.inlineCallbacks
    def stop(self):
        for stop in reversed(self._stops):
            yield stop()
        for client in self.clients:
            client.transport.abortConnection()
        for proc in self.procs.values():
            proc.kill()
            yield bounded(proc.ended, 10)


@pytest.fixture
def rig(factories):
    rigs = []

    def make(**settings):
        r = Rig(factories, **settings)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        pytest_twisted.blockon(r.stop())


CHECK = HealthCheck(type="tcp", interval=0.2, timeout=0.1, rise=2, fall=2)


@pytest_twisted.inlineCallbacks
def test_killed_backend_leaves_by_active_checks_and_returns_by_slow_start(rig):
    """Kill backend A while clients stream through lbproxy: within
    fall x interval (plus scheduling slack) the feed says A is down because
    the check's connect was refused, and from then on no new connection is
    even attempted to A while new clients keep being served by B.  Restart
    A on the same port: after C{rise} passes it is up again, its effective
    weight ramps from about a tenth to full over the slow-start window, and
    new clients reach it again, few at first."""
    r = rig(health_check=CHECK, outlier=None, slow_start=2.0)
    yield r.start()
    yield until(lambda: {"A", "B"} <= set(r.since(0)) and r.balancer.pool.health["A"].proven)
    assert not r.balancer.pool.ramping()
    on_a = [c for c in r.clients if c.backend == "A"]
    echoed = [c.echoed for c in on_a]
    yield until(lambda: all(c.echoed > e for c, e in zip(on_a, echoed)))

    killed = reactor.seconds()
    r.procs["A"].kill()
    yield bounded(r.procs["A"].ended, 10)
    yield until(lambda: r.event("A", "down", killed), timeout=5)
    down_at, down = r.event("A", "down", killed)
    assert down["reason"] == "check failed: connection refused"
    assert down_at - killed <= CHECK.fall * CHECK.interval + 0.5
    assert all(c.closed for c in on_a)

    failures = r.balancer.totals.connect_failures
    served = len(r.since(down_at))
    yield until(lambda: len(r.since(down_at)) >= served + 15)
    assert set(r.since(down_at)) == {"B"}
    assert r.balancer.totals.connect_failures == failures
    assert r.balancer.totals.no_backend == 0

    port = r.procs["A"].port
    r.procs["A"] = yield spawn("A", port)
    restarted = reactor.seconds()
    yield until(lambda: r.event("A", "up", restarted), timeout=5)
    up_at, up = r.event("A", "up", restarted)
    assert up["reason"] == "check passed"
    assert up_at - restarted <= CHECK.rise * CHECK.interval + 0.5

    weights = []

    def sample():
        backend = r.balancer.config.backend("A")
        weights.append(r.balancer.backend_view(backend)["effective_weight"])
        return weights[-1] == 10

    yield until(sample, timeout=5, step=0.05)
    assert weights[0] <= 3.0
    assert weights == sorted(weights) and len(set(weights)) > 3
    early = [n for (t, n) in r.log if up_at <= t < up_at + 1.0]
    assert len(early) >= 8
    assert 0 < early.count("A") < len(early) * 0.4
    full = reactor.seconds()
    yield until(lambda: len(r.since(full)) >= 20)
    late = r.since(full)
    assert late.count("A") >= len(late) * 0.4


@pytest_twisted.inlineCallbacks
def test_killed_backend_is_ejected_at_once_by_real_traffic(rig):
    """With passive ejection at one failure and no active check, the first
    new connection refused by the dead backend ejects it at once (the
    client itself is retried on B), the feed says why, and later clients
    are not even tried on it."""
    r = rig(outlier=Outlier(consecutive_failures=1, base_ejection=30.0, max_ejection=30.0))
    yield r.start()
    yield until(lambda: {"A", "B"} <= set(r.since(0)))
    killed = reactor.seconds()
    r.procs["A"].kill()
    yield bounded(r.procs["A"].ended, 10)
    yield until(lambda: r.event("A", "down", killed), timeout=5)
    down_at, down = r.event("A", "down", killed)
    assert down["reason"].startswith("ejected after 1 consecutive failures: connect failed: ")
    assert "refused" in down["reason"]
    assert down_at - killed <= 0.5
    failures = r.balancer.totals.connect_failures
    assert 1 <= failures <= 2
    served = len(r.since(down_at))
    yield until(lambda: len(r.since(down_at)) >= served + 15)
    assert set(r.since(down_at)) == {"B"}
    assert r.balancer.totals.connect_failures == failures
    assert r.balancer.totals.no_backend == 0
