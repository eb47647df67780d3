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

from lbproxy.balancer import Balancer
from lbproxy.config import Backend, Config
from lbproxy.control import ConfigController
from lbproxy.store.memory import MemoryStore
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
