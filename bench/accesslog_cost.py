"""
The access log's CPU per connection, in-process: a real reactor appends
access records as the balancer does (16,000 a second) for a few seconds,
with the log off, written by the writer thread, or written in the reactor's
own timer; the process's CPU (every thread, user + system) over the run,
less the run with the log off, per record.  Each mode runs in its own
process, in interleaved rounds; the medians are printed.

Why: the end-to-end ratio (bench/run.py --only-access-log) moves by
several percent between rounds on a shared machine, more than the log
costs; this isolates the log's own cost (build, hand-off, format, write)
from everything else the proxy does.

    python3 bench/accesslog_cost.py [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = {
    "off": None,
    "thread-0.2s": (True, 0.2),
    "thread-0.1s": (True, 0.1),
    "reactor-0.1s": (False, 0.1),
    "reactor-0.2s": (False, 0.2),
}


def child(mode: str, seconds: float, rate: int, path: str) -> dict:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    import lbproxy.accesslog as accesslog

    if hasattr(accesslog, "__path__"):  # the package; older trees had one module
        from lbproxy.accesslog import log as accesslog
        from lbproxy.accesslog.sinks import FileSink
    else:
        FileSink = accesslog.FileSink
    AccessLog = accesslog.AccessLog
    from lbproxy.policy.pool import AccessRecord

    # Before FIELDS the balancer appended (time, record): measures old trees too.
    flat = hasattr(accesslog, "FIELDS")

    pending: list | None = None
    log = None
    if MODES[mode] is not None:
        threaded, interval = MODES[mode]
        log = AccessLog(FileSink(path), "json", clock=reactor, interval=interval, signals=False,
                        **({} if threaded else {"threaded": False}))
        log.startService()
        pending = log.pending
    per_tick = rate // 1000
    ports = iter(range(1 << 62))
    count = [0]

    def tick() -> None:
        # What a finished connection costs the log: one record, one append.
        for _ in range(per_tick):
            record = AccessRecord(f"127.0.0.1:{next(ports) % 60000}", "b1", 78, 250, 0.00123, "ok")
            if pending is not None:
                pending.append((reactor.seconds(), *record) if flat else (reactor.seconds(), record))
            count[0] += 1

    loop = LoopingCall(tick)
    start: list = []

    def begin() -> None:
        start.append(os.times())
        loop.start(0.001)
        reactor.callLater(seconds, end)

    def end() -> None:
        loop.stop()
        if log is not None:
            log.flush()
            log.drain(10)
        start.append(os.times())
        reactor.stop()

    reactor.callWhenRunning(begin)
    reactor.run(installSignalHandlers=False)
    if log is not None:
        log.stopService()
    t0, t1 = start
    return {"records": count[0], "cpu_s": (t1.user - t0.user) + (t1.system - t0.system),
            "lines": sum(1 for _ in open(path)) if log is not None else 0}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=16000, help="records a second")
    parser.add_argument("--tree", default=str(ROOT), help="the lbproxy tree to measure (default: this one)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.seconds, args.rate, args.path)))
        return 0
    modes = ["off"] + [m for m in args.modes.split(",") if m in MODES and m != "off"]
    runs: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = modes if r % 2 == 0 else modes[::-1]
            for mode in order:
                path = os.path.join(tmp, f"{mode}-{r}.log")
                out = subprocess.run([sys.executable, __file__, "--child", mode, "--path", path,
                                      "--seconds", str(args.seconds), "--rate", str(args.rate)],
                                     capture_output=True, text=True, check=True,
                                     env=dict(os.environ, PYTHONPATH=args.tree))
                res = json.loads(out.stdout)
                if MODES[mode] is not None and res["lines"] != res["records"]:
                    raise SystemExit(f"{mode}: {res['lines']} lines for {res['records']} records")
                runs[mode].append(res["cpu_s"] * 1e6 / res["records"])
                os.unlink(path) if os.path.exists(path) else None
    off = statistics.median(runs["off"])
    print(f"CPU per record, median of {args.rounds} rounds at {args.rate:,}/s "
          f"(the driving loop with the log off: {off:.2f} us):")
    for mode in modes:
        if mode != "off":
            cost = statistics.median(runs[mode]) - off
            print(f"  {mode:14} {cost:+.2f} us per connection "
                  f"(rounds: {', '.join(f'{v - off:+.2f}' for v in runs[mode])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
