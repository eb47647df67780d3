"""
The access log of a real C{twistd -n lbproxy} process: one line per
connection in the chosen format, logrotate's rename then SIGUSR1 moves new
lines to a new file, and syslog lines reach a datagram socket the test
bound; plus the config history across a restart.
"""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
import pytest_twisted

from tests.integration import relay_harness as h
from tests.integration.test_restart import children, free_port, start  # noqa: F401 (fixture)
from twisted.internet import reactor, threads

pytestmark = pytest.mark.integration


def connect_and_close(port: int) -> None:
    """One client connection (blocking: run it in a thread) that sends a
    line, reads its echo (so the close is clean, not a reset) and closes."""
    connect_from(port)


def lines_of(path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


@pytest_twisted.ensureDeferred
async def test_file_log_one_json_line_per_connection_and_rotation(tmp_path, children):  # noqa: F811
    """Three connections are three JSON lines naming the backend; after
    the file is renamed and SIGUSR1 sent, the next connection's line is in
    a new file at the same path and the renamed file keeps its three."""
    backend = h.serve(reactor, h.Echo)
    proxy = free_port()
    path = tmp_path / "access.log"
    child = await start(tmp_path / "state", "--listen", f"tcp:{proxy}:interface=127.0.0.1",
                        "--backend", f"127.0.0.1:{backend.getHost().port}",
                        "--access-log", str(path), "--engine", "fast")
    children.append(child)
    try:
        for _ in range(3):
            await threads.deferToThread(connect_and_close, proxy)
        await h.until(lambda: len(lines_of(path)) == 3)
        records = [json.loads(line) for line in lines_of(path)]
        assert {r["backend"] for r in records} == {"b1"}
        assert all(r["bytes_up"] == 6 and r["outcome"] == "ok" for r in records), records
        os.rename(path, tmp_path / "access.log.1")
        child.transport.signalProcess(signal.SIGUSR1)
        await h.until(lambda: path.exists())
        await threads.deferToThread(connect_and_close, proxy)
        await h.until(lambda: len(lines_of(path)) == 1)
        assert len(lines_of(tmp_path / "access.log.1")) == 3
    finally:
        await child.stop()
        await backend.stopListening()


@pytest_twisted.ensureDeferred
async def test_syslog_and_text_format(tmp_path, children):  # noqa: F811
    """--access-log syslog:PATH --access-log-format text sends one datagram
    per connection, in the text format, to the socket at PATH."""
    backend = h.serve(reactor, h.Echo)
    proxy = free_port()
    sock_path = str(tmp_path / "devlog")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.setblocking(False)
    got: list[str] = []

    def receive() -> bool:
        try:
            got.append(server.recv(4096).decode())
        except BlockingIOError:
            pass
        return bool(got)

    child = await start(tmp_path / "state", "--listen", f"tcp:{proxy}:interface=127.0.0.1",
                        "--backend", f"127.0.0.1:{backend.getHost().port}",
                        "--access-log", f"syslog:{sock_path}", "--access-log-format", "text")
    children.append(child)
    try:
        await threads.deferToThread(connect_and_close, proxy)
        await h.until(receive)
        assert got[0].startswith("<134>") and "lbproxy[" in got[0]
        assert " -> b1 up=6 " in got[0] and "outcome=ok" in got[0]
    finally:
        await child.stop()
        server.close()
        await backend.stopListening()


@pytest_twisted.ensureDeferred
async def test_history_survives_restart_and_rolls_back(tmp_path, children):  # noqa: F811
    """Changes made through the API are in the history after a restart
    (history.json), and rolling back to one of them puts its document in
    force as a new version."""
    state = tmp_path / "state"
    child = await start(state, "--backend", "127.0.0.1:9001", "--history", "5")
    children.append(child)
    assert (await child.call("POST", "/backends", {"id": "b2", "host": "127.0.0.1", "port": 9002}))[0] == 201
    assert (await child.call("PUT", "/strategy", {"name": "least-connections"}))[0] == 200
    await child.stop()
    again = await start(state)
    children.append(again)
    try:
        code, listed = await again.call("GET", "/history")
        assert code == 200
        assert [(e["version"], e["summary"]) for e in listed] == [
            (2, "strategy round-robin -> least-connections"), (1, "added backend b2 127.0.0.1:9002"),
            (0, "config at start")]
        code, config = await again.call("POST", "/history/1/rollback", {})
        assert code == 200 and config["version"] == 3
        assert config["services"][0]["strategy"]["name"] == "round-robin"
        code, listed = await again.call("GET", "/history")
        assert listed[0]["summary"] == "rolled back to version 1" and len(listed) == 4
    finally:
        await again.stop()


def connect_from(port: int) -> str:
    """One connection as L{connect_and_close}; returns the client's "host:port"."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        me = "%s:%d" % s.getsockname()[:2]
        s.sendall(b"hello\n")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while len(got) < 6:
            chunk = s.recv(64)
            if not chunk:
                break
            got += chunk
    return me


@pytest_twisted.ensureDeferred
async def test_workers_write_the_same_log_and_reopen_on_sigusr1(tmp_path, children):  # noqa: F811
    """With --workers 2 and --access-log FILE, every connection is exactly
    one JSON line in FILE (each worker appends whole batches; no old
    per-connection twisted.logger lines), and after a rename a SIGUSR1 to
    the parent (forwarded to each worker) makes both workers write to a
    new file at the path while the renamed one keeps the old lines."""
    backend = h.serve(reactor, h.Echo)
    proxy = free_port()
    path = tmp_path / "access.log"
    child = await start(tmp_path / "state", "--listen", f"tcp:{proxy}:interface=127.0.0.1",
                        "--backend", f"127.0.0.1:{backend.getHost().port}",
                        "--access-log", str(path), "--workers", "2")
    children.append(child)

    async def batch(n: int) -> set:
        return {await threads.deferToThread(connect_from, proxy) for _ in range(n)}

    def records(p) -> list[dict]:
        return [json.loads(line) for line in lines_of(p)]

    try:
        await h.until(lambda: child.output.count("relaying on") == 2, timeout=30)
        first = await batch(30)
        await h.until(lambda: len(lines_of(path)) >= 30)
        logged = records(path)
        assert sorted(r["client"] for r in logged) == sorted(first), logged
        assert all(r["backend"] == "b1" and r["bytes_up"] == 6 and r["outcome"] == "ok" for r in logged)
        assert " -> b1 up=6 " not in child.output, "a worker still writes the old per-connection lines"

        os.rename(path, tmp_path / "access.log.1")
        child.signal(signal.SIGUSR1)
        await h.until(lambda: child.output.count("access log reopened") == 2, timeout=15)
        second = await batch(30)
        await h.until(lambda: len(lines_of(path)) >= 30)
        assert sorted(r["client"] for r in records(path)) == sorted(second)
        assert sorted(r["client"] for r in records(tmp_path / "access.log.1")) == sorted(first)
    finally:
        await child.stop()
        await backend.stopListening()
