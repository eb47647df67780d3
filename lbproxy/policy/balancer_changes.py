"""
How a balancer takes what changes its pool besides connections: a new
config (backends added, removed and drained, a new strategy or traffic
rules), active health results, passive ejections, forced closes and its
events on the admin feed.  L{BalancerChanges} is a part of
L{lbproxy.policy.balancer.Balancer} (which supplies C{config}, C{pool},
C{connections}, C{removing}, the timers and the queue).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from twisted.logger import Logger

from lbproxy.interfaces import IStrategy
from lbproxy.model.config import Config
from lbproxy.policy.limits import Rules
from lbproxy.policy.plugins import build_strategy

# The balancer's namespace: its events are the balancer's to operators.
log = Logger(namespace="lbproxy.policy.balancer")


class BalancerChanges:
    """
    Config changes, health and removal of a L{lbproxy.policy.balancer.Balancer}.
    """

    def check(self, config: Config) -> IStrategy:
        """
        Validate what only the running balancer can: the strategy plugin and
        its options.  Call before making a config durable.

        @raise lbproxy.model.errors.ConfigError: if it cannot be applied.
        """
        return build_strategy(config.strategy, self.factories)

    def apply(self, config: Config, strategy: IStrategy | None = None) -> None:
        """
        Swap in a new config.  Connections in flight keep their backend;
        the next connection routes with the new pool and strategy.  Backends
        that disappear drain: they take no new connections and are removed
        once their last connection ends (or the drain timeout closes it).
        """
        if strategy is None:
            if config.strategy == self.config.strategy:
                strategy = self.strategy
            else:
                strategy = self.check(config)
        old = self.config
        now = self._reactor.seconds()
        old_ids = {b.id for b in old.backends}
        new_ids = {b.id for b in config.backends}
        was_available = {
            bid: h.available(now) for bid, h in self.pool.health.items() if bid in new_ids
        }
        self.config = config
        self.strategy = strategy
        self.settings = config.connection_settings(self.base_settings)
        for bid in new_ids - old_ids:
            self.connections.setdefault(bid, set())
            self.removing.pop(bid, None)
            if self._relays is not None:
                self._settling.pop(bid, None)
        self.pool.update(config, now)
        self._apply_traffic(config)
        for bid, before in was_available.items():
            self._health_changed(bid, before, self.pool.health[bid].reason)
        for bid in old_ids - new_ids:
            backend = old.backend(bid)
            if self.connections.get(bid) or self._relays is not None:
                self.removing[bid] = backend
                if self._relays is not None:
                    self._settling[bid] = config.version
                self._backend_event(bid, "removing", "removed from config; draining")
                self._arm_drain_timer(bid, config.drain_timeout)
            else:
                self._removed(bid, "removed")
        for b in config.backends:
            before = old.backend(b.id)
            if before is not None and before.state != b.state:
                self._backend_event(b.id, b.state, f"set to {b.state} by operator")
                if b.state == "draining":
                    self._arm_drain_timer(b.id, config.drain_timeout)
                    if self._relays is not None:
                        self._settling[b.id] = config.version
                    elif not self.connections.get(b.id):
                        self._backend_event(b.id, "drained", "drained: no connections left")
        # The UI's config event comes from the controller's observers
        # (EventBus.applied), not from here: workers apply without one.
        if self._relays is not None:
            self._settle()
        log.info("config version {version} in force", version=config.version)

    def _apply_traffic(self, config: Config) -> None:
        """
        Swap in the new traffic rules; clients waiting get the room a
        change made (a raised max_connections, a new backend), or are
        closed if the queue is gone.
        """
        state = self.traffic_state
        state.apply(config)
        self.traffic = state
        if state.queue.waiting:
            self._serve_queue()
        if not Rules.needed(config):
            self.traffic = None

    def follow(self, follower: Callable[[str, tuple], None]) -> Callable[[], None]:
        """
        Tell C{follower(kind, args)} of what changes the pool besides the
        config: each active health result, C{("health", (id, ok, reason))},
        and each forced close, C{("close", (id, why))}.  The worker pool
        repeats the health results to its workers (L{lbproxy.control.workers}).

        @return: a callable that stops following.
        """
        self._followers.append(follower)
        return lambda: self._followers.remove(follower) if follower in self._followers else None

    def close_connections(self, backend_id: str, why: str) -> int:
        """
        Close every connection to a backend now.

        @return: how many were closed.
        """
        for follower in self._followers:
            follower("close", (backend_id, why))
        conns = tuple(self.connections.get(backend_id, ()))
        for conn in conns:
            conn.abort(why)
        return len(conns)

    def _arm_drain_timer(self, backend_id: str, timeout: float | None) -> None:
        old = self._drain_timers.pop(backend_id, None)
        if old is not None and old.active():
            old.cancel()
        if timeout:
            self._drain_timers[backend_id] = self._reactor.callLater(
                timeout, self._drain_timeout, backend_id
            )

    def _drain_timeout(self, backend_id: str) -> None:
        self._drain_timers.pop(backend_id, None)
        draining = self._retired is not None or backend_id in self.removing or (
            (b := self.config.backend(backend_id)) is not None and b.state == "draining"
        )
        if draining:
            n = self.close_connections(backend_id, "drain-timeout")
            if n:
                log.info("drain timeout: closed {n} connections to {backend}", n=n, backend=backend_id)

    def _removed(self, backend_id: str, why: str) -> None:
        self.removing.pop(backend_id, None)
        if self._relays is not None:
            self._settling.pop(backend_id, None)
        self.connections.pop(backend_id, None)
        for timers in (self._drain_timers, self._ejection_timers):
            timer = timers.pop(backend_id, None)
            if timer is not None and timer.active():
                timer.cancel()
        self.pool.forget([backend_id])
        self._backend_event(backend_id, "removed", why)

    def _end_ejections(self, backend_id: str) -> None:
        self._ejection_timers.pop(backend_id, None)
        state = self.pool.health.get(backend_id)
        if state is None:
            return
        for bid in self.pool.end_ejections(self._reactor.seconds(), (backend_id,)):
            self._health_changed(bid, False, state.reason)

    def health_result(self, backend_id: str, ok: bool, reason: str) -> None:
        """
        Take one active health check result (see L{lbproxy.policy.pool.Pool.check_result}).
        """
        for follower in self._followers:
            follower("health", (backend_id, ok, reason))
        state = self.pool.health.get(backend_id)
        if state is None:
            return
        before = state.available(self._reactor.seconds())
        if self.pool.check_result(backend_id, ok, reason, self._reactor.seconds()):
            self._health_changed(backend_id, before, reason)

    def _health_changed(self, backend_id: str, before: bool, reason: str) -> None:
        """
        Publish a change of health (C{up} or C{down}) if there was one.  A
        check failing on an ejected backend changes nothing visible, so it
        makes no event; its reason shows when the ejection ends.
        """
        state = self.pool.health.get(backend_id)
        if state is not None and state.available(self._reactor.seconds()) != before:
            self._backend_event(backend_id, "up" if not before else "down", reason)
            if before and self.config.on_marked_down == "shutdown":
                n = self.close_connections(backend_id, "marked-down")
                if n:
                    log.info("backend {backend} marked down: closed {n} connections", backend=backend_id, n=n)

    def _backend_event(self, backend_id: str, state: str, reason: str, **extra: Any) -> None:
        log.info("backend {backend} is {state}: {reason}", backend=backend_id, state=state, reason=reason)
        data = {
            "service": self.config.name, "id": backend_id, "state": state, "reason": reason,
            "time": self._reactor.seconds(),
        }
        data.update(extra)
        self.events.publish("backend", data)

    def retire(self, force: bool, done: Callable[[], None]) -> None:
        """
        The service is removed (its listeners are stopped): admit no one,
        and call C{done} once its last connection ended.  A graceful
        retirement lets connections end by themselves (or the drain
        timeout); a forced one closes them now.
        """
        self._retired = done
        self.settings = replace(self.settings, max_connections=0)
        for session in self.traffic_state.queue.clear():
            if not session.finished:
                session.resume(None)
        for bid in tuple(self.connections):
            if force:
                self.close_connections(bid, "service-removed")
            else:
                self._arm_drain_timer(bid, self.config.drain_timeout)
        self._check_retired()

    def _check_retired(self) -> None:
        if self._retired is not None and self.totals.active <= 0:
            done, self._retired = self._retired, None
            done()
