"""
A small synchronous client of the admin API (C{urllib.request}): one
request, one answer, and the two ways it can fail that a script must tell
apart (L{Refused}: the server said no; L{Unreachable}: no server answered).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator

API = "/api/v1"
CLIENT = "cli"


class Refused(Exception):
    """
    The server answered with an error status.

    @ivar status: the HTTP status.
    @ivar message: the server's C{error} text (or the raw body).
    @ivar body: the parsed JSON body, if any.
    """

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = body


class Unreachable(Exception):
    """No answer: refused connection, unknown host, timeout, or not HTTP."""


@dataclass
class Answer:
    status: int
    body: Any
    etag: str | None

    @property
    def version(self) -> int | None:
        """The config version of the ETag (C{"12"} -> 12), if it has one."""
        tag = (self.etag or "").strip()
        if tag.startswith('"') and tag.endswith('"') and tag[1:-1].isdigit():
            return int(tag[1:-1])
        if isinstance(self.body, dict) and isinstance(self.body.get("version"), int):
            return self.body["version"]
        return None


def etag(version: int | str) -> str:
    return f'"{version}"'


class AdminClient:
    """
    The admin API at C{base} (C{http://HOST:PORT}), with an optional bearer
    token; every request says C{X-LBProxy-Client: cli} so the history
    records who made a change.
    """

    def __init__(self, base: str, token: str | None = None, timeout: float = 10.0) -> None:
        if "://" not in base:
            base = "http://" + base
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None, if_match: int | str | None = None,
                 accept: str = "application/json") -> urllib.request.Request:
        headers = {"X-LBProxy-Client": CLIENT, "Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if if_match is not None:
            headers["If-Match"] = etag(if_match)
        return urllib.request.Request(self.base + API + path, data=data, headers=headers, method=method)

    def call(self, method: str, path: str, body: Any = None, if_match: int | str | None = None) -> Answer:
        """
        @raise Refused: for a 4xx or 5xx answer.
        @raise Unreachable: when nothing answered.
        """
        request = self._request(method, path, body, if_match)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
                status, tag = response.status, response.headers.get("ETag")
        except urllib.error.HTTPError as e:
            raw = e.read()
            parsed = _parse(raw)
            message = parsed.get("error") if isinstance(parsed, dict) else None
            if not isinstance(message, str):
                raise self._not_lbproxy(e.code, raw) from None
            raise Refused(e.code, message, parsed) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise Unreachable(f"cannot reach the admin API at {self.base}: {_reason(e)}") from None
        parsed = _parse(raw)
        if raw.strip() and not isinstance(parsed, (dict, list)):
            raise self._not_lbproxy(status, raw)
        return Answer(status, parsed, tag)

    def _not_lbproxy(self, status: int, raw: bytes) -> Unreachable:
        """
        Every answer of lbproxy's admin API is JSON, its errors an object
        with C{error}: anything else (an HTML page, a proxy's 502) is
        another server at that address, not a refusal to print whole.
        """
        first = next((line.strip() for line in raw.decode("utf-8", "replace").splitlines() if line.strip()), "")
        return Unreachable(f"{self.base} is not an lbproxy admin API: it answered {status} "
                           f"{'with ' + repr(first[:60]) if first else 'with an empty body'}")

    def get(self, path: str) -> Answer:
        return self.call("GET", path)

    def events(self) -> Iterator[tuple[str | None, str, str]]:
        """
        Follow C{GET /api/v1/events}: yield (id, event type, data) per
        server-sent event, until the server ends the stream.
        """
        request = self._request("GET", "/events", accept="text/event-stream")
        try:
            # The feed sends a heartbeat every 15 s: a read that waits
            # four times as long means the server is gone.
            response = urllib.request.urlopen(request, timeout=max(self.timeout, 60.0))
        except urllib.error.HTTPError as e:
            parsed = _parse(e.read())
            message = parsed.get("error") if isinstance(parsed, dict) else None
            raise Refused(e.code, message or e.reason, parsed) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise Unreachable(f"cannot reach the admin API at {self.base}: {_reason(e)}") from None
        with response:
            try:
                yield from parse_sse(response)
            except OSError as e:
                raise Unreachable(f"lost the event feed of {self.base}: {_reason(e)}") from None


def parse_sse(lines: Any) -> Iterator[tuple[str | None, str, str]]:
    """
    Server-sent events from an iterable of byte lines (the WHATWG event
    stream format: C{id:}, C{event:}, C{data:} fields, a blank line ends an
    event, lines starting with C{:} are comments).
    """
    event_id, kind, data = None, "message", []
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield event_id, kind, "\n".join(data)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", e)
    if isinstance(reason, socket.timeout) or isinstance(e, TimeoutError):
        return "timed out"
    return str(reason) or type(reason).__name__
