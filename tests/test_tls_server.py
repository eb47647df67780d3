"""
The Twisted engine's TLS server side (L{lbproxy.relay.tls_server}) with
no sockets: a L{TLSServerProtocol} over a L{StringTransport}, its client
a standard-library C{SSLObject} over memory BIOs, stepped by hand.  What
it proves: the wrapped protocol hears the handshake and the bytes; a
close_notify (or a FIN without one) is C{readConnectionLost}, not the
end, and what is written after still reaches the client, then lbproxy's
close_notify; lbproxy's half-close (C{loseWriteConnection}) still reads
the client; a close waits for a registered producer; a failed
handshake reaches the wrapped protocol as its failure.
"""

from __future__ import annotations

import ssl

import pytest
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IProtocolFactory,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.model.tls import ServiceTLS
from lbproxy.relay.tls import ServerTLS, build
from lbproxy.relay.tls_server import TLSServerFactory, TLSServerProtocol
from tests.tlscerts import CA


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class Recorder(Protocol):
    """What the engine's TLS frontend would hear, noted."""

    def __init__(self) -> None:
        self.events: list = []
        self.data = b""

    def handshakeCompleted(self) -> None:
        self.events.append("handshake")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        self.events.append("read-lost")

    def writeConnectionLost(self) -> None:
        self.events.append("write-lost")

    def connectionLost(self, reason) -> None:
        self.events.append(("lost", reason.type))


class Pair:
    """A L{TLSServerProtocol} and an C{SSLObject} client, bytes moved by L{pump}."""

    def __init__(self, ca: CA, version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
                 wire: type = StringTransport) -> None:
        a = ca.issue("a", "a.test", ["a.test"])
        config = ServiceTLS((a,))
        self.inner = Recorder()
        factory = TLSServerFactory(ServerTLS(config, build(config, "web"), ()), _Inner(self.inner))
        self.server = factory.buildProtocol(None)
        self.wire = wire()
        self.server.makeConnection(self.wire)
        ctx = ssl.create_default_context(cafile=ca.path)
        ctx.check_hostname = False
        ctx.maximum_version = version
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="a.test")

    def pump(self) -> None:
        for _ in range(10):
            up = self.outgoing.read()
            if up:
                self.server.dataReceived(up)
            down = self.wire.value()
            self.wire.clear()
            if down:
                self.incoming.write(down)
            if not up and not down:
                return

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.client.do_handshake()
                self.pump()
                return
            except ssl.SSLWantReadError:
                self.pump()
        raise AssertionError("the handshake did not finish")

    def read(self) -> tuple[bytes, str]:
        """What the client can read now, and why it stopped."""
        got = b""
        while True:
            try:
                chunk = self.client.read(65536)
            except ssl.SSLWantReadError:
                return got, "want-read"
            except ssl.SSLZeroReturnError:
                return got, "close_notify"  # after the client's own
            if not chunk:
                return got, "close_notify"  # before the client's own
            got += chunk


class _Inner:
    def __init__(self, protocol):
        self.protocol = protocol

    def buildProtocol(self, addr):
        return self.protocol


@pytest.fixture
def pair(tmp_path):
    return Pair(CA(tmp_path))


def test_it_provides_what_it_declares(pair):
    """The transport side and the TCP side implement their interfaces, the factory its own."""
    for interface in (ITransport, IConsumer, IPushProducer, IHalfCloseableProtocol):
        assert verifyObject(interface, pair.server)
    assert isinstance(pair.server, TLSServerProtocol)
    assert verifyObject(IProtocolFactory, pair.server.factory)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_close_notify_is_read_connection_lost_and_the_answer_still_goes_out(tmp_path, version):
    """
    The client sends its request and its close_notify: the wrapped
    protocol hears the bytes, then C{readConnectionLost} (the connection
    stays open); what it writes then reaches the client, and its
    C{loseConnection} sends lbproxy's close_notify, then closes.
    In TLS 1.2 as in 1.3.  (Twisted's TLSMemoryBIOProtocol answered the
    close_notify with its own and closed at once, dropping the answer.)
    """
    pair = Pair(CA(tmp_path), version)
    pair.handshake()
    assert pair.client.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert pair.inner.events == ["handshake"]
    pair.client.write(b"request")
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.unwrap()
    pair.pump()
    assert pair.inner.data == b"request"
    assert pair.inner.events == ["handshake", "read-lost"]
    assert not pair.wire.disconnecting
    pair.server.write(b"answer " * 5000)
    pair.server.loseConnection()
    assert pair.wire.disconnecting
    pair.pump()
    assert pair.read() == (b"answer " * 5000, "close_notify")


def test_a_fin_without_close_notify_is_the_end_of_the_stream_too(pair):
    """
    The TCP stream ends with no close_notify: the bytes OpenSSL holds are
    delivered, then C{readConnectionLost}, as on the fast engine.
    """
    pair.handshake()
    pair.client.write(b"last words")
    pair.server.dataReceived(pair.outgoing.read())
    pair.server.readConnectionLost()
    assert pair.inner.data == b"last words"
    assert pair.inner.events == ["handshake", "read-lost"]
    assert not pair.wire.disconnecting


def test_a_close_waits_for_the_producer_to_be_unregistered(pair):
    """
    With a producer registered (the backend), C{loseConnection} still
    takes its writes; the close_notify and the close come when it is
    unregistered.
    """
    pair.handshake()
    producer = StringTransport()
    pair.server.registerProducer(producer, True)
    assert pair.wire.producer is producer
    pair.server.loseConnection()
    pair.server.write(b"still")
    assert not pair.wire.disconnecting
    pair.server.unregisterProducer()
    assert pair.wire.disconnecting and pair.wire.producer is None
    pair.pump()
    assert pair.read() == (b"still", "close_notify")


def test_a_failed_handshake_closes_and_reaches_the_wrapped_protocol_as_its_failure(pair):
    """
    Bytes that are not TLS: the connection is closed (an alert first) and
    the wrapped protocol's connectionLost gets the TLS error, not a clean
    end; it never heard of a handshake.
    """
    from OpenSSL.SSL import Error

    pair.server.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    assert pair.wire.disconnecting
    pair.server.connectionLost(None)
    assert pair.inner.events == [("lost", Error)]


class HalfClosingWire(StringTransport):
    """A TCP transport that also half-closes (StringTransport does not)."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_lose_write_connection_sends_close_notify_and_still_reads_the_client(tmp_path, version):
    """
    The backend ended first: after what was written, the wrapped
    protocol's C{loseWriteConnection} sends lbproxy's close_notify and a
    TCP half-close (not a close), and what the client sends after is still
    delivered; its close_notify then is C{readConnectionLost}, and the TCP
    side's C{writeConnectionLost} reaches the wrapped protocol.  In TLS 1.2
    as in 1.3.  (Before, the Twisted engine closed such a client.)
    """
    pair = Pair(CA(tmp_path), version, HalfClosingWire)
    pair.handshake()
    pair.server.write(b"early answer")
    pair.server.loseWriteConnection()
    assert pair.wire.write_closed and not pair.wire.disconnecting
    pair.server.write(b"ignored after the end")
    pair.pump()
    assert pair.read() == (b"early answer", "close_notify")
    pair.client.write(b"more from the client")
    pair.pump()
    assert pair.inner.data == b"more from the client"
    pair.server.writeConnectionLost()
    pair.client.unwrap()
    pair.pump()
    assert pair.inner.events == ["handshake", "write-lost", "read-lost"]
