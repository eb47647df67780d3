"""
One subscriber's side of the event feed: the SSE encoding, the stream's
headers, the request's C{Last-Event-ID}, and the backpressure that bounds
what a slow reader costs.

A subscriber that stops reading fills its socket buffer; the HTTP channel
then pauses the L{Subscriber} (it is the request's push producer), which
from then on only counts the bytes it would have written, and past
C{max_backlog} asks the feed to cut it off.  L{client_key} is the address
a feed's slots are shared by.
"""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from lbproxy.web.errors import ApiError

if TYPE_CHECKING:
    from lbproxy.web.sse import EventFeed


def encode(event_id: int, type: str, data: Any) -> bytes:
    """
    One SSE message.  Compact JSON has no newlines, so C{data} is one line.
    """
    body = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
    return f"id: {event_id}\nevent: {type}\ndata: {body}\n\n".encode("utf-8")


@implementer(IPushProducer)
class Subscriber:
    """
    One open feed: the request it writes to and how far behind it is.

    @ivar paused: whether the HTTP channel said the socket is full.
    @ivar backlog: bytes written while paused (buffered in the transport).
    @ivar types: event types it asked for, or C{None} for all.
    @ivar client: the client address it counts against (L{client_key}).
    """

    def __init__(self, feed: "EventFeed", request: Any, types: frozenset[str] | None, max_backlog: int,
                 client: str = "?") -> None:
        self.feed = feed
        self.request = request
        self.types = types
        self.client = client
        self.max_backlog = max_backlog
        self.paused = False
        self.backlog = 0
        self.done: defer.Deferred = defer.Deferred(lambda d: feed.remove(self))

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        self.feed.remove(self)

    def send(self, data: bytes) -> None:
        if self.paused:
            self.backlog += len(data)
            if self.backlog > self.max_backlog:
                self.feed.cut_off(self)
                return
        self.request.write(data)


def stream_headers(request: Any) -> None:
    request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-cache, no-store")
    request.setHeader(b"X-Accel-Buffering", b"no")


def client_key(request: Any) -> str:
    """
    The address a feed counts against: the client's IP, or its /64 for
    IPv6 (one host's share of addresses), C{"local"} for a UNIX socket.
    Behind a reverse proxy every client is the proxy's address.
    """
    try:
        host = request.getClientAddress().host
    except AttributeError:
        return "local"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def last_event_id(request: Any) -> int | None:
    raw = request.getHeader(b"last-event-id")
    if raw is None:
        values = request.args.get(b"last_event_id")
        raw = values[-1] if values else None
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "Last-Event-ID must be the id of an event this feed sent")
    return int(raw)


def peer(request: Any) -> str:
    try:
        addr = request.getClientAddress()
        return f"{addr.host}:{addr.port}"
    except Exception:
        return "?"
