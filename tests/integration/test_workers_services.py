"""
C{twistd lbproxy --workers 2} carries every service: real processes, a
C{--config} file of two services, a third POSTed at runtime, and a backend
removal that waits for the workers to drain it.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.integration import lifecycle_harness as lh

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers are Linux-only"),
]


class _Named(socketserver.BaseRequestHandler):
    """Sends the server's name and a newline, then holds the connection
    until the client closes it."""

    def handle(self) -> None:
        self.request.sendall(self.server.name + b"\n")
        try:
            while self.request.recv(1024):
                pass
        except OSError:
            pass


class Backend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Named)
        self.name = name
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def first_line(port: int, keep: bool = False) -> bytes | tuple[bytes, socket.socket]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    if keep:
        return data.strip(), s
    s.close()
    return data.strip()


def call(admin: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/api/v1{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture
def backends():
    made = {name: Backend(name) for name in (b"a1", b"b1", b"b2", b"g1")}
    yield made
    for b in made.values():
        b.stop()


def write_config(tmp_path, backends) -> tuple[object, int, int]:
    """Two services, alpha and beta, on free ports: the file and the ports."""
    alpha, beta = lh.free_port(), lh.free_port()
    config = tmp_path / "services.toml"
    config.write_text(f"""
[services.alpha]
listen = ["tcp:{alpha}:interface=127.0.0.1"]
backends = [{{ host = "127.0.0.1", port = {backends[b"a1"].port}, id = "a1" }}]

[services.beta]
listen = ["tcp:{beta}:interface=127.0.0.1"]
backends = [
  {{ host = "127.0.0.1", port = {backends[b"b1"].port}, id = "b1" }},
  {{ host = "127.0.0.1", port = {backends[b"b2"].port}, id = "b2" }},
]
""")
    return config, alpha, beta


def spawn(tmp_path, config, alpha: int, beta: int, admin: int, *flags: str) -> lh.Proxy:
    """C{twistd -n lbproxy --config FILE --workers 2}, its workers listening."""
    log = tmp_path / f"lbproxy-{time.monotonic_ns()}.log"
    argv = [sys.executable, "-c", lh.TWISTD, "-n", "--pidfile=", "lbproxy", "--config", str(config),
            "--admin", f"tcp:{admin}:interface=127.0.0.1", "--workers", "2", "--no-access-log", *flags]
    env = dict(os.environ, PYTHONPATH=str(lh.REPO), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(lh.REPO))
    p = lh.Proxy(alpha, admin, proc, log, {"beta": beta})
    p.wait_ready()
    lh.until(lambda: all(w and w["listening"] for w in p.status()["workers"]), 30, "workers listening")
    return p


def stop(p: lh.Proxy) -> None:
    if p.proc.poll() is None:
        p.proc.terminate()
        try:
            p.proc.wait(20)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(5)


@pytest.fixture
def proxy(tmp_path, backends):
    config, alpha, beta = write_config(tmp_path, backends)
    p = None
    try:
        p = spawn(tmp_path, config, alpha, beta, lh.free_port())
        yield p
    finally:
        if p is not None:
            stop(p)


def per_worker(p: lh.Proxy, service: str, counter: str = "accepted") -> list[int]:
    return [(w or {}).get("services", {}).get(service, {}).get(counter, 0) for w in p.status()["workers"]]


def test_two_services_of_a_config_file_reach_their_own_pools_through_both_workers(proxy):
    """
    Two services of a --config file each reach only their own pool, and
    both workers take connections of each (the per-worker counters of the
    status API, per service); the API shows where each listens.
    """
    alpha, beta = proxy.listen, proxy.extra["beta"]
    assert {first_line(alpha) for _ in range(30)} == {b"a1"}
    assert {first_line(beta) for _ in range(30)} == {b"b1", b"b2"}
    lh.until(lambda: sum(per_worker(proxy, "alpha")) == 30 and sum(per_worker(proxy, "beta")) == 30,
             10, "the workers' reports")
    assert min(per_worker(proxy, "alpha")) > 0 and min(per_worker(proxy, "beta")) > 0
    status, body = call(proxy.admin, "GET", "/services/alpha")
    assert status == 200 and body["listening"] == [f"127.0.0.1:{alpha}"]


def test_a_service_posted_at_runtime_answers_through_both_workers_within_a_second(proxy, backends):
    """
    A service POSTed with a tcp:0 listener gets one concrete port (the
    parent binds every worker slot's socket on it before storing), its
    first connection is answered within a second of the POST's answer,
    and both workers carry it.
    """
    started = time.monotonic()
    status, body = call(proxy.admin, "POST", "/services", {
        "name": "gamma", "listen": ["tcp:0:interface=127.0.0.1"],
        "backends": [{"host": "127.0.0.1", "port": backends[b"g1"].port}],
    })
    assert status == 201, body
    answered = time.monotonic()
    port = int(body["listening"][0].rsplit(":", 1)[1])
    assert port != 0
    assert first_line(port) == b"g1"
    assert time.monotonic() - answered < 1.0, time.monotonic() - started
    assert {first_line(port) for _ in range(30)} == {b"g1"}
    lh.until(lambda: sum(per_worker(proxy, "gamma")) == 31, 10, "the workers' reports of gamma")
    assert min(per_worker(proxy, "gamma")) > 0
    # The other services are untouched.
    assert first_line(proxy.listen) == b"a1"


def test_removing_a_backend_of_the_second_service_waits_for_its_connection_in_a_worker(proxy):
    """
    A backend of the second service removed while a worker relays a
    long-lived connection to it stays C{removing} after both workers
    applied the removal and reported since; once the client closes, the
    removal finishes.
    """
    beta = proxy.extra["beta"]
    held = None
    for _ in range(50):
        name, s = first_line(beta, keep=True)
        if name == b"b1":
            held = s
            break
        s.close()
    assert held is not None, "no connection reached b1"
    try:
        lh.until(lambda: sum(per_worker(proxy, "beta", "active")) == 1, 10, "the held connection reported")
        status, body = call(proxy.admin, "DELETE", "/services/beta/backends/b1")
        assert status == 200, body
        assert (body["state"], body["connections"]) == ("removing", 1), body
        removed_at = time.time()
        version = body.get("version") or call(proxy.admin, "GET", "/services/beta")[1].get("version")

        # Acknowledgements, not a wait: both workers applied the new
        # document and reported after the removal.
        def caught_up() -> bool:
            workers = proxy.status()["workers"]
            return all(w and w["reported"] and w["applied_version"] >= (version or 0) for w in workers) and all(
                w["reported"] > removed_at - 0.05 for w in workers)

        lh.until(caught_up, 10, "both workers applied the removal and reported")
        status, view = call(proxy.admin, "GET", "/services/beta/backends/b1")
        assert status == 200 and view["state"] == "removing", view
        assert first_line(beta) == b"b2"
    finally:
        held.close()
    lh.until(lambda: call(proxy.admin, "GET", "/services/beta/backends/b1")[0] == 404, 10, "the removal finished")


def test_a_takeover_hands_every_services_worker_sockets_over(tmp_path, backends):
    """
    A takeover with --workers 2 and two services: the new process's
    workers listen on the sockets of both services handed over (the same
    ports, never closed), each service still reaches only its pool through
    both new workers, and the old process exits 0.
    """
    config, alpha, beta = write_config(tmp_path, backends)
    control = ["--control-socket", str(tmp_path / "control.sock")]
    old = spawn(tmp_path, config, alpha, beta, lh.free_port(), *control)
    new = None
    try:
        assert first_line(alpha) == b"a1"
        new = spawn(tmp_path, config, alpha, beta, old.admin, *control, "--takeover")
        assert old.wait(40) == 0, old.output()
        assert "handed over" in new.output() and "worker:" in new.output(), new.output()
        assert {first_line(alpha) for _ in range(30)} == {b"a1"}
        assert {first_line(beta) for _ in range(30)} <= {b"b1", b"b2"}
        lh.until(lambda: sum(per_worker(new, "alpha")) == 30 and sum(per_worker(new, "beta")) == 30,
                 10, "the new workers' reports")
        assert min(per_worker(new, "alpha")) > 0 and min(per_worker(new, "beta")) > 0
    finally:
        stop(old)
        if new is not None:
            stop(new)
