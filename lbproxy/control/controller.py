"""
The path of a config change: validate, make durable, then apply.

A change is a pure function from the current L{Config} to the next.  Changes
run one at a time (a L{DeferredLock} on the control path, never on the data
path), each against the config in force when its turn comes, so two editors
can never leave the pool in a state neither asked for.  The balancer swaps
the new config in only after the store says it is durable: if the write
fails, nothing changes in memory either.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from lbproxy.control.store.history import Change, IConfigHistory
from lbproxy.policy.balancer import Balancer
from lbproxy.model.config import Config, StoreError, VersionConflict
from lbproxy.interfaces import IConfigObserver, IConfigStore

log = Logger()

Mutation = Callable[[Config], "tuple[Config, Any]"]


class ConfigController:
    """
    @ivar balancer: the L{Balancer} that applies changes.
    @ivar store: the L{IConfigStore} that makes them durable.
    """

    def __init__(self, balancer: Balancer, store: IConfigStore) -> None:
        """
        Watches C{store} from now until L{stop}.
        """
        self.balancer = balancer
        self.store = store
        self._lock = defer.DeferredLock()
        self._observers: list[IConfigObserver] = []
        self._unwatch: Callable[[], None] | None = store.watch(self._changed_elsewhere)

    def observe(self, observer: IConfigObserver) -> Callable[[], None]:
        """
        Tell C{observer} of every config applied from now on.

        @return: a callable that stops telling it.
        """
        self._observers.append(observer)

        def stop() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return stop

    def _applied(self, old: Config, new: Config) -> None:
        for observer in tuple(self._observers):
            try:
                observer.applied(old, new)
            except Exception:
                log.failure("config observer {observer!r} failed on version {version}", observer=observer, version=new.version)

    @property
    def config(self) -> Config:
        return self.balancer.config

    def change(self, mutate: Mutation, expected_version: int | None = None,
               note: Change | None = None) -> defer.Deferred:
        """
        Apply C{mutate} to the current config, durably.

        @param mutate: C{config -> (new_config, result)}; may raise
            L{lbproxy.model.config.ConfigError} or C{KeyError} to refuse.
        @param expected_version: if given, refuse with L{VersionConflict}
            unless this is still the current version (C{If-Match}).
        @param note: who made the change and what it did, for the store's
            history (L{IConfigHistory}); without it the store computes a
            summary from the diff.
        @return: a Deferred firing with C{(new_config, result)}.
        """
        return self._lock.run(self._change, mutate, expected_version, note)

    @defer.inlineCallbacks
    def _change(self, mutate: Mutation, expected_version: int | None, note: Change | None = None) -> Any:
        current = self.balancer.config
        if expected_version is not None and expected_version != current.version:
            raise VersionConflict(expected_version, current.version)
        new, result = mutate(current)
        if note is not None and callable(note.summary):
            note = note._replace(summary=note.summary(result))
        # A new strategy object only for a new choice: rebuilding it would
        # restart its rotation (and caches) on every unrelated change.
        strategy = self.balancer.check(new) if new.strategy != current.strategy else None
        try:
            if IConfigHistory.providedBy(self.store):
                self.store.describe(new.version, note)
            yield self.store.save(new, current.version)
        except VersionConflict:
            raise
        except StoreError:
            raise
        except Exception as e:
            log.failure("config store failed to save version {version}", version=new.version)
            raise StoreError(f"the config store could not save the change: {e}") from e
        self.balancer.apply(new, strategy)
        self._applied(current, new)
        return (new, result)

    def stop(self) -> None:
        """
        Stop watching the store for changes made by other processes (the
        process is shutting down: L{ControllerService} calls this).
        """
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()

    def install(self, config: Config) -> defer.Deferred:
        """
        Put in force a config loaded from the store at startup (cluster
        mode), telling the observers.  Unlike a watched change it need not
        be newer: what the store holds wins over the command line's seed.

        @return: a Deferred firing with C{config}, or failing (nothing
            changed) if the balancer cannot use it.
        """
        return self._lock.run(self._install, config)

    def _install(self, config: Config) -> Config:
        old = self.balancer.config
        if config != old:
            self.balancer.apply(config)
            self._applied(old, config)
        return config

    def _changed_elsewhere(self, config: Config) -> None:
        self._lock.run(self._adopt, config)

    def _adopt(self, config: Config) -> None:
        if config.version <= self.balancer.config.version:
            return
        try:
            self._install(config)
        except Exception:
            log.failure("cannot apply config version {version} from the store", version=config.version)


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
