"""
Every service of the document gets its live view: the feed sends one
C{route} batch per service per tick and C{stats} per service each second,
each naming its service, following services added and removed at runtime;
and C{GET /api/v1/services/{name}/stats[/history]} serve each service's own
rates.
"""

from __future__ import annotations

from lbproxy.web.openapi import openapi_document
from tests.test_web_sse import Client
from tests.webtools import Admin


def _service(name, port):
    return {"name": name, "listen": [f"tcp:{port}"], "backends": [{"host": "127.0.0.1", "port": port}],
            "strategy": {"name": "round-robin"}}


def _two(factories):
    admin = Admin(factories)
    assert admin.request("POST", "/api/v1/services", _service("redis", 6379)).code == 201
    return admin


def _batches(client, kind="route"):
    return [e["data"] for e in client.events if e["event"] == kind]


def test_one_route_batch_per_service_per_tick(factories):
    """Traffic recorded on two balancers gives, in one 100 ms tick, one route event for each, naming its service."""
    admin = _two(factories)
    c = Client(admin)
    table = admin.controller.table
    for i in range(5):
        admin.balancer.route((f"10.0.0.{i}", 1000 + i))
    for i in range(3):
        table.balancer("redis").route((f"10.0.1.{i}", 2000 + i))
    admin.clock.advance(0.1)
    routes = _batches(c)
    assert sorted((b["service"], b["total"]) for b in routes) == [("default", 5), ("redis", 3)]
    redis = next(b for b in routes if b["service"] == "redis")
    assert {s["client"] for s in redis["sample"]} <= {f"10.0.1.{i}" for i in range(3)}
    assert redis["sample"] and all(s["client"].startswith("10.0.1.") for s in redis["sample"])
    admin.clock.advance(0.1)
    assert len(_batches(c)) == 2, "no decisions, no event"


def test_stats_per_service_each_second(factories):
    """Each second the feed sends one stats event per service, each with that service's own counters."""
    admin = _two(factories)
    c = Client(admin)
    redis = admin.controller.table.balancer("redis")
    redis.totals.accepted += 7
    admin.app.stats.sample()
    admin.clock.advance(1.0)
    stats = {s["service"]: s for s in _batches(c, "stats")}
    assert set(stats) == {"default", "redis"}
    assert stats["redis"]["totals"]["accepted"] == 7
    assert stats["default"]["totals"]["accepted"] == 0


def test_services_added_and_removed_at_runtime_are_followed(factories):
    """A service added while the feed runs gets route events from the next tick; a removed one gets none."""
    admin = Admin(factories)
    c = Client(admin)
    assert admin.request("POST", "/api/v1/services", _service("later", 7000)).code == 201
    later = admin.controller.table.balancer("later")
    later.route(("10.9.9.9", 1))
    admin.clock.advance(0.1)
    assert [(b["service"], b["total"]) for b in _batches(c)] == [("later", 1)]
    admin.clock.advance(0.9)
    assert {s["service"] for s in _batches(c, "stats")} == {"default", "later"}
    assert admin.request("DELETE", "/api/v1/services/later").code == 200
    later.route(("10.9.9.9", 2))
    admin.clock.advance(1.0)
    assert [b["service"] for b in _batches(c)] == ["later"]
    assert [s["service"] for s in _batches(c, "stats")][-1] == "default"
    assert [s["service"] for s in _batches(c, "stats")].count("later") == 1


def test_per_service_stats_history(factories):
    """/services/NAME/stats/history has that service's rates, sampled in the main sampler's tick; unknown names are 404."""
    admin = _two(factories)
    redis = admin.controller.table.balancer("redis")
    admin.app.stats.sample()
    redis.pool.stats["b1"].total += 4
    redis.totals.accepted += 4
    admin.clock.advance(1)
    admin.app.stats.sample()
    h = admin.get("/api/v1/services/redis/stats/history")
    assert h.code == 200
    assert [p["backends"] for p in h.json["points"]] == [{"b1": 4.0}]
    assert [p["accepted"] for p in h.json["points"]] == [4.0]
    main = admin.get("/api/v1/services/default/stats/history").json
    assert [p["accepted"] for p in main["points"]] == [0.0]
    assert main == admin.get("/api/v1/stats/history").json
    s = admin.get("/api/v1/services/redis/stats")
    assert s.code == 200 and s.json["totals"]["accepted"] == 4
    assert admin.get("/api/v1/services/nope/stats/history").code == 404
    assert admin.get("/api/v1/services/nope/stats").code == 404


def test_per_service_stats_routes_are_documented(factories):
    """openapi.json names the per-service stats routes."""
    paths = openapi_document()["paths"]
    assert "/api/v1/services/{name}/stats" in paths
    assert "/api/v1/services/{name}/stats/history" in paths
