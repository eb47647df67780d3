"""
C{twistd lbproxy --store etcd:...} as the assembly builds it: the node waits
for etcd before proxying, says so in its status, then loads, listens and
registers; the admin API lists the node.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from lbproxy.startup.assembly import assemble
from lbproxy.startup.tap import Options
from tests.etcdtools import EtcdCluster
from tests.integration import relay_harness as h

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


def until(predicate, timeout=15.0, step=0.01):
    """Wait without blocking the reactor; see L{relay_harness.until}."""
    return h.until(predicate, timeout, step)

class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Once(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"hello\n")
        self.got = b""

    def dataReceived(self, data):
        self.got += data
        if self.got.endswith(b"\n"):
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.factory.done.callback(self.got)


async def through(port):
    factory = protocol.ClientFactory.forProtocol(Once)
    factory.done = defer.Deferred()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(factory)
    return await factory.done


@pytest_twisted.ensureDeferred
async def test_node_waits_for_etcd_then_serves(tmp_path):
    """
    Started while etcd is down, the node does not listen for clients and
    its status says the store is unavailable; once etcd starts it stores
    its seed config, starts the listener (clients reach the backend),
    registers, and C{GET /api/v1/nodes} lists it as itself.
    """
    etcd = EtcdCluster(tmp_path / "etcd", size=1)
    echo = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
    options = Options()
    options.parseOptions([
        "--store", f"etcd:{etcd.endpoints[0]}",
        "--store-prefix", "/lbproxy/startup",
        "--node-name", "n1",
        "--listen", "tcp:0:interface=127.0.0.1",
        "--admin", "tcp:0:interface=127.0.0.1",
        "--engine", "twisted",
        "--no-access-log",
        "--backend", f"127.0.0.1:{echo.getHost().port}",
    ])
    assembly = assemble(options.spec, reactor)
    top = assembly.top
    gate = top.getServiceNamed("cluster")
    proxy = gate.getServiceNamed("proxy")
    top.startService()
    try:
        admin_port = assembly.admin_listener.address()[1]
        admin = f"http://127.0.0.1:{admin_port}/api/v1"
        await until(lambda: gate.attempts >= 2)
        assert not proxy.running
        status = json.loads(await (await treq.get(admin + "/status", persistent=False)).content())
        assert status["store"]["kind"] == "etcd"
        assert status["store"]["available"] is False
        assert "config store unavailable" not in status["store"]["error"]
        assert etcd.endpoints[0] in status["store"]["error"]
        assert status["node"] == "n1"

        await etcd.start()
        config = await gate.ready
        assert [b.port for b in config.backends] == [echo.getHost().port]
        proxy_port = proxy.address()[1]
        assert await through(proxy_port) == b"hello\n"
        await until(lambda: assembly.membership.lease is not None)
        response = await treq.get(admin + "/nodes", persistent=False)
        body = json.loads(await response.content())
        assert response.code == 200, body
        assert body["node"] == "n1"
        assert [(n["name"], n["self"]) for n in body["nodes"]] == [("n1", True)]
        assert body["nodes"][0]["admin_url"] == f"http://127.0.0.1:{admin_port}"
        status = json.loads(await (await treq.get(admin + "/status", persistent=False)).content())
        assert status["store"]["available"] is True
        assert status["cluster"]["registered"] is True
    finally:
        await defer.maybeDeferred(top.stopService)
        await echo.stopListening()
        await etcd.kill()
