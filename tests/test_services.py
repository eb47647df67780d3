"""
The document of services, the service table's diffing, the listener
routes and the listener manager, without the network (a memory reactor;
the manager's bind failure uses a real loopback socket held by the test).
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface.verify import verifyObject

from lbproxy.control.listeners import ListenerManager, ListenRefused
from lbproxy.control.routes import ListenerRoute
from lbproxy.interfaces import IBalancer, IListenerRoute
from lbproxy.model.changes import add_backend
from lbproxy.model.config import Config
from lbproxy.model.errors import ConfigError
from lbproxy.model.service import (
    Document,
    add_service,
    as_document,
    change_service,
    parse_document,
    remove_service,
    update_service,
)
from lbproxy.policy.services import ServiceTable
from tests.fuzz.samples import client_hello


def service(name, listen=("tcp:0",), port=9001, **extra):
    return {"name": name, "listen": list(listen), "backends": [{"host": "127.0.0.1", "port": port}],
            "strategy": {"name": "round-robin"}, **extra}


def document(*bodies):
    doc = Document()
    for body in bodies:
        doc, _ = add_service(doc, body)
    return doc


def test_legacy_one_pool_document_is_service_default():
    """The first release's document (no services key) parses as one service named default."""
    doc = parse_document({"version": 3, "backends": [{"id": "b1", "host": "127.0.0.1", "port": 1}],
                          "strategy": {"name": "random"}})
    assert doc.version == 3 and doc.names == ("default",)
    assert doc.main().strategy.name == "random" and doc.main().version == 3
    assert parse_document(doc.to_json()) == doc


def test_services_round_trip_and_fields():
    """A document of services round-trips through JSON; sni names are kept lower case, CIDRs canonical."""
    doc = document(
        service("pg", ["tcp:5432"], sni=["db.example.com"], accept_proxy=["10.0.0.7/8"],
                idle_timeout=30, max_connections=5, retries=0, connect_timeout=0.5),
        service("redis", ["tcp:6379"]),
    )
    pg = doc.service("pg")
    assert pg.accept_proxy == ("10.0.0.0/8",) and pg.sni == ("db.example.com",)
    assert (pg.idle_timeout, pg.max_connections, pg.retries, pg.connect_timeout) == (30.0, 5, 0, 0.5)
    assert parse_document(doc.to_json()) == doc
    assert doc.version == 2 and all(s.version == 2 for s in doc.services)


@pytest.mark.parametrize("bodies, message", [
    ([service("a", ["tcp:1"]), service("b", ["tcp:1"])], "each of them needs sni names"),
    ([service("a", ["tcp:1"], sni=["a.x"], sni_default=True),
      service("b", ["tcp:1"], sni=["b.x"], sni_default=True)], "at most one may be the sni_default"),
    ([service("a", ["tcp:1"], sni=["a.x"], accept_proxy=["10.0.0.0/8"]),
      service("b", ["tcp:1"], sni=["b.x"])], "must agree on accept_proxy"),
    ([service("a", ["tcp:1"], sni=["x.y"]), service("b", ["tcp:1"], sni=["x.y"])], "given by both"),
    ([service("a"), service("a")], "already exists"),
    ([service("Bad")], "lower-case letters"),
    ([service("a", sni=["Not A Name"])], "server name"),
    ([service("a", accept_proxy=["10.0.0.0/33"])], "network"),
    ([service("a", listen=[])], "should be non-empty"),
    ([service("a", sni_default=True)], "sni_default needs"),
])
def test_bad_documents_are_refused_naming_what(bodies, message):
    """Services sharing an endpoint must each give sni, agree on accept_proxy, have one default; names and fields are checked."""
    with pytest.raises(ConfigError) as e:
        document(*bodies)
    assert message in str(e.value)


def test_shared_endpoint_with_sni_is_valid_and_tcp0_is_never_shared():
    """Two services on one endpoint with sni names are fine; two on tcp:0 are two listeners, no sni needed."""
    document(service("a", ["tcp:1"], sni=["a.x"], sni_default=True), service("b", ["tcp:1"], sni=["*.x"]))
    document(service("a", ["tcp:0:interface=127.0.0.1"]), service("b", ["tcp:0:interface=127.0.0.1"]))


def test_changes_of_one_pool_are_lifted_to_the_document():
    """add_backend on a service bumps the document's version and leaves the other services alone."""
    doc = document(service("a"), service("b", port=9002))
    new, backend = change_service("b", lambda c: add_backend(c, {"host": "127.0.0.1", "port": 9003}))(doc)
    assert new.version == doc.version + 1
    assert [b.port for b in new.service("b").backends] == [9002, 9003]
    assert new.service("a").backends == doc.service("a").backends
    with pytest.raises(KeyError):
        change_service("nope", lambda c: (c, None))(doc)
    patched, _ = update_service(new, "a", {"strategy": {"name": "random"}}, whole=False)
    assert patched.service("a").strategy.name == "random" and patched.service("a").listen == ("tcp:0",)
    with pytest.raises(ConfigError):
        update_service(new, "a", {"name": "other"}, whole=True)
    assert remove_service(new, "a").names == ("b",)


def test_table_diffs_services_and_keeps_counters(factories):
    """New service: new balancer; changed: same balancer applied (counters kept); removed: retired, forgotten once drained."""
    reactor = MemoryReactorClock()
    doc = document(service("a"), service("b", port=9002))
    table = ServiceTable(doc, factories, reactor=reactor)
    a, b = table.balancer("a"), table.balancer("b")
    a.totals.accepted = 5
    new, _ = change_service("a", lambda c: add_backend(c, {"host": "127.0.0.1", "port": 9005}))(doc)
    new, _ = add_service(new, service("c", port=9006))
    new = remove_service(new, "b")
    b.totals.active = 1  # one connection still open
    table.apply(new, table.check(new))
    assert table.balancer("a") is a and a.totals.accepted == 5
    assert [x.port for x in a.config.backends] == [9001, 9005]
    assert table.balancer("c") is not None and table.balancer("b") is None
    assert table.retiring == {"b": b}
    assert not b.admit()  # a retired service admits no one
    b.totals.active = 1
    b.client_failed(type("R", (), {"bytes_up": 0, "bytes_down": 0, "client": "x", "backend": None,
                                   "duration": 0.0, "outcome": "ok"})())
    assert table.retiring == {}


def test_table_check_names_the_service_of_a_bad_strategy(factories):
    """A strategy no plugin provides is refused before anything applies, naming the service."""
    table = ServiceTable(document(service("a")), factories, reactor=MemoryReactorClock())
    bad, _ = update_service(table.document, "a", {"strategy": {"name": "nope"}}, whole=False)
    with pytest.raises(ConfigError) as e:
        table.check(bad)
    assert "service 'a'" in str(e.value)


def test_listener_route_sni_matching():
    """Exact name first, then the longest wildcard; the sni_default otherwise; one service needs no choice."""
    a, b, c, d = (object() for _ in range(4))
    doc = document(
        service("a", ["tcp:1"], sni=["db.example.com"], accept_proxy=["10.0.0.0/8"]),
        service("b", ["tcp:1"], sni=["*.example.com"], sni_default=True, accept_proxy=["10.0.0.0/8"]),
        service("c", ["tcp:1"], sni=["*.eu.example.com"], accept_proxy=["10.0.0.0/8"]),
    )
    pairs = [(doc.service("a"), a), (doc.service("b"), b), (doc.service("c"), c)]
    route = ListenerRoute("tcp:1", pairs)
    verifyObject(IListenerRoute, route)
    assert route.routes_by_sni and route.sni_timeout == 5.0
    assert route.for_server_name("db.example.com") is a
    assert route.for_server_name("x.db.example.com") is b
    assert route.for_server_name("pg.eu.example.com") is c
    assert route.for_server_name("example.org") is None
    assert route.default() is b
    assert [str(n) for n in route.accept_proxy] == ["10.0.0.0/8"]
    route.refused("no-sni")
    route.refused("no-sni")
    assert route.refusals == {"no-sni": 2}
    alone = ListenerRoute("tcp:2", [(doc.service("a"), d)])
    assert not alone.routes_by_sni and alone.default() is d


def test_manager_bind_failure_leaves_nothing_bound(factories):
    """
    A document with one free and one taken endpoint is refused (409) with
    the free one unbound again: nothing listens, nothing is half-applied.
    """
    reactor = MemoryReactorClock()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()
    try:
        table = ServiceTable(Document(), factories, reactor=reactor)
        manager = ListenerManager(table, "twisted", reactor=reactor)
        doc = document(service("a", [f"tcp:{free_port}:interface=127.0.0.1",
                                     f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"]))
        with pytest.raises(ListenRefused) as e:
            manager.prepare(doc)
        assert e.value.status == 409 and "service 'a'" in str(e.value)
        assert manager.listeners == {}
        again = socket.socket()
        again.bind(("127.0.0.1", free_port))  # the free port was let go
        again.close()
    finally:
        taken.close()


def test_manager_commit_gives_each_listener_its_route(factories):
    """After commit each endpoint's engine reads its service's balancer; a removed endpoint stops."""
    reactor = MemoryReactorClock()
    doc = document(service("a", ["tcp:0:interface=127.0.0.1"]), service("b", ["tcp:0:interface=127.0.0.1"]))
    table = ServiceTable(doc, factories, reactor=reactor)
    manager = ListenerManager(table, "twisted", reactor=reactor)
    manager.start(doc)
    try:
        factories_of = {key.split(" (")[1][:-1]: l.factory for key, l in manager.listeners.items()}
        assert factories_of["a"].route.default() is table.balancer("a")
        assert factories_of["b"].route.default() is table.balancer("b")
        verifyObject(IBalancer, table.balancer("a"))
        smaller = remove_service(doc, "b")
        table.apply(smaller)
        manager.commit(manager.prepare(smaller), smaller)
        assert len(manager.listeners) == 1
    finally:
        manager.stop()


def test_as_document_wraps_one_pool():
    """A one-pool Config becomes a document of that one service, at its version."""
    c = Config(version=4)
    assert as_document(c) == Document(4, (c,))
    assert as_document(as_document(c)) == Document(4, (c,))


def test_a_service_own_connection_settings_override_the_command_line(factories):
    """A service's connect_timeout, retries, idle_timeout and max_connections are its balancer's settings; null keeps the command line's; a change applies them."""
    from lbproxy.model.config import ProxySettings

    base = ProxySettings(connect_timeout=3.0, retries=2, idle_timeout=300.0, max_connections=100)
    doc = document(service("a", connect_timeout=0.25, max_connections=7), service("b"))
    table = ServiceTable(doc, factories, base, reactor=MemoryReactorClock())
    a, b = table.balancer("a").settings, table.balancer("b").settings
    assert (a.connect_timeout, a.retries, a.idle_timeout, a.max_connections) == (0.25, 2, 300.0, 7)
    assert b == base
    changed, _ = update_service(doc, "b", {"idle_timeout": 5, "retries": 0}, whole=False)
    table.apply(changed)
    b = table.balancer("b").settings
    assert (b.idle_timeout, b.retries, b.max_connections) == (5.0, 0, 100)


def test_workers_carry_several_endpoints():
    """--workers 2 with several --listen endpoints is accepted: every worker
    carries every service and endpoint (none is silently dropped: the spec
    keeps both)."""
    from lbproxy.startup.tap import Options

    o = Options()
    o.parseOptions(["--workers", "2", "--listen", "tcp:0", "--listen", "tcp:1", "--backend", "127.0.0.1:9"])
    assert [e.description for e in o.spec.listens] == ["tcp:0", "tcp:1"]


def test_shared_listener_routes_by_server_name_and_counts(factories):
    """
    A listener shared by services reads the ClientHello through the
    manager's route: each server name reaches its own service's backend;
    without sni_default, a name no service has is refused and counted on
    the route; with one, it goes to that service, and the counts survive
    the swap.
    """
    reactor = MemoryReactorClock()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    endpoint = f"tcp:{free.getsockname()[1]}:interface=127.0.0.1"
    free.close()
    doc = document(service("a", [endpoint], port=9001, sni=["a.x"]),
                   service("b", [endpoint], port=9002, sni=["b.x"]))
    table = ServiceTable(doc, factories, reactor=reactor)
    manager = ListenerManager(table, "twisted", reactor=reactor)
    manager.start(doc)

    def connect(name):
        protocol = listener.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(client_hello(name))
        return transport

    try:
        (listener,) = manager.listeners.values()
        assert listener.factory.route is manager.routes[endpoint]
        verifyObject(IListenerRoute, listener.factory.route)
        connect("b.x")
        connect("a.x")
        assert [c[:2] for c in reactor.tcpClients] == [("127.0.0.1", 9002), ("127.0.0.1", 9001)]
        assert connect("c.x").disconnecting and len(reactor.tcpClients) == 2
        assert manager.routes[endpoint].refusals == {"no-match": 1}
        with_default, _ = update_service(doc, "b", {"sni_default": True}, whole=False)
        table.apply(with_default)
        manager.commit(manager.prepare(with_default), with_default)
        connect("c.x")
        assert reactor.tcpClients[-1][:2] == ("127.0.0.1", 9002)
        assert manager.routes[endpoint].refusals == {"no-match": 1}  # counts survive the swap
    finally:
        manager.stop()


def test_fast_engine_started_by_the_manager_relays_for_its_route(factories):
    """
    The fast engine of a new shared listener is made with the manager's
    route (not a balancer wrapped as one service): it routes by SNI from
    its first client, so it defers accept until the client speaks.
    """
    if not hasattr(socket, "TCP_DEFER_ACCEPT"):
        pytest.skip("the fast engine needs Linux")
    reactor = MemoryReactorClock()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    endpoint = f"tcp:{free.getsockname()[1]}:interface=127.0.0.1"
    free.close()
    doc = document(service("a", [endpoint], sni=["a.x"]), service("b", [endpoint], sni=["b.x"]))
    table = ServiceTable(doc, factories, reactor=reactor)
    manager = ListenerManager(table, "fast", reactor=reactor)
    manager.start(doc)
    try:
        (listener,) = manager.listeners.values()
        assert listener.engine.route is manager.routes[endpoint] and listener.engine.route.routes_by_sni
        assert listener.engine.listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
    finally:
        manager.stop()


def test_accept_proxy_and_settings_reach_the_route(factories):
    """
    A service's accept_proxy reaches its listener's route, and a PROXY v2
    header from a trusted source gives the session the original client;
    the route carries the process's settings (the socket options of its
    connections) even while it has no default service.
    """
    from lbproxy.model.config import ProxySettings
    from lbproxy.relay.proxyprotocol import header_v2

    reactor = MemoryReactorClock()
    doc = document(service("a", ["tcp:0:interface=127.0.0.1"], accept_proxy=["127.0.0.0/8"]))
    table = ServiceTable(doc, factories, reactor=reactor)
    settings = ProxySettings(tcp_keepalive=(30, 5, 3))
    manager = ListenerManager(table, "twisted", reactor=reactor, settings=settings)
    manager.start(doc)
    try:
        (listener,) = manager.listeners.values()
        route = listener.factory.route
        assert [str(n) for n in route.accept_proxy] == ["127.0.0.0/8"] and route.settings is settings
        protocol = listener.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(header_v2(("198.51.100.7", 5555), ("127.0.0.1", 80)))
        assert [c[:2] for c in reactor.tcpClients] == [("127.0.0.1", 9001)]
        assert protocol.session.client == ("198.51.100.7", 5555)
    finally:
        manager.stop()
