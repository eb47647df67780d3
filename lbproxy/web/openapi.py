"""
The OpenAPI 3 description of the admin API (C{GET /api/v1/openapi.json}).

Built from plain dicts here, next to nothing else, so a test can compare it
with the Klein routes: every route is described and every description has a
route.  The request bodies' components are the schemas the API validates
with (L{lbproxy.model.schema}), translated to OpenAPI 3.0.
"""

from __future__ import annotations

from typing import Any

import lbproxy
from lbproxy.model import schema
from lbproxy.model.config import BACKEND_STATES, HealthCheck, Outlier

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


_STATUS_TEXT = {
    400: "Bad input; the body says what is wrong and nothing changed.",
    401: "A bearer token is configured and was missing or wrong.",
    403: "A change from another origin (CSRF protection).",
    404: "No such backend or endpoint.",
    409: "The change raced another writer; nothing changed.  Read and retry.",
    412: "If-Match named a stale version; nothing changed.",
    413: "The body is too large.",
    415: "The body was not sent as application/json.",
    429: "Too many changes a second (--admin-write-rate; retry after Retry-After seconds), or, on the event feed, this client address already holds the most feeds one address may (8).",
    503: "Too many event feed subscribers; retry later.",
    507: "The config store could not make the change durable; nothing changed.",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": _STATUS_TEXT[code],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for code in codes
    }


def _ok(schema: str, description: str, code: int = 200, etag: bool = True) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    if etag:
        response["headers"] = {
            "ETag": {"description": 'The config version, quoted ("12").', "schema": {"type": "string"}}
        }
    return {str(code): response}


#: RFC 9110 If-Match: * or a list of entity-tags (or a bare version, as the first release took).
_ETAG = '(W/)?"[\\x21\\x23-\\x7e\\u0080-\\u00ff]*"'
_IF_MATCH_PATTERN = f'^[ \\t]*(\\*|[0-9]{{1,18}}|[ \\t,]*{_ETAG}([ \\t]*,[ \\t,]*{_ETAG})*[ \\t,]*)[ \\t]*$'
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": ('Apply only if the config version is still one of these entity-tags (the ETag '
                    'of a read, "12"; a list "12", "13"; * for any); strong comparison, so a weak '
                    'W/"12" never matches.  No match: 412.'),
    "schema": {"type": "string", "pattern": _IF_MATCH_PATTERN},
}
_BACKEND_ID = {
    "name": "backend_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "integer"},
}
_READ_ERRORS = (401,)
_CHANGE_ERRORS = (400, 401, 403, 409, 412, 413, 415, 429, 507)


def _change(summary: str, body: str | None, ok: dict[str, Any], *extra_errors: int,
            params: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [_IF_MATCH, *params],
        "responses": {**ok, **_errors(*sorted(set(_CHANGE_ERRORS + extra_errors)))},
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return op


def _read(summary: str, ok: dict[str, Any], *extra_errors: int,
          params: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**ok, **_errors(*_READ_ERRORS, *extra_errors)}}
    if params:
        op["parameters"] = list(params)
    return op


_STANDARD_FORMATS = {"int32", "int64", "float", "double", "byte", "binary", "date", "date-time", "password"}


def oas30(schema: Any) -> Any:
    """
    A JSON Schema 2020-12 of L{lbproxy.model.schema} in OpenAPI 3.0's
    dialect: C{null} in C{type} or C{enum} becomes C{nullable}, numeric
    C{exclusiveMinimum} the boolean form, a list of types C{anyOf}, and our
    own formats and C{x-errors} are left out (a generator would not know
    them; the descriptions say what they check).
    """
    if isinstance(schema, list):
        return [oas30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "x-errors" or (key == "format" and value not in _STANDARD_FORMATS):
            continue
        if key in ("properties", "$defs"):
            out[key] = {k: oas30(v) for k, v in value.items()}
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = oas30(value)
    types = schema.get("type")
    if isinstance(types, list):
        rest = [t for t in types if t != "null"]
        if len(rest) < len(types):
            out["nullable"] = True
        if len(rest) == 1:
            out["type"] = rest[0]
        else:
            del out["type"]
            out["anyOf"] = [{"type": t} for t in rest]
    enum = schema.get("enum")
    if enum is not None and "type" not in out:
        kinds = {type(v) for v in enum if v is not None}
        if kinds == {str}:
            out["type"] = "string"
        if None in enum:
            out["nullable"] = True
    return out


def _with_defaults(schema: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """
    C{schema} with each property's default taken from the value object, so
    the document shows the defaults the parsers really apply.
    """
    props = {
        k: ({**v, "default": defaults[k]} if k in defaults and defaults[k] is not None else v)
        for k, v in schema["properties"].items()
    }
    return {**schema, "properties": props}


def _schemas() -> dict[str, Any]:
    from lbproxy.web.openapi_services import _service_schemas

    check = _with_defaults(oas30(schema.HEALTH_CHECK), HealthCheck().to_json())
    outlier = _with_defaults(oas30(schema.OUTLIER), Outlier().to_json())
    backend_defaults = {"weight": 1, "state": "up"}
    backend_fields = _with_defaults(oas30(schema.NEW_BACKEND), backend_defaults)["properties"]
    backend_fields = {**backend_fields, "health_check": {**check, "nullable": True}}
    settings_fields = {
        **{k: oas30(v) for k, v in schema.SETTINGS_FIELDS.items()},
        "health_check": {**check, "nullable": True},
        "outlier": {**outlier, "nullable": True},
    }
    document = oas30(schema.CONFIG)
    document["properties"].update(settings_fields)
    document["properties"]["backends"]["items"]["properties"] = backend_fields
    document["description"] = ("The whole config.  On import, version is ignored (use If-Match); "
                               "the document becomes the next version.  Without health_check it "
                               "gets the default tcp check (the HealthCheck defaults); null: no checks.")
    patch = oas30(schema.BACKEND_PATCH)
    patch["properties"] = {
        k: {n: v for n, v in backend_fields[k].items() if n != "default"} for k in patch["properties"]
    }
    counters = {"type": "object", "additionalProperties": {"type": "number", "nullable": True}}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "HealthCheck": check,
        "Outlier": outlier,
        "NewBackend": {**oas30(schema.NEW_BACKEND), "properties": backend_fields},
        "BackendPatch": patch,
        "Backend": {
            "type": "object",
            "required": ["id", "host", "port", "weight", "state", "admin_state", "address", "stats", "version"],
            "description": "A backend as configured, with its runtime state (state: up, down, "
                           "draining, disabled or removing), health and live counters.",
            "properties": {
                **backend_fields,
                "state": {"type": "string"},
                "admin_state": {"type": "string", "enum": list(BACKEND_STATES)},
                "address": {"type": "string"},
                "health": {"type": "object", "nullable": True},
                "effective_weight": {"type": "number"},
                "stats": counters,
                "version": {"type": "integer"},
            },
        },
        "BackendList": {
            "type": "object",
            "required": ["version", "backends"],
            "properties": {
                "version": {"type": "integer"},
                "backends": {"type": "array", "items": {"type": "object"}},
            },
        },
        "Removal": {
            "type": "object",
            "required": ["id", "state", "connections", "closed", "version"],
            "properties": {
                "id": {"type": "string"},
                "state": {"type": "string", "enum": ["removing", "removed"],
                          "description": "removing: draining its open connections first."},
                "connections": {"type": "integer", "description": "Connections open at removal."},
                "closed": {"type": "integer", "description": "Connections closed by force=true."},
                "version": {"type": "integer"},
            },
        },
        "StrategyChoice": oas30(schema.STRATEGY),
        "ActiveStrategy": {
            "type": "object",
            "required": ["name", "options", "version"],
            "properties": {"name": {"type": "string"}, "options": {"type": "object"}, "version": {"type": "integer"}},
        },
        "StrategyList": {
            "type": "object",
            "required": ["strategies", "active"],
            "properties": {
                "active": {"type": "string"},
                "strategies": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "description", "options_schema", "uses_weights"],
                        "properties": {
                            "name": {"type": "string"},
                            "description": {"type": "string"},
                            "options_schema": {"type": "object"},
                            "uses_weights": {"type": "boolean",
                                             "description": "false: its choices ignore backend weights."},
                        },
                    },
                },
            },
        },
        "SettingsChange": oas30(schema.SETTINGS) | {"properties": settings_fields},
        "Settings": {
            "type": "object",
            "required": ["version", "health_check", "outlier", "slow_start", "drain_timeout"],
            "properties": {**settings_fields, "version": {"type": "integer"}},
        },
        "ConfigDocument": document,
        "Config": {**document, "required": ["version", "backends", "strategy", *schema.SETTINGS_FIELDS],
                   "description": "The config in force, at its version."},
        **_service_schemas(document),
        "Stats": {
            "type": "object",
            "required": ["time", "window", "totals", "backends"],
            "description": "Counters and per-second rates over the sliding window: each counter "
                           "NAME has NAME_per_second beside it.",
            "properties": {
                "time": {"type": "number"},
                "window": {"type": "number", "description": "Seconds the rates cover."},
                "totals": counters,
                "backends": {"type": "object", "additionalProperties": counters},
            },
        },
        "StatsHistory": {
            "type": "object",
            "required": ["time", "interval", "keep", "points"],
            "properties": {
                "time": {"type": "number"},
                "interval": {"type": "number", "description": "Seconds between points."},
                "keep": {"type": "number", "description": "Seconds of points kept."},
                "points": {"type": "array", "items": {
                    "type": "object",
                    "required": ["time", "accepted", "backends"],
                    "properties": {
                        "time": {"type": "number"},
                        "accepted": {"type": "number", "description": "Accepted connections per second."},
                        "backends": {"type": "object", "additionalProperties": {"type": "number"},
                                     "description": "Connections per second by backend id."},
                    },
                }},
            },
        },
        "HistoryList": {
            "type": "array",
            "description": "The kept versions (--history, default 100), newest first.",
            "items": _ref("HistoryMeta"),
        },
        "HistoryMeta": {
            "type": "object",
            "required": ["version", "time", "by", "summary"],
            "properties": {
                "version": {"type": "integer"},
                "time": {"type": "number", "description": "When it was stored (Unix seconds)."},
                "by": {"type": "string", "description": "The token's label and X-LBProxy-Client "
                       "(ui, cli), e.g. alice/ui; api when neither is known; in cluster mode "
                       "@node after it."},
                "summary": {"type": "string", "description": "One line saying what changed."},
            },
        },
        "HistoryEntry": {
            "type": "object",
            "required": ["version", "time", "by", "summary", "document", "previous", "diff"],
            "properties": {
                "version": {"type": "integer"},
                "time": {"type": "number"},
                "by": {"type": "string"},
                "summary": {"type": "string"},
                "document": {"type": "object", "description": "The config document of that version."},
                "previous": {"type": "integer", "nullable": True,
                             "description": "The version the diff is against (null: none kept)."},
                "diff": {"type": "array", "items": {
                    "type": "object",
                    "required": ["path", "old", "new"],
                    "description": "One changed member (JSON Pointer path; list members with an "
                                   "id by id); old or new is null when it was added or removed.",
                    "properties": {"path": {"type": "string"}, "old": {}, "new": {}},
                }},
            },
        },
        "Status": {
            "type": "object",
            "required": ["lbproxy", "uptime", "config_version"],
            "description": "Process status; the store and cluster add their own fields.",
            "properties": {
                "lbproxy": {"type": "string"},
                "node": {"type": "string", "nullable": True},
                "started": {"type": "number"},
                "uptime": {"type": "number"},
                "config_version": {"type": "integer"},
                "strategy": {"type": "string"},
                "backends": {"type": "integer"},
                "active_connections": {"type": "integer"},
                "feed_subscribers": {"type": "integer"},
                "auth": {
                    "type": "object",
                    "description": "Whether changes need a bearer token, and whether reads do not.",
                    "properties": {"token": {"type": "boolean"}, "open_reads": {"type": "boolean"}},
                },
                "store": {"type": "object"},
            },
        },
    }


_FEED_TEXT = """Server-sent events.  Each event has an id; reconnect with Last-Event-ID (or
?last_event_id=) to get every config, backend and store event missed, from a bounded history
that only those enter (route and stats events are live only, so traffic never pushes them
out).  Types: snapshot (on connect: config,
backends, stats), reset (same, when the history after Last-Event-ID is gone), config (every
change, with the new version), backend (state or health change), route (every 100 ms while
routing happens: counts per backend, a sample of decisions, how many were not sampled, the
strategy), stats (about once a second), store (cluster mode: the config store became
available or unavailable, or the live nodes changed).  With several services, one feed carries
them all: route and stats events come for every service, one of each per service and tick,
each naming it in its service field, as backend events do; config is the main service's
change, and service (kept, like config) is another service added, changed or removing, with
its config.  The snapshot is of the main service; another's starting state is
GET /api/v1/services/{name} and its /stats.  ?types=config,backend limits the types.  Comment
lines every 15 s keep proxies from closing an idle feed.  A client that stops reading is
disconnected once its bounded buffer is full.  One client address holds at most 8 feeds (429
past that); a full feed (100) makes room by evicting the subscriber furthest behind, or the
oldest feed of the address holding the most, and answers 503 only when it cannot."""


def openapi_document() -> dict[str, Any]:
    """
    The OpenAPI 3.0 document of the admin API.
    """
    from lbproxy.web.openapi_services import _per_service, _service_paths

    api = "/api/v1"
    paths: dict[str, Any] = {
        f"{api}/backends": {
            "get": _read("Every backend with state, health and counters.",
                         _ok("BackendList", "The backends and the config version.")),
            "post": _change("Add a backend; the next accepted connection may use it.", "NewBackend",
                            _ok("Backend", "The new backend, with its id; Location names it.", 201)),
        },
        f"{api}/backends/{{backend_id}}": {
            "get": _read("One backend.", _ok("Backend", "The backend."), 404, params=(_BACKEND_ID,)),
            "patch": _change("Change weight, state, PROXY protocol, connection limit or health check.",
                             "BackendPatch", _ok("Backend", "The changed backend."), 404,
                             params=(_BACKEND_ID,)),
            "delete": _change(
                "Remove a backend: no new connections at once; open ones drain, or close now with force=true.",
                None, _ok("Removal", "The backend is removed or draining."), 404,
                params=(_BACKEND_ID, {"name": "force", "in": "query", "required": False,
                                      "schema": {"type": "boolean"}}),
            ),
        },
        f"{api}/strategies": {
            "get": _read("Every strategy plugin found, with its options schema.",
                         _ok("StrategyList", "The strategies.", etag=False)),
        },
        f"{api}/strategy": {
            "get": _read("The active strategy.", _ok("ActiveStrategy", "The strategy.")),
            "put": _change("Switch strategy; connections in flight keep their backend.", "StrategyChoice",
                           _ok("ActiveStrategy", "The new strategy.")),
        },
        f"{api}/settings": {
            "get": _read("Pool-wide health check, outlier ejection, slow start and drain timeout.",
                         _ok("Settings", "The settings.")),
            "put": _change("Change pool-wide settings; fields not sent keep their value.",
                           "SettingsChange", _ok("Settings", "The new settings.")),
            "patch": _change("The same as PUT.", "SettingsChange", _ok("Settings", "The new settings.")),
        },
        f"{api}/config": {
            "get": _read("Export the whole config document.", _ok("Config", "The config.")),
            "put": _change("Import a whole config document, validated before anything applies.",
                           "ConfigDocument", _ok("Config", "The config now in force.")),
        },
        **_service_paths(api),
        f"{api}/history": {
            "get": _read("The config history: who changed what, newest first.",
                         _ok("HistoryList", "The kept versions.", etag=False), 404),
        },
        f"{api}/history/{{version}}": {
            "get": _read("One version's document and its diff against the version before.",
                         _ok("HistoryEntry", "The version.", etag=False), 404, params=(_VERSION,)),
        },
        f"{api}/history/{{version}}/rollback": {
            "post": _change("Put an old version's document back in force as a new version "
                            "(history is never rewritten).", None,
                            _ok("Config", "The config now in force."), 404, params=(_VERSION,)),
        },
        f"{api}/status": {
            "get": _read("Version, uptime, node and store status.", _ok("Status", "The status.", etag=False)),
        },
        f"{api}/stats": {
            "get": _read("Totals and per-backend rates over a sliding window.",
                         _ok("Stats", "The stats.", etag=False)),
        },
        f"{api}/stats/history": {
            "get": _read("Connections per second, per backend and in total, one point a second "
                         "for the last five minutes (what the UI's chart starts from).",
                         _ok("StatsHistory", "The rates, oldest first.", etag=False)),
        },
        f"{api}/events": {
            "get": {
                "summary": "The live event feed.",
                "description": _FEED_TEXT,
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
                    {"name": "types", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "An endless text/event-stream.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    **_errors(400, 401, 429, 503),
                },
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics, per backend labelled backend and address.",
                "responses": {
                    "200": {"description": "Prometheus text exposition.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_errors(401),
                },
            },
        },
        f"{api}/openapi.json": {
            "get": {
                "summary": "This document.",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.0.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            },
        },
    }
    for path in ("backends", "backends/{backend_id}", "strategy", "settings"):
        paths[f"{api}/services/{{name}}/{path}"] = _per_service(paths[f"{api}/{path}"])
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "lbproxy admin API",
            "version": lbproxy.__version__,
            "description": (
                "Change a running lbproxy and watch it work.  Every response carrying config "
                "has its version in the body and as ETag; send If-Match to change only that "
                "version.  Changes need a JSON body (Content-Type: application/json), come "
                "from the same origin, and carry 'Authorization: Bearer <token>' when a token "
                "is configured (reads too, unless the server lets them through).  Errors are "
                "JSON {\"error\": \"...\"}.  Other modules mount routes under /api/v1/<name>/."
            ),
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }
