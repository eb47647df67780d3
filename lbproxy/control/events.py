"""
Events for the admin feed: a bounded history with subscribers, and a cheap
recorder of routing decisions.

Routing decisions can come tens of thousands a second, so the proxy never
publishes them one by one: L{RouteRecorder.record} bumps a counter and
appends to a bounded ring, and the feed drains it in periodic batches.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]


class EventBus:
    """
    Publishes events to subscribers and keeps the last C{history} of them
    so a feed client can resume after C{Last-Event-ID}.
    """

    def __init__(self, history: int = 1000) -> None:
        self._history: deque[Event] = deque(maxlen=history)
        self._next_id = 1
        self._subscribers: list[Callable[[Event], None]] = []

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def publish(self, type: str, data: dict[str, Any]) -> Event:
        event = Event(self._next_id, type, data)
        self._next_id += 1
        self._history.append(event)
        for subscriber in tuple(self._subscribers):
            subscriber(event)
        return event

    def subscribe(self, subscriber: Callable[[Event], None]) -> Callable[[], None]:
        """
        @return: a callable that ends the subscription.
        """
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def since(self, last_id: int) -> list[Event] | None:
        """
        Events after C{last_id}, or C{None} if some of them are no longer
        in the history, or C{last_id} is one this bus never gave (a client
        of an earlier process): the client must resync from a snapshot.
        """
        if last_id > self.last_id:
            return None
        if last_id == self.last_id:
            return []
        if not self._history or self._history[0].id > last_id + 1:
            return None
        return [e for e in self._history if e.id > last_id]


class RouteRecorder:
    """
    Counts routing decisions per backend and keeps a sample of the latest.
    """

    def __init__(self, sample: int = 50) -> None:
        self._ring: deque[tuple[float, str, str]] = deque(maxlen=sample)
        self._counts: dict[str, int] = {}
        self._total = 0

    def record(self, now: float, client: str, backend_id: str) -> None:
        self._ring.append((now, client, backend_id))
        counts = self._counts
        counts[backend_id] = counts.get(backend_id, 0) + 1
        self._total += 1

    def drain(self) -> dict[str, Any] | None:
        """
        Take the batch since the last drain.

        @return: C{{"counts": {...}, "total": n, "sample": [...],
            "dropped": n}}, or C{None} if there was no decision.
        """
        if not self._total:
            return None
        sample = [
            {"time": t, "client": c, "backend": b} for (t, c, b) in self._ring
        ]
        batch = {
            "counts": self._counts,
            "total": self._total,
            "sample": sample,
            "dropped": self._total - len(sample),
        }
        self._ring.clear()
        self._counts = {}
        self._total = 0
        return batch
