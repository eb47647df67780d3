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
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
