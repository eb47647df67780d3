"""
Socket options of relayed connections: TCP keepalive on both sides (as
HAProxy's C{option tcpka}), so an idle connection whose peer vanished
(host down, NAT entry gone) is found and closed instead of held forever.
"""

from __future__ import annotations

import socket
from typing import Any

#: C{(idle, interval, count)}: probe after 60 s of silence, every 10 s,
#: give up after 6 unanswered probes (about two minutes in all).
DEFAULT_KEEPALIVE = (60, 10, 6)

_cache: dict[Any, tuple[tuple[int, int, int], ...]] = {}


def keepalive_options(keepalive: tuple[int, int, int] | None) -> tuple[tuple[int, int, int], ...]:
    """
    @param keepalive: C{(idle, interval, count)} (any sequence), or
        C{None} for off.
    @return: the C{(level, option, value)} triples to set (memoised; the
        timing options this platform lacks are left out).
    """
    if keepalive is not None:
        # Worker processes get their settings through JSON, as a list.
        keepalive = tuple(keepalive)  # type: ignore[assignment]
    try:
        return _cache[keepalive]
    except KeyError:
        pass
    if keepalive is None:
        options: tuple[tuple[int, int, int], ...] = ()
    else:
        options = ((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),) + tuple(
            (socket.IPPROTO_TCP, getattr(socket, name), value)
            for name, value in zip(("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"), keepalive)
            if hasattr(socket, name)
        )
    _cache[keepalive] = options
    return options


#: What turns keepalive off on a socket that has it (an accepted socket
#: inherits the listener's).
KEEPALIVE_OFF = ((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0),)


def apply(sock: Any, options: tuple[tuple[int, int, int], ...]) -> None:
    """
    Set C{options} on a socket; one that refuses them (a Unix socket has
    no TCP options) is left as it is.
    """
    setsockopt = sock.setsockopt
    try:
        for level, name, value in options:
            setsockopt(level, name, value)
    except OSError:
        pass


def parse_keepalive(text: str) -> tuple[int, int, int] | None:
    """
    Parse C{--tcp-keepalive}: C{IDLE,INTERVAL,COUNT} (seconds, seconds,
    probes) or C{off}.

    @raise ValueError: with a one-line message saying what is wrong.
    """
    if text.strip().lower() == "off":
        return None
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"--tcp-keepalive must be IDLE,INTERVAL,COUNT or off, not {text!r}")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--tcp-keepalive values must be whole numbers, not {text!r}") from None
    if min(values) < 1 or values[0] > 32767 or values[1] > 32767 or values[2] > 127:
        raise ValueError(
            f"--tcp-keepalive needs 1 <= IDLE, INTERVAL <= 32767 and 1 <= COUNT <= 127, not {text!r}"
        )
    return values  # type: ignore[return-value]


def socket_options(balancer: Any) -> tuple[tuple[int, int, int], ...]:
    """
    @return: the C{setsockopt} triples every relayed socket gets, on both
        sides (TCP keepalive, so dead peers of idle connections are found).
    """
    if balancer is None:
        from lbproxy.model.config import ProxySettings

        return keepalive_options(ProxySettings().tcp_keepalive)
    return keepalive_options(balancer.settings.tcp_keepalive)


def route_options(route: Any) -> tuple[tuple[int, int, int], ...]:
    """
    @return: the L{socket_options} of a listener's connections: from the
        route's own C{settings} when it has them (a listener of the
        L{lbproxy.control.listeners.ListenerManager}, whose services may
        have no default), else from its default service.
    """
    settings = getattr(route, "settings", None)
    if settings is None:
        return socket_options(route.default())
    return keepalive_options(settings.tcp_keepalive)


def service_options(balancer: Any, listener: tuple) -> tuple[tuple, tuple | None]:
    """
    The keepalive of a connection of C{balancer}'s service (its own
    C{tcp_keepalive}, or the command line's), found once the service is
    chosen: a listener may carry several services (by SNI), so it cannot
    be set on the listening socket alone.

    @param listener: the options the client socket already has (the
        listener's, L{route_options}).
    @return: C{(backend, client)}: the backend socket's options, and the
        client socket's to set again (C{None}: it has them already, the
        usual case, costing no syscall).
    """
    own = keepalive_options(balancer.settings.tcp_keepalive) if balancer is not None else listener
    if own == listener:
        return own, None
    return own, own or KEEPALIVE_OFF

