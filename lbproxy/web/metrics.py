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
    Collects the counters of every service's balancer, per service (label
    C{service}) and per backend (labels C{service}, C{backend} (id) and
    C{address}).
    """

    def __init__(self, balancer: Any, feed: Any = None, views: Any = None, table: Any = None) -> None:
        self.balancer = balancer
        self.feed = feed
        self.views = views if views is not None else balancer.backends_view
        self.table = table

    def _services(self) -> list[tuple[str, Any, Any]]:
        """
        C{(name, balancer, views)} of each service (the main one's views
        are the admin app's cached ones).
        """
        if self.table is None:
            return [(self.balancer.config.name, self.balancer, self.views)]
        return [
            (name, b, self.views if b is self.balancer else b.backends_view)
            for name, b in self.table.balancers.items()
        ]

    def collect(self) -> Iterator[Any]:
        services = self._services()
        for attr, name, doc in _TOTALS:
            c = CounterMetricFamily(name, doc, labels=["service"])
            for service, b, _ in services:
                c.add_metric([service], getattr(b.totals, attr))
            yield c
        g = GaugeMetricFamily("lbproxy_connections_active", "Client connections open now.", labels=["service"])
        v = GaugeMetricFamily("lbproxy_config_version", "Version of the config in force.", labels=["service"])
        info = InfoMetricFamily("lbproxy", "Version and active strategy.", labels=["service"])
        for service, b, _ in services:
            g.add_metric([service], b.totals.active)
            v.add_metric([service], b.config.version)
            info.add_metric([service], {"version": lbproxy.__version__, "strategy": b.config.strategy.name})
        yield from (g, v, info)
        yield from self._traffic(services)
        if self.feed is not None:
            g = GaugeMetricFamily("lbproxy_feed_subscribers", "Open event feed subscribers.")
            g.add_metric([], self.feed.subscriber_count)
            yield g
            c = CounterMetricFamily("lbproxy_feed_cut_offs", "Feed subscribers cut off for not reading.")
            c.add_metric([], self.feed.cut_offs)
            yield c
        yield from self._backends(services)

    def _traffic(self, services: list[tuple[str, Any, Any]]) -> Iterator[Any]:
        """
        Traffic control (L{lbproxy.policy.limits}): refusals by reason, the
        queue at maxconn and the size of the client table, per service.
        """
        from lbproxy.policy.limits import REASONS

        refused = CounterMetricFamily(
            "lbproxy_traffic_refused", "Connections refused by traffic control, by reason.",
            labels=["service", "reason"],
        )
        length = GaugeMetricFamily("lbproxy_queue_length", "Clients waiting for a backend now.", labels=["service"])
        wait = GaugeMetricFamily(
            "lbproxy_queue_wait_seconds", "How long the oldest waiting client has waited.", labels=["service"],
        )
        longest = GaugeMetricFamily(
            "lbproxy_queue_longest_wait_seconds", "The longest wait of a client in the queue.", labels=["service"],
        )
        entries = GaugeMetricFamily(
            "lbproxy_client_table_entries", "Clients (or prefixes) the per-client limits track.", labels=["service"],
        )
        for service, b, _ in services:
            state = getattr(b, "traffic_state", None)
            if state is None:
                continue
            counts = state.refusals.counts
            for reason in REASONS:
                refused.add_metric([service, reason], counts.get(reason, 0))
            # With --workers, these are every worker's (the sums they report).
            length.add_metric([service], state.queue_length())
            wait.add_metric([service], state.wait_now())
            longest.add_metric([service], state.longest_wait())
            entries.add_metric([service], state.entries())
        yield from (refused, length, wait, longest, entries)

    def _backends(self, services: list[tuple[str, Any, Any]]) -> Iterator[Any]:
        labels = ["service", "backend", "address"]
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
        per_service: list[tuple[Any, dict[Any, list[str]]]] = []
        for service, b, views in services:
            candidates = {c.id for c in b.pool.candidates}
            lvs: dict[Any, list[str]] = {}
            per_service.append((b, lvs))
            for view in views():
                lv = lvs[view["id"]] = [service, view["id"], view["address"]]
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
        yield from self._histograms(labels, per_service)

    def _histograms(self, labels: list[str], per_service: list[tuple[Any, dict[Any, list[str]]]]) -> Iterator[Any]:
        """
        The latency histograms, one series per service and backend; each
        service's C{lvs} maps a series key (the backend id) to its label
        values, and series of backends no longer shown are forgotten here,
        so they stay bounded by the pools.
        """
        for attr, name, doc in HISTOGRAMS:
            family = HistogramMetricFamily(name, doc, labels=labels)
            for b, lvs in per_service:
                histograms = getattr(b, "histograms", None)
                if histograms is None:
                    continue
                histogram = getattr(histograms, attr)
                histogram.keep_only(lvs)
                for key in histogram:
                    buckets, total = histogram.buckets(key)
                    family.add_metric(lvs[key], buckets, total)
            yield family


class TLSCollector(Collector):
    """
    When each certificate a TLS listener serves expires, in seconds from
    now (negative: expired), labelled by service and the certificate's
    first name: alert on it well before it reaches 0.
    """

    def __init__(self, listeners: Any, clock: Any) -> None:
        """
        @param listeners: a callable returning the
            L{lbproxy.control.listeners.ListenerManager}, or C{None}.
        @param clock: what tells the time (C{seconds()}), the reactor.
        """
        self._listeners = listeners
        self._clock = clock

    def collect(self) -> Iterator[Any]:
        manager = self._listeners()
        g = GaugeMetricFamily(
            "lbproxy_tls_certificate_expiry_seconds",
            "Seconds until a served TLS certificate expires.", labels=["service", "name"],
        )
        # The pool of --workers has no TLS store (it refuses TLS services).
        tls = getattr(manager, "tls", None)
        if tls is not None:
            now = self._clock.seconds()
            for service, name, not_after in tls.expiries():
                g.add_metric([service, name], not_after - now)
        yield g


def metrics_registry(balancer: Any, feed: Any = None, views: Any = None, table: Any = None) -> CollectorRegistry:
    """
    A registry of this balancer's metrics and the process's own (CPU,
    memory, file descriptors), separate from the global default registry
    so that two balancers in one process (tests) never mix.
    """
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(balancer, feed, views, table))
    ProcessCollector(registry=registry)
    return registry
