"""
SNI routing and the PROXY protocol on a listener, over real sockets on
both relay engines: two real TLS servers (certificates made by openssl
for the test) behind one lbproxy port, told apart by the server name
that Python's ssl client and ``openssl s_client`` send; HAProxy in front
of lbproxy with send-proxy-v2, so the backend sees the original client.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from lbproxy.interfaces import IListenerRoute
from tests.routes import ServicesByName
from tests.integration import relay_harness as h
from tests.integration.relay_harness import until

pytestmark = pytest.mark.integration

HAPROXY = "/usr/sbin/haproxy"


#: A hand-built route: services by the first label of a C{.test} name.
TwoServices = ServicesByName


def start_engine(engine, route):
    """Run C{engine} on a route (the harness starters take any route)."""
    return h.ENGINES[engine](route, reactor)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate and key, made by openssl."""
    where = tmp_path_factory.mktemp("tls")
    key, cert = where / "key.pem", where / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=lbproxy-test"],
        check=True, capture_output=True, timeout=30,
    )
    return (key.read_bytes() + cert.read_bytes())


class SayName(protocol.Protocol):
    """Says its server's name (once TLS is up), then closes."""

    def connectionMade(self):
        self.transport.write(self.factory.name.encode() + b"\n")
        self.transport.loseConnection()


def tls_server(cleanup, pem, name):
    from twisted.internet.ssl import PrivateCertificate

    factory = protocol.Factory.forProtocol(SayName)
    factory.name = name
    port = reactor.listenSSL(0, factory, PrivateCertificate.loadPEM(pem).options(), interface="127.0.0.1")
    cleanup(port.stopListening)
    return port.getHost().port


def services(factories, cleanup, ports, **backend):
    found = {}
    for name, port in ports.items():
        b = h.make_balancer(reactor, factories, [port], **backend)
        b.start(interval=0.05)
        cleanup(b.stop)
        found[name] = b
    return found


def tls_read(port, server_name):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as s:
            return h.read_line(s)


def s_client(port, server_name):
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", "-ign_eof"]
    if server_name:
        args += ["-servername", server_name]
    else:
        args += ["-noservername"]
    done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    return done.stdout


@pytest_twisted.inlineCallbacks
def test_two_tls_sites_on_one_port(engine, factories, cleanup, certificate):
    """Two TLS servers behind one listener: the ClientHello's server name
    picks each (Python ssl and openssl s_client); no SNI or an unknown
    name goes to the default; the TLS session itself passes through."""
    ports = {"a": tls_server(cleanup, certificate, "site-a"), "b": tls_server(cleanup, certificate, "site-b")}
    route = TwoServices(services(factories, cleanup, ports))
    assert verifyObject(IListenerRoute, route)
    port, stop = start_engine(engine, route)
    cleanup(stop)
    got = yield deferToThread(
        lambda: [tls_read(port, n) for n in ("a.test", "b.test", None, "other.example")]
    )
    assert got == [b"site-a\n", b"site-b\n", b"site-a\n", b"site-a\n"]
    got = yield deferToThread(lambda: [s_client(port, n) for n in ("b.test", "a.test", None)])
    assert got == [b"site-b\n", b"site-a\n", b"site-a\n"]
    assert route.refusals == []
    b = route.services["b"].pool.stats["b1"]
    yield until(lambda: b.active == 0 and b.total == 2)


@pytest_twisted.inlineCallbacks
def test_refusals_without_a_default(engine, factories, cleanup, certificate):
    """Without a default service, a hello with no SNI is closed and
    counted; a client that sends nothing is closed at sni_timeout."""
    ports = {"b": tls_server(cleanup, certificate, "site-b")}
    route = TwoServices(services(factories, cleanup, ports), default=None, timeout=0.3)
    port, stop = start_engine(engine, route)
    cleanup(stop)

    def run():
        with pytest.raises((ssl.SSLError, OSError)):
            tls_read(port, None)
        started = time.monotonic()
        assert h.read_until_closed(port) == b""
        return time.monotonic() - started

    waited = yield deferToThread(run)
    assert route.refusals == ["no-sni", "sni-timeout"] and waited >= 0.25


@pytest_twisted.inlineCallbacks
def test_server_speaks_first_on_an_ordinary_listener(engine, factories, cleanup):
    """An ordinary listener reads nothing before connecting: a backend that
    speaks first (like SSH or SMTP) greets a client that sends nothing."""
    named = h.serve(reactor, h.Named, name="greeter")
    cleanup(named.stopListening)
    balancer = h.make_balancer(reactor, factories, [named.getHost().port])
    port, stop = h.ENGINES[engine](balancer, reactor)
    cleanup(stop)

    def run():
        with h.client(port, timeout=5) as s:
            return h.read_line(s)

    assert (yield deferToThread(run)) == b"greeter\n"


class ReadProxyLine(protocol.Protocol):
    """Answers the PROXY v1 line lbproxy sent, then what came after it."""

    def connectionMade(self):
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        if b"\r\n" in self.buffer and self.buffer.endswith(b"!"):
            self.transport.write(self.buffer)
            self.transport.loseConnection()


def free_port():
    return h.dead_port()


@pytest.fixture
def haproxy(tmp_path):
    """Start HAProxy on loopback in front of a port: C{start(target)} ->
    its listening port."""
    if not os.path.exists(HAPROXY):
        pytest.fail("HAProxy is not installed (apt-get install haproxy)")
    running = []

    def start(target):
        port = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
            f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n"
            f"backend b\n  server lb 127.0.0.1:{target} send-proxy-v2\n"
        )
        running.append(subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        return port

    yield start
    for process in running:
        process.terminate()
        process.wait(timeout=10)


def wait_listening(port, deadline=10.0):
    end = time.monotonic() + deadline
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


@pytest_twisted.inlineCallbacks
def test_haproxy_in_front_the_backend_sees_the_original_client(engine, factories, cleanup, haproxy):
    """HAProxy sends PROXY v2 to lbproxy (accept_proxy 127.0.0.0/8); lbproxy
    takes the client's address from it and sends its own PROXY v1 header
    on: the backend sees the original client address and port, then the
    client's bytes unchanged."""
    backend = h.serve(reactor, ReadProxyLine)
    cleanup(backend.stopListening)
    found = services(factories, cleanup, {"a": backend.getHost().port}, proxy_protocol="v1")
    route = TwoServices(found, sni=False, proxy=["127.0.0.0/8"])
    port, stop = start_engine(engine, route)
    cleanup(stop)
    front = haproxy(port)
    records = h.access_log(cleanup)

    def run():
        wait_listening(front)
        with socket.create_connection(("127.0.0.1", front), timeout=10, source_address=("127.0.0.3", 0)) as s:
            mine = s.getsockname()
            s.sendall(b"hello through two proxies!")
            return mine, h.read_all(s)

    (host, cport), answer = yield deferToThread(run)
    expected = f"PROXY TCP4 127.0.0.3 127.0.0.1 {cport} {front}\r\n".encode()
    assert answer == expected + b"hello through two proxies!"
    yield until(lambda: any(r.get("client") == f"127.0.0.3:{cport}" for r in records))
    assert route.refusals == []


def test_defer_accept_only_on_sni_listeners(factories):
    """The fast engine sets TCP_DEFER_ACCEPT on a listener that routes by
    SNI (the client speaks first there) and never on an ordinary one."""
    if "fast" not in h.ENGINES:
        pytest.skip("the fast engine needs Linux")
    from lbproxy.relay.fast_engine import FastRelay, listening_socket

    b = h.make_balancer(reactor, factories, [h.dead_port()])
    seen = {}
    for name, target in (("sni", TwoServices({"a": b}, timeout=3.0)), ("ordinary", b)):
        engine = FastRelay(target, listening_socket("127.0.0.1", 0), reactor)
        seen[name] = engine.listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
        engine.listener.close()
        engine.epoll.close()
    assert seen["ordinary"] == 0 and seen["sni"] > 0


@pytest_twisted.inlineCallbacks
def test_haproxy_in_front_of_sni_routing(engine, factories, cleanup, certificate, haproxy):
    """HAProxy's PROXY v2 header, then the client's ClientHello, in one
    stream: lbproxy reads the header, then routes by the server name."""
    ports = {"a": tls_server(cleanup, certificate, "site-a"), "b": tls_server(cleanup, certificate, "site-b")}
    route = TwoServices(services(factories, cleanup, ports), proxy=["127.0.0.0/8"])
    port, stop = start_engine(engine, route)
    cleanup(stop)
    front = haproxy(port)

    def run():
        wait_listening(front)
        return [tls_read(front, n) for n in ("b.test", "a.test")]

    assert (yield deferToThread(run)) == [b"site-b\n", b"site-a\n"]


@pytest_twisted.inlineCallbacks
def test_untrusted_proxy_header_is_closed(engine, factories, cleanup, certificate):
    """A source outside accept_proxy that starts with a PROXY header on an
    SNI listener is closed and counted proxy-untrusted; its ClientHello
    alone is routed."""
    ports = {"b": tls_server(cleanup, certificate, "site-b")}
    route = TwoServices(services(factories, cleanup, ports), default="b", proxy=["127.0.0.2/32"])
    port, stop = start_engine(engine, route)
    cleanup(stop)

    def run():
        with h.client(port) as s:
            s.sendall(b"PROXY TCP4 203.0.113.1 127.0.0.1 1 2\r\n")
            closed = h.read_all(s)
        return closed, tls_read(port, "b.test")

    closed, named = yield deferToThread(run)
    assert (closed, named) == (b"", b"site-b\n") and route.refusals == ["proxy-untrusted"]
