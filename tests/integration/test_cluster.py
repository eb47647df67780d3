"""
Cluster mode for real: three lbproxy nodes (each a Balancer, a
ConfigController, an EtcdStore, the startup gate and membership, in the
test reactor) against a real three-member etcd cluster on loopback.

The failover figures these tests measure are printed as C{FIGURE ...}
lines; run with C{-s} to see them.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.web.server import Site

from lbproxy.control.cluster import LoadThenServe, Membership, NodesAPI
from lbproxy.control.controller import ConfigController
from lbproxy.control.store.etcd import EtcdStore
from lbproxy.model.changes import add_backend
from lbproxy.model.config import Backend, Config, ProxySettings
from lbproxy.model.errors import StoreError, VersionConflict
from lbproxy.policy.balancer import Balancer
from lbproxy.relay.twisted_engine import ProxyFactory
from tests.integration import relay_harness as h

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


def until(predicate, timeout=15.0, step=0.005):
    """Wait without blocking the reactor; see L{relay_harness.until}."""
    return h.until(predicate, timeout, step)

def figure(name, value, unit="ms"):
    print(f"FIGURE {name}={value:.0f}{unit}")


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Node:
    """
    One lbproxy node as makeService wires it in cluster mode, with its
    proxy listener behind the startup gate.
    """

    def __init__(self, name, endpoints, prefix, factories, seed):
        self.name = name
        self.store = EtcdStore(endpoints, prefix, reactor=reactor)
        self.balancer = Balancer(seed, factories, ProxySettings(access_log=False), reactor=reactor)
        self.controller = ConfigController(self.balancer, self.store)
        self.controller.observe(self.balancer.events)  # as AdminApp does: config events
        self.events = []
        self.balancer.events.subscribe(
            lambda e: self.events.append(e) if e.type == "config" else None
        )
        self.gate = LoadThenServe(self.controller, seed, reactor=reactor)
        self.listener = StreamServerEndpointService(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), ProxyFactory(self.balancer, reactor)
        )
        self.listener.setServiceParent(self.gate)
        self.membership = Membership(self.store, name, f"http://127.0.0.1/{name}", ttl=5, reactor=reactor)
        self.membership.setServiceParent(self.gate)

    async def start(self):
        self.gate.startService()
        await self.gate.ready
        port = await self.listener._waitingForPort
        self.port = port.getHost().port

    async def stop(self):
        self.controller.stop()
        self.store.close()
        if self.gate.running:
            await defer.maybeDeferred(self.gate.stopService)

    def has(self, port):
        return any(b.port == port for b in self.balancer.config.backends) and any(
            c.port == port for c in self.balancer.pool.candidates
        )

    def announced(self, port):
        return any(
            any(b["port"] == port for b in e.data["config"]["backends"]) for e in self.events
        )


@pytest.fixture
def cluster(etcd3, factories, request):
    """Three nodes A, B, C on the etcd cluster, under a prefix of their own."""
    seed = Config(version=1, backends=(Backend(id="b1", host="127.0.0.1", port=1),))
    prefix = f"/lbproxy/{request.node.name}"
    nodes = [Node(n, etcd3.endpoints, prefix, factories, seed) for n in "ABC"]
    yield nodes
    for n in nodes:
        pytest_twisted.blockon(defer.ensureDeferred(n.stop()))


async def start_all(nodes):
    await defer.gatherResults([defer.ensureDeferred(n.start()) for n in nodes])
    await until(lambda: all(n.store.status()["watching"] for n in nodes))


def add(port):
    return lambda c: add_backend(c, {"host": "127.0.0.1", "port": port})


@pytest_twisted.ensureDeferred
async def test_backend_added_on_a_reaches_b_and_c(cluster):
    """
    A backend added through node A's controller appears in B's and C's
    pools and in their event feeds (a C{config} event), within a second.
    """
    a, b, c = cluster
    await start_all(cluster)
    assert a.balancer.config == b.balancer.config == c.balancer.config
    started = reactor.seconds()
    new, _ = await a.controller.change(add(7001))
    waited = await until(lambda: b.has(7001) and c.has(7001) and b.announced(7001) and c.announced(7001))
    figure("propagation_total", (reactor.seconds() - started) * 1000)
    figure("propagation_after_commit", waited * 1000)
    assert waited < 1.0
    assert b.balancer.config == c.balancer.config == new


@pytest_twisted.ensureDeferred
async def test_concurrent_conflicting_edits_leave_one_winner(cluster):
    """
    Two nodes edit the same version at the same moment: exactly one change
    is stored, the other gets L{VersionConflict} (the API's 409), and all
    three nodes end up with the winner's config.
    """
    a, b, c = cluster
    await start_all(cluster)
    for _ in range(5):
        version = a.balancer.config.version
        port_a, port_b = 8000 + 2 * version, 8001 + 2 * version
        results = await defer.DeferredList(
            [a.controller.change(add(port_a)), b.controller.change(add(port_b))],
            consumeErrors=True,
        )
        wins = [r for ok, r in results if ok]
        losses = [r for ok, r in results if not ok]
        assert len(wins) == 1 and len(losses) == 1, results
        assert losses[0].check(VersionConflict)
        winner = wins[0][0]
        assert winner.version == version + 1
        await until(lambda: all(n.balancer.config == winner for n in cluster))
        loser_port = port_b if winner.backends[-1].port == port_a else port_a
        assert not any(n.has(loser_port) for n in cluster)


class Client(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"ping\n")
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        if self.received == b"ping\n":
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.factory.done.callback(self.received)


async def one_connection(port):
    factory = protocol.ClientFactory.forProtocol(Client)
    factory.done = defer.Deferred()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(factory)
    d = factory.done
    d.addTimeout(5, reactor)
    return await d


class Traffic:
    """Clients connecting through a node's proxy one after another."""

    def __init__(self, port, clients=4):
        self.port = port
        self.ok = 0
        self.failed = []
        self.running = True
        self.loops = [defer.ensureDeferred(self._loop()) for _ in range(clients)]

    async def _loop(self):
        while self.running:
            try:
                answer = await one_connection(self.port)
            except Exception as e:
                self.failed.append(repr(e))
            else:
                if answer == b"ping\n":
                    self.ok += 1
                else:
                    self.failed.append(f"answer {answer!r}")
            await task.deferLater(reactor, 0.002, lambda: None)

    async def stop(self):
        self.running = False
        await defer.gatherResults(self.loops)


@pytest_twisted.ensureDeferred
async def test_etcd_down_and_back_while_traffic_flows(cluster, etcd3):
    """
    Kill every etcd member while clients connect through node A's real
    proxy listener: no client connection fails; edits on any node are
    refused with "config store unavailable" and change nothing.  Start etcd
    again on its data: edits are accepted again and reach every node.
    """
    a, b, c = cluster
    echo = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
    try:
        await start_all(cluster)
        backend_port = echo.getHost().port
        await a.controller.change(
            lambda cfg: (cfg.__class__(version=cfg.version + 1, backends=(
                Backend(id="echo", host="127.0.0.1", port=backend_port),)), None)
        )
        await until(lambda: all(n.has(backend_port) for n in cluster))
        traffic = Traffic(a.port)
        await until(lambda: traffic.ok >= 20)

        await etcd3.kill()
        killed = reactor.seconds()
        await until(lambda: not a.store.available and not b.store.available)
        before = a.balancer.config
        for node in (a, b):
            with pytest.raises(StoreError, match="config store unavailable"):
                await node.controller.change(add(9100))
        assert a.balancer.config == before
        assert not any(n.has(9100) for n in cluster)
        status = a.store.status()
        assert status["available"] is False and status["error"]
        ok_during = traffic.ok
        await until(lambda: traffic.ok >= ok_during + 50)

        down_for = reactor.seconds() - killed
        restarted = reactor.seconds()
        await etcd3.restart()
        etcd_ready = reactor.seconds()
        attempts = 0
        while True:
            attempts += 1
            try:
                new, _ = await a.controller.change(add(9200))
                break
            except StoreError:
                if reactor.seconds() - etcd_ready > 15:
                    raise
                await task.deferLater(reactor, 0.02, lambda: None)
        accepted = reactor.seconds()
        await until(lambda: b.has(9200) and c.has(9200))
        reached = reactor.seconds()
        await until(lambda: all(n.store.available for n in cluster))
        await traffic.stop()
        figure("etcd_down_for", down_for * 1000)
        figure("etcd_restart_to_ready", (etcd_ready - restarted) * 1000)
        figure("edit_accepted_after_etcd_ready", (accepted - etcd_ready) * 1000)
        figure("edit_accepted_after_restart", (accepted - restarted) * 1000)
        figure("edit_reached_other_nodes_after_accept", (reached - accepted) * 1000)
        figure("client_connections_ok", traffic.ok, "")
        figure("client_connections_failed", len(traffic.failed), "")
        print(f"edit attempts until accepted: {attempts}")
        assert traffic.failed == []
        assert new.backends[-1].port == 9200
        assert b.balancer.config == c.balancer.config == new
    finally:
        await echo.stopListening()


@pytest_twisted.ensureDeferred
async def test_nodes_api_lists_live_nodes(cluster):
    """
    Every node registers under a lease: C{GET /api/v1/nodes} on A lists A,
    B and C, marks A as itself, and a node that stops drops out of the list.
    """
    a, b, c = cluster
    await start_all(cluster)
    await until(lambda: all(n.membership.lease for n in cluster))
    site = reactor.listenTCP(0, Site(NodesAPI(a.membership).resource()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{site.getHost().port}/"
    try:
        await check_nodes(url, c)
    finally:
        await site.stopListening()


async def check_nodes(url, c):
    response = await treq.get(url, persistent=False)
    assert response.code == 200
    body = json.loads(await response.content())
    assert body["node"] == "A"
    assert [n["name"] for n in body["nodes"]] == ["A", "B", "C"]
    assert [n["self"] for n in body["nodes"]] == [True, False, False]
    assert body["nodes"][1]["admin_url"] == "http://127.0.0.1/B"
    assert body["store"]["available"] is True
    await c.stop()
    response = await treq.get(url, persistent=False)
    body = json.loads(await response.content())
    assert [n["name"] for n in body["nodes"]] == ["A", "B"]


@pytest_twisted.ensureDeferred
async def test_one_etcd_member_down_is_no_outage(cluster, etcd3):
    """
    With the member every node talks to first killed, the other two keep a
    quorum: an edit through A is accepted at once (the store moves to the
    next member; if the leader died, after the election) and reaches B
    and C, whose watches move over too.
    """
    a, b, c = cluster
    await start_all(cluster)
    await etcd3.members[0].kill()
    killed = reactor.seconds()
    refused = 0
    while True:
        try:
            new, _ = await a.controller.change(add(7501))
            break
        except StoreError:
            # Killing the leader means an election (about a second).
            refused += 1
            assert reactor.seconds() - killed < 5.0
    accepted = reactor.seconds()
    await until(lambda: b.has(7501) and c.has(7501))
    reached = reactor.seconds()
    figure("one_member_down_edit_accepted_after_kill", (accepted - killed) * 1000)
    figure("one_member_down_change_reached_others_after_accept", (reached - accepted) * 1000)
    figure("one_member_down_edits_refused", refused, "")
    assert accepted - killed < 5.0
    assert reached - accepted < 1.5
    await until(lambda: all(n.store.available for n in cluster), timeout=5)
    assert b.balancer.config == c.balancer.config == new
