#!/usr/bin/env python3
"""
What a lock on the relay's data path would cost in CPython (for the design
document's concurrency section).

    python3 bench/lock_cost.py

Prints the time of 2,000,000 counter updates done three ways: plainly on
one thread (what lbproxy does: state belongs to the reactor thread), under
an uncontended C{threading.Lock} on one thread, and split over two threads
sharing the lock (what a threaded design would do).
"""

import json
import sys
import threading
import time

N = 1_000_000


def main() -> int:
    counter = [0]
    lock = threading.Lock()

    def plain(n: int) -> None:
        for _ in range(n):
            counter[0] += 1

    def locked(n: int) -> None:
        for _ in range(n):
            with lock:
                counter[0] += 1

    results = {}
    t = time.perf_counter()
    plain(2 * N)
    results["plain_one_thread_ns"] = (time.perf_counter() - t) / (2 * N) * 1e9
    t = time.perf_counter()
    locked(2 * N)
    results["lock_one_thread_ns"] = (time.perf_counter() - t) / (2 * N) * 1e9
    threads = [threading.Thread(target=locked, args=(N,)) for _ in range(2)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    results["lock_two_threads_ns"] = (time.perf_counter() - t) / (2 * N) * 1e9
    results["python"] = sys.version.split()[0]
    for key, value in results.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    if len(sys.argv) > 2 and sys.argv[1] == "--out":
        with open(sys.argv[2], "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
