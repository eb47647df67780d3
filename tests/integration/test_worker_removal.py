"""
Removing a backend under C{twistd lbproxy --workers 2}: the admin API's
answer and state are what the worker processes report, not the parent's
own (empty) connection table.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

from tests.integration import relay_harness as h
from tests.integration.test_restart import children, start  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers are Linux-only"),
]


async def until(check: Any, what: str, timeout: float = 20.0) -> Any:
    """Await C{check()} until it returns something true, within a deadline."""
    deadline = reactor.seconds() + timeout
    while True:
        value = await check()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


async def workers(child: Any) -> list[dict[str, Any]]:
    code, status = await child.call("GET", "/status")
    assert code == 200, status
    return status["workers"]


async def ready_workers(child: Any) -> list[dict[str, Any]] | None:
    ws = await workers(child)
    return ws if all(w and w["listening"] and w["reported"] for w in ws) else None


def _open_one(port: int) -> socket.socket:
    s = h.client(port)
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    return s


def _echoing(socks: list[socket.socket]) -> int:
    alive = 0
    for s in socks:
        s.sendall(b"y")
        if s.recv(1) == b"y":
            alive += 1
    return alive


def _closed_by_proxy(socks: list[socket.socket]) -> int:
    """How many of C{socks} the proxy closed (EOF or reset; the sockets'
    timeout bounds the wait)."""
    closed = 0
    for s in socks:
        try:
            if s.recv(1) == b"":
                closed += 1
        except ConnectionResetError:
            closed += 1
    return closed


async def held_through_each_worker(child: Any, port: int) -> list[socket.socket]:
    """
    Open long-lived echoing connections one by one until every worker
    reports at least one of them (the kernel picks the worker).
    """
    socks: list[socket.socket] = []
    while len(socks) < 32:
        socks.append(await deferToThread(_open_one, port))

        async def counted() -> list[int] | None:
            actives = [w["active"] for w in await workers(child)]
            return actives if sum(actives) == len(socks) else None

        actives = await until(counted, f"workers report {len(socks)} connections")
        if min(actives) > 0:
            return socks
    raise AssertionError(f"32 connections all went to one worker: {actives}")


async def acknowledged_and_reported(child: Any, version: int) -> None:
    """
    Wait until every worker has applied C{version} and then reported
    again (so the parent has seen its counts under that version).
    """
    async def applied() -> list[dict[str, Any]] | None:
        ws = await workers(child)
        return ws if all(w["applied_version"] == version for w in ws) else None

    acked = await until(applied, f"every worker applies version {version}")
    marks = [w["reported"] for w in acked]

    async def reported() -> bool:
        return all(w["reported"] > m for w, m in zip(await workers(child), marks))

    await until(reported, "every worker reports after applying")


async def gone(child: Any, backend_id: str) -> bool:
    code, _ = await child.call("GET", f"/backends/{backend_id}")
    return code == 404


@pytest_twisted.ensureDeferred
async def test_removal_waits_for_the_workers_connections(tmp_path, children):  # noqa: F811
    """
    With a long-lived connection through each of two workers, a graceful
    DELETE answers the real number of connections and the backend stays
    C{removing} (its connections keep echoing) until they end, then it is
    gone.  A forced DELETE of a backend with such connections answers the
    real count, closed by the workers, and the clients see them closed;
    so does a forced DELETE of a backend already removing.
    """
    echo = h.serve(reactor, h.Echo)
    socks: list[socket.socket] = []
    try:
        child = await start(tmp_path / "state", "--workers", "2", "--no-access-log",
                            "--backend", f"127.0.0.1:{echo.getHost().port}")
        children.append(child)
        await until(lambda: ready_workers(child), "both workers listen and report")
        port = (await child.call("GET", "/status"))[1]["listen_port"]

        # Graceful: removing while the connections live, removed when they end.
        socks = await held_through_each_worker(child, port)
        n = len(socks)
        code, body = await child.call("DELETE", "/backends/b1")
        assert code == 200, body
        assert (body["state"], body["connections"], body["closed"]) == ("removing", n, 0)
        await acknowledged_and_reported(child, body["version"])
        code, view = await child.call("GET", "/backends/b1")
        assert code == 200 and view["state"] == "removing" and view["stats"]["active"] == n
        assert await deferToThread(_echoing, socks) == n
        for s in socks:
            s.close()
        socks = []
        await until(lambda: gone(child, "b1"), "b1 is removed once its connections end")

        # Forced: the workers close them and say how many.
        code, added = await child.call("POST", "/backends", {"host": "127.0.0.1", "port": echo.getHost().port})
        assert code == 201, added
        await acknowledged_and_reported(child, added["version"])
        socks = await held_through_each_worker(child, port)
        n = len(socks)
        code, body = await child.call("DELETE", f"/backends/{added['id']}?force=true")
        assert code == 200, body
        assert (body["connections"], body["closed"]) == (n, n), body
        assert body["state"] in ("removing", "removed")
        assert await deferToThread(_closed_by_proxy, socks) == n
        await until(lambda: gone(child, added["id"]), "the forced removal completes")

        # A second DELETE, forced, of a backend already removing: the
        # workers' connections are counted and closed (not the parent's 0).
        code, added = await child.call("POST", "/backends", {"host": "127.0.0.1", "port": echo.getHost().port})
        assert code == 201, added
        await acknowledged_and_reported(child, added["version"])
        socks = await held_through_each_worker(child, port)
        n = len(socks)
        code, body = await child.call("DELETE", f"/backends/{added['id']}")
        assert code == 200 and body["state"] == "removing", body
        await acknowledged_and_reported(child, body["version"])
        code, body = await child.call("DELETE", f"/backends/{added['id']}?force=true")
        assert code == 200, body
        assert (body["connections"], body["closed"]) == (n, n), body
        assert await deferToThread(_closed_by_proxy, socks) == n
        await until(lambda: gone(child, added["id"]), "the second, forced removal completes")
    finally:
        for s in socks:
            s.close()
        await echo.stopListening()
