"""
Prometheus metrics from the balancer's counters, and sliding-window rates.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbproxy.policy.pool import AccessRecord
from lbproxy.policy.stats import StatsSampler
from tests.webtools import Admin


class Conn:
    """A relayed connection's counters, as the balancer sees them."""

    def __init__(self):
        self.bytes_up = self.bytes_down = 0

    def abort(self, why):
        pass


def serve(admin, backend_id, up, down):
    """Run one whole connection to C{backend_id} through the balancer's calls."""
    b = admin.balancer
    assert b.admit()
    cand = next(c for c in b.pool.candidates if c.id == backend_id)
    conn = Conn()
    b.connection_opened(cand, conn, 0.002)
    b.connection_closed(cand, conn, AccessRecord("10.0.0.1:1", backend_id, up, down, 0.1, "ok"))


def samples(admin):
    r = admin.get("/metrics")
    assert r.code == 200
    assert r.header("Content-Type").startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def admin(factories):
    a = Admin(factories)
    a.balancer.settings = type(a.balancer.settings)(access_log=False)
    return a


def test_backend_metrics(admin):
    """Per-backend counters carry service, backend and address labels and follow the traffic; listener counters carry the service."""
    serve(admin, "b1", 100, 2000)
    serve(admin, "b1", 5, 7)
    cand = next(c for c in admin.balancer.pool.candidates if c.id == "b2")
    admin.balancer.connect_failed(cand, "refused")
    m = samples(admin)
    b1 = (("address", "127.0.0.1:9001"), ("backend", "b1"), ("service", "default"))
    b2 = (("address", "127.0.0.1:9002"), ("backend", "b2"), ("service", "default"))
    assert m[("lbproxy_backend_connections_total", b1)] == 2
    assert m[("lbproxy_backend_bytes_up_total", b1)] == 105
    assert m[("lbproxy_backend_bytes_down_total", b1)] == 2007
    assert m[("lbproxy_backend_active_connections", b1)] == 0
    assert m[("lbproxy_backend_connect_failures_total", b2)] == 1
    assert m[("lbproxy_backend_connect_latency_seconds", b1)] == pytest.approx(0.002)
    assert m[("lbproxy_backend_up", b1)] == 1
    assert m[("lbproxy_backend_state", b1[:2] + (("service", "default"), ("state", "up")))] == 1
    default = (("service", "default"),)
    assert m[("lbproxy_connections_accepted_total", default)] == 2
    assert m[("lbproxy_bytes_down_total", default)] == 2007
    assert m[("lbproxy_config_version", default)] == 1
    assert m[("lbproxy_feed_subscribers", ())] == 0


def test_backend_down_and_removed(admin):
    """A backend taken out by checks reports up=0; a removed one disappears from the metrics."""
    for _ in range(3):
        admin.balancer.health_result("b2", False, "refused")
    m = samples(admin)
    b2 = (("address", "127.0.0.1:9002"), ("backend", "b2"), ("service", "default"))
    assert m[("lbproxy_backend_up", b2)] == 0
    assert m[("lbproxy_backend_state", b2[:2] + (("service", "default"), ("state", "down")))] == 1
    assert admin.request("DELETE", "/api/v1/backends/b2").code == 200
    m = samples(admin)
    assert ("lbproxy_backend_up", b2) not in m
    assert m[("lbproxy_config_version", (("service", "default"),))] == 2


def test_rates_over_window(admin):
    """Rates are the counter difference over the sampled window, per backend and in total."""
    stats = StatsSampler(admin.balancer, admin.clock, window=10, interval=1)
    stats.start()
    for second in range(10):
        for _ in range(5):
            serve(admin, "b1", 10, 100)
        admin.clock.advance(1)
    snap = stats.snapshot()
    assert snap["window"] == 10
    b1 = snap["backends"]["b1"]
    assert b1["total"] == 50
    assert b1["total_per_second"] == pytest.approx(5.0)
    assert b1["bytes_down_per_second"] == pytest.approx(500.0)
    assert snap["backends"]["b2"]["total_per_second"] == 0
    assert snap["totals"]["accepted_per_second"] == pytest.approx(5.0)
    for _ in range(12):
        admin.clock.advance(1)
    snap = stats.snapshot()
    assert snap["backends"]["b1"]["total_per_second"] == 0, "old traffic leaves the window"
    stats.stop()
    assert admin.clock.getDelayedCalls() == []


def test_rates_of_new_backend(admin):
    """A backend added mid-window gets its rate from its own first sample, not from zero at the window start."""
    stats = StatsSampler(admin.balancer, admin.clock, window=10, interval=1)
    stats.start()
    admin.clock.advance(5)
    admin.request("POST", "/api/v1/backends", {"host": "127.0.0.1", "port": 9003})
    admin.clock.advance(1)
    for _ in range(2):
        for _ in range(4):
            serve(admin, "b3", 1, 1)
        admin.clock.advance(1)
    snap = stats.snapshot()
    assert snap["backends"]["b3"]["total_per_second"] == pytest.approx(4.0)


def test_stats_endpoint(admin):
    """GET /api/v1/stats answers with totals and per-backend figures."""
    r = admin.get("/api/v1/stats")
    assert r.code == 200
    assert set(r.json) == {"time", "window", "totals", "backends"}
    assert set(r.json["backends"]) == {"b1", "b2"}


def test_latency_histograms(admin):
    """Connect time and connection duration are per-backend histograms with
    the service, backend and address labels: cumulative buckets, count and
    sum; a backend removed from the config loses its series."""
    serve(admin, "b1", 1, 1)
    serve(admin, "b1", 1, 1)
    m = samples(admin)
    b1 = (("address", "127.0.0.1:9001"), ("backend", "b1"), ("service", "default"))
    assert m[("lbproxy_backend_connect_seconds_count", b1)] == 2
    assert m[("lbproxy_backend_connect_seconds_sum", b1)] == pytest.approx(0.004)
    assert m[("lbproxy_backend_connect_seconds_bucket", tuple(sorted(b1 + (("le", "0.001"),))))] == 0
    assert m[("lbproxy_backend_connect_seconds_bucket", tuple(sorted(b1 + (("le", "0.0025"),))))] == 2
    assert m[("lbproxy_backend_connect_seconds_bucket", tuple(sorted(b1 + (("le", "+Inf"),))))] == 2
    assert m[("lbproxy_backend_connection_duration_seconds_bucket", tuple(sorted(b1 + (("le", "0.01"),))))] == 0
    assert m[("lbproxy_backend_connection_duration_seconds_bucket", tuple(sorted(b1 + (("le", "0.1"),))))] == 2
    b2 = (("address", "127.0.0.1:9002"), ("backend", "b2"), ("service", "default"))
    assert ("lbproxy_backend_connect_seconds_count", b2) not in m
    assert admin.request("DELETE", "/api/v1/backends/b1").code == 200
    m = samples(admin)
    assert not any(name.startswith("lbproxy_backend_connect_seconds") for name, _ in m)
    assert "b1" not in admin.balancer.histograms.connect.series


def test_histogram_buckets_are_le_bounds():
    """A value equal to a bound counts in that bound's bucket ("le"); one
    above the last bound only in +Inf."""
    from lbproxy.policy.histogram import Histogram

    h = Histogram((0.1, 1.0))
    for v in (0.1, 0.5, 7.0):
        h.observe("k", v)
    assert h.buckets("k") == ([("0.1", 1), ("1.0", 2), ("+Inf", 3)], pytest.approx(7.6))
