"""
The Twisted engine's TLS: a listener that terminates it and backends
reached over it, driven by the same L{ConnectionSession} as plain ones.

A TLS listener is the engine's L{ProxyFactory} inside a
L{lbproxy.relay.tls_server.TLSServerFactory} (pyOpenSSL memory BIOs, as
Twisted's C{TLSMemoryBIOFactory}, but with half-close).  Its client is
admitted and routed once the handshake is done, so the strategies and
the access log see what the handshake said (the verified client
certificate's subject, the server name, the ALPN protocol: a
L{TLSClient}) and a client that fails the handshake never costs a
backend connection.  A handshake must finish
within the service's C{sni_timeout}, and counts against
C{--max-connections} while in progress (L{SwitchingFactory} asks the
process's L{lbproxy.policy.limits.ProcessLimit} before a TLS client is
given a protocol, as the fast engine does).

Half-close: a TLS client's close_notify (or FIN) is the end of its
stream, passed to the backend as a half-close, and the backend's answer
still reaches the client, then lbproxy's close_notify
(L{lbproxy.relay.tls_server}).  A backend over TLS (Twisted's TLS
client transport) gets lbproxy's close_notify then, and its answer is
read until its own.  The other way, when the backend ends first, a TLS
client gets lbproxy's close_notify and a TCP half-close once what it has
to receive is out, and what it still sends is relayed until its own end
(L{lbproxy.relay.tls_server.TLSServerProtocol.loseWriteConnection}), as
on the fast engine.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ServerFactory
from zope.interface import implementer

from lbproxy.relay.session import ConnectionSession, ReadFirst, handshake_admitted
from lbproxy.relay.tls import client_creator, subject_of
from lbproxy.relay.tls_server import TLSServerFactory
from lbproxy.relay.twisted_engine import BackendProtocol, FrontendProtocol, ProxyFactory, _set_options


class TLSClient(tuple):
    """
    A TLS client's C{(host, port)}, as strategies get it, with what its
    handshake said.

    @ivar subject: the verified client certificate's subject (RFC 4514),
        or C{None} without one.
    @ivar server_name: the SNI name it asked for, or C{None}.
    @ivar alpn: the ALPN protocol agreed, or C{None}.
    """

    def __new__(cls, address: tuple, subject: str | None, server_name: str | None, alpn: str | None) -> "TLSClient":
        self = tuple.__new__(cls, address)
        self.subject = subject
        self.server_name = server_name
        self.alpn = alpn
        return self


def tls_endpoint(plain: Any, tls: Any, host: str, clients: dict | None) -> Any:
    """
    C{plain} (a backend's client endpoint) speaking TLS as C{tls} says.
    """
    creator = (clients or {}).get((tls, host))
    if creator is None:
        creator = client_creator(tls, host)
    return wrapClientTLS(creator, plain)


@implementer(IHandshakeListener)
class TLSBackendProtocol(BackendProtocol):
    """
    A backend over TLS: L{handshake} fires with it once verified, or
    fails with why the handshake did not finish.
    """

    def __init__(self, frontend: FrontendProtocol) -> None:
        super().__init__(frontend)
        self.handshake: defer.Deferred = defer.Deferred(lambda _: self.transport.abortConnection())

    _timer: Any = None

    def connectionMade(self) -> None:
        raw = getattr(self.transport, "transport", None)
        if raw is not None:
            _set_options(raw, self.frontend._options)
        # The connect timeout covers the handshake: a backend that takes
        # the TCP connection but never answers TLS is a failed connect.
        timeout = self.frontend.session.connect_timeout
        if timeout:
            self._timer = self.frontend.reactor.callLater(timeout, self.transport.abortConnection)

    def handshakeCompleted(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.handshake.called:
            self.handshake.callback(self)

    def half_close(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.handshake.called:
            self._lost = True
            self.handshake.errback(reason)
            return
        super().connectionLost(reason)


@implementer(IHandshakeListener)
class TLSFrontendProtocol(FrontendProtocol):
    """
    A client of a TLS listener: its session hears C{accepted} once the
    handshake is done; bytes decrypted before the backend is connected
    are kept for it.
    """

    _shaken = False
    _early: Any = None
    #: the client's stream ended before the backend was connected.
    _early_end = False
    #: the L{lbproxy.policy.limits.ProcessLimit} this handshake counts
    #: against until it is over (its C{begin_handshake} said yes), or C{None}.
    limit: Any = None

    def __init__(self, session: ConnectionSession, reactor: Any, endpoints: dict, options: tuple,
                 tls_clients: dict, timeout: float) -> None:
        super().__init__(session, None, reactor, endpoints, options, tls_clients)  # type: ignore[arg-type]
        self._timeout = timeout

    def _handshake_over(self) -> None:
        limit = self.limit
        if limit is not None:
            self.limit = None
            limit.end_handshake()

    def connectionMade(self) -> None:
        raw = getattr(self.transport, "transport", None)
        if raw is not None:
            _set_options(raw, self._options)
            # A handshake is several small writes: Nagle would hold them.
            nodelay = getattr(raw, "setTcpNoDelay", None)
            if nodelay is not None:
                nodelay(True)
        self._timer = self.reactor.callLater(self._timeout, self._handshake_timed_out)
        self._early = []
        self.dataReceived = self._early.append  # type: ignore[method-assign]

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self.session.closing("tls-timeout")
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._shaken = True
        self._handshake_over()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        session = self.session
        name = transport.getHandle().get_servername()
        alpn = getattr(transport, "negotiatedProtocol", None)
        session.client = TLSClient(
            session.client, subject_of(transport.getPeerCertificate()),
            name.decode("ascii", "replace") if name else None,
            alpn.decode("ascii", "replace") if alpn else None,
        )
        answer = session.accepted()
        # Routing by the first bytes means nothing inside TLS.
        self._proceed(None if answer.__class__ is ReadFirst else answer)

    def _connected(self, backend: Any) -> None:
        early, self._early = self._early, None
        self.__dict__.pop("dataReceived", None)
        super()._connected(backend)
        if early:
            data = b"".join(early)
            self.bytes_up += len(data)
            backend.transport.write(data)
        if self._early_end:
            super().readConnectionLost()

    def readConnectionLost(self) -> None:
        if self._early is not None:
            # Before the backend is connected: its half-close comes after
            # the bytes kept for it.
            self._early_end = True
            return
        super().readConnectionLost()

    def connectionLost(self, reason: Any) -> None:
        self._handshake_over()
        if not self._shaken:
            self.session.closing("tls-handshake-failed")
        self.__dict__.pop("dataReceived", None)
        super().connectionLost(reason)


class TLSProxyFactory(ProxyFactory):
    """
    The L{ProxyFactory} inside a TLS listener: every client gets a
    L{TLSFrontendProtocol}; admission waits for the handshake.

    @ivar tls_clients: the listener manager's backend connection creators.
    """

    def buildProtocol(self, addr: Any) -> TLSFrontendProtocol:
        route = self.route
        session = ConnectionSession(
            route, self.reactor, (getattr(addr, "host", str(addr)), getattr(addr, "port", 0))
        )
        timeout = getattr(route, "sni_timeout", 0.0) or 5.0
        return TLSFrontendProtocol(session, self.reactor, self._endpoints, self._options, self.tls_clients, timeout)


def tls_listener_factory(server_tls: Any, proxy: TLSProxyFactory) -> Any:
    """
    The factory a TLS listener listens with: C{proxy} inside TLS, with the
    certificates of C{server_tls} (an L{lbproxy.relay.tls.ServerTLS}).
    """
    return TLSServerFactory(server_tls, proxy)


class SwitchingFactory(ServerFactory):
    """
    A Twisted engine listener's factory: each connection is plain, or TLS
    with the certificates of L{server} when it is set, so that C{tls} can
    be turned on or off where the endpoint listens already (connections
    open keep what they started with).

    @ivar route: given to both the plain and the TLS L{ProxyFactory}.
    @ivar limit: the process's L{lbproxy.policy.limits.ProcessLimit}
        (C{--max-connections}), or C{None}: a TLS client is refused at its
        accept when it says no, and counts against it until its handshake
        is over.
    """

    noisy = False

    def __init__(self, route: Any, reactor: Any, tls_clients: dict, limit: Any = None) -> None:
        self.plain = ProxyFactory(route, reactor)
        self.secure = TLSProxyFactory(route, reactor)
        self.plain.tls_clients = self.secure.tls_clients = tls_clients
        self.limit = limit
        self.server: Any = None
        self._wrapped: Any = None

    @property
    def route(self) -> Any:
        return self.plain.route

    @route.setter
    def route(self, route: Any) -> None:
        self.plain.route = self.secure.route = route

    def serve(self, server_tls: Any) -> None:
        """
        Terminate TLS with C{server_tls} (an L{lbproxy.relay.tls.ServerTLS},
        whose certificates may change in place) from now on, or relay plain
        with C{None}.
        """
        if server_tls is not self.server:
            self.server = server_tls
            self._wrapped = None if server_tls is None else tls_listener_factory(server_tls, self.secure)

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self._wrapped
        if wrapped is None:
            return self.plain.buildProtocol(addr)
        limit = self.limit
        if not handshake_admitted(self.plain.route, limit):
            return None  # no protocol: the port closes the socket at once
        try:
            protocol = wrapped.buildProtocol(addr)
        except BaseException:
            if limit is not None:
                limit.end_handshake()
            raise
        protocol.wrapped.limit = limit
        return protocol
