#!/usr/bin/env python3
"""
A/B of the fast engine between two source trees (e.g. before and after a
change), interleaved on one nginx backend: requests per proxy CPU-second
for one connection per request (wrk, Connection: close) and keep-alive.

    git archive BASE | tar -x -C /tmp/base
    python3 bench/ab.py /tmp/base . --rounds 6 --duration 2

Each round runs every tree, alternating which goes first, so drifting
load on a shared machine hits both alike; the medians are printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import run as B  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("trees", nargs="+", help="source trees (the first is the reference)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--modes", default="close,keepalive", help="of close, keepalive, bulk (1 MiB)")
    parser.add_argument("--haproxy", action="store_true",
                        help="also run HAProxy (nbthread 1) in every round, as the last row")
    parser.add_argument("--syscalls", action="store_true",
                        help="also count system calls per one-shot connection (strace -c -f)")
    parser.add_argument("--extra", action="append", default=[],
                        help="TREE_INDEX:ARG,ARG extra lbproxy arguments for one tree")
    parser.add_argument("--patch", action="append", default=[],
                        help="TREE_INDEX:FILE a JSON body to PATCH the default service with once "
                             "that tree is up (e.g. traffic rules)")
    args = parser.parse_args(argv)
    patches = dict((int(i), Path(f).read_bytes()) for i, _, f in (p.partition(":") for p in args.patch))
    trees = [Path(t).resolve() for t in args.trees]
    extra: dict[int, list[str]] = {}
    for item in args.extra:
        index, _, rest = item.partition(":")
        extra[int(index)] = rest.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="lbproxy-ab-"))
    tmp.chmod(0o755)
    nport = B.free_port()
    nginx = subprocess.Popen([B.NGINX, "-c", str(B.nginx_config(tmp, nport, 1)), "-p", str(tmp)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    proxies = []
    try:
        B.wait_port(nport, nginx, "nginx")
        for i, root in enumerate(trees):
            port, admin = B.free_port(), B.free_port()
            argv_ = B.lbproxy_argv(port, admin, nport, "fast", 1) + extra.get(i, [])
            log = open(tmp / f"tree{i}.log", "wb")
            proc = subprocess.Popen(argv_, cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                                    stdout=log, stderr=subprocess.STDOUT)
            B.wait_port(port, proc, str(root))
            if i in patches:
                import urllib.request

                request = urllib.request.Request(
                    f"http://127.0.0.1:{admin}/api/v1/services/default", data=patches[i], method="PATCH",
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as answer:
                    print(f"tree{i}: PATCH /api/v1/services/default {answer.status}", flush=True)
            proxy = B.Proxy(f"tree{i}", "lbproxy", 1, argv_, port, admin, root)
            proxy.proc = proc
            proxies.append(proxy)
        names = [str(t) for t in trees]
        if args.haproxy:
            port = B.free_port()
            argv_ = [B.HAPROXY, "-db", "-f", str(B.haproxy_config(tmp, "haproxy", port, nport, 1))]
            proc = subprocess.Popen(argv_, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            B.wait_port(port, proc, "haproxy")
            proxy = B.Proxy("haproxy", "haproxy", 1, argv_, port)
            proxy.proc = proc
            proxies.append(proxy)
            names.append("haproxy")
        if args.syscalls:
            for name, proxy in zip(names, proxies):
                counted = B.syscalls_per_connection(proxy, args.duration, 50)
                if counted:
                    print(f"syscalls  {name:40} {counted['per_connection']:.2f} per connection "
                          f"{counted['by_call']}", flush=True)
        modes = args.modes.split(",")
        results = {(i, m): [] for i in range(len(proxies)) for m in modes}
        for r in range(args.rounds):
            order = list(range(len(proxies)))
            if r % 2:
                order.reverse()
            for mode in modes:
                for i in order:
                    results[(i, mode)].append(
                        B.measure(proxies[i], "/bulk" if mode == "bulk" else "/", args.duration, 50,
                                  mode == "close"))
        for mode in modes:
            ref = B.median([x["req_per_cpu_s"] for x in results[(0, mode)]]) or 1.0
            for i, root in enumerate(names):
                rs = results[(i, mode)]
                med = B.median([x["req_per_cpu_s"] for x in rs]) or 0.0
                rps = B.median([x["rps"] for x in rs]) or 0.0
                user = B.median([x["user_us_per_req"] for x in rs]) or 0.0
                p99 = B.median([x["p99_ms"] for x in rs]) or 0.0
                print(f"{mode:9} {str(root):40} req/s {rps:8.0f} req/CPU-s {med:9.0f} ({med / ref:.2f}x) "
                      f"user {user:5.2f} us/req p99 {p99:5.2f} ms "
                      f"runs {[round(x['req_per_cpu_s'] or 0) for x in rs]} errors {sum(x['errors'] for x in rs)}")
    finally:
        for proxy in proxies:
            proxy.stop()
        nginx.terminate()
        nginx.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
