"""
The portable relay engine: Twisted transports on both sides.

A L{ProxyFactory} serves any stream server endpoint.  Each client
connection asks the L{IBalancer} for a backend, connects through an
endpoint, then relays with backpressure both ways (each transport is the
other's streaming producer) and half-close (L{IHalfCloseableProtocol}).
Until the backend is up the client transport is paused, so no client byte
is read, let alone buffered.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from zope.interface import implementer

from lbproxy.interfaces import IBalancer, IRelayedConnection
from lbproxy.policy.pool import AccessRecord, Candidate
from lbproxy.relay.proxyprotocol import header


def _endpoint(reactor: Any, host: str, port: int, timeout: float, resolver: Any = None) -> Any:
    """
    A client endpoint for a backend; a host name connects to the address
    C{resolver} (a L{lbproxy.health.resolver.Resolver}) has for it, so no
    lookup happens on the connect path once the name is known.
    """
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        if resolver is None:
            from lbproxy.health.resolver import Resolver

            resolver = Resolver(reactor)
        return _ResolvedEndpoint(reactor, resolver, host, port, timeout)
    cls = TCP4ClientEndpoint if version == 4 else TCP6ClientEndpoint
    return cls(reactor, host, port, timeout=timeout)


@implementer(IStreamClientEndpoint)
class _ResolvedEndpoint:
    """
    Connects to a host name's current address from the resolver.
    """

    def __init__(self, reactor: Any, resolver: Any, host: str, port: int, timeout: float) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._host = host
        self._port = port
        self._timeout = timeout

    def connect(self, factory: Any) -> Any:
        def connect_to(found: tuple) -> Any:
            family, sockaddr = found
            cls = TCP4ClientEndpoint if family == socket.AF_INET else TCP6ClientEndpoint
            return cls(self._reactor, sockaddr[0], self._port, timeout=self._timeout).connect(factory)

        return self._resolver.resolve(self._host, self._port).addCallback(connect_to)


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
            peer.transport.loseWriteConnection()
        if self._write_done:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self._write_done = True
        if self._read_done:
            self.transport.loseConnection()

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
            frontend.first_response()
        frontend.bytes_down += len(data)
        frontend.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self._lost = True
        frontend = self.frontend
        if not reason.check(*_CLEAN):
            frontend.backend_outcome = "backend-reset"
            if frontend.outcome is None and frontend.candidate is not None:
                # Not our abort nor the client's: passive health counts it.
                frontend.balancer.connection_reset(frontend.candidate, _reason(reason))
        self._close_peer()
        self.frontend.side_lost()


@implementer(IRelayedConnection)
class FrontendProtocol(_Side):
    """
    One client connection, relayed to one backend.
    """

    candidate: Candidate | None = None
    _pending: Any = None
    outcome: str | None = None
    backend_outcome: str | None = None
    first_byte_pending = False
    idle_mark = 0
    idle_since = 0.0

    def __init__(self, balancer: IBalancer, reactor: Any, endpoints: dict) -> None:
        self.balancer = balancer
        self.reactor = reactor
        self._endpoints = endpoints
        self._tried: tuple[str, ...] = ()
        self.bytes_up = 0
        self.bytes_down = 0
        self._finished = False

    def connectionMade(self) -> None:
        self.started = self.reactor.seconds()
        peer = self.transport.getPeer()
        self.client = (getattr(peer, "host", str(peer)), getattr(peer, "port", 0))
        self.transport.pauseProducing()
        self._connect()

    def _connect(self) -> None:
        candidate = self.balancer.route(self.client, self._tried)
        if candidate is None:
            self.outcome = "connect-failed" if self._tried else "no-backend"
            self.transport.abortConnection()
            return
        self._tried += (candidate.id,)
        key = (candidate.host, candidate.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = _endpoint(
                self.reactor, candidate.host, candidate.port,
                self.balancer.settings.connect_timeout, getattr(self.balancer, "resolver", None),
            )
        self._connect_started = self.reactor.seconds()
        d = self._pending = endpoint.connect(_BackendFactory(BackendProtocol(self)))
        d.addCallbacks(
            self._connected, self._connect_failed,
            callbackArgs=(candidate,), errbackArgs=(candidate,),
        )

    def _connected(self, backend: BackendProtocol, candidate: Candidate) -> None:
        self._pending = None
        now = self.reactor.seconds()
        self.candidate = candidate
        self.peer = backend
        backend.peer = self
        self.balancer.connection_opened(candidate, self, now - self._connect_started)
        version = candidate.backend.proxy_protocol
        if version:
            host = self.transport.getHost()
            backend.transport.write(
                header(version, self.client, (getattr(host, "host", ""), getattr(host, "port", 0)))
            )
        self.first_byte_pending = True
        self._first_byte_from = now
        self.transport.registerProducer(backend.transport, True)
        backend.transport.registerProducer(self.transport, True)
        self.transport.resumeProducing()

    def _connect_failed(self, failure: Any, candidate: Candidate) -> None:
        self._pending = None
        if self._lost:
            return
        self.balancer.connect_failed(candidate, _reason(failure))
        if len(self._tried) > self.balancer.settings.retries:
            self.outcome = "connect-failed"
            self.transport.abortConnection()
            return
        self.balancer.totals.retries += 1
        self._connect()

    def first_response(self) -> None:
        self.first_byte_pending = False
        self.balancer.observe_response(
            self.candidate, self.reactor.seconds() - self._first_byte_from
        )

    def dataReceived(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self.peer.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self._lost = True
        if self._pending is not None:
            self._pending.cancel()
        if self.outcome is None and not reason.check(*_CLEAN):
            self.outcome = "client-reset"
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
        record = AccessRecord(
            client=f"{self.client[0]}:{self.client[1]}",
            backend=self.candidate.id if self.candidate else None,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            duration=self.reactor.seconds() - self.started,
            outcome=self.outcome or self.backend_outcome or "ok",
        )
        if self.candidate is None:
            self.balancer.client_failed(record)
        else:
            self.balancer.connection_closed(self.candidate, self, record)

    def abort(self, why: str) -> None:
        if self.outcome is None:
            self.outcome = why
        self.transport.abortConnection()
        if self.peer is not None and not self.peer._lost:
            self.peer.transport.abortConnection()

    def close(self, why: str) -> None:
        if self.outcome is None:
            self.outcome = why
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._close_peer()


def _clean_errors() -> tuple:
    from twisted.internet.error import ConnectionDone

    return (ConnectionDone,)


_CLEAN = _clean_errors()


class ProxyFactory(ServerFactory):
    """
    Accepts client connections for the balancer; over the connection limit
    a client is closed at once (L{buildProtocol} returns C{None}).
    """

    noisy = False

    def __init__(self, balancer: IBalancer, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.balancer = balancer
        self.reactor = reactor
        self._endpoints: dict = {}

    def buildProtocol(self, addr: Any) -> FrontendProtocol | None:
        if not self.balancer.admit():
            return None
        return FrontendProtocol(self.balancer, self.reactor, self._endpoints)
