"""
The session's first phase (PROXY header from trusted sources, then the
TLS ClientHello) with real balancers, a task.Clock and no sockets: what
is read, where the connection goes, what is refused and counted, and
that every byte read reaches the backend unchanged.
"""

from __future__ import annotations


import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from lbproxy.interfaces import IListenerRoute
from tests.routes import ServicesByName
from lbproxy.model.config import Backend, Config, StrategyChoice
from lbproxy.policy.balancer import Balancer
from lbproxy.relay.proxyprotocol import header_v1, header_v2
from lbproxy.relay.route import SingleServiceRoute, as_route
from lbproxy.relay.session import FIRST_READ_MAX, ConnectionSession, ReadFirst
from tests.fuzz.samples import client_hello, refragment

CLIENT = ("127.0.0.5", 40000)
UNTRUSTED = ("192.0.2.9", 5000)
LOCAL = ("127.0.0.1", 8443)


def Route(services, **kw):
    """The test route (L{tests.routes.ServicesByName}) on C{tcp:8443}."""
    return ServicesByName(services, endpoint="tcp:8443", **kw)


class Conn:
    """What the session asks of an engine connection."""

    bytes_up = bytes_down = idle_mark = 0
    idle_since = 0.0

    def local_address(self):
        return LOCAL

    def abort(self, why):
        pass

    def close(self, why):
        pass


def balancer(factories, clock, name, proxy_protocol=None):
    backend = Backend(f"{name}1", "127.0.0.1", 9000, proxy_protocol=proxy_protocol)
    config = Config(version=1, backends=(backend,), strategy=StrategyChoice("source-hash"))
    return Balancer(config, factories, reactor=clock)


@pytest.fixture
def world(factories):
    clock = Clock()
    services = {"a": balancer(factories, clock, "a"), "b": balancer(factories, clock, "b", "v1")}
    return clock, services


def session(route, clock, client=CLIENT):
    s = ConnectionSession(route, clock, client)
    return s, s.accepted()


def test_routes_provide_the_interface(world):
    """The adapter and the test's route are IListenerRoutes; a balancer is
    wrapped, a route is kept."""
    clock, services = world
    assert verifyObject(IListenerRoute, SingleServiceRoute(services["a"]))
    assert verifyObject(IListenerRoute, Route(services))
    route = Route(services)
    assert as_route(route) is route
    assert as_route(services["a"]).default() is services["a"]


def test_ordinary_route_reads_nothing(world):
    """An ordinary listener's session answers a backend at once: no read,
    no deadline (a server that speaks first is served)."""
    clock, services = world
    s, answer = session(SingleServiceRoute(services["a"]), clock)
    assert answer.id == "a1" and clock.getDelayedCalls() == []


def test_server_name_picks_the_service_and_bytes_are_replayed(world):
    """A ClientHello in small pieces: read until whole, then the named
    service's backend; every byte read goes to it first, after lbproxy's
    own PROXY header when the backend wants one."""
    clock, services = world
    route = Route(services)
    s, answer = session(route, clock)
    assert isinstance(answer, ReadFirst) and answer.limit == FIRST_READ_MAX
    assert answer.deadline == 5.0
    hello = refragment(client_hello("b.test"), 40)
    pieces = [hello[i:i + 30] for i in range(0, len(hello), 30)]
    for piece in pieces[:-1]:
        answer = s.client_bytes(piece)
        assert isinstance(answer, ReadFirst) and answer.deadline == 5.0
    candidate = s.client_bytes(pieces[-1])
    assert candidate.id == "b1" and s.balancer is services["b"]
    sent = s.connected(Conn())
    assert sent == header_v1(CLIENT, LOCAL) + hello
    record = s.ended(10, 20)
    assert record.bytes_up == 10 + len(hello) and route.refusals == []


@pytest.mark.parametrize(
    "first, reason",
    [
        (b"SSH-2.0-OpenSSH\r\n", "not-tls"),
        (client_hello(None), "no-sni"),
        (client_hello("nowhere.example"), "no-match"),
    ],
)
def test_unusable_hello_goes_to_the_default(world, first, reason):
    """Not TLS, no SNI, a name no service has: the default service, with
    the bytes replayed; without a default, closed and counted."""
    clock, services = world
    s, _ = session(Route(services), clock)
    candidate = s.client_bytes(first)
    assert candidate.id == "a1"
    assert s.connected(Conn()) == first
    route = Route(services, default=None)
    s, _ = session(route, clock)
    assert s.client_bytes(first) is None and route.refusals == [reason]
    assert s.finished and s.ended(0, 0) is None and route.refusals == [reason]


def test_timeout_closes_and_counts(world):
    """No whole ClientHello within sni_timeout: closed, sni-timeout."""
    clock, services = world
    route = Route(services, timeout=2.0)
    s, answer = session(route, clock)
    assert s.client_bytes(client_hello("a.test")[:20]).deadline == 2.0
    clock.advance(2.0)
    assert s.read_timed_out() is None and route.refusals == ["sni-timeout"]
    assert s.client_bytes(b"late") is None and s.read_timed_out() is None
    assert route.refusals == ["sni-timeout"]


def test_client_gone_while_reading_is_counted(world):
    """The client closes (EOF) or resets before a service was chosen: no
    balancer hears of it, the route counts it once."""
    clock, services = world
    route = Route(services)
    s, _ = session(route, clock)
    assert s.client_bytes(b"\x16\x03") is not None
    assert s.client_bytes(b"") is None and route.refusals == ["client-closed"]
    s, _ = session(route, clock)
    s.client_reset()
    assert s.ended(0, 0) is None and route.refusals == ["client-closed", "client-reset"]
    assert services["a"].totals.active == 0


def test_over_16_kib_is_not_tls(world):
    """A ClientHello still incomplete after 16 KiB is not read further: the
    default service gets the 16 KiB read."""
    clock, services = world
    s, answer = session(Route(services), clock)
    head = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xf8"
    answer = s.client_bytes(head)
    assert answer.limit == FIRST_READ_MAX - len(head)
    rest = b"\x00" * (FIRST_READ_MAX - len(head))
    candidate = s.client_bytes(rest[:-1])
    assert isinstance(candidate, ReadFirst) and candidate.limit == 1
    candidate = s.client_bytes(rest[-1:])
    assert candidate.id == "a1" and len(s.connected(Conn())) == FIRST_READ_MAX


@pytest.mark.parametrize(
    "make, source",
    [(header_v1, ("203.0.113.4", 55555)), (header_v2, ("203.0.113.4", 55555)), (header_v2, ("2001:db8::4", 1))],
)
def test_proxy_header_address_becomes_the_client(world, make, source):
    """From a trusted source the PROXY header (v1 or v2, in pieces, with the
    ClientHello in the same segment) is read first: its source address is
    the client for the strategy, the access record and the PROXY header
    lbproxy sends on; the header itself is not replayed."""
    clock, services = world
    route = Route(services, proxy=["127.0.0.0/8"])
    s, answer = session(route, clock)
    destination = ("198.51.100.1", 443) if ":" not in source[0] else ("2001:db8::1", 443)
    header = make(source, destination)
    hello = client_hello("b.test")
    assert isinstance(s.client_bytes(header[:7]), ReadFirst)
    candidate = s.client_bytes(header[7:] + hello[:10])
    assert isinstance(candidate, ReadFirst)
    candidate = s.client_bytes(hello[10:])
    assert candidate.id == "b1" and s.client == source
    assert s.connected(Conn()) == header_v1(source, destination) + hello
    record = s.ended(0, 0)
    assert record.client == f"{source[0]}:{source[1]}"


def test_proxy_only_listener_routes_after_the_header(world):
    """A listener with accept_proxy and no SNI: the trusted source's header
    is read and the default service chosen at once; what came after the
    header is replayed."""
    clock, services = world
    route = Route(services, sni=False, proxy=["127.0.0.0/8"])
    s, _ = session(route, clock)
    candidate = s.client_bytes(header_v2(("203.0.113.4", 7), LOCAL) + b"HELLO")
    assert candidate.id == "a1" and s.client == ("203.0.113.4", 7)
    assert s.connected(Conn()) == b"HELLO"


def test_malformed_or_late_proxy_header_is_refused(world):
    """From a trusted source a header is required: anything else, or none
    within the timeout, is closed and counted."""
    clock, services = world
    route = Route(services, proxy=["127.0.0.0/8"])
    s, _ = session(route, clock)
    assert s.client_bytes(b"\x16\x03\x01\x00") is None
    s, _ = session(route, clock)
    assert s.client_bytes(b"PROXY TCP4 1.2.3.4\r\n") is None
    s, _ = session(route, clock)
    s.client_bytes(b"PROXY ")
    clock.advance(5)
    assert s.read_timed_out() is None
    assert route.refusals == ["proxy-malformed", "proxy-malformed", "proxy-timeout"]


def test_untrusted_sources(world):
    """An untrusted source on an SNI listener with accept_proxy: a PROXY
    signature is closed and counted (proxy-untrusted), a ClientHello is
    routed as usual with its real address; on a listener without SNI it
    is an ordinary connection (nothing read)."""
    clock, services = world
    route = Route(services, proxy=["127.0.0.0/8"])
    s, _ = session(route, clock, UNTRUSTED)
    assert isinstance(s.client_bytes(b"PRO"), ReadFirst)
    assert s.client_bytes(b"XY TCP4 1.2.3.4 5.6.7.8 1 2\r\n") is None
    s, _ = session(route, clock, UNTRUSTED)
    assert s.client_bytes(client_hello("b.test")).id == "b1" and s.client == UNTRUSTED
    assert route.refusals == ["proxy-untrusted"]
    s, answer = session(Route(services, sni=False, proxy=["127.0.0.0/8"]), clock, UNTRUSTED)
    assert answer.id == "a1"


def test_ipv4_mapped_source_is_trusted(world):
    """A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: trusted
    by their IPv4 network."""
    clock, services = world
    route = Route(services, proxy=["127.0.0.0/8"])
    s, answer = session(route, clock, ("::ffff:127.0.0.9", 1))
    assert s.phase == "proxy"
