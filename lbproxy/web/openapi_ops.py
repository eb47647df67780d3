"""
The vocabulary C{openapi.json}'s paths are written in: a reference to a
component, the answers of a read and of a change (with the errors each can
get, described once), and the common parameters (C{If-Match}, path ids).

One place for them, so every route is described the same way: a change
always lists 400/409/412/..., a read 401, an answer with config an ETag.
"""

from __future__ import annotations

from typing import Any

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


_STATUS_TEXT = {
    400: "Bad input; the body says what is wrong and nothing changed.",
    401: "A bearer token is configured and was missing or wrong.",
    403: "A change from another origin (CSRF protection).",
    404: "No such backend, service or endpoint (the top-level pool routes: no service named default, nor only one).",
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
