"""
The balancer's counters are named once (lbproxy/policy/stats.py TOTALS and
BACKEND_COUNTERS) and every view follows that list: Totals, the stats view
and the Prometheus metrics.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from lbproxy.model.config import Backend, Config
from lbproxy.policy.balancer import Balancer, Totals
from lbproxy.policy.stats import BACKEND_COUNTERS, TOTALS, StatsSampler
from lbproxy.web.metrics import metrics_registry


def balancer(factories):
    config = Config(version=1, backends=(Backend(id="b1", host="127.0.0.1", port=9),))
    return Balancer(config, factories, reactor=Clock())


def test_totals_are_the_listed_counters():
    """Totals has exactly the listed listener counters, all starting at 0."""
    assert Totals().to_json() == {c.name: 0 for c in TOTALS}


def test_stats_view_rates_follow_the_list(factories):
    """The stats view has a per-second rate for every counter listed with one."""
    snapshot = StatsSampler(balancer(factories), Clock()).snapshot()
    for c in TOTALS:
        assert (f"{c.name}_per_second" in snapshot["totals"]) == c.rate, c.name
    for c in BACKEND_COUNTERS:
        assert c.name in snapshot["backends"]["b1"]
        assert (f"{c.name}_per_second" in snapshot["backends"]["b1"]) == c.rate, c.name


def test_metrics_follow_the_list(factories):
    """Every listed counter with a metric name is exported with its help text."""
    from prometheus_client import generate_latest

    text = generate_latest(metrics_registry(balancer(factories))).decode()
    for c in TOTALS:
        if c.metric:
            assert f"# HELP {c.metric}_total {c.help}" in text
            assert f'{c.metric}_total{{service="default"}} 0.0' in text
    for c in BACKEND_COUNTERS:
        if c.metric:
            assert f'{c.metric}_total{{address="127.0.0.1:9",backend="b1",service="default"}} 0.0' in text
