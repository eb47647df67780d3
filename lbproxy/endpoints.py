"""
Listen descriptions, parsed once; listeners, bound before any starts.

C{--listen} and C{--admin} take Twisted's endpoint syntax.  Plain
C{tcp:PORT[:interface=HOST][:backlog=N]} (and C{tcp6:}) are parsed here,
by a parser of our own, into an L{Endpoint}: both relay engines and the
admin site then bind the same way, with one backlog rule.  Any other kind
(C{unix:}, C{ssl:}, ...) is checked with C{serverFromString} and listened
on through it.

A listener binds in C{privilegedStartService} (every listener is bound
before any starts, so a taken port stops the start before anything logs
that it listens) and listens and accepts from C{startService}.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: The accept queue the proxy asks for unless told otherwise: bursts of
#: new connections wait in it instead of being dropped (Twisted's default
#: of 50 drops SYNs under load).
DEFAULT_BACKLOG = 4096
#: What the kernel caps every backlog to.
SOMAXCONN = "/proc/sys/net/core/somaxconn"


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


@dataclass(frozen=True)
class Endpoint:
    """
    A parsed listen description.

    @ivar description: as given on the command line.
    @ivar host: the address to bind for a plain TCP endpoint (a wildcard
        when none was given), C{None} for any other kind.
    @ivar port: the TCP port (0: any free port).
    @ivar backlog: the description's own C{backlog=}, if it has one.
    """

    description: str
    host: str | None = None
    port: int = 0
    backlog: int | None = None

    @property
    def tcp(self) -> bool:
        return self.host is not None

    @property
    def interface(self) -> str | None:
        """
        The interface named in the description (C{None} for a wildcard or
        a non-TCP endpoint).
        """
        return None if self.host in (None, "0.0.0.0", "::") else self.host


def _fields(description: str) -> list[tuple[str, str | None]]:
    """
    Split on unescaped C{:}; each field is C{(value, None)} or, for
    C{key=value}, C{(key, value)}.  A backslash escapes the next character.
    """
    fields: list[tuple[str, str | None]] = []
    key: str | None = None
    current: list[str] = []
    chars = iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            fields.append((key, "".join(current)) if key is not None else ("".join(current), None))
            key, current = None, []
        elif c == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(c)
    fields.append((key, "".join(current)) if key is not None else ("".join(current), None))
    return fields


def _number(text: str, what: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{what} must be a number from {low} to {high}, not {text!r}")
    return int(text)


def parse_endpoint(description: str, reactor: Any = None) -> Endpoint:
    """
    Parse a server endpoint description.

    @param reactor: checks descriptions of other kinds than C{tcp}/C{tcp6}
        with C{serverFromString} (the global reactor if not given; nothing
        listens).
    @raise ValueError: with the reason, for anything malformed.
    """
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6"):
        from twisted.internet.endpoints import serverFromString

        if reactor is None:
            from twisted.internet import reactor
        try:
            serverFromString(reactor, description)
        except Exception as e:
            raise ValueError(str(e) or type(e).__name__) from None
        return Endpoint(description)
    names = ("port", "interface", "backlog")
    given: dict[str, str] = {}
    positional = 0
    for key, value in _fields(rest) if rest else []:
        if value is None:
            if positional >= len(names):
                raise ValueError(f"too many fields in {kind}: endpoint")
            key, value = names[positional], key
            positional += 1
        if key not in names:
            raise ValueError(f"unknown {kind}: option {key!r} (use port, interface, backlog)")
        if key in given:
            raise ValueError(f"{key} given twice")
        given[key] = value
    if "port" not in given:
        raise ValueError(f"a {kind}: endpoint needs a port")
    port = _number(given["port"], "the port", 0, 65535)
    backlog = _number(given["backlog"], "backlog", 1, 1 << 20) if "backlog" in given else None
    host = given.get("interface") or ("::" if kind == "tcp6" else "0.0.0.0")
    if kind == "tcp6" and ":" not in host:
        raise ValueError(f"tcp6: needs an IPv6 interface, not {host!r}")
    return Endpoint(description, host, port, backlog)


def somaxconn(path: str = SOMAXCONN) -> int | None:
    """
    The kernel's cap on listen backlogs, or C{None} where it cannot be read.
    """
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def default_backlog(cap: int | None = None) -> int:
    """
    L{DEFAULT_BACKLOG}, capped by C{net.core.somaxconn} (read if C{cap} is
    not given).
    """
    if cap is None:
        cap = somaxconn()
    return min(DEFAULT_BACKLOG, cap) if cap and cap > 0 else DEFAULT_BACKLOG


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bound_socket(host: str, port: int, reuse_port: bool = False, family: int | None = None) -> socket.socket:
    """
    A TCP socket bound (not yet listening) as C{listenTCP} would bind it
    (C{SO_REUSEADDR}), and with C{SO_REUSEPORT} so several worker
    processes share the port.

    @raise OSError: if the address cannot be bound.
    """
    sock = socket.socket(family or _family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def listening_socket(
    host: str, port: int, backlog: int = DEFAULT_BACKLOG, reuse_port: bool = False,
    family: int | None = None,
) -> socket.socket:
    """
    Bind and listen (see L{bound_socket}).

    @raise OSError: if the address cannot be bound or listened on.
    """
    sock = bound_socket(host, port, reuse_port, family)
    try:
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class _Listener(Service):
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

    def _announce(self) -> None:
        where = self.address()
        shown = f"{where[0]}:{where[1]}" if where else self.endpoint.description
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


class ListenerService(_Listener):
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
        if self.endpoint.tcp:
            sock = self._listening()
            try:
                self.port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, self.factory)
            finally:
                sock.close()  # the reactor listens on its own duplicate
        else:
            self.port = _synchronously(self.endpoint, self.reactor, self.factory)
        super().startService()
        self._announce()

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


class FastRelayService(_Listener):
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

        self.engine = FastRelay(self.route, self._listening(), self.reactor)
        self.engine.start()
        super().startService()
        self._announce()

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
