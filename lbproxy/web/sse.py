"""
The live event feed (C{GET /api/v1/events}, server-sent events).

Cheap by construction: each event is encoded once and the same bytes go to
every subscriber; routing decisions reach the feed only as one batched
C{route} event per service every C{batch_interval} (drained from each
balancer's L{lbproxy.control.events.RouteRecorder}, every service of the
table as it is at that tick), C{stats} once a second per service, each
event naming its C{service}; that work and the heartbeats run only while
someone is subscribed, and cost per service, never per connection.

A subscriber that stops reading is cut off past C{max_backlog}
(L{lbproxy.web.sse_stream.Subscriber}), so a stuck client costs bounded
memory and never stalls the reactor; its browser reconnects with C{Last-Event-ID} and resumes from the
bounded history of control-plane events (routes and stats are live only,
so traffic never pushes a config or health change out of it), or gets a
C{reset} snapshot when that history is gone.

Slots are bounded (C{max_subscribers}) and shared fairly, so slow readers
cannot lock the UI out: one client address (an IPv6 /64) holds at most
C{max_per_client} feeds (429 past that), and when every slot is taken a
newcomer evicts the subscriber furthest behind (paused, most bytes
unsent), or else the oldest feed of the address holding the most, if that
is at least two more than the newcomer's address holds; only when neither
exists is it refused (503).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lbproxy.control.events import Event
from lbproxy.web.errors import ApiError
from lbproxy.web.sse_stream import Subscriber, client_key, encode, last_event_id, peer, stream_headers

log = Logger()


class EventFeed:
    """
    Fans the balancer's L{lbproxy.control.events.EventBus} out to SSE subscribers,
    and publishes the batched C{route} and periodic C{stats} events while
    anyone listens.

    @ivar cut_offs: how many subscribers were cut off for not reading.
    @ivar evictions: how many gave their slot to a newcomer on a full feed.
    """

    def __init__(
        self,
        balancer: Any,
        stats: Any,
        clock: Any = None,
        batch_interval: float = 0.1,
        stats_interval: float = 1.0,
        heartbeat: float = 15.0,
        max_backlog: int = 1024 * 1024,
        max_subscribers: int = 100,
        max_per_client: int = 8,
        table: Any = None,
        service_stats: Any = None,
    ) -> None:
        """
        @param table: the L{lbproxy.policy.services.ServiceTable}: with it,
            C{route} and C{stats} events go out for every service in it at
            each tick (the table followed as services come and go), else
            for C{balancer} only.
        @param service_stats: the L{lbproxy.policy.stats.ServiceStats} the
            other services' C{stats} come from (C{stats} is the main one's).
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.balancer = balancer
        self.stats = stats
        self.table = table
        self.service_stats = service_stats
        self.clock = clock
        self.batch_interval = batch_interval
        self.stats_interval = stats_interval
        self.heartbeat = heartbeat
        self.max_backlog = max_backlog
        self.max_subscribers = max_subscribers
        self.max_per_client = max_per_client
        self.cut_offs = 0
        self.evictions = 0
        self._subscribers: list[Subscriber] = []
        self._unsubscribe: Any = None
        self._loops: list[LoopingCall] = []

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def open(self, request: Any) -> defer.Deferred:
        """
        Start a feed on C{request}: headers, then the history after
        C{Last-Event-ID} (header, or C{?last_event_id=}) or a snapshot, then
        live events.  C{?types=a,b} limits the event types.  C{HEAD}
        answers the headers and holds no slot.

        @return: a Deferred that fires when the feed ends; cancelling it
            (as Klein does when the client goes away) unsubscribes.
        @raise ApiError: 400 for a C{Last-Event-ID} that is not an event
            id; 429 when the client's address holds C{max_per_client}
            feeds; 503 when C{max_subscribers} feeds are open and none may
            be evicted (their buffers are what bounds the feed's memory).
        """
        last_id = last_event_id(request)
        types = None
        if b"types" in request.args:
            names = b",".join(request.args[b"types"]).decode("utf-8", "replace").split(",")
            types = frozenset(n.strip() for n in names if n.strip())
        if request.method == b"HEAD":
            stream_headers(request)
            return defer.succeed(b"")
        client = client_key(request)
        same = sum(1 for s in self._subscribers if s.client == client)
        if same >= self.max_per_client:
            raise ApiError(429, f"{client} already has {same} event feeds open, the most one address may hold; "
                                "close one", headers={"Retry-After": "10"})
        if len(self._subscribers) >= self.max_subscribers and not self._make_room(same):
            raise ApiError(503, f"the event feed already has {self.max_subscribers} subscribers; try again later",
                           headers={"Retry-After": "10"})
        stream_headers(request)
        channel = getattr(request, "channel", None)
        if channel is not None and hasattr(channel, "setTimeout"):
            channel.setTimeout(None)
        sub = Subscriber(self, request, types, self.max_backlog, client)
        request.registerProducer(sub, True)
        bus = self.balancer.events
        request.write(b"retry: 2000\n\n")
        missed = None if last_id is None else bus.since(last_id)
        if missed is None:
            kind = "snapshot" if last_id is None else "reset"
            sub.send(encode(bus.last_id, kind, self.snapshot()))
        else:
            for event in missed:
                if types is None or event.type in types:
                    sub.send(encode(event.id, event.type, event.data))
        self._add(sub)
        return sub.done

    def snapshot(self) -> dict[str, Any]:
        """
        The whole state a client needs to start from.
        """
        b = self.balancer
        return {
            "service": b.config.name,
            "last_id": b.events.last_id,
            "config": b.config.to_json(),
            "backends": b.backends_view(),
            "stats": self.stats.snapshot(),
        }

    def _add(self, sub: Subscriber) -> None:
        self._subscribers.append(sub)
        if len(self._subscribers) == 1:
            self._start()

    def remove(self, sub: Subscriber) -> None:
        """
        Forget C{sub} (its client went away or it was cut off).
        """
        if sub in self._subscribers:
            self._subscribers.remove(sub)
            if not self._subscribers:
                self._stop()

    def cut_off(self, sub: Subscriber) -> None:
        """
        Drop a subscriber that stopped reading, closing its connection
        without waiting for its buffer to drain.
        """
        self.cut_offs += 1
        log.info("event feed subscriber {peer} cut off: it stopped reading", peer=peer(sub.request))
        self._abort(sub)

    def _make_room(self, same: int) -> bool:
        """
        Evict one subscriber of a full feed for a newcomer whose address
        holds C{same} feeds: the one furthest behind, else the oldest of the
        address holding the most, if that is at least C{same + 2} (so the
        two never take turns).

        @return: whether a slot is free now.
        """
        subs = self._subscribers
        if not subs:
            return False
        behind = [s for s in subs if s.paused]
        if behind:
            victim = max(behind, key=lambda s: s.backlog)
            why = "it was the furthest behind"
        else:
            counts: dict[str, int] = {}
            for s in subs:
                counts[s.client] = counts.get(s.client, 0) + 1
            crowd = max(counts, key=counts.__getitem__)
            if counts[crowd] < same + 2:
                return False
            victim = next(s for s in subs if s.client == crowd)
            why = f"{crowd} held {counts[crowd]} feeds"
        self.evictions += 1
        log.info("event feed full: subscriber {peer} evicted for a new one ({why})", peer=peer(victim.request), why=why)
        self._abort(victim)
        return True

    def _abort(self, sub: Subscriber) -> None:
        self.remove(sub)
        transport = getattr(sub.request, "transport", None) or getattr(sub.request.channel, "transport", None)
        if transport is not None:
            getattr(transport, "abortConnection", transport.loseConnection)()

    def close(self) -> None:
        """
        End every feed (the admin site is stopping).
        """
        for sub in tuple(self._subscribers):
            self.remove(sub)
            sub.request.unregisterProducer()
            if not sub.done.called:
                sub.done.callback(b"")

    # While anyone listens ---------------------------------------------------

    def _start(self) -> None:
        for b in self._balancers():
            b.routes.drain()  # decisions from before anyone listened
        self._unsubscribe = self.balancer.events.subscribe(self._deliver)
        for interval, work in (
            (self.batch_interval, self.publish_routes),
            (self.stats_interval, self.publish_stats),
            (self.heartbeat, self._beat),
        ):
            loop = LoopingCall(work)
            loop.clock = self.clock
            loop.start(interval, now=False).addErrback(
                lambda f: log.failure("event feed timer failed", f)
            )
            self._loops.append(loop)

    def _stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _deliver(self, event: Event) -> None:
        # Called inside EventBus.publish, that is inside balancer.apply and
        # the health path: a broken subscriber must never raise into them.
        try:
            data = encode(event.id, event.type, event.data)
        except Exception:
            log.failure("event {id} ({type}) cannot be encoded for the feed", id=event.id, type=event.type)
            return
        for sub in tuple(self._subscribers):
            if sub.types is None or event.type in sub.types:
                self._send(sub, data)

    def _send(self, sub: Subscriber, data: bytes) -> None:
        try:
            sub.send(data)
        except Exception:
            log.failure("event feed subscriber {peer} failed; dropping it", peer=peer(sub.request))
            self.remove(sub)

    def _balancers(self) -> tuple[Any, ...]:
        """
        The balancers whose routes and stats the feed carries: every
        service of the table as it is now, else the one balancer.
        """
        if self.table is None:
            return (self.balancer,)
        return tuple(self.table.balancers.values())

    def publish_routes(self) -> None:
        """
        Publish each service's routing decisions since the last batch as
        one C{route} event naming the service: counts per backend, a
        sample, how many were not sampled.  Like C{stats}, it is live only:
        the bus keeps neither in its history.
        """
        now = self.clock.seconds()
        for b in self._balancers():
            batch = b.routes.drain()
            if batch is None:
                continue
            batch["time"] = now
            batch["strategy"] = b.config.strategy.name
            batch["service"] = b.config.name
            self.balancer.events.publish("route", batch)

    def publish_stats(self) -> None:
        """
        One C{stats} event per service, naming it.
        """
        for b in self._balancers():
            sampler = self.stats if b is self.balancer else (
                self.service_stats.of(b.config.name) if self.service_stats is not None else None)
            if sampler is None:
                continue
            stats = sampler.snapshot()
            stats["service"] = b.config.name
            self.balancer.events.publish("stats", stats)

    def _beat(self) -> None:
        for sub in tuple(self._subscribers):
            self._send(sub, b": keep-alive\n\n")
