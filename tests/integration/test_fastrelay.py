"""
What only the fast engine does, over real loopback sockets: splice for
bulk, TCP_NODELAY on both sides, reset outcomes, connect timeout, and
driving the reactor as one reader.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from lbproxy.model.config import ProxySettings
from tests.integration import relay_harness as h

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fast engine is Linux-only"),
]


until = h.until


@pytest.fixture
def fast(factories):
    """Start the fast engine over a balancer; everything stopped after."""
    from lbproxy.relay.fast_engine import FastRelay, listening_socket

    stops = []

    def make(ports, **kw):
        balancer = h.make_balancer(reactor, factories, ports, **kw)
        engine = FastRelay(balancer, listening_socket("127.0.0.1", 0), reactor)
        engine.start()
        balancer.start(interval=0.05)
        stops.extend([engine.stop, balancer.stop])
        return engine, balancer

    yield make
    for stop in stops:
        stop()


class Blob(protocol.Protocol):
    """Sends the factory's blob, then closes."""

    def connectionMade(self):
        self.transport.write(self.factory.blob)
        self.transport.loseConnection()


@pytest.fixture
def access():
    """Access-log events, collected."""
    records = []

    def observe(event):
        if event.get("log_namespace") == "lbproxy.access":
            records.append(event)

    globalLogPublisher.addObserver(observe)
    yield records
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.inlineCallbacks
def test_bulk_download_switches_to_splice(fast):
    """A 16 MiB download fills the read buffer, so that direction moves to
    splice(2); the bytes still arrive intact and are counted.  A small
    exchange never splices."""
    blob = os.urandom(16 * 1024 * 1024)
    server = h.serve(reactor, Blob, blob=blob)
    try:
        engine, balancer = fast([server.getHost().port])

        def download():
            s = h.client(engine.port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            data = h.read_all(s)
            s.close()
            return data

        data = yield deferToThread(download)
        assert hashlib.sha256(data).digest() == hashlib.sha256(blob).digest()
        assert engine.splices == 1
        yield until(lambda: balancer.totals.active == 0)
        assert balancer.pool.stats["b1"].bytes_down == len(blob)
    finally:
        yield server.stopListening()

    echo = h.serve(reactor, h.Echo)
    try:
        engine, balancer = fast([echo.getHost().port])

        def small():
            s = h.client(engine.port)
            s.sendall(b"hello")
            s.shutdown(socket.SHUT_WR)
            data = h.read_all(s)
            s.close()
            return data

        assert (yield deferToThread(small)) == b"hello"
        assert engine.splices == 0
    finally:
        yield echo.stopListening()


class Hold(protocol.Protocol):
    """Keeps every connection, so a test can look at or reset it."""

    def connectionMade(self):
        self.factory.held.append(self)


@pytest_twisted.inlineCallbacks
def test_nodelay_on_both_sides(fast):
    """Client sockets (inherited from the listener) and backend sockets
    have TCP_NODELAY, so small writes are not held back by Nagle."""
    from lbproxy.relay.fast_engine import Relay

    server = h.serve(reactor, Hold, held=[])
    try:
        engine, balancer = fast([server.getHost().port])
        s = yield deferToThread(h.client, engine.port)
        yield until(lambda: balancer.connections["b1"])
        (relay,) = balancer.connections["b1"]
        assert isinstance(relay, Relay)
        for sock in (relay.client_sock, relay.backend_sock):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        s.close()
    finally:
        yield server.stopListening()


@pytest.mark.parametrize("setting, expected", [((60, 10, 6), 1), (None, 0)])
@pytest_twisted.inlineCallbacks
def test_backend_keepalive_comes_with_the_connect_deadline(fast, setting, expected):
    """The backend socket gets its keepalive when the connect deadline is
    swept (the sweep emptying the deadline queue is the acknowledgement),
    and with keepalive off it gets none then either."""
    server = h.serve(reactor, Hold, held=[])
    try:
        engine, balancer = fast(
            [server.getHost().port],
            settings=ProxySettings(tcp_keepalive=setting, connect_timeout=0.2),
        )
        s = yield deferToThread(h.client, engine.port)
        yield until(lambda: balancer.connections["b1"])
        (relay,) = balancer.connections["b1"]
        yield until(lambda: not engine.timeouts)
        assert relay.backend_sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == expected
        assert relay.client_sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == expected
        s.close()
    finally:
        yield server.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_connection_past_its_connect_deadline_relays_without_msg_dontwait(fast):
    """An accepted client socket stays in blocking mode and its flows say
    MSG_DONTWAIT (no ioctl per short connection); once the connection
    outlives its connect deadline (the sweep emptying the deadline queue
    is the acknowledgement) the socket is non-blocking, its flows pass no
    flags, and bytes still move both ways."""
    echo = h.serve(reactor, h.Echo)
    try:
        engine, balancer = fast([echo.getHost().port], settings=ProxySettings(connect_timeout=0.2))
        s = yield deferToThread(h.client, engine.port)
        yield until(lambda: balancer.connections["b1"])
        (relay,) = balancer.connections["b1"]
        assert relay.client_sock.getblocking()
        assert relay.up.rflags == relay.down.sflags == socket.MSG_DONTWAIT
        yield until(lambda: not engine.timeouts)
        assert not relay.client_sock.getblocking()
        assert relay.up.rflags == relay.down.sflags == 0

        def roundtrip():
            s.sendall(b"still here")
            s.shutdown(socket.SHUT_WR)
            return h.read_all(s)

        assert (yield deferToThread(roundtrip)) == b"still here"
        s.close()
    finally:
        yield echo.stopListening()


@pytest_twisted.inlineCallbacks
def test_resets_are_recorded_by_side(fast, access):
    """A client that resets is logged as client-reset; a backend that
    resets as backend-reset, and passive health hears of the latter."""
    server = h.serve(reactor, Hold, held=[])
    try:
        engine, balancer = fast([server.getHost().port])
        a = yield deferToThread(h.client, engine.port)
        yield until(lambda: len(server.factory.held) == 1)
        me = "%s:%d" % a.getsockname()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()
        yield until(lambda: any(r["client"] == me for r in access))
        assert [r["outcome"] for r in access if r["client"] == me] == ["client-reset"]

        b = yield deferToThread(h.client, engine.port)
        yield until(lambda: len(server.factory.held) == 2)
        me = "%s:%d" % b.getsockname()
        server.factory.held[1].transport.abortConnection()
        yield until(lambda: any(r["client"] == me for r in access))
        assert [r["outcome"] for r in access if r["client"] == me] == ["backend-reset"]
        b.close()
    finally:
        yield server.stopListening()


@pytest_twisted.inlineCallbacks
def test_connect_timeout_then_retry(fast):
    """A backend that never answers the SYN (its listen backlog is full)
    costs one connect timeout; the retry reaches the live backend."""
    # A listener with a full backlog drops further SYNs, so connects hang.
    black = socket.socket()
    black.bind(("127.0.0.1", 0))
    black.listen(0)
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(black.getsockname())
        fillers.append(f)
    live = h.serve(reactor, h.Named, name="live")
    try:
        engine, balancer = fast(
            [black.getsockname()[1], live.getHost().port],
            settings=ProxySettings(connect_timeout=0.3, retries=1),
        )
        got = []

        def run():
            for _ in range(2):
                started = time.monotonic()
                s = h.client(engine.port)
                got.append((h.read_line(s), time.monotonic() - started))
                s.close()

        yield deferToThread(run)
        assert [line for line, _ in got] == [b"live\n", b"live\n"]
        # The first went to the black hole first and waited out the timeout.
        assert 0.3 <= got[0][1] < 2.0 and got[1][1] < 0.3
        assert balancer.pool.stats["b1"].failures >= 1
    finally:
        yield live.stopListening()
        black.close()
        for f in fillers:
            f.close()


@pytest_twisted.inlineCallbacks
def test_many_short_connections_leave_nothing_behind(fast):
    """500 one-shot connections from 4 threads all complete; afterwards the
    engine holds only its listener (no leaked fds or handlers)."""
    echo = h.serve(reactor, h.Echo)
    try:
        engine, balancer = fast([echo.getHost().port])
        before = len(os.listdir("/proc/self/fd"))
        errors = []

        def worker():
            for i in range(125):
                try:
                    s = h.client(engine.port)
                    s.sendall(b"ping %d" % i)
                    s.shutdown(socket.SHUT_WR)
                    assert h.read_all(s) == b"ping %d" % i
                    s.close()
                except Exception as e:  # noqa: BLE001
                    errors.append(e)

        def run():
            threads = [threading.Thread(target=worker) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        yield deferToThread(run)
        assert errors == []
        yield until(lambda: balancer.totals.active == 0)
        assert balancer.totals.accepted == 500
        assert list(engine.handlers) == [engine.listener.fileno()]
        yield until(lambda: len(os.listdir("/proc/self/fd")) <= before)
    finally:
        yield echo.stopListening()


@pytest_twisted.inlineCallbacks
def test_finished_connections_are_freed_without_the_cyclic_collector(fast):
    """A finished relay and its session are freed by reference counting at
    once (no reference cycle left for the cyclic collector, whose passes
    over many dead relays cost throughput and latency)."""
    import gc

    from lbproxy.relay.fast_engine import Relay
    from lbproxy.relay.session import ConnectionSession

    echo = h.serve(reactor, h.Echo)
    gc.collect()
    gc.disable()
    try:
        engine, balancer = fast([echo.getHost().port])

        def run():
            for i in range(20):
                s = h.client(engine.port)
                s.sendall(b"x")
                s.shutdown(socket.SHUT_WR)
                assert h.read_all(s) == b"x"
                s.close()

        yield deferToThread(run)
        yield until(lambda: balancer.totals.active == 0)
        live = [o for o in gc.get_objects() if type(o) in (Relay, ConnectionSession)]
        assert live == []
    finally:
        gc.enable()
        yield echo.stopListening()


@pytest_twisted.inlineCallbacks
def test_backend_by_host_name(factories):
    """A backend given by host name is looked up off the reactor thread,
    then connected like any other."""
    from lbproxy.policy.balancer import Balancer
    from lbproxy.model.config import Backend, Config
    from lbproxy.relay.fast_engine import FastRelay, listening_socket

    server = h.serve(reactor, h.Named, name="by-name")
    balancer = Balancer(
        Config(version=1, backends=(Backend(id="b1", host="localhost", port=server.getHost().port),)),
        factories, ProxySettings(), reactor=reactor,
    )
    engine = FastRelay(balancer, listening_socket("127.0.0.1", 0), reactor)
    engine.start()
    try:
        def run():
            s = h.client(engine.port)
            line = h.read_line(s)
            s.close()
            return line

        assert (yield deferToThread(run)) == b"by-name\n"
        assert balancer.pool.stats["b1"].total == 1
    finally:
        engine.stop()
        yield server.stopListening()


def _is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest_twisted.inlineCallbacks
def test_out_of_fds_pauses_accepting_then_serves_everyone(fast):
    """When accept fails for lack of file descriptors the engine stops
    watching the listener for a moment (a few log lines, not a busy loop);
    once fds are available again every waiting client is served."""
    import resource

    echo = h.serve(reactor, h.Echo)
    engine, balancer = fast([echo.getHost().port])
    errors = []

    def observe(event):
        if "pausing accepts" in str(event.get("log_format", "")):
            errors.append(event)

    clients = [socket.socket() for _ in range(5)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    globalLogPublisher.addObserver(observe)
    try:
        # No room for one more fd: a new fd takes the lowest free number.
        used = {int(fd) for fd in os.listdir("/proc/self/fd") if _is_open(int(fd))}
        lowest_free = min(set(range(max(used) + 2)) - used)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        for c in clients:
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", engine.port))
        # The acknowledgement is the second pause: it may come only after
        # the first pause ended, not from a busy loop.
        yield until(lambda: len(errors) >= 2)
        assert errors[1]["log_time"] - errors[0]["log_time"] >= engine.accept_pause * 0.9
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        globalLogPublisher.removeObserver(observe)

    def talk():
        out = []
        for i, c in enumerate(clients):
            c.setblocking(True)
            c.settimeout(10)
            c.sendall(b"n%d" % i)
            out.append(c.recv(10))
            c.close()
        return out

    try:
        assert (yield deferToThread(talk)) == [b"n%d" % i for i in range(5)]
    finally:
        yield echo.stopListening()
