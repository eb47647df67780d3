"""
The admin API's endpoints through StubTreq: reads, every change, every bad
input, versions and concurrent edits.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer

from lbproxy.control.store.memory import MemoryStore
from lbproxy.model.errors import StoreError
from tests.webtools import Admin, settle


@pytest.fixture
def admin(factories):
    return Admin(factories)


def json_headers(**extra):
    return {"Content-Type": "application/json", **extra}


# Backends ------------------------------------------------------------------


def test_list_backends(admin):
    """GET /backends lists every backend with state, health and counters, and the version as body field and ETag."""
    r = admin.get("/api/v1/backends")
    assert r.code == 200
    assert r.json["version"] == 1
    assert r.header("ETag") == '"1"'
    ids = [b["id"] for b in r.json["backends"]]
    assert ids == ["b1", "b2"]
    b2 = r.json["backends"][1]
    assert b2["address"] == "127.0.0.1:9002" and b2["weight"] == 2
    assert b2["state"] == "up" and b2["health"] is not None
    assert b2["stats"]["active"] == 0


def test_add_backend(admin):
    """POST /backends answers 201 with the new backend and its id, and the next routing decision can pick it."""
    r = admin.request("POST", "/api/v1/backends", {"host": "127.0.0.1", "port": 9003, "weight": 3})
    assert r.code == 201
    assert r.json["id"] == "b3"
    assert r.json["weight"] == 3 and r.json["version"] == 2
    assert r.header("Location") == "/api/v1/backends/b3"
    assert r.header("ETag") == '"2"'
    assert admin.balancer.config.backend("b3") is not None
    assert admin.store.config.version == 2
    picked = {admin.balancer.route(("10.0.0.1", 1)).id for _ in range(6)}
    assert "b3" in picked


def test_add_backend_with_own_id(admin):
    """A new backend may name its own id."""
    r = admin.request("POST", "/api/v1/backends", {"id": "web-1", "host": "example.com", "port": 80})
    assert r.code == 201 and r.json["id"] == "web-1"
    assert admin.get("/api/v1/backends/web-1").json["host"] == "example.com"


@pytest.mark.parametrize("body, words", [
    ({"host": "127.0.0.1", "port": 70000}, "port"),
    ({"host": "127.0.0.1", "port": 0}, "port"),
    ({"host": "127.0.0.1", "port": "80"}, "integer"),
    ({"host": "127.0.0.1"}, "port"),
    ({"host": "bad host!", "port": 80}, "host"),
    ({"host": "127.0.0.1", "port": 80, "weight": -1}, "weight"),
    ({"host": "127.0.0.1", "port": 80, "weight": True}, "weight"),
    ({"host": "127.0.0.1", "port": 80, "colour": "red"}, "colour"),
    ({"host": "127.0.0.1", "port": 9001}, "already exists"),
    ({"id": "b1", "host": "127.0.0.1", "port": 9005}, "already exists"),
    ([1, 2], "object"),
])
def test_add_backend_bad_input(admin, body, words):
    """Each bad backend gets 400 with an error that names the problem, and the config does not change."""
    r = admin.request("POST", "/api/v1/backends", body)
    assert r.code == 400
    assert words in r.json["error"]
    assert admin.balancer.config.version == 1
    assert len(admin.balancer.config.backends) == 2


@pytest.mark.parametrize("raw, ctype, code", [
    (b"{not json", "application/json", 400),
    (b"", "application/json", 400),
    (b"\xff\xfe", "application/json", 400),
    (b'{"host": "127.0.0.1", "port": NaN}', "application/json", 400),
    (b'{"host": "127.0.0.1", "port": 9010}', "text/plain", 415),
    (b"host=127.0.0.1&port=9010", "application/x-www-form-urlencoded", 415),
])
def test_malformed_bodies(admin, raw, ctype, code):
    """Malformed JSON, empty bodies, NaN and non-JSON content types are refused with a JSON error and change nothing."""
    r = admin.request("POST", "/api/v1/backends", raw=raw, headers={"Content-Type": ctype})
    assert r.code == code
    assert r.header("Content-Type") == "application/json"
    assert r.json["error"]
    assert admin.balancer.config.version == 1


def test_body_too_large(admin):
    """A body over the limit gets 413."""
    r = admin.request("PUT", "/api/v1/config", raw=b" " * (1024 * 1024 + 10) + b"{}",
                      headers=json_headers())
    assert r.code == 413


def test_get_backend_and_unknown_id(admin):
    """GET /backends/{id} shows one backend; an unknown id is 404 JSON."""
    r = admin.get("/api/v1/backends/b2")
    assert r.code == 200 and r.json["id"] == "b2" and r.json["version"] == 1
    r = admin.get("/api/v1/backends/nope")
    assert r.code == 404 and "nope" in r.json["error"]


def test_patch_backend(admin):
    """PATCH changes weight and state; the balancer uses the change at once."""
    r = admin.request("PATCH", "/api/v1/backends/b1", {"weight": 5})
    assert r.code == 200 and r.json["weight"] == 5 and r.json["version"] == 2
    r = admin.request("PATCH", "/api/v1/backends/b1", {"state": "disabled"})
    assert r.code == 200 and r.json["state"] == "disabled"
    assert {admin.balancer.route(("10.0.0.1", 1)).id for _ in range(6)} == {"b2"}
    r = admin.request("PATCH", "/api/v1/backends/b1",
                      {"proxy_protocol": "v2", "max_connections": 10,
                       "health_check": {"type": "http", "path": "/health"}})
    assert r.code == 200
    assert r.json["proxy_protocol"] == "v2" and r.json["health_check"]["path"] == "/health"


@pytest.mark.parametrize("path, body, code, words", [
    ("/api/v1/backends/nope", {"weight": 2}, 404, "nope"),
    ("/api/v1/backends/b1", {"state": "sleeping"}, 400, "state"),
    ("/api/v1/backends/b1", {"weight": "heavy"}, 400, "weight"),
    ("/api/v1/backends/b1", {"port": 1234}, 400, "port"),
    ("/api/v1/backends/b1", {}, 400, "at least one"),
    ("/api/v1/backends/b1", {"health_check": {"type": "ping"}}, 400, "type"),
])
def test_patch_bad_input(admin, path, body, code, words):
    """Bad PATCHes are refused with the right status and a message; nothing changes."""
    r = admin.request("PATCH", path, body)
    assert r.code == code
    assert words in r.json["error"]
    assert admin.balancer.config.version == 1


def test_delete_without_connections(admin):
    """DELETE of an idle backend removes it at once."""
    r = admin.request("DELETE", "/api/v1/backends/b1")
    assert r.code == 200
    assert r.json == {"id": "b1", "state": "removed", "connections": 0, "closed": 0, "version": 2}
    assert admin.get("/api/v1/backends/b1").code == 404
    assert admin.request("DELETE", "/api/v1/backends/b1").code == 404


class FakeConnection:
    """Stands in for a relayed connection: records aborts."""

    def __init__(self):
        self.bytes_up = self.bytes_down = 0
        self.aborted = None

    def abort(self, why):
        self.aborted = why


def _open(admin, backend_id):
    from lbproxy.policy.pool import AccessRecord

    b = admin.balancer
    assert b.admit()
    cand = next(c for c in b.pool.candidates if c.id == backend_id)
    conn = FakeConnection()
    b.connection_opened(cand, conn, 0.001)
    return cand, conn, AccessRecord("10.0.0.1:5", backend_id, 0, 0, 1.0, "ok")


def test_delete_drains(admin):
    """DELETE of a busy backend stops new connections at once and keeps the open one until it ends."""
    cand, conn, record = _open(admin, "b1")
    r = admin.request("DELETE", "/api/v1/backends/b1")
    assert r.code == 200 and r.json["state"] == "removing" and r.json["connections"] == 1
    assert conn.aborted is None
    assert {admin.balancer.route(("10.0.0.1", 1)).id for _ in range(4)} == {"b2"}
    assert admin.get("/api/v1/backends/b1").json["state"] == "removing"
    admin.balancer.connection_closed(cand, conn, record)
    assert admin.get("/api/v1/backends/b1").code == 404


def test_delete_force(admin):
    """DELETE ?force=true closes the backend's connections now."""
    _, conn, _ = _open(admin, "b1")
    r = admin.request("DELETE", "/api/v1/backends/b1?force=true")
    assert r.code == 200 and r.json["closed"] == 1
    assert conn.aborted


def test_delete_bad_force(admin):
    """A force value that is not a boolean is 400 and removes nothing."""
    r = admin.request("DELETE", "/api/v1/backends/b1?force=maybe")
    assert r.code == 400
    assert admin.balancer.config.backend("b1") is not None


# Strategies ------------------------------------------------------------------


def test_list_strategies(admin, factories):
    """GET /strategies lists every plugin with its description and options schema."""
    r = admin.get("/api/v1/strategies")
    assert r.code == 200
    names = [s["name"] for s in r.json["strategies"]]
    assert names == sorted(factories)
    for s in r.json["strategies"]:
        assert s["description"] and isinstance(s["options_schema"], dict)
    assert r.json["active"] == "round-robin"


def test_get_and_put_strategy(admin, factories):
    """PUT /strategy switches the strategy the next connection uses; GET shows it with the version."""
    r = admin.get("/api/v1/strategy")
    assert r.json == {"name": "round-robin", "options": {}, "version": 1}
    other = next(n for n in factories if n != "round-robin")
    r = admin.request("PUT", "/api/v1/strategy", {"name": other})
    assert r.code == 200 and r.json["name"] == other and r.json["version"] == 2
    assert admin.balancer.config.strategy.name == other
    assert admin.balancer.strategy is not None


@pytest.mark.parametrize("body, words", [
    ({"name": "no-such-strategy"}, "unknown strategy"),
    ({"name": "round-robin", "options": {"bogus": 1}}, "options"),
    ({"name": 5}, "name"),
    ({"options": {}}, "name"),
    ({"name": "round-robin", "extra": 1}, "extra"),
])
def test_put_strategy_bad(admin, body, words):
    """Unknown strategies and invalid options are 400 with a message; the strategy stays."""
    r = admin.request("PUT", "/api/v1/strategy", body)
    assert r.code == 400
    assert words in r.json["error"]
    assert admin.balancer.config.strategy.name == "round-robin"
    assert admin.balancer.config.version == 1


# Settings, config, status ---------------------------------------------------------


def test_settings(admin):
    """GET/PUT /settings read and change the pool-wide settings, keeping fields not sent."""
    r = admin.get("/api/v1/settings")
    assert r.code == 200 and r.json["slow_start"] == 0 and r.json["version"] == 1
    r = admin.request("PUT", "/api/v1/settings", {"slow_start": 5, "drain_timeout": 30})
    assert r.code == 200 and r.json["slow_start"] == 5 and r.json["drain_timeout"] == 30
    assert r.json["outlier"] == admin.get("/api/v1/settings").json["outlier"]
    assert admin.balancer.config.slow_start == 5
    r = admin.request("PUT", "/api/v1/settings", {"slow_start": -1})
    assert r.code == 400 and "slow_start" in r.json["error"]
    r = admin.request("PUT", "/api/v1/settings", {"backends": []})
    assert r.code == 400
    assert admin.balancer.config.version == 2


def test_config_export_import(admin):
    """GET /config exports the document; PUT imports one as the next version; a bad one changes nothing."""
    doc = admin.get("/api/v1/config").json
    assert doc["version"] == 1 and len(doc["backends"]) == 2
    doc["backends"] = doc["backends"][:1]
    doc["strategy"] = {"name": "round-robin", "options": {}}
    r = admin.request("PUT", "/api/v1/config", doc)
    assert r.code == 200 and r.json["version"] == 2
    assert [b.id for b in admin.balancer.config.backends] == ["b1"]
    bad = dict(doc, strategy={"name": "nope"})
    r = admin.request("PUT", "/api/v1/config", bad)
    assert r.code == 400 and "nope" in r.json["error"]
    twice = dict(doc, backends=doc["backends"] * 2)
    assert admin.request("PUT", "/api/v1/config", twice).code == 400
    assert admin.balancer.config.version == 2


def test_status(factories):
    """GET /status reports version, uptime and node, plus what status providers add."""
    admin = Admin(factories, node="n1", status_providers=(lambda: {"cluster": {"members": 3}},))
    admin.app.add_status_provider(lambda: defer.succeed({"extra": True}))
    admin.clock.advance(5)
    r = admin.get("/api/v1/status")
    assert r.code == 200
    assert r.json["node"] == "n1" and r.json["uptime"] == 5
    assert r.json["config_version"] == 1
    assert r.json["cluster"] == {"members": 3} and r.json["extra"] is True
    assert r.json["store"] == {"kind": "MemoryStore"}
    assert r.json["auth"] == {"token": False, "open_reads": True}


def test_status_from_store(factories):
    """A store with a status() method reports through GET /status."""

    class Store(MemoryStore):
        def status(self):
            return {"available": False, "kind": "file"}

    admin = Admin(factories, store=None)
    admin.controller.store = Store(admin.balancer.config)
    assert admin.get("/api/v1/status").json["store"] == {"available": False, "kind": "file"}


# Versions and concurrency -------------------------------------------------------


def test_if_match(admin):
    """A change with a stale If-Match gets 412 and changes nothing; the current one succeeds."""
    r = admin.request("PATCH", "/api/v1/backends/b1", {"weight": 4}, headers={"If-Match": '"0"'})
    assert r.code == 412 and r.json["current_version"] == 1
    assert admin.balancer.config.backend("b1").weight == 1
    r = admin.request("PATCH", "/api/v1/backends/b1", {"weight": 4}, headers={"If-Match": '"1"'})
    assert r.code == 200 and r.header("ETag") == '"2"'
    r = admin.request("PATCH", "/api/v1/backends/b1", {"weight": 4}, headers={"If-Match": "yesterday"})
    assert r.code == 400


def test_concurrent_edits(admin):
    """Two changes sent at once with the same If-Match: exactly one wins, the other gets 412."""
    store = admin.store
    gate = defer.Deferred()
    real_save = store.save

    def slow_save(config, expected):
        d = defer.Deferred()
        gate.addCallback(lambda _: real_save(config, expected).chainDeferred(d))
        return d

    store.save = slow_save
    s = admin.stub
    d1 = s.request("PATCH", "http://admin.test/api/v1/backends/b1", data=b'{"weight": 7}',
                   headers=json_headers(**{"If-Match": '"1"'}))
    d2 = s.request("PATCH", "http://admin.test/api/v1/backends/b1", data=b'{"state": "disabled"}',
                   headers=json_headers(**{"If-Match": '"1"'}))
    s.flush()
    gate.callback(None)
    codes = sorted([settle(s, d1).code, settle(s, d2).code])
    assert codes == [200, 412]
    b1 = admin.balancer.config.backend("b1")
    assert admin.balancer.config.version == 2
    assert (b1.weight, b1.state) in ((7, "up"), (1, "disabled"))


def test_store_failure(admin):
    """When the store cannot save, the answer is 507 and the balancer keeps the old config."""
    admin.store.save = lambda config, expected: defer.fail(StoreError("disk full"))
    r = admin.request("POST", "/api/v1/backends", {"host": "127.0.0.1", "port": 9009})
    assert r.code == 507 and "disk full" in r.json["error"]
    assert admin.balancer.config.version == 1


def test_store_conflict_without_if_match(admin):
    """A conflict in the store (another writer) without If-Match is 409."""
    from lbproxy.model.errors import VersionConflict

    admin.store.save = lambda config, expected: defer.fail(VersionConflict(expected, expected + 1))
    r = admin.request("PATCH", "/api/v1/backends/b1", {"weight": 3})
    assert r.code == 409 and "stale" in r.json["error"]


def test_unexpected_failure_is_json_500(admin):
    """A bug in the server is a 500 JSON error, never a traceback page."""
    admin.balancer.backends_view = lambda: 1 / 0
    r = admin.get("/api/v1/backends")
    assert r.code == 500
    assert r.json == {"error": "internal error; the server log has the details"}
    assert b"Traceback" not in r.body


# Routing edge cases ---------------------------------------------------------------


def test_unknown_paths_and_methods(admin):
    """Unknown endpoints are 404 JSON; wrong methods are 405 JSON with Allow."""
    r = admin.get("/api/v1/nothing")
    assert r.code == 404 and r.json["error"]
    r = admin.request("POST", "/api/v1/nothing/deeper", {"a": 1})
    assert r.code == 404
    r = admin.request("PUT", "/api/v1/stats", {"a": 1})
    assert r.code == 405 and "GET" in r.header("Allow")
    r = admin.request("DELETE", "/api/v1/backends")
    assert r.code == 405 and r.json["error"]


def test_ui_missing(admin):
    """Without a static directory, / says the UI is not installed (JSON 404, not a traceback)."""
    r = admin.get("/")
    assert r.code == 404 and "not installed" in r.json["error"]


def test_static_dir_finds_checkout():
    """static_dir() finds the checkout's static/ when the package has none."""
    from pathlib import Path

    import lbproxy
    from lbproxy.web import static_dir

    root = Path(lbproxy.__file__).resolve().parent
    expected = root / "static" if (root / "static").is_dir() else root.parent / "static"
    assert static_dir() == expected
