"""
The runtime pool: live counters, health state and the routing candidates.

Everything here is policy without I/O.  The config (what the operator asked
for) is an immutable L{lbproxy.model.config.Config}; this module adds what only
the running process knows (health, ejections, slow start, counters) and
derives from both one immutable tuple of L{Candidate}s that strategies
choose from.  That tuple is rebuilt and swapped whole whenever an input
changes, so a routing decision never sees half of a change.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from lbproxy.model.config import Backend, Config

#: Share of full weight that a backend in slow start begins with.
SLOW_START_FLOOR = 0.1
EWMA_ALPHA = 0.3


class BackendStats:
    """
    Live counters of one backend.  C{bytes_up} is client to backend,
    C{bytes_down} backend to client, counted for finished connections (the
    balancer adds those in flight).  They are kept by backend id outside any
    strategy or snapshot, so switching strategy or editing the pool never
    resets them.
    """

    __slots__ = (
        "active",
        "total",
        "failures",
        "consecutive_failures",
        "bytes_up",
        "bytes_down",
        "connect_ewma",
        "response_ewma",
    )

    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.connect_ewma: float | None = None
        self.response_ewma: float | None = None

    def observe_connect(self, seconds: float) -> None:
        e = self.connect_ewma
        self.connect_ewma = seconds if e is None else e + EWMA_ALPHA * (seconds - e)

    def observe_response(self, seconds: float) -> None:
        e = self.response_ewma
        self.response_ewma = seconds if e is None else e + EWMA_ALPHA * (seconds - e)

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


class Candidate:
    """
    A backend a strategy may pick, with its effective weight and counters.
    """

    __slots__ = ("backend", "id", "host", "port", "weight", "stats")

    def __init__(self, backend: Backend, weight: float, stats: BackendStats) -> None:
        self.backend = backend
        self.id = backend.id
        self.host = backend.host
        self.port = backend.port
        self.weight = weight
        self.stats = stats

    def __repr__(self) -> str:
        return f"<Candidate {self.id} {self.backend.address} w={self.weight:g}>"


class AccessRecord(NamedTuple):
    """
    One finished client connection, for the access log.  A named tuple:
    one is built per connection, at half a frozen dataclass's cost.
    """

    client: str
    backend: str | None
    bytes_up: int
    bytes_down: int
    duration: float
    outcome: str
    #: A TLS client's verified certificate subject (mTLS), else C{None}.
    subject: str | None = None


class HealthState:
    """
    What this process knows of one backend's health.
    """

    __slots__ = (
        "healthy",
        "reason",
        "since",
        "successes",
        "failures",
        "ejected_until",
        "ejections",
        "ejection_ended",
        "ramp_start",
        "proven",
        "last_check",
    )

    def __init__(self, now: float, healthy: bool = True, reason: str = "new backend") -> None:
        self.healthy = healthy
        self.reason = reason
        self.since = now
        self.successes = 0
        self.failures = 0
        self.ejected_until: float | None = None
        self.ejections = 0
        self.ejection_ended: float | None = None
        self.ramp_start: float | None = None
        self.proven = False
        self.last_check: str | None = None

    def ejected(self, now: float) -> bool:
        return self.ejected_until is not None and self.ejected_until > now

    def available(self, now: float) -> bool:
        """
        Whether health lets the backend take traffic: its checks pass and it
        is not ejected.
        """
        return self.healthy and not self.ejected(now)

    def to_json(self, now: float) -> dict[str, object]:
        return {
            "healthy": self.healthy,
            "reason": self.reason,
            "since": self.since,
            "ejected": self.ejected(now),
            "ejected_until": self.ejected_until,
            "ejections": self.ejections,
            "last_check": self.last_check,
        }


class Pool:
    """
    Live state for the backends of the current config.

    @ivar candidates: the immutable tuple strategies choose from.
    @ivar stats: backend id -> L{BackendStats}.
    @ivar health: backend id -> L{HealthState}.
    """

    def __init__(self, config: Config, now: float) -> None:
        """
        Backends of the first config do not slow start: as in HAProxy, a
        ramp at process start would only throttle servers already running.
        """
        self.config = config
        self.stats: dict[str, BackendStats] = {}
        self.health: dict[str, HealthState] = {
            b.id: HealthState(now) for b in config.backends
        }
        self.candidates: tuple[Candidate, ...] = ()
        self.update(config, now)

    def update(self, config: Config, now: float) -> None:
        """
        Adopt a new config.  Counters of backends that stay are kept; new
        backends start healthy (an active check may mark them down) and in
        slow start.  A backend whose health check was taken away is healthy
        again, since nothing could ever bring it back up otherwise; one that
        an operator brings back from C{draining} or C{disabled} starts a new
        slow start.
        """
        old = self.config
        self.config = config
        for b in config.backends:
            self.stats.setdefault(b.id, BackendStats())
            state = self.health.get(b.id)
            if state is None:
                state = HealthState(now)
                if config.slow_start:
                    state.ramp_start = now
                self.health[b.id] = state
                continue
            if config.check_for(b) is None:
                state.successes = state.failures = 0
                state.proven = False
                state.last_check = None
                if not state.healthy:
                    state.healthy = True
                    state.reason = "health check removed"
                    state.since = now
                    if config.slow_start:
                        state.ramp_start = now
            before = old.backend(b.id)
            if before is not None and before.state != "up" and b.state == "up" and config.slow_start:
                state.ramp_start = now
        live = {b.id for b in config.backends}
        for bid in list(self.health):
            if bid not in live:
                del self.health[bid]
        self.refresh(now)

    def forget(self, backend_ids: Iterable[str]) -> None:
        """
        Drop the counters of backends that are gone for good.
        """
        for bid in backend_ids:
            self.stats.pop(bid, None)

    def effective_weight(self, backend: Backend, now: float) -> float:
        """
        The weight strategies see: the configured one, ramped from
        L{SLOW_START_FLOOR} of it to all of it over the slow-start window
        after the backend came (back) into service.
        """
        state = self.health[backend.id]
        window = self.config.slow_start
        if state.ramp_start is None:
            return float(backend.weight)
        share = (now - state.ramp_start) / window if window else 1.0
        if share >= 1.0:
            state.ramp_start = None
            return float(backend.weight)
        return backend.weight * max(SLOW_START_FLOOR, share)

    def state_of(self, backend: Backend, now: float) -> str:
        """
        The state an operator sees: C{draining} and C{disabled} as set; else
        C{down} when a check or ejection took the backend out; else C{up}.
        """
        if backend.state != "up":
            return backend.state
        return "up" if self.health[backend.id].available(now) else "down"

    def refresh(self, now: float) -> None:
        """
        Rebuild C{candidates} from the config, health, ejections and slow
        start, and swap it in.
        """
        out = []
        for b in self.config.backends:
            if b.weight <= 0 or self.state_of(b, now) != "up":
                continue
            out.append(Candidate(b, self.effective_weight(b, now), self.stats[b.id]))
        self.candidates = tuple(out)

    def ramping(self) -> bool:
        """
        Whether some backend is still in slow start, so weights need
        refreshing as time passes.
        """
        return any(h.ramp_start is not None for h in self.health.values())

    # Health policy ---------------------------------------------------------

    def check_result(self, backend_id: str, ok: bool, reason: str, now: float) -> str | None:
        """
        Record one active check result, HAProxy style: C{rise} successes in a
        row bring a down backend up, C{fall} failures bring an up one down.
        As in HAProxy, a backend that has never passed a check goes down at
        its first failure, so a dead new backend is not tried C{fall} times.

        @return: C{"up"} or C{"down"} if the backend's health changed, else
            C{None}.
        """
        backend = self.config.backend(backend_id)
        state = self.health.get(backend_id)
        if backend is None or state is None:
            return None
        check = self.config.check_for(backend)
        rise, fall = (check.rise, check.fall) if check else (1, 1)
        state.last_check = reason
        if ok:
            state.proven = True
            state.failures = 0
            state.successes += 1
            if not state.healthy and state.successes >= rise:
                state.healthy = True
                state.reason = reason
                state.since = now
                if self.config.slow_start:
                    state.ramp_start = now
                self.refresh(now)
                return "up"
        else:
            state.successes = 0
            state.failures += 1
            if state.healthy and (state.failures >= fall or not state.proven):
                state.healthy = False
                state.reason = reason
                state.since = now
                state.ramp_start = None
                self.refresh(now)
                return "down"
        return None

    def traffic_result(self, backend_id: str, ok: bool, reason: str, now: float) -> float | None:
        """
        Record the outcome of a connection from real traffic (passive
        check): a failed connect or a reset is a failure, a connection that
        ended cleanly a success.  After the configured run of failures the
        backend is ejected, for C{base_ejection} times the number of its
        ejections (at most C{max_ejection}), unless that would take more
        than C{max_ejection_percent} of the pool out of service: backends
        already down by their checks count toward that share, so passive
        ejection never finishes off a pool that checks have thinned.  A backend that stayed in the
        pool for C{max_ejection} seconds since its last ejection is forgiven:
        its next ejection is short again.  One already down by its checks is
        not ejected.

        @return: the ejection's end time if the backend was ejected now.
        """
        stats = self.stats.get(backend_id)
        state = self.health.get(backend_id)
        if stats is None or state is None:
            return None
        if ok:
            stats.consecutive_failures = 0
            return None
        stats.consecutive_failures += 1
        policy = self.config.outlier
        if policy is None or stats.consecutive_failures < policy.consecutive_failures:
            return None
        if state.ejected(now) or not state.healthy:
            return None
        total = len(self.config.backends)
        out = sum(1 for h in self.health.values() if not h.available(now))
        if total == 0 or (out + 1) * 100 > policy.max_ejection_percent * total:
            return None
        if state.ejection_ended is not None and now - state.ejection_ended >= policy.max_ejection:
            state.ejections = 0
        state.ejections += 1
        period = min(policy.base_ejection * state.ejections, policy.max_ejection)
        state.ejected_until = now + period
        state.reason = f"ejected after {stats.consecutive_failures} consecutive failures: {reason}"
        state.since = now
        stats.consecutive_failures = 0
        self.refresh(now)
        return state.ejected_until

    def end_ejections(self, now: float, backend_ids: Iterable[str] | None = None) -> list[str]:
        """
        Return ejected backends whose period is over to the pool.

        @param backend_ids: end these backends' ejections whatever the time:
            their own timer fired, so a rounding error cannot keep one out.
        @return: their ids.
        """
        back = []
        for bid, h in self.health.items():
            if h.ejected_until is None:
                continue
            if h.ejected_until <= now or (backend_ids is not None and bid in backend_ids):
                h.ejected_until = None
                h.ejection_ended = now
                h.since = now
                if h.healthy:
                    h.reason = "ejection period over"
                    if self.config.slow_start:
                        h.ramp_start = now
                else:
                    h.reason = f"ejection period over; still failing checks: {h.last_check}"
                back.append(bid)
        if back:
            self.refresh(now)
        return back
