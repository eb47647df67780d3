"""
Cluster mode end to end through the admin HTTP API: three complete lbproxy
nodes as C{twistd lbproxy --store etcd:...} builds them (makeService, in
the test reactor), on a real three-member etcd cluster.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor, task

from lbproxy.tap import Options, makeService

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


async def until(predicate, timeout=15.0, step=0.005):
    """Wait without blocking the reactor until C{predicate()} holds; return the seconds waited."""
    start = reactor.seconds()
    while not predicate():
        if reactor.seconds() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await task.deferLater(reactor, step, lambda: None)
    return reactor.seconds() - start


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
        self.top = makeService(options, reactor)
        self.feed = FeedReader()
        self.feed_response = None

    async def start(self):
        self.top.startService()
        await self.top.getServiceNamed("cluster").ready
        port = (await self.top.getServiceNamed("admin")._waitingForPort).getHost().port
        self.api = f"http://127.0.0.1:{port}/api/v1"
        response = await treq.get(self.api + "/events", unbuffered=True, persistent=False)
        self.feed_response = response
        response.deliverBody(self.feed)

    async def stop(self):
        if self.feed.transport is not None:
            self.feed.transport.stopProducing()
        await defer.maybeDeferred(self.top.stopService)

    def post_backend(self, port):
        return treq.post(
            self.api + "/backends", json={"host": "127.0.0.1", "port": port}, persistent=False
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
    the same version leave one 201 and one 409 (and never lose an update);
    with etcd down the API refuses changes
    (507, "config store unavailable") and its status says so; once etcd is
    back the same POST is accepted.
    """
    a, b, c = http_nodes
    for n in http_nodes:
        await n.start()
    await until(lambda: all(n.top.store.status()["watching"] for n in http_nodes))

    response = await a.post_backend(7001)
    assert response.code == 201, await response.content()
    await until(lambda: b.announced(7001) and c.announced(7001))
    assert 7001 in await b.backend_ports() and 7001 in await c.backend_ports()

    # Two POSTs at the same moment: when both nodes still base the change
    # on the same version, etcd's compare-and-swap lets one through and the
    # other gets 409; when one node already saw the other's write, both
    # apply in turn.  Either way no update is lost.
    conflicts = 0
    for round in range(10):
        port_a, port_b = 7100 + 2 * round, 7101 + 2 * round
        first, second = await defer.gatherResults([a.post_backend(port_a), b.post_backend(port_b)])
        codes = sorted([first.code, second.code])
        assert codes in ([201, 409], [201, 201]), codes
        if codes == [201, 409]:
            conflicts += 1
            loser = second if second.code == 409 else first
            assert "stale" in json.loads(await loser.content())["error"]
            stored, lost = (port_a, port_b) if first.code == 201 else (port_b, port_a)
            await until(lambda: all(n.announced(stored) for n in http_nodes))
            for n in http_nodes:
                ports = await n.backend_ports()
                assert stored in ports and lost not in ports
        else:
            await until(lambda: all(n.announced(port_a) and n.announced(port_b) for n in http_nodes))
        if conflicts >= 2:
            break
    assert conflicts >= 1, "the two nodes never raced on the same version"

    await etcd3.kill()
    await until(lambda: not a.top.store.available)
    response = await a.post_backend(7004)
    body = json.loads(await response.content())
    assert response.code == 507 and "config store unavailable" in body["error"]
    status = json.loads(await (await treq.get(a.api + "/status", persistent=False)).content())
    assert status["store"]["available"] is False
    assert 7004 not in await a.backend_ports()

    await etcd3.restart()
    while True:
        response = await a.post_backend(7004)
        if response.code == 201:
            break
        assert response.code == 507, await response.content()
        await task.deferLater(reactor, 0.05, lambda: None)
    await until(lambda: c.announced(7004))
