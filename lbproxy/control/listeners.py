"""
The listener manager: one listener per listen endpoint of the document.

A change that adds an endpoint binds it first (L{ListenerManager.prepare}),
before the document is made durable, so a taken port or an address not on
this host refuses the change with nothing stored and nothing half-applied;
L{ListenerManager.commit} then starts what was bound, gives every listener
its new L{ListenerRoute} and stops the listeners of endpoints gone.

Both engines read their listener's route per accepted connection: a
listener of one service admits to that service, one shared by several
reads the client's server name (and a trusted source's PROXY header)
first and picks the service by it.  They read whether to terminate TLS
per accepted connection too (the fast engine's L{FastTLS} hook, the
Twisted engine's L{SwitchingFactory}), so C{tls} is turned on or off
where an endpoint listens without binding it again.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from lbproxy.control.routes import ListenerRoute
from lbproxy.listening.endpoints import parse_endpoint
from lbproxy.listening.listener_services import FastRelayService, ListenError, ListenerService
from lbproxy.model.config import ProxySettings
from lbproxy.model.errors import ConfigError
from lbproxy.model.service import Document, endpoint_of, listen_key, sharing

log = Logger()


class ListenRefused(ListenError):
    """
    A listen endpoint of a change cannot be bound; nothing was applied.

    @ivar status: the HTTP status that says why: 409 for a taken port,
        400 for an address that is not on this host (or any other reason).
    """

    def __init__(self, service: str, description: str, reason: str, status: int) -> None:
        super().__init__(description, reason)
        named = "" if service == "default" else f" (service {service!r})"
        self.args = (f"cannot listen on {description}: {reason}{named}",)
        self.service = service
        self.status = status

    def __str__(self) -> str:
        return self.args[0]


_IN_USE = os.strerror(errno.EADDRINUSE)


class Pending:
    """
    Listeners bound for a change, not yet listening.
    """

    def __init__(self) -> None:
        self.listeners: dict[str, Any] = {}

    def abort(self) -> None:
        for listener in self.listeners.values():
            listener.stopService()
        self.listeners.clear()


class ListenerManager:
    """
    @ivar listeners: endpoint description -> its running listener.
    @ivar routes: endpoint description -> its L{ListenerRoute} in force.
    """

    def __init__(
        self, table: Any, engine: str = "twisted", backlog: int = 4096,
        reuse_port: bool = False, reactor: Any = None, settings: ProxySettings = ProxySettings(),
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.table = table
        self.engine = engine
        self.backlog = backlog
        self.reuse_port = reuse_port
        self.reactor = reactor
        self.settings = settings
        self.running = False
        self.listeners: dict[str, Any] = {}
        self.routes: dict[str, ListenerRoute] = {}
        #: listening sockets handed over by the process this one takes
        #: over from, by listener key: adopted instead of bound.
        self.handed: dict[str, Any] = {}
        self._refusals: dict[str, Counter] = {}
        from lbproxy.relay.tlsreload import TLSStore

        #: The certificates of TLS listeners and the backends' TLS (lbproxy/relay/tls.py).
        self.tls = TLSStore(self.reactor)

    def check(self, document: Document) -> None:
        """
        Refuse a document whose listen descriptions are malformed.

        @raise ConfigError: naming the service and the endpoint.
        """
        for s in document.services:
            for description in s.listen:
                try:
                    parse_endpoint(description, self.reactor)
                except ValueError as e:
                    raise ConfigError(f"service {s.name!r}: listen {description!r}: {e}") from None
        # Both engines read a listener's TLS per accepted connection: tls
        # can be turned on or off on an endpoint listening already.
        self.tls.check(document)

    def prepare(self, document: Document, pending: Pending | None = None) -> Pending:
        """
        Bind the endpoints of C{document} that do not listen yet (nor are
        bound in C{pending}, which this adds to).

        @raise ListenRefused: if one cannot be bound; none that this call
            bound stays bound.
        @raise ConfigError: for a malformed description.
        """
        self.check(document)
        before = pending
        pending = Pending()
        try:
            for description, services in sharing(document).items():
                if description in self.listeners or (before and description in before.listeners):
                    continue
                listener = self._listener(description, services)
                handed = self.handed.pop(description, None)
                if handed is not None:
                    listener.adopt(handed)
                try:
                    listener.bind()
                except ListenError as e:
                    status = 409 if e.reason == _IN_USE else 400
                    raise ListenRefused(services[0].name, endpoint_of(description), e.reason, status) from None
                pending.listeners[description] = listener
        except BaseException:
            pending.abort()
            raise
        if before is not None:
            before.listeners.update(pending.listeners)
            return before
        return pending

    def commit(self, pending: Pending, document: Document) -> None:
        """
        Put C{document}'s listeners in force (the table applied it): new
        ones listen, every one gets its route, gone ones stop at once.
        """
        wanted = sharing(document)
        for description, listener in pending.listeners.items():
            if description in wanted:
                self.listeners[description] = listener
            else:
                listener.stopService()
        pending.listeners = {}
        self.tls.commit(wanted)
        for description, services in wanted.items():
            listener = self.listeners[description]
            self._route(description, listener, services)
            if not listener.running:
                listener.startService()
                if getattr(listener, "engine", None) is not None:
                    from lbproxy.relay.fast_tls import install

                    install(listener.engine, listener.tls_hook)
        for description in tuple(self.listeners):
            if description not in wanted:
                self._stop(description)

    def start(self, document: Document) -> None:
        """
        Bind and listen on every endpoint of the document (at startup).

        @raise ListenRefused: as L{prepare}.
        """
        self.commit(self.prepare(document), document)
        self.running = True

    def stop(self) -> Any:
        """
        Stop every listener.

        @return: a Deferred firing once all stopped listening.
        """
        self.running = False
        return defer.gatherResults([self._stop(d) for d in tuple(self.listeners)], consumeErrors=True)

    def _stop(self, description: str) -> defer.Deferred:
        listener = self.listeners.pop(description)
        self.routes.pop(description, None)
        log.info("stopped listening on {description}", description=endpoint_of(description))
        return defer.maybeDeferred(listener.stopService)

    def _route(self, description: str, listener: Any, services: list) -> None:
        refusals = self._refusals.setdefault(description, Counter())
        bound = [(s, self.table.balancer(s.name)) for s in services]
        route = ListenerRoute(endpoint_of(description), bound, refusals, self.settings)
        self.routes[description] = route
        target = getattr(listener, "proxy_factory", None) or listener
        target.route = route
        engine = getattr(listener, "engine", None)
        if engine is not None:
            engine.route = route
        if isinstance(listener, FastRelayService):
            listener.tls_hook = self._fast_tls(description, services)
            if engine is not None:
                from lbproxy.relay.fast_tls import install

                install(engine, listener.tls_hook)
        elif hasattr(target, "serve"):
            target.serve(self.tls.servers.get(description) if services[0].tls is not None else None)

    def _fast_tls(self, key: str, services: list) -> Any:
        """
        What a fast engine listener does with TLS from now on: C{None}
        (plain), or the L{FastTLS} hook terminating it with the
        certificates in force and reaching TLS backends.
        """
        from lbproxy.relay.fast_tls import FastTLS
        from lbproxy.relay.tlsreload import needs_tls

        if not needs_tls(services):
            return None
        server = self.tls.servers.get(key) if services[0].tls is not None else None
        return FastTLS(server, self.tls.fast_clients, getattr(self.table, "process", None))

    def _listener(self, key: str, services: list = ()) -> Any:  # type: ignore[assignment]
        """
        A listener for C{key}, on the manager's engine (TLS too: the fast
        engine's is L{lbproxy.relay.fast_tls}).
        """
        description = endpoint_of(key)
        endpoint = parse_endpoint(description, self.reactor)
        if not endpoint.tcp and self.running:
            raise ConfigError(
                f"only tcp: and tcp6: endpoints can be added while lbproxy runs (bound before the "
                f"change is stored), not {description}"
            )
        backlog = endpoint.backlog or self.backlog
        engine = self.engine
        what = f"proxy ({engine} engine{', TLS' if services and services[0].tls else ''})"
        # Refuses every client (no service) until commit gives the real route.
        placeholder = ListenerRoute(description, (), settings=self.settings)
        if engine == "fast":
            if endpoint.tcp:
                return FastRelayService(placeholder, endpoint, backlog, self.reuse_port, self.reactor, what)
            from lbproxy.relay.tlsreload import needs_tls

            if not needs_tls(list(services)):
                raise ConfigError(f"the fast engine listens on tcp: endpoints only, not {description}")
            what = what.replace("fast", "twisted")
        from lbproxy.relay.twisted_tls import SwitchingFactory

        proxy = SwitchingFactory(placeholder, self.reactor, self.tls.clients, getattr(self.table, "process", None))
        listener = ListenerService(endpoint, proxy, backlog, what, self.reactor)
        listener.proxy_factory = proxy
        return listener

    def address(self, description: str) -> tuple[str, int] | None:
        listener = self.listeners.get(description)
        return None if listener is None else listener.address()

    def addresses(self, service: str) -> list[tuple[str, int]]:
        """
        Where a service's clients connect, one per listening TCP endpoint.
        """
        found = self.table.document.service(service)
        out = []
        for description in found.listen if found else ():
            where = self.address(listen_key(description, service))
            if where is not None:
                out.append(where)
        return out


class ListenersService(Service):
    """
    Runs the L{ListenerManager} while the application runs: binds the
    document's endpoints with every other listener of the tree (L{bind}),
    listens on start, stops them all on stop.
    """

    def __init__(self, manager: ListenerManager, document: Any) -> None:
        """
        @param document: a callable returning the document in force.
        """
        self.manager = manager
        self._document = document
        self._pending: Pending | None = None

    def bind(self) -> None:
        """
        Bind what the document in force listens on (idempotent).

        @raise ListenRefused: naming the first that cannot be bound.
        """
        self._pending = self.manager.prepare(self._document(), self._pending)

    def privilegedStartService(self) -> None:
        self.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        document = self._document()
        pending, self._pending = self.manager.prepare(document, self._pending), None
        self.manager.commit(pending, document)
        self.manager.running = True
        self.manager.tls.start()
        super().startService()

    def stopService(self) -> Any:
        if self._pending is not None:
            self._pending.abort()
            self._pending = None
        self.manager.tls.stop()
        super().stopService()
        return self.manager.stop()

    def stop_accepting(self) -> Any:
        """
        Stop accepting on every listener; relayed connections go on
        (graceful stop, L{lbproxy.control.lifecycle}).
        """
        return defer.gatherResults(
            [defer.maybeDeferred(listener.stop_accepting) for listener in tuple(self.manager.listeners.values())],
            consumeErrors=True,
        )

    def listening_fds(self) -> list[tuple[str, int]]:
        """
        Every listening socket to hand over, named C{proxy:KEY}
        (L{lbproxy.control.takeover}).
        """
        out = []
        for key, listener in self.manager.listeners.items():
            fd = listener.listening_fd()
            if fd is not None:
                out.append((f"proxy:{key}", fd))
        return out

    def adopt_all(self, handover: Any) -> None:
        """
        Take the listening sockets handed over as C{proxy:KEY}: the
        listeners of those keys adopt them instead of binding.
        """
        for name in tuple(handover.sockets):
            if name.startswith("proxy:"):
                sock = handover.take(name)
                if sock is not None:
                    self.manager.handed[name[len("proxy:"):]] = sock

    def ready(self) -> bool:
        """
        Whether every listener of the document accepts (a takeover then
        tells the old process to drain).
        """
        return self.manager.running and all(
            listener.listening_fd() is not None for listener in self.manager.listeners.values()
        )

    def address(self) -> tuple[str, int] | None:
        """
        Where the main service's clients connect (its first endpoint).
        """
        main = self.manager.table.document.main()
        found = self.manager.addresses(main.name) if main is not None else []
        return found[0] if found else None
