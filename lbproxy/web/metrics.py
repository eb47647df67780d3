"""
Prometheus metrics (C{GET /metrics}).

A custom collector reads the balancer's own counters when Prometheus
scrapes; the proxy never updates a metric object per connection, so the
hot path pays nothing for metrics.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

import lbproxy

#: Listener counters: (Totals attribute, metric name, help).
_TOTALS = (
    ("accepted", "lbproxy_connections_accepted", "Client connections accepted."),
    ("rejected", "lbproxy_connections_rejected", "Client connections refused by --max-connections."),
    ("no_backend", "lbproxy_no_backend", "Client connections closed because no backend was available."),
    ("connect_failures", "lbproxy_connect_failures", "Failed connects to backends."),
    ("retries", "lbproxy_retries", "Connects retried on another backend."),
    ("strategy_errors", "lbproxy_strategy_errors", "Strategy failures (round-robin used instead)."),
    ("idle_timeouts", "lbproxy_idle_timeouts", "Connections closed for being idle."),
    ("bytes_up", "lbproxy_bytes_up", "Bytes from clients to backends, finished connections."),
    ("bytes_down", "lbproxy_bytes_down", "Bytes from backends to clients, finished connections."),
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
        total = CounterMetricFamily("lbproxy_backend_connections", "Connections to the backend.", labels=labels)
        active = GaugeMetricFamily("lbproxy_backend_active_connections", "Connections open to the backend now.", labels=labels)
        failures = CounterMetricFamily("lbproxy_backend_connect_failures", "Failed connects to the backend.", labels=labels)
        up_bytes = CounterMetricFamily("lbproxy_backend_bytes_up", "Bytes from clients to the backend.", labels=labels)
        down_bytes = CounterMetricFamily("lbproxy_backend_bytes_down", "Bytes from the backend to clients.", labels=labels)
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
        for view in self.views():
            lv = [view["id"], view["address"]]
            stats = view["stats"]
            total.add_metric(lv, stats.get("total", 0))
            active.add_metric(lv, stats.get("active", 0))
            failures.add_metric(lv, stats.get("failures", 0))
            up_bytes.add_metric(lv, stats.get("bytes_up", 0))
            down_bytes.add_metric(lv, stats.get("bytes_down", 0))
            if stats.get("connect_ewma") is not None:
                latency.add_metric(lv, stats["connect_ewma"])
            up.add_metric(lv, 1 if view["id"] in candidates else 0)
            weight.add_metric(lv, view["effective_weight"])
            state.add_metric(lv + [view["state"]], 1)
        yield from (total, active, failures, up_bytes, down_bytes, latency, up, weight, state)


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
