"""
A hand-built L{IListenerRoute} for tests of the first-bytes phase: the
services of a C{.test} server name by its first label.
"""

import ipaddress

from zope.interface import implementer

from lbproxy.interfaces import IListenerRoute


@implementer(IListenerRoute)
class ServicesByName:
    """Services told apart by SNI (C{a.test} -> C{services["a"]}); counts refusals."""

    def __init__(self, services, default="a", sni=True, proxy=(), timeout=5.0, endpoint="tcp:0:interface=127.0.0.1"):
        self.endpoint = endpoint
        self.services = services
        self._default = default
        self.routes_by_sni = sni
        self.sni_timeout = timeout
        self.accept_proxy = tuple(ipaddress.ip_network(n) for n in proxy)
        self.refusals = []

    def default(self):
        return self.services.get(self._default)

    def for_server_name(self, name):
        return self.services.get(name.split(".")[0]) if name.endswith(".test") else None

    def refused(self, reason):
        self.refusals.append(reason)
