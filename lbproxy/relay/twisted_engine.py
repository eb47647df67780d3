"""
The portable relay engine: Twisted transports on both sides.

A L{ProxyFactory} serves any stream server endpoint.  Each client
connection's L{ConnectionSession} picks the backend and decides everything
else about the connection; the protocols connect through an endpoint, then
relay with backpressure both ways (each transport is the other's streaming
producer) and half-close (L{IHalfCloseableProtocol}).
Until the backend is up the client transport is paused, so no client byte
is read, let alone buffered; only a listener whose route asks for its
first bytes (SNI, a PROXY header) reads them first and hands them to the
session, which keeps them (at most 16 KiB and one read) for the backend.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from zope.interface import implementer

from lbproxy.interfaces import IEngineConnection
from lbproxy.policy.pool import Candidate
from lbproxy.relay.backend_endpoint import backend_endpoint
from lbproxy.relay.route import as_route
from lbproxy.relay.session import ConnectionSession, ReadFirst, Wait, route_options
from lbproxy.relay.sockopts import apply


def _reason(failure: Any) -> str:
    text = failure.getErrorMessage() or failure.type.__name__
    return text.strip().rstrip(".")


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """
    What both ends of a relay share: forward bytes to the peer and pass
    half-closes through.
    """

    peer: "_Side | None" = None
    _read_done = False
    _write_done = False
    _lost = False

    def readConnectionLost(self) -> None:
        self._read_done = True
        peer = self.peer
        if peer is not None and not peer._lost:
            # No more bytes will come this way, so this side no longer
            # produces for the peer; unregistering also lets the peer's
            # half-close happen (Twisted #6461).
            peer.transport.unregisterProducer()
            peer.half_close()
        if self._write_done:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self._write_done = True
        if self._read_done:
            self.transport.loseConnection()

    def half_close(self) -> None:
        """No more bytes for this side's peer (a TLS side closes instead)."""
        self.transport.loseWriteConnection()

    def _close_peer(self) -> None:
        peer = self.peer
        if peer is not None and not peer._lost:
            peer.transport.unregisterProducer()
            peer.transport.loseConnection()


class _BackendFactory(Factory):
    """
    Hands the endpoint the one protocol made for this connection; quiet,
    since factory start/stop lines per connection cost throughput.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class BackendProtocol(_Side):
    """
    The connection to the backend; a thin adapter around its frontend.
    """

    def __init__(self, frontend: "FrontendProtocol") -> None:
        self.frontend = frontend

    def dataReceived(self, data: bytes) -> None:
        frontend = self.frontend
        if frontend.first_byte_pending:
            frontend.first_byte_pending = False
            frontend.session.first_response()
        frontend.bytes_down += len(data)
        frontend.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self._lost = True
        frontend = self.frontend
        if not reason.check(*_CLEAN):
            frontend.session.backend_reset(_reason(reason))
        self._close_peer()
        frontend.side_lost()


def _set_options(transport: Any, options: tuple) -> None:
    handle = getattr(transport, "getHandle", None)
    if options and handle is not None:
        sock = handle()
        if hasattr(sock, "setsockopt"):
            apply(sock, options)


@implementer(IEngineConnection)
class FrontendProtocol(_Side):
    """
    One client connection, relayed to one backend; its
    L{ConnectionSession} decides, this protocol does the I/O.
    """

    _pending: Any = None
    _timer: Any = None
    first_byte_pending = False
    idle_mark = 0
    idle_since = 0.0

    def __init__(
        self, session: ConnectionSession, candidate: Candidate | ReadFirst, reactor: Any,
        endpoints: dict, options: tuple = (), tls_clients: dict | None = None,
    ) -> None:
        self.session = session
        self._tls_clients = tls_clients
        self.reactor = reactor
        self._candidate: Candidate | None = candidate
        self._endpoints = endpoints
        self._options = options
        self.bytes_up = 0
        self.bytes_down = 0
        self._finished = False

    def connectionMade(self) -> None:
        answer, self._candidate = self._candidate, None
        if answer.__class__ is ReadFirst:
            _set_options(self.transport, self._options)
            self._read_first(answer)
            return
        _set_options(self.transport, self._options)
        self._proceed(answer)

    def _proceed(self, answer: Candidate | Wait | None) -> None:
        """
        Do what the session answered: close the client (C{None}), wait in
        the queue, or connect to the backend; the client is not read
        meanwhile.
        """
        if answer is None:
            self.transport.loseConnection()
        elif answer.__class__ is Wait:
            self._wait(answer)
        else:
            self.transport.pauseProducing()
            self._connect(answer)

    # Waiting in the service's queue (every backend at its max_connections) ---

    def _wait(self, answer: Wait) -> None:
        """
        Keep the client paused (none of its bytes is read) until the
        session says which backend, or to close it.
        """
        self.transport.pauseProducing()
        answer.notify = self._waited

    def _waited(self, candidate: Candidate | None) -> None:
        if not self._lost:
            self._proceed(candidate)

    # The first bytes, for a route that needs them -----------------------------

    def _read_first(self, answer: ReadFirst) -> None:
        reactor = self.reactor
        self._timer = reactor.callLater(
            max(0.0, answer.deadline - reactor.seconds()), self._first_timed_out
        )
        # Until the session decides, client bytes go to it (an instance
        # attribute, so the relay's dataReceived stays as it is).
        self.dataReceived = self._first_bytes  # type: ignore[method-assign]

    def _first_bytes(self, data: bytes) -> None:
        self._first(self.session.client_bytes(data))

    def _first_timed_out(self) -> None:
        self._timer = None
        self._first(self.session.read_timed_out())

    def _first(self, answer: Any) -> None:
        if answer.__class__ is ReadFirst:
            return
        del self.dataReceived
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._proceed(answer)

    def _connect(self, candidate: Candidate) -> None:
        tls = candidate.backend.tls
        if tls is not None:
            return self._connect_tls(candidate, tls)
        key = (candidate.host, candidate.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = backend_endpoint(
                self.reactor, candidate.host, candidate.port, self.session.connect_timeout,
                self.session.resolver,
            )
        d = self._pending = endpoint.connect(_BackendFactory(BackendProtocol(self)))
        d.addCallbacks(self._connected, self._connect_failed)

    def _connect_tls(self, candidate: Candidate, tls: Any) -> None:
        """
        Connect to a backend over TLS; it counts as connected once its
        certificate is verified (a failed verification is a failed connect).
        """
        from lbproxy.relay.twisted_tls import tls_endpoint, TLSBackendProtocol

        key = (candidate.host, candidate.port, tls)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            plain = backend_endpoint(
                self.reactor, candidate.host, candidate.port, self.session.connect_timeout,
                self.session.resolver,
            )
            endpoint = self._endpoints[key] = tls_endpoint(plain, tls, candidate.host, self._tls_clients)
        d = self._pending = endpoint.connect(_BackendFactory(TLSBackendProtocol(self)))
        d.addCallback(lambda backend: backend.handshake)
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, backend: BackendProtocol) -> None:
        self._pending = None
        self.peer = backend
        backend.peer = self
        options, client = self.session.socket_options(self._options)
        _set_options(backend.transport, options)
        if client is not None:
            _set_options(self.transport, client)
        data = self.session.connected(self)
        if data:
            backend.transport.write(data)
        self.first_byte_pending = True
        self.transport.registerProducer(backend.transport, True)
        backend.transport.registerProducer(self.transport, True)
        self.transport.resumeProducing()

    def _connect_failed(self, failure: Any) -> None:
        self._pending = None
        if self._lost:
            # We cancelled it: the client left first.
            return
        self._proceed(self.session.connect_failed(_reason(failure)))

    def local_address(self) -> tuple[str, int]:
        host = self.transport.getHost()
        return (getattr(host, "host", ""), getattr(host, "port", 0))

    def dataReceived(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self.peer.transport.write(data)

    def readConnectionLost(self) -> None:
        if "dataReceived" in self.__dict__:
            self._first(self.session.client_bytes(b""))
        else:
            super().readConnectionLost()

    def connectionLost(self, reason: Any) -> None:
        self._lost = True
        if not reason.check(*_CLEAN):
            self.session.client_reset()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending is not None:
            self._pending.cancel()
        self._close_peer()
        self.side_lost()

    def side_lost(self) -> None:
        """
        Finish once both sides are gone (or the client side, if no backend
        was ever connected).
        """
        if self._finished or not self._lost or (self.peer is not None and not self.peer._lost):
            return
        self._finished = True
        self.session.ended(self.bytes_up, self.bytes_down)

    def abort(self, why: str) -> None:
        self.session.closing(why)
        self.transport.abortConnection()
        if self.peer is not None and not self.peer._lost:
            self.peer.transport.abortConnection()

    def close(self, why: str) -> None:
        self.session.closing(why)
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._close_peer()


def _clean_errors() -> tuple:
    from twisted.internet.error import ConnectionDone

    return (ConnectionDone,)


_CLEAN = _clean_errors()


class ProxyFactory(ServerFactory):
    """
    Accepts client connections for a listener's route; a client the
    session refuses (over the connection limit, no backend) is closed at
    once (L{buildProtocol} returns C{None}).

    @ivar route: the L{lbproxy.interfaces.IListenerRoute} each new
        connection gets (read per connection: the service table swaps it).
    """

    noisy = False

    def __init__(self, route: Any, reactor: Any = None) -> None:
        """
        @param route: an L{lbproxy.interfaces.IListenerRoute}, or one
            L{lbproxy.interfaces.IBalancer} (an ordinary listener).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.route = as_route(route)
        self.reactor = reactor
        self._endpoints: dict = {}
        self._options = route_options(self.route)
        #: C{(BackendTLS, host)} -> connection creator, for backends over TLS
        #: (the listener manager's L{lbproxy.relay.tlsreload.TLSStore.clients}).
        self.tls_clients: dict = {}

    def buildProtocol(self, addr: Any) -> FrontendProtocol | None:
        session = ConnectionSession(
            self.route, self.reactor, (getattr(addr, "host", str(addr)), getattr(addr, "port", 0))
        )
        answer = session.accepted()
        if answer is None:
            return None
        return FrontendProtocol(session, answer, self.reactor, self._endpoints, self._options, self.tls_clients)
