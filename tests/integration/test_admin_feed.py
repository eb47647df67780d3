"""
The event feed on a real loopback listener with raw socket SSE clients: a
client that reconnects after ten minutes of traffic resumes with every
config and health event it missed, and slow readers cannot take every feed
slot from the UI.

The feed's timers run on a L{Clock}, so "ten minutes" is 6,000 route
batches and 600 stats events published at their real intervals of that
clock, while the bytes go over real sockets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock

from lbproxy.control.controller import ConfigController
from lbproxy.control.store.memory import MemoryStore
from lbproxy.model.changes import add_backend
from lbproxy.model.config import Backend, Config, ProxySettings
from lbproxy.policy.balancer import Balancer
from lbproxy.web import admin_site
from lbproxy.web.app import AdminApp
from tests.webtools import FeedReader, connect_feed, wait_for

pytestmark = pytest.mark.integration

FEED = "/api/v1/events"


def _reactor():
    from twisted.internet import reactor

    return reactor


def start_admin(factories, clock):
    """The admin site over a two-backend balancer, its timers on C{clock},
    listening on 127.0.0.1:0 of the real reactor."""
    config = Config(version=1, backends=(Backend("b1", "127.0.0.1", 1), Backend("b2", "127.0.0.1", 2)))
    balancer = Balancer(config, factories, ProxySettings(access_log=False), reactor=clock)
    controller = ConfigController(balancer, MemoryStore(config))
    app = AdminApp(controller, balancer, clock=clock, static=Path("/nonexistent/lbproxy-static"))
    port = _reactor().listenTCP(0, admin_site(app), interface="127.0.0.1")
    return app, controller, port


class SlowReader(FeedReader):
    """Reads the response head, then nothing more: a slow or hostile
    subscriber."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.head is not None:
            self.transport.pauseProducing()

    @property
    def status(self) -> int | None:
        return int(self.head.split(b" ", 2)[1]) if self.head else None


def connect_from(port: int, source: str, reader: FeedReader):
    endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", port, bindAddress=(source, 0))
    return connectProtocol(endpoint, reader)


@pytest_twisted.inlineCallbacks
def test_resume_after_ten_minutes_of_traffic(factories):
    """A UI tab drops off while another keeps the feed busy for ten minutes
    of its clock (a route batch every 100 ms, stats every second) with
    config changes and health changes among them; reconnecting with
    Last-Event-ID it gets every missed config and backend event, in order,
    and no reset snapshot."""
    reactor = _reactor()
    clock = Clock()
    clock.advance(1000)
    app, controller, port = start_admin(factories, clock)
    balancer, bus = app.balancer, app.balancer.events
    number = port.getHost().port
    readers = []
    try:
        keeper, first = FeedReader(FEED), FeedReader(FEED)
        readers += [keeper, first]
        yield connect_feed(reactor, number, keeper)
        yield connect_feed(reactor, number, first)
        yield wait_for(reactor, lambda: keeper.of("snapshot") and first.of("snapshot"), what="both snapshots")
        yield controller.change(lambda c: add_backend(c, {"host": "127.0.0.1", "port": 9000}))
        yield wait_for(reactor, lambda: first.of("config"), what="the first tab's config event")
        seen = first.events[-1][1]
        first.transport.loseConnection()
        yield first.lost
        yield wait_for(reactor, lambda: app.feed.subscriber_count == 1, what="the first tab to leave")

        def caught_up():
            return keeper.events and keeper.events[-1][1] == bus.last_id

        for tick in range(6000):
            balancer.route(("10.0.0.1", 40000 + tick))
            clock.advance(0.1)
            if tick % 500 == 250:
                yield controller.change(
                    lambda c, t=tick: add_backend(c, {"host": "127.0.0.1", "port": 9001 + t // 500}))
                for _ in range(3):
                    balancer.health_result("b1", tick % 1000 != 250, "probe")
            if tick % 100 == 99:
                yield wait_for(reactor, caught_up, what=f"the keeper to read up to tick {tick}")
        clock.advance(0.01)  # 6000 float steps of 0.1 fall just short of 600 s
        yield wait_for(reactor, caught_up, what="the keeper to read everything")
        assert len(keeper.of("route")) == 6000 and len(keeper.of("stats")) == 600
        missed = [e for e in keeper.of("config", "backend") if e[1] > seen]
        assert len([e for e in missed if e[0] == "config"]) == 12
        assert {e[2]["state"] for e in missed if e[0] == "backend"} >= {"down", "up"}

        again = FeedReader(FEED, headers={"Last-Event-ID": str(seen)})
        readers.append(again)
        yield connect_feed(reactor, number, again)
        yield wait_for(reactor, lambda: again.events, what="the first replayed event")
        assert again.events[0][0] not in ("reset", "snapshot"), "the history lost what the tab missed"
        yield wait_for(reactor, lambda: len(again.events) >= len(missed), what="the missed events")
        assert again.events == missed
        assert not again.of("reset", "snapshot")
        assert bus.history_size < 1000
    finally:
        for r in readers:
            if r.transport is not None and not r.lost.called:
                r.transport.loseConnection()
        app.feed.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_slow_readers_from_one_address_do_not_lock_the_ui_out(factories):
    """A hundred feeds from 127.0.0.2 that never read: eight get in, the
    rest get 429, and the UI from 127.0.0.1 still gets its snapshot (on a
    feed without a per-address cap the hundred took every slot and the UI
    got 503)."""
    reactor = _reactor()
    app, _, port = start_admin(factories, Clock())
    number = port.getHost().port
    attackers = []
    try:
        for _ in range(100):
            reader = SlowReader(FEED)
            attackers.append(reader)
            yield connect_from(number, "127.0.0.2", reader)
        yield wait_for(reactor, lambda: all(a.head for a in attackers), what="every attacker's answer")
        ui = FeedReader(FEED)
        yield connect_from(number, "127.0.0.1", ui)
        yield wait_for(reactor, lambda: ui.head is not None, what="the UI's answer")
        assert ui.head.startswith(b"HTTP/1.0 200"), ui.head
        yield wait_for(reactor, lambda: ui.of("snapshot"), what="the UI's snapshot")
        statuses = [a.status for a in attackers]
        assert statuses.count(200) == 8 and statuses.count(429) == 92
        assert app.feed.subscriber_count == 9
    finally:
        yield _close(attackers, app, port)


@pytest_twisted.inlineCallbacks
def test_slow_readers_from_many_addresses_do_not_lock_the_ui_out(factories):
    """Slow readers from thirteen addresses, eight each, take all 100
    slots; the UI from 127.0.0.1 still gets in, by evicting the oldest
    feed of an address that holds eight."""
    reactor = _reactor()
    app, _, port = start_admin(factories, Clock())
    number = port.getHost().port
    attackers = []
    try:
        for host in range(2, 15):
            for _ in range(8):
                reader = SlowReader(FEED)
                attackers.append(reader)
                yield connect_from(number, f"127.0.0.{host}", reader)
        yield wait_for(reactor, lambda: all(a.head for a in attackers), what="every attacker's answer")
        assert app.feed.subscriber_count == 100
        ui = FeedReader(FEED)
        yield connect_from(number, "127.0.0.1", ui)
        yield wait_for(reactor, lambda: ui.head is not None, what="the UI's answer")
        assert ui.head.startswith(b"HTTP/1.0 200"), ui.head
        yield wait_for(reactor, lambda: ui.of("snapshot"), what="the UI's snapshot")
        # The last address's 5th to 7th feeds evicted crowded ones too; its
        # 8th, with 7 of its own, was no fairer than the others: 503.
        assert [a.status for a in attackers].count(503) == 1
        assert app.feed.subscriber_count == 100 and app.feed.evictions == 4
    finally:
        yield _close(attackers, app, port)


@pytest_twisted.inlineCallbacks
def _close(readers, app, port):
    reactor = _reactor()
    for r in readers:
        if r.transport is not None and not r.lost.called:
            r.transport.resumeProducing()
            r.transport.abortConnection()
    yield wait_for(reactor, lambda: all(r.lost.called for r in readers), what="the readers to close")
    app.feed.close()
    yield port.stopListening()
