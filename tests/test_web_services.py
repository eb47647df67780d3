"""
The services routes of the admin API through StubTreq (no listeners: the
controller has no listener manager here, so nothing binds): the same
bodies, ETags and errors per service as the top-level routes.
"""

from __future__ import annotations

from tests.webtools import Admin


def redis(**extra):
    return {"name": "redis", "listen": ["tcp:6379"], "backends": [{"host": "127.0.0.1", "port": 6379}],
            "strategy": {"name": "round-robin"}, **extra}


def test_post_get_patch_put_delete_a_service(factories):
    """A service is added (201, Location), read, patched, replaced and deleted; each answer's ETag is the document version."""
    admin = Admin(factories)
    r = admin.request("POST", "/api/v1/services", redis())
    assert r.code == 201, r.json
    assert r.header("Location") == "/api/v1/services/redis"
    assert r.header("ETag") == '"2"' and r.json["version"] == 2
    assert [b["id"] for b in r.json["backends"]] == ["b1"]
    assert [s["name"] for s in admin.get("/api/v1/services").json["services"]] == ["default", "redis"]
    r = admin.request("PATCH", "/api/v1/services/redis", {"idle_timeout": 10}, headers={"If-Match": '"2"'})
    assert r.code == 200 and r.json["idle_timeout"] == 10
    r = admin.request("PATCH", "/api/v1/services/redis", {"idle_timeout": 11}, headers={"If-Match": '"2"'})
    assert r.code == 412
    r = admin.request("PUT", "/api/v1/services/redis", redis(retries=0))
    assert r.code == 200 and r.json["retries"] == 0 and r.json["idle_timeout"] is None
    assert admin.request("POST", "/api/v1/services", redis()).code == 400
    r = admin.request("DELETE", "/api/v1/services/redis")
    assert r.code == 200 and r.json["state"] == "removed"
    assert admin.get("/api/v1/services/redis").code == 404


def test_per_service_routes_mirror_the_top_level(factories):
    """/services/NAME/backends, /backends/ID, /strategy, /settings change only that service; unknown names are 404."""
    admin = Admin(factories)
    assert admin.request("POST", "/api/v1/services", redis()).code == 201
    r = admin.request("POST", "/api/v1/services/redis/backends", {"host": "127.0.0.1", "port": 6380})
    assert r.code == 201 and r.json["id"] == "b2"
    assert r.header("Location") == "/api/v1/services/redis/backends/b2"
    assert admin.request("PATCH", "/api/v1/services/redis/backends/b2", {"weight": 4}).json["weight"] == 4
    assert admin.request("PUT", "/api/v1/services/redis/strategy", {"name": "random"}).json["name"] == "random"
    assert admin.request("PATCH", "/api/v1/services/redis/settings", {"slow_start": 3}).json["slow_start"] == 3
    assert admin.request("DELETE", "/api/v1/services/redis/backends/b1").code == 200
    assert [b["id"] for b in admin.get("/api/v1/services/redis/backends").json["backends"]] == ["b2"]
    # The default service (the top-level routes) is untouched.
    assert [b["id"] for b in admin.get("/api/v1/backends").json["backends"]] == ["b1", "b2"]
    assert admin.get("/api/v1/strategy").json["name"] == "round-robin"
    assert admin.get("/api/v1/services/nope/strategy").code == 404
    assert admin.request("PUT", "/api/v1/services/nope/strategy", {"name": "random"}).code == 404
    r = admin.request("PUT", "/api/v1/services/redis/strategy", {"name": "no-such"})
    assert r.code == 400 and "no-such" in r.json["error"]


def test_deleting_the_default_service_makes_top_level_routes_404(factories):
    """With no default (nor only one) service, the top-level routes answer 404, naming the per-service routes."""
    admin = Admin(factories)
    assert admin.request("POST", "/api/v1/services", redis()).code == 201
    assert admin.request("POST", "/api/v1/services", {**redis(), "name": "pg", "listen": ["tcp:5432"]}).code == 201
    assert admin.request("DELETE", "/api/v1/services/default").code == 200
    r = admin.get("/api/v1/backends")
    assert r.code == 404 and "/api/v1/services/NAME" in r.json["error"]


def test_config_export_without_a_main_service_is_404_not_a_removed_pool(factories):
    """GET /api/v1/config (the backup the operations guide shows) answers
    404 like the other top-level routes when there is no default (nor only
    one) service; it answered 200 with the deleted default's pool, so a
    backup silently held a service that no longer existed and none of the
    others."""
    admin = Admin(factories)
    assert admin.request("POST", "/api/v1/services", redis()).code == 201
    assert admin.request("POST", "/api/v1/services", {**redis(), "name": "pg", "listen": ["tcp:5432"]}).code == 201
    assert admin.get("/api/v1/config").json["name"] == "default"
    assert admin.request("DELETE", "/api/v1/services/default").code == 200
    r = admin.get("/api/v1/config")
    assert r.code == 404 and "/api/v1/services/NAME" in r.json["error"]


def test_strategies_without_a_main_service_list_the_plugins_and_no_active_one(factories):
    """GET /api/v1/strategies lists the process's strategy plugins whatever
    the services are; its C{active} is the main service's choice, and null
    once there is none (it named the deleted default's strategy)."""
    admin = Admin(factories)
    assert admin.request("POST", "/api/v1/services", {**redis(), "strategy": {"name": "least-connections"}}).code == 201
    assert admin.request("POST", "/api/v1/services", {**redis(), "name": "pg", "listen": ["tcp:5432"]}).code == 201
    assert admin.get("/api/v1/strategies").json["active"] == "round-robin"
    assert admin.request("DELETE", "/api/v1/services/default").code == 200
    r = admin.get("/api/v1/strategies")
    assert r.code == 200 and r.json["active"] is None, r.json
    assert "least-connections" in {s["name"] for s in r.json["strategies"]}


def test_metrics_and_events_name_the_service(factories):
    """Every service's counters are exported with its service label; config and service events name their service."""
    from prometheus_client.parser import text_string_to_metric_families

    admin = Admin(factories)
    assert admin.request("POST", "/api/v1/services", redis()).code == 201
    assert admin.request("PATCH", "/api/v1/services/redis/backends/b1", {"weight": 3}).code == 200
    text = admin.get("/metrics").body.decode()
    labels = {(s.name, tuple(sorted(s.labels.items())))
              for f in text_string_to_metric_families(text) for s in f.samples}
    assert ("lbproxy_connections_active", (("service", "redis"),)) in labels
    assert ("lbproxy_connections_active", (("service", "default"),)) in labels
    assert ("lbproxy_backend_weight", (("address", "127.0.0.1:6379"), ("backend", "b1"), ("service", "redis"))) in labels
    events = [e for e in admin.balancer.events.since(0) if e.type in ("config", "service")]
    assert all("service" in e.data for e in events)
    assert [(e.type, e.data["service"], e.data.get("state")) for e in events][-2:] == [
        ("config", "default", None), ("service", "redis", "changed"),
    ]


def test_service_changes_are_in_the_history_with_who_made_them(factories):
    """Adding, changing and removing a service through its routes are
    history entries naming the service and the client (X-LBProxy-Client);
    a change without its own words gets a summary from the diff."""
    admin = Admin(factories)
    ui = {"X-LBProxy-Client": "ui"}
    assert admin.request("POST", "/api/v1/services", redis(), headers=ui).code == 201
    assert admin.request("PATCH", "/api/v1/services/redis", {"retries": 0}, headers=ui).code == 200
    assert admin.request("DELETE", "/api/v1/services/redis", headers=ui).code == 200
    assert [(e["by"], e["summary"]) for e in admin.get("/api/v1/history").json] == [
        ("ui", "removed service redis"),
        ("ui", "added /services/redis/retries 0"),
        ("ui", "added service redis"),
        ("start", "config at start"),
    ]


def test_per_service_strategy_change_names_the_service(factories):
    """A strategy change through /services/NAME/strategy is summarized with
    the service's name; the top-level route keeps the short summary."""
    admin = Admin(factories)
    assert admin.request("POST", "/api/v1/services", redis()).code == 201
    assert admin.request("PUT", "/api/v1/services/redis/strategy", {"name": "random"}).code == 200
    assert admin.request("PUT", "/api/v1/strategy", {"name": "random"}).code == 200
    summaries = [e["summary"] for e in admin.get("/api/v1/history").json]
    assert summaries[:2] == ["strategy round-robin -> random", "service redis: strategy round-robin -> random"]


def test_patch_service_tcp_keepalive(factories):
    """PATCH /services/NAME sets the service's own tcp_keepalive (values or
    "off"; null: the command line's), which its balancer's settings carry
    for new connections; bad values are 400 and change nothing."""
    admin = Admin(factories)
    assert admin.request("POST", "/api/v1/services", redis()).code == 201
    r = admin.request("PATCH", "/api/v1/services/redis", {"tcp_keepalive": [30, 5, 3]})
    assert r.code == 200 and r.json["tcp_keepalive"] == [30, 5, 3]
    balancer = admin.controller.table.balancer("redis")
    assert balancer.settings.tcp_keepalive == (30, 5, 3)
    assert admin.request("PATCH", "/api/v1/services/redis", {"tcp_keepalive": "off"}).code == 200
    assert admin.controller.table.balancer("redis").settings.tcp_keepalive is None
    for bad in ([30, 5, 128], [30, 5], "on", [0, 1, 1]):
        r = admin.request("PATCH", "/api/v1/services/redis", {"tcp_keepalive": bad})
        assert r.code == 400, bad
    assert admin.controller.table.balancer("redis").config.tcp_keepalive == "off"
    assert admin.request("PATCH", "/api/v1/services/redis", {"tcp_keepalive": None}).code == 200
    assert admin.controller.table.balancer("redis").settings.tcp_keepalive == (60, 10, 6)


def test_patch_services_applies_named_services_as_one_version(factories):
    """PATCH /api/v1/services (lbproxyctl apply) creates and replaces the
    named services in one version: one history entry, by the client, whose
    summary names them; the services it does not name are left alone."""
    admin = Admin(factories)
    cli = {"X-LBProxy-Client": "cli"}
    before = admin.get("/api/v1/services/default").json
    pg = {**redis(), "name": "pg", "listen": ["tcp:5432"]}
    r = admin.request("PATCH", "/api/v1/services", {"services": [redis(), pg]}, headers=cli)
    assert r.code == 200, r.json
    assert (r.json["created"], r.json["replaced"], r.json["version"]) == (["redis", "pg"], [], 2)
    assert r.header("ETag") == '"2"' and [s["name"] for s in r.json["services"]] == ["redis", "pg"]
    assert [s["version"] for s in r.json["services"]] == [2, 2]
    r = admin.request("PATCH", "/api/v1/services", {"services": [redis(retries=0), pg]},
                      headers={**cli, "If-Match": '"2"'})
    assert r.code == 200 and (r.json["replaced"], r.json["unchanged"], r.json["version"]) == (["redis"], ["pg"], 3)
    assert admin.get("/api/v1/services/redis").json["retries"] == 0
    history = admin.get("/api/v1/history").json
    assert [(e["version"], e["by"], e["summary"]) for e in history] == [
        (3, "cli", "applied: replaced redis"),
        (2, "cli", "applied: created redis, pg"),
        (1, "start", "config at start"),
    ]
    after = admin.get("/api/v1/services/default").json
    assert {k: v for k, v in after.items() if k != "version"} == {k: v for k, v in before.items() if k != "version"}


def test_patch_services_refused_whole_changes_nothing(factories):
    """One bad service of a batch (a bad port, a name twice, a rule across
    services, a stale If-Match) refuses the whole batch: the other services
    of it are not added, and no version or history entry is made.  A batch
    that changes nothing makes no version either."""
    admin = Admin(factories)
    good = {**redis(), "name": "pg", "listen": ["tcp:5432"]}
    bad_port = redis(backends=[{"host": "127.0.0.1", "port": 70000}])
    shared = {**redis(), "listen": ["tcp:5432"]}
    for body, code, words in [
        ({"services": [good, bad_port]}, 400, "services[1].backends[0].port"),
        ({"services": [good, good]}, 400, "named twice"),
        ({"services": [good, shared]}, 400, "each of them needs sni names"),
        ({"services": []}, 400, "services"),
        ({"services": [good]}, 412, "stale"),
    ]:
        headers = {}
        if code == 412:
            assert admin.request("POST", "/api/v1/backends", {"host": "127.0.0.1", "port": 1}).code == 201
            headers = {"If-Match": '"1"'}
        version = admin.get("/api/v1/services").json["version"]
        entries = len(admin.get("/api/v1/history").json)
        r = admin.request("PATCH", "/api/v1/services", body, headers=headers)
        assert r.code == code and words in r.json["error"], (body, r.code, r.json)
        listed = admin.get("/api/v1/services").json
        assert [s["name"] for s in listed["services"]] == ["default"] and listed["version"] == version
        assert len(admin.get("/api/v1/history").json) == entries
    version = admin.request("PATCH", "/api/v1/services", {"services": [good]}).json["version"]
    r = admin.request("PATCH", "/api/v1/services", {"services": [good]})
    assert r.code == 200 and (r.json["unchanged"], r.json["version"]) == (["pg"], version)
    assert admin.get("/api/v1/history").json[0]["version"] == version


def test_the_batch_body_is_documented_as_validated():
    """The OpenAPI ServiceBatch component has the bounds PATCH /api/v1/services
    enforces (SERVICE_BATCH), its items the NewService component."""
    from lbproxy.model.service import SERVICE_BATCH
    from lbproxy.web.openapi import openapi_document

    doc = openapi_document()
    served = doc["components"]["schemas"]["ServiceBatch"]
    items = served["properties"]["services"]
    assert served["required"] == SERVICE_BATCH["required"]
    assert (items["minItems"], items["maxItems"]) == (1, SERVICE_BATCH["properties"]["services"]["maxItems"])
    assert items["items"] == {"$ref": "#/components/schemas/NewService"}
    assert doc["paths"]["/api/v1/services"]["patch"]["requestBody"]["content"]["application/json"]["schema"] \
        == {"$ref": "#/components/schemas/ServiceBatch"}
