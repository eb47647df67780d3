"""
Changing a loaded proxy through the HTTP API: with clients streaming through
a real listener, add a backend, switch strategy, drain and delete a
backend.  No client connection fails, and the event feed reports each step
in order.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall

from lbproxy.model.config import ProxySettings
from lbproxy.control.controller import ConfigController
from lbproxy.relay.twisted_engine import ProxyFactory
from lbproxy.control.store.memory import MemoryStore
from lbproxy.web import admin_site
from lbproxy.web.app import AdminApp
from tests.integration.relay_harness import Echo, make_balancer, serve
from tests.webtools import FeedReader, connect_feed, wait_for

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


class Streamer(Protocol):
    """
    A long-lived client: sends a numbered chunk every 10 ms and checks that
    the echo comes back intact; any loss it did not ask for is an error.
    """

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self.sent = bytearray()
        self.got = bytearray()
        self.n = 0
        self.closing = False
        self.lost = defer.Deferred()

    def connectionMade(self) -> None:
        self.loop = LoopingCall(self.tick)
        self.loop.start(0.01)

    def tick(self) -> None:
        chunk = b"%08d" % self.n * 16
        self.n += 1
        self.sent += chunk
        self.transport.write(chunk)

    def dataReceived(self, data: bytes) -> None:
        start = len(self.got)
        self.got += data
        if self.got != self.sent[:len(self.got)]:
            self.errors.append(f"stream corrupted at byte {start}")

    def stop(self) -> None:
        self.closing = True
        if self.loop.running:
            self.loop.stop()

    def connectionLost(self, reason) -> None:
        if self.loop.running:
            self.loop.stop()
        if not self.closing:
            self.errors.append(f"stream cut: {reason.getErrorMessage()}")
        self.lost.callback(None)


class Once(Protocol):
    """A short client: sends one line, expects the echo, closes."""

    def __init__(self, errors: list[str], text: bytes) -> None:
        self.errors = errors
        self.text = text
        self.got = b""
        self.done = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.text)

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if self.got == self.text:
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if self.got != self.text:
            self.errors.append(f"short client got {self.got!r}: {reason.getErrorMessage()}")
        self.done.callback(None)


@pytest_twisted.inlineCallbacks
def test_changes_under_load(factories):
    """Add a backend, switch strategy, drain and delete a backend over HTTP while clients stream: no client errors, the feed shows every step in order."""
    from twisted.internet import reactor

    servers = [serve(reactor, Echo) for _ in range(3)]
    ports = [s.getHost().port for s in servers]
    balancer = make_balancer(reactor, factories, ports[:2], settings=ProxySettings(access_log=False))
    controller = ConfigController(balancer, MemoryStore(balancer.config))
    app = AdminApp(controller, balancer, clock=reactor)
    admin = reactor.listenTCP(0, admin_site(app), interface="127.0.0.1")
    proxy = reactor.listenTCP(0, ProxyFactory(balancer, reactor), interface="127.0.0.1")
    url = f"http://127.0.0.1:{admin.getHost().port}/api/v1"
    proxy_ep = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.getHost().port)
    errors: list[str] = []
    streamers: list[Streamer] = []
    shorts: list[defer.Deferred] = []
    feed = FeedReader("/api/v1/events?types=config,backend")
    churn = None
    try:
        yield connect_feed(reactor, admin.getHost().port, feed)
        yield wait_for(reactor, lambda: feed.of("snapshot"), what="the snapshot")
        for _ in range(8):
            s = Streamer(errors)
            streamers.append(s)
            yield connectProtocol(proxy_ep, s)
        counter = iter(range(10**9))

        def short_client() -> None:
            p = Once(errors, b"hello %d\n" % next(counter))
            shorts.append(p.done)
            connectProtocol(proxy_ep, p).addErrback(lambda f: errors.append(f"connect: {f.getErrorMessage()}"))

        churn = LoopingCall(short_client)
        churn.start(0.01)
        on_b1 = len(balancer.connections["b1"])
        assert on_b1 >= 3, "round-robin put streamers on b1"

        # 1. add a backend: new connections reach it
        r = yield treq.post(url + "/backends", json.dumps({"host": "127.0.0.1", "port": ports[2]}).encode(), headers=JSON)
        assert r.code == 201
        b3 = (yield r.json())["id"]
        yield wait_for(reactor, lambda: balancer.pool.stats[b3].total >= 3, what="connections to the new backend")

        # 2. switch strategy: streams in flight untouched
        r = yield treq.put(url + "/strategy", b'{"name": "least-connections"}', headers=JSON)
        assert r.code == 200
        yield r.content()
        yield wait_for(reactor, lambda: len(shorts) > 40, what="more traffic")

        # 3. drain b1: no new connections, existing streams keep flowing
        r = yield treq.patch(url + "/backends/b1", b'{"state": "draining"}', headers=JSON)
        assert r.code == 200
        yield r.content()
        total_b1 = balancer.pool.stats["b1"].total
        mark = len(shorts)
        yield wait_for(reactor, lambda: len(shorts) > mark + 30, what="traffic while draining")
        assert balancer.pool.stats["b1"].total == total_b1, "a drained backend got new connections"
        assert len(balancer.connections["b1"]) == on_b1

        # 4. delete b1: it is kept while its streams run, then disappears
        r = yield treq.delete(url + "/backends/b1")
        body = yield r.json()
        assert r.code == 200 and body["state"] == "removing" and body["connections"] == on_b1
        before = {id(s): len(s.got) for s in streamers}
        yield wait_for(reactor, lambda: all(len(s.got) > before[id(s)] + 1000 for s in streamers),
                       what="every stream to keep flowing after the delete")
        churn.stop()
        yield defer.DeferredList(shorts)
        for s in streamers:
            s.stop()
        yield wait_for(reactor, lambda: all(len(s.got) == len(s.sent) for s in streamers), what="echoes")
        for s in streamers:
            s.transport.loseConnection()
        yield defer.DeferredList([s.lost for s in streamers])
        yield wait_for(reactor, lambda: any(e[2].get("state") == "removed" for e in feed.of("backend")),
                       what="the removal event")
    finally:
        if churn is not None and churn.running:
            churn.stop()
        feed.transport.loseConnection()
        yield feed.lost
        app.feed.close()
        yield admin.stopListening()
        yield proxy.stopListening()
        for s in servers:
            yield s.stopListening()

    assert errors == []
    steps = [
        (kind, data.get("version") if kind == "config" else (data["id"], data["state"]))
        for kind, _, data in feed.of("config", "backend")
    ]
    assert steps == [
        ("config", 2),
        ("config", 3),
        ("backend", ("b1", "draining")),
        ("config", 4),
        ("backend", ("b1", "removing")),
        ("config", 5),
        ("backend", ("b1", "removed")),
    ]
    ids = [event_id for _, event_id, _ in feed.events]
    assert ids == sorted(ids)
