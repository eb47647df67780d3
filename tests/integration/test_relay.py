"""
Behaviour of a relay engine over real loopback sockets.  Every engine in
L{relay_harness.ENGINES} must pass every test here.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

from lbproxy.model.changes import remove_backend
from lbproxy.model.config import ProxySettings
from tests.integration import relay_harness as h
from tests.integration.relay_harness import until

pytestmark = pytest.mark.integration


def start(engine, balancer, cleanup):
    port, stop = h.ENGINES[engine](balancer, reactor)
    cleanup(stop)
    balancer.start(interval=0.05)
    cleanup(balancer.stop)
    return port


def backend(cleanup, proto, **attrs):
    port = h.serve(reactor, proto, **attrs)
    cleanup(port.stopListening)
    return port


@pytest_twisted.inlineCallbacks
def test_10mib_arrives_identical(engine, factories, cleanup):
    """A 10 MiB payload through the proxy and back is byte-identical, and
    the backend's counters add up the bytes each way."""
    echo = backend(cleanup, h.Echo)
    balancer = h.make_balancer(reactor, factories, [echo.getHost().port])
    port = start(engine, balancer, cleanup)
    payload = os.urandom(10 * 1024 * 1024)

    def run():
        s = h.client(port)
        sender = __import__("threading").Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        data = h.read_all(s)
        sender.join()
        s.close()
        return data

    data = yield deferToThread(run)
    assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()
    yield until(lambda: balancer.totals.active == 0)
    stats = balancer.pool.stats["b1"]
    assert (stats.bytes_up, stats.bytes_down) == (len(payload), len(payload))
    assert stats.total == 1 and stats.active == 0


@pytest_twisted.inlineCallbacks
def test_client_half_close_still_gets_response(engine, factories, cleanup):
    """A client that shuts down its write side still receives the backend's
    full response, sent only after the backend saw the EOF."""
    counter = backend(cleanup, h.CountUntilEOF)
    balancer = h.make_balancer(reactor, factories, [counter.getHost().port])
    port = start(engine, balancer, cleanup)

    def run():
        s = h.client(port)
        s.sendall(b"x" * 100_000)
        s.shutdown(socket.SHUT_WR)
        data = h.read_all(s)
        s.close()
        return data

    data = yield deferToThread(run)
    assert data == b"got 100000\n"


@pytest_twisted.inlineCallbacks
def test_backend_half_close_client_can_still_send(engine, factories, cleanup):
    """After the backend shuts down its write side, the client sees EOF yet
    can still send, and the backend receives it."""
    server = backend(cleanup, h.SpeakThenHalfClose, received=[])
    balancer = h.make_balancer(reactor, factories, [server.getHost().port])
    port = start(engine, balancer, cleanup)

    def run():
        s = h.client(port)
        greeting = h.read_all(s)
        s.sendall(b"late words")
        s.shutdown(socket.SHUT_WR)
        rest = h.read_all(s)
        s.close()
        return greeting, rest

    greeting, rest = yield deferToThread(run)
    assert greeting == b"bye from server\n" and rest == b""
    yield until(lambda: b"".join(server.factory.received) == b"late words")


@pytest_twisted.inlineCallbacks
def test_dead_backend_costs_only_a_retry(engine, factories, cleanup):
    """With a refused backend in the pool every client still gets served;
    each refused connect is counted against the dead backend."""
    live = backend(cleanup, h.Named, name="live")
    balancer = h.make_balancer(reactor, factories, [h.dead_port(), live.getHost().port])
    port = start(engine, balancer, cleanup)

    names = yield deferToThread(h.names, port, 10)
    assert names == [b"live\n"] * 10
    assert balancer.pool.stats["b1"].failures >= 1
    assert balancer.totals.connect_failures == balancer.pool.stats["b1"].failures
    assert balancer.totals.retries == balancer.totals.connect_failures


@pytest_twisted.inlineCallbacks
def test_all_backends_dead_closes_client_after_retries(engine, factories, cleanup):
    """When every try fails the client is closed, after at most 1 + retries
    attempts."""
    balancer = h.make_balancer(
        reactor, factories, [h.dead_port(), h.dead_port(), h.dead_port()],
        settings=ProxySettings(retries=1),
    )
    port = start(engine, balancer, cleanup)

    data = yield deferToThread(h.read_until_closed, port)
    assert data == b""
    yield until(lambda: balancer.totals.active == 0)
    assert balancer.totals.connect_failures == 2


@pytest_twisted.inlineCallbacks
def test_200_concurrent_clients_split_as_strategy_says(engine, factories, cleanup):
    """200 clients held open at once over 3 backends: round-robin gives each
    backend a third; weighted round-robin follows weights 1:2:3."""
    servers = [backend(cleanup, h.Named, name=f"s{i}") for i in range(3)]
    ports = [s.getHost().port for s in servers]

    def run(port):
        socks = [h.client(port) for _ in range(200)]
        names = Counter(h.read_line(s).strip().decode() for s in socks)
        for s in socks:
            s.close()
        return names

    rr = h.make_balancer(reactor, factories, ports)
    port = start(engine, rr, cleanup)
    names = yield deferToThread(run, port)
    assert sorted(names.values()) == [66, 67, 67]
    yield until(lambda: rr.totals.active == 0)

    wrr = h.make_balancer(reactor, factories, ports, strategy="weighted-round-robin", weights=[1, 2, 3])
    port = start(engine, wrr, cleanup)
    names = yield deferToThread(run, port)
    for name, share in zip(("s0", "s1", "s2"), (1, 2, 3)):
        assert abs(names[name] - 200 * share / 6) <= 1, names


@pytest_twisted.inlineCallbacks
def test_connection_limit_closes_extra_clients(engine, factories, cleanup):
    """Over max-connections a new client is closed at once and counted;
    the clients within the limit keep working."""
    echo = backend(cleanup, h.Echo)
    balancer = h.make_balancer(
        reactor, factories, [echo.getHost().port], settings=ProxySettings(max_connections=2)
    )
    port = start(engine, balancer, cleanup)

    def run():
        a, b = h.client(port), h.client(port)
        for s in (a, b):
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        extra = h.read_until_closed(port)
        a.sendall(b"still")
        ok = a.recv(5)
        for s in (a, b):
            s.close()
        return extra, ok

    extra, ok = yield deferToThread(run)
    assert extra == b"" and ok == b"still"
    assert balancer.totals.rejected == 1


@pytest_twisted.inlineCallbacks
def test_idle_connection_is_closed(engine, factories, cleanup):
    """A connection where neither side sends is closed after the idle
    timeout, with the outcome in the access log; a busy one is not."""
    echo = backend(cleanup, h.Echo)
    balancer = h.make_balancer(
        reactor, factories, [echo.getHost().port], settings=ProxySettings(idle_timeout=0.3)
    )
    port = start(engine, balancer, cleanup)
    records = h.access_log(cleanup)

    def run():
        s = h.client(port)
        me = "%s:%d" % s.getsockname()
        s.sendall(b"hi")
        assert s.recv(2) == b"hi"
        data = h.read_all(s)
        s.close()
        return data, me

    data, me = yield deferToThread(run)
    assert data == b""
    # Only this client's line: connections of earlier tests may still end.
    mine = lambda: [r for r in records if r["client"] == me]  # noqa: E731
    yield until(mine)
    assert mine()[0]["outcome"] == "idle-timeout"
    assert balancer.totals.idle_timeouts == 1


@pytest_twisted.inlineCallbacks
def test_access_log_one_line_per_connection(engine, factories, cleanup):
    """Each finished connection gives exactly one access-log event with the
    client, backend, bytes each way and outcome."""
    echo = backend(cleanup, h.Echo)
    balancer = h.make_balancer(reactor, factories, [echo.getHost().port])
    port = start(engine, balancer, cleanup)
    records = h.access_log(cleanup)

    def run():
        clients = []
        for n in (10, 2000):
            s = h.client(port)
            clients.append("%s:%d" % s.getsockname())
            s.sendall(b"a" * n)
            got = 0
            while got < n:
                data = s.recv(65536)
                assert data, f"closed after {got} of {n} bytes"
                got += len(data)
            s.close()
        return clients

    clients = yield deferToThread(run)
    # Only these clients' lines: connections of earlier tests may still end.
    mine = lambda: [r for r in records if r["client"] in clients]  # noqa: E731
    yield until(lambda: len(mine()) == 2)
    assert [(r["client"], r["backend"], r["bytes_up"], r["bytes_down"], r["outcome"]) for r in mine()] == [
        (clients[0], "b1", 10, 10, "ok"), (clients[1], "b1", 2000, 2000, "ok"),
    ]


@pytest_twisted.inlineCallbacks
def test_backpressure_bounds_buffering(engine, factories, cleanup):
    """While the backend does not read, the proxy stops reading from the
    client: the client can push only a bounded amount (socket buffers plus a
    bounded relay buffer), and once the backend reads, every byte arrives."""
    server = backend(cleanup, h.Paused, instances=[], digest=hashlib.sha256())
    balancer = h.make_balancer(reactor, factories, [server.getHost().port])
    port = start(engine, balancer, cleanup)
    s = h.client(port)
    cleanup(s.close)
    s.setblocking(False)
    chunk = os.urandom(64 * 1024)
    sent = hashlib.sha256()
    total = 0
    quiet = 0
    while quiet < 10 and total < 256 * 1024 * 1024:
        progressed = False
        while True:
            try:
                n = s.send(chunk)
            except BlockingIOError:
                break
            sent.update(chunk[:n])
            total += n
            progressed = True
            if n < len(chunk):
                chunk = chunk[n:] + chunk[:n]
                break
        quiet = 0 if progressed else quiet + 1
        yield task.deferLater(reactor, 0.02, lambda: None)
    assert total < 64 * 1024 * 1024, f"{total} bytes accepted while the backend did not read"
    yield until(lambda: server.factory.instances)
    server.factory.instances[0].transport.resumeProducing()
    s.setblocking(True)
    s.shutdown(socket.SHUT_WR)
    yield until(lambda: server.factory.instances[0].count == total)
    assert server.factory.digest.digest() == sent.digest()


@pytest_twisted.inlineCallbacks
def test_removed_backend_drains(engine, factories, cleanup):
    """Removing a backend from the config stops new connections to it at
    once; its open connection keeps working; when that ends the backend is
    gone with a 'removed' event."""
    a = backend(cleanup, h.Named, name="a")
    b = backend(cleanup, h.Named, name="b")
    balancer = h.make_balancer(reactor, factories, [a.getHost().port, b.getHost().port])
    port = start(engine, balancer, cleanup)
    events = []
    cleanup(balancer.events.subscribe(events.append))

    s1 = yield deferToThread(h.client, port)
    first = yield deferToThread(h.read_line, s1)
    assert first == b"a\n"
    balancer.apply(remove_backend(balancer.config, "b1"))
    assert "b1" in balancer.removing

    def more():
        out = []
        for _ in range(4):
            s = h.client(port)
            out.append(h.read_line(s))
            s.close()
        s1.sendall(b"still here")
        echoed = s1.recv(10)
        s1.close()
        return out, echoed

    names, echoed = yield deferToThread(more)
    assert names == [b"b\n"] * 4 and echoed == b"still here"
    yield until(lambda: "b1" not in balancer.removing)
    states = [(e.data["id"], e.data["state"]) for e in events if e.type == "backend"]
    assert states == [("b1", "removing"), ("b1", "removed")]


@pytest_twisted.inlineCallbacks
def test_proxy_protocol_header_sent_first(engine, factories, cleanup):
    """A backend flagged for PROXY protocol v1 gets the client's real
    address in a header before the first client byte."""
    server = backend(cleanup, h.Paused, instances=[], digest=hashlib.sha256())
    balancer = h.make_balancer(
        reactor, factories, [server.getHost().port], proxy_protocol="v1"
    )
    port = start(engine, balancer, cleanup)
    seen = []

    class Recorder(h.Paused):
        pass

    s = yield deferToThread(h.client, port)
    cleanup(s.close)
    yield deferToThread(s.sendall, b"hello")
    yield until(lambda: server.factory.instances)
    inst = server.factory.instances[0]
    original = inst.dataReceived
    inst.dataReceived = lambda data: (seen.append(data), original(data))
    inst.transport.resumeProducing()
    yield until(lambda: b"hello" in b"".join(seen))
    host, cport = s.getsockname()
    expected = f"PROXY TCP4 {host} 127.0.0.1 {cport} {port}\r\n".encode() + b"hello"
    assert b"".join(seen) == expected


@pytest_twisted.inlineCallbacks
def test_no_backend_closes_client_at_once(engine, factories, cleanup):
    """With no usable backend (all disabled) a client is closed at once and
    counted as no_backend."""
    balancer = h.make_balancer(reactor, factories, [h.dead_port()], state="disabled")
    port = start(engine, balancer, cleanup)

    data = yield deferToThread(h.read_until_closed, port)
    assert data == b""
    yield until(lambda: balancer.totals.no_backend == 1 and balancer.totals.active == 0)


KEEPALIVE = (socket.SO_KEEPALIVE, socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)


def keepalive(sock):
    levels = (socket.SOL_SOCKET, socket.IPPROTO_TCP, socket.IPPROTO_TCP, socket.IPPROTO_TCP)
    return tuple(sock.getsockopt(level, name) for level, name in zip(levels, KEEPALIVE))


@pytest.mark.parametrize(
    "setting, expected",
    [(ProxySettings().tcp_keepalive, (1, 60, 10, 6)), ((30, 5, 3), (1, 30, 5, 3))],
)
@pytest_twisted.inlineCallbacks
def test_tcp_keepalive_on_both_sides(engine, factories, cleanup, setting, expected):
    """Both sockets of a relayed connection (the accepted client socket and
    the backend socket) carry TCP keepalive with the configured idle,
    interval and count (60,10,6 by default), so dead peers of idle
    connections are found.  The client side has it from the start; the
    fast engine gives the backend side its keepalive once the connection
    outlives the connect timeout (shorter ones never need it)."""
    server = backend(cleanup, h.Hold, held=[])
    balancer = h.make_balancer(
        reactor, factories, [server.getHost().port],
        settings=ProxySettings(tcp_keepalive=setting, connect_timeout=0.2),
    )
    port = start(engine, balancer, cleanup)
    s = yield deferToThread(h.client, port)
    try:
        yield until(lambda: balancer.connections["b1"])
        (conn,) = balancer.connections["b1"]
        client_side, backend_side = h.relayed_sockets(conn)
        assert keepalive(client_side) == expected
        yield until(lambda: backend_side.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        assert keepalive(backend_side) == expected
    finally:
        s.close()


@pytest_twisted.inlineCallbacks
def test_tcp_keepalive_per_service_changed_at_runtime(engine, factories, cleanup):
    """A service's own tcp_keepalive, changed through the controller (what
    PATCH /api/v1/services/NAME does) while the listener runs with the
    command line's 60,10,6, applies to the service's new connections on
    both sides: its own values, then "off" (SO_KEEPALIVE cleared on the
    accepted socket, which the listener had given it)."""
    from lbproxy.control.controller import ConfigController
    from lbproxy.control.store.memory import MemoryStore
    from lbproxy.model.changes import update_settings

    server = backend(cleanup, h.Hold, held=[])
    balancer = h.make_balancer(reactor, factories, [server.getHost().port],
                               settings=ProxySettings(connect_timeout=0.2))
    controller = ConfigController(balancer, MemoryStore(balancer.config))
    port = start(engine, balancer, cleanup)
    for setting, expected in (([30, 5, 3], (1, 30, 5, 3)), ("off", None)):
        yield controller.change(lambda c: (update_settings(c, {"tcp_keepalive": setting}), None))
        s = yield deferToThread(h.client, port)
        try:
            yield until(lambda: balancer.connections["b1"])
            (conn,) = balancer.connections["b1"]
            client_side, backend_side = h.relayed_sockets(conn)
            if expected is None:
                yield until(lambda: client_side.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0)
                assert backend_side.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
            else:
                yield until(lambda: keepalive(backend_side) == expected and keepalive(client_side) == expected)
        finally:
            s.close()
        yield until(lambda: not balancer.connections["b1"])


@pytest_twisted.inlineCallbacks
def test_tcp_keepalive_off(engine, factories, cleanup):
    """With --tcp-keepalive off neither side gets SO_KEEPALIVE."""
    server = backend(cleanup, h.Hold, held=[])
    balancer = h.make_balancer(
        reactor, factories, [server.getHost().port], settings=ProxySettings(tcp_keepalive=None)
    )
    port = start(engine, balancer, cleanup)
    s = yield deferToThread(h.client, port)
    try:
        yield until(lambda: balancer.connections["b1"])
        (conn,) = balancer.connections["b1"]
        for sock in h.relayed_sockets(conn):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    finally:
        s.close()
