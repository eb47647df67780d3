"""
The balancer: the policy core every relay engine calls for every connection.

It holds the current config, the L{Pool} derived from it, the active
strategy and the counters.  It does no network I/O; its only side effects
are counters, events, log lines and, for forced removal or timeouts,
L{IRelayedConnection.abort}.  Everything runs on the reactor thread, so a
change is a plain attribute swap that no connection can see half-done.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.model.config import Backend, Config, ProxySettings
from lbproxy.control.events import EventBus, RouteRecorder
from lbproxy.interfaces import IBalancer, IRelayedConnection, IStrategy, IStrategyFactory
from lbproxy.policy.balancer_changes import BalancerChanges
from lbproxy.policy.balancer_views import BalancerViews
from lbproxy.policy.histogram import Histograms
from lbproxy.policy.limits import QUEUE, QUEUE_FULL, QUEUE_TIMEOUT, Rules, Traffic
from lbproxy.policy.plugins import build_strategy
from lbproxy.policy.pool import EWMA_ALPHA, AccessRecord, Candidate, Pool
from lbproxy.policy.relayed import RelayedElsewhere
from lbproxy.policy.stats import Totals
from lbproxy.policy.strategies.builtin import RoundRobin

log = Logger()
access_log = Logger(namespace="lbproxy.access")


@implementer(IBalancer)
class Balancer(BalancerChanges, BalancerViews, RelayedElsewhere):
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
            # TLS clients still in their handshake hold sockets too.
            if process.active + process.handshaking >= process.limit:
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
        # BackendStats.observe_connect, inline (once per connection).
        e = stats.connect_ewma
        stats.connect_ewma = latency if e is None else e + EWMA_ALPHA * (latency - e)
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
        # BackendStats.observe_response, inline (once per connection).
        stats = candidate.stats
        e = stats.response_ewma
        stats.response_ewma = seconds if e is None else e + EWMA_ALPHA * (seconds - e)

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

    #: The list of L{lbproxy.accesslog.log.AccessLog}, when one writes the
    #: access log: C{_finish} only appends C{(time, *record)} to it.
    access_records: list | None = None

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
            # Primitives only (lbproxy.accesslog.log.FIELDS): the record is freed now.
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
