"""
The stats sampler keeps the last five minutes of per-second connection
rates, bounded, and the admin API serves them at
C{GET /api/v1/stats/history} so the UI's chart starts full after a reload.
"""

from __future__ import annotations

from lbproxy.policy.stats import HISTORY
from lbproxy.web.openapi import openapi_document
from tests.webtools import Admin


def _tick(admin, counts):
    """One second passes in which each backend got C{counts[id]} connections."""
    for bid, n in counts.items():
        admin.balancer.pool.stats[bid].total += n
    admin.balancer.totals.accepted += sum(counts.values())
    admin.clock.advance(1)
    admin.app.stats.sample()


def test_history_holds_per_second_rates_per_backend(factories):
    """
    Each sample after the first adds one point: connections per second of
    each backend over the second before it, and accepted per second.
    """
    admin = Admin(factories)
    admin.app.stats.sample()
    _tick(admin, {"b1": 3, "b2": 5})
    _tick(admin, {"b1": 0, "b2": 7})
    body = admin.get("/api/v1/stats/history")
    assert body.code == 200
    h = body.json
    assert h["time"] == admin.clock.seconds() and h["interval"] == 1.0 and h["keep"] == HISTORY
    assert [p["backends"] for p in h["points"]] == [{"b1": 3.0, "b2": 5.0}, {"b1": 0.0, "b2": 7.0}]
    assert [p["accepted"] for p in h["points"]] == [8.0, 7.0]
    assert [p["time"] for p in h["points"]] == [admin.clock.seconds() - 1, admin.clock.seconds()]


def test_history_is_bounded_to_five_minutes(factories):
    """After ten minutes of samples the history holds five minutes' points."""
    admin = Admin(factories)
    admin.app.stats.sample()
    for i in range(600):
        _tick(admin, {"b1": i % 4})
    points = admin.get("/api/v1/stats/history").json["points"]
    assert len(points) == HISTORY + 1
    assert points[-1]["time"] - points[0]["time"] == HISTORY
    assert points[-1]["backends"]["b1"] == 599 % 4


def test_history_starts_empty(factories):
    """Before two samples there is no rate yet: no points, not zeros."""
    admin = Admin(factories)
    assert admin.get("/api/v1/stats/history").json["points"] == []
    admin.app.stats.sample()
    assert admin.get("/api/v1/stats/history").json["points"] == []


def test_history_endpoint_is_documented(factories):
    """The answer's status is the one openapi.json lists for the route."""
    admin = Admin(factories)
    op = openapi_document()["paths"]["/api/v1/stats/history"]["get"]
    assert str(admin.get("/api/v1/stats/history").code) in op["responses"]
