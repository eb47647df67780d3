"""
The strategies that ship with lbproxy.

Each class provides L{IStrategy}; each module-level factory object provides
L{IStrategyFactory} and L{IPlugin} and is re-exported by the plugin module.
"""

from __future__ import annotations

import bisect
import hashlib
import random as _random
from typing import Any, Callable, Mapping, Sequence

from twisted.plugin import IPlugin
from zope.interface import implementer

from lbproxy.interfaces import IStrategy, IStrategyFactory
from lbproxy.policy.pool import Candidate

Candidates = Sequence[Candidate]


@implementer(IPlugin, IStrategyFactory)
class StrategyFactory:
    """
    A strategy plugin made from a class whose constructor takes the options
    as keyword arguments.
    """

    def __init__(
        self,
        name: str,
        description: str,
        strategy: Callable[..., Any],
        options_schema: Mapping[str, Any] | None = None,
        uses_weights: bool = True,
    ) -> None:
        self.name = name
        self.description = description
        #: Whether backend weights change its choices; the UI says "weight
        #: ignored" next to each weight when they do not.
        self.uses_weights = uses_weights
        self.options_schema = dict(
            options_schema
            or {"type": "object", "properties": {}, "additionalProperties": False}
        )
        self._strategy = strategy

    def build(self, options: Mapping[str, Any]) -> IStrategy:
        strategy = self._strategy(**options)
        strategy.name = self.name
        return strategy


def _rotating(candidates: Candidates, start: int):
    n = len(candidates)
    for k in range(n):
        yield candidates[(start + k) % n]


@implementer(IStrategy)
class UnweightedRoundRobin:
    """
    Each backend in turn, ignoring weights.
    """

    name = "round-robin-unweighted"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Candidates, client: tuple[str, int]) -> Candidate:
        i = self._next % len(candidates)
        self._next = i + 1
        return candidates[i]


@implementer(IStrategy)
class RoundRobin:
    """
    Round-robin by weight, as HAProxy's C{roundrobin}, interleaved the way
    nginx's smooth weighted round-robin is: weights 5,1,1 give a a b a c a a,
    not a a a a a b c, so no backend gets a burst.  Equal weights give plain
    rotation.
    """

    name = "round-robin"

    def __init__(self) -> None:
        self._current: dict[str, float] = {}
        self._seen: object = None

    def choose(self, candidates: Candidates, client: tuple[str, int]) -> Candidate:
        if candidates is not self._seen:
            old = self._current
            self._current = {c.id: old.get(c.id, 0.0) for c in candidates}
            self._seen = candidates
        current = self._current
        total = 0.0
        best = candidates[0]
        best_value = float("-inf")
        for c in candidates:
            total += c.weight
            value = current[c.id] + c.weight
            current[c.id] = value
            if value > best_value:
                best, best_value = c, value
        current[best.id] -= total
        return best


@implementer(IStrategy)
class LeastConnections:
    """
    The backend with the fewest active connections per unit of weight; ties
    go round-robin so idle backends share new connections evenly.
    """

    name = "least-connections"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Candidates, client: tuple[str, int]) -> Candidate:
        start = self._next % len(candidates)
        self._next = start + 1
        best = candidates[start]
        best_score = float("inf")
        for c in _rotating(candidates, start):
            score = (c.stats.active + 1) / c.weight
            if score < best_score:
                best, best_score = c, score
        return best


class _Seeded:
    def __init__(self, seed: int | None = None) -> None:
        self._random = _random.Random(seed)


@implementer(IStrategy)
class Random(_Seeded):
    """
    A random backend, with probability proportional to its weight.
    """

    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self._seen: object = None
        self._cumulative: list[float] = []

    def choose(self, candidates: Candidates, client: tuple[str, int]) -> Candidate:
        if candidates is not self._seen:
            total = 0.0
            cumulative = []
            for c in candidates:
                total += c.weight
                cumulative.append(total)
            self._cumulative = cumulative
            self._seen = candidates
        cumulative = self._cumulative
        i = bisect.bisect_right(cumulative, self._random.random() * cumulative[-1])
        return candidates[min(i, len(candidates) - 1)]


@implementer(IStrategy)
class PowerOfTwo(_Seeded):
    """
    Two random choices: draw two distinct backends, each in proportion to
    its weight, and keep the one with fewer active connections per unit of
    weight (ties to the heavier).  Nearly as good as least connections,
    without herding onto one backend when counts are stale.
    """

    name = "power-of-two"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self._seen: object = None
        self._cumulative: list[float] = []

    def _draw(self, candidates: Candidates, skip: int) -> int:
        """
        A weighted draw; C{skip} (if not -1) is left out by drawing over
        the other weights and stepping over its interval.
        """
        cumulative = self._cumulative
        total = cumulative[-1]
        if skip < 0:
            r = self._random.random() * total
        else:
            low = cumulative[skip - 1] if skip else 0.0
            r = self._random.random() * (total - candidates[skip].weight)
            if r >= low:
                r += candidates[skip].weight
        i = min(bisect.bisect_right(cumulative, r), len(candidates) - 1)
        if i == skip:
            i = (i + 1) % len(candidates)
        return i

    def choose(self, candidates: Candidates, client: tuple[str, int]) -> Candidate:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        if candidates is not self._seen:
            total = 0.0
            cumulative = []
            for c in candidates:
                total += c.weight
                cumulative.append(total)
            self._cumulative = cumulative
            self._seen = candidates
        i = self._draw(candidates, -1)
        a, b = candidates[i], candidates[self._draw(candidates, i)]
        if (b.stats.active + 1) / b.weight < (a.stats.active + 1) / a.weight:
            return b
        return a


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@implementer(IStrategy)
class SourceHash:
    """
    Consistent hashing of the client address on a ring of virtual nodes:
    a client keeps its backend while the pool is unchanged, and removing one
    of N backends moves only the clients that were on it (about 1/N).
    """

    name = "source-hash"

    def __init__(self, points: int = 160, include_port: bool = False) -> None:
        self._points = points
        self._include_port = include_port
        self._seen: object = None
        self._hashes: list[int] = []
        self._owners: list[Candidate] = []

    def _build(self, candidates: Candidates) -> None:
        top = max(c.weight for c in candidates)
        ring = []
        for c in candidates:
            count = max(1, round(self._points * c.weight / top))
            for k in range(count):
                ring.append((_hash64(f"{c.id}#{k}".encode()), c))
        ring.sort(key=lambda item: item[0])
        self._hashes = [h for h, _ in ring]
        self._owners = [c for _, c in ring]
        self._seen = candidates

    def choose(self, candidates: Candidates, client: tuple[str, int]) -> Candidate:
        if candidates is not self._seen:
            self._build(candidates)
        key = f"{client[0]}:{client[1]}" if self._include_port else client[0]
        i = bisect.bisect(self._hashes, _hash64(key.encode()))
        return self._owners[i % len(self._owners)]


@implementer(IStrategy)
class LeastResponseTime:
    """
    The backend answering fastest: the lowest EWMA of time to first
    response byte (connect latency until one is measured), scaled by active
    connections per unit of weight (which alone decides while nothing is
    measured).  Every C{explore}th pick goes round-robin so a backend that
    was slow gets measured again.
    """

    name = "least-response-time"

    def __init__(self, explore: int = 20) -> None:
        self._explore = explore
        self._next = 0
        self._picks = 0
        self._explored = 0

    def choose(self, candidates: Candidates, client: tuple[str, int]) -> Candidate:
        start = self._next % len(candidates)
        self._next = start + 1
        self._picks += 1
        if self._explore and self._picks % self._explore == 0:
            self._explored += 1
            return candidates[self._explored % len(candidates)]
        best = candidates[start]
        best_score = (float("inf"), float("inf"))
        for c in _rotating(candidates, start):
            s = c.stats
            latency = s.response_ewma if s.response_ewma is not None else s.connect_ewma
            load = (s.active + 1) / c.weight
            score = ((latency or 0.0) * load, load)
            if score < best_score:
                best, best_score = c, score
        return best


@implementer(IStrategy)
class FirstAvailable:
    """
    Fill the first backend up to its limit, then the next (HAProxy's
    C{first}): keeps as few backends busy as possible, so spare ones can be
    scaled down.  When all are full, the least loaded relative to its limit.
    Weights are ignored (except that weight 0 still takes a backend out of
    the pool), as in HAProxy.
    """

    name = "first-available"

    def __init__(self, limit: int = 100) -> None:
        self._limit = limit

    def choose(self, candidates: Candidates, client: tuple[str, int]) -> Candidate:
        best = candidates[0]
        best_load = float("inf")
        for c in candidates:
            limit = c.backend.max_connections or self._limit
            if c.stats.active < limit:
                return c
            load = c.stats.active / limit
            if load < best_load:
                best, best_load = c, load
        return best


_seed = {"type": ["integer", "null"], "description": "Seed for repeatable choices."}

roundRobin = StrategyFactory(
    "round-robin",
    "Each backend in turn, as often as its weight says, interleaved (nginx's smooth weighted round-robin).",
    RoundRobin,
)
#: The name round-robin had before it honoured weights; kept so stored
#: configs and scripts naming it go on working.
weightedRoundRobin = StrategyFactory(
    "weighted-round-robin",
    "The same as round-robin (an older name).",
    RoundRobin,
)
roundRobinUnweighted = StrategyFactory(
    "round-robin-unweighted",
    "Each backend in turn, ignoring weights.",
    UnweightedRoundRobin,
    uses_weights=False,
)
leastConnections = StrategyFactory(
    "least-connections",
    "Fewest active connections per unit of weight.",
    LeastConnections,
)
random = StrategyFactory(
    "random",
    "A random backend, in proportion to weight.",
    Random,
    {"type": "object", "properties": {"seed": _seed}, "additionalProperties": False},
)
powerOfTwo = StrategyFactory(
    "power-of-two",
    "Two random choices; the one with fewer active connections per weight wins.",
    PowerOfTwo,
    {"type": "object", "properties": {"seed": _seed}, "additionalProperties": False},
)
sourceHash = StrategyFactory(
    "source-hash",
    "Consistent hash of the client address: a client sticks to its backend.",
    SourceHash,
    {
        "type": "object",
        "properties": {
            "points": {"type": "integer", "minimum": 1, "maximum": 1000,
                       "description": "Virtual nodes for the heaviest backend."},
            "include_port": {"type": "boolean",
                             "description": "Hash the client port too."},
        },
        "additionalProperties": False,
    },
)
leastResponseTime = StrategyFactory(
    "least-response-time",
    "Fastest backend by EWMA of response time, scaled by active connections.",
    LeastResponseTime,
    {
        "type": "object",
        "properties": {
            "explore": {"type": "integer", "minimum": 0, "maximum": 10000,
                        "description": "Every Nth pick goes round-robin (0: never)."},
        },
        "additionalProperties": False,
    },
)
firstAvailable = StrategyFactory(
    "first-available",
    "Fill the first backend up to a limit, then the next.",
    FirstAvailable,
    {
        "type": "object",
        "properties": {
            "limit": {"type": "integer", "minimum": 1,
                      "description": "Connections per backend unless it sets max_connections."},
        },
        "additionalProperties": False,
    },
    uses_weights=False,
)
