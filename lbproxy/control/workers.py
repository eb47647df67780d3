"""
C{--workers N}: N relay processes sharing the listen port, one admin for all.

Python relays on one core per process, so more cores need more processes.
Each worker is a reactor process with its own L{Balancer} and relay engine
on a listening socket of its own, bound with C{SO_REUSEPORT}: the kernel
spreads new connections over the workers.  This process (the parent) keeps
everything else: the config store and controller, the admin API and UI,
active health checks.  It relays nothing.

Parent and worker talk over the worker's stdin/stdout, one JSON object per
line:

 - parent to worker: C{{"config": {...}}} after every applied config change
   (so changes reach every worker at once, with or without a durable
   store), C{{"health": [id, ok, reason]}} for each active check result
   (checks run once, here; each worker's pool applies rise/fall the same
   way), C{{"close": [id, why]}} for a forced close of a backend's
   connections.
 - worker to parent, every C{report_interval} seconds: C{{"stats": ...}}
   with its totals and per-backend counters, plus its batch of routing
   decisions; C{{"event": [type, data]}} for backend events the worker
   itself raised (passive ejections, drains).

What is aggregated, honestly: the parent's C{balancer.totals} and every
backend's C{active}, C{total}, C{failures}, C{bytes_up}, C{bytes_down}
become the sums over live workers (as of their last report, so at most one
interval old) plus the finished counters of workers that died; routing
decisions are merged into the parent's recorder; worker backend events are
republished with a C{worker} field.  Not aggregated: connect and response
time averages (each worker keeps its own), and passive-health state (each
worker ejects on its own traffic).

A worker that exits is started again after C{restart_delay}; only its own
connections are lost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

log = Logger()

_TOTALS_SUMMED = (
    "accepted", "active", "rejected", "no_backend", "connect_failures", "retries",
    "strategy_errors", "idle_timeouts", "bytes_up", "bytes_down",
)
_BACKEND_SUMMED = ("active", "total", "failures", "bytes_up", "bytes_down")


class _WorkerProtocol(ProcessProtocol):
    """
    The parent's end of one worker's pipes.
    """

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self._buffer = b""
        self.pid: int | None = None
        self.started = 0.0
        self.delay = 0.0
        self.stats: dict | None = None
        self.ended: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                log.warn("worker {index}: unreadable line {line!r}", index=self.index, line=line[:200])
                continue
            self.pool.message(self, message)

    def send(self, message: dict) -> None:
        if self.transport is not None and self.pid is not None:
            try:
                self.transport.write(json.dumps(message).encode() + b"\n")
            except Exception:
                log.failure("could not write to worker {index}", index=self.index)

    def processEnded(self, reason: Any) -> None:
        self.pool.ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Starts, feeds and restarts the worker processes, and folds their
    counters into the parent's balancer so the admin API shows all workers.

    @ivar workers: the live L{_WorkerProtocol} of each worker slot.
    @ivar port: the listen port (known once started, also for port 0).
    @ivar restarts: how many workers were started again after exiting.
    """

    report_interval = 0.5
    restart_delay = 0.2
    max_restart_delay = 10.0
    #: A worker that exits sooner than this after its start died young.
    young = 2.0
    stop_timeout = 10.0

    def __init__(self, options: Any, balancer: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.balancer = balancer
        self.count = options["workers"]
        self.engine = options.get("engine", "fast")
        self.host, self.requested_port, self.backlog = options["listen-tcp"]
        self.settings = balancer.settings
        self.workers: list[_WorkerProtocol | None] = [None] * self.count
        self.port: int | None = None
        self.restarts = 0
        self._reservation: socket.socket | None = None
        self._retired_totals = dict.fromkeys(_TOTALS_SUMMED, 0)
        self._retired_backends: dict[str, dict[str, int]] = {}
        self._unsubscribe: Any = None
        self._unfollow: Any = None
        self._delays: dict[int, float] = {}

    # Lifecycle ----------------------------------------------------------------

    def startService(self) -> None:
        # Hold the port (bound with SO_REUSEPORT, not listening, so it takes
        # no connections): port 0 becomes one concrete port for all workers,
        # and a port in use fails here, at startup.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.requested_port))
        except OSError:
            sock.close()
            raise
        self._reservation = sock
        self.port = sock.getsockname()[1]
        self._unsubscribe = self.balancer.events.subscribe(self._event)
        self._unfollow = self.balancer.follow(self._follow)
        super().startService()
        for i in range(self.count):
            self._spawn(i)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        waits = []
        for worker in self.workers:
            if worker is not None and worker.pid is not None:
                waits.append(worker.ended)
                try:
                    worker.transport.signalProcess("TERM")
                except Exception:
                    pass
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
        done = defer.DeferredList(waits)
        killer = self.reactor.callLater(self.stop_timeout, self._kill_all)
        done.addBoth(lambda r: killer.cancel() if killer.active() else None)
        return done

    def _kill_all(self) -> None:
        for worker in self.workers:
            if worker is not None and worker.pid is not None:
                log.warn("worker {index} ignored SIGTERM; killing it", index=worker.index)
                try:
                    worker.transport.signalProcess("KILL")
                except Exception:
                    pass

    def _spawn(self, index: int) -> None:
        if not self.running:
            return
        spec = {
            "index": index,
            "host": self.host,
            "port": self.port,
            "backlog": self.backlog,
            "engine": self.engine,
            "settings": dataclasses.asdict(self.settings),
            "config": self.balancer.config.to_json(),
            "report_interval": self.report_interval,
            # A new worker starts with what the parent's checks know.
            "down": [
                [bid, state.reason]
                for bid, state in self.balancer.pool.health.items()
                if not state.healthy
            ],
        }
        protocol = _WorkerProtocol(self, index)
        protocol.started = self.reactor.seconds()
        protocol.delay = self._delays.get(index, 0.0)
        self.workers[index] = protocol
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.reactor.spawnProcess(
            protocol, sys.executable,
            [sys.executable, "-m", "lbproxy.control.workers", json.dumps(spec)],
            env=env, childFDs={0: "w", 1: "r", 2: 2},
        )
        log.info("worker {index} started as pid {pid}", index=index, pid=protocol.pid)

    def ended(self, worker: _WorkerProtocol, reason: Any) -> None:
        """
        A worker exited: keep its finished counters, start another.
        """
        if worker.stats is not None:
            totals = worker.stats["totals"]
            for name in _TOTALS_SUMMED:
                if name != "active":
                    self._retired_totals[name] += totals.get(name, 0)
            for bid, counters in worker.stats["backends"].items():
                kept = self._retired_backends.setdefault(bid, dict.fromkeys(_BACKEND_SUMMED, 0))
                for name in _BACKEND_SUMMED:
                    if name != "active":
                        kept[name] += counters.get(name, 0)
            worker.stats = None
        if self.workers[worker.index] is worker:
            self.workers[worker.index] = None
            if self.running:
                # A worker that dies young (bad config, port trouble) is
                # restarted ever more slowly, not in a tight loop.
                lived = self.reactor.seconds() - worker.started
                delay = self.restart_delay
                if lived < self.young:
                    delay = min(max(worker.delay * 2, self.restart_delay), self.max_restart_delay)
                log.warn("worker {index} (pid {pid}) exited: {why}; starting another in {delay}s",
                         index=worker.index, pid=worker.pid, why=reason.getErrorMessage(), delay=delay)
                self.restarts += 1
                self._delays[worker.index] = delay
                self.reactor.callLater(delay, self._spawn, worker.index)
        self._aggregate()

    # Parent to workers -----------------------------------------------------------

    def broadcast(self, message: dict) -> None:
        for worker in self.workers:
            if worker is not None:
                worker.send(message)

    def _event(self, event: Any) -> None:
        if event.type == "config" and "config" in event.data:
            self.broadcast({"config": event.data["config"]})

    def _follow(self, kind: str, args: tuple) -> None:
        # Active health results and forced closes: the workers' pools must
        # see them too (Balancer.follow).
        self.broadcast({kind: list(args)})

    # Workers to parent --------------------------------------------------------------

    def message(self, worker: _WorkerProtocol, message: dict) -> None:
        if "stats" in message:
            worker.stats = message["stats"]
            routes = message["stats"].get("routes")
            if routes:
                _merge_routes(self.balancer.routes, routes)
            self._aggregate()
        elif "event" in message:
            type_, data = message["event"]
            data["worker"] = worker.index
            self.balancer.events.publish(type_, data)

    def _aggregate(self) -> None:
        """
        Make the parent's counters the sums over all workers.
        """
        totals = dict(self._retired_totals)
        backends = {bid: dict(c) for bid, c in self._retired_backends.items()}
        for worker in self.workers:
            if worker is None or worker.stats is None:
                continue
            for name in _TOTALS_SUMMED:
                totals[name] += worker.stats["totals"].get(name, 0)
            for bid, counters in worker.stats["backends"].items():
                sums = backends.setdefault(bid, dict.fromkeys(_BACKEND_SUMMED, 0))
                for name in _BACKEND_SUMMED:
                    sums[name] += counters.get(name, 0)
        for name, value in totals.items():
            setattr(self.balancer.totals, name, value)
        for bid, stats in self.balancer.pool.stats.items():
            sums = backends.get(bid)
            for name in _BACKEND_SUMMED:
                setattr(stats, name, sums[name] if sums else 0)


def _merge_routes(recorder: Any, batch: dict) -> None:
    """
    Fold a worker's drained routing batch into the parent's recorder: the
    samples go into its ring, the counts into its counts.
    """
    for s in batch.get("sample", ()):
        recorder.record(s["time"], s["client"], s["backend"])
    extra = batch.get("dropped", 0)
    if extra:
        counts = recorder._counts
        sampled: dict[str, int] = {}
        for s in batch.get("sample", ()):
            sampled[s["backend"]] = sampled.get(s["backend"], 0) + 1
        for bid, n in batch.get("counts", {}).items():
            counts[bid] = counts.get(bid, 0) + n - sampled.get(bid, 0)
        recorder._total += extra


# The worker process ------------------------------------------------------------------


def _worker_stats(balancer: Any) -> dict:
    backends = {}
    for bid, stats in balancer.pool.stats.items():
        up, down = balancer.bytes_of(bid)
        backends[bid] = {
            "active": stats.active, "total": stats.total, "failures": stats.failures,
            "bytes_up": up, "bytes_down": down,
        }
    totals = balancer.totals.to_json()
    # Include the bytes of connections in flight, as the backends do.
    for group in balancer.connections.values():
        for conn in group:
            totals["bytes_up"] += conn.bytes_up
            totals["bytes_down"] += conn.bytes_down
    return {"pid": os.getpid(), "totals": totals, "backends": backends,
            "routes": balancer.routes.drain()}


def worker_main(spec: dict) -> None:
    """
    Run one worker: a balancer and relay engine on a C{SO_REUSEPORT}
    listener, fed by the parent over stdin, reporting over stdout.
    """
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, stdio
    from twisted.internet.task import LoopingCall
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.protocols.basic import LineReceiver

    from lbproxy.policy.balancer import Balancer
    from lbproxy.model.config import ProxySettings, parse_config
    from lbproxy.relay.fast_engine import FastRelay, listening_socket
    from lbproxy.policy.plugins import strategy_factories

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    index = spec["index"]
    balancer = Balancer(
        parse_config(spec["config"]), strategy_factories(), ProxySettings(**spec["settings"]),
        reactor=reactor,
    )
    if spec.get("down"):
        now = reactor.seconds()
        for bid, reason in spec["down"]:
            state = balancer.pool.health.get(bid)
            if state is not None:
                state.healthy, state.reason, state.since = False, reason, now
        balancer.pool.refresh(now)
    sock = listening_socket(spec["host"], spec["port"], spec["backlog"], reuse_port=True)
    if spec["engine"] == "fast":
        FastRelay(balancer, sock, reactor).start()
    else:
        from lbproxy.relay.twisted_engine import ProxyFactory

        sock.setblocking(False)
        reactor.adoptStreamPort(sock.fileno(), sock.family, ProxyFactory(balancer, reactor))
        sock.close()
    balancer.start()

    class Parent(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 64 * 1024 * 1024

        def lineReceived(self, line: bytes) -> None:
            message = json.loads(line)
            if "config" in message:
                config = parse_config(message["config"])
                if config.version != balancer.config.version:
                    balancer.apply(config)
            elif "health" in message:
                balancer.health_result(*message["health"])
            elif "close" in message:
                balancer.close_connections(*message["close"])

        def send(self, message: dict) -> None:
            self.transport.write(json.dumps(message).encode() + b"\n")

        def connectionLost(self, reason: Any) -> None:
            # The parent is gone: so is the reason to run.
            if reactor.running:
                reactor.stop()

    parent = Parent()
    stdio.StandardIO(parent)

    def forward(event: Any) -> None:
        if event.type == "backend":
            parent.send({"event": [event.type, dict(event.data)]})

    balancer.events.subscribe(forward)
    LoopingCall(lambda: parent.send({"stats": _worker_stats(balancer)})).start(
        spec.get("report_interval", 0.5)
    )
    log.info("worker {index} relaying on port {port}", index=index, port=spec["port"])
    reactor.run()


if __name__ == "__main__":
    worker_main(json.loads(sys.argv[1]))
