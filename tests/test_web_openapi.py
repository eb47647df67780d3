"""
The OpenAPI document tells the truth about the Klein routes.
"""

from __future__ import annotations

import re

import pytest

from lbproxy.web.app import AdminApp
from lbproxy.web.openapi import openapi_document
from tests.webtools import Admin

#: Catch-all branches: extensions (documented by their owners) and the UI.
_BRANCHES = {"/api/v1/<string:name>", "/"}


def _routes():
    found = set()
    for rule in AdminApp.app.url_map.iter_rules():
        base = rule.rule.replace("/<path:__rest__>", "")
        if base in _BRANCHES or rule.rule in _BRANCHES:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found.add((path, method.lower()))
    return found


def test_every_route_is_documented_and_vice_versa():
    """Each Klein route and method is in openapi.json, and each documented operation has a route."""
    doc = openapi_document()
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert _routes() == documented


def test_document_is_valid_openapi():
    """The document validates as OpenAPI 3.0 and every $ref resolves."""
    from jsonschema import Draft4Validator

    doc = openapi_document()
    assert doc["openapi"].startswith("3.0")
    schemas = doc["components"]["schemas"]
    text = repr(doc)
    for ref in re.findall(r"#/components/schemas/(\w+)", text):
        assert ref in schemas
    for schema in schemas.values():
        Draft4Validator.check_schema({k: v for k, v in schema.items() if k != "nullable"})


@pytest.mark.parametrize("method, path, body, code", [
    ("GET", "/api/v1/backends", None, 200),
    ("POST", "/api/v1/backends", {"host": "127.0.0.1", "port": 9100}, 201),
    ("POST", "/api/v1/backends", {"host": "127.0.0.1", "port": 0}, 400),
    ("PATCH", "/api/v1/backends/nope", {"weight": 1}, 404),
    ("DELETE", "/api/v1/backends/b1", None, 200),
    ("PUT", "/api/v1/strategy", {"name": "zzz"}, 400),
    ("PUT", "/api/v1/settings", {"slow_start": 1}, 200),
    ("PATCH", "/api/v1/settings", {"slow_start": 1}, 200),
    ("GET", "/api/v1/config", None, 200),
    ("GET", "/api/v1/status", None, 200),
    ("GET", "/api/v1/stats", None, 200),
    ("GET", "/api/v1/strategies", None, 200),
    ("GET", "/api/v1/strategy", None, 200),
    ("GET", "/api/v1/settings", None, 200),
    ("GET", "/metrics", None, 200),
    ("GET", "/api/v1/openapi.json", None, 200),
])
def test_status_codes_used_are_documented(factories, method, path, body, code):
    """The status codes the API really answers with are the ones its document lists for that operation."""
    admin = Admin(factories)
    r = admin.request(method, path, body)
    assert r.code == code
    doc = openapi_document()
    template = re.sub(r"/backends/[^/]+$", "/backends/{backend_id}", path)
    assert str(code) in doc["paths"][template][method.lower()]["responses"]


def test_served_document(factories):
    """GET /api/v1/openapi.json serves the document."""
    admin = Admin(factories)
    assert admin.get("/api/v1/openapi.json").json == openapi_document()


@pytest.mark.parametrize("extension, name", [
    ("lbproxy.demo.api.DemoAPI", "demo"),
    ("lbproxy.control.cluster.NodesAPI", "nodes"),
])
def test_mounted_extensions_document_their_routes(factories, extension, name):
    """An extension mounted on the admin app adds each of its Klein routes
    and methods to the served openapi.json, and nothing it does not have."""
    from twisted.python.reflect import namedAny

    cls = namedAny(extension)
    admin = Admin(factories)
    admin.app.add_extension(name, cls.__new__(cls))
    served = admin.get("/api/v1/openapi.json").json
    prefix = f"/api/v1/{name}"
    documented = {
        (path[len(prefix):], method)
        for path, ops in served["paths"].items() if path.startswith(prefix)
        for method in ops
    }
    routes = set()
    for rule in cls.app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule).rstrip("/")
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((path, method.lower()))
    assert documented == routes
    assert {k: v for k, v in served["paths"].items() if not k.startswith(prefix)} == openapi_document()["paths"]


def _no_defaults(value):
    if isinstance(value, dict):
        return {k: _no_defaults(v) for k, v in value.items() if k != "default"}
    if isinstance(value, list):
        return [_no_defaults(v) for v in value]
    return value


@pytest.mark.parametrize("component, name", [
    ("HealthCheck", "HEALTH_CHECK"),
    ("Outlier", "OUTLIER"),
    ("NewBackend", "NEW_BACKEND"),
    ("BackendPatch", "BACKEND_PATCH"),
    ("StrategyChoice", "STRATEGY"),
    ("SettingsChange", "SETTINGS"),
    ("ConfigDocument", "CONFIG"),
])
def test_request_components_are_the_validation_schemas(component, name):
    """Each request body's component is the schema the API validates that
    body with, translated to OpenAPI 3.0 (only defaults and descriptions
    added), so documented bounds are enforced bounds."""
    from lbproxy.model import schema
    from lbproxy.web.oas30 import oas30

    served = openapi_document()["components"]["schemas"][component]
    expected = oas30(getattr(schema, name))
    strip = lambda d: {k: v for k, v in d.items() if k != "description"}  # noqa: E731
    assert strip(_no_defaults(served)) == strip(expected)
    check = openapi_document()["components"]["schemas"]["HealthCheck"]["properties"]
    assert (check["interval"]["minimum"], check["interval"]["maximum"]) == (0.1, 3600)
    assert check["interval"]["default"] == 1.0


def test_oas30_translates_2020_12():
    """The translation makes null types and enums nullable, numeric
    exclusive bounds boolean, type lists anyOf, and drops our own formats
    and messages."""
    from lbproxy.web.oas30 import oas30

    assert oas30({"type": ["number", "null"], "exclusiveMinimum": 0}) == {
        "type": "number", "nullable": True, "minimum": 0, "exclusiveMinimum": True,
    }
    assert oas30({"enum": [None, "v1"]}) == {"enum": [None, "v1"], "type": "string", "nullable": True}
    assert oas30({"type": ["string", "integer"], "format": "status-range"}) == {
        "anyOf": [{"type": "string"}, {"type": "integer"}],
    }
    assert oas30({"type": "string", "x-errors": {"pattern": "x"}, "format": "date-time"}) == {
        "type": "string", "format": "date-time",
    }
