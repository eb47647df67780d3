"""
lbproxy as a real child process (C{twistd -n lbproxy --state-dir DIR}):
changes made through the admin API survive a restart.

L{Child} is also the harness of L{tests.integration.test_crash_consistency}.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.web.client import HTTPConnectionPool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
API = "/api/v1"


def free_port() -> int:
    """A port the OS just handed out on 127.0.0.1 (free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stored_body(path: Path) -> dict[str, Any]:
    """
    Read a store file the way an auditor would, without lbproxy's code:
    it must parse, be format 1, and its sha256 must match its config.

    @return: the config body.
    """
    envelope = json.loads(path.read_bytes())
    assert envelope["format"] == 1, path
    body = envelope["config"]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert envelope["checksum"] == "sha256:" + hashlib.sha256(canonical).hexdigest(), f"{path}: checksum"
    return body


class _Watch(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred = defer.Deferred()
        self.status: tuple[int | None, int | None] | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data
        del self.output[:-200_000]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.status = (reason.value.exitCode, reason.value.signal)
        self.ended.callback(self.status)


class Child:
    """
    One C{twistd -n lbproxy} process on loopback with its admin API on a
    free port, spawned without blocking the reactor.
    """

    def __init__(self, state_dir: Path, *flags: str) -> None:
        self.state_dir = state_dir
        self.admin = free_port()
        self.base = f"http://127.0.0.1:{self.admin}"
        self.watch = _Watch()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        argv = [
            sys.executable, "-c", TWISTD, "-n", "--pidfile=", "lbproxy",
            "--listen", "tcp:0:interface=127.0.0.1",
            "--admin", f"tcp:{self.admin}:interface=127.0.0.1",
            "--state-dir", str(state_dir), *flags,
        ]
        self.transport = reactor.spawnProcess(self.watch, sys.executable, argv, env=env, path=str(REPO))

    @property
    def output(self) -> str:
        return self.watch.output.decode("utf-8", "replace")

    async def ready(self, timeout: float = 20.0) -> "Child":
        """Wait until the admin API answers, or fail with the child's output."""
        deadline = reactor.seconds() + timeout
        while True:
            if self.watch.status is not None:
                raise AssertionError(f"lbproxy exited {self.watch.status}:\n{self.output}")
            try:
                code, _ = await self.call("GET", "/config", timeout=2)
                if code == 200:
                    return self
            except Exception:
                pass
            if reactor.seconds() > deadline:
                self.signal("KILL")
                raise AssertionError(f"lbproxy's admin API did not answer in {timeout}s:\n{self.output}")
            await task.deferLater(reactor, 0.05, lambda: None)

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
        """
        One admin API request.

        @return: C{(status code, decoded JSON body)}.
        """
        kwargs: dict[str, Any] = {"timeout": timeout, "pool": self.pool}
        if body is not None:
            kwargs["json"] = body
        response = await treq.request(method, self.base + API + path, **kwargs)
        content = await response.content()
        return response.code, json.loads(content) if content else None

    def signal(self, name: str) -> None:
        if self.watch.status is None:
            self.transport.signalProcess(name)

    async def stop(self, name: str = "TERM", timeout: float = 15.0) -> tuple[int | None, int | None]:
        """Send C{name} and wait (bounded) for the process to end."""
        self.signal(name)
        timer = reactor.callLater(timeout, self.signal, "KILL")
        status = await self.watch.ended
        if timer.active():
            timer.cancel()
        await self.pool.closeCachedConnections()
        return status


async def stop_cleanly(child: Child) -> None:
    """
    SIGTERM, then check twistd shut down in order and exited 0 (a
    graceful stop, lbproxy.control.lifecycle, is a success).
    """
    assert await child.stop("TERM") == (0, None)
    assert "Server Shut Down." in child.output, child.output


async def start(state_dir: Path, *flags: str) -> Child:
    """
    Start a child and wait for its admin API; if another process took the
    free port first, try again with another.
    """
    for attempt in range(3):
        child = Child(state_dir, *flags)
        try:
            return await child.ready()
        except AssertionError:
            if attempt == 2 or "CannotListenError" not in child.output:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def children():
    """Every child started by a test; any still running at the end is killed."""
    started: list[Child] = []
    yield started
    for child in started:
        if child.watch.status is None:
            child.signal("KILL")
            pytest_twisted.blockon(child.watch.ended)


@pytest_twisted.ensureDeferred
async def test_pool_and_strategy_survive_restart(tmp_path, children):
    """
    Backends added, a weight changed and the strategy switched through the
    API are all there after SIGTERM and a start with the same --state-dir,
    and the command-line seed, stored with the first change, is kept too.
    """
    state = tmp_path / "state"
    child = await start(state, "--backend", "127.0.0.1:9001")
    children.append(child)
    assert (await child.call("POST", "/backends", {"host": "127.0.0.1", "port": 9002, "weight": 3}))[0] == 201
    code, added = await child.call("POST", "/backends", {"host": "127.0.0.1", "port": 9003})
    assert code == 201
    assert (await child.call("PATCH", f"/backends/{added['id']}", {"weight": 7, "state": "disabled"}))[0] == 200
    assert (await child.call("PUT", "/strategy", {"name": "least-connections"}))[0] == 200
    code, before = await child.call("GET", "/config")
    assert code == 200
    await stop_cleanly(child)

    again = await start(state)
    children.append(again)
    code, after = await again.call("GET", "/config")
    assert after == before
    assert [(b["port"], b["weight"], b["state"]) for b in after["backends"]] == [
        (9001, 1, "up"), (9002, 3, "up"), (9003, 7, "disabled"),
    ]
    assert after["strategy"]["name"] == "least-connections"
    code, strategy = await again.call("GET", "/strategy")
    assert strategy["name"] == "least-connections"
    # The store holds the document of services; GET /config is its one service.
    stored = stored_body(state / "config.json")
    assert stored["version"] == before["version"]
    assert stored["services"] == [{k: v for k, v in before.items() if k != "version"}]
    assert stored_body(state / "config.json.prev")["version"] == before["version"] - 1
    await stop_cleanly(again)


@pytest_twisted.ensureDeferred
async def test_flags_ignored_on_stored_config(tmp_path, children):
    """
    Restarting with different --backend/--strategy flags does not change a
    stored config, and the log says the flags were ignored.
    """
    state = tmp_path / "state"
    child = await start(state, "--backend", "127.0.0.1:9001")
    children.append(child)
    assert (await child.call("PUT", "/strategy", {"name": "random"}))[0] == 200
    await stop_cleanly(child)

    again = await start(state, "--backend", "127.0.0.1:9999", "--strategy", "source-hash")
    children.append(again)
    code, config = await again.call("GET", "/config")
    assert [b["port"] for b in config["backends"]] == [9001]
    assert config["strategy"]["name"] == "random"
    await stop_cleanly(again)
    assert "--backend, --strategy ignored" in again.output


@pytest_twisted.ensureDeferred
async def test_damaged_store_at_startup(tmp_path, children):
    """
    A truncated config.json at startup: lbproxy starts from
    config.json.prev and logs a critical line naming the file; with
    config.json.prev damaged as well it refuses to start, with a one-line
    reason naming the file and no traceback.
    """
    state = tmp_path / "state"
    child = await start(state)
    children.append(child)
    assert (await child.call("POST", "/backends", {"host": "127.0.0.1", "port": 9002}))[0] == 201
    assert (await child.call("PUT", "/strategy", {"name": "random"}))[0] == 200
    await stop_cleanly(child)
    good = (state / "config.json").read_bytes()
    (state / "config.json").write_bytes(good[: len(good) // 2])

    again = await start(state)
    children.append(again)
    code, config = await again.call("GET", "/config")
    assert [b["port"] for b in config["backends"]] == [9002]
    assert config["strategy"]["name"] == "round-robin"
    assert config["version"] == 1
    await stop_cleanly(again)
    [line] = [ln for ln in again.output.splitlines() if "#critical]" in ln]
    assert f"{state}/config.json is not valid JSON" in line and "config.json.prev" in line

    (state / "config.json.prev").write_bytes(b"")
    refused = Child(state)
    children.append(refused)
    assert await refused.watch.ended == (1, None)
    lines = refused.output.strip().splitlines()
    assert lines[-1].startswith("lbproxy: cannot start: the config store ")
    assert f"{state}/config.json.prev is empty" in lines[-1]
    assert "Traceback" not in refused.output
    await refused.pool.closeCachedConnections()
