"""
Events for the admin feed: a bus with a bounded resume history, and a cheap
recorder of routing decisions.

Only control-plane events (L{KEPT}: config, backend, store, node) enter the
history a reconnecting client resumes from.  Everything else (the 10 Hz
C{route} batches, the 1 Hz C{stats}, the demo's C{demo}) goes live to the
subscribers of the moment and is never stored, so traffic cannot push a
missed config or health change out of the history.

Routing decisions can come tens of thousands a second, so the proxy never
publishes them one by one: L{RouteRecorder.record} bumps a counter and
appends to a bounded ring, and the feed drains it in periodic batches.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from zope.interface import implementer

from lbproxy.interfaces import IConfigObserver

#: The event types a feed client resumes: what changes the pool's state.
KEPT = frozenset({"config", "service", "backend", "store", "node"})


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]


@implementer(IConfigObserver)
class EventBus:
    """
    Publishes events to subscribers and keeps the last C{history} events of
    the C{kept} types so a feed client can resume after C{Last-Event-ID}.

    Every event gets the next id, kept or not, so ids stay one sequence a
    client can resume from whatever it saw last.  The bus is also the
    L{IConfigObserver} that turns each applied config into a C{config}
    event for the UI (the one place that event is made).
    """

    def __init__(self, history: int = 1000, kept: frozenset[str] = KEPT) -> None:
        self._history: deque[Event] = deque(maxlen=history)
        self.kept = kept
        self._next_id = 1
        #: the id of the newest kept event that left the history.
        self._floor = 0
        self._subscribers: list[Callable[[Event], None]] = []

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def publish(self, type: str, data: dict[str, Any]) -> Event:
        event = Event(self._next_id, type, data)
        self._next_id += 1
        if type in self.kept:
            history = self._history
            if len(history) == history.maxlen:
                self._floor = history[0].id
            history.append(event)
        for subscriber in tuple(self._subscribers):
            subscriber(event)
        return event

    def applied(self, old: Any, new: Any) -> None:
        """
        The document changed: a C{config} event for the main service (the
        one the UI shows), a C{service} event for each other service added,
        changed or removed; each names its service.
        """
        from lbproxy.model.service import as_document

        old, new = as_document(old), as_document(new)
        main = new.main()
        if main is not None:
            self.publish("config", {"service": main.name, "version": new.version, "config": main.to_json()})
        for service in new.services:
            if service is main:
                continue
            before = old.service(service.name)
            if before is None or before.to_json() | {"version": 0} != service.to_json() | {"version": 0}:
                state = "added" if before is None else "changed"
                self.publish("service", {"service": service.name, "state": state,
                                         "version": new.version, "config": service.to_json()})
        for service in old.services:
            if new.service(service.name) is None:
                self.publish("service", {"service": service.name, "state": "removing", "version": new.version})

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

    @property
    def history_size(self) -> int:
        return len(self._history)

    def since(self, last_id: int) -> list[Event] | None:
        """
        The kept events after C{last_id}, or C{None} if some of them are no
        longer in the history, or C{last_id} is one this bus never gave (a
        client of an earlier process): the client must resync from a
        snapshot.  Live-only events (routes, stats) are never replayed.
        """
        if last_id > self.last_id or last_id < self._floor:
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
