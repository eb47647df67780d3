"""
Each probe kind against real servers on loopback, through the checker's
default clients (a real treq Agent, real TCP endpoints): the unit tests'
stand-ins must not hide a difference from the real thing.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from lbproxy.health.checker import HealthChecker
from lbproxy.model.checks import HealthCheck
from lbproxy.model.config import Backend, Config
from lbproxy.policy.balancer import Balancer
from tests.integration import relay_harness as h

pytestmark = pytest.mark.integration


def until(predicate, timeout=10.0, step=0.02):
    """Wait without blocking the reactor; see L{relay_harness.until}."""
    return h.until(predicate, timeout, step)

class Status(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.code = 200
        self.paths = []

    def render_GET(self, request):
        self.paths.append(request.path)
        request.setResponseCode(self.code)
        return b"status"


class Pong(protocol.Protocol):
    """Answers C{+PONG} to C{PING}, C{-ERR} to anything else."""

    def dataReceived(self, data):
        self.transport.write(b"+PONG\r\n" if data.startswith(b"PING") else b"-ERR\r\n")


@pytest.fixture
def stack(factories):
    stops = []

    def make(check, port):
        config = Config(version=1, backends=(Backend("b1", "127.0.0.1", port),), health_check=check)
        balancer = Balancer(config, factories, reactor=reactor)
        checker = HealthChecker(balancer, reactor=reactor)
        checker.startService()
        stops.append(checker.stopService)
        seen = []
        balancer.events.subscribe(lambda e: seen.append(e.data) if e.type == "backend" else None)
        return balancer, seen

    yield make
    for stop in stops:
        stop()


@pytest_twisted.inlineCallbacks
def test_real_http_check_follows_the_status(stack):
    """A real HTTP server answering 200 keeps the backend up; switched to
    503 it goes down with the status in the reason; back to 200 it comes
    up again."""
    resource = Status()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    try:
        check = HealthCheck(type="http", interval=0.1, timeout=0.1, rise=1, fall=1, path="/ready")
        balancer, seen = stack(check, port.getHost().port)
        yield until(lambda: balancer.pool.health["b1"].last_check == "check passed")
        assert resource.paths[0] == b"/ready"
        resource.code = 503
        yield until(lambda: seen and seen[-1]["state"] == "down")
        assert seen[-1]["reason"] == "check failed: HTTP 503 (expected 200-399)"
        resource.code = 200
        yield until(lambda: seen[-1]["state"] == "up")
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_real_send_expect_check(stack):
    """A real server answering C{+PONG} to C{PING} passes a send/expect
    check; expecting something it never says fails it."""
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Pong), interface="127.0.0.1")
    try:
        good = HealthCheck(type="send-expect", interval=0.1, timeout=0.1, rise=1, fall=1,
                           send="PING\r\n", expect="+PONG")
        balancer, _ = stack(good, port.getHost().port)
        yield until(lambda: balancer.pool.health["b1"].last_check == "check passed")
        bad = HealthCheck(type="send-expect", interval=0.1, timeout=0.1, rise=1, fall=1,
                          send="PING\r\n", expect="+OK")
        balancer, seen = stack(bad, port.getHost().port)
        yield until(lambda: seen)
        assert seen[0]["state"] == "down"
        assert seen[0]["reason"] == "check failed: timeout after 0.1s"
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_real_tcp_check_on_a_closed_port_is_refused(stack):
    """A TCP check of a port nobody listens on fails as refused."""
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
    number = port.getHost().port
    yield port.stopListening()
    balancer, seen = stack(HealthCheck(type="tcp", interval=0.1, timeout=0.1, rise=1, fall=1), number)
    yield until(lambda: seen)
    assert (seen[0]["state"], seen[0]["reason"]) == ("down", "check failed: connection refused")
