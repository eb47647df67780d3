"""
Real sockets for the stop and takeover tests, without the test's reactor:
an echo backend, streaming clients and a connect-rate generator, each on a
thread with a deadline, and C{twistd lbproxy} children.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EchoServer(threading.Thread):
    """
    Echoes every byte; closes a connection after the client's EOF.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.running = True
        self.start()

    def run(self) -> None:
        while self.running:
            for key, _ in self.sel.select(0.1):
                if key.fileobj is self.sock:
                    try:
                        conn, _ = self.sock.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self.sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    try:
                        conn.setblocking(True)
                        conn.sendall(data)
                        conn.setblocking(False)
                        continue
                    except OSError:
                        pass
                self.sel.unregister(conn)
                conn.close()

    def stop(self) -> None:
        self.running = False
        self.join(5)
        self.sock.close()


@dataclass
class Stream:
    sock: socket.socket
    sent: int = 0
    received: int = 0
    outcome: str | None = None  # "ok", "reset", "eof-early", "connect-failed"
    ended_at: float | None = None
    shut: bool = False


class Streams(threading.Thread):
    """
    C{n} connections to C{port}, each sending a few bytes every
    C{interval} for C{duration} seconds, then half-closing and reading
    every echoed byte until EOF.  A stream is C{ok} if all its bytes came
    back followed by a clean EOF; the end time of each is kept.
    """

    def __init__(self, port: int, n: int, duration: float, interval: float = 0.1, deadline: float = 120) -> None:
        super().__init__(daemon=True)
        self.streams: list[Stream] = []
        self.duration = duration
        self.interval = interval
        self.deadline = time.monotonic() + deadline
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            self.streams.append(Stream(s))
        self.started = time.monotonic()
        self.start()

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for st in self.streams:
            sel.register(st.sock, selectors.EVENT_READ, st)
        open_ = len(self.streams)
        next_send = time.monotonic()
        while open_ and time.monotonic() < self.deadline:
            now = time.monotonic()
            if now >= next_send:
                next_send = now + self.interval
                for st in self.streams:
                    if st.outcome is None and not st.shut:
                        try:
                            if now - self.started >= self.duration:
                                st.sock.shutdown(socket.SHUT_WR)
                                st.shut = True
                            else:
                                st.sock.send(b"0123456789")
                                st.sent += 10
                        except OSError:
                            st.outcome, st.ended_at = "reset", time.monotonic()
                            sel.unregister(st.sock)
                            open_ -= 1
            for key, _ in sel.select(0.02):
                st = key.data
                try:
                    data = st.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    st.outcome = "reset"
                else:
                    if data:
                        st.received += len(data)
                        continue
                    st.outcome = "ok" if st.shut and st.received == st.sent else "eof-early"
                st.ended_at = time.monotonic()
                sel.unregister(st.sock)
                open_ -= 1
        for st in self.streams:
            st.sock.close()

    def finish(self) -> None:
        """
        Half-close every stream at the next send (instead of at C{duration}).
        """
        self.duration = 0

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for st in self.streams:
            counts[st.outcome or "unfinished"] = counts.get(st.outcome or "unfinished", 0) + 1
        return counts


class Connects(threading.Thread):
    """
    New connections at about C{rate} per second, each one byte there and
    back then closed; counts the ones that failed.
    """

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.rate = rate
        self.ok = 0
        self.failed: list[str] = []
        self.running = True
        self.start()

    def run(self) -> None:
        step = 1.0 / self.rate
        next_at = time.monotonic()
        while self.running:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(b"x")
                    if s.recv(1) != b"x":
                        raise OSError("no echo")
                    self.ok += 1
            except OSError as e:
                self.failed.append(repr(e))
            next_at += step
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    def stop(self) -> None:
        self.running = False
        self.join(10)


@dataclass
class Proxy:
    """A C{twistd -n lbproxy} child process."""

    listen: int
    admin: int
    proc: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def status(self) -> dict:
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/api/v1/status", timeout=5) as r:
            return json.loads(r.read())

    def wait_ready(self, timeout: float = 30) -> "Proxy":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lbproxy exited {self.proc.returncode}:\n{self.output()}")
            try:
                self.status()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"lbproxy did not answer in {timeout}s:\n{self.output()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"lbproxy did not exit in {timeout}s:\n{self.output()}") from None


def spawn(tmp: Path, backend: int, *flags: str, listen: int | None = None, admin: int | None = None,
          name: str = "lbproxy") -> Proxy:
    listen = listen or free_port()
    admin = admin or free_port()
    log = tmp / f"{name}-{time.monotonic_ns()}.log"
    argv = [
        sys.executable, "-c", TWISTD, "-n", "--pidfile=", "lbproxy",
        "--listen", f"tcp:{listen}:interface=127.0.0.1",
        "--admin", f"tcp:{admin}:interface=127.0.0.1",
        "--backend", f"127.0.0.1:{backend}", "--no-access-log", *flags,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    return Proxy(listen, admin, proc, log)


def until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
