"""
The components of C{openapi.json}: request bodies from the schemas the API
validates with (L{lbproxy.model.schema}, with the defaults the value
objects really apply), and the shapes of the answers.
"""

from __future__ import annotations

from typing import Any

from lbproxy.model import schema
from lbproxy.model.checks import HealthCheck, Outlier
from lbproxy.model.schema import BACKEND_STATES
from lbproxy.web.oas30 import oas30
from lbproxy.web.openapi_ops import _ref


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


def component_schemas() -> dict[str, Any]:
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
                "active": {"type": ["string", "null"],
                           "description": "The main service's strategy; null when no service is the main one."},
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
