#!/usr/bin/env python3
"""
How much of the proxy's own CPU the event feed takes: profile lbproxy
(fast engine) with py-spy while wrk opens one connection per request and 20
clients read GET /api/v1/events, then count the share of on-CPU samples in
the feed's code (lbproxy/web, Klein, twisted.web, JSON).

    .venv/bin/pip install py-spy
    PYTHONPATH=. .venv/bin/python bench/feed_profile.py

Not part of the test suite; needs nginx, wrk and curl, and py-spy (run as
root or with ptrace allowed).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FEED_CODE = ("lbproxy/web/", "klein", "twisted/web", "json")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main() -> int:
    subscribers = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    tmp = Path(tempfile.mkdtemp(prefix="lbproxy-feedprof-"))
    backend, listen, admin = free_port(), free_port(), free_port()
    (tmp / "nginx.conf").write_text(
        f"worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; server {{ listen 127.0.0.1:{backend}; "
        'location / { return 200 "ok\\n"; } } }\n'
    )
    procs = []
    try:
        subprocess.run(["/usr/sbin/nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], check=True)
        proxy = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "lbproxy", "--engine", "fast", "--no-access-log",
             "--listen", f"tcp:{listen}:interface=127.0.0.1",
             "--admin", f"tcp:{admin}:interface=127.0.0.1",
             "--backend", f"127.0.0.1:{backend}"],
            cwd=tmp, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(proxy)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("lbproxy did not start")
                time.sleep(0.2)
        for _ in range(subscribers):
            procs.append(subprocess.Popen(
                ["curl", "-sN", "-o", "/dev/null", f"http://127.0.0.1:{admin}/api/v1/events"]))
        time.sleep(1)
        wrk = subprocess.Popen(
            ["wrk", "-t1", "-c50", "-d14", "-H", "Connection: close", f"http://127.0.0.1:{listen}/"],
            stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        raw = tmp / "profile.txt"
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        subprocess.run([spy, "record", "-d", "10", "-r", "200", "-p", str(proxy.pid),
                        "-f", "raw", "-o", str(raw)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out, _ = wrk.communicate()
        total = feed = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            total += int(count)
            if any(mark in stack for mark in FEED_CODE):
                feed += int(count)
        rps = next((l.split()[-1] for l in out.splitlines() if l.startswith("Requests/sec")), "?")
        print(f"wrk one connection per request: {rps} req/s with {subscribers} feed subscribers")
        print(f"py-spy: {total} on-CPU samples of the proxy, {feed} in feed code: {100 * feed / max(total, 1):.2f} %")
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        subprocess.run(["/usr/sbin/nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp), "-s", "stop"],
                       stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
