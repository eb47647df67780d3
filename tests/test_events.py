"""
The event bus's bounded history and resumption rules, and the route
recorder's batches.
"""

from __future__ import annotations

from lbproxy.control.events import EventBus, RouteRecorder


def test_since_resumes_or_asks_for_resync():
    """A client resumes from its last id while the history holds what it
    missed; an id that fell out of the history, or one this bus never gave
    (the server restarted), gets None: resync from a snapshot."""
    bus = EventBus(history=3)
    for i in range(5):
        bus.publish("config", {"version": i})
    assert [e.id for e in bus.since(3)] == [4, 5]
    assert bus.since(5) == []
    assert bus.since(1) is None
    assert bus.since(99) is None


def test_subscribers_get_events_until_they_leave():
    """Subscribers see every event published while subscribed."""
    bus = EventBus()
    seen = []
    stop = bus.subscribe(seen.append)
    bus.publish("backend", {"id": "b1"})
    stop()
    bus.publish("backend", {"id": "b2"})
    assert [e.data["id"] for e in seen] == ["b1"] and bus.subscriber_count == 0


def test_route_ring_is_bounded_and_counts_drops():
    """However many decisions come, the sample stays bounded and the batch
    says how many were dropped from it."""
    r = RouteRecorder(sample=10)
    for i in range(1000):
        r.record(float(i), "192.0.2.1", f"b{i % 2}")
    batch = r.drain()
    assert batch["total"] == 1000 and len(batch["sample"]) == 10
    assert batch["dropped"] == 990 and batch["counts"] == {"b0": 500, "b1": 500}
