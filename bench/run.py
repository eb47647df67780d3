#!/usr/bin/env python3
"""
The side-by-side benchmark: lbproxy against HAProxy, in one run, as ratios.

    python3 dev.py bench                 # 3 interleaved rounds of 5 s runs
    python3 dev.py bench --rounds 1 --duration 2 --idle 2000   # a quick look
    python3 dev.py bench --replot docs/_data/bench.json      # redraw the plot

Starts nginx (the backend: a tiny response at / and a 1 MiB file at
/bulk), HAProxy (mode tcp) and lbproxy (fast engine, twisted engine for
reference) on loopback ports, then drives each with wrk in interleaved
rounds (every scenario runs on every proxy in each round, so the machine's
load drifts alike for all) and prints medians and ratios to HAProxy.

Measured: keep-alive small requests, one connection per request (wrk with
C{Connection: close}), 1 MiB bulk, p50/p99 latency (wrk --latency),
requests per proxy CPU-second (utime+stime from /proc, summed over the
proxy's processes), RSS per idle client connection (N sockets held open
from this process; RSS delta from /proc, scaled to 10,000), 1..N workers
(HAProxy nbthread = lbproxy --workers) and lbproxy with 20 event-feed
subscribers on the admin API, and system calls per one-shot connection
(strace -c -f attached for one wrk Connection: close run; deterministic
where CPU figures are noisy).  Writes bench/results/latest.json and
docs/_static/bench.png.

Not part of the test suite.  On a small machine wrk, nginx and the proxy
share the cores: compare ratios within one run and requests per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
WRK = "/usr/bin/wrk"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port} within {timeout}s")


def process_tree(pid: int) -> list[int]:
    """
    C{pid} and its descendants (lbproxy workers are child processes).
    """
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return sorted(set(out))


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """
    @return: user and system CPU seconds of C{pids}, from /proc.
    """
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


class Proxy:
    """
    One proxy under test: a name, a port and its process.
    """

    def __init__(self, name: str, kind: str, workers: int, argv: list[str], port: int,
                 admin: int | None = None, cwd: Path | None = None) -> None:
        self.name, self.kind, self.workers = name, kind, workers
        self.argv, self.port, self.admin = argv, port, admin
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.log = None
        self.subscribers: list[subprocess.Popen] = []

    def start(self, logdir: Path) -> None:
        self.log = open(logdir / f"{self.name}.log", "wb")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.cwd or ROOT, env=env)
        wait_port(self.port, self.proc, self.name)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        for sub in self.subscribers:
            sub.terminate()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_XFER = re.compile(r"Transfer/sec:\s+([\d.]+)([KMG]?B)")
WRK_PCT = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
WRK_ERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_COUNT = re.compile(r"(\d+) requests in ")
STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$", re.M)
STRACE = shutil.which("strace")


def wrk(port: int, path: str, seconds: float, connections: int, close: bool, scheme: str = "http") -> dict:
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"{scheme}://127.0.0.1:{port}{path}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = WRK_RPS.search(out)
    if not m:
        raise RuntimeError(f"wrk gave no result:\n{out}")
    x = WRK_XFER.search(out)
    scale = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[x.group(2)]
    pct = {p: float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[u] for p, v, u in WRK_PCT.findall(out)}
    errors = sum(int(n) for n in WRK_ERR.search(out).groups()) if WRK_ERR.search(out) else 0
    non2xx = int(WRK_NON2XX.search(out).group(1)) if WRK_NON2XX.search(out) else 0
    return {
        "rps": float(m.group(1)),
        "mib_s": float(x.group(1)) * scale / 1024**2,
        "p50_ms": pct.get("50"),
        "p99_ms": pct.get("99"),
        "errors": errors,
        "non2xx": non2xx,
    }


def measure(proxy: Proxy, path: str, seconds: float, connections: int, close: bool,
            scheme: str = "http") -> dict:
    pids = proxy.pids() if proxy.proc else []
    user0, sys0 = cpu_split(pids)
    result = wrk(proxy.port, path, seconds, connections, close, scheme)
    user1, sys1 = cpu_split(pids)
    cpu = user1 - user0 + sys1 - sys0
    result["cpu_s"] = cpu
    requests = result["rps"] * seconds
    # Python's share (user) against the kernel's (system), per request.
    result["user_us_per_req"] = (user1 - user0) * 1e6 / requests if requests and cpu > 0 else None
    result["sys_us_per_req"] = (sys1 - sys0) * 1e6 / requests if requests and cpu > 0 else None
    result["req_per_cpu_s"] = result["rps"] * seconds / cpu if cpu > 0 else None
    result["mib_per_cpu_s"] = result["mib_s"] * seconds / cpu if cpu > 0 else None
    return result


def syscalls_per_connection(proxy: Proxy, seconds: float, connections: int) -> dict | None:
    """
    System calls the proxy's processes make per request with one
    connection per request (wrk, C{Connection: close}): C{strace -c -f}
    attached for one wrk run, total calls over the requests wrk completed.
    Deterministic where CPU figures are noisy (the count barely depends
    on load: only how many events one C{epoll_wait} returns does).
    """
    if STRACE is None:
        return None
    pids = proxy.pids()
    out = Path(tempfile.mkstemp(prefix="strace-", suffix=".txt")[1])
    argv = [STRACE, "-c", "-f", "-o", str(out)]
    for pid in pids:
        argv += ["-p", str(pid)]
    tracer = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        # strace says "Process N attached" for each thread it traces.
        deadline = time.monotonic() + 10
        attached = 0
        while attached < len(pids) and time.monotonic() < deadline:
            line = tracer.stderr.readline()
            if not line:
                break
            attached += "attached" in line
        time.sleep(0.2)
        argv_ = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "-H", "Connection: close",
                 f"http://127.0.0.1:{proxy.port}/"]
        text = subprocess.run(argv_, capture_output=True, text=True, timeout=seconds + 30).stdout
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
    m = WRK_COUNT.search(text)
    report = out.read_text()
    out.unlink()
    if not m or not int(m.group(1)):
        return None
    requests = int(m.group(1))
    calls = {name: int(n) for n, _, name in STRACE_ROW.findall(report) if name != "total"}
    total = sum(calls.values())
    per = {name: round(n / requests, 2) for name, n in sorted(calls.items(), key=lambda kv: -kv[1])}
    return {"requests": requests, "calls": total, "per_connection": total / requests, "by_call": per}


def idle_rss(proxy: Proxy, count: int) -> dict:
    """
    Hold C{count} idle client connections open; RSS delta of the proxy's
    processes per connection, scaled to 10,000 connections.
    """
    pids = proxy.pids()
    time.sleep(0.5)
    before = rss_bytes(pids)
    fds_before = open_fds(pids)
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", proxy.port))
            socks.append(s)
        # Wait until the proxy holds both sockets of every connection.
        deadline = time.monotonic() + 15
        while open_fds(pids) - fds_before < 2 * count * 0.99 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        after = rss_bytes(pids)
        fds = open_fds(pids) - fds_before
    finally:
        for s in socks:
            s.close()
    # Let the proxy finish tearing them down before anything is timed.
    deadline = time.monotonic() + 30
    while open_fds(pids) > fds_before + 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    per = (after - before) / count
    return {"connections": count, "proxy_fds_added": fds, "rss_before": before, "rss_after": after,
            "bytes_per_conn": per, "kib_per_10k_conns": per * 10000 / 1024}


def open_fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def subscribe(proxy: Proxy, n: int) -> int:
    """
    Attach C{n} event-feed readers (curl) to the proxy's admin API.

    @return: how many are connected and streaming.
    """
    url = f"http://127.0.0.1:{proxy.admin}/api/v1/events"
    for i in range(n):
        # One source address each, as n users would be: the admin takes at
        # most 8 feeds from one address.
        proxy.subscribers.append(subprocess.Popen(
            ["curl", "-sN", "--interface", f"127.0.0.{2 + i}", "-o", "/dev/null", "-w", "%{http_code}", url],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        ))
    time.sleep(1.5)
    alive = [p for p in proxy.subscribers if p.poll() is None]
    return len(alive)


def unsubscribe(proxy: Proxy) -> None:
    for sub in proxy.subscribers:
        sub.terminate()
        sub.wait()
    proxy.subscribers.clear()


def nginx_config(tmp: Path, port: int, workers: int) -> Path:
    www = tmp / "www"
    www.mkdir()
    (www / "bulk").write_bytes(os.urandom(1024 * 1024))
    www.chmod(0o755)
    (www / "bulk").chmod(0o644)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes {workers};
worker_rlimit_nofile 20000;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = / {{ return 200 "ok\\n"; }}
        location = /bulk {{ }}
    }}
}}
""")
    return conf


def haproxy_config(tmp: Path, name: str, port: int, backend: int, threads: int) -> Path:
    conf = tmp / f"{name}.cfg"
    conf.write_text(f"""
global
    nbthread {threads}
    maxconn 9000
defaults
    mode tcp
    timeout connect 3s
    timeout client 300s
    timeout server 300s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
""")
    return conf


def lbproxy_argv(port: int, admin: int, backend: int, engine: str, workers: int,
                 access_log: bool = False) -> list[str]:
    """
    @param access_log: keep the default access log (JSON lines to stdout,
        which the bench sends to the proxy's log file), else C{--no-access-log}.
    """
    twistd = Path(sys.executable).parent / "twistd"
    return [
        str(twistd), "-n", "--pidfile=", "lbproxy",
        "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
        "--admin", f"tcp:{admin}:interface=127.0.0.1",
        "--backend", f"127.0.0.1:{backend}",
        *([] if access_log else ["--no-access-log"]), "--engine", engine, "--workers", str(workers),
        "--max-connections", str(max_connections()), "--idle-timeout", "600",
    ]


def max_connections() -> int:
    """
    20,000, or what the hard open-files limit allows (lbproxy refuses a
    --max-connections it cannot hold: two fds per connection).
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 20000
    return max(100, min(20000, (hard - 200) // 2))


def median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c")
    parser.add_argument("--workers", type=int, default=2, help="largest worker count (1..N)")
    parser.add_argument("--idle", type=int, default=8000,
                        help="idle connections held for the RSS test (hard fd limit permitting)")
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "_static" / "bench.png"))
    parser.add_argument("--only-access-log", action="store_true",
                        help="only the access-log scenario: one connection per request, fast engine, "
                             "default access log vs --no-access-log")
    parser.add_argument("--only", choices=["tls"],
                        help="only one scenario: tls = TLS terminated by HAProxy and lbproxy with the "
                             "same certificate (full handshakes per CPU-second, 1 MiB bulk); bench/tls_bench.py")
    parser.add_argument("--no-tls", action="store_true", help="skip the TLS rows of the full run")
    parser.add_argument("--tls-engines", default="fast",
                        help="with --only tls: lbproxy's relay engines to measure, comma-separated (fast,twisted)")
    parser.add_argument("--replot", metavar="JSON",
                        help="only redraw the plot (and print the table) from a results file")
    args = parser.parse_args(argv)
    if args.only == "tls":
        sys.path.insert(0, str(ROOT / "bench"))
        from tls_bench import run_tls

        return run_tls(args)
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        print_table(saved["summary"], saved["idle"], saved.get("notes", []))
        plot(saved["summary"], args.plot)
        print(f"wrote {args.plot}")
        return 0

    for exe in (NGINX, HAPROXY, WRK):
        if not os.path.exists(exe):
            raise SystemExit(f"missing {exe}: apt-get install nginx-light haproxy wrk")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Each idle client costs the proxy two fds (client and backend).
    idle = min(args.idle, (hard - 1000) // 2)

    tmp = Path(tempfile.mkdtemp(prefix="lbproxy-bench-"))
    tmp.chmod(0o755)  # nginx workers run unprivileged and must read the files
    backend_port = free_port()
    nginx = subprocess.Popen([NGINX, "-c", str(nginx_config(tmp, backend_port, 2)), "-p", str(tmp)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    proxies: list[Proxy] = []
    notes: list[str] = []
    try:
        wait_port(backend_port, nginx, "nginx")

        def add(name: str, kind: str, workers: int, **kw) -> Proxy:
            port = free_port()
            if kind == "haproxy":
                argv = [HAPROXY, "-db", "-f", str(haproxy_config(tmp, name, port, backend_port, workers))]
                p = Proxy(name, kind, workers, argv, port)
            else:
                admin = free_port()
                p = Proxy(name, kind, workers,
                          lbproxy_argv(port, admin, backend_port, kw["engine"], workers,
                                       kw.get("access_log", False)),
                          port, admin)
            try:
                p.start(tmp)
            except SystemExit as e:
                notes.append(f"{name} did not start: {e} (log: {tmp / (name + '.log')})")
                return None
            proxies.append(p)
            return p

        quick = args.only_access_log
        base = {
            "haproxy": None if quick else add("haproxy", "haproxy", 1),
            "lbproxy-fast": add("lbproxy-fast", "lbproxy", 1, engine="fast"),
            "lbproxy-twisted": None if quick else add("lbproxy-twisted", "lbproxy", 1, engine="twisted"),
        }
        # The access log's cost: the default log against --no-access-log.
        logged = add("lbproxy-fast+log", "lbproxy", 1, engine="fast", access_log=True)
        scaling = {}
        for n in range(2, 1 if quick else args.workers + 1):
            scaling[f"haproxy-{n}t"] = add(f"haproxy-{n}t", "haproxy", n)
            scaling[f"lbproxy-fast-{n}w"] = add(f"lbproxy-fast-{n}w", "lbproxy", n, engine="fast")
        # The feed's cost: the same lbproxy process, measured right after
        # its plain run with the subscribers attached for that run only.
        sse = None if quick else base["lbproxy-fast"]
        subscribed: list[int] = []

        scenarios = {
            "keepalive": ("/", False),
            "close": ("/", True),
            "bulk": ("/bulk", False),
        }
        plan = []
        for scenario in ("close",) if quick else scenarios:
            plan += [(scenario, name, p) for name, p in base.items() if p is not None]
            if sse is not None and scenario != "bulk":
                plan.append((scenario, "lbproxy-fast+sse", sse))
            if logged is not None and scenario == "close":
                plan.append((scenario, "lbproxy-fast+log", logged))
        plan += [(scenario, name, p) for scenario in ("keepalive", "close")
                 for name, p in scaling.items() if p is not None]
        if not quick:
            plan.append(("keepalive", "direct-nginx", Proxy("direct-nginx", "nginx", 2, [], backend_port)))

        # Idle connections first, on fresh processes: memory freed after
        # earlier load would otherwise be reused and hide the real cost.
        idle_results = {}
        for name in () if quick else ("haproxy", "lbproxy-fast", "lbproxy-twisted"):
            if base.get(name) is not None and idle > 0:
                idle_results[name] = idle_rss(base[name], idle)
                print(f"idle {name:18} {idle_results[name]['kib_per_10k_conns'] / 1024:.1f} MiB per 10k "
                      f"({idle} held)", flush=True)
        if idle < args.idle:
            notes.append(f"idle RSS measured with {idle} connections (hard RLIMIT_NOFILE {hard}), scaled to 10k")

        raw: dict[str, dict[str, list[dict]]] = {}
        for r in range(args.rounds):
            # The access-log pair alone: A B, B A, ... so that a drift in
            # the machine's load (shared cores) falls on both alike.
            for scenario, name, proxy in plan if not quick or r % 2 == 0 else plan[::-1]:
                path, close = scenarios[scenario]
                if name.endswith("+sse"):
                    subscribed.append(subscribe(proxy, args.subscribers))
                    if subscribed[-1] < args.subscribers:
                        notes.append(f"only {subscribed[-1]} of {args.subscribers} event-feed subscribers "
                                     f"stayed connected to GET /api/v1/events")
                try:
                    res = measure(proxy, path, args.duration, args.connections, close)
                finally:
                    unsubscribe(proxy)
                raw.setdefault(scenario, {}).setdefault(name, []).append(res)
                print(f"round {r + 1} {scenario:9} {name:18} {res['rps']:10.0f} req/s "
                      f"{res['mib_s']:8.1f} MiB/s p99 {res['p99_ms']} ms cpu {res['cpu_s']:.2f}s"
                      + (f" errors {res['errors']}" if res["errors"] else "")
                      + (f" NON-2XX {res['non2xx']}" if res["non2xx"] else ""), flush=True)
                if res["non2xx"]:
                    notes.append(f"round {r + 1} {scenario} {name}: {res['non2xx']} non-2xx responses")

        # System calls per one-shot connection, counted last (strace slows
        # the traced process while attached): the deterministic evidence.
        syscalls = {}
        for name in ("haproxy", "lbproxy-fast", "lbproxy-twisted"):
            if base.get(name) is not None:
                counted = syscalls_per_connection(base[name], min(args.duration, 3), args.connections)
                if counted is None:
                    notes.append(f"system calls per connection not counted for {name} (strace missing or failed)")
                    continue
                syscalls[name] = counted
                print(f"syscalls {name:18} {counted['per_connection']:.2f} per connection "
                      f"{counted['by_call']}", flush=True)
        if logged is not None and base.get("lbproxy-fast") is not None:
            # The log's system calls per connection: one write per batch, so ~0.
            counted = syscalls_per_connection(logged, min(args.duration, 3), args.connections)
            if counted is not None:
                syscalls["lbproxy-fast+log"] = counted
                print(f"syscalls {'lbproxy-fast+log':18} {counted['per_connection']:.2f} per connection "
                      f"{counted['by_call']}", flush=True)
        summary = summarise(raw, idle_results)
        summary["syscalls"] = syscalls
        summary["access_log"] = access_log_ratios(raw.get("close", {}))
        # Python function calls per connection and per keep-alive request
        # (cProfile in a fresh fast-engine process): deterministic too.
        if not quick:
            try:
                sys.path.insert(0, str(ROOT / "bench"))
                from calls import count_calls

                counted = count_calls(backend_port, min(args.duration, 3), 20, quiet=True)
                summary["python_calls"] = {"lbproxy-fast": counted}
                print(f"python calls lbproxy-fast {counted['close']['python_calls_per_request']:.1f} "
                      f"per connection, {counted['keepalive']['python_calls_per_request']:.1f} per "
                      f"keep-alive request (and C functions: {counted['close']['calls_per_request']:.1f}, "
                      f"{counted['keepalive']['calls_per_request']:.1f})", flush=True)
            except Exception as e:  # noqa: BLE001 - a figure of the report, not the run
                notes.append(f"Python calls per connection not counted: {e}")
        result = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "haproxy": subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout.split("\n")[0]},
            "settings": vars(args) | {"idle_held": idle, "subscribers_connected": subscribed},
            "summary": summary,
            "idle": idle_results,
            "raw": raw,
            "notes": notes,
        }
        if quick and args.out == parser.get_default("out"):
            args.out = str(ROOT / "bench" / "results" / "access-log.json")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print_table(summary, idle_results, notes)
        print(f"\nwrote {args.out}")
        try:
            if not quick:  # the plot is of the full run
                plot(summary, args.plot)
                print(f"wrote {args.plot}")
        except ImportError:
            print("matplotlib missing: no plot (pip install '.[bench]')")
    finally:
        for p in proxies:
            p.stop()
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.only_access_log and not args.no_tls:
        # The TLS rows, with their own nginx and proxies (bench/tls_bench.py).
        sys.path.insert(0, str(ROOT / "bench"))
        from tls_bench import run_tls

        return run_tls(args)
    return 0


def summarise(raw: dict, idle: dict) -> dict:
    out: dict = {}
    for scenario, by_name in raw.items():
        out[scenario] = {}
        for name, runs in by_name.items():
            out[scenario][name] = {
                key: median([run[key] for run in runs])
                for key in ("rps", "mib_s", "p50_ms", "p99_ms", "req_per_cpu_s", "mib_per_cpu_s", "cpu_s",
                            "user_us_per_req", "sys_us_per_req")
            }
    return out


def access_log_ratios(close: dict) -> dict | None:
    """
    The access log's cost as ratios of the same round (log on / off, one
    connection per request), per round and their median: a round's pair
    ran back to back, so the machine's drift between rounds cancels out.
    """
    on, off = close.get("lbproxy-fast+log"), close.get("lbproxy-fast")
    if not on or not off:
        return None
    out: dict = {}
    for key, label in (("rps", "rps"), ("req_per_cpu_s", "per_cpu")):
        rounds = [a[key] / b[key] for a, b in zip(on, off) if a.get(key) and b.get(key)]
        out[f"{label}_rounds"] = [round(r, 3) for r in rounds]
        out[label] = median(rounds)
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_table(summary: dict, idle: dict, notes: list[str]) -> None:
    print("\nMedians of the interleaved rounds; ratio = lbproxy / HAProxy (same run).\n")
    ka, cl, bulk = summary.get("keepalive", {}), summary.get("close", {}), summary.get("bulk", {})
    sc = summary.get("syscalls", {})
    pc = summary.get("python_calls", {})
    h = "haproxy"
    rows = [
        ("keep-alive req/s", lambda n: ka.get(n, {}).get("rps"), "{:,.0f}"),
        ("one conn per request req/s", lambda n: cl.get(n, {}).get("rps"), "{:,.0f}"),
        ("1 MiB bulk MiB/s", lambda n: bulk.get(n, {}).get("mib_s"), "{:,.0f}"),
        ("keep-alive p50 ms", lambda n: ka.get(n, {}).get("p50_ms"), "{:.3f}"),
        ("keep-alive p99 ms", lambda n: ka.get(n, {}).get("p99_ms"), "{:.3f}"),
        ("keep-alive req per CPU-s", lambda n: ka.get(n, {}).get("req_per_cpu_s"), "{:,.0f}"),
        ("conn/request req per CPU-s", lambda n: cl.get(n, {}).get("req_per_cpu_s"), "{:,.0f}"),
        ("1 MiB bulk MiB per CPU-s", lambda n: bulk.get(n, {}).get("mib_per_cpu_s"), "{:,.0f}"),
        ("system calls per connection", lambda n: sc.get(n, {}).get("per_connection"), "{:.1f}"),
        ("Python calls per connection", lambda n: pc.get(n, {}).get("close", {}).get("python_calls_per_request"), "{:.1f}"),
        ("Python calls per k-a request", lambda n: pc.get(n, {}).get("keepalive", {}).get("python_calls_per_request"), "{:.1f}"),
        ("conn/request user CPU us", lambda n: cl.get(n, {}).get("user_us_per_req"), "{:.1f}"),
        ("conn/request system CPU us", lambda n: cl.get(n, {}).get("sys_us_per_req"), "{:.1f}"),
        ("keep-alive user CPU us/req", lambda n: ka.get(n, {}).get("user_us_per_req"), "{:.2f}"),
        ("keep-alive system CPU us/req", lambda n: ka.get(n, {}).get("sys_us_per_req"), "{:.2f}"),
        ("idle RSS MiB per 10k conns", lambda n: (idle.get(n, {}).get("kib_per_10k_conns") or 0) / 1024 or None, "{:.1f}"),
    ]
    names = ["haproxy", "lbproxy-fast", "lbproxy-twisted"]
    print(f"| {'':28} | " + " | ".join(f"{n:>15}" for n in names) + " | fast/HAProxy | twisted/HAProxy |")
    print("|" + "---|" * (len(names) + 3))
    for label, get, fmt in rows:
        cells = [get(n) for n in names]
        text = [fmt.format(c) if c is not None else "-" for c in cells]
        print(f"| {label:28} | " + " | ".join(f"{t:>15}" for t in text)
              + f" | {_ratio(cells[1], cells[0]):>12} | {_ratio(cells[2], cells[0]):>15} |")
    scale = sorted(n for n in ka if n.startswith(("haproxy-", "lbproxy-fast-")) and n[-1] in "tw")
    if scale:
        print("\nWorkers (HAProxy nbthread = lbproxy --workers; req/s, and req per CPU-s in brackets):")
        for label, table in (("keep-alive", ka), ("one conn per request", cl)):
            n = 1
            while n == 1 or f"haproxy-{n}t" in table or f"lbproxy-fast-{n}w" in table:
                a = table.get(h if n == 1 else f"haproxy-{n}t", {})
                b = table.get("lbproxy-fast" if n == 1 else f"lbproxy-fast-{n}w", {})
                print(f"  {label:20} {n}: haproxy {a.get('rps') or 0:,.0f} ({a.get('req_per_cpu_s') or 0:,.0f})"
                      f"  lbproxy-fast {b.get('rps') or 0:,.0f} ({b.get('req_per_cpu_s') or 0:,.0f})"
                      f"  ratio {_ratio(b.get('rps'), a.get('rps'))} ({_ratio(b.get('req_per_cpu_s'), a.get('req_per_cpu_s'))})")
                n += 1
    for label, table in (("keep-alive", ka), ("one conn per request", cl)):
        if "lbproxy-fast+sse" in table:
            a = table.get("lbproxy-fast", {})
            b = table["lbproxy-fast+sse"]
            print(f"With 20 event-feed subscribers, {label}: {b['rps']:,.0f} req/s vs {a.get('rps') or 0:,.0f} "
                  f"without ({_ratio(b['rps'], a.get('rps'))}); per proxy CPU-second "
                  f"{_ratio(b.get('req_per_cpu_s'), a.get('req_per_cpu_s'))} (same process)")
    if "lbproxy-fast+log" in cl:
        a, b = cl.get("lbproxy-fast", {}), cl["lbproxy-fast+log"]
        print(f"Access log (default: JSON lines, batched), one conn per request, fast engine: "
              f"{b['rps']:,.0f} req/s vs {a.get('rps') or 0:,.0f} with --no-access-log "
              f"({_ratio(b['rps'], a.get('rps'))}); per proxy CPU-second "
              f"{_ratio(b.get('req_per_cpu_s'), a.get('req_per_cpu_s'))} (ratio of the medians)")
        paired = summary.get("access_log")
        if paired and paired.get("rps") and paired.get("per_cpu"):
            print(f"Access log, median of the per-round ratios (each round's pair back to back): "
                  f"throughput {paired['rps']:.2f}x, requests per CPU-second {paired['per_cpu']:.2f}x "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in paired['rps_rounds'])}; "
                  f"{', '.join(f'{x:.2f}' for x in paired['per_cpu_rounds'])})")
        if "lbproxy-fast+log" in sc and "lbproxy-fast" in sc:
            print(f"Access log, system calls per connection: {sc['lbproxy-fast+log']['per_connection']:.2f} "
                  f"vs {sc['lbproxy-fast']['per_connection']:.2f} with --no-access-log")
    if "direct-nginx" in ka:
        print(f"Direct to nginx (the limit here): {ka['direct-nginx']['rps']:,.0f} req/s keep-alive")
    for note in notes:
        print("note:", note)


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [
        ("keep-alive", "keepalive", "rps"),
        ("conn/request", "close", "rps"),
        ("1 MiB bulk", "bulk", "mib_s"),
        ("keep-alive\nreq/CPU-s", "keepalive", "req_per_cpu_s"),
    ]
    names = [("lbproxy-fast", "lbproxy fast engine"), ("lbproxy-twisted", "lbproxy twisted engine")]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    width = 0.35
    for i, (name, label) in enumerate(names):
        ratios = []
        for _, scenario, key in metrics:
            a = summary.get(scenario, {}).get(name, {}).get(key)
            b = summary.get(scenario, {}).get("haproxy", {}).get(key)
            ratios.append(a / b if a and b else 0)
        xs = [x + (i - 0.5) * width for x in range(len(metrics))]
        bars = ax.bar(xs, ratios, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="HAProxy (1 thread)")
    ax.set_xticks(range(len(metrics)), [m[0] for m in metrics])
    ax.set_ylabel("ratio to HAProxy (same run)")
    ax.set_title("lbproxy vs HAProxy 2.6, mode tcp, nginx backend, wrk -t1 -c50")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
