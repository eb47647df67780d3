"""
The client's opening bytes, for a listener whose route needs them: a
PROXY header from a trusted source, then the TLS ClientHello's server
name for SNI routing.  L{FirstBytes} is the part of
L{lbproxy.relay.session.ConnectionSession} that reads them (it supplies
C{_admit} and C{_refuse}); an ordinary listener never gets here.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from lbproxy.policy.pool import Candidate
from lbproxy.relay import proxyprotocol, sni

#: Bytes read at most for a PROXY header, then again for a ClientHello.
FIRST_READ_MAX = 16 * 1024


class ReadFirst:
    """
    The answer "read up to C{limit} client bytes and hand them to
    L{ConnectionSession.client_bytes}; at C{deadline} (the clock's time)
    call L{ConnectionSession.read_timed_out}".
    """

    __slots__ = ("limit", "deadline")

    def __init__(self, limit: int, deadline: float) -> None:
        self.limit = limit
        self.deadline = deadline


def _trusted(host: str, networks: tuple) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return any(address in network for network in networks)


class FirstBytes:
    """
    The first-bytes phase of a session (a mixin of
    L{lbproxy.relay.session.ConnectionSession}).
    """

    __slots__ = ()

    def client_bytes(self, data: bytes) -> Candidate | ReadFirst | None:
        """
        The client's next bytes while a L{ReadFirst} is in force (C{b""}:
        it closed).

        @return: a L{ReadFirst} (read more), the backend to connect to, or
            C{None}: close the client (counted by L{IListenerRoute.refused}).
        """
        if self.finished:
            return None
        if not data:
            return self._refuse("client-closed")
        buffered = self.first = self.first + data
        route = self.route
        if self.phase == "proxy":
            found = proxyprotocol.parse(buffered)
            if found is proxyprotocol.NEED_MORE:
                return ReadFirst(FIRST_READ_MAX - len(buffered), self.deadline)
            if found is proxyprotocol.MALFORMED:
                return self._refuse("proxy-malformed")
            if found.source is not None:
                self.client = found.source
                self.local = found.destination
            buffered = self.first = buffered[found.length:]
            if not route.routes_by_sni:
                return self._admit(route.default())
            self.phase = "sni"
            if not buffered:
                return ReadFirst(FIRST_READ_MAX, self.deadline)
        elif self.phase == "untrusted":
            # An untrusted source may not speak for another address.
            signed = proxyprotocol.starts_with_signature(buffered)
            if signed is None:
                return ReadFirst(FIRST_READ_MAX - len(buffered), self.deadline)
            if signed:
                return self._refuse("proxy-untrusted")
        found = sni.read_server_name(buffered)
        if found is sni.NEED_MORE:
            return ReadFirst(sni.MAX_HELLO - len(buffered), self.deadline)
        if found.__class__ is str:
            balancer = route.for_server_name(found)
            if balancer is not None:
                return self._admit(balancer)
            reason = "no-match"
        else:
            reason = found.reason
        balancer = route.default()
        if balancer is None:
            return self._refuse(reason)
        return self._admit(balancer)

    def read_timed_out(self) -> Candidate | None:
        """
        The L{ReadFirst} deadline passed.

        @return: C{None}: close the client (if it is still undecided).
        """
        if self.finished or self.balancer is not None:
            return None
        return self._refuse("proxy-timeout" if self.phase == "proxy" else "sni-timeout")

    def _read_first(self, route: Any) -> ReadFirst | Candidate | None:
        if route.accept_proxy and _trusted(self.client[0], route.accept_proxy):
            self.phase = "proxy"
        elif route.routes_by_sni:
            self.phase = "untrusted" if route.accept_proxy else "sni"
        else:
            # Untrusted, and nothing else to read for: an ordinary listener.
            return self._admit(route.default())
        self.deadline = self.started + route.sni_timeout
        return ReadFirst(FIRST_READ_MAX, self.deadline)

