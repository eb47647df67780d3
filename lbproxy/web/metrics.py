"""
Prometheus metrics (C{GET /metrics}).

A custom collector reads the balancer's own counters when Prometheus
scrapes; the proxy never updates a metric object per connection, so the
hot path pays nothing for metrics.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

import lbproxy
from lbproxy.policy.stats import BACKEND_COUNTERS, TOTALS

#: Listener counters: (Totals attribute, metric name, help).
_TOTALS = tuple((c.name, c.metric, c.help) for c in TOTALS if c.metric)
#: Per-backend counters: (stats key, metric name, help).
_BACKEND = tuple((c.name, c.metric, c.help) for c in BACKEND_COUNTERS if c.metric)
#: Per-backend histograms: (L{lbproxy.policy.histogram.Histograms} attribute, metric name, help).
HISTOGRAMS = (
    ("connect", "lbproxy_backend_connect_seconds", "Time to connect to the backend."),
    ("duration", "lbproxy_backend_connection_duration_seconds", "How long relayed connections lasted."),
)


class BalancerCollector(Collector):
    """
    Collects a balancer's counters, per listener and per backend (labels
    C{backend} (id) and C{address}).
    """

    def __init__(self, balancer: Any, feed: Any = None, views: Any = None) -> None:
        self.balancer = balancer
        self.feed = feed
        self.views = views if views is not None else balancer.backends_view

    def collect(self) -> Iterator[Any]:
        b = self.balancer
        totals = b.totals
        for attr, name, doc in _TOTALS:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], getattr(totals, attr))
            yield c
        g = GaugeMetricFamily("lbproxy_connections_active", "Client connections open now.")
        g.add_metric([], totals.active)
        yield g
        g = GaugeMetricFamily("lbproxy_config_version", "Version of the config in force.")
        g.add_metric([], b.config.version)
        yield g
        info = InfoMetricFamily("lbproxy", "Version and active strategy.")
        info.add_metric([], {"version": lbproxy.__version__, "strategy": b.config.strategy.name})
        yield info
        if self.feed is not None:
            g = GaugeMetricFamily("lbproxy_feed_subscribers", "Open event feed subscribers.")
            g.add_metric([], self.feed.subscriber_count)
            yield g
            c = CounterMetricFamily("lbproxy_feed_cut_offs", "Feed subscribers cut off for not reading.")
            c.add_metric([], self.feed.cut_offs)
            yield c
        yield from self._backends()

    def _backends(self) -> Iterator[Any]:
        b = self.balancer
        labels = ["backend", "address"]
        counters = [(key, CounterMetricFamily(name, doc, labels=labels)) for key, name, doc in _BACKEND]
        active = GaugeMetricFamily("lbproxy_backend_active_connections", "Connections open to the backend now.", labels=labels)
        latency = GaugeMetricFamily(
            "lbproxy_backend_connect_latency_seconds",
            "Moving average of the time to connect to the backend.", labels=labels,
        )
        up = GaugeMetricFamily("lbproxy_backend_up", "1 if the backend takes new connections, else 0.", labels=labels)
        weight = GaugeMetricFamily("lbproxy_backend_weight", "Effective weight (slow start lowers it).", labels=labels)
        state = GaugeMetricFamily(
            "lbproxy_backend_state", "1 for the state the backend is in.", labels=labels + ["state"],
        )
        candidates = {c.id for c in b.pool.candidates}
        lvs: dict[Any, list[str]] = {}
        for view in self.views():
            lv = lvs[view["id"]] = [view["id"], view["address"]]
            stats = view["stats"]
            for key, family in counters:
                family.add_metric(lv, stats.get(key, 0))
            active.add_metric(lv, stats.get("active", 0))
            if stats.get("connect_ewma") is not None:
                latency.add_metric(lv, stats["connect_ewma"])
            up.add_metric(lv, 1 if view["id"] in candidates else 0)
            weight.add_metric(lv, view["effective_weight"])
            state.add_metric(lv + [view["state"]], 1)
        yield from (family for _, family in counters)
        yield from (active, latency, up, weight, state)
        yield from self._histograms(labels, lvs)

    def _histograms(self, labels: list[str], lvs: dict[Any, list[str]]) -> Iterator[Any]:
        """
        The latency histograms; C{lvs} maps a series key (the backend id)
        to its label values, and series of backends no longer shown are
        forgotten here, so they stay bounded by the pool.
        """
        histograms = getattr(self.balancer, "histograms", None)
        if histograms is None:
            return
        for attr, name, doc in HISTOGRAMS:
            histogram = getattr(histograms, attr)
            histogram.keep_only(lvs)
            family = HistogramMetricFamily(name, doc, labels=labels)
            for key in histogram:
                buckets, total = histogram.buckets(key)
                family.add_metric(lvs[key], buckets, total)
            yield family


def metrics_registry(balancer: Any, feed: Any = None, views: Any = None) -> CollectorRegistry:
    """
    A registry of this balancer's metrics and the process's own (CPU,
    memory, file descriptors), separate from the global default registry
    so that two balancers in one process (tests) never mix.
    """
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(balancer, feed, views))
    ProcessCollector(registry=registry)
    return registry
