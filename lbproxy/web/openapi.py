"""
The OpenAPI 3 description of the admin API (C{GET /api/v1/openapi.json}).

The paths are plain dicts here, next to nothing else, so a test can compare
them with the Klein routes: every route is described and every description
has a route.  They are written with the operations of
L{lbproxy.web.openapi_ops}; the components (L{lbproxy.web.openapi_schemas})
are the schemas the API validates with, translated to OpenAPI 3.0; the
services' paths are L{lbproxy.web.openapi_services}'.
"""

from __future__ import annotations

from typing import Any

import lbproxy
from lbproxy.web.openapi_ops import _BACKEND_ID, _VERSION, _change, _errors, _ok, _read
from lbproxy.web.openapi_schemas import component_schemas


_FEED_TEXT = """Server-sent events.  Each event has an id; reconnect with Last-Event-ID (or
?last_event_id=) to get every config, service, backend and store event missed, from a bounded
history that only those enter (route, stats and lifecycle events are live only, so traffic
never pushes them out).  Types: snapshot (on connect: config,
backends, stats), reset (same, when the history after Last-Event-ID is gone), config (every
change, with the new version), backend (state or health change), route (every 100 ms while
routing happens: counts per backend, a sample of decisions, how many were not sampled, the
strategy), stats (about once a second), store (cluster mode: the config store became
available or unavailable, or the live nodes changed), lifecycle (a graceful stop: stopping,
then stopped with how many connections finished and were cut).  With several services, one feed carries
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
                         _ok("BackendList", "The backends and the config version."), 404),
            "post": _change("Add a backend; the next accepted connection may use it.", "NewBackend",
                            _ok("Backend", "The new backend, with its id; Location names it.", 201), 404),
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
            "get": _read("The active strategy.", _ok("ActiveStrategy", "The strategy."), 404),
            "put": _change("Switch strategy; connections in flight keep their backend.", "StrategyChoice",
                           _ok("ActiveStrategy", "The new strategy."), 404),
        },
        f"{api}/settings": {
            "get": _read("Pool-wide health check, outlier ejection, slow start and drain timeout.",
                         _ok("Settings", "The settings."), 404),
            "put": _change("Change pool-wide settings; fields not sent keep their value.",
                           "SettingsChange", _ok("Settings", "The new settings."), 404),
            "patch": _change("The same as PUT.", "SettingsChange", _ok("Settings", "The new settings."), 404),
        },
        f"{api}/config": {
            "get": _read("Export the main service's pool (default, or the only one): backends, strategy and "
                         "settings.  Every service: GET /api/v1/services.", _ok("Config", "The config."), 404),
            "put": _change("Import the main service's pool, validated before anything applies.",
                           "ConfigDocument", _ok("Config", "The config now in force."), 404),
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
            "schemas": component_schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }
