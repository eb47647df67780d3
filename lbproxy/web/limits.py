"""
Limits that keep the admin API from costing the relay its throughput: a
token bucket for changes, and a short-lived cache of the backends view.

The admin shares the reactor thread with the relay, so every config change
(validate, store, apply, publish to the feed) and every read that walks all
connections takes time from relaying.  Changes are therefore rate-limited
(C{429} with C{Retry-After} past the limit) and the per-backend view, whose
byte counters sum every open connection, is built at most once per
L{VIEW_MAX_AGE} unless the config or a backend's state changed.
"""

from __future__ import annotations

import math
from typing import Any

#: Seconds the backends view may be reused while nothing but counters changed.
VIEW_MAX_AGE = 1.0


class TokenBucket:
    """
    At most C{rate} events a second on average, with bursts of C{burst}.

    @ivar rate: tokens added per second; C{0} means no limit.
    @ivar burst: the most tokens the bucket holds.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.rate = rate
        self.burst = burst if burst is not None else 2 * rate
        self.clock = clock
        self._tokens = self.burst
        self._at = clock.seconds()

    def take(self) -> float:
        """
        Take one token.

        @return: C{0} if one was taken, else the seconds until one will be
            there (nothing is taken then).
        """
        if self.rate <= 0:
            return 0.0
        now = self.clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


def retry_after(seconds: float) -> str:
    """
    A C{Retry-After} value (whole seconds, at least 1) for a wait.
    """
    return str(max(1, math.ceil(seconds)))


class ViewCache:
    """
    The balancer's backends view, rebuilt when the config version or the
    event feed moved on (a change, a health or state transition) or when it
    is older than C{max_age}; counters in it are then at most that old, like
    those of C{/api/v1/stats}.
    """

    def __init__(self, balancer: Any, clock: Any, max_age: float = VIEW_MAX_AGE) -> None:
        self.balancer = balancer
        self.clock = clock
        self.max_age = max_age
        self._key: tuple[int, int] | None = None
        self._at = 0.0
        self._views: list[dict[str, Any]] = []
        self.builds = 0

    def views(self) -> list[dict[str, Any]]:
        """
        Every backend's view (do not change the dicts: they are shared).
        """
        b = self.balancer
        key = (b.config.version, b.events.last_id)
        now = self.clock.seconds()
        if key != self._key or not 0 <= now - self._at < self.max_age:
            self._views = b.backends_view()
            self._key, self._at = key, now
            self.builds += 1
        return self._views

    def view(self, backend_id: str) -> dict[str, Any] | None:
        """
        A copy of one backend's view, or C{None}.
        """
        for v in self.views():
            if v["id"] == backend_id:
                return dict(v)
        return None
