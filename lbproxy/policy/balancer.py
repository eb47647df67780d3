"""
The balancer: the policy core every relay engine calls for every connection.

It holds the current config, the L{Pool} derived from it, the active
strategy and the counters.  It does no network I/O; its only side effects
are counters, events, log lines and, for forced removal or timeouts,
L{IRelayedConnection.abort}.  Everything runs on the reactor thread, so a
change is a plain attribute swap that no connection can see half-done.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.model.config import Backend, Config, ProxySettings
from lbproxy.control.events import EventBus, RouteRecorder
from lbproxy.interfaces import IBalancer, IRelayedConnection, IStrategy, IStrategyFactory
from lbproxy.policy.histogram import Histograms
from lbproxy.policy.limits import QUEUE, QUEUE_FULL, QUEUE_TIMEOUT, Rules, Traffic
from lbproxy.policy.plugins import build_strategy
from lbproxy.policy.pool import AccessRecord, Candidate, Pool
from lbproxy.policy.relayed import RelayedElsewhere
from lbproxy.policy.stats import TOTAL_NAMES
from lbproxy.policy.strategies.builtin import RoundRobin

log = Logger()
access_log = Logger(namespace="lbproxy.access")


class Totals:
    """
    Listener-wide counters.
    """

    __slots__ = TOTAL_NAMES

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@implementer(IBalancer)
class Balancer(RelayedElsewhere):
    """
    @ivar config: the L{Config} in force.
    @ivar pool: live state for its backends.
    @ivar strategy: the active L{IStrategy}.
    @ivar events: the L{EventBus} of the admin feed.
    @ivar routes: the L{RouteRecorder} of routing decisions.
    @ivar factories: strategy plugins by name.
    @ivar resolver: the L{lbproxy.health.resolver.Resolver} engines and
        checks ask for the addresses of backends given by host name.
    """

    def __init__(
        self,
        config: Config,
        factories: Mapping[str, IStrategyFactory],
        settings: ProxySettings = ProxySettings(),
        events: EventBus | None = None,
        reactor: Any = None,
        resolver: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if resolver is None:
            from lbproxy.health.resolver import Resolver

            resolver = Resolver(reactor)
        self._reactor = reactor
        self.resolver = resolver
        self.factories = factories
        #: the command line's settings; the service's own override them.
        self.base_settings = settings
        self.settings = config.connection_settings(settings)
        self.events = events if events is not None else EventBus()
        self.routes = RouteRecorder()
        self.totals = Totals()
        self.histograms = Histograms()
        self.strategy: IStrategy = build_strategy(config.strategy, factories)
        self._fallback = RoundRobin()
        self.config = config
        self.pool = Pool(config, reactor.seconds())
        self.connections: dict[str, set[IRelayedConnection]] = {
            b.id: set() for b in config.backends
        }
        #: backends removed from the config that still have connections.
        self.removing: dict[str, Backend] = {}
        self._drain_timers: dict[str, Any] = {}
        self._ejection_timers: dict[str, Any] = {}
        self._ticker: LoopingCall | None = None
        self._followers: list[Callable[[str, tuple], None]] = []
        #: When the idle sweep last logged, and what it closed since (see L{sweep_idle}).
        self._idle_logged_at: float | None = None
        self._idle_unlogged = 0
        #: called once no connection is left, after L{retire}.
        self._retired: Callable[[], None] | None = None
        #: Traffic control (L{lbproxy.policy.limits}): always kept for its
        #: counters; C{traffic} is it only while the config has rules, so a
        #: service without any pays one C{is None} per connection.
        self.traffic_state = Traffic(config, reactor, self._queue_expired)
        self.traffic: Traffic | None = self.traffic_state if Rules.needed(config) else None
        #: backend id -> connects under way to it, counted against its
        #: max_connections (only for backends that have one).
        self.reserved: dict[str, int] = {}
        #: the L{lbproxy.policy.limits.ProcessLimit} shared by every
        #: service of the process (the command line's --max-connections).
        self.process: Any = None

    # Lifecycle -----------------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        """
        Start the periodic housekeeping: idle timeouts and slow-start
        weights.
        """
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = self._reactor
        self._ticker.start(interval, now=False)

    def stop(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        for timer in (*self._drain_timers.values(), *self._ejection_timers.values()):
            if timer.active():
                timer.cancel()
        self._drain_timers.clear()
        self._ejection_timers.clear()

    def tick(self) -> None:
        now = self._reactor.seconds()
        self.sweep_idle(now)
        if self.pool.ramping():
            self.pool.refresh(now)
        self.traffic_state.refusals.flush(now)

    def sweep_idle(self, now: float) -> None:
        """
        Close connections where neither side sent a byte for the idle
        timeout.  Checking counters once a tick costs nothing per chunk; a
        connection is closed within one tick after its timeout.

        Quiet long-lived connections (Redis pub/sub, C{monitor}, database
        pools) are cut by this and the operator should hear why, but not
        once per connection: the first close is logged at once, naming
        C{--idle-timeout}, and later ones at most once a minute as a count.
        """
        timeout = self.settings.idle_timeout
        if not timeout:
            return
        closed = 0
        for group in tuple(self.connections.values()):
            for conn in tuple(group):
                if conn.idle_mark < 0:
                    continue
                moved = conn.bytes_up + conn.bytes_down
                if moved != conn.idle_mark:
                    conn.idle_mark = moved
                    conn.idle_since = now
                elif now - conn.idle_since >= timeout:
                    self.totals.idle_timeouts += 1
                    conn.idle_mark = -1
                    conn.close("idle-timeout")
                    closed += 1
        self._idle_unlogged += closed
        last = self._idle_logged_at
        if not self._idle_unlogged or (last is not None and now - last < 60):
            return
        if last is None:
            log.info(
                "closed {count} connection(s) where no byte moved for {timeout:g}s; quiet "
                "long-lived connections (Redis pub/sub, monitor, database pools) need a longer "
                "--idle-timeout (0: never).  Further idle closes are logged once a minute.",
                count=self._idle_unlogged, timeout=timeout,
            )
        else:
            log.info(
                "closed {count} more idle connection(s) ({timeout:g}s without a byte, "
                "--idle-timeout) in the last {minutes:.0f} minute(s)",
                count=self._idle_unlogged, timeout=timeout, minutes=(now - last) // 60,
            )
        self._idle_logged_at = now
        self._idle_unlogged = 0

    # The connection path (IBalancer) -------------------------------------

    def admit(self) -> bool:
        totals = self.totals
        if totals.active >= self.settings.max_connections:
            totals.rejected += 1
            return False
        process = self.process
        if process is not None:
            if process.active >= process.limit:
                totals.rejected += 1
                return False
            process.active += 1
        totals.active += 1
        totals.accepted += 1
        return True

    def route(self, client: tuple[str, int], exclude: frozenset[str] | tuple = ()) -> Candidate | None:
        candidates = self.pool.candidates
        if exclude:
            candidates = tuple(c for c in candidates if c.id not in exclude)
        full = False
        while candidates:
            try:
                choice = self.strategy.choose(candidates, client)
                if choice not in candidates:
                    raise ValueError(f"returned {choice!r}, which is not a candidate")
            except Exception as e:
                self.totals.strategy_errors += 1
                log.error(
                    "strategy {strategy!r} failed ({error}); using round-robin for this connection",
                    strategy=self.config.strategy.name, error=e,
                )
                choice = self._fallback.choose(candidates, client)
            limit = choice.backend.max_connections
            if limit is not None:
                reserved = self.reserved
                busy = reserved.get(choice.id, 0)
                if choice.stats.active + busy >= limit:
                    full = True
                    candidates = tuple(c for c in candidates if c is not choice)
                    continue
                reserved[choice.id] = busy + 1
            self.routes.record(self._reactor.seconds(), client[0], choice.id)
            return choice
        if full and self.traffic is not None and self.traffic.rules.max_queue:
            return QUEUE
        self.totals.no_backend += 1
        return None

    def retried(self) -> None:
        self.totals.retries += 1

    def connection_opened(self, candidate: Candidate, connection: IRelayedConnection, latency: float) -> None:
        if self.reserved:
            self._unreserve(candidate.id)
        stats = candidate.stats
        stats.active += 1
        stats.total += 1
        stats.observe_connect(latency)
        self.histograms.connect.observe(candidate.id, latency)
        connection.idle_mark = 0
        connection.idle_since = self._reactor.seconds()
        group = self.connections.get(candidate.id)
        if group is None:
            group = self.connections[candidate.id] = set()
        group.add(connection)

    def connect_failed(self, candidate: Candidate, reason: str) -> None:
        candidate.stats.failures += 1
        self.totals.connect_failures += 1
        self._traffic_failed(candidate.id, f"connect failed: {reason}")
        if self.reserved and self._unreserve(candidate.id):
            self._serve_queue()

    def connect_abandoned(self, candidate: Candidate) -> None:
        """
        The client left while its connect to C{candidate} was under way:
        the connect no longer counts against the backend's max_connections.
        """
        if self.reserved and self._unreserve(candidate.id):
            self._serve_queue()

    def _unreserve(self, backend_id: str) -> bool:
        reserved = self.reserved
        n = reserved.get(backend_id)
        if not n:
            return False
        if n == 1:
            del reserved[backend_id]
        else:
            reserved[backend_id] = n - 1
        return True

    # The queue at maxconn (L{lbproxy.policy.limits.WaitQueue}) -------------

    def enqueue(self, session: Any) -> bool:
        """
        Every eligible backend is at its max_connections: C{session} waits
        for one, unless the queue is full (counted, C{queue-full}).
        """
        traffic = self.traffic
        queue = traffic.queue
        if len(queue) >= traffic.rules.max_queue:
            traffic.refuse(QUEUE_FULL, session.client[0])
            return False
        queue.push(session, traffic.rules.queue_timeout)
        return True

    def _serve_queue(self) -> None:
        """
        Hand the waiting sessions, oldest first, the backends that have
        room now; stop at the first that must still wait.
        """
        queue = self.traffic_state.queue
        while queue.waiting:
            session = queue.pop()
            if session is None:
                return
            candidate = self.route(session.client, session.tried)
            if candidate is QUEUE:
                queue.push_front(session, queue.last_since)
                return
            session.resume(candidate)

    def _queue_expired(self, session: Any) -> None:
        self.traffic_state.refuse(QUEUE_TIMEOUT, session.client[0])
        session.queue_timed_out()

    def connection_reset(self, candidate: Candidate, reason: str) -> None:
        """
        The backend reset a relayed connection (not lbproxy, not the
        client): a failure for passive health, like a failed connect.
        """
        candidate.stats.failures += 1
        self._traffic_failed(candidate.id, f"connection reset: {reason}")

    def _traffic_failed(self, backend_id: str, reason: str) -> None:
        now = self._reactor.seconds()
        until = self.pool.traffic_result(backend_id, False, reason, now)
        if until is not None:
            state = self.pool.health[backend_id]
            self._backend_event(backend_id, "down", state.reason, ejected_until=until)
            old = self._ejection_timers.pop(backend_id, None)
            if old is not None and old.active():
                old.cancel()
            self._ejection_timers[backend_id] = self._reactor.callLater(
                until - now, self._end_ejections, backend_id
            )

    def observe_response(self, candidate: Candidate, seconds: float) -> None:
        candidate.stats.observe_response(seconds)

    def connection_closed(self, candidate: Candidate, connection: IRelayedConnection, record: AccessRecord) -> None:
        stats = candidate.stats
        stats.active -= 1
        stats.bytes_up += record.bytes_up
        stats.bytes_down += record.bytes_down
        if record.outcome == "ok":
            stats.consecutive_failures = 0
        group = self.connections.get(candidate.id)
        if group is not None:
            group.discard(connection)
        self._finish(record)
        if self.traffic_state.queue.waiting:
            self._serve_queue()
        bid = candidate.id
        if group is not None and not group:
            if bid in self.removing:
                self._removed(bid, "drained")
            else:
                backend = self.config.backend(bid)
                if backend is not None and backend.state == "draining":
                    self._backend_event(bid, "drained", "drained: no connections left")

    def client_failed(self, record: AccessRecord) -> None:
        self._finish(record)

    #: The list of L{lbproxy.accesslog.AccessLog}, when one writes the
    #: access log: C{_finish} only appends C{(time, *record)} to it.
    access_records: list | None = None

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

    def _finish(self, record: AccessRecord) -> None:
        totals = self.totals
        totals.active -= 1
        process = self.process
        if process is not None:
            process.active -= 1
        totals.bytes_up += record.bytes_up
        totals.bytes_down += record.bytes_down
        if record.backend is not None:
            self.histograms.duration.observe(record.backend, record.duration)
        pending = self.access_records
        if pending is not None:
            # Primitives only (lbproxy.accesslog.FIELDS): the record is freed now.
            pending.append((self._reactor.seconds(), *record))
        elif self.settings.access_log:
            access_log.info(
                "{client} -> {backend} up={bytes_up} down={bytes_down} "
                "duration={duration:.3f}s outcome={outcome}",
                client=record.client, backend=record.backend or "-",
                bytes_up=record.bytes_up, bytes_down=record.bytes_down,
                duration=record.duration, outcome=record.outcome,
            )
        if self._retired is not None:
            self._check_retired()

    # Views ---------------------------------------------------------------

    def bytes_of(self, backend_id: str) -> tuple[int, int]:
        """
        Bytes up and down for a backend, including connections in flight.
        """
        stats = self.pool.stats.get(backend_id)
        up, down = (stats.bytes_up, stats.bytes_down) if stats else (0, 0)
        for conn in self.connections.get(backend_id, ()):
            up += conn.bytes_up
            down += conn.bytes_down
        return up, down

    def backend_view(self, backend: Backend) -> dict[str, Any]:
        """
        One backend as the API and UI show it: config, state, health,
        counters.
        """
        now = self._reactor.seconds()
        stats = self.pool.stats.get(backend.id)
        health = self.pool.health.get(backend.id)
        up, down = self.bytes_of(backend.id)
        view = backend.to_json()
        view["address"] = backend.address
        if backend.id in self.removing:
            view["state"] = "removing"
        elif health is not None:
            view["state"] = self.pool.state_of(backend, now)
        view["admin_state"] = backend.state
        view["health"] = health.to_json(now) if health else None
        note = self.resolver.note(backend.host)
        if note and view["health"] is not None:
            view["health"]["dns"] = note
        view["effective_weight"] = (
            self.pool.effective_weight(backend, now) if health else 0
        )
        counters = stats.to_json() if stats else {}
        counters["bytes_up"], counters["bytes_down"] = up, down
        view["stats"] = counters
        return view

    def backends_view(self) -> list[dict[str, Any]]:
        return [self.backend_view(b) for b in self.config.backends] + [
            self.backend_view(b) for b in self.removing.values()
        ]

    # Config changes --------------------------------------------------------

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
