"""
The service table: one L{Balancer} per service of the config document.

Applying a document diffs it against the one in force, by service name: a
new service gets a new balancer, a changed one is applied to its balancer
(its counters and connections survive), a removed one retires (it admits
no one; its connections drain, or close at once when forced) and is
forgotten once they are gone.  No I/O here: the listeners follow the table
in L{lbproxy.control.listeners}.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.logger import Logger

from lbproxy.control.events import EventBus
from lbproxy.interfaces import IStrategy, IStrategyFactory
from lbproxy.model.config import Config, ProxySettings
from lbproxy.model.service import Document, as_document
from lbproxy.policy.balancer import Balancer
from lbproxy.policy.limits import ProcessLimit

log = Logger()


class ServiceTable:
    """
    @ivar document: the L{Document} in force.
    @ivar balancers: service name -> its L{Balancer}.
    @ivar retiring: balancers of removed services that still have
        connections, by name.
    """

    def __init__(
        self,
        document: Document | Config,
        factories: Mapping[str, IStrategyFactory],
        settings: ProxySettings = ProxySettings(),
        events: EventBus | None = None,
        reactor: Any = None,
        resolver: Any = None,
        first: Balancer | None = None,
    ) -> None:
        """
        @param first: an existing balancer for the document's main service
            (callers of the one-pool era built it).
        """
        if reactor is None:
            from twisted.internet import reactor
        document = as_document(document)
        self.document = document
        self.factories = factories
        self.settings = settings
        self.events = events if events is not None else (first.events if first else EventBus())
        self._reactor = reactor
        self.resolver = resolver if resolver is not None else (first.resolver if first else None)
        self.balancers: dict[str, Balancer] = {}
        self.retiring: dict[str, Balancer] = {}
        self._running = False
        self._force: set[str] = set()
        #: --max-connections over every service (L{lbproxy.policy.limits.ProcessLimit}).
        self.process = ProcessLimit(settings.max_connections)
        main = document.main()
        for service in document.services:
            if first is not None and service is main:
                self.balancers[service.name] = first
                first.process = self.process
            else:
                self.balancers[service.name] = self._balancer(service)

    @classmethod
    def of(cls, balancer: Balancer) -> "ServiceTable":
        """
        A table of one service around an existing balancer.
        """
        return cls(balancer.config, balancer.factories, balancer.base_settings,
                   reactor=balancer._reactor, first=balancer)

    #: where every service's balancer appends its access records
    #: (L{lbproxy.accesslog.log.AccessLog.pending}), if the access log is on.
    access_records: list | None = None

    def log_access_to(self, records: list) -> None:
        """
        Have every balancer, now and to come, append its access records to
        C{records}.
        """
        self.access_records = records
        for b in self.all():
            b.access_records = records

    def _balancer(self, service: Config) -> Balancer:
        b = Balancer(service, self.factories, self.settings, self.events, self._reactor, self.resolver)
        b.process = self.process
        if self.access_records is not None:
            b.access_records = self.access_records
        return b

    def balancer(self, name: str) -> Balancer | None:
        return self.balancers.get(name)

    def main(self) -> Balancer | None:
        """
        The balancer of the document's main service (C{default}, else the
        only one): the one today's top-level routes mean.
        """
        service = self.document.main()
        return None if service is None else self.balancers[service.name]

    # Lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        for b in self.balancers.values():
            b.start()

    def stop(self) -> None:
        self._running = False
        for b in (*self.balancers.values(), *self.retiring.values()):
            b.stop()

    # Changes ---------------------------------------------------------------

    def check(self, document: Document) -> dict[str, IStrategy]:
        """
        Build the strategies a document needs anew (new services, new
        choices), before it is made durable.

        @raise lbproxy.model.errors.ConfigError: if a plugin or its options
            cannot be used.
        """
        out: dict[str, IStrategy] = {}
        for service in document.services:
            current = self.balancers.get(service.name)
            if current is None or current.config.strategy != service.strategy:
                try:
                    out[service.name] = current.check(service) if current else self._probe(service)
                except ValueError as e:
                    raise type(e)(f"service {service.name!r}: {e}") from None
        return out

    def _probe(self, service: Config) -> IStrategy:
        from lbproxy.policy.plugins import build_strategy

        return build_strategy(service.strategy, self.factories)

    def force_next_removal(self, name: str) -> None:
        """
        The next removal of C{name} closes its connections at once
        (C{DELETE ?force=true}).
        """
        self._force.add(name)

    def unforce(self, name: str) -> None:
        """
        Forget a L{force_next_removal} that did not happen (the removal failed).
        """
        self._force.discard(name)

    def apply(self, document: Document, strategies: Mapping[str, IStrategy] | None = None) -> None:
        """
        Put C{document} in force: new services get a balancer, changed
        ones are applied to theirs, removed ones retire.
        """
        strategies = strategies or {}
        old = self.document
        for service in document.services:
            balancer = self.balancers.get(service.name)
            if balancer is None:
                balancer = self.balancers[service.name] = self._balancer(service)
                if self._running:
                    balancer.start()
            elif balancer.config != service:
                balancer.apply(service, strategies.get(service.name))
        self.document = document
        for service in old.services:
            if document.service(service.name) is None:
                self._retire(service.name)

    def _retire(self, name: str) -> None:
        balancer = self.balancers.pop(name)
        force = name in self._force
        self._force.discard(name)
        self.retiring[name] = balancer
        log.info("service {name} removed; {how} its connections", name=name,
                 how="closing" if force else "draining")

        def done() -> None:
            if self.retiring.get(name) is balancer:
                del self.retiring[name]
            balancer.stop()
            self.events.publish("service", {"service": name, "state": "removed"})

        balancer.retire(force, done)

    def all(self) -> tuple[Balancer, ...]:
        """
        Every balancer with connections to count: current and retiring.
        """
        return (*self.balancers.values(), *self.retiring.values())
