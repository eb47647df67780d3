"""
JSON in and out of the admin API, and the errors it answers with.

Every refusal is an L{ApiError} that becomes a C{4xx} JSON body
C{{"error": "..."}}; the app maps the core's exceptions onto one here, so
the rules for what an operator sees live in one place.
"""

from __future__ import annotations

import json
from typing import Any

#: Largest request body the API reads; config documents are far smaller.
MAX_BODY = 1024 * 1024
#: Deepest nesting of arrays and objects a body may have; a config is a few
#: levels deep, and deeper input would only make the code that walks it recurse.
MAX_DEPTH = 32


class ApiError(Exception):
    """
    A request the API refuses, with the HTTP status and what to tell the
    client.

    @ivar code: the HTTP status.
    @ivar message: the C{error} text.
    @ivar extra: more fields for the JSON body.
    @ivar headers: more response headers.
    """

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


def dumps(value: Any) -> bytes:
    """
    Encode a response body; NaN and infinities are not JSON, so refuse them
    here rather than send a body clients cannot parse.
    """
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode("utf-8")


def send_json(request: Any, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return dumps(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Last-wins would let {"weight": 1, "weight": 100} mean what a reviewer
    # reading the first key does not expect.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"the key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def _depth(value: Any) -> int:
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads(text: str) -> Any:
    """
    Parse a request body: strict JSON (no NaN, no duplicate keys) at most
    L{MAX_DEPTH} levels deep.

    @raise ApiError: 400 naming what is wrong.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except _DuplicateKey as e:
        raise ApiError(400, f"the body is ambiguous: {e}") from None
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, f"the body is nested more than {MAX_DEPTH} levels deep") from None
    if _depth(value) > MAX_DEPTH:
        raise ApiError(400, f"the body is nested more than {MAX_DEPTH} levels deep")
    return value


def is_json_type(content_type: bytes | None) -> bool:
    """
    Whether a C{Content-Type} header names JSON (C{application/json} or a
    C{+json} type, with any parameters).
    """
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def read_json(request: Any) -> Any:
    """
    The request body as JSON.

    @raise ApiError: 415 unless the body is declared JSON, 413 when too
        large, 400 when empty or not valid UTF-8 JSON.
    """
    if not is_json_type(request.getHeader(b"content-type")):
        raise ApiError(415, "the body must be JSON, sent with Content-Type: application/json")
    content = request.content
    content.seek(0)
    raw = content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        raise ApiError(400, "the body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not valid UTF-8") from None
    return loads(text)
