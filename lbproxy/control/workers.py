"""
C{--workers N}: N relay processes sharing the listen port, one admin for all.

Python relays on one core per process, so more cores need more processes.
Each worker (L{lbproxy.control.worker_main}) is a reactor process with its
own L{Balancer} and relay engine on a listening socket of its own, bound
with C{SO_REUSEPORT}: the kernel spreads new connections over the workers.
This process (the parent) keeps everything else: the config store and
controller, the admin API and UI, active health checks.  It relays nothing.

Parent and worker talk AMP (L{lbproxy.control.worker_protocol}) over a
Unix socketpair: the child's end becomes the worker's file descriptor 3
(C{spawnProcess} C{childFDs}), and its number is the worker's only
argument.  A socketpair, rather than extra pipes, gives both ends one
full-duplex stream with a real transport (C{adoptStreamConnection}), so
AMP runs on it unchanged, and either side sees the other die as the
connection closing.

The parent follows the controller (L{IConfigObserver}): every applied
config goes to every worker as L{ApplyConfig}, and each worker's answer is
the version it applied (L{WorkerPool.status}).  Active check results go
as L{Health}.  Workers push L{Report}s of their counters twice a second,
and soon after any backend event; the parent's balancer adds them up
(L{lbproxy.policy.relayed}), so the API shows the sums, a removed backend
stays C{removing} until every worker has drained it, and a forced close
(L{CloseBackend}) answers with the real number closed.  Not aggregated:
connect and response time averages and passive-health state (each worker
ejects on its own traffic, and its ejections are republished with a
C{worker} field).

A worker that exits is started again after C{restart_delay}, with the
config and the down backends of that moment; only its own connections are
lost.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from lbproxy.control.worker_protocol import (
    BACKEND_COUNTERS,
    TOTAL_COUNTERS,
    ApplyConfig,
    BackendEvent,
    CloseBackend,
    Drain,
    Force,
    Health,
    Listen,
    Poll,
    Report,
    Start,
    merge_routes,
)
from lbproxy.control.lifecycle import IDrainable
from lbproxy.interfaces import IConfigObserver

log = Logger()

#: The worker's file descriptor for its end of the channel.
CHANNEL_FD = 3
#: The worker's file descriptor for its listening socket.
LISTEN_FD = 4


class _ParentChannel(amp.AMP):
    """
    The parent's end of one worker's channel: takes its reports.
    """

    def __init__(self, worker: "Worker") -> None:
        super().__init__()
        self.worker = worker

    @Report.responder
    def report(self, **fields: Any) -> dict:
        # An error here must not end the channel (AMP closes it on an
        # unhandled error in an unanswered command): log it, keep going.
        try:
            self.worker.pool.reported(self.worker, fields)
        except Exception:
            log.failure("worker {index}: report not taken", index=self.worker.index)
        return {}

    @BackendEvent.responder
    def backend_event(self, backend: str, state: str, reason: str, time: float,
                      ejected_until: float | None) -> dict:
        data: dict[str, Any] = {"id": backend, "state": state, "reason": reason, "time": time,
                                "worker": self.worker.index}
        if ejected_until is not None:
            data["ejected_until"] = ejected_until
        self.worker.pool.balancer.events.publish("backend", data)
        return {}


class Worker(ProcessProtocol):
    """
    One worker process, as the parent sees it.

    @ivar applied: the config version the worker last acknowledged.
    @ivar apply_error: why the last L{ApplyConfig} failed, or C{None}.
    @ivar report: the worker's last report (totals by name), or C{None}.
    @ivar ended: fires once the process has exited.
    """

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.channel = _ParentChannel(self)
        self.pid: int | None = None
        self.started = 0.0
        self.listening = False
        self.applied: int | None = None
        self.apply_error: str | None = None
        self.report: dict[str, Any] | None = None
        self.reported_at: float | None = None
        self.gone = False
        self.ended: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def call(self, command: type, **kwargs: Any) -> defer.Deferred:
        """
        Send a command; a worker that is gone answers with a failure.
        """
        if self.gone or self.channel.transport is None:
            return defer.fail(ConnectionError(f"worker {self.index} is gone"))
        return self.channel.callRemote(command, **kwargs)

    def processEnded(self, reason: Any) -> None:
        self.gone = True
        self.pool.ended(self, reason)
        if self.channel.transport is not None:
            self.channel.transport.loseConnection()
        self.ended.callback(None)

    def view(self) -> dict[str, Any]:
        totals = self.report or {}
        return {
            "index": self.index, "pid": self.pid, "listening": self.listening,
            "applied_version": self.applied, "apply_error": self.apply_error,
            "active": totals.get("active", 0), "accepted": totals.get("accepted", 0),
            "reported": self.reported_at,
        }


@implementer(IConfigObserver, IDrainable)
class WorkerPool(Service):
    """
    Starts, feeds and restarts the worker processes; the relays of the
    parent's balancer (L{Balancer.relay_elsewhere}).

    @ivar workers: the live L{Worker} of each worker slot.
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
        self.workers: list[Worker | None] = [None] * self.count
        self.port: int | None = None
        self.restarts = 0
        #: the listening socket of each worker slot (handed over, or made at start)
        self.sockets: list[socket.socket] = list(options.get("adopt") or ())
        #: fires once every worker has answered its first Listen
        self.ready: defer.Deferred = defer.Deferred()
        self._unfollow: Any = None
        #: per slot, how many workers in a row died young
        self._young_deaths: dict[int, int] = {}
        #: set by a graceful stop: an exiting worker is not replaced.
        self.draining = False

    def _live(self) -> list[Worker]:
        return [w for w in self.workers if w is not None and not w.gone]

    # Lifecycle ----------------------------------------------------------------

    def startService(self) -> None:
        # One listening socket per worker slot (SO_REUSEPORT), made here and
        # given to the worker as a file descriptor: port 0 becomes one
        # concrete port for all, a port in use fails here, at startup, and
        # the parent's copy keeps each socket (and its queue) alive across a
        # worker's restart and hands it over on a takeover.
        if not self.sockets:
            from lbproxy.endpoints import listening_socket

            first = listening_socket(self.host, self.requested_port, self.backlog, reuse_port=True)
            self.sockets = [first]
            try:
                port = first.getsockname()[1]
                for _ in range(self.count - 1):
                    self.sockets.append(listening_socket(self.host, port, self.backlog, reuse_port=True))
            except OSError:
                self._close_sockets()
                raise
        elif len(self.sockets) != self.count:
            got = len(self.sockets)
            self._close_sockets()
            raise OSError(f"the process taken over had {got} workers: take over with --workers {got}")
        self.port = self.sockets[0].getsockname()[1]
        self.balancer.relay_elsewhere(self)
        self._unfollow = self.balancer.follow(self._follow)
        super().startService()
        for i in range(self.count):
            self._spawn(i)

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def listening_fds(self) -> list[tuple[str, int]]:
        """
        The workers' listening sockets, to hand over (L{lbproxy.control.takeover}).
        """
        return [("worker", sock.fileno()) for sock in self.sockets]

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        waits = []
        for worker in self._live():
            waits.append(worker.ended)
            try:
                worker.transport.signalProcess("TERM")
            except Exception:
                pass
        done = defer.DeferredList(waits)
        killer = self.reactor.callLater(self.stop_timeout, self._kill_all)
        done.addBoth(lambda r: killer.cancel() if killer.active() else None)
        done.addBoth(lambda _: self._close_sockets())
        return done

    def _kill_all(self) -> None:
        for worker in self._live():
            log.warn("worker {index} ignored SIGTERM; killing it", index=worker.index)
            try:
                worker.transport.signalProcess("KILL")
            except Exception:
                pass

    def _spawn(self, index: int) -> None:
        if not self.running:
            return
        worker = Worker(self, index)
        worker.started = self.reactor.seconds()
        self.workers[index] = worker
        # A relay from now on: a removal waits for its first report.
        self.balancer.take_report(worker, 0, {}, {})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = dict(os.environ)
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
            self.reactor.spawnProcess(
                worker, sys.executable,
                [sys.executable, "-m", "lbproxy.control.worker_main", str(CHANNEL_FD)],
                env=env, childFDs={0: "w", 1: 1, 2: 2, CHANNEL_FD: theirs.fileno(),
                                   LISTEN_FD: self.sockets[index].fileno()},
            )
            self.reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: worker.channel)
            )
        finally:
            ours.close()
            theirs.close()
        log.info("worker {index} started as pid {pid}", index=index, pid=worker.pid)
        self._introduce(worker)

    def _introduce(self, worker: Worker) -> None:
        """
        Start the worker with the config and the down backends of now.
        The commands go at once: AMP keeps their order.
        """
        s = self.settings
        worker.call(Start, index=worker.index, report_interval=self.report_interval,
                    connect_timeout=s.connect_timeout, retries=s.retries,
                    idle_timeout=s.idle_timeout, max_connections=s.max_connections,
                    access_log=s.access_log, tcp_keepalive=list(s.tcp_keepalive or ()),
                    ).addErrback(self._failed, worker, "start")
        config = self.balancer.config
        self._apply(worker, config.version, json.dumps(config.to_json()))
        down = [{"id": bid, "reason": state.reason}
                for bid, state in self.balancer.pool.health.items() if not state.healthy]
        d = worker.call(Listen, host=self.host, port=self.port, backlog=self.backlog,
                        engine=self.engine, down=down, fd=LISTEN_FD)
        d.addCallback(lambda _: self._listening(worker))
        d.addErrback(self._failed, worker, "listen", stop=True)

    def _listening(self, worker: Worker) -> None:
        worker.listening = True
        if not self.ready.called and all(w is not None and w.listening for w in self.workers):
            self.ready.callback(None)

    def _failed(self, failure: Any, worker: Worker, what: str, stop: bool = False) -> None:
        if worker.gone or failure.check(error.ConnectionLost, error.ConnectionDone):
            return  # it is dying: processEnded says so, once
        log.error("worker {index} could not {what}: {why}", index=worker.index, what=what,
                  why=failure.getErrorMessage())
        if stop:
            # A worker that does not relay is of no use: it exits and is
            # started again, ever more slowly if this repeats.
            try:
                worker.transport.signalProcess("TERM")
            except error.ProcessExitedAlready:
                pass

    def ended(self, worker: Worker, reason: Any) -> None:
        """
        A worker exited: its connections are gone, its finished counters
        stay; start another.
        """
        self.balancer.drop_reports(worker)
        if self.workers[worker.index] is not worker:
            return
        self.workers[worker.index] = None
        if not self.running or self.draining:
            return
        # A worker that dies young (bad config, port trouble) is restarted
        # ever more slowly, not in a tight loop.
        lived = self.reactor.seconds() - worker.started
        deaths = self._young_deaths.get(worker.index, 0) + 1 if lived < self.young else 0
        self._young_deaths[worker.index] = deaths
        delay = backoffPolicy(self.restart_delay, self.max_restart_delay, 2.0, jitter=lambda: 0)(deaths)
        log.warn("worker {index} (pid {pid}) exited: {why}; starting another in {delay}s",
                 index=worker.index, pid=worker.pid, why=reason.getErrorMessage(), delay=delay)
        self.restarts += 1
        self.reactor.callLater(delay, self._spawn, worker.index)

    # Graceful stop (lbproxy.control.lifecycle.IDrainable) ------------------------

    def drain(self, grace: float, spread: float) -> defer.Deferred:
        """
        Every worker stops accepting and drains; fires with the sums of
        C{(finished, cut)} once every worker has exited.
        """
        self.draining = True
        live = self._live()
        answers = []
        for worker in live:
            d = worker.call(Drain, grace=grace, spread=spread)
            d.addCallback(lambda a: (a["finished"], a["cut"]))
            d.addErrback(lambda f, w=worker: (self._failed(f, w, "drain"), (0, 0))[1])
            answers.append(d)

        def summed(results: list) -> defer.Deferred:
            total = (sum(r[0] for r in results), sum(r[1] for r in results))
            return defer.DeferredList([w.ended for w in live]).addCallback(lambda _: total)

        # Our copies go too: once the workers close theirs, nothing listens
        # and new clients are refused at once (they would wait, unaccepted,
        # in a queue no one reads).  After a takeover the new process holds
        # the sockets.
        self._close_sockets()
        return defer.gatherResults(answers).addCallback(summed)

    def force(self) -> None:
        for worker in self._live():
            worker.call(Force).addErrback(lambda f: None)

    # Parent to workers ------------------------------------------------------------

    def applied(self, old: Any, new: Any) -> None:
        """
        L{IConfigObserver}: send the config now in force to every worker.
        """
        # Workers relay the main service (the one --listen defines).
        new = new.main() if hasattr(new, "main") else new
        if new is None:
            return
        document = json.dumps(new.to_json())
        for worker in self._live():
            self._apply(worker, new.version, document)

    def _apply(self, worker: Worker, version: int, document: str) -> None:
        def done(answer: dict) -> None:
            worker.applied = answer["applied"]
            worker.apply_error = None

        def failed(failure: Any) -> None:
            if worker.gone:
                return
            worker.apply_error = failure.getErrorMessage()
            log.error("worker {index} (pid {pid}) failed to apply config version {version}: {why}",
                      index=worker.index, pid=worker.pid, version=version, why=worker.apply_error)

        worker.call(ApplyConfig, version=version, document=document).addCallbacks(done, failed)

    def _follow(self, kind: str, args: tuple) -> None:
        # Forced closes are asked through close() (whose answer counts
        # them), and each worker runs its own drain timers: only the
        # parent's health results need repeating.
        if kind == "health":
            backend, ok, reason = args
            for worker in self._live():
                worker.call(Health, backend=backend, ok=ok, reason=reason).addErrback(
                    self._failed, worker, f"take a health result for {backend}")

    def refresh(self) -> defer.Deferred:
        """
        Ask every worker for a fresh report (for the balancer).

        @return: a Deferred that fires once all have answered or failed.
        """
        polls = []
        for worker in self._live():
            d = worker.call(Poll)
            d.addCallback(lambda fields, w=worker: self.reported(w, fields))
            d.addErrback(self._failed, worker, "report")
            polls.append(d)
        return defer.gatherResults(polls).addCallback(lambda _: None)

    def close(self, backend_id: str, why: str) -> defer.Deferred:
        """
        Close every worker's connections to a backend.

        @return: a Deferred firing with how many they closed (a worker that
            is gone closed none).
        """
        closes = []
        for worker in self._live():
            d = worker.call(CloseBackend, backend=backend_id, why=why)
            d.addCallback(lambda answer: answer["closed"])
            d.addErrback(lambda f, w=worker: self._failed(f, w, f"close {backend_id}") or 0)
            closes.append(d)
        return defer.gatherResults(closes).addCallback(sum)

    # Workers to parent --------------------------------------------------------------

    def reported(self, worker: Worker, fields: dict[str, Any]) -> None:
        """
        Take one worker's report: counters into the balancer, routing
        decisions into its recorder (for the UI's feed).
        """
        if worker.gone:
            return
        totals = {name: fields[name] for name in TOTAL_COUNTERS}
        backends = {b["id"]: {name: b[name] for name in BACKEND_COUNTERS} for b in fields["backends"]}
        worker.report = totals
        worker.reported_at = self.reactor.seconds()
        self.balancer.take_report(worker, fields["version"], totals, backends)
        if fields["route_total"]:
            merge_routes(self.balancer.routes, fields)

    def status(self) -> dict[str, Any]:
        """
        For C{GET /api/v1/status}: each worker's pid, applied config
        version and last reported counts.
        """
        return {
            "workers": [w.view() if w is not None else None for w in self.workers],
            "worker_restarts": self.restarts,
            "listen_port": self.port,
        }

