"""
With no flag about health checks, a real C{twistd -n lbproxy} finds a
backend killed with SIGKILL without any client traffic: the admin API shows
it down within 5 s, no new client connection goes to it (not even a refused
connect and a retry), and after a restart on the same port it is up again
within 10 s (the default tcp check: interval 1 s, fall 2, rise 2).
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from tests.integration.test_health_process import spawn
from tests.integration.test_restart import children, free_port, start, stop_cleanly  # noqa: F401

pytestmark = pytest.mark.integration


class _Greeting(protocol.Protocol):
    """A client that learns its backend's name from the first line, then closes."""

    def __init__(self) -> None:
        self.name: defer.Deferred[str] = defer.Deferred()
        self._buf = b""

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        if b"\n" in self._buf and not self.name.called:
            self.name.callback(self._buf.split(b"\n", 1)[0].decode())
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if not self.name.called:
            self.name.errback(reason)


async def served_by(port: int) -> str:
    """Connect a client through the proxy; the name of the backend that answered."""
    client = _Greeting()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), client)
    return await client.name.addTimeout(10, reactor)


async def states(child) -> dict[str, str]:
    code, body = await child.call("GET", "/backends", timeout=5)
    assert code == 200
    return {b["id"]: b["state"] for b in body["backends"]}


async def until_state(child, backend: str, state: str, within: float) -> float:
    """Poll the admin API until C{backend} is in C{state}; the seconds it took."""
    began = reactor.seconds()
    while True:
        seen = await states(child)
        took = reactor.seconds() - began
        if seen[backend] == state:
            return took
        assert took < within, f"{backend} still {seen[backend]} after {took:.1f}s, not {state}"
        await task.deferLater(reactor, 0.1, lambda: None)


async def counters(child) -> dict[str, float]:
    response = await treq.get(child.base + "/metrics", pool=child.pool, timeout=5)
    text = (await response.content()).decode()
    return {
        name: float(value)
        for name, value in re.findall(
            r'^(lbproxy_(?:retries|connect_failures)_total)\{service="default"\} (\S+)$', text, re.M)
    }


@pytest_twisted.ensureDeferred
async def test_killed_backend_is_shown_down_and_skipped_with_no_flags(tmp_path, children):  # noqa: F811
    """Two backend processes, lbproxy started with only --listen/--admin/
    --state-dir and the two --backend flags.  SIGKILL one with no traffic:
    within 5 s the API says down; ten new clients then all reach the other
    with no connect failure or retry counted; restarted on the same port,
    it is up within 10 s and serves clients again."""
    procs = {name: await spawn(name) for name in ("A", "B")}
    try:
        listen = free_port()
        child = await start(
            tmp_path / "state", "--listen", f"tcp:{listen}:interface=127.0.0.1",
            "--backend", f"127.0.0.1:{procs['A'].port}", "--backend", f"127.0.0.1:{procs['B'].port}",
        )
        children.append(child)
        await until_state(child, "b1", "up", 10)
        await until_state(child, "b2", "up", 10)
        assert {await served_by(listen) for _ in range(4)} == {"A", "B"}

        procs["A"].kill()
        await procs["A"].ended
        took = await until_state(child, "b1", "down", 5)
        print(f"killed backend shown down after {took:.2f}s")
        before = await counters(child)
        assert set(before) == {"lbproxy_retries_total", "lbproxy_connect_failures_total"}
        served = [await served_by(listen) for _ in range(10)]
        assert served == ["B"] * 10
        assert await counters(child) == before, "a client still tried the dead backend"

        procs["A"] = await spawn("A", procs["A"].port)
        took = await until_state(child, "b1", "up", 10)
        print(f"restarted backend shown up after {took:.2f}s")
        assert "A" in {await served_by(listen) for _ in range(4)}
        code, config = await child.call("GET", "/config")
        assert config["health_check"]["type"] == "tcp"
        await stop_cleanly(child)
    finally:
        for proc in procs.values():
            proc.kill()
            await proc.ended
