"""
The TLS rows of the benchmark (C{python3 bench/run.py --only tls}):
HAProxy (C{bind ... ssl crt FILE.pem}) and lbproxy (a service with
C{tls}) terminate TLS with the same certificate (ECDSA P-256, made with
C{openssl req -x509}) in front of the same nginx, in interleaved rounds.

Measured with wrk over https: C{handshake} is one request per connection
(C{Connection: close}; wrk resumes no session, so each is a full
handshake), as handshakes per proxy CPU-second; C{bulk} is the 1 MiB file
over keep-alive, as MiB per proxy CPU-second.  Both proxies run one
process / one thread; lbproxy on the engines of C{--tls-engines}
(default: the fast engine).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from run import (
    HAPROXY, NGINX, ROOT, WRK, Proxy, free_port, lbproxy_argv, measure, nginx_config, wait_port,
)


def certificate(tmp: Path) -> tuple[Path, Path, Path]:
    crt, key, pem = tmp / "bench.crt", tmp / "bench.key", tmp / "bench.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test", "-days", "2",
         "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )
    key.chmod(0o600)
    pem.write_bytes(crt.read_bytes() + key.read_bytes())
    pem.chmod(0o600)
    return crt, key, pem


def haproxy_tls_config(tmp: Path, port: int, backend: int, pem: Path) -> Path:
    conf = tmp / "haproxy-tls.cfg"
    conf.write_text(f"""
global
    nbthread 1
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode tcp
    timeout connect 3s
    timeout client 300s
    timeout server 300s
frontend fe
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
""")
    return conf


def lbproxy_tls_config(tmp: Path, port: int, backend: int, crt: Path, key: Path, engine: str) -> Path:
    conf = tmp / f"lbproxy-tls-{engine}.toml"
    conf.write_text(f"""
[services.web]
listen = ["tcp:{port}:interface=127.0.0.1:backlog=4096"]
backends = [{{ host = "127.0.0.1", port = {backend} }}]
tls = {{ certificates = [{{ cert = "{crt}", key = "{key}" }}] }}
""")
    return conf


def run_tls(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="lbproxy-bench-tls-"))
    tmp.chmod(0o755)
    crt, key, pem = certificate(tmp)
    backend = free_port()
    nginx = subprocess.Popen([NGINX, "-c", str(nginx_config(tmp, backend, 2)), "-p", str(tmp)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    proxies = []
    try:
        wait_port(backend, nginx, "nginx")
        hport = free_port()
        haproxy = Proxy("haproxy-tls", "haproxy", 1,
                        [HAPROXY, "-db", "-f", str(haproxy_tls_config(tmp, hport, backend, pem))], hport)
        lbproxies = []
        for engine in getattr(args, "tls_engines", "fast").split(","):
            lport, admin = free_port(), free_port()
            argv = lbproxy_argv(lport, admin, backend, engine, 1)
            # The TLS service comes from the config file, not --listen/--backend.
            i = argv.index("--listen")
            del argv[i:i + 2]
            i = argv.index("--backend")
            del argv[i:i + 2]
            argv += ["--config", str(lbproxy_tls_config(tmp, lport, backend, crt, key, engine))]
            lbproxies.append(Proxy(f"lbproxy-tls-{engine}", "lbproxy", 1, argv, lport, admin))
        for p in (haproxy, *lbproxies):
            p.start(tmp)
            proxies.append(p)
        raw: dict = {}
        scenarios = {"handshake": ("/", True), "bulk": ("/bulk", False)}
        for r in range(args.rounds):
            for scenario, (path, close) in scenarios.items():
                for p in (haproxy, *lbproxies):
                    res = measure(p, path, args.duration, args.connections if close else 10, close, "https")
                    raw.setdefault(scenario, {}).setdefault(p.name, []).append(res)
                    print(f"round {r + 1} tls-{scenario:9} {p.name:12} {res['rps']:9.0f} req/s "
                          f"{res['mib_s']:8.1f} MiB/s cpu {res['cpu_s']:.2f}s per-cpu-s "
                          f"{res['req_per_cpu_s'] or 0:,.0f} req {res['mib_per_cpu_s'] or 0:,.1f} MiB"
                          + (f" errors {res['errors']}" if res["errors"] else ""), flush=True)
        summary = {}
        for scenario, by in raw.items():
            summary[scenario] = {
                name: {k: statistics.median([x[k] for x in runs if x[k] is not None] or [0])
                       for k in ("rps", "mib_s", "req_per_cpu_s", "mib_per_cpu_s", "cpu_s")}
                for name, runs in by.items()
            }
        h = "haproxy-tls"
        hs, bulk = summary["handshake"], summary["bulk"]
        print("\nTLS (medians of", args.rounds, "rounds; lbproxy / HAProxy)")
        for l in (p.name for p in lbproxies):
            print(f"  {l}")
            print(f"    handshakes per CPU-second: haproxy {hs[h]['req_per_cpu_s']:,.0f}  lbproxy "
                  f"{hs[l]['req_per_cpu_s']:,.0f}  ratio {hs[l]['req_per_cpu_s'] / hs[h]['req_per_cpu_s']:.2f}")
            print(f"    handshakes per second:     haproxy {hs[h]['rps']:,.0f}  lbproxy {hs[l]['rps']:,.0f}")
            print(f"    1 MiB bulk MiB/CPU-second: haproxy {bulk[h]['mib_per_cpu_s']:,.1f}  lbproxy "
                  f"{bulk[l]['mib_per_cpu_s']:,.1f}  ratio {bulk[l]['mib_per_cpu_s'] / bulk[h]['mib_per_cpu_s']:.2f}")
            print(f"    1 MiB bulk MiB/s:          haproxy {bulk[h]['mib_s']:,.1f}  lbproxy {bulk[l]['mib_s']:,.1f}")
        out = ROOT / "bench" / "results" / "tls.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"summary": summary, "raw": raw}, indent=1))
        print(f"wrote {out}")
        return 0
    finally:
        for p in proxies:
            p.stop()
        nginx.terminate()
        nginx.wait(10)
