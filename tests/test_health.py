"""
The active checker, L{lbproxy.health.checker.HealthChecker}, on a
L{MemoryReactorClock} (TCP and send/expect probes) and on
L{treq.testing.StubTreq} (HTTP probes): what each probe kind reports, the
per-probe timeout, the spread of probes over the interval, and how the loops
follow config changes.
"""

from __future__ import annotations

from dataclasses import replace

from treq.testing import StubTreq
from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from lbproxy.interfaces import IConfigObserver

from lbproxy.control.controller import ConfigController
from lbproxy.control.store.memory import MemoryStore
from lbproxy.health.checker import HealthChecker
from lbproxy.model.checks import HealthCheck
from lbproxy.model.config import Backend, Config
from lbproxy.policy.balancer import Balancer
from lbproxy.policy.plugins import strategy_factories

TCP = HealthCheck(type="tcp", interval=2.0, timeout=1.0, rise=1, fall=1)


def make(check=TCP, n=2, http_client=None, backends=None):
    reactor = MemoryReactorClock()
    backends = backends or tuple(Backend(f"b{i + 1}", "127.0.0.1", 9001 + i) for i in range(n))
    config = Config(version=1, backends=backends, health_check=check)
    balancer = Balancer(config, strategy_factories(), reactor=reactor)
    controller = ConfigController(balancer, MemoryStore(config))
    checker = HealthChecker(balancer, reactor=reactor, http_client=http_client, controller=controller)
    checker.startService()
    return balancer, checker, reactor


def attempts(reactor):
    """The ports of the connects the probes started, in order."""
    return [c[1] for c in reactor.tcpClients]


def answer(reactor, i=-1):
    """Accept the i-th connect; return the probe's protocol and transport."""
    host, port, factory, _, _ = reactor.tcpClients[i]
    proto = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def refuse(reactor, i=-1):
    factory = reactor.tcpClients[i][2]
    factory.clientConnectionFailed(reactor.connectors[i], Failure(ConnectionRefusedError()))


def last(balancer, bid):
    return balancer.pool.health[bid].last_check


def test_checker_is_a_service():
    """The checker provides L{IService}, so makeService can parent it."""
    _, checker, _ = make()
    verifyObject(IService, checker)


def test_tcp_check_passes_on_connect_and_closes_the_connection():
    """A TCP probe that connects reports C{check passed} and closes its
    connection at once."""
    balancer, _, reactor = make(n=1)
    reactor.advance(0)
    assert attempts(reactor) == [9001]
    _, transport = answer(reactor)
    assert last(balancer, "b1") == "check passed"
    assert transport.disconnecting


def test_tcp_check_refused_takes_backend_down_with_reason():
    """A refused connect is C{check failed: connection refused}; with
    fall=1 the backend goes down with that reason on the feed."""
    balancer, _, reactor = make(n=1)
    seen = []
    balancer.events.subscribe(lambda e: seen.append(e.data))
    reactor.advance(0)
    refuse(reactor)
    assert seen[-1]["state"] == "down"
    assert seen[-1]["reason"] == "check failed: connection refused"
    assert balancer.pool.candidates == ()


def test_tcp_check_times_out_on_its_own_timeout():
    """A connect that never completes fails after the check's timeout (not
    the interval), the connect attempt is abandoned, and the reason names
    the timeout."""
    balancer, _, reactor = make(n=1)
    reactor.advance(0)
    reactor.advance(0.99)
    assert last(balancer, "b1") is None
    reactor.advance(0.01)
    assert last(balancer, "b1") == "check failed: timeout after 1.0s"
    assert reactor.connectors[0].stoppedConnecting


def test_probes_are_spread_over_the_interval():
    """Four backends with a 2 s interval are first probed 0.5 s apart, then
    each every 2 s: no thundering herd."""
    _, _, reactor = make(n=4)
    times = {}
    t = 0.0
    reactor.advance(0)
    for step in range(16):
        for port in attempts(reactor)[len(times.get("all", [])):]:
            times.setdefault(port, []).append(t)
        times["all"] = attempts(reactor)
        reactor.advance(0.25)
        t += 0.25
    assert times[9001] == [0.0, 2.0]
    assert times[9002] == [0.5, 2.5]
    assert times[9003] == [1.0, 3.0]
    assert times[9004] == [1.5, 3.5]


def test_a_hanging_backend_does_not_delay_the_others():
    """While one backend never answers its connects, the other is still
    probed every interval and its results arrive on time."""
    balancer, checker, reactor = make(n=2)
    passed = []
    reactor.advance(0)
    for _ in range(40):
        reactor.advance(0.25)
        for i, port in enumerate(attempts(reactor)):
            if port == 9002 and i not in passed:
                answer(reactor, i)
                passed.append(i)
    assert len(passed) == 5
    assert checker.loops["b1"].probes == 6
    assert last(balancer, "b1") == "check failed: timeout after 1.0s"
    assert last(balancer, "b2") == "check passed"


class Health(Resource):
    """An HTTP health endpoint answering C{code}, or never (C{None})."""

    isLeaf = True

    def __init__(self, code):
        super().__init__()
        self.code = code
        self.paths = []

    def render_GET(self, request):
        self.paths.append(request.path)
        if self.code is None:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"fine" if self.code < 400 else b"sick"


HTTP = HealthCheck(type="http", interval=2.0, timeout=1.0, rise=1, fall=1, path="/healthz", status=(200, 299))


def test_http_check_gets_the_path_and_passes_in_range():
    """An HTTP probe GETs the configured path and passes on a status within
    the range."""
    resource = Health(204)
    balancer, _, reactor = make(HTTP, n=1, http_client=StubTreq(resource))
    reactor.advance(0)
    assert resource.paths == [b"/healthz"]
    assert last(balancer, "b1") == "check passed"


def test_http_check_fails_outside_the_range_with_the_status():
    """A 503 (or a 302 outside 200-299: redirects are not followed) fails
    the probe, saying which status came and which was expected."""
    balancer, _, reactor = make(HTTP, n=1, http_client=StubTreq(Health(503)))
    reactor.advance(0)
    assert last(balancer, "b1") == "check failed: HTTP 503 (expected 200-299)"
    balancer, _, reactor = make(HTTP, n=1, http_client=StubTreq(Health(302)))
    reactor.advance(0)
    assert last(balancer, "b1") == "check failed: HTTP 302 (expected 200-299)"


def test_http_check_that_never_answers_times_out():
    """An HTTP endpoint that never answers fails the probe after the
    timeout."""
    balancer, _, reactor = make(HTTP, n=1, http_client=StubTreq(Health(None)))
    reactor.advance(0)
    assert last(balancer, "b1") is None
    reactor.advance(1.0)
    assert last(balancer, "b1") == "check failed: timeout after 1.0s"


SEND = HealthCheck(type="send-expect", interval=2.0, timeout=1.0, rise=1, fall=1, send="PING\r\n", expect="+PONG")


def test_send_expect_passes_when_expect_arrives_even_split():
    """The probe sends C{send} on connect and passes once C{expect}
    appears in the answer, even split across reads and after other
    bytes."""
    balancer, _, reactor = make(SEND, n=1)
    reactor.advance(0)
    proto, transport = answer(reactor)
    assert transport.value() == b"PING\r\n"
    proto.dataReceived(b"junk +P")
    assert last(balancer, "b1") is None
    proto.dataReceived(b"ONG\r\n")
    assert last(balancer, "b1") == "check passed"
    assert transport.disconnecting


def test_send_expect_fails_on_wrong_answer_then_close():
    """An answer without C{expect} followed by a close fails with a reason
    naming what was expected."""
    balancer, _, reactor = make(SEND, n=1)
    reactor.advance(0)
    proto, _ = answer(reactor)
    proto.dataReceived(b"-ERR no\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert last(balancer, "b1") == "check failed: connection closed before '+PONG' arrived"


def test_send_expect_times_out_and_aborts():
    """A backend that accepts but never answers fails after the timeout and
    its connection is aborted."""
    balancer, _, reactor = make(SEND, n=1)
    reactor.advance(0)
    _, transport = answer(reactor)
    reactor.advance(1.0)
    assert last(balancer, "b1") == "check failed: timeout after 1.0s"
    assert transport.disconnected


def test_per_backend_check_beats_the_pool_check():
    """A backend's own check is the one probed; the others use the pool's."""
    own = Backend("b1", "127.0.0.1", 9001, health_check=HTTP)
    _, checker, _ = make(TCP, backends=(own, Backend("b2", "127.0.0.1", 9002)))
    assert checker.loops["b1"].check == HTTP
    assert checker.loops["b2"].check == TCP


def test_loops_follow_config_changes():
    """Told of each applied config by the controller, the checker gives a
    new backend a loop that probes at once; a removed one loses its loop
    (the probe in flight is abandoned and its result never arrives);
    changed settings restart the loops; a weight change does not; no check
    at all stops every loop."""
    balancer, checker, reactor = make(n=2)

    verifyObject(IConfigObserver, checker)

    def apply(new):  # lock -> store -> balancer -> observers, as the API does
        checker.controller.change(lambda _: (new, None))
        assert balancer.config == new

    reactor.advance(0)
    reactor.advance(1.0)
    assert attempts(reactor) == [9001, 9002]
    config = balancer.config
    b3 = Backend("b3", "127.0.0.1", 9003)
    apply(replace(config, version=2, backends=(config.backends[0], b3)))
    assert sorted(checker.loops) == ["b1", "b3"]
    assert reactor.connectors[1].stoppedConnecting
    reactor.advance(0)
    assert attempts(reactor)[-1] == 9003
    assert last(balancer, "b3") is None

    before = checker.loops["b1"]
    heavier = replace(balancer.config.backends[0], weight=5)
    apply(replace(balancer.config, version=3, backends=(heavier, b3)))
    assert checker.loops["b1"] is before

    slower = replace(TCP, interval=5.0)
    apply(replace(balancer.config, version=4, health_check=slower))
    assert checker.loops["b1"] is not before
    assert {loop.check.interval for loop in checker.loops.values()} == {5.0}

    apply(replace(balancer.config, version=5, health_check=None))
    assert checker.loops == {}
    assert reactor.getDelayedCalls() == []


def test_stop_service_stops_every_probe():
    """Stopping the checker cancels its timers and probes in flight and
    stops observing the controller: a config applied afterwards starts no
    probe."""
    balancer, checker, reactor = make(n=3)
    reactor.advance(0)
    checker.stopService()
    assert reactor.getDelayedCalls() == []
    b4 = Backend("b4", "127.0.0.1", 9004)
    checker.controller.change(lambda c: (replace(c, version=2, backends=c.backends + (b4,)), None))
    assert balancer.config.version == 2
    assert checker.loops == {} and reactor.getDelayedCalls() == []
    assert reactor.connectors[0].stoppedConnecting
    refuse(reactor, 0)
    assert last(balancer, "b1") is None
