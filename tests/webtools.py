"""
Helpers for the admin API tests: an app over a fake clock, driven through
L{treq.testing.StubTreq} with no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock

from lbproxy.policy.balancer import Balancer
from lbproxy.model.config import Backend, Config
from lbproxy.control.controller import ConfigController
from lbproxy.control.store.memory import MemoryStore
from lbproxy.web.app import AdminApp
from lbproxy.web.auth import AdminPolicy

BASE = "http://admin.test"


@dataclass
class Reply:
    code: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


def settle(stub: StubTreq, d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    stub.flush()
    assert out, "the request did not finish"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class Admin:
    """
    An admin app over a balancer with two backends, on a L{Clock}.
    """

    def __init__(self, factories: Any, policy: AdminPolicy | None = None, static: Any = None,
                 store: Any = None, **kwargs: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        config = Config(version=1, backends=(
            Backend("b1", "127.0.0.1", 9001), Backend("b2", "127.0.0.1", 9002, weight=2),
        ))
        self.store = store if store is not None else MemoryStore(config)
        self.balancer = Balancer(config, factories, reactor=self.clock)
        self.controller = ConfigController(self.balancer, self.store)
        self.app = AdminApp(self.controller, self.balancer, policy=policy, clock=self.clock,
                            static=static if static is not None else _nowhere(), **kwargs)
        self.stub = StubTreq(self.app.resource())

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        h = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        resp = settle(self.stub, self.stub.request(method, BASE + path, data=data, headers=h))
        content = settle(self.stub, self.stub.content(resp))
        return Reply(resp.code, resp.headers, content)

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)


def _nowhere() -> Any:
    from pathlib import Path

    return Path("/nonexistent/lbproxy-static")


# Real sockets ----------------------------------------------------------------

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.protocol import Protocol  # noqa: E402


def wait_for(reactor: Any, condition: Any, timeout: float = 10.0, what: str = "condition") -> defer.Deferred:
    """
    Poll C{condition()} every 10 ms on the real reactor until it is true.

    @raise AssertionError: (in the Deferred) after C{timeout} seconds.
    """

    async def poll() -> None:
        deadline = reactor.seconds() + timeout
        while not condition():
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await task.deferLater(reactor, 0.01, lambda: None)

    return defer.ensureDeferred(poll())


class FeedReader(Protocol):
    """
    A raw SSE client: asks for C{path} over HTTP/1.0 (no chunking) and
    parses the events as they arrive into C{events} (type, id, data).
    """

    def __init__(self, path: str, headers: dict[str, str] | None = None, read: bool = True) -> None:
        self.path = path
        self.headers = headers or {}
        self.read = read
        self.buffer = b""
        self.head: bytes | None = None
        self.events: list[tuple[str, int, Any]] = []
        self.received = 0
        self.lost = defer.Deferred()

    def connectionMade(self) -> None:
        lines = [f"GET {self.path} HTTP/1.0", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in self.headers.items()]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if not self.read:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.buffer += data
        if self.head is None:
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        while b"\n\n" in self.buffer:
            block, _, self.buffer = self.buffer.partition(b"\n\n")
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines()
                          if ": " in line and not line.startswith(":"))
            if "event" in fields:
                self.events.append((fields["event"], int(fields["id"]), json.loads(fields["data"])))

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)

    def of(self, *types: str) -> list[tuple[str, int, Any]]:
        return [e for e in self.events if e[0] in types]


def connect_feed(reactor: Any, port: int, reader: FeedReader) -> defer.Deferred:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reader)
