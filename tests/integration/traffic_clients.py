"""
Clients for the traffic-control tests, run as separate processes (so a
flood does not share the proxy's interpreter): standard library only.

    python -m tests.integration.traffic_clients flood PORT SOURCE SECONDS
    python -m tests.integration.traffic_clients paced PORT SOURCE RATE SECONDS

Each prints one JSON line: what it tried and what it got.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

_RESET = struct.pack("ii", 1, 0)


def one(port: int, source: str, timeout: float = 2.0) -> bool:
    """
    Connect from C{source}, read the backend's first line.

    @return: whether a whole line came (served), not a close or a reset.
    """
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    s.settimeout(timeout)
    try:
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        got = b""
        while not got.endswith(b"\n"):
            data = s.recv(64)
            if not data:
                return False
            got += data
        return True
    except OSError:
        return False
    finally:
        s.close()


def flood(port: int, source: str, seconds: float) -> dict:
    """
    Connect from C{source} as fast as one process can, closing each with
    a reset (no TIME_WAIT left behind), for C{seconds}.
    """
    tried = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tried += 1
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        try:
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
        except OSError:
            pass
        finally:
            s.close()
    return {"tried": tried, "served": 0, "seconds": seconds}


def paced(port: int, source: str, rate: float, seconds: float) -> dict:
    """
    One connection every C{1/rate} seconds (an ordinary client), each
    waiting for the backend's line.

    @return: attempts, successes and the successful rate over the time
        it really took.
    """
    n = int(rate * seconds)
    start = time.monotonic()
    served = 0
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        served += one(port, source)
    took = max(time.monotonic() - start, seconds)
    return {"tried": n, "served": served, "rate": served / took}


if __name__ == "__main__":
    kind, port, source, *rest = sys.argv[1:]
    if kind == "flood":
        out = flood(int(port), source, float(rest[0]))
    else:
        out = paced(int(port), source, float(rest[0]), float(rest[1]))
    print(json.dumps(out))
