#!/usr/bin/env python3
"""
Python function calls per connection and per keep-alive request: lbproxy
(the real twistd plugin, fast engine, one process) runs under cProfile
enabled only while wrk drives it, against nginx on loopback.

    PYTHONPATH=. python bench/calls.py                # both scenarios, top 25 functions
    PYTHONPATH=. python bench/calls.py --top 60 --close-only

Deterministic where CPU figures are noisy: the count per connection
barely depends on load (only on how many events one poll returns), so an
A/B of a change to the hot path needs one run of each, not rounds.
cProfile counts every Python-level call and every call of a C function
from Python ("primitive calls" below); both are what a connection costs
in CPython.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, WRK, free_port, lbproxy_argv, nginx_config, wait_port, WRK_COUNT  # noqa: E402

#: Run inside the lbproxy process: cProfile on SIGUSR1, dumped on SIGUSR2.
_CHILD = r"""
import cProfile, gc, json, signal, sys
profile = cProfile.Profile()
out = sys.argv.pop(1)
before = []
def on(*_):
    before[:] = [s["collections"] for s in gc.get_stats()]
    profile.enable()
def off(*_):
    profile.disable()
    after = [s["collections"] for s in gc.get_stats()]
    with open(out + ".gc", "w") as f:
        json.dump([a - b for a, b in zip(after, before)], f)
    profile.dump_stats(out)
    profile.clear()
signal.signal(signal.SIGUSR1, on)
signal.signal(signal.SIGUSR2, off)
from twisted.scripts.twistd import run
sys.argv = sys.argv[1:]
run()
"""


def profile_run(proxy: subprocess.Popen, port: int, out: Path, seconds: float, close: bool,
                connections: int) -> tuple[int, pstats.Stats]:
    proxy.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}/")
    text = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    time.sleep(0.3)
    proxy.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 20
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    m = WRK_COUNT.search(text)
    if not m:
        raise SystemExit(f"wrk gave no count:\n{text}")
    stats = pstats.Stats(str(out))
    out.unlink()
    gc_file = Path(str(out) + ".gc")
    stats.gc_collections = json.loads(gc_file.read_text())  # type: ignore[attr-defined]
    gc_file.unlink()
    return int(m.group(1)), stats


def report(title: str, requests: int, stats: pstats.Stats, top: int, show=print) -> dict:
    total = stats.prim_calls  # type: ignore[attr-defined]
    python = sum(
        cc for (file, _, _), (cc, _, _, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        if file != "~"
    )
    show(f"\n== {title}: {requests} requests; {total / requests:.1f} calls per request "
          f"({python / requests:.1f} Python functions, {(total - python) / requests:.1f} C functions); "
          f"gc collections per 10k requests (gen 0, 1, 2): "
          f"{[round(n * 10000 / requests, 1) for n in stats.gc_collections]}")  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][0])  # type: ignore[attr-defined]
    for (file, line, name), (cc, nc, tt, ct, _) in rows[:top]:
        where = "" if file == "~" else f"{Path(file).name}:{line}"
        show(f"  {cc / requests:7.2f}  {name:<45} {where}")
    return {"requests": requests, "calls_per_request": total / requests,
            "python_calls_per_request": python / requests,
            "gc_per_10k": [n * 10000 / requests for n in stats.gc_collections]}  # type: ignore[attr-defined]


def count_calls(backend: int, duration: float = 3, connections: int = 20, top: int = 0,
                close_only: bool = False, quiet: bool = False) -> dict:
    """
    Start a profiled lbproxy (fast engine, one process) in front of the
    HTTP server on port C{backend}, drive it with wrk, stop it.

    @return: C{{"close": {...}, "keepalive": {...}}}, each with
        C{calls_per_request}, C{python_calls_per_request}, C{gc_per_10k}.
    """
    tmp = Path(tempfile.mkdtemp(prefix="lbproxy-calls-"))
    port, admin = free_port(), free_port()
    out = tmp / "profile.out"
    twistd_args = lbproxy_argv(port, admin, backend, "fast", 1)[1:]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(tmp / "lbproxy.log", "wb")
    proxy = subprocess.Popen([sys.executable, "-c", _CHILD, str(out), "twistd", *twistd_args],
                             env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    show = (lambda *a, **k: None) if quiet else print
    result = {}
    try:
        wait_port(port, proxy, "lbproxy")
        time.sleep(1)
        modes = [("close", "one connection per request", True)]
        if not close_only:
            modes.append(("keepalive", "keep-alive", False))
        for key, title, close in modes:
            requests, stats = profile_run(proxy, port, out, duration, close, connections)
            result[key] = report(title, requests, stats, top, show)
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        log.close()
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--close-only", action="store_true")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lbproxy-calls-"))
    tmp.chmod(0o755)
    backend = free_port()
    nginx = subprocess.Popen(["/usr/sbin/nginx", "-c", str(nginx_config(tmp, backend, 1)), "-p", str(tmp)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(backend, nginx, "nginx")
        count_calls(backend, args.duration, args.connections, args.top, args.close_only)
    finally:
        nginx.terminate()
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
