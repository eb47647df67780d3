"""
The services' part of C{openapi.json}: C{/api/v1/services} and the
per-service routes, from the schemas of L{lbproxy.model.schema}.
"""

from __future__ import annotations

from typing import Any

from lbproxy.model import schema
from lbproxy.web.oas30 import oas30
from lbproxy.web.openapi_ops import _change, _errors, _ok, _read, _ref


_SERVICE_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


def _service_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """
    The services' components, from the schemas of L{lbproxy.model.schema}
    (the pool's fields as in C{ConfigDocument}).
    """
    fields = {k: v for k, v in document["properties"].items() if k != "version"}
    new = oas30(schema.NEW_SERVICE)
    new["properties"] = {**fields, **{k: oas30(v) for k, v in schema.SERVICE_FIELDS.items()},
                         "listen": oas30(schema.NEW_SERVICE["properties"]["listen"]),
                         "backends": {"type": "array", "maxItems": 10000, "items": _ref("NewBackend")}}
    patch = oas30(schema.SERVICE_PATCH)
    patch["properties"] = {k: v for k, v in new["properties"].items() if k != "name"}
    whole = {k: v for k, v in oas30(schema.SERVICE).items() if k != "required"}
    whole["properties"] = {**fields, **{k: oas30(v) for k, v in schema.SERVICE_FIELDS.items()}}
    return {
        "NewService": new,
        "ServicePatch": patch,
        "ServiceDocument": {**new, "required": ["listen"],
                            "description": "A whole service; its name, if given, must be the path's."},
        "Service": {
            "type": "object",
            "required": ["name", "listen", "backends", "strategy", "version"],
            "description": "A service as configured, where it listens now and its open connections.",
            "properties": {**whole["properties"], "listening": {"type": "array", "items": {"type": "string"}},
                           "active_connections": {"type": "integer"}, "version": {"type": "integer"},
                           "tls_certificates": {
                               "type": "array",
                               "description": "With tls: each certificate served now (never a key).",
                               "items": {"type": "object", "properties": {
                                   "subject": {"type": "string"}, "issuer": {"type": "string"},
                                   "names": {"type": "array", "items": {"type": "string"}},
                                   "fingerprint_sha256": {"type": "string"},
                                   "not_after": {"type": "number"}, "expires_in": {"type": "number"}}}}},
        },
        "ServiceList": {
            "type": "object",
            "required": ["version", "services"],
            "properties": {"version": {"type": "integer"},
                           "services": {"type": "array", "items": {"type": "object"}}},
        },
        "ServiceBatch": {
            "type": "object", "required": ["services"], "additionalProperties": False,
            "description": "Whole services by name (lbproxyctl apply): each replaces its namesake or is "
                           "added; services not named are left alone.",
            "properties": {"services": {"type": "array", "minItems": 1, "maxItems": 100,
                                        "items": _ref("NewService")}},
        },
        "ServiceBatchResult": {
            "type": "object", "required": ["created", "replaced", "unchanged", "services", "version"],
            "properties": {**{k: {"type": "array", "items": {"type": "string"}}
                              for k in ("created", "replaced", "unchanged")},
                           "services": {"type": "array", "items": _ref("Service")},
                           "version": {"type": "integer"}},
        },
        "ServiceRemoval": {
            "type": "object",
            "required": ["name", "state", "connections", "closed", "version"],
            "properties": {
                "name": {"type": "string"},
                "state": {"type": "string", "enum": ["removing", "removed"],
                          "description": "removing: its listeners stopped, its connections draining."},
                "connections": {"type": "integer"},
                "closed": {"type": "integer", "description": "Connections closed by force=true."},
                "version": {"type": "integer"},
            },
        },
    }


def _per_service(item: dict[str, Any]) -> dict[str, Any]:
    """
    A top-level path item as the same route of one service: a name
    parameter, and 404 for a service that does not exist.
    """
    out = {}
    for method, op in item.items():
        op = dict(op)
        op["parameters"] = [_SERVICE_NAME, *op.get("parameters", ())]
        op["responses"] = {**op["responses"], **_errors(404)}
        out[method] = op
    return out


def _service_paths(api: str) -> dict[str, Any]:
    force = {"name": "force", "in": "query", "required": False, "schema": {"type": "boolean"}}
    return {
        f"{api}/services": {
            "get": _read("Every service: config, where it listens, open connections.",
                         _ok("ServiceList", "The services and the document version.")),
            "post": _change("Add a service; its listen endpoints are bound before it is stored "
                            "(409: a port is taken; 400: an address is not on this host).", "NewService",
                            _ok("Service", "The new service; Location names it.", 201)),
            "patch": _change("Replace or add the named services as one version, checked whole (one "
                             "refused service changes nothing); one history entry. A batch that changes "
                             "nothing makes no version.", "ServiceBatch",
                             _ok("ServiceBatchResult", "What each named service became, and the version.")),
        },
        f"{api}/services/{{name}}": {
            "get": _read("One service.", _ok("Service", "The service."), 404, params=(_SERVICE_NAME,)),
            "put": _change("Replace a service (not its name); new endpoints are bound first.",
                           "ServiceDocument", _ok("Service", "The service now."), 404, params=(_SERVICE_NAME,)),
            "patch": _change("Change some fields of a service.", "ServicePatch",
                             _ok("Service", "The service now."), 404, params=(_SERVICE_NAME,)),
            "delete": _change("Remove a service: its listeners stop at once; its connections drain, "
                              "or close now with force=true.", None,
                              _ok("ServiceRemoval", "The service is removed or draining."), 404,
                              params=(_SERVICE_NAME, force)),
        },
        f"{api}/services/{{name}}/stats": {
            "get": _read("One service's totals and per-backend rates over a sliding window.",
                         _ok("Stats", "The service's stats.", etag=False), 404, params=(_SERVICE_NAME,)),
        },
        f"{api}/services/{{name}}/stats/history": {
            "get": _read("One service's connections per second, per backend and in total, one point a "
                         "second for the last five minutes.",
                         _ok("StatsHistory", "The service's rates, oldest first.", etag=False), 404,
                         params=(_SERVICE_NAME,)),
        },
    }
