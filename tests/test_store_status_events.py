"""
The config store's availability and node list reach the event feed as
C{store} events, so the web UI shows them without polling.
"""

from __future__ import annotations

from lbproxy.control.store.etcd_client import b64
from lbproxy.control.store.memory import MemoryStore
from lbproxy.model.config import Backend, Config
from tests.test_etcd import SEED, V2, header, kv, loaded
from tests.webtools import Admin


def test_etcd_store_reports_availability_changes_and_node_changes():
    """
    watch_status callbacks hear "unavailable" once when etcd goes away (not
    for each failed retry), "available" once when it answers again, "nodes"
    for a key under PREFIX/nodes/ and nothing for a config change; after
    unwatch they hear nothing.
    """
    store, client, clock, _, _, stream = loaded(SEED, mod=5, rev=7)
    changes = []
    unwatch = store.watch_status(changes.append)
    stream.send({"result": {**header(8), "events": [{"kv": kv(V2, 8)}]}})
    stream.send({"result": {**header(9), "events": [
        {"kv": {"key": b64("/lbproxy/t/nodes/a"), "mod_revision": "9", "value": b64("{}")}}]}})
    assert changes == ["nodes"]
    stream.end()
    for _ in range(3):
        clock.advance(store.max_backoff)
        client.next("/v3/kv/range").refuse()
    assert changes == ["nodes", "unavailable"]
    clock.advance(store.max_backoff)
    client.next("/v3/kv/range").respond({**header(10), "kvs": [kv(V2, 8)], "count": "1"})
    assert changes == ["nodes", "unavailable", "available"]
    watch = client.next("/v3/watch").respond(None)
    watch.send({"result": {**header(10), "created": True}})
    unwatch()
    watch.send({"result": {**header(11), "events": [
        {"type": "DELETE", "kv": {"key": b64("/lbproxy/t/nodes/b"), "mod_revision": "11"}}]}})
    assert changes == ["nodes", "unavailable", "available"]


class StatusStore(MemoryStore):
    """A store whose availability the test flips, like EtcdStore's."""

    def __init__(self, config):
        super().__init__(config)
        self.available = True
        self.callbacks = []

    def status(self):
        return {"kind": "etcd", "available": self.available}

    def watch_status(self, callback):
        self.callbacks.append(callback)
        return lambda: None


def test_admin_app_publishes_store_events(factories):
    """
    An admin app over a store with watch_status publishes each change on
    the balancer's event bus as a C{store} event carrying the node name and
    the store's status at that moment.
    """
    store = StatusStore(Config(version=1, backends=(Backend("b1", "127.0.0.1", 9001),)))
    admin = Admin(factories, store=store, node="n1")
    events = []
    admin.balancer.events.subscribe(events.append)
    store.available = False
    [callback] = store.callbacks
    callback("unavailable")
    assert [(e.type, e.data) for e in events] == [
        ("store", {"change": "unavailable", "node": "n1", "store": {"kind": "etcd", "available": False}}),
    ]
