"""
The Twisted engine's TLS server side: one client connection's TLS over
pyOpenSSL memory BIOs, the transport of its
L{lbproxy.relay.twisted_tls.TLSFrontendProtocol}, with half-close.

Why not Twisted's C{TLSMemoryBIOProtocol} (which the engine keeps for
backends over TLS): on the client's close_notify it answers with its own
and closes the connection at once, dropping what is written after, so a
client that ends its request with a close_notify (Python's C{unwrap},
HTTP/1.0-style protocols) never got the backend's answer.  Here a
close_notify, or a TCP FIN without one (as on the fast engine), is the
end of the client's stream: the wrapped protocol hears
C{readConnectionLost} (the engine half-closes the backend), its writes
still go out, and its C{loseConnection} sends lbproxy's close_notify,
then closes.  OpenSSL lets a side write after the peer's close_notify
(TLS 1.3 says so; OpenSSL does it for TLS 1.2 too).  The other way, the
wrapped protocol's C{loseWriteConnection} (the backend ended first) sends
lbproxy's close_notify and a TCP half-close, and the client's bytes are
still read until its own end.

Only what the engine uses is here: a push producer and consumer passed
through to the TCP transport, the SSL connection (L{getHandle}), the
peer certificate and ALPN protocol, and C{IHandshakeListener}.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

#: Plaintext per C{send}: one TLS record.
RECORD = 16384
#: Bytes per read from OpenSSL (records) and from its send BIO.
CHUNK = 65536


@implementer(IHalfCloseableProtocol, ITransport, IConsumer, IPushProducer)
class TLSServerProtocol(Protocol):
    """
    The TCP connection's protocol, and the transport of L{wrapped}.

    @ivar transport: the TCP transport.
    @ivar wrapped: the protocol inside TLS (it hears C{handshakeCompleted}
        if it is an C{IHandshakeListener}).
    """

    _tls: Any = None
    _shaken = False
    _read_done = False
    _closing = False
    _eof = False
    #: lbproxy's end of stream was asked for (L{loseWriteConnection}).
    _write_shut = False
    #: the end to send once what was written is out: L{_close_notify}
    #: (a close) or L{_shut_write} (a half-close), or C{None}.
    _when_written: Any = None
    _producer: Any = None
    _reason: Any = None
    disconnecting = False

    def __init__(self, creator: Any, wrapped: Any) -> None:
        """
        @param creator: an C{IOpenSSLServerConnectionCreator} (the
            listener's L{lbproxy.relay.tls.ServerTLS}).
        """
        self._creator = creator
        self.wrapped = wrapped
        #: writes waiting for the handshake (or for OpenSSL to read).
        self._unsent: list[bytes] = []

    # The TCP side ----------------------------------------------------------

    def connectionMade(self) -> None:
        tls = self._tls = self._creator.serverConnectionForTLS(self)
        tls.set_accept_state()
        self.wrapped.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        tls = self._tls
        tls.bio_write(data)
        if not self._shaken:
            try:
                tls.do_handshake()
            except WantReadError:
                self._flush()
                return
            except Error:
                self._fail()
                return
            self._shaken = True
            self._flush()
            if IHandshakeListener.providedBy(self.wrapped):
                self.wrapped.handshakeCompleted()
        if self._unsent:
            self._send_unsent()
        self._read()

    def _read(self) -> None:
        recv = self._tls.recv
        while not self._read_done and self._tls is not None:
            try:
                data = recv(CHUNK)
            except WantReadError:
                break
            except ZeroReturnError:
                self._ended()
                break
            except Error:
                if self._eof:
                    break  # the FIN cut a record: the end all the same
                self._fail()
                return
            self.wrapped.dataReceived(data)
        self._flush()

    def _ended(self) -> None:
        """The client's stream ended (close_notify or FIN): tell the wrapped protocol."""
        self._read_done = True
        if IHalfCloseableProtocol.providedBy(self.wrapped):
            self.wrapped.readConnectionLost()
        else:
            self.loseConnection()

    def readConnectionLost(self) -> None:
        if not self._shaken:
            self.transport.loseConnection()
            return
        if not self._read_done:
            # A FIN without a close_notify: what OpenSSL still holds, then the end.
            self._eof = True
            self._tls.bio_shutdown()
            try:
                self._read()
            finally:
                if not self._read_done:
                    self._ended()

    def writeConnectionLost(self) -> None:
        """The TCP half-close L{loseWriteConnection} asked for is done."""
        wrapped = self.wrapped
        if wrapped is not None and IHalfCloseableProtocol.providedBy(wrapped):
            wrapped.writeConnectionLost()

    def _fail(self) -> None:
        # A handshake or record error: its alert goes out, then the close.
        self._reason = Failure()
        self._read_done = True
        self._flush()
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        reason = self._reason or reason
        self._reason = None
        self.disconnecting = True
        wrapped, self.wrapped = self.wrapped, None
        self._tls = None
        wrapped.connectionLost(reason)

    # Writing -----------------------------------------------------------------

    def _flush(self) -> None:
        tls = self._tls
        if tls is None:
            return
        write = self.transport.write
        while True:
            try:
                data = tls.bio_read(CHUNK)
            except WantReadError:
                return
            if not data:
                return
            write(data)

    def write(self, data: bytes) -> None:
        if (self._closing and self._producer is None) or self._tls is None or self._write_shut:
            return
        if not self._shaken or self._unsent:
            self._unsent.append(data)
            return
        self._send(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def _send(self, data: bytes) -> None:
        send = self._tls.send
        view = memoryview(data)
        while view:
            try:
                view = view[send(view[:RECORD]):]
            except WantReadError:
                # OpenSSL needs the peer's bytes first (a renegotiation).
                self._unsent.append(bytes(view))
                break
            except Error:
                self._fail()
                return
        self._flush()

    def _send_unsent(self) -> None:
        unsent, self._unsent = self._unsent, []
        for data in unsent:
            if self._unsent:
                self._unsent.append(data)
            else:
                self._send(data)
        if not self._unsent and self._when_written is not None:
            self._when_written()

    def loseConnection(self) -> None:
        """
        Close once what was written is out: lbproxy's close_notify, then
        the TCP connection (without waiting for the client's).
        """
        if self._closing:
            return
        self._closing = self.disconnecting = True
        if not self._shaken:
            self.transport.loseConnection()
        elif self._unsent or self._producer is not None:
            self._when_written = self._close_notify
        else:
            self._close_notify()

    def loseWriteConnection(self) -> None:
        """
        The end of what lbproxy sends (its backend ended first): once what
        was written is out, lbproxy's close_notify and a TCP half-close.
        The client's bytes are still read (OpenSSL returns application
        data after our close_notify; pyOpenSSL's C{shutdown} is one
        C{SSL_shutdown}, which reads nothing) until its own end.
        """
        if self._closing or self._write_shut:
            return
        self._write_shut = True
        if not self._shaken:
            self.loseConnection()
        elif self._unsent or self._producer is not None:
            self._when_written = self._shut_write
        else:
            self._shut_write()

    def _shut_write(self) -> None:
        if self._send_close_notify():
            self.transport.loseWriteConnection()

    def _close_notify(self) -> None:
        if self._send_close_notify():
            self.transport.loseConnection()

    def _send_close_notify(self) -> bool:
        """
        lbproxy's close_notify, onto the TCP transport.

        @return: whether there is still a TLS connection to end.
        """
        self._when_written = None
        tls = self._tls
        if tls is None:
            return False
        try:
            tls.shutdown()
        except Error:
            pass
        self._flush()
        return True

    def abortConnection(self) -> None:
        self._closing = self.disconnecting = True
        self.transport.abortConnection()

    # Producer and consumer: the TCP transport's ------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._producer is None:
            return
        self._producer = None
        self.transport.unregisterProducer()
        if self._when_written is not None and not self._unsent:
            self._when_written()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # What the engine reads of the connection ---------------------------------

    def getHost(self) -> Any:
        return self.transport.getHost()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHandle(self) -> Any:
        """The C{OpenSSL.SSL.Connection} (its server name, for one)."""
        return self._tls

    def getPeerCertificate(self) -> Any:
        return None if self._tls is None else self._tls.get_peer_certificate()

    @property
    def negotiatedProtocol(self) -> bytes | None:
        tls = self._tls
        if tls is None:
            return None
        return tls.get_alpn_proto_negotiated() or None


class TLSServerFactory(ServerFactory):
    """
    A TLS listener's factory: C{wrapped}'s protocols inside
    L{TLSServerProtocol}s, with the connections C{creator} makes.
    """

    noisy = False

    def __init__(self, creator: Any, wrapped: Any) -> None:
        self.creator = creator
        self.wrapped = wrapped

    def buildProtocol(self, addr: Any) -> TLSServerProtocol | None:
        inner = self.wrapped.buildProtocol(addr)
        if inner is None:
            return None
        protocol = TLSServerProtocol(self.creator, inner)
        protocol.factory = self
        return protocol
