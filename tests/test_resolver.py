"""
The resolver of backend host names (lbproxy/health/resolver.py) with a fake
lookup and a task.Clock, and the seams that use it: the fast engine's
C{resolve}, the Twisted engine's endpoint and the health checks' probe.
"""

from __future__ import annotations

import socket

import pytest
from twisted.application.service import IService
from twisted.internet import defer, task
from twisted.internet.error import DNSLookupError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from lbproxy.health.probes import default_endpoint, probe
from lbproxy.health.resolver import LookupFailed, Resolver
from lbproxy.model.checks import HealthCheck
from lbproxy.model.config import Backend, Config

HOME = (socket.AF_INET, "127.0.0.1")
OTHER = (socket.AF_INET, "127.0.0.2")


class FakeLookup:
    """A lookup whose answers the test gives, one pending Deferred per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, defer.Deferred]] = []
        self.cancelled = 0

    def __call__(self, name: str) -> defer.Deferred:
        def cancel(d: defer.Deferred) -> None:
            self.cancelled += 1

        d: defer.Deferred = defer.Deferred(cancel)
        self.calls.append((name, d))
        return d

    def answer(self, *addresses) -> None:
        self.calls[-1][1].callback(list(addresses))

    def fail(self, text: str = "no answer") -> None:
        self.calls[-1][1].errback(LookupFailed(text))


def make(running: bool = True, **kw):
    clock = task.Clock()
    lookup = FakeLookup()
    resolver = Resolver(clock, lookup, **kw)
    if running:
        resolver.startService()
    return clock, lookup, resolver


def result(d: defer.Deferred):
    out: list = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_is_a_service():
    """The resolver is a Service, so twistd starts and stops it."""
    assert verifyObject(IService, Resolver(task.Clock(), FakeLookup()))


def test_first_lookup_waits_then_no_lookup_on_the_connect_path():
    """A never-resolved name waits for its lookup; after it, every resolve
    answers at once without a lookup until the refresh is due."""
    clock, lookup, resolver = make()
    d = resolver.resolve("b.test", 80)
    assert not d.called and len(lookup.calls) == 1
    lookup.answer(HOME)
    assert result(d) == (socket.AF_INET, ("127.0.0.1", 80))
    for _ in range(100):
        assert result(resolver.resolve("b.test", 8080)) == (socket.AF_INET, ("127.0.0.1", 8080))
    clock.advance(29)
    assert len(lookup.calls) == 1
    assert resolver.address("b.test") == HOME


def test_identical_lookups_are_shared():
    """Many callers of a name being looked up share one lookup."""
    _, lookup, resolver = make()
    waiting = [resolver.resolve("b.test", p) for p in (80, 81, 82)]
    assert len(lookup.calls) == 1
    lookup.answer(HOME)
    assert [result(d)[1] for d in waiting] == [("127.0.0.1", 80), ("127.0.0.1", 81), ("127.0.0.1", 82)]


def test_refreshes_in_the_background_and_keeps_last_good_on_failure():
    """Every refresh interval the name is looked up again off the connect
    path; when that fails the last good address is still given, and the note
    says how old it is and why."""
    clock, lookup, resolver = make(refresh=30.0)
    resolver.resolve("b.test", 80)
    lookup.answer(HOME)
    clock.advance(30)
    assert len(lookup.calls) == 2
    lookup.fail("no answer from DNS server 10.0.0.53:53")
    clock.advance(12)
    assert result(resolver.resolve("b.test", 80)) == (socket.AF_INET, ("127.0.0.1", 80))
    assert resolver.note("b.test") == (
        "address from last good lookup 42 s ago: no answer from DNS server 10.0.0.53:53"
    )


def test_a_new_answer_replaces_the_address():
    """A refresh with another address is used by the next connection."""
    clock, lookup, resolver = make(refresh=30.0)
    resolver.resolve("b.test", 80)
    lookup.answer(HOME)
    clock.advance(30)
    lookup.answer(OTHER)
    assert result(resolver.resolve("b.test", 80))[1] == ("127.0.0.2", 80)
    assert resolver.note("b.test") is None


def test_each_lookup_is_bounded():
    """A lookup that never answers is given up (and cancelled) after the
    timeout; its waiters fail saying so."""
    clock, lookup, resolver = make(timeout=5.0)
    d = resolver.resolve("b.test", 80)
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.1)
    failure = result(d)
    assert failure.check(DNSLookupError)
    assert "lookup timed out after 5s" in failure.getErrorMessage()
    assert lookup.cancelled == 1


def test_failures_are_cached_until_the_next_retry():
    """A name that never resolved and whose lookup failed fails at once,
    without another lookup, until its retry; retries back off."""
    clock, lookup, resolver = make(refresh=30.0)
    d = resolver.resolve("b.test", 80)
    lookup.fail("no such name")
    assert result(d).check(DNSLookupError)
    fast = resolver.resolve("b.test", 80)
    assert "b.test: no such name" in result(fast).getErrorMessage()
    assert len(lookup.calls) == 1
    starts = []
    for _ in range(7):
        before = clock.seconds()
        while len(lookup.calls) == len(starts) + 1:
            clock.advance(0.5)
        starts.append(clock.seconds() - before)
        lookup.fail()
    assert starts == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_new_names_are_looked_up_at_once_and_removed_ones_forgotten():
    """Tracking a config's names looks a new one up at once (IP literals
    never); a name no longer tracked is not looked up again."""
    clock, lookup, resolver = make()
    resolver.track(["b.test", "10.0.0.1", "::1"])
    assert [name for name, _ in lookup.calls] == ["b.test"]
    lookup.answer(HOME)
    resolver.track(["c.test"])
    assert [name for name, _ in lookup.calls] == ["b.test", "c.test"]
    lookup.answer(OTHER)
    clock.advance(30)
    assert [name for name, _ in lookup.calls] == ["b.test", "c.test", "c.test"]


def test_follows_config_changes_as_an_observer():
    """As an IConfigObserver the resolver looks a new config's names up at
    once and forgets the ones no longer there."""
    from lbproxy.interfaces import IConfigObserver

    clock, lookup, resolver = make()
    assert verifyObject(IConfigObserver, resolver)
    one = Config(version=1, backends=(Backend(id="b1", host="b.test", port=80),))
    two = Config(version=2, backends=(Backend(id="b2", host="c.test", port=80),))
    resolver.applied(Config(version=0), one)
    assert [name for name, _ in lookup.calls] == ["b.test"]
    lookup.answer(HOME)
    resolver.applied(one, two)
    assert [name for name, _ in lookup.calls] == ["b.test", "c.test"]
    assert resolver.address("b.test") is None


def test_stop_never_waits_for_a_lookup():
    """stopService returns at once (not a Deferred), abandons the lookup in
    flight and leaves no timer behind."""
    clock, lookup, resolver = make()
    resolver.resolve("a.test", 80)
    lookup.answer(HOME)
    resolver.resolve("b.test", 80)
    assert resolver.stopService() is None
    assert lookup.cancelled == 1
    assert clock.getDelayedCalls() == []


def test_unstarted_resolver_refreshes_lazily():
    """Without the service running (a worker's own balancer), a stale name
    still answers at once from the last good address and is looked up again
    in the background."""
    clock, lookup, resolver = make(running=False)
    resolver.resolve("b.test", 80)
    lookup.answer(HOME)
    assert clock.getDelayedCalls() == []
    clock.advance(31)
    assert result(resolver.resolve("b.test", 80))[1] == ("127.0.0.1", 80)
    assert len(lookup.calls) == 2


def known(clock, *addresses, error=None):
    """A resolver that has looked b.test up (and failed since, if error)."""
    lookup = FakeLookup()
    resolver = Resolver(clock, lookup)
    resolver.startService()
    resolver.resolve("b.test", 80)
    lookup.answer(*addresses)
    if error:
        clock.advance(30)
        lookup.fail(error)
    return resolver


def test_fast_engine_asks_the_balancer_resolver():
    """FastRelay.resolve answers at once from the balancer's resolver (no
    thread pool, no lookup)."""
    from lbproxy.model.config import ProxySettings
    from lbproxy.relay.fast_engine import FastRelay, available, listening_socket

    if not available():
        pytest.skip("the fast engine needs epoll")
    clock = task.Clock()

    class FakeBalancer:
        resolver = known(clock, HOME)
        settings = ProxySettings()

    relay = FastRelay(FakeBalancer(), listening_socket("127.0.0.1", 0), clock)
    try:
        assert result(relay.resolve("b.test", 9)) == (socket.AF_INET, ("127.0.0.1", 9))
    finally:
        relay.listener.close()
        relay.epoll.close()


def test_twisted_engine_connects_to_the_resolved_address():
    """The Twisted engine's endpoint for a name connects to the resolver's
    address, during a DNS outage too."""
    from lbproxy.relay.backend_endpoint import backend_endpoint

    reactor = MemoryReactorClock()
    resolver = known(reactor, OTHER, error="no answer")
    endpoint = backend_endpoint(reactor, "b.test", 8080, 3.0, resolver)
    from twisted.internet.interfaces import IStreamClientEndpoint
    from twisted.internet.protocol import Factory, Protocol

    assert verifyObject(IStreamClientEndpoint, endpoint)
    endpoint.connect(Factory.forProtocol(Protocol))
    host, port, _, timeout, _ = reactor.tcpClients[-1]
    assert (host, port, timeout) == ("127.0.0.2", 8080, 3.0)


def test_check_probes_last_good_address_during_outage():
    """A TCP check of a backend by name connects to the last good address
    while lookups fail, passes, and carries the resolver's note."""
    reactor = MemoryReactorClock()
    resolver = known(reactor, HOME, error="no answer from DNS server")
    reactor.advance(12)
    backend = Backend(id="b1", host="b.test", port=7000)
    d = probe(backend, HealthCheck(type="tcp"), reactor, None, default_endpoint, resolver)
    host, port, factory, _, _ = reactor.tcpClients[-1]
    assert (host, port) == ("127.0.0.1", 7000)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    assert result(d) == "address from last good lookup 42 s ago: no answer from DNS server"


def test_check_of_a_never_resolved_name_fails_with_the_lookup_error():
    """A name that has never resolved fails its check, saying why."""
    from lbproxy.health.probes import describe_failure

    reactor = MemoryReactorClock()
    lookup = FakeLookup()
    resolver = Resolver(reactor, lookup)
    d = probe(Backend(id="b1", host="b.test", port=7000), HealthCheck(type="tcp"),
              reactor, None, default_endpoint, resolver)
    lookup.fail("no such name")
    failure = result(d)
    assert describe_failure(failure, HealthCheck(type="tcp")) == "host name lookup failed: b.test: no such name"


def test_http_check_of_a_name_goes_to_the_address_with_the_host_header():
    """An HTTP check of a backend by name asks its last good address and
    sends the name in the Host header (no lookup by the HTTP client)."""
    clock = task.Clock()
    resolver = known(clock, HOME, error="no answer")
    asked = []

    class Response:
        code = 200

        def collect(self, sink):
            return defer.succeed(None)

    class Client:
        def get(self, url, headers=None, allow_redirects=True):
            asked.append((url, headers))
            return defer.succeed(Response())

    backend = Backend(id="b1", host="b.test", port=7000)
    d = probe(backend, HealthCheck(type="http", path="/health"), clock, Client(), default_endpoint, resolver)
    assert asked == [("http://127.0.0.1:7000/health", {"Host": ["b.test:7000"]})]
    assert result(d).startswith("address from last good lookup")


def test_backend_view_says_when_the_address_is_from_an_old_lookup(factories):
    """Without any health check the API's view of a backend by name says,
    under health.dns, that its address is from the last good lookup."""
    from lbproxy.policy.balancer import Balancer

    clock = task.Clock()
    resolver = known(clock, HOME, error="no answer from DNS server")
    config = Config(version=1, backends=(Backend(id="b1", host="b.test", port=80),))
    balancer = Balancer(config, factories, reactor=clock, resolver=resolver)
    clock.advance(12)
    view = balancer.backend_view(config.backends[0])
    assert view["health"]["dns"] == "address from last good lookup 42 s ago: no answer from DNS server"
    assert view["state"] == "up"


def test_command_line_builds_and_wires_the_resolver():
    """The assembly runs one resolver as a service, gives it to the balancer
    (so engines and checks use it) and it looks the backends' names up at
    start and a new backend's at once; --dns-server is parsed into servers and a bad one is a usage
    error naming the flag (the twistd test proves the servers are asked)."""
    from twisted.python import usage

    from lbproxy.startup.assembly import assemble
    from lbproxy.startup.tap import Options

    def parse(*args):
        o = Options()
        o.parseOptions(list(args))
        return o

    with pytest.raises(usage.UsageError, match="--dns-server 'nowhere' is not HOST:PORT"):
        parse("--backend", "web.test:80", "--dns-server", "nowhere")
    # Port 0: the change below binds the service's endpoint for real (the
    # default tcp:8080 fails the change whenever another process holds it).
    o = parse("--backend", "web.test:80", "--listen", "tcp:0:interface=127.0.0.1",
              "--dns-server", "127.0.0.1:5353,[::1]:53", "--dns-refresh", "7")
    assert o.spec.dns_servers == (("127.0.0.1", 5353), ("::1", 53))
    reactor = MemoryReactorClock()
    built = assemble(o.spec, reactor)
    top = built.top
    resolver = top.getServiceNamed("resolver")
    assert built.balancer.resolver is resolver and resolver.refresh == 7.0
    resolver.startService()
    assert resolver.lookups == 1
    from lbproxy.model.changes import add_backend

    changed = []
    built.controller.change(lambda c: add_backend(c, {"host": "new.test", "port": 81})).addBoth(changed.append)
    try:
        assert not isinstance(changed[0], Failure), changed[0]
        assert resolver.lookups == 2
        assert resolver.stopService() is None
    finally:
        built.controller.listeners.stop()
