"""
Cluster mode end to end through the admin HTTP API: three complete lbproxy
nodes as C{twistd lbproxy --store etcd:...} builds them (the assembly, in
the test reactor), on a real three-member etcd cluster.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor, task

from lbproxy.startup.assembly import assemble
from lbproxy.startup.tap import Options
from tests.integration import relay_harness as h

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


def until(predicate, timeout=15.0, step=0.005):
    """Wait without blocking the reactor; see L{relay_harness.until}."""
    return h.until(predicate, timeout, step)

class FeedReader(protocol.Protocol):
    """Collects the C{config} events of an SSE stream."""

    def __init__(self):
        self.buffer = b""
        self.configs = []

    def dataReceived(self, data):
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
            if lines.get(b"event") == b"config":
                self.configs.append(json.loads(lines[b"data"]))

    def connectionLost(self, reason):
        pass


class HttpNode:
    def __init__(self, name, etcd, prefix):
        options = Options()
        options.parseOptions([
            "--store", "etcd:" + ",".join(etcd.endpoints),
            "--store-prefix", prefix,
            "--node-name", name,
            "--listen", "tcp:0:interface=127.0.0.1",
            "--admin", "tcp:0:interface=127.0.0.1",
            "--engine", "twisted",
            "--no-access-log",
            "--backend", "127.0.0.1:1",
        ])
        self.name = name
        self.assembly = assemble(options.spec, reactor)
        self.top = self.assembly.top
        self.feed = FeedReader()
        self.feed_response = None

    async def start(self):
        self.top.startService()
        await self.top.getServiceNamed("cluster").ready
        port = self.assembly.admin_listener.address()[1]
        self.api = f"http://127.0.0.1:{port}/api/v1"
        response = await treq.get(self.api + "/events", unbuffered=True, persistent=False)
        self.feed_response = response
        response.deliverBody(self.feed)

    async def stop(self):
        if self.feed.transport is not None:
            self.feed.transport.stopProducing()
        await defer.maybeDeferred(self.top.stopService)

    def post_backend(self, port, version=None):
        headers = {"If-Match": f'"{version}"'} if version is not None else {}
        return treq.post(
            self.api + "/backends", json={"host": "127.0.0.1", "port": port},
            headers=headers, persistent=False,
        )

    async def backend_ports(self):
        response = await treq.get(self.api + "/backends", persistent=False)
        body = json.loads(await response.content())
        return [b["port"] for b in body["backends"]]

    def announced(self, port):
        return any(any(b["port"] == port for b in e["config"]["backends"]) for e in self.feed.configs)


@pytest.fixture
def http_nodes(etcd3, request):
    """Three full nodes A, B, C sharing a prefix on the etcd cluster."""
    nodes = [HttpNode(n, etcd3, f"/lbproxy/{request.node.name}") for n in "ABC"]
    yield nodes
    for n in nodes:
        pytest_twisted.blockon(defer.ensureDeferred(n.stop()))


@pytest_twisted.ensureDeferred
async def test_api_edits_reach_every_node_and_conflicts_get_409(http_nodes, etcd3):
    """
    A backend POSTed to node A's API is listed by B's and C's APIs and
    arrives as a C{config} event on their SSE feeds; two nodes POSTing on
    the same version leave one 201 and one refusal (412 with If-Match, 409
    without) and never lose an update; with etcd down the API refuses changes
    (507, "config store unavailable") and its status says so; once etcd is
    back the same POST is accepted.
    """
    a, b, c = http_nodes
    for n in http_nodes:
        await n.start()
    await until(lambda: all(n.assembly.store.status()["watching"] for n in http_nodes))

    response = await a.post_backend(7001)
    assert response.code == 201, await response.content()
    await until(lambda: b.announced(7001) and c.announced(7001))
    assert 7001 in await b.backend_ports() and 7001 in await c.backend_ports()

    # Two nodes change the same version at the same moment (If-Match names
    # it): exactly one change is stored, the other is refused (by etcd's
    # compare-and-swap, or by the node if it already saw the winner).
    for round in range(3):
        version = json.loads(await (await treq.get(a.api + "/config", persistent=False)).content())["version"]
        await until(lambda: b.assembly.balancer.config.version == version)
        port_a, port_b = 7100 + 2 * round, 7101 + 2 * round
        first, second = await defer.gatherResults(
            [a.post_backend(port_a, version), b.post_backend(port_b, version)]
        )
        assert sorted([first.code, second.code]) == [201, 412], (first.code, second.code)
        loser = second if second.code == 412 else first
        assert "stale" in json.loads(await loser.content())["error"]
        stored, lost = (port_a, port_b) if first.code == 201 else (port_b, port_a)
        await until(lambda: all(n.announced(stored) for n in http_nodes))
        for n in http_nodes:
            ports = await n.backend_ports()
            assert stored in ports and lost not in ports

    # Without If-Match a change applies to the newest config the node has:
    # a node that lost the race on a version it had not yet seen changed
    # answers 409; one that already saw it applies on top.  Both writes are
    # never stored over each other.
    outcomes = set()
    for round in range(5):
        port_a, port_b = 7200 + 2 * round, 7201 + 2 * round
        first, second = await defer.gatherResults([a.post_backend(port_a), b.post_backend(port_b)])
        codes = tuple(sorted([first.code, second.code]))
        assert codes in ((201, 409), (201, 201)), codes
        outcomes.add(codes)
        kept = [p for p, r in ((port_a, first), (port_b, second)) if r.code == 201]
        await until(lambda: all(all(n.announced(p) for p in kept) for n in http_nodes))
        for n in http_nodes:
            ports = await n.backend_ports()
            assert all(p in ports for p in kept)
            assert not any(p in ports for p, r in ((port_a, first), (port_b, second)) if r.code == 409)
    print(f"racing POSTs without If-Match: {sorted(outcomes)}")

    await etcd3.kill()
    await until(lambda: not a.assembly.store.available)
    response = await a.post_backend(7004)
    body = json.loads(await response.content())
    assert response.code == 507 and "config store unavailable" in body["error"]
    status = json.loads(await (await treq.get(a.api + "/status", persistent=False)).content())
    assert status["store"]["available"] is False
    assert 7004 not in await a.backend_ports()

    await etcd3.restart()
    deadline = reactor.seconds() + 30
    while True:
        response = await a.post_backend(7004)
        if response.code == 201:
            break
        assert response.code == 507, await response.content()
        assert reactor.seconds() < deadline, "edits still refused 30 s after etcd came back"
        await task.deferLater(reactor, 0.05, lambda: None)
    await until(lambda: c.announced(7004))
