"""
Real processes for the browser and demo tests: lbproxy run as
C{python -m twisted lbproxy ...} and demo backends run as
C{python -m lbproxy.demo.backend}, on ports the OS picked, with
PYTHONPATH at the checkout.  Waiting is bounded and never sleeps blindly:
it waits on the process itself (C{Popen.wait} with a timeout), so a process
that dies is noticed at once.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pause(proc: subprocess.Popen, seconds: float) -> None:
    """
    Wait up to C{seconds} for C{proc} to exit; an exit is an error here.
    """
    try:
        code = proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return
    raise RuntimeError(f"process {proc.args!r} exited with {code}")


class LBProxy:
    """
    One lbproxy process (the demo plugin if the first argument is
    C{--demo}).

    @ivar listen: the proxy's port.
    @ivar admin: the admin API's port.
    """

    def __init__(
        self, log_dir: Path, *args: str, token: str | None = None,
        listen: int | None = None, admin: int | None = None,
    ) -> None:
        self.listen = listen or free_port()
        self.admin = admin or free_port()
        self.token = token
        self.log_path = log_dir / f"lbproxy-{self.admin}.log"
        # "--demo" first runs the demo plugin (lbproxy composed with the demo).
        plugin = "lbproxy-demo" if args[:1] == ("--demo",) else "lbproxy"
        args = args[1:] if plugin == "lbproxy-demo" else args
        self.args = [
            sys.executable, "-m", "twisted", plugin,
            "--listen", f"tcp:{self.listen}:interface=127.0.0.1",
            "--admin", f"tcp:{self.admin}:interface=127.0.0.1",
            "--connect-timeout", "1", *args,
        ]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin}/"

    def start(self, deadline: float = 30.0) -> "LBProxy":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=_env(), stdout=self._log, stderr=subprocess.STDOUT,
        )
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                self.api("GET", "/status")
                return self
            except (OSError, urllib.error.URLError):
                _pause(self.proc, 0.1)
        raise RuntimeError(f"lbproxy did not answer within {deadline}s; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """
        One admin API call; returns the JSON body, raises
        L{urllib.error.HTTPError} for an error status.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}/api/v1{path}", data=data, method=method,
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def connect(self) -> socket.socket:
        """
        A client connection through the proxy.
        """
        return socket.create_connection(("127.0.0.1", self.listen), timeout=5)

    def request(self) -> bytes:
        """
        One request through the proxy to a demo backend; the whole answer.
        """
        with self.connect() as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            chunks = []
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    def stop(self, sig: int | None = None, deadline: float = 15.0) -> int:
        """
        Stop the process (SIGTERM unless C{sig}); kill it if it lingers.

        @return: its exit code.
        """
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class DemoBackendProcess:
    """
    A demo backend in a process of its own, so a test can stop it like a
    crashed server and start it again on the same port.
    """

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self, deadline: float = 15.0) -> "DemoBackendProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbproxy.demo.backend", "--name", self.name, "--port", str(self.port)],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        line = _read_line(self.proc, deadline)
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"demo backend {self.name} did not start: {line!r}")
        self.port = int(line.split()[-1])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()


def _read_line(proc: subprocess.Popen, deadline: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout=deadline):
            return ""
        return proc.stdout.readline().decode(errors="replace").strip()
    finally:
        selector.unregister(proc.stdout)
