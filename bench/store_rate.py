#!/usr/bin/env python3
"""
How many config changes per second the embedded file store makes durable.

    PYTHONPATH=. .venv/bin/python bench/store_rate.py            # 200 saves of a 10-backend config
    PYTHONPATH=. .venv/bin/python bench/store_rate.py --backends 1000 --saves 50

Runs L{lbproxy.control.store.file.FileStore.save} back to back on a real reactor,
each save a new config version (the same path an API change takes: a
thread-pool write with fsync of the file and of the directory), and prints
saves per second and the median/p99 latency of one save, and the median
time of the part that runs on the reactor thread (encoding the document:
JSON and checksum).  The result is the
ceiling of the config store's write rate on this disk: every API change
waits for one save.  Writes JSON to C{--out} when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time


def run(directory: str, backends: int, saves: int) -> dict:
    from twisted.internet import defer, reactor

    from lbproxy.model.config import Backend, Config
    from lbproxy.control.store.envelope import encode
    from lbproxy.control.store.file import FileStore

    store = FileStore(directory, reactor=reactor)
    config = Config(
        version=1,
        backends=tuple(Backend(id=f"b{i}", host="10.0.0.1", port=1000 + i) for i in range(backends)),
    )
    latencies: list[float] = []
    result: dict = {}

    @defer.inlineCallbacks
    def go():
        nonlocal config
        yield store.save(config, 0)
        start = time.perf_counter()
        for _ in range(saves):
            new = dataclasses.replace(config, version=config.version + 1)
            t0 = time.perf_counter()
            yield store.save(new, config.version)
            latencies.append(time.perf_counter() - t0)
            config = new
        elapsed = time.perf_counter() - start
        encodes = []
        for _ in range(20):
            t0 = time.perf_counter()
            encode(config)
            encodes.append(time.perf_counter() - t0)
        result.update(
            saves=saves,
            backends=backends,
            document_bytes=len(encode(config)),
            seconds=elapsed,
            saves_per_second=saves / elapsed,
            median_ms=statistics.median(latencies) * 1000,
            p99_ms=sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
            encode_ms=statistics.median(encodes) * 1000,
        )

    def done(_):
        reactor.stop()

    def failed(f):
        result["error"] = f.getErrorMessage()
        reactor.stop()

    reactor.callWhenRunning(lambda: go().addCallbacks(done, failed))
    reactor.run()
    if "error" in result:
        raise SystemExit(f"store_rate: {result['error']}")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=int, default=10, help="backends in the config document")
    parser.add_argument("--saves", type=int, default=200, help="saves to time")
    parser.add_argument("--dir", default=None, help="state directory (default: a new one under /tmp)")
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    directory = args.dir or tempfile.mkdtemp(prefix="lbproxy-store-rate-")
    os.makedirs(directory, exist_ok=True)
    result = run(directory, args.backends, args.saves)
    result["command"] = "PYTHONPATH=. .venv/bin/python bench/store_rate.py " + " ".join(argv)
    result["directory"] = directory
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(
        f"{result['saves']} saves of a {result['backends']}-backend config "
        f"({result['document_bytes']} bytes) in {result['seconds']:.2f}s: "
        f"{result['saves_per_second']:.0f} saves/s, median {result['median_ms']:.2f} ms, "
        f"p99 {result['p99_ms']:.2f} ms; encoding on the reactor thread {result['encode_ms']:.2f} ms "
        f"({directory})"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
