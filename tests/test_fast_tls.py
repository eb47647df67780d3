"""
The fast engine's TLS pieces over an in-process socket pair, stepped by
hand (no reactor, no threads): the certificate a server name selects in
the standard-library contexts, the L{TLSSocket} reads (every whole record
at once, OpenSSL's wants as C{BlockingIOError}, end of stream as C{0})
and writes (a short count when the socket took only part, then the rest),
and the close.
"""

from __future__ import annotations

import socket
import ssl

import pytest

from lbproxy.model.config import BackendTLS, ServiceTLS
from lbproxy.relay.tls_socket import RECORD, TLSSocket
from lbproxy.relay.ssl_contexts import client_context
from lbproxy.relay.tls import build
from tests.tlscerts import CA


class Owner:
    """What the server's SNI callback is given: it notes the name there."""

    name = None
    tls = None


def pair(ca: CA, certificates, server_name: str | None, version=None):
    """
    A handshaken TLS connection over a socket pair: the server side made
    as the fast engine makes it (a L{TLSSocket} on a raw non-blocking
    socket), the client a Python C{SSLSocket}; both stepped in turn.
    C{version}: the one TLS version the client offers (else the highest).
    """
    built = build(ServiceTLS(certificates), "web")
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    owner = Owner()
    server = TLSSocket(left, built.fast, True, None, owner=owner)
    owner.tls = server.tls
    ctx, _ = client_context(BackendTLS(ca=ca.path), "x")
    ctx.check_hostname = False
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    client = ctx.wrap_socket(right, server_hostname=server_name, do_handshake_on_connect=False)
    done = [False, False]
    for _ in range(20):
        if not done[0]:
            done[0] = server.handshake() == 0
        if not done[1]:
            try:
                client.do_handshake()
                done[1] = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if all(done):
            return server, client, owner
    raise AssertionError("the handshake did not finish")


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


def common_name(client) -> str:
    return dict(x[0] for x in client.getpeercert()["subject"])["commonName"]


def test_the_server_name_selects_the_certificate_and_is_noted(ca):
    """Exact, then the longest wildcard, else the first certificate; the name reaches the session."""
    a = ca.issue("a", "a.test", ["a.test"])
    b = ca.issue("b", "b.test", ["b.test", "*.b.test"])
    for name, expected in (("a.test", "a.test"), ("B.test", "b.test"), ("x.b.test", "b.test"),
                           ("other.test", "a.test"), (None, "a.test")):
        server, client, owner = pair(ca, (a, b), name)
        assert common_name(client) == expected, name
        assert owner.name == (name.lower() if name else None)


def test_reads_take_every_whole_record_and_say_would_block_and_end(ca):
    """
    Several records arrived: one read takes them all (nothing stays
    decrypted in OpenSSL, where no epoll event would tell); nothing more:
    BlockingIOError; the client's close_notify: 0, and again 0.
    """
    a = ca.issue("a", "a.test", ["a.test"])
    server, client, _ = pair(ca, (a,), "a.test")
    data = bytes(range(256)) * (3 * RECORD // 256 + 7)
    client.sendall(data)
    buffer = bytearray(256 * 1024)
    n = server.recv_into(buffer)
    assert bytes(buffer[:n]) == data
    with pytest.raises(BlockingIOError):
        server.recv_into(buffer)
    try:
        client.unwrap()
    except ssl.SSLWantReadError:
        pass
    assert server.recv_into(buffer) == 0
    assert server.recv_into(buffer) == 0


def test_a_full_socket_says_short_and_the_rest_goes_later(ca):
    """
    Writing more than the socket takes, as the relay writes: the send
    says it took less (so the relay waits for EPOLLOUT), BlockingIOError
    while the ciphertext it kept is not out, and the rest offered again
    completes; the peer gets every byte once, in order.
    """
    a = ca.issue("a", "a.test", ["a.test"])
    server, client, _ = pair(ca, (a,), "a.test")
    data = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    pending = memoryview(data)
    got = bytearray()
    short = blocked = 0
    for _ in range(100000):
        if not pending:
            break
        try:
            sent = server.send(pending[:256 * 1024])
            if sent < min(len(pending), 256 * 1024):
                short += 1
            pending = pending[sent:]
        except BlockingIOError:
            blocked += 1
        try:
            got += client.recv(64 * 1024)
        except ssl.SSLWantReadError:
            pass
    else:
        raise AssertionError("never written")
    assert server.out is None and server.owed == 0
    while len(got) < len(data):
        try:
            got += client.recv(1 << 20)
        except ssl.SSLWantReadError:
            raise AssertionError(f"{len(data) - len(got)} bytes never came") from None
    assert short > 0 and blocked > 0 and bytes(got) == data


def test_shutdown_sends_close_notify_then_fin(ca):
    """The relay's half-close of a TLS side: the peer reads a clean end of stream."""
    a = ca.issue("a", "a.test", ["a.test"])
    server, client, _ = pair(ca, (a,), "a.test")
    server.send(b"bye")
    server.shutdown(socket.SHUT_WR)
    client.setblocking(True)
    client.settimeout(5)
    assert client.recv(10) == b"bye"
    assert client.recv(10) == b""
    server.close()
    client.close()


def test_backend_context_verifies_the_name_unless_told_not_to(ca):
    """
    A backend's context checks its certificate against the CA and the
    server name (else the host); verify false checks nothing; an IP host
    is sent as no SNI name but still verified.
    """
    ctx, name = client_context(BackendTLS(ca=ca.path, server_name="db.internal"), "10.0.0.1")
    assert name == "db.internal" and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    ctx, name = client_context(BackendTLS(ca=ca.path), "10.0.0.1")
    assert name == "10.0.0.1"
    ctx, name = client_context(BackendTLS(verify=False), "h")
    assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_NONE
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_tls_relay_is_an_engine_connection():
    """A relay with a TLS side is still the engine's connection to its session."""
    from zope.interface.verify import verifyObject

    from lbproxy.interfaces import IEngineConnection
    from lbproxy.relay.fast_tls import TLSRelay

    a, b = socket.socketpair()
    try:
        assert verifyObject(IEngineConnection, TLSRelay(object(), a, object(), {}))
    finally:
        a.close()
        b.close()


def test_a_draining_read_takes_short_records_too_and_fills_the_buffer(ca):
    """
    The edge-triggered backend side drains: short records one after the
    other are all read at once; a record cut by the buffer's end fills it
    (the relay reads a full buffer on at once) and the next read gets the
    rest, in order.
    """
    a = ca.issue("a", "a.test", ["a.test"])
    server, client, _ = pair(ca, (a,), "a.test")
    server.drain = True
    for part in (b"one ", b"two ", b"three"):
        client.sendall(part)
    buffer = bytearray(64 * 1024)
    n = server.recv_into(buffer)
    assert bytes(buffer[:n]) == b"one two three"
    data = bytes(range(256)) * 400
    client.sendall(data)
    small = bytearray(1000)
    got = b""
    while len(got) < len(data):
        n = server.recv_into(small)
        assert n == len(small) or len(got) + n == len(data)
        got += bytes(small[:n])
    assert got == data


def test_a_tls_client_side_can_become_non_blocking_without_flags(ca):
    """
    A long-lived relay (a second backend read, or past its connect
    deadline) makes its client non-blocking and drops the MSG_DONTWAIT
    flags: with a TLS client side this raised AttributeError (the relay
    aborted as internal-error, and from the deadline sweep it stopped the
    engine's sweeper); the TLS side stays non-blocking and still relays.
    """
    from lbproxy.relay.fast_flow import _Flow
    from lbproxy.relay.fast_relay import _DONTWAIT
    from lbproxy.relay.fast_tls import TLSRelay

    a = ca.issue("a", "a.test", ["a.test"])
    server, client, _ = pair(ca, (a,), "a.test")
    other, peer = socket.socketpair()
    try:
        relay = TLSRelay(object(), server, object(), {})
        relay.up = _Flow(server, other, _DONTWAIT, 0)
        relay.down = _Flow(other, server, 0, _DONTWAIT)
        relay.client_nonblocking()
        assert relay.up.rflags == relay.down.sflags == 0
        assert server.raw.gettimeout() == 0.0
        client.sendall(b"still relays")
        buffer = bytearray(RECORD)
        assert bytes(buffer[:server.recv_into(buffer)]) == b"still relays"
    finally:
        other.close()
        peer.close()


def test_handshakes_in_progress_count_against_max_connections(ca):
    """
    Clients that open a TLS connection and never finish the handshake
    count against --max-connections with the admitted ones: at the limit a
    new one is refused at once (counted as rejected) instead of holding a
    socket until its sni_timeout; once a handshake times out its place is
    free again.  (Before, handshakes in progress counted nowhere.)
    """
    import select
    from collections import Counter
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from lbproxy.policy.limits import ProcessLimit
    from lbproxy.relay.fast_tls import FastTLS

    a = ca.issue("a", "a.test", ["a.test"])
    built = build(ServiceTLS((a,)), "web")
    refusals = Counter()
    route = SimpleNamespace(sni_timeout=2.0, routes_by_sni=False, accept_proxy=(), refused=lambda why: refusals.update([why]))
    clock = Clock()
    engine = SimpleNamespace(epoll=select.epoll(), reactor=clock, route=route, handlers={},
                             stopped=False, close=lambda s: s.close())
    limit = ProcessLimit(3)
    limit.active = 1
    hook = FastTLS(SimpleNamespace(certificates=built), {}, limit)
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        hook(engine, pairs[0][0], ("127.0.0.1", 1))
        hook(engine, pairs[1][0], ("127.0.0.1", 2))
        assert limit.handshaking == 2 and len(engine.handlers) == 2
        hook(engine, pairs[2][0], ("127.0.0.1", 3))
        assert pairs[2][1].recv(10) == b""  # closed at once
        assert refusals["rejected"] == 1 and limit.handshaking == 2
        clock.advance(2.0)
        assert limit.handshaking == 0 and not engine.handlers
        assert refusals["tls-timeout"] == 2
        hook(engine, pairs[3][0], ("127.0.0.1", 4))
        assert limit.handshaking == 1
    finally:
        engine.epoll.close()
        for left, right in pairs:
            left.close()
            right.close()


def test_stopping_the_engine_closes_clients_still_handshaking(ca):
    """
    The engine's stop closes TLS clients in the middle of their handshake
    too (counted as shutdown), as it aborts its relays: before, they were
    not relays, so their sockets stayed open until their sni_timeout.
    """
    from twisted.internet.testing import MemoryReactorClock

    from lbproxy.control.routes import ListenerRoute
    from lbproxy.model.config import ProxySettings
    from lbproxy.relay.fast_engine import FastRelay
    from lbproxy.relay.fast_tls import FastTLS
    from types import SimpleNamespace

    a = ca.issue("a", "a.test", ["a.test"])
    route = ListenerRoute("tcp:0", [], settings=ProxySettings())
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    engine = FastRelay(route, listener, MemoryReactorClock())
    from lbproxy.policy.limits import ProcessLimit

    limit = ProcessLimit(10)
    engine.tls = FastTLS(SimpleNamespace(certificates=build(ServiceTLS((a,)), "web")), {}, limit)
    engine.start()
    client = socket.create_connection(listener.getsockname(), timeout=5)
    try:
        engine.doRead()
        assert limit.handshaking == 1
        engine.stop()
        assert limit.handshaking == 0
        assert route.refusals["shutdown"] == 1
        client.settimeout(5)
        assert client.recv(10) == b""
    finally:
        client.close()
        engine.stop()


@pytest.mark.parametrize("drain", [False, True])
def test_a_close_notify_read_behind_data_still_raises_an_event(ca, drain):
    """
    A peer sends a full record and its close_notify, and keeps its TCP
    stream open (waiting for ours): the read that takes the record takes
    the close_notify too, so the kernel is empty and, before, no epoll
    event (level- or edge-triggered) ever said the end had come: the relay
    waited until its idle timeout.  Now the socket says so (readable), and
    the next read is the end of stream.
    """
    import select

    a = ca.issue("a", "a.test", ["a.test"])
    server, client, _ = pair(ca, (a,), "a.test")
    server.drain = drain
    client.sendall(b"x" * RECORD)
    try:
        client.unwrap()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        pass  # our close_notify is out; we do not wait for theirs
    poller = select.epoll()
    try:
        poller.register(server.fileno(), select.EPOLLIN | (select.EPOLLET if drain else 0))
        poller.poll(0)
        buffer = bytearray(4 * RECORD)
        assert server.recv_into(buffer) == RECORD
        assert poller.poll(0), "nothing says the stream ended"
        assert server.recv_into(buffer) == 0
    finally:
        poller.close()
