"""
The SSE feed over a real HTTP channel on a StringTransport and a fake
clock: snapshot, live events, batched routes, stats, heartbeats,
Last-Event-ID resumption, type filters, and cutting off a client that stops
reading.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.web.server import Site

from lbproxy.model.changes import add_backend
from tests.webtools import Admin


def dechunk(raw: bytes) -> bytes:
    head, _, rest = raw.partition(b"\r\n\r\n")
    out = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return out


def parse(raw: bytes) -> list[dict]:
    events = []
    for block in dechunk(raw).decode().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":"):
                fields.setdefault("comment", line)
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if "event" in fields:
            fields["data"] = json.loads(fields["data"])
            fields["id"] = int(fields["id"])
        if fields:
            events.append(fields)
    return events


class Client:
    """One HTTP connection to the admin site, on a StringTransport."""

    def __init__(self, admin: Admin, path: str = "/api/v1/events", headers: dict | None = None,
                 peer: str = "192.168.1.1"):
        self.site = Site(admin.app.resource())
        self.channel = self.site.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 54321))
        self.channel.makeConnection(self.transport)
        lines = [f"GET {path} HTTP/1.1", "Host: admin.test"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())

    @property
    def events(self) -> list[dict]:
        return [e for e in parse(self.transport.value()) if "event" in e]

    def types(self) -> list[str]:
        return [e["event"] for e in self.events]

    def disconnect(self):
        self.channel.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def admin(factories):
    return Admin(factories)


def change(admin, mutate):
    admin.controller.change(mutate)


def test_snapshot_then_live_events(admin):
    """A new subscriber gets a snapshot, then config and backend events as they happen, in order."""
    c = Client(admin)
    assert c.transport.value().startswith(b"HTTP/1.1 200")
    assert b"text/event-stream" in c.transport.value()
    assert c.types() == ["snapshot"]
    snap = c.events[0]["data"]
    assert snap["config"]["version"] == 1 and len(snap["backends"]) == 2
    change(admin, lambda cfg: add_backend(cfg, {"host": "127.0.0.1", "port": 9003}))
    admin.balancer.health_result("b1", False, "refused")
    admin.balancer.health_result("b1", False, "refused")
    admin.balancer.health_result("b1", False, "refused")
    evs = c.events
    assert [e["event"] for e in evs] == ["snapshot", "config", "backend"]
    assert evs[1]["data"]["version"] == 2
    assert evs[2]["data"]["id"] == "b1" and evs[2]["data"]["state"] == "down"
    assert evs[1]["id"] < evs[2]["id"]
    assert admin.app.feed.subscriber_count == 1


def test_route_batches_and_stats(admin):
    """Routing decisions arrive as one batched route event per 100 ms, with counts, a sample and the strategy; stats once a second."""
    c = Client(admin)
    for i in range(120):
        admin.balancer.route((f"10.0.0.{i % 5}", 1000 + i))
    admin.clock.advance(0.1)
    routes = [e for e in c.events if e["event"] == "route"]
    assert len(routes) == 1
    batch = routes[0]["data"]
    assert batch["total"] == 120 and sum(batch["counts"].values()) == 120
    assert batch["strategy"] == "round-robin"
    assert len(batch["sample"]) + batch["dropped"] == 120
    assert {"time", "client", "backend"} <= set(batch["sample"][0])
    admin.clock.advance(0.1)
    assert len([e for e in c.events if e["event"] == "route"]) == 1, "no decisions, no event"
    admin.clock.advance(0.8)
    stats = [e for e in c.events if e["event"] == "stats"]
    assert len(stats) == 1 and "totals" in stats[0]["data"]


def test_no_work_without_subscribers(admin):
    """With nobody subscribed the feed runs no timers; decisions made before a subscriber came are not reported to it."""
    assert admin.clock.getDelayedCalls() == []
    admin.balancer.route(("10.0.0.1", 1))
    c = Client(admin)
    assert len(admin.clock.getDelayedCalls()) == 3
    admin.clock.advance(0.1)
    assert "route" not in c.types()
    c.disconnect()
    assert admin.app.feed.subscriber_count == 0
    assert admin.clock.getDelayedCalls() == []
    assert admin.balancer.events.subscriber_count == 0


def test_heartbeat(admin):
    """A comment line goes out every 15 s so proxies keep an idle feed open."""
    c = Client(admin)
    before = c.transport.value().count(b": keep-alive")
    admin.clock.advance(15)
    assert c.transport.value().count(b": keep-alive") == before + 1


def test_resume_after_last_event_id(admin):
    """Reconnecting with Last-Event-ID replays exactly the events after it, without a snapshot."""
    first = Client(admin)
    change(admin, lambda cfg: add_backend(cfg, {"host": "127.0.0.1", "port": 9003}))
    seen = first.events[-1]["id"]
    first.disconnect()
    change(admin, lambda cfg: add_backend(cfg, {"host": "127.0.0.1", "port": 9004}))
    change(admin, lambda cfg: add_backend(cfg, {"host": "127.0.0.1", "port": 9005}))
    again = Client(admin, headers={"Last-Event-ID": str(seen)})
    evs = again.events
    assert [e["event"] for e in evs] == ["config", "config"]
    assert [e["data"]["version"] for e in evs] == [3, 4]
    assert evs[0]["id"] == seen + 1


def test_reset_when_history_is_gone(factories):
    """When the events after Last-Event-ID have left the bounded history, the client gets a reset snapshot."""
    from lbproxy.control.events import EventBus

    admin = Admin(factories)
    admin.balancer.events = EventBus(history=3)
    for i in range(6):
        admin.balancer.events.publish("backend", {"n": i})
    c = Client(admin, headers={"Last-Event-ID": "1"})
    assert c.types() == ["reset"]
    assert c.events[0]["data"]["config"]["version"] == 1


def test_bad_last_event_id(admin):
    """A Last-Event-ID that is not an id is a 400 JSON error."""
    c = Client(admin, headers={"Last-Event-ID": "abc"})
    assert c.transport.value().startswith(b"HTTP/1.1 400")
    assert admin.app.feed.subscriber_count == 0


def test_type_filter(admin):
    """?types= limits the feed to the named event types."""
    c = Client(admin, path="/api/v1/events?types=backend")
    change(admin, lambda cfg: add_backend(cfg, {"host": "127.0.0.1", "port": 9003}))
    for _ in range(3):
        admin.balancer.health_result("b2", False, "refused")
    admin.balancer.route(("10.0.0.1", 1))
    admin.clock.advance(1)
    assert c.types() == ["snapshot", "backend"]


def test_slow_subscriber_is_cut_off(admin):
    """A client whose socket is full is cut off once its backlog passes the bound; others keep receiving."""
    admin.app.feed.max_backlog = 64 * 1024
    slow = Client(admin)
    fast = Client(admin)
    slow.transport.producer.pauseProducing()  # what the transport does when its buffer is full
    size_before = len(slow.transport.value())
    big = {"blob": "x" * 10_000}
    n = 0
    while admin.app.feed.subscriber_count == 2:
        admin.balancer.events.publish("backend", big)
        n += 1
        assert n < 100, "never cut off"
    assert slow.transport.disconnected, "aborted, not a graceful close that waits for the buffer"
    written = len(slow.transport.value()) - size_before
    assert written <= admin.app.feed.max_backlog + 20_000
    assert admin.app.feed.cut_offs == 1
    assert not fast.transport.disconnecting
    admin.balancer.events.publish("backend", {"after": True})
    assert fast.events[-1]["data"] == {"after": True}


def test_paused_then_resumed_is_kept(admin):
    """A client that falls behind briefly and catches up is not cut off."""
    c = Client(admin)
    for _ in range(5):
        c.transport.producer.pauseProducing()
        for _ in range(20):
            admin.balancer.events.publish("backend", {"blob": "x" * 10_000})
        c.transport.producer.resumeProducing()
    assert not c.transport.disconnecting
    assert admin.app.feed.subscriber_count == 1


def test_close_ends_feeds(admin):
    """Stopping the admin site ends every feed cleanly (the response is finished)."""
    c = Client(admin)
    admin.app.feed.close()
    assert c.transport.value().endswith(b"0\r\n\r\n")
    assert admin.app.feed.subscriber_count == 0
    assert admin.clock.getDelayedCalls() == []


def test_broken_subscriber_never_breaks_a_change(admin):
    """A subscriber whose write fails is dropped; the config change that published the event still applies."""
    c = Client(admin)
    other = Client(admin)
    sub = admin.app.feed._subscribers[0]

    def broken(data):
        raise RuntimeError("write after finish")

    sub.request.write = broken
    change(admin, lambda cfg: add_backend(cfg, {"host": "127.0.0.1", "port": 9003}))
    assert admin.balancer.config.version == 2
    assert admin.app.feed.subscriber_count == 1
    assert other.types()[-1] == "config"
    assert c.types() == ["snapshot"]


def test_subscriber_limit(admin):
    """Past the subscriber limit a new feed gets 503 JSON; when one leaves, a new one is welcome again."""
    admin.app.feed.max_subscribers = 2
    a, b = Client(admin), Client(admin)
    c = Client(admin)
    assert c.transport.value().startswith(b"HTTP/1.1 503")
    assert b"Retry-After" in c.transport.value()
    a.disconnect()
    d = Client(admin)
    assert d.types() == ["snapshot"]
    assert admin.app.feed.subscriber_count == 2


def test_head_does_not_subscribe(admin):
    """HEAD on the feed answers the headers and ends, without subscribing."""
    channel = Site(admin.app.resource()).buildProtocol(None)
    t = StringTransport()
    channel.makeConnection(t)
    channel.dataReceived(b"HEAD /api/v1/events HTTP/1.1\r\nHost: admin.test\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 200")
    assert b"text/event-stream" in t.value()
    assert admin.app.feed.subscriber_count == 0
    assert admin.clock.getDelayedCalls() == []


def test_subscriber_is_a_push_producer(admin):
    """The feed's subscriber provides IPushProducer, as the HTTP channel expects."""
    from twisted.internet.interfaces import IPushProducer
    from zope.interface.verify import verifyObject

    Client(admin)
    verifyObject(IPushProducer, admin.app.feed._subscribers[0])


def test_access_log_redacts_token():
    """The admin site's access log never shows an access_token query parameter."""
    from twisted.web.test.requesthelper import DummyRequest

    from lbproxy.web import _redacting_formatter

    request = DummyRequest([b"api", b"v1", b"events"])
    request.uri = b"/api/v1/events?types=config&access_token=hunter2-secret"
    request.method = b"GET"
    request.clientproto = b"HTTP/1.1"
    request.code = 200
    request.sentLength = 10
    line = _redacting_formatter("[26/Nov/2026:18:00:00 +0000]", request)
    assert "hunter2" not in line and "access_token=REDACTED" in line and "types=config" in line


def status(c: Client) -> int:
    return int(c.transport.value().split(b" ", 2)[1])


def body(c: Client) -> dict:
    return json.loads(dechunk(c.transport.value()))


def test_resume_survives_route_and_stats_traffic(admin):
    """Ten minutes of feed traffic (route batches every 100 ms, stats every
    second, while another tab listens) between a disconnect and the
    reconnect do not push the missed config and health events out of the
    history: the client resumes with exactly those, in order, no reset."""
    keeper = Client(admin)
    first = Client(admin)
    seen = first.events[-1]["id"]
    first.disconnect()
    for tick in range(6000):
        admin.balancer.route(("10.0.0.1", tick))
        admin.clock.advance(0.1)
        if tick % 1000 == 500:
            change(admin, lambda cfg: add_backend(cfg, {"host": "127.0.0.1", "port": 9100 + tick // 1000}))
            for _ in range(3):
                admin.balancer.health_result("b1", tick % 2000 != 500, "probe")
    admin.clock.advance(0.01)  # 6000 float steps of 0.1 fall just short of 600 s
    live = keeper.types()
    assert live.count("route") == 6000 and live.count("stats") == 600
    missed = [e for e in keeper.events if e["event"] in ("config", "backend")]
    assert [e["event"] for e in missed].count("config") == 6
    assert {e["data"].get("state") for e in missed} >= {"down", "up"}
    again = Client(admin, headers={"Last-Event-ID": str(seen)})
    assert again.events == missed


def test_one_address_holds_at_most_eight_feeds(admin):
    """A ninth feed from one address gets 429 with a JSON error and
    Retry-After; another address still gets in."""
    crowd = [Client(admin, peer="10.0.0.2") for _ in range(8)]
    assert all(c.types() == ["snapshot"] for c in crowd)
    ninth = Client(admin, peer="10.0.0.2")
    assert status(ninth) == 429 and b"Retry-After: 10" in ninth.transport.value()
    assert "10.0.0.2" in body(ninth)["error"]
    ui = Client(admin, peer="10.0.0.1")
    assert ui.types() == ["snapshot"]
    assert admin.app.feed.subscriber_count == 9


def test_full_feed_evicts_the_subscriber_furthest_behind(admin):
    """When every slot is taken, a newcomer takes the slot of the paused
    subscriber with the most bytes unsent (its connection is aborted); the
    ones that keep reading stay."""
    feed = admin.app.feed
    feed.max_subscribers = 3
    a, b, c = (Client(admin, peer=f"10.0.1.{i}") for i in (1, 2, 3))
    a.transport.producer.pauseProducing()
    b.transport.producer.pauseProducing()
    admin.balancer.events.publish("backend", {"blob": "x" * 100})
    b.transport.producer.pauseProducing()
    admin.balancer.events.publish("backend", {"blob": "x" * 100})
    a.transport.producer.resumeProducing()
    a.transport.producer.pauseProducing()
    new = Client(admin, peer="10.0.1.4")
    assert new.types() == ["snapshot"]
    assert b.transport.disconnected and not a.transport.disconnecting and not c.transport.disconnecting
    assert feed.evictions == 1 and feed.subscriber_count == 3


def test_full_feed_evicts_the_oldest_feed_of_the_most_crowded_address(admin):
    """With nobody behind, a newcomer takes the oldest feed of the address
    holding the most, if that is at least two more than its own address
    holds; otherwise it gets 503."""
    feed = admin.app.feed
    feed.max_subscribers = 4
    crowd = [Client(admin, peer="10.0.0.2") for _ in range(3)]
    lone = Client(admin, peer="10.0.0.3")
    ui = Client(admin, peer="10.0.0.1")
    assert ui.types() == ["snapshot"]
    assert crowd[0].transport.disconnected and not any(c.transport.disconnecting for c in crowd[1:])
    assert not lone.transport.disconnecting
    # Now 10.0.0.2 holds 2, 10.0.0.1 holds 1: a second UI tab may not take theirs.
    second = Client(admin, peer="10.0.0.1")
    assert status(second) == 503 and feed.evictions == 1
    newcomer = Client(admin, peer="10.0.0.9")
    assert newcomer.types() == ["snapshot"] and crowd[1].transport.disconnected


def test_head_holds_no_slot(admin):
    """HEAD on a full feed answers the headers and evicts nobody."""
    admin.app.feed.max_subscribers = 1
    only = Client(admin)
    channel = Site(admin.app.resource()).buildProtocol(None)
    t = StringTransport()
    channel.makeConnection(t)
    channel.dataReceived(b"HEAD /api/v1/events HTTP/1.1\r\nHost: admin.test\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 200")
    assert not only.transport.disconnecting and admin.app.feed.evictions == 0


def test_client_key_groups_ipv6_by_64():
    """Feeds count per IPv4 address, per IPv6 /64 (one host's share), and
    an IPv4-mapped IPv6 address counts as its IPv4 address."""
    from twisted.internet.address import IPv6Address, UNIXAddress

    from lbproxy.web.sse_stream import client_key

    class R:
        def __init__(self, addr):
            self.addr = addr

        def getClientAddress(self):
            return self.addr

    assert client_key(R(IPv4Address("TCP", "127.0.0.2", 1))) == "127.0.0.2"
    assert client_key(R(IPv6Address("TCP", "2001:db8::1:2", 1))) == client_key(
        R(IPv6Address("TCP", "2001:db8::ffff:9", 1))) == "2001:db8::/64"
    assert client_key(R(IPv6Address("TCP", "::ffff:192.0.2.1", 1))) == "192.0.2.1"
    assert client_key(R(UNIXAddress(None))) == "local"
