"""
Unit tests of cluster mode's pieces (L{lbproxy.control.cluster}) and its command
line: the startup gate, lease membership and C{GET /api/v1/nodes}, with
fake stores, a fake HTTP client and a fake clock.
"""

from __future__ import annotations

import base64
import json

import pytest
from treq.testing import StubTreq
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage

from lbproxy.control.cluster import LoadThenServe, Membership, NodesAPI, admin_url
from lbproxy.control.controller import ConfigController
from lbproxy.control.store.etcd import EtcdStore
from lbproxy.model.config import Backend, Config
from lbproxy.model.errors import StoreError, VersionConflict
from lbproxy.policy.balancer import Balancer
from lbproxy.startup.tap import Options
from tests.test_etcd import FakeClient

SEED = Config(version=1, backends=(Backend(id="b1", host="127.0.0.1", port=9001),))
STORED = Config(version=7, backends=(Backend(id="b9", host="127.0.0.1", port=9009),))


class ScriptedStore:
    """A store whose load/save answers come from a script of results or exceptions."""

    def __init__(self, loads, saves=()):
        self.loads = list(loads)
        self.saves = list(saves)
        self.saved = []
        self.closed = False

    def _next(self, results):
        result = results.pop(0)
        return defer.fail(result) if isinstance(result, Exception) else defer.succeed(result)

    def load(self):
        return self._next(self.loads)

    def save(self, config, expected_version):
        self.saved.append((config, expected_version))
        return self._next(self.saves)

    def watch(self, callback):
        return lambda: None

    def close(self):
        self.closed = True


class Child(Service):
    pass


def gate_for(store, factories):
    clock = Clock()
    balancer = Balancer(SEED, factories, reactor=clock)
    gate = LoadThenServe(ConfigController(balancer, store), SEED, reactor=clock, max_backoff=2.0)
    child = Child()
    child.setServiceParent(gate)
    return gate, child, balancer, clock


def test_gate_waits_for_the_store_with_backoff(factories):
    """
    While the store cannot be read the listener stays stopped and loads
    are retried with growing delays; once the store answers, its config is
    in force before the listener starts.
    """
    unavailable = StoreError("config store unavailable: refused")
    store = ScriptedStore([unavailable, unavailable, unavailable, STORED])
    gate, child, balancer, clock = gate_for(store, factories)
    gate.startService()
    assert not child.running and gate.attempts == 1
    delays = []
    while not gate.ready.called:
        [retry] = clock.getDelayedCalls()
        delays.append(round(retry.getTime() - clock.seconds(), 6))
        clock.advance(delays[-1])
    assert delays == [0.2, 0.4, 0.8]
    assert child.running
    assert balancer.config == STORED
    assert gate.ready.result == STORED


def test_gate_seeds_an_empty_store(factories):
    """An empty store gets the command line's config, created only if still absent."""
    store = ScriptedStore([None], [SEED])
    gate, child, balancer, _ = gate_for(store, factories)
    gate.startService()
    assert store.saved == [(SEED, 0)]
    assert child.running and balancer.config == SEED


def test_gate_adopts_the_seed_of_a_node_that_won(factories):
    """When another node seeded first, the creation loses and the winner's config is loaded."""
    store = ScriptedStore([None, STORED], [VersionConflict(0, 7)])
    gate, child, balancer, _ = gate_for(store, factories)
    gate.startService()
    assert child.running and balancer.config == STORED


def test_gate_warns_once_that_the_stored_config_wins_over_the_flags(factories):
    """
    A node started with C{--backend}/C{--strategy} on a key that already
    holds a config says, once, that those flags are ignored, as the file
    store does (it adopted the cluster's pool in silence); a node that
    seeded the key, or was given no such flags, says nothing of the kind.
    """
    from twisted.logger import capturedLogs, formatEvent

    def warnings(store, flags):
        clock = Clock()
        gate = LoadThenServe(ConfigController(Balancer(SEED, factories, reactor=clock), store), SEED,
                             reactor=clock, seed_flags=flags)
        with capturedLogs() as events:
            gate.startService()
        return [formatEvent(e) for e in events if "ignored" in formatEvent(e)]

    [line] = warnings(ScriptedStore([STORED]), ("--backend", "--strategy"))
    assert line.startswith("--backend, --strategy ignored: the cluster's config in ")
    assert "holds version 7" in line
    assert warnings(ScriptedStore([None], [SEED]), ("--backend",)) == []
    assert warnings(ScriptedStore([STORED]), ()) == []


def test_gate_does_not_serve_a_config_it_cannot_apply(factories):
    """
    A stored config naming a strategy this node lacks is not applied and the
    listener stays stopped; the gate retries until a usable config is stored.
    """
    from dataclasses import replace

    from lbproxy.model.config import StrategyChoice

    alien = replace(STORED, strategy=StrategyChoice("no-such-strategy"))
    store = ScriptedStore([alien, STORED])
    gate, child, balancer, clock = gate_for(store, factories)
    gate.startService()
    assert not child.running and balancer.config == SEED
    clock.advance(gate.max_backoff)
    assert child.running and balancer.config == STORED


def test_gate_stopped_before_load_stops_retrying(factories):
    """Stopping while waiting cancels the retry, never starts the listener and closes the store."""
    store = ScriptedStore([StoreError("config store unavailable: x")])
    gate, child, _, clock = gate_for(store, factories)
    gate.startService()
    gate.stopService()
    assert clock.getDelayedCalls() == []
    assert not child.running and store.closed


def member(ttl=9):
    client = FakeClient()
    clock = Clock()
    store = EtcdStore(["http://e1:2379"], "/lbproxy/t", client=client, reactor=clock)
    membership = Membership(store, "a", "http://10.0.0.1:8081", ttl=ttl, reactor=clock)
    return membership, client, clock


def register(membership, client, lease="42"):
    grant = client.next("/v3/lease/grant")
    assert grant.body == {"TTL": str(membership.ttl)}
    grant.respond({"header": {"revision": "3"}, "ID": lease, "TTL": str(membership.ttl)})
    put = client.next("/v3/kv/put")
    assert base64.b64decode(put.body["key"]) == b"/lbproxy/t/nodes/a"
    assert put.body["lease"] == lease
    put.respond({"header": {"revision": "4"}})
    return json.loads(base64.b64decode(put.body["value"]))


def test_membership_registers_under_a_lease_and_keeps_it_alive():
    """
    On start the node grants a lease and puts its key under it, then
    renews the lease every third of its TTL.
    """
    membership, client, clock = member(ttl=9)
    membership.startService()
    value = register(membership, client)
    assert value == {"name": "a", "admin_url": "http://10.0.0.1:8081", "since": 0.0}
    assert membership.lease == "42"
    clock.advance(3)
    keepalive = client.next("/v3/lease/keepalive")
    assert keepalive.body == {"ID": "42"}
    keepalive.respond({"result": {"header": {}, "ID": "42", "TTL": "9"}})
    assert membership.lease == "42" and client.requests == []


def test_membership_registers_again_when_the_lease_expired():
    """A keepalive answer without a TTL (the lease is gone) leads to a new registration."""
    membership, client, clock = member()
    membership.startService()
    register(membership, client)
    clock.advance(3)
    client.next("/v3/lease/keepalive").respond({"result": {"header": {}, "ID": "42"}})
    register(membership, client, lease="43")
    assert membership.lease == "43"


def test_membership_survives_an_unreachable_store_and_revokes_on_stop():
    """
    Failed renewals are retried on the next tick; stopping revokes the
    lease so the node leaves the list at once.
    """
    membership, client, clock = member()
    membership.startService()
    register(membership, client)
    clock.advance(3)
    client.next("/v3/lease/keepalive").refuse()
    assert membership.lease == "42"
    clock.advance(3)
    client.next("/v3/lease/keepalive").respond({"result": {"ID": "42", "TTL": "9"}})
    d = membership.stopService()
    revoke = client.next("/v3/lease/revoke")
    assert revoke.body == {"ID": "42"}
    revoke.respond({"header": {}})
    assert d.called and membership.lease is None


def test_nodes_lists_registered_nodes_sorted_and_marks_self():
    """nodes() ranges over the nodes prefix and decodes each registration."""
    membership, client, _ = member()
    d = membership.nodes()
    request = client.next("/v3/kv/range")
    assert base64.b64decode(request.body["key"]) == b"/lbproxy/t/nodes/"
    assert base64.b64decode(request.body["range_end"]) == b"/lbproxy/t/nodes0"

    def kv(name):
        value = json.dumps({"name": name, "admin_url": f"http://{name}", "since": 5.0})
        return {"key": "", "value": base64.b64encode(value.encode()).decode()}

    request.respond({"header": {}, "kvs": [kv("b"), kv("a"), {"value": "bm90IGpzb24="}], "count": "3"})
    assert d.result == [
        {"name": "a", "admin_url": "http://a", "since": 5.0, "self": True},
        {"name": "b", "admin_url": "http://b", "since": 5.0, "self": False},
    ]


class FixedMembership:
    def __init__(self, nodes):
        self.name = "a"
        self._nodes = nodes
        self.store = EtcdStore(["http://e1:2379"], "/x", client=FakeClient(), reactor=Clock())

    def nodes(self):
        if isinstance(self._nodes, Exception):
            return defer.fail(self._nodes)
        return defer.succeed(self._nodes)


def test_nodes_api_answers_json():
    """GET / of the nodes extension answers the list, this node's name and the store status."""
    nodes = [{"name": "a", "admin_url": None, "since": 1.0, "self": True}]
    http = StubTreq(NodesAPI(FixedMembership(nodes)).resource())
    response = http.get("http://node/").result
    assert response.code == 200
    body = json.loads(http.content(response).result)
    assert body["node"] == "a" and body["nodes"] == nodes
    assert body["store"]["kind"] == "etcd"


def test_nodes_api_says_when_the_store_is_unavailable():
    """With etcd unreachable the list is unknown: 503 with a JSON error."""
    http = StubTreq(NodesAPI(FixedMembership(StoreError("config store unavailable: refused"))).resource())
    response = http.get("http://node/").result
    assert response.code == 503
    body = json.loads(http.content(response).result)
    assert body["error"] == "config store unavailable: refused"


def test_nodes_api_answers_at_the_documented_path_without_a_redirect(factories):
    """Mounted on the admin app, C{GET /api/v1/nodes} (the path the docs,
    openapi.json and the failover recipe name) answers the JSON itself; it
    answered a 308 to C{/api/v1/nodes/} with an HTML body, which a
    monitoring check or C{curl -s} without C{-L} read as the answer."""
    from tests.webtools import BASE, Admin, settle

    nodes = [{"name": "a", "admin_url": None, "since": 1.0, "self": True}]
    admin = Admin(factories)
    admin.app.add_extension("nodes", NodesAPI(FixedMembership(nodes)))
    for path in ("/api/v1/nodes", "/api/v1/nodes/"):
        response = settle(admin.stub, admin.stub.get(BASE + path, allow_redirects=False))
        assert response.code == 200, (path, response.code)
        assert json.loads(settle(admin.stub, admin.stub.content(response)))["nodes"] == nodes


def test_admin_url_from_the_admin_endpoint():
    """Other nodes link to this node's admin UI by the --admin endpoint."""
    assert admin_url("tcp:8081:interface=127.0.0.1") == "http://127.0.0.1:8081"
    assert admin_url(r"tcp6:port=9000:interface=\:\:1") == "http://[::1]:9000"
    assert admin_url("unix:/tmp/x.sock") is None


def parse(*args):
    options = Options()
    options.parseOptions(["--engine", "twisted", *args])
    return options


def test_store_option_selects_etcd():
    """--store etcd:URL,URL selects cluster mode with those members, prefix and node name."""
    options = parse("--store", "etcd:http://127.0.0.1:2379,http://127.0.0.2:2379",
                    "--store-prefix", "/lbproxy/prod/", "--node-name", "lb-1")
    assert options.spec.etcd_endpoints == ("http://127.0.0.1:2379", "http://127.0.0.2:2379")
    assert options.spec.store_prefix == "/lbproxy/prod"
    assert options.spec.node == "lb-1"
    default = parse("--store", "etcd:http://127.0.0.1:2379", "--admin", "tcp:9091:interface=127.0.0.1")
    assert default.spec.node.endswith("-9091")


@pytest.mark.parametrize("args", [
    ["--store", "etcd:localhost:2379"],
    ["--store", "consul:http://h:8500"],
    ["--store", "etcd:http://h:2379/v3"],
    ["--store", "etcd:http://h:2379", "--store-prefix", "relative"],
    ["--store", "etcd:http://h:2379", "--node-name", "bad name"],
    ["--store", "etcd:http://h:2379", "--state-dir", "/tmp"],
])
def test_malformed_cluster_options_are_usage_errors(args):
    """A malformed --store, --store-prefix or --node-name is a UsageError."""
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_membership_and_store_share_one_etcd_client():
    """Membership talks to etcd through the store's EtcdClient: its requests
    rotate over the same members and a failed renewal marks the store
    unavailable, a renewal that gets through marks it available again."""
    client = FakeClient()
    clock = Clock()
    store = EtcdStore(["http://e1:2379", "http://e2:2379"], "/lbproxy/t", client=client, reactor=clock)
    membership = Membership(store, "a", "http://10.0.0.1:8081", ttl=9, reactor=clock)
    assert membership.store.etcd is store.etcd
    membership.startService()
    grant = client.next("/v3/lease/grant")
    grant.refuse()
    retry = client.next("/v3/lease/grant")
    assert retry.base == "http://e2:2379"
    retry.refuse()
    assert store.status()["available"] is False
    assert "e1:2379" in store.status()["error"] and "e2:2379" in store.status()["error"]
    clock.advance(3)
    client.next("/v3/lease/grant").respond({"header": {}, "ID": "7", "TTL": "9"})
    assert store.status()["available"] is True
    client.next("/v3/kv/put").respond({"header": {}})
    assert membership.lease == "7"


def test_gate_records_the_seed_as_the_start(factories):
    """Seeding an empty store with history describes that version as the
    config at start (by start), not a version by unknown."""
    from zope.interface import directlyProvides

    from lbproxy.control.store.history import START, IConfigHistory

    store = ScriptedStore([None], [SEED])
    notes = []
    store.describe = lambda version, change: notes.append((version, change))
    directlyProvides(store, IConfigHistory)
    gate, child, balancer, _ = gate_for(store, factories)
    gate.startService()
    assert notes == [(SEED.version, START)] and store.saved == [(SEED, 0)]
