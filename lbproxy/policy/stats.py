"""
Rates over a sliding window, from the balancer's counters.

The proxy only bumps counters; once a second L{StatsSampler} copies them
into a bounded ring, and rates are the difference between the newest and
the oldest sample in the window divided by the time between them.  Nothing
here runs per connection, and a read of the stats does no more than that
subtraction.

It also keeps the last L{HISTORY} seconds of per-second connection rates
(one small point per sample, so bounded), for a chart that starts full
instead of empty after a reload.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

from twisted.internet.task import LoopingCall


class Counter(NamedTuple):
    """
    One counter of the balancer, as every view of it names it.
    """

    #: the attribute on L{Totals} or L{lbproxy.policy.pool.BackendStats}.
    name: str
    #: the Prometheus metric (C{lbproxy.web.metrics}), or C{None} where it is not a counter there.
    metric: str | None
    #: the metric's help text.
    help: str
    #: whether the stats view gives it a C{NAME_per_second} rate.
    rate: bool


#: The listener's counters, in the order of L{Totals}.
#: The one list: Totals, the stats view, the metrics and the workers' sums use it.
TOTALS = (
    Counter("accepted", "lbproxy_connections_accepted", "Client connections accepted.", True),
    Counter("active", None, "Client connections open now.", False),
    Counter("rejected", "lbproxy_connections_rejected", "Client connections refused by --max-connections.", True),
    Counter("no_backend", "lbproxy_no_backend", "Client connections closed because no backend was available.", True),
    Counter("connect_failures", "lbproxy_connect_failures", "Failed connects to backends.", True),
    Counter("retries", "lbproxy_retries", "Connects retried on another backend.", False),
    Counter("strategy_errors", "lbproxy_strategy_errors", "Strategy failures (round-robin used instead).", False),
    Counter("idle_timeouts", "lbproxy_idle_timeouts", "Connections closed for being idle.", False),
    Counter("bytes_up", "lbproxy_bytes_up", "Bytes from clients to backends, finished connections.", True),
    Counter("bytes_down", "lbproxy_bytes_down", "Bytes from backends to clients, finished connections.", True),
)
#: Per-backend counters that are sampled (and summed over workers).
BACKEND_COUNTERS = (
    Counter("active", None, "Connections open to the backend now.", False),
    Counter("total", "lbproxy_backend_connections", "Connections to the backend.", True),
    Counter("failures", "lbproxy_backend_connect_failures", "Failed connects to the backend.", True),
    Counter("bytes_up", "lbproxy_backend_bytes_up", "Bytes from clients to the backend.", True),
    Counter("bytes_down", "lbproxy_backend_bytes_down", "Bytes from the backend to clients.", True),
)
TOTAL_NAMES = tuple(c.name for c in TOTALS)
BACKEND_NAMES = tuple(c.name for c in BACKEND_COUNTERS)


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


_TOTAL_RATES = tuple(c.name for c in TOTALS if c.rate)
_BACKEND_RATES = tuple(c.name for c in BACKEND_COUNTERS if c.rate)
#: Seconds of per-second connection rates L{StatsSampler.history} keeps.
HISTORY = 300.0


class _Sample:
    __slots__ = ("time", "totals", "backends")

    def __init__(self, time: float, totals: dict[str, int], backends: dict[str, dict[str, Any]]) -> None:
        self.time = time
        self.totals = totals
        self.backends = backends


def _rate(new: int, old: int, seconds: float) -> float:
    # A counter can restart when a backend id is removed and added again.
    return max(0, new - old) / seconds if seconds > 0 else 0.0


class StatsSampler:
    """
    Samples a balancer's counters every C{interval} seconds and keeps
    C{window} seconds of samples.

    @ivar window: the length of the sliding window in seconds.
    @ivar keep: seconds of rates L{history} keeps.
    """

    def __init__(self, balancer: Any, clock: Any = None, window: float = 10.0, interval: float = 1.0,
                 keep: float = HISTORY) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.balancer = balancer
        self.clock = clock
        self.window = window
        self.interval = interval
        self._samples: deque[_Sample] = deque(maxlen=int(window / interval) + 1)
        self.keep = keep
        #: (time, accepted per second, {backend id: connections per second})
        self._history: deque[tuple[float, float, dict[str, float]]] = deque(maxlen=int(keep / interval) + 1)
        self._loop: LoopingCall | None = None
        #: called with no arguments after each sample (L{ServiceStats}).
        self.followers: list[Any] = []

    def start(self) -> None:
        """
        Take a sample now and then every C{interval} seconds.
        """
        self._loop = LoopingCall(self.sample)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sample(self) -> None:
        """
        Copy the counters as they are now into the ring.
        """
        b = self.balancer
        totals = b.totals.to_json()
        backends: dict[str, dict[str, Any]] = {}
        for bid, stats in b.pool.stats.items():
            view = {name: getattr(stats, name) for name in BACKEND_NAMES}
            view["bytes_up"], view["bytes_down"] = b.bytes_of(bid)
            view["connect_ewma"] = stats.connect_ewma
            view["response_ewma"] = stats.response_ewma
            backends[bid] = view
        new = _Sample(self.clock.seconds(), totals, backends)
        if self._samples:
            self._remember(self._samples[-1], new)
        self._samples.append(new)
        for follower in self.followers:
            follower()

    def _remember(self, old: _Sample, new: _Sample) -> None:
        seconds = new.time - old.time
        rates = {bid: round(_rate(c["total"], old.backends[bid]["total"], seconds), 3)
                 for bid, c in new.backends.items() if bid in old.backends}
        accepted = round(_rate(new.totals["accepted"], old.totals["accepted"], seconds), 3)
        self._history.append((new.time, accepted, rates))

    def history(self) -> dict[str, Any]:
        """
        The per-second rates of the last L{keep} seconds, oldest first.

        @return: C{{"time": now, "interval", "keep", "points": [{"time",
            "accepted", "backends": {id: connections per second}}]}}.
        """
        return {
            "time": self.clock.seconds(),
            "interval": self.interval,
            "keep": self.keep,
            "points": [{"time": t, "accepted": a, "backends": dict(b)} for t, a, b in self._history],
        }

    def snapshot(self) -> dict[str, Any]:
        """
        Counters of the newest sample and rates over the window.

        @return: C{{"time", "window", "totals": {...}, "backends": {id:
            {...}}}}; each counter C{name} in C{totals}/C{backends} has a
            C{name_per_second} rate next to it (C{total_per_second} is
            connections per second for a backend, C{accepted_per_second} for
            the listener).
        """
        if not self._samples:
            self.sample()
        newest = self._samples[-1]
        oldest = self._samples[0]
        seconds = newest.time - oldest.time
        totals: dict[str, Any] = dict(newest.totals)
        for name in _TOTAL_RATES:
            totals[f"{name}_per_second"] = _rate(newest.totals[name], oldest.totals[name], seconds)
        backends: dict[str, Any] = {}
        for bid, counters in newest.backends.items():
            view = dict(counters)
            old = self._first_sample_of(bid)
            span = newest.time - old.time
            for name in _BACKEND_RATES:
                view[f"{name}_per_second"] = _rate(counters[name], old.backends[bid][name], span)
            backends[bid] = view
        return {"time": newest.time, "window": seconds, "totals": totals, "backends": backends}

    def _first_sample_of(self, backend_id: str) -> _Sample:
        for s in self._samples:
            if backend_id in s.backends:
                return s
        return self._samples[-1]


class ServiceStats:
    """
    One L{StatsSampler} per service of a L{lbproxy.policy.services.ServiceTable}:
    the main service's is the one given (the top-level C{/api/v1/stats}),
    the others' are made as services appear and forgotten as they go.

    It has no timer of its own: the main sampler calls L{sample} after each
    of its samples (C{followers}), so every service is sampled in the same
    tick, and a service added at runtime is sampled from the next one.
    """

    def __init__(self, table: Any, main: StatsSampler) -> None:
        self.table = table
        self.main = main
        self._samplers: dict[str, StatsSampler] = {}
        main.followers.append(self.sample)

    def sample(self) -> None:
        """
        Follow the table (new services get a sampler, removed ones lose
        theirs) and sample every service but the main one.
        """
        balancers = self.table.balancers
        for name in [n for n in self._samplers if balancers.get(n) is not self._samplers[n].balancer]:
            del self._samplers[name]
        for name, balancer in balancers.items():
            if balancer is self.main.balancer:
                continue
            sampler = self._samplers.get(name)
            if sampler is None:
                sampler = self._samplers[name] = StatsSampler(
                    balancer, self.main.clock, self.main.window, self.main.interval, self.main.keep)
            sampler.sample()

    def of(self, name: str) -> StatsSampler | None:
        """
        The sampler of service C{name}, or C{None} if there is no such service.
        """
        balancer = self.table.balancers.get(name)
        if balancer is None:
            return None
        if balancer is self.main.balancer:
            return self.main
        sampler = self._samplers.get(name)
        if sampler is None or sampler.balancer is not balancer:
            sampler = self._samplers[name] = StatsSampler(
                balancer, self.main.clock, self.main.window, self.main.interval, self.main.keep)
        return sampler
