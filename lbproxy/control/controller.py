"""
The path of a config change: validate, bind, make durable, then apply.

A change is a pure function from the current L{Document} to the next (a
change of one service's pool is lifted to one of the document by
L{lbproxy.model.service.change_service}).  Changes run one at a time (a
L{DeferredLock} on the control path, never on the data path), each against
the document in force when its turn comes, so two editors can never leave
the services in a state neither asked for.  A change that adds a listen
endpoint binds it before anything is stored; the services' balancers swap
the new document in only after the store says it is durable: if the bind
or the write fails, nothing changes in memory either.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from lbproxy.control.store.history import Change, IConfigHistory
from lbproxy.interfaces import IConfigObserver, IConfigStore
from lbproxy.model.config import Config
from lbproxy.model.errors import StoreError, VersionConflict
from lbproxy.model.service import Document, as_document, change_service
from lbproxy.policy.balancer import Balancer
from lbproxy.policy.services import ServiceTable

log = Logger()

Mutation = Callable[[Any], "tuple[Any, Any]"]


class ConfigController:
    """
    @ivar table: the L{ServiceTable} that applies changes.
    @ivar store: the L{IConfigStore} that makes them durable.
    @ivar listeners: the L{lbproxy.control.listeners.ListenerManager} that
        binds a change's new endpoints first, or C{None} (nothing listens
        through the controller: tests, workers' parent without listeners).
    """

    def __init__(
        self, table: ServiceTable | Balancer, store: IConfigStore, listeners: Any = None, seed: Any = None,
    ) -> None:
        """
        Watches C{store} from now until L{stop}.

        @param table: the service table, or (one-pool callers) the one
            balancer, which becomes a table of one service.
        """
        if isinstance(table, Balancer):
            table = ServiceTable.of(table)
        self.table = table
        self.store = store
        self.listeners = listeners
        #: the command line's document: a stored service with no listen
        #: endpoints (migrated from the first release) takes its namesake's.
        self.seed = seed
        self._lock = defer.DeferredLock()
        self._observers: list[IConfigObserver] = []
        self._unwatch: Callable[[], None] | None = store.watch(self._changed_elsewhere)

    def observe(self, observer: IConfigObserver) -> Callable[[], None]:
        """
        Tell C{observer} of every document applied from now on.

        @return: a callable that stops telling it.
        """
        self._observers.append(observer)

        def stop() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return stop

    def _applied(self, old: Document, new: Document) -> None:
        for observer in tuple(self._observers):
            try:
                observer.applied(old, new)
            except Exception:
                log.failure("config observer {observer!r} failed on version {version}", observer=observer, version=new.version)

    @property
    def document(self) -> Document:
        return self.table.document

    @property
    def config(self) -> Config | None:
        """
        The main service (C{default}, else the only one): what the
        top-level routes of the one-pool era mean.
        """
        return self.table.document.main()

    @property
    def balancer(self) -> Balancer | None:
        return self.table.main()

    def change(self, mutate: Mutation, expected_version: int | None = None, note: Change | None = None,
               service: str | None = None) -> defer.Deferred:
        """
        Apply C{mutate}, a change of one service's pool, durably.

        @param mutate: C{config -> (new_config, result)}; may raise
            L{lbproxy.model.errors.ConfigError} or C{KeyError} to refuse.
        @param expected_version: if given, refuse with L{VersionConflict}
            unless this is still the current version (C{If-Match}).
        @param service: the service's name; by default the main one.
        @param note: who made the change and what it did, for the store's
            history (L{IConfigHistory}); without it the store computes a
            summary from the diff.
        @return: a Deferred firing with C{(new_config, result)}.
        @raise KeyError: (in the Deferred) if there is no such service.
        """

        def lifted(document: Document) -> tuple[Document, Any]:
            name = service
            if name is None:
                main = document.main()
                if main is None:
                    raise KeyError("default")
                name = main.name
            new, result = change_service(name, mutate)(document)
            return new, (new.service(name), result)

        if note is not None and callable(note.summary):
            summary = note.summary
            note = note._replace(summary=lambda outcome: summary(outcome[1]))
        d = self.change_document(lifted, expected_version, note)
        d.addCallback(lambda outcome: outcome[1])
        return d

    def change_document(self, mutate: Mutation, expected_version: int | None = None,
                        note: Change | None = None) -> defer.Deferred:
        """
        Apply C{mutate}, C{document -> (new_document, result)}, durably.

        @return: a Deferred firing with C{(new_document, result)}.
        """
        return self._lock.run(self._change, mutate, expected_version, note)

    @defer.inlineCallbacks
    def _change(self, mutate: Mutation, expected_version: int | None, note: Change | None = None) -> Any:
        current = self.table.document
        if expected_version is not None and expected_version != current.version:
            raise VersionConflict(expected_version, current.version)
        new, result = mutate(current)
        if note is not None and callable(note.summary):
            note = note._replace(summary=note.summary(result))
        # New strategy objects only for new choices: rebuilding one would
        # restart its rotation (and caches) on every unrelated change.
        strategies = self.table.check(new)
        pending = self.listeners.prepare(new) if self.listeners is not None else None
        try:
            if IConfigHistory.providedBy(self.store):
                self.store.describe(new.version, note)
            yield self.store.save(new, current.version)
        except BaseException as e:
            if pending is not None:
                pending.abort()
            if isinstance(e, (VersionConflict, StoreError)):
                raise
            log.failure("config store failed to save version {version}", version=new.version)
            raise StoreError(f"the config store could not save the change: {e}") from e
        self._put_in_force(current, new, strategies, pending)
        return (new, result)

    def _put_in_force(self, old: Document, new: Document, strategies: Any = None, pending: Any = None) -> None:
        self.table.apply(new, strategies)
        if pending is not None:
            self.listeners.commit(pending, new)
        self._applied(old, new)

    def stop(self) -> None:
        """
        Stop watching the store for changes made by other processes (the
        process is shutting down: L{ControllerService} calls this).
        """
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()

    def install(self, config: Config | Document) -> defer.Deferred:
        """
        Put in force a document loaded from the store at startup (cluster
        mode), telling the observers.  Unlike a watched change it need not
        be newer: what the store holds wins over the command line's seed.

        @return: a Deferred firing with the document, or failing (nothing
            changed) if the services cannot use it.
        """
        return self._lock.run(self._install, as_document(config))

    def _install(self, document: Document) -> Document:
        if self.seed is not None:
            from lbproxy.control.store import listen_as_seeded

            document = listen_as_seeded(document, self.seed)
        old = self.table.document
        if document != old:
            strategies = self.table.check(document)
            pending = None
            if self.listeners is not None and self.listeners.running:
                pending = self.listeners.prepare(document)
            self._put_in_force(old, document, strategies, pending)
        return document

    def _changed_elsewhere(self, config: Config | Document) -> None:
        self._lock.run(self._adopt, as_document(config))

    def _adopt(self, document: Document) -> None:
        if document.version <= self.table.document.version:
            return
        try:
            self._install(document)
        except Exception:
            log.failure("cannot apply config version {version} from the store", version=document.version)


class ControllerService(Service):
    """
    Stops the controller's store watch when the application stops, so a
    change arriving during shutdown is not applied to a stopping process.
    """

    def __init__(self, controller: ConfigController) -> None:
        self.controller = controller

    def stopService(self) -> Any:
        self.controller.stop()
        return super().stopService()
