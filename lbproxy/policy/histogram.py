"""
Latency histograms with fixed buckets: one bucket increment per
observation, read by the Prometheus collector when it scrapes.

A series is keyed by what identifies it (today the backend id; a service
label would make the key C{(service, backend)}); its value is a flat list
of per-bucket counts (not cumulative) followed by the sum, so an
observation is a C{bisect} and two additions, and nothing is allocated
after a key's first observation.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Hashable, Iterator

#: Seconds to connect to a backend (upper bounds, "le").
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds a relayed connection lasted.
DURATION_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


class Histogram:
    """
    @ivar bounds: the buckets' upper bounds, ascending (C{+Inf} is implied).
    @ivar series: key -> counts per bucket (the last one C{+Inf}), then the sum.
    """

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.series: dict[Hashable, list] = {}

    def observe(self, key: Hashable, value: float) -> None:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [0] * (len(self.bounds) + 1) + [0.0]
        s[bisect_left(self.bounds, value)] += 1
        s[-1] += value

    def buckets(self, key: Hashable) -> tuple[list[tuple[str, int]], float]:
        """
        @return: C{([(le, cumulative count), ..., ("+Inf", total)], sum)},
            as Prometheus exposes a histogram.
        """
        s = self.series[key]
        out, total = [], 0
        for bound, count in zip(self.bounds, s):
            total += count
            out.append((_le(bound), total))
        out.append(("+Inf", total + s[len(self.bounds)]))
        return out, s[-1]

    def keep_only(self, keys: Any) -> None:
        """
        Forget the series whose key is not in C{keys} (backends no longer
        configured), so the series stay bounded by the pool.
        """
        for key in [k for k in self.series if k not in keys]:
            del self.series[key]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(tuple(self.series))


def _le(bound: float) -> str:
    return repr(float(bound))


class Histograms:
    """
    The balancer's latency histograms, per backend.
    """

    __slots__ = ("connect", "duration")

    def __init__(self) -> None:
        self.connect = Histogram(CONNECT_BUCKETS)
        self.duration = Histogram(DURATION_BUCKETS)
