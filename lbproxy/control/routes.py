"""
L{ListenerRoute}: what one listening endpoint knows of its services.

Built from the document whenever it changes and swapped whole on the
listener, so a connection sees one route from accept to end.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any, Sequence

from zope.interface import implementer

from lbproxy.interfaces import IListenerRoute
from lbproxy.relay.sni import match_server_name


@implementer(IListenerRoute)
class ListenerRoute:
    """
    @ivar services: the names of the services bound here, in document order.
    @ivar refusals: reason -> count, shared by the successive routes of
        one endpoint so the counts survive a swap.
    @ivar settings: the process's L{lbproxy.model.config.ProxySettings}
        (the socket options of the listener's connections, with or without
        a default service), or C{None}: the default service's.
    """

    def __init__(self, endpoint: str, bound: Sequence[tuple[Any, Any]], refusals: Counter | None = None,
                 settings: Any = None) -> None:
        """
        @param bound: C{(service config, balancer)} pairs, in document order.
        """
        self.endpoint = endpoint
        self.settings = settings
        self.services = tuple(config.name for config, _ in bound)
        self.refusals = refusals if refusals is not None else Counter()
        self.routes_by_sni = len(bound) > 1
        self.sni_timeout = max((config.sni_timeout for config, _ in bound), default=5.0)
        self.accept_proxy = tuple(
            ipaddress.ip_network(cidr, strict=False)
            for cidr in (bound[0][0].accept_proxy if bound else ())
        )
        self._exact: dict[str, Any] = {}
        self._wildcards: dict[str, Any] = {}
        self._default = None
        for config, balancer in bound:
            for name in config.sni:
                if name.startswith("*."):
                    self._wildcards[name[2:]] = balancer
                else:
                    self._exact[name] = balancer
            if config.sni_default:
                self._default = balancer
        if len(bound) == 1:
            self._default = bound[0][1]

    def default(self) -> Any:
        return self._default

    def for_server_name(self, name: str) -> Any:
        return match_server_name(name, self._exact, self._wildcards)

    def refused(self, reason: str) -> None:
        self.refusals[reason] += 1

    def __repr__(self) -> str:
        return f"<ListenerRoute {self.endpoint} -> {', '.join(self.services)}>"
