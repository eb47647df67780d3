"""
TLS half-close while the other side is still streaming, over real
loopback sockets: a backend over TLS that is still sending when its
client half-closes, and a TLS client still sending when its backend has
ended; every byte must arrive, in order.  (On the fast engine both lost
what waited in the socket when lbproxy sent its close_notify: the
standard library's C{shutdown} read it and OpenSSL discarded it.)

The streaming peers are blocking sockets in threads of their own, so they
really are sending while lbproxy half-closes.  The receiving side reads
C{SEEN} bytes, then stops reading (a small receive buffer) until the
streaming side says it has sent C{AHEAD} bytes more (an acknowledgement,
not a delay): more than the receiver's buffer and lbproxy's one relay
buffer hold, so the rest is waiting in lbproxy's socket when the
half-close comes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.integration.test_services import LOCAL, call, start
from tests.integration.test_tls import pki, tls  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

SIZE = 4 * 1024 * 1024
#: How much of the stream a side reads before it stops reading.
SEEN = 256 * 1024
#: How much more the streaming side sends before the other half-closes.
AHEAD = 768 * 1024
#: The stopped receiver's buffer; the streaming side's is large, so that
#: it gets AHEAD out while the receiver reads nothing.
SMALL, LARGE = 32 * 1024, 2 * 1024 * 1024


class Peer(threading.Thread):
    """
    A one-connection server in a thread of its own: C{serve(sock)} runs
    on the accepted socket; its result (or exception) is kept.
    """

    def __init__(self, serve, context: ssl.SSLContext | None = None, buffer: tuple | None = None) -> None:
        super().__init__(daemon=True)
        self.serve = serve
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        if buffer is not None:
            self.listener.setsockopt(socket.SOL_SOCKET, *buffer)
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            sock, _ = self.listener.accept()
            sock.settimeout(20)
            with sock:
                if self.context is not None:
                    sock = self.context.wrap_socket(sock, server_side=True)
                self.result = self.serve(sock)
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.listener.close()

    def outcome(self):
        self.join(30)
        assert not self.is_alive(), "the peer thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def stream(sock, data: bytes, ahead: threading.Event) -> None:
    """Send C{data}; C{ahead} is set once C{SEEN + AHEAD} bytes are out."""
    view = memoryview(data)
    for i in range(0, len(view), 65536):
        sock.sendall(view[i:i + 65536])
        if i + 65536 >= SEEN + AHEAD:
            ahead.set()
    ahead.set()


def read_then_wait(sock, ahead: threading.Event) -> bytearray:
    """Read C{SEEN} bytes, then wait for the other side to be C{AHEAD} further."""
    got = bytearray()
    while len(got) < SEEN:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    assert ahead.wait(20), "the streaming side never got ahead"
    return got


def read_all(sock) -> bytes:
    got = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(got)
        got += chunk


def streams_then_reads_the_request(data: bytes, ahead: threading.Event):
    """A backend over TLS: streams C{data} at once, then reads the request to its end, then closes cleanly."""

    def serve(sock):
        stream(sock, data, ahead)
        request = read_all(sock)
        try:
            sock.unwrap()
        except (ssl.SSLError, OSError):
            pass
        return request

    return serve


def backend_context(pki) -> ssl.SSLContext:
    cert, key = pki["ca"].issue("backend", "backend.test", ["backend.test"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def plain_client_half_closes_mid_stream(port: int, request: bytes, ahead: threading.Event) -> bytes:
    """
    Blocking (in a thread): once C{SEEN} bytes of the stream arrived and
    the backend is C{AHEAD} further, send C{request} and shutdown(SHUT_WR);
    read to the end.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", port))
        got = read_then_wait(sock, ahead)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return bytes(got) + read_all(sock)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
@pytest_twisted.ensureDeferred
async def test_a_backend_over_tls_streaming_while_its_client_half_closes_loses_nothing(pki, engine, version):  # noqa: F811
    """
    A backend over TLS streams 4 MiB; its plain client, once the stream
    flows, sends a request and shuts its writing side: the backend gets
    the request and its end (lbproxy's close_notify), and the client gets
    all 4 MiB, in order, then the end.  (Before, on the fast engine, what
    waited in lbproxy's backend socket when it sent the close_notify was
    discarded: the client got the stream with a gap.)
    """
    data = os.urandom(SIZE)
    ctx = backend_context(pki)
    ctx.maximum_version = version
    ahead = threading.Event()
    peer = Peer(streams_then_reads_the_request(data, ahead), ctx, (socket.SO_SNDBUF, LARGE))
    peer.start()
    assembly, url = start("--listen", LOCAL, "--backend", "127.0.0.1:1", engine=engine)
    try:
        body = {"name": "web", "listen": [LOCAL], "health_check": None,
                "backends": [{"host": "127.0.0.1", "port": peer.port,
                              "tls": {"ca": pki["ca"].path, "server_name": "backend.test"}}]}
        code, out = await call("POST", url + "/services", body)
        assert code == 201, out
        port = int(out["listening"][0].rsplit(":", 1)[1])
        got = await threads.deferToThread(plain_client_half_closes_mid_stream, port, b"the request", ahead)
        request = await threads.deferToThread(peer.outcome)
        assert request == b"the request"
        assert (len(got), hashlib.sha256(got).hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())
    finally:
        await defer.maybeDeferred(assembly.top.stopService)


def answers_then_reads_all(answer: bytes, ahead: threading.Event):
    """
    A plain backend: once C{SEEN} bytes came and the client is C{AHEAD}
    further, answers and half-closes, then reads on to the end.
    """

    def serve(sock):
        got = read_then_wait(sock, ahead)
        sock.sendall(answer)
        sock.shutdown(socket.SHUT_WR)
        return bytes(got) + read_all(sock)

    return serve


def tls_client_streams(port: int, ca: str, data: bytes, version: ssl.TLSVersion, ahead: threading.Event) -> bytes:
    """
    Blocking (in a thread): a TLS client that streams C{data}, then sends
    its close_notify and reads what came (the backend's answer, then
    lbproxy's close_notify).
    """
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    ctx.maximum_version = version
    with socket.socket() as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LARGE)
        raw.settimeout(20)
        raw.connect(("127.0.0.1", port))
        sock = ctx.wrap_socket(raw, server_hostname="a.test")
        stream(sock, data, ahead)
        got = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ssl.SSLEOFError:
                break
            if not chunk:
                break
            got += chunk
        return bytes(got)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
@pytest_twisted.ensureDeferred
async def test_a_tls_client_still_sending_after_its_backend_ended_loses_nothing(pki, engine, version):  # noqa: F811
    """
    On both engines, a TLS client streams 4 MiB; its plain backend,
    once the stream flows, answers and half-closes: the client gets the
    answer and lbproxy's close_notify, and the backend still gets all
    4 MiB, in order, then the end.  (Before, on the fast engine, what
    waited in lbproxy's client socket when it sent its close_notify was
    discarded; the Twisted engine closed the client at the backend's end.)
    """
    data = os.urandom(SIZE)
    ahead = threading.Event()
    peer = Peer(answers_then_reads_all(b"done early\n", ahead), None, (socket.SO_RCVBUF, SMALL))
    peer.start()
    assembly, url = start("--listen", LOCAL, "--backend", "127.0.0.1:1", engine=engine)
    try:
        body = {"name": "web", "listen": [LOCAL], "health_check": None, "backends": [{"host": "127.0.0.1", "port": peer.port}],
                "tls": tls(pki["a"])}
        code, out = await call("POST", url + "/services", body)
        assert code == 201, out
        port = int(out["listening"][0].rsplit(":", 1)[1])
        answer = await threads.deferToThread(tls_client_streams, port, pki["ca"].path, data, version, ahead)
        got = await threads.deferToThread(peer.outcome)
        assert answer == b"done early\n"
        assert (len(got), hashlib.sha256(got).hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
