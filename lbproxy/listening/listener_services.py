"""
Listeners as services: bound before any starts, listening from
C{startService}.

A listener binds in C{privilegedStartService} (every listener is bound
before any starts, so a taken port stops the start before anything logs
that it listens: L{lbproxy.startup.binding.LBProxyService}) and listens and
accepts from C{startService}, through the reactor (L{ListenerService}, the
Twisted engine and the admin site) or the fast engine
(L{FastRelayService}).  Each says where it listens in one log line.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.listening.endpoints import Endpoint, bound_socket

# The "listening on" lines keep the namespace docs/operations.rst names.
log = Logger(namespace="lbproxy.listening")


class ListenError(Exception):
    """
    A listener cannot bind or listen.

    @ivar description: the endpoint description, as given.
    @ivar reason: why, in words (C{Address already in use}).
    """

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(f"cannot listen on {description}: {reason}")
        self.description = description
        self.reason = reason


class Listener(Service):
    """
    What both kinds of listener share: bind early, listen on start, tell
    where.

    @ivar backlog: the accept queue asked of the kernel.
    """

    def __init__(self, endpoint: Endpoint, backlog: int, what: str) -> None:
        self.endpoint = endpoint
        self.backlog = backlog
        self.what = what
        self._bound: socket.socket | None = None

    def bind(self) -> None:
        """
        Bind a TCP endpoint's socket now (idempotent).

        @raise ListenError: if it cannot be bound.
        """
        if self._bound is None and self.endpoint.tcp:
            try:
                self._bound = bound_socket(self.endpoint.host, self.endpoint.port, self._reuse_port())
            except OSError as e:
                raise ListenError(self.endpoint.description, e.strerror or str(e)) from None

    def _reuse_port(self) -> bool:
        return False

    def adopt(self, sock: socket.socket) -> None:
        """
        Listen on C{sock}, a listening socket handed over by the process
        this one takes over from (L{lbproxy.control.takeover}), instead of
        binding.
        """
        if self._bound is not None:
            self._bound.close()
        self._bound = sock

    def listening_fd(self) -> int | None:
        """
        The listening socket's descriptor while it accepts (to hand over).
        """
        raise NotImplementedError

    def _listening(self) -> socket.socket:
        """
        The bound socket, now listening with L{backlog}; ours to hand over.
        """
        self.bind()
        sock, self._bound = self._bound, None
        try:
            sock.listen(self.backlog)
        except OSError as e:
            sock.close()
            raise ListenError(self.endpoint.description, e.strerror or str(e)) from None
        sock.setblocking(False)
        return sock

    def privilegedStartService(self) -> None:
        self.bind()
        super().privilegedStartService()

    def stopService(self) -> Any:
        if self._bound is not None:
            self._bound.close()
            self._bound = None
        return super().stopService()

    def address(self) -> tuple[str, int] | None:
        """
        Where clients connect (a wildcard turned into loopback) while it
        listens, else C{None}.
        """
        raise NotImplementedError

    def _announce(self, bound: tuple[str, int] | None) -> None:
        """
        Log where this listener listens: the address its socket is bound
        to (C{0.0.0.0:8080} for a wildcard, not the loopback address that
        L{address} gives clients, which would tell an operator that a
        listener open to every interface is loopback-only).
        """
        if bound is None:
            shown = self.endpoint.description
        else:
            host, port = bound
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        backlog = f", backlog {self.backlog}" if self.endpoint.tcp else ""
        log.info(
            "{what} listening on {where} ({description}{backlog})",
            what=self.what, where=shown, description=self.endpoint.description, backlog=backlog,
        )


def _loopback(host: str, port: int) -> tuple[str, int]:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


class ListenerService(Listener):
    """
    A Twisted listening port for C{factory} on an L{Endpoint} while the
    application runs (C{StreamServerEndpointService} with an early bind
    and a synchronous error).  TCP sockets are bound here and handed to
    the reactor with C{adoptStreamPort}; other kinds listen through their
    endpoint.

    @ivar port: the L{IListeningPort} while listening.
    """

    def __init__(self, endpoint: Endpoint, factory: Any, backlog: int, what: str, reactor: Any = None) -> None:
        super().__init__(endpoint, backlog, what)
        if reactor is None:
            from twisted.internet import reactor
        self.factory = factory
        self.reactor = reactor
        self.port: Any = None

    def startService(self) -> None:
        bound = None
        if self.endpoint.tcp:
            sock = self._listening()
            try:
                bound = sock.getsockname()[:2]
                self.port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, self.factory)
            finally:
                sock.close()  # the reactor listens on its own duplicate
        else:
            self.port = _synchronously(self.endpoint, self.reactor, self.factory)
        super().startService()
        self._announce(bound)

    def stopService(self) -> Any:
        super().stopService()
        return self.stop_accepting()

    def stop_accepting(self) -> Any:
        """
        Stop accepting: the reactor closes its own copy of the socket (a
        process that took the socket over keeps it, and its queue, alive).
        """
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else None

    def listening_fd(self) -> int | None:
        return self.port.fileno() if self.port is not None and self.endpoint.tcp else None

    def address(self) -> tuple[str, int] | None:
        if self.port is None:
            return None
        host = self.port.getHost()
        if not hasattr(host, "port"):
            return None
        return _loopback(host.host, host.port)


def _synchronously(endpoint: Endpoint, reactor: Any, factory: Any) -> Any:
    """
    Listen through C{serverFromString}; the built-in endpoints answer at
    once, so a failure is raised here, not logged later.
    """
    from twisted.internet.endpoints import serverFromString

    outcome: list[Any] = []
    serverFromString(reactor, endpoint.description).listen(factory).addBoth(outcome.append)
    if not outcome:
        raise ListenError(endpoint.description, "the endpoint did not listen at once")
    if isinstance(outcome[0], Failure):
        error = outcome[0].value
        reason = getattr(error, "socketError", None) or error
        raise ListenError(endpoint.description, getattr(reason, "strerror", None) or str(reason))
    return outcome[0]


class FastRelayService(Listener):
    """
    Runs a L{lbproxy.relay.fast_engine.FastRelay} on a plain TCP listener
    while the application runs (the fast engine's counterpart of
    L{ListenerService}).

    @ivar route: what the engine relays for: an
        L{lbproxy.interfaces.IListenerRoute} or one balancer (swapped
        whole, on the running engine too, by the listener manager).
    @ivar engine: the running C{FastRelay}, once started.
    """

    def __init__(
        self, route: Any, endpoint: Endpoint, backlog: int, reuse_port: bool = False,
        reactor: Any = None, what: str = "proxy (fast engine)",
    ) -> None:
        super().__init__(endpoint, backlog, what)
        self.route = route
        self.reuse_port = reuse_port
        self.reactor = reactor
        self.engine: Any = None

    def _reuse_port(self) -> bool:
        return self.reuse_port

    def startService(self) -> None:
        from lbproxy.relay.fast_engine import FastRelay

        sock = self._listening()
        bound = sock.getsockname()[:2]
        self.engine = FastRelay(self.route, sock, self.reactor)
        self.engine.start()
        super().startService()
        self._announce(bound)

    def stopService(self) -> Any:
        self.stop_accepting()
        return super().stopService()

    def stop_accepting(self) -> None:
        """
        Stop accepting; relayed connections go on (see L{ListenerService.stop_accepting}).
        """
        if self.engine is not None:
            self.engine.stop_listening()

    def listening_fd(self) -> int | None:
        engine = self.engine
        return engine.listener.fileno() if engine is not None and engine.listening else None

    def address(self) -> tuple[str, int] | None:
        engine = self.engine
        if engine is None or not engine.listening:
            return None
        return _loopback(*engine.listener.getsockname()[:2])
