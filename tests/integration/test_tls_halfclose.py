"""
TLS half-close over real loopback sockets, on each engine: a TLS client
that sends its request and then its close_notify (keeping its TCP stream
open, as Python's C{unwrap} does) still gets the whole answer of a
backend that answers only after the end of the request, as a plain
client that shuts its writing side gets it; then lbproxy's close_notify.
"""

from __future__ import annotations

import os
import socket
import ssl

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from tests.integration.test_services import LOCAL, call, start
from tests.integration.test_tls import pki, tls  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration


@implementer(IHalfCloseableProtocol)
class AnswersAfterEOF(protocol.Protocol):
    """
    A backend that reads its request until the end of the stream, then
    answers with how many bytes it read and an answer of C{ANSWER} bytes,
    and closes.
    """

    ANSWER = 256 * 1024
    count = 0

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"%d\n" % self.count + b"a" * self.ANSWER)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


def answers_after_eof():
    return reactor.listenTCP(0, protocol.ServerFactory.forProtocol(AnswersAfterEOF), interface="127.0.0.1")


def tls_request_then_close_notify(port: int, ca: str, request: bytes, together: bool = False,
                                  version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> tuple[bytes, str]:
    """
    Blocking (run it in a thread): a TLS client (an C{SSLObject} over a
    blocking socket, so each step is explicit) that sends C{request}, then
    its close_notify (C{unwrap}, which then waits for the peer's), keeps
    its TCP stream open and reads what comes.  With C{together}, the end
    of its handshake, the request and the close_notify go in one write
    (lbproxy reads them all before the backend is connected).  C{version}:
    the highest TLS version it offers.

    @return: the bytes read, and how the stream ended: C{"close_notify"}
        (lbproxy's, after the answer), C{"eof"} (TCP closed without one) or
        the error's class name.
    """
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    ctx.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="a.test")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:

        def flush():
            data = outgoing.read()
            if data:
                sock.sendall(data)

        def feed() -> bool:
            data = sock.recv(65536)
            if not data:
                incoming.write_eof()
                return False
            incoming.write(data)
            return True

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                if not feed():
                    return b"", "eof in handshake"
        if not together:
            flush()
        view = memoryview(request)
        while view:
            view = view[tls.write(view):]
            if not together:
                flush()
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # our close_notify is out; the peer's is to come
        flush()
        got = bytearray()
        while True:
            try:
                got += tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return bytes(got), "close_notify"
            except ssl.SSLEOFError:
                return bytes(got), "eof"
            except (ssl.SSLError, OSError) as e:
                return bytes(got), type(e).__name__
            try:
                feed()
            except OSError as e:
                return bytes(got), type(e).__name__


def plain_request_then_shutdown(port: int, request: bytes) -> bytes:
    """
    Blocking (run it in a thread): a plain client that sends C{request},
    shuts its writing side and reads until the end.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(got)
            got += chunk


@pytest.mark.parametrize("together, version", [
    (False, ssl.TLSVersion.MAXIMUM_SUPPORTED), (True, ssl.TLSVersion.MAXIMUM_SUPPORTED), (False, ssl.TLSVersion.TLSv1_2),
], ids=["apart", "with-the-handshake", "tls1.2"])
@pytest_twisted.ensureDeferred
async def test_a_tls_client_close_notify_is_relayed_as_a_half_close(pki, engine, together, version):  # noqa: F811
    """
    A TLS client sends its request and its close_notify: the backend sees
    the end of its request (a TCP half-close), answers, and the client
    gets the whole answer, then lbproxy's close_notify, as a plain client
    that does shutdown(SHUT_WR) gets it.  Apart: 100 000 bytes, each
    record written as it is made; with the handshake: a short request and
    the close_notify in the same write as the handshake's end, so both are
    read while the backend is still being connected; and apart in TLS 1.2
    (whose RFC lets a side drop what it writes after the peer's
    close_notify: lbproxy does not).  (Before, the Twisted
    engine closed the client at its close_notify, and the fast engine
    ended with a FIN without lbproxy's close_notify.)
    """
    server = answers_after_eof()
    bport = server.getHost().port
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{bport}", engine=engine)
    request = b"short request" if together else os.urandom(100_000)
    expected = b"%d\n" % len(request) + b"a" * AnswersAfterEOF.ANSWER
    try:
        plain = assembly.listeners.addresses("default")[0][1]
        body = {"name": "web", "listen": [LOCAL], "backends": [{"host": "127.0.0.1", "port": bport}],
                "tls": tls(pki["a"])}
        code, out = await call("POST", url + "/services", body)
        assert code == 201, out
        port = int(out["listening"][0].rsplit(":", 1)[1])
        assert await threads.deferToThread(plain_request_then_shutdown, plain, request) == expected
        got, ended = await threads.deferToThread(
            tls_request_then_close_notify, port, pki["ca"].path, request, together, version
        )
        assert (len(got), got[:20], ended) == (len(expected), expected[:20], "close_notify")
        assert got == expected
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await server.stopListening()


def tls_answers_after_eof(pki):
    """
    L{AnswersAfterEOF} over TLS (for backend.test), served by
    L{lbproxy.relay.tls_server}, which hears a close_notify as the end of
    the request and can still answer (Twisted's own TLS server cannot).
    """
    from lbproxy.model.tls import ServiceTLS
    from lbproxy.relay.tls import ServerTLS, build
    from lbproxy.relay.tls_server import TLSServerFactory

    config = ServiceTLS((pki["ca"].issue("backend", "backend.test", ["backend.test"]),))
    factory = TLSServerFactory(ServerTLS(config, build(config, "backend"), ()),
                               protocol.ServerFactory.forProtocol(AnswersAfterEOF))
    return reactor.listenTCP(0, factory, interface="127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_a_backend_over_tls_gets_the_close_notify_and_its_answer_is_relayed(pki, engine):  # noqa: F811
    """
    A TLS client's close_notify reaches a backend over TLS as lbproxy's
    close_notify, and what the backend answers after it reaches the
    client, then lbproxy's close_notify.  On the Twisted engine, its TLS
    client transport reads on until the backend's own close_notify; on
    the fast engine, its TLS runs over memory BIOs, so the standard
    library's C{shutdown}, which reads on right after sending the
    close_notify, finds nothing there for OpenSSL to discard (before, an
    answer fast enough to arrive in between was lost).
    """
    server = tls_answers_after_eof(pki)
    bport = server.getHost().port
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{bport}", engine=engine)
    request = os.urandom(100_000)
    expected = b"%d\n" % len(request) + b"a" * AnswersAfterEOF.ANSWER
    try:
        body = {"name": "web", "listen": [LOCAL], "tls": tls(pki["a"]),
                "backends": [{"host": "127.0.0.1", "port": bport,
                              "tls": {"ca": pki["ca"].path, "server_name": "backend.test"}}]}
        code, out = await call("POST", url + "/services", body)
        assert code == 201, out
        port = int(out["listening"][0].rsplit(":", 1)[1])
        got, ended = await threads.deferToThread(tls_request_then_close_notify, port, pki["ca"].path, request)
        assert (len(got), got[:20], ended) == (len(expected), expected[:20], "close_notify")
        assert got == expected
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await server.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_close_notify_the_full_socket_did_not_take_is_sent_before_the_fin(pki, monkeypatch):  # noqa: F811
    """
    Fast engine: when the client's socket takes none of lbproxy's
    close_notify at the half-close (its send buffer full, every answer
    byte taken: the kernel's EAGAIN, made here by a socket that takes
    nothing for that one send, since no client can make a real buffer full
    to the byte), the relay waits until it is writable, sends the rest,
    and only then the FIN: the client gets the whole answer and the
    close_notify.  (Before, the close_notify was dropped and the FIN sent:
    a truncation for the client.)
    """
    from lbproxy.relay.tls_socket import TLSSocket
    from tests.test_tls_bio import Full

    real = TLSSocket.shutdown
    refused = []

    def full_once(self, how):
        if self.closing is None and not refused:
            raw, self.raw = self.raw, Full(self.raw)
            try:
                return real(self, how)
            except BlockingIOError:
                refused.append(bytes(self.out))
                raise
            finally:
                self.raw = raw
        return real(self, how)

    monkeypatch.setattr(TLSSocket, "shutdown", full_once)
    server = answers_after_eof()
    bport = server.getHost().port
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{bport}", engine="fast")
    request = os.urandom(10_000)
    expected = b"%d\n" % len(request) + b"a" * AnswersAfterEOF.ANSWER
    try:
        body = {"name": "web", "listen": [LOCAL], "backends": [{"host": "127.0.0.1", "port": bport}],
                "tls": tls(pki["a"])}
        code, out = await call("POST", url + "/services", body)
        assert code == 201, out
        port = int(out["listening"][0].rsplit(":", 1)[1])
        got, ended = await threads.deferToThread(tls_request_then_close_notify, port, pki["ca"].path, request)
        assert len(refused) == 1 and refused[0], refused
        assert (len(got), got[:20], ended) == (len(expected), expected[:20], "close_notify")
        assert got == expected
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await server.stopListening()
