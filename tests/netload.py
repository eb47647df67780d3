"""
The processes of the failover lab that run inside the namespaces, in
the standard library only: C{python -m tests.netload load ...} (the
client) and C{python -m tests.netload backend FD...} (the backends, on
sockets their parent bound; see L{tests.nettools.Backends}); and
L{LoadLog}, which reads the client's records.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: A connection this slow waited for a SYN retransmission (Linux resends a lost SYN after 1 s).
SLOW = 0.9


async def _backend_main(fds: list[int]) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readline(), 10)
            peer, port = writer.get_extra_info("peername")[0], writer.get_extra_info("sockname")[1]
            writer.write(f"{peer} {port}\n".encode())
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(serve, sock=socket.socket(fileno=fd)) for fd in fds]
    await asyncio.gather(*(s.serve_forever() for s in servers))


async def _load_main(host: str, port: int, rate: float, timeout: float, out: Any) -> None:
    """
    Open C{rate} new connections per second to C{host:port}, each sending
    a line and reading the answer, until SIGTERM; then wait for those in
    flight.  Writes C{S i t0} when attempt C{i} starts and C{E i t0 t1 ok
    info} when it ends (times from C{time.monotonic}, the clock every
    process on the machine shares).
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    pending: set[asyncio.Task] = set()

    async def attempt(i: int) -> None:
        t0 = time.monotonic()
        out.write(f"S {i} {t0:.6f}\n")
        ok, info = 0, ""
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.write(b"ping\n")
            left = timeout - (time.monotonic() - t0)
            line = await asyncio.wait_for(reader.readline(), max(left, 0.001))
            if line.endswith(b"\n"):
                ok, info = 1, line.split()[0].decode()
            else:
                info = "closed-early"
        except asyncio.TimeoutError:
            info = "timeout"
        except OSError as e:
            info = type(e).__name__
        finally:
            if writer is not None:
                writer.close()
        out.write(f"E {i} {t0:.6f} {time.monotonic():.6f} {ok} {info}\n")

    interval = 1.0 / rate
    start = time.monotonic()
    i = 0
    while not stopping.is_set():
        task = asyncio.ensure_future(attempt(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass
    if pending:
        await asyncio.wait(pending, timeout=timeout + 1)
    out.write("DONE\n")


class LoadLog:
    """
    The load client's records, read as they are written: C{S i t0} when
    attempt C{i} starts, C{E i t0 t1 ok info} when it ends.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.rest = b""
        self.started: dict[int, float] = {}
        self.ended: dict[int, tuple[float, float, bool, str]] = {}

    def refresh(self) -> "LoadLog":
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        for line in lines:
            parts = line.decode().split()
            if parts and parts[0] == "S":
                self.started[int(parts[1])] = float(parts[2])
            elif parts and parts[0] == "E":
                self.ended[int(parts[1])] = (float(parts[2]), float(parts[3]), parts[4] == "1",
                                             parts[5] if len(parts) > 5 else "")
        return self

    def complete(self, until_t: float) -> bool:
        """Every attempt started before C{until_t} has ended (and one started after it)."""
        self.refresh()
        return any(t0 > until_t for t0 in self.started.values()) and all(
            i in self.ended for i, t0 in self.started.items() if t0 <= until_t)

    def successes(self, after: float, via: str | None = None) -> list[tuple[float, float, bool, str]]:
        """Successful attempts started after C{after} (relayed by C{via}), by end time."""
        self.refresh()
        return sorted((r for r in self.ended.values() if r[2] and r[0] > after and (via is None or r[3] == via)),
                      key=lambda r: r[1])

    def last_success_before(self, t: float) -> tuple[float, float, bool, str] | None:
        done = [r for r in self.ended.values() if r[2] and r[1] <= t]
        return max(done, key=lambda r: r[1]) if done else None

    def around(self, t_from: float, t_to: float, event: float, first: float,
               event_end: float | None = None) -> dict[str, int]:
        """
        Of the attempts started in C{[t_from, t_to]}: how many were open at
        the event, and how many failed although they started after C{first}
        (the first success once service was back) or ended before the event
        (failures the event cannot explain; none is expected).

        @param event_end: for an event known only to lie in
            C{[event, event_end]} (an address move seen by polling), the
            end of that window: an attempt open at any time in it is open
            at the event.
        """
        end = event if event_end is None else event_end
        records = [r for r in self.ended.values() if t_from <= r[0] <= t_to]
        return {"open_at_event": sum(1 for r in records if r[0] <= end and event <= r[1]),
                "failed_unexplained": sum(1 for r in records if not r[2] and (r[0] > first or r[1] < event))}

    def summary(self, t_from: float, t_to: float, names: dict[str, str]) -> dict[str, Any]:
        """The attempts started in C{[t_from, t_to]}: counts, failures by reason, latency."""
        records = [r for r in self.ended.values() if t_from <= r[0] <= t_to]
        failed = [r for r in records if not r[2]]
        latency = sorted(r[1] - r[0] for r in records if r[2])
        reasons: dict[str, int] = {}
        for r in failed:
            reasons[r[3]] = reasons.get(r[3], 0) + 1
        served: dict[str, int] = {}
        for r in records:
            if r[2]:
                name = names.get(r[3], r[3])
                served[name] = served.get(name, 0) + 1
        return {
            "attempts": len(records),
            "failed": len(failed),
            "failures": reasons,
            "served_by": served,
            "slow": sum(1 for x in latency if x > SLOW),
            "latency_p50_ms": round(statistics.median(latency) * 1000, 2) if latency else None,
            "latency_max_ms": round(latency[-1] * 1000, 1) if latency else None,
            "window_s": round(t_to - t_from, 2),
        }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.netload")
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="the load client")
    load.add_argument("host")
    load.add_argument("port", type=int)
    load.add_argument("--rate", type=float, default=200.0)
    load.add_argument("--timeout", type=float, default=2.0)
    load.add_argument("--out", required=True)
    backend = sub.add_parser("backend", help="backend servers on inherited sockets")
    backend.add_argument("fds", type=int, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "backend":
        asyncio.run(_backend_main(args.fds))
        return 0
    with open(args.out, "a", buffering=1) as out:
        asyncio.run(_load_main(args.host, args.port, args.rate, args.timeout, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
