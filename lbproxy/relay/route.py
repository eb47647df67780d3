"""
The route of an ordinary listener: one service, no SNI, no PROXY header
read, so the session never waits for client bytes.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from lbproxy.interfaces import IListenerRoute


@implementer(IListenerRoute)
class SingleServiceRoute:
    """
    Wraps today's one balancer as an L{IListenerRoute}.
    """

    routes_by_sni = False
    sni_timeout = 0.0
    accept_proxy: tuple = ()

    def __init__(self, balancer: Any, endpoint: str = "") -> None:
        self._balancer = balancer
        self.endpoint = endpoint

    def default(self) -> Any:
        return self._balancer

    def for_server_name(self, name: str) -> Any:
        return None

    def refused(self, reason: str) -> None:
        """Nothing is refused before a service is chosen here."""


def as_route(target: Any) -> Any:
    """
    @return: C{target} if it is an L{IListenerRoute}, else a
        L{SingleServiceRoute} around it (an L{lbproxy.interfaces.IBalancer}).
    """
    if IListenerRoute.providedBy(target):
        return target
    return SingleServiceRoute(target)
