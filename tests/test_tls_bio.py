"""
L{TLSSocket} over memory BIOs, stepped by hand over a socket pair (no
reactor, no threads), with a peer that is an C{ssl.SSLObject} on BIOs of
its own, so the test decides which ciphertext is in the socket when: a
half-close by lbproxy loses nothing the peer sent before or after it (TLS
1.2 and 1.3), a record cut across the half-close is read whole, records
behind the handshake are read first, and a level-triggered read leaves
nothing that no epoll event would report.
"""

from __future__ import annotations

import select
import socket
import ssl

import pytest

from lbproxy.model.config import BackendTLS, ServiceTLS
from lbproxy.relay.ssl_contexts import client_context
from lbproxy.relay.tls import build
from lbproxy.relay.tls_socket import TLSSocket
from tests.tlscerts import CA

VERSIONS = pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                                   ids=["tls1.2", "tls1.3"])


class Owner:
    """What the server's SNI callback is given."""

    name = None
    tls = None


class Peer:
    """
    The other end: an C{SSLObject} whose ciphertext goes into the socket
    only when the test says (L{push}), and comes out of it on L{pull}.
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="a.test")

    backlog = b""

    def push(self, limit: int | None = None) -> None:
        """
        Put what the peer wrote (or its first C{limit} bytes) into the
        socket, as much as it takes now (the rest is the C{backlog}).
        """
        self.backlog += self.outgoing.read(limit) if limit is not None else self.outgoing.read()
        try:
            n = self.sock.send(self.backlog)
        except BlockingIOError:
            n = 0
        self.backlog = self.backlog[n:]

    def pull(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not data:
                self.incoming.write_eof()
                return
            self.incoming.write(data)

    def read_all(self) -> tuple[bytes, str]:
        """Everything decrypted, and how it ended so far."""
        self.pull()
        got = bytearray()
        while True:
            try:
                chunk = self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                return bytes(got), "open"
            except ssl.SSLZeroReturnError:
                return bytes(got), "close_notify"
            if not chunk:
                return bytes(got), "close_notify"
            got += chunk


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


def connected(ca: CA, version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED, drain: bool = False,
              early: bytes = b""):
    """
    A handshaken server L{TLSSocket} (as the fast engine makes it) and
    its L{Peer}; C{early}: application data the peer writes with its
    last handshake flight.
    """
    built = build(ServiceTLS((ca.issue("a", "a.test", ["a.test"]),)), "web")
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    owner = Owner()
    server = TLSSocket(left, built.fast, True, None, owner=owner, drain=drain)
    owner.tls = server.tls
    ctx, _ = client_context(BackendTLS(ca=ca.path), "x")
    ctx.check_hostname = False
    if version is not ssl.TLSVersion.MAXIMUM_SUPPORTED:
        ctx.minimum_version = ctx.maximum_version = version
    peer = Peer(right, ctx)
    done = False
    for _ in range(20):
        try:
            peer.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            pass
        if done and early:
            peer.tls.write(early)
        peer.push()
        if server.handshake() == 0 and done:
            peer.pull()
            return server, peer
        peer.pull()
    raise AssertionError("the handshake did not finish")


def read(server: TLSSocket, size: int = 256 * 1024) -> bytes:
    buffer = bytearray(size)
    try:
        n = server.recv_into(buffer)
    except BlockingIOError:
        return b""
    return bytes(buffer[:n]) if n else b"<end>"


@VERSIONS
def test_what_the_peer_sent_before_and_after_our_close_notify_is_all_read(ca, version):
    """
    The peer's records waiting in the socket when lbproxy half-closes are
    read after the half-close, and so is what it sends after receiving
    our close_notify (SSL_read still returns application data once ours
    is out); then its close_notify is the end.  (Over the socket, the
    standard library's shutdown read the waiting records and OpenSSL
    discarded them.)
    """
    server, peer = connected(ca, version)
    before = bytes(range(256)) * 300
    peer.tls.write(before)
    peer.push()
    server.shutdown(socket.SHUT_WR)
    got, ended = peer.read_all()
    assert (got, ended) == (b"", "close_notify")
    peer.tls.write(b"and after")
    peer.push()
    received = b""
    for _ in range(20):
        chunk = read(server)
        if not chunk:
            break
        received += chunk
    assert received == before + b"and after"
    try:
        peer.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    peer.push()
    assert read(server) == b"<end>"


@VERSIONS
def test_a_record_cut_across_the_half_close_is_read_whole(ca, version):
    """
    Half a record is in the socket when lbproxy half-closes (OpenSSL has
    taken it in, waiting for the rest): the rest comes after, and the
    record is read whole.
    """
    server, peer = connected(ca, version)
    peer.tls.write(b"r" * 10000)
    peer.push(5000)
    assert read(server) == b""
    server.shutdown(socket.SHUT_WR)
    peer.push()
    assert read(server) == b"r" * 10000


def test_records_left_in_the_bio_by_a_full_buffer_are_held_at_the_half_close(ca):
    """
    A draining read that filled its buffer left whole records in the
    incoming BIO; lbproxy half-closes before reading on: they are
    decrypted and held, and the next reads return them first, in order.
    """
    server, peer = connected(ca, drain=True)
    data = bytes(range(256)) * 400
    peer.tls.write(data)
    peer.push()
    first = read(server, 20000)
    assert len(first) == 20000 and server.ready
    server.shutdown(socket.SHUT_WR)
    assert server.held is not None
    rest = b""
    for _ in range(20):
        chunk = read(server, 20000)
        if not chunk:
            break
        rest += chunk
    assert first + rest == data


def test_records_behind_the_handshake_are_read_before_the_socket(ca):
    """
    The client's first bytes came in the same flight as its Finished: the
    handshake step read them into the BIO, where no epoll event says so;
    the first read returns them, with the socket empty.
    """
    server, peer = connected(ca, ssl.TLSVersion.TLSv1_3, early=b"GET / HTTP/1.0\r\n\r\n")
    assert server.ready
    assert read(server) == b"GET / HTTP/1.0\r\n\r\n"
    assert read(server) == b""


def test_a_level_triggered_read_leaves_nothing_no_event_reports(ca):
    """
    The client side is read once per level-triggered event: after every
    read, either the socket is readable or everything sent was returned;
    no read fills its buffer with records left behind in the BIO.
    """
    server, peer = connected(ca)
    data = bytes(range(256)) * (1024 * 1024 // 256)
    peer.tls.write(data)
    peer.push()
    poller = select.epoll()
    poller.register(server.fileno(), select.EPOLLIN)
    got = b""
    try:
        for _ in range(1000):
            peer.push()
            if not poller.poll(0):
                if not peer.backlog:
                    break
                continue
            chunk = read(server)
            assert len(chunk) < 256 * 1024
            got += chunk
    finally:
        poller.close()
    assert got == data


def test_a_short_send_keeps_its_ciphertext_and_the_relay_offers_one_byte_again(ca):
    """
    A send whose ciphertext the socket took only in part says one byte
    less; while that ciphertext is not out, offering the byte again is
    BlockingIOError; once the peer read, the byte is taken without being
    encrypted twice, and the peer has every byte once.
    """
    server, peer = connected(ca)
    chunk = b"x" * (256 * 1024)
    sent = 0
    for _ in range(100):
        n = server.send(chunk)
        sent += n
        if n < len(chunk):
            break
    else:
        raise AssertionError("the socket never filled")
    assert n == len(chunk) - 1 and server.owed == 1 and server.out is not None
    with pytest.raises(BlockingIOError):
        server.send(chunk[n:])
    got = b""
    for _ in range(1000):
        more, _ = peer.read_all()
        got += more
        try:
            if server.send(chunk[n:]) == 1:
                break
        except BlockingIOError:
            pass
    assert server.out is None and server.owed == 0
    more, _ = peer.read_all()
    got += more
    assert got == b"x" * (sent + 1)



def test_a_close_sends_the_close_notify_only_behind_a_complete_stream(ca):
    """
    lbproxy's own close (L{TLSSocket.notify_close}) sends no close_notify
    while ciphertext still waits to go (the peer must see that stream cut,
    not a clean end); with nothing waiting, the peer reads everything,
    then the close_notify.
    """
    server, peer = connected(ca)
    chunk = b"x" * (256 * 1024)
    for _ in range(100):
        if server.send(chunk) < len(chunk):
            break
    else:
        raise AssertionError("the socket never filled")
    waiting = bytes(server.out)
    server.notify_close()
    assert bytes(server.out) == waiting and not server.outgoing.pending
    server, peer = connected(ca)
    assert server.send(b"the last bytes") == len(b"the last bytes")
    server.notify_close()
    assert peer.read_all() == (b"the last bytes", "close_notify")


class Full:
    """
    The server's socket with its send buffer full: C{send} takes nothing
    (C{BlockingIOError}, as the kernel answers) until L{room} is called,
    then behaves as the real socket, which it wraps.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.full = True

    def room(self) -> None:
        self.full = False

    def send(self, data) -> int:
        if self.full:
            raise BlockingIOError
        return self.sock.send(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_a_close_notify_the_full_socket_does_not_take_goes_before_the_fin(ca):
    """
    A half-close while the socket's buffer is full (every relayed byte
    taken, no room left for the close_notify): C{shutdown} says
    BlockingIOError and sends no FIN; once there is room, the relay's
    empty send sends the rest and a second C{shutdown} half-closes, so
    the peer reads the stream and then the close_notify, not a truncation
    (before: the close_notify was dropped and the FIN sent at once).
    """
    server, peer = connected(ca)
    assert server.send(b"the last bytes") == len(b"the last bytes")
    raw = server.raw
    server.raw = Full(raw)
    with pytest.raises(BlockingIOError):
        server.shutdown(socket.SHUT_WR)
    assert server.out is not None
    assert peer.read_all() == (b"the last bytes", "open")
    server.notify_close()  # lbproxy's own close meanwhile sends nothing more
    server.raw.room()
    assert server.send(b"") == 0 and server.out is None
    server.shutdown(socket.SHUT_WR)
    assert peer.read_all() == (b"", "close_notify")
    assert peer.sock.recv(1) == b""  # the FIN, after the close_notify
