#!/usr/bin/env python3
"""
Failover between lbproxy nodes, measured, for the design document.

    sudo PYTHONPATH=. .venv/bin/python bench/failover.py            # 3 rounds -> docs/_data/failover.json
    sudo PYTHONPATH=. .venv/bin/python bench/failover.py --rounds 1 --out /tmp/f.json

Runs the scenario of C{tests/integration/test_failover.py}
(L{tests.failover_lab}: three lbproxy nodes in network namespaces, one
virtual address held by keepalived with C{advert_int 1}, one config in
a three-member etcd, a client namespace opening C{--rate} new connections
per second) once per round, each round on a fresh topology: the master
dies, comes back, a third node joins, the master leaves gracefully
holding the address on C{lo}, and then (here only) the next master leaves
without that hold, to show what the hold buys.  Writes every round's
figures, their medians and ranges, the machine and the command to
C{--out}.  Needs root, keepalived and etcd; not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.failover_lab import FailoverLab  # noqa: E402
from tests.nettools import missing_requirements  # noqa: E402

#: Figures summarised over the rounds, per phase.
SUMMARY = {
    "failover": ("gap_s", "vrrp_takeover_s", "kill_to_first_success_s", "failed", "slow", "attempts",
                 "acknowledged_changes", "acknowledged_present", "dead_node_listed_s", "open_at_event",
                 "failed_unexplained", "latency_p50_ms"),
    "rejoin": ("rejoin_s", "failed", "slow", "attempts"),
    "scale_up": ("join_s", "failed", "slow", "attempts", "latency_max_ms"),
    "scale_down": ("vrrp_handover_s", "first_success_on_successor_s", "leave_s", "failed", "slow",
                   "attempts", "latency_max_ms", "latency_p50_ms", "left_open_on_leaving_node", "open_at_event",
                   "failed_unexplained"),
    "scale_down_no_hold": ("vrrp_handover_s", "failed", "slow", "attempts", "latency_max_ms", "open_at_event"),
}


def one_round(workdir: Path, rate: float, timeout: float) -> dict[str, Any]:
    lab = FailoverLab(workdir, rate=rate, timeout=timeout)
    try:
        lab.setup()
        out = {"failover": lab.failover(), "rejoin": lab.bring_back(), "scale_up": lab.scale_up(),
               "scale_down": lab.scale_down(hold=True), "scale_down_no_hold": lab.scale_down(hold=False)}
    finally:
        left = lab.teardown()
    if left:
        raise SystemExit(f"left behind: {left}")
    return out


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for phase, keys in SUMMARY.items():
        summary[phase] = {}
        for key in keys:
            values = [r[phase][key] for r in rounds if r[phase].get(key) is not None]
            if values:
                summary[phase][key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return summary


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="new connections per second")
    parser.add_argument("--timeout", type=float, default=2.0, help="client's deadline per connection (s)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "_data" / "failover.json"))
    args = parser.parse_args(argv)
    problems = missing_requirements()
    if problems:
        print("bench/failover.py: " + "; ".join(problems), file=sys.stderr)
        return 2
    rounds = []
    with tempfile.TemporaryDirectory(prefix="lbproxy-failover-") as tmp:
        for i in range(args.rounds):
            started = time.monotonic()
            rounds.append(one_round(Path(tmp) / f"round-{i + 1}", args.rate, args.timeout))
            f = rounds[-1]
            print(f"round {i + 1}: failover gap {f['failover']['gap_s']} s, {f['failover']['failed']} failed; "
                  f"rejoin {f['rejoin']['failed']}, scale up {f['scale_up']['failed']}, "
                  f"scale down {f['scale_down']['failed']} failed ({f['scale_down']['slow']} slow), "
                  f"without the hold {f['scale_down_no_hold']['failed']} failed "
                  f"({f['scale_down_no_hold']['slow']} slow); {time.monotonic() - started:.0f} s", flush=True)
    command = "sudo PYTHONPATH=. .venv/bin/python bench/failover.py"
    defaults = {"rounds": 3, "rate": 200.0, "timeout": 2.0}
    for key, default in defaults.items():
        if getattr(args, key) != default:
            command += f" --{key} {getattr(args, key):g}"
    result = {
        "command": command,
        "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "keepalived": version(["keepalived", "--version"]), "etcd": version(["etcd", "--version"])},
        "settings": {"rounds": args.rounds, "rate": args.rate, "client_timeout_s": args.timeout,
                     "slow_s": 0.9, "advert_int": 1, "nopreempt": True, "priorities": {"n1": 150, "n2": 100, "n3": 200},
                     "lease_ttl_s": 10},
        "summary": summarise(rounds),
        "rounds": rounds,
    }
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {shlex.quote(command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
