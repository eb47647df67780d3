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


def test_history_keeps_only_control_plane_events_and_stays_bounded():
    """Route and stats events go to subscribers but never into the history:
    after 6,000 route batches and 600 stats the config and backend events
    published among them are all still there, in order; the history itself
    never holds more than its bound, and what fell out of it asks for a
    resync."""
    bus = EventBus(history=5)
    live = []
    bus.subscribe(live.append)
    kept = []
    for i in range(6000):
        bus.publish("route", {"n": i})
        if i % 10 == 0:
            bus.publish("stats", {"n": i})
        if i % 1500 == 0:
            kept.append(bus.publish("config", {"version": i}).id)
            kept.append(bus.publish("backend", {"id": "b1", "state": "down"}).id)
    assert len(live) == 6000 + 600 + len(kept)
    assert len(kept) == 8 and bus.history_size == 5
    assert [e.id for e in bus.since(kept[2])] == kept[3:]
    assert bus.since(kept[2] - 1) is None, "kept[2] itself left the history"
    assert bus.since(kept[-1] + 1) == [], "a client that last saw a route event is up to date"


def test_a_client_that_last_saw_a_live_event_resumes():
    """Ids are one sequence over kept and live events: resuming from the id
    of a route event replays the kept events after it, and none before."""
    bus = EventBus()
    bus.publish("config", {"version": 1})
    route = bus.publish("route", {"total": 1})
    later = bus.publish("backend", {"id": "b1"})
    bus.publish("stats", {})
    assert bus.since(route.id) == [later]
    assert bus.since(0)[0].type == "config"


def test_the_bus_observes_applied_configs():
    """The bus is an IConfigObserver: each applied config becomes one
    config event with the new version and document, kept for resumption."""
    from zope.interface.verify import verifyObject

    from lbproxy.interfaces import IConfigObserver
    from lbproxy.model.config import Backend, Config

    bus = EventBus()
    verifyObject(IConfigObserver, bus)
    old = Config(version=1, backends=())
    new = Config(version=2, backends=(Backend("b1", "127.0.0.1", 9001),))
    bus.applied(old, new)
    [event] = bus.since(0)
    assert event.type == "config" and event.data["version"] == 2
    assert event.data["config"] == new.to_json()
