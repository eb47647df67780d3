"""
Client endpoints for backends, the one way the Twisted engine and the
health checks connect to one.

An IP address gets a plain TCP endpoint; a host name connects to the
address the resolver (L{lbproxy.health.resolver.Resolver}) has for it, so
no lookup happens on the connect path once the name is known.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer


def backend_endpoint(reactor: Any, host: str, port: int, timeout: float, resolver: Any = None) -> Any:
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
        return ResolvedEndpoint(reactor, resolver, host, port, timeout)
    cls = TCP4ClientEndpoint if version == 4 else TCP6ClientEndpoint
    return cls(reactor, host, port, timeout=timeout)


@implementer(IStreamClientEndpoint)
class ResolvedEndpoint:
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
