"""
Listen descriptions, parsed once, and the sockets they bind.

C{--listen} and C{--admin} take Twisted's endpoint syntax.  Plain
C{tcp:PORT[:interface=HOST][:backlog=N]} (and C{tcp6:}) are parsed here,
by a parser of our own, into an L{Endpoint}: both relay engines and the
admin site then bind the same way, with one backlog rule.  Any other kind
(C{unix:}, C{ssl:}, ...) is checked with C{serverFromString} and listened
on through it.

The services that listen on them are L{lbproxy.listening.listener_services}.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

#: The accept queue the proxy asks for unless told otherwise: bursts of
#: new connections wait in it instead of being dropped (Twisted's default
#: of 50 drops SYNs under load).
DEFAULT_BACKLOG = 4096
#: What the kernel caps every backlog to.
SOMAXCONN = "/proc/sys/net/core/somaxconn"


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


def _ipv6_hint(rest: str) -> str:
    """
    Why an C{interface=} holding an IPv6 address split into fields: its
    colons separate fields unless escaped (C{tcp6:8080:interface=::1}).
    """
    _, found, after = rest.partition("interface=")
    head = after.split(":", 1)[0]
    if found and ":" in after and all(c in "0123456789abcdefABCDEF" for c in head):
        return " (escape the colons of an IPv6 address with a backslash: interface=\\:\\:1)"
    return ""


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
                raise ValueError(f"too many fields in {kind}: endpoint{_ipv6_hint(rest)}")
            key, value = names[positional], key
            positional += 1
        if key not in names:
            raise ValueError(f"unknown {kind}: option {key!r} (use port, interface, backlog)")
        if key in given:
            raise ValueError(f"{key} given twice{_ipv6_hint(rest)}")
        given[key] = value
    if "port" not in given:
        raise ValueError(f"a {kind}: endpoint needs a port")
    port = _number(given["port"], "the port", 0, 65535)
    backlog = _number(given["backlog"], "backlog", 1, 1 << 20) if "backlog" in given else None
    host = given.get("interface") or ("::" if kind == "tcp6" else "0.0.0.0")
    if kind == "tcp6" and ":" not in host:
        raise ValueError(f"tcp6: needs an IPv6 interface, not {host!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A name would be looked up, blocking, by every bind (also of a
        # listen added through the API, in the reactor).
        raise ValueError(f"interface= must be an IP address, not {host!r}") from None
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
