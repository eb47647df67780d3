"""
C{--workers N}: N relay processes sharing the listen port, one admin for all.

Python relays on one core per process, so more cores need more processes.
Each worker (L{lbproxy.control.worker_main}) is a reactor process with its
own L{ServiceTable} (every service of the document) and relay engine on
every listener of the document, each on a socket of the worker's own slot
with C{SO_REUSEPORT}: the kernel spreads new connections over the workers.
The parent makes and holds those sockets (L{lbproxy.control.worker_sockets})
and passes them over the channel.  This process (the parent) keeps
everything else: the config store and controller, the admin API and UI,
active health checks.  It relays nothing.

Parent and worker talk AMP (L{lbproxy.control.worker_protocol}) over a
Unix socketpair: the child's end becomes the worker's file descriptor 3
(C{spawnProcess} C{childFDs}), and its number is the worker's only
argument.  A socketpair, rather than extra pipes, gives both ends one
full-duplex stream with a real transport (C{adoptStreamConnection}), so
AMP runs on it unchanged, and either side sees the other die as the
connection closing.

The parent follows the controller (L{IConfigObserver}): every applied
document goes to every worker as L{ApplyConfig} (after an L{Adopt} for
each listener it adds), and each worker's answer is the version it
applied (L{WorkerPool.status}).  Active check results go as L{Health},
with their service.  Workers push L{Report}s of their counters per service
twice a second, and soon after any backend event; the parent's balancer
of each service adds them up (L{lbproxy.policy.relayed}), so the API shows
the sums, a removed backend stays C{removing} until every worker has
drained it, and a forced close (L{CloseBackend}) answers with the real
number closed.  Not aggregated:
connect and response time averages and passive-health state (each worker
ejects on its own traffic, and its ejections are republished with a
C{worker} field).

A worker that exits is started again after C{restart_delay}, with the
config and the down backends of that moment; only its own connections are
lost.

This module starts and restarts the workers and holds their
sockets (the controller's listener manager); the messages after a start
are L{lbproxy.control.worker_exchange}, how it stops
L{lbproxy.control.worker_stopping}; the parent's view of one worker,
L{lbproxy.control.worker_process}.
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
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.control.lifecycle import IDrainable
from lbproxy.control.worker_exchange import WorkerExchange
from lbproxy.control.worker_process import Worker  # noqa: F401 (re-exported: tests, callers)
from lbproxy.control.worker_protocol import Listen, OpenAccessLog, Start
from lbproxy.control.worker_sockets import WorkerSockets
from lbproxy.control.worker_stopping import WorkerStopping
from lbproxy.interfaces import IConfigObserver
from lbproxy.model.service import as_document, listen_key
from lbproxy.policy.relayed import drop_table_reports

log = Logger()

#: The worker's file descriptor for its end of the channel.
CHANNEL_FD = 3


@implementer(IConfigObserver, IDrainable)
class WorkerPool(WorkerExchange, WorkerStopping, Service):
    """
    Starts, feeds and restarts the worker processes; the relays of every
    balancer of the parent's service table (L{Balancer.relay_elsewhere}),
    and the controller's listener manager (L{prepare}, L{commit}: binding
    before a change is stored).

    @ivar workers: the live L{Worker} of each worker slot.
    @ivar port: the main service's first listen port (known once started,
        also for port 0).
    @ivar restarts: how many workers were started again after exiting.
    """

    report_interval = 0.5
    restart_delay = 0.2
    max_restart_delay = 10.0
    #: A worker that exits sooner than this after its start died young.
    young = 2.0
    stop_timeout = 10.0

    def __init__(self, options: Any, balancer: Any, reactor: Any = None) -> None:
        """
        @param options: C{workers}, C{engine}, C{backlog}, and optionally
            C{listen-tcp}, C{(host, port, backlog)}: a listener for the main
            service besides those of the document (callers of the era of
            one listener).
        @param balancer: the parent's L{ServiceTable}, or one balancer
            (a table of one service is made around it).
        """
        from lbproxy.policy.services import ServiceTable

        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.table = balancer if isinstance(balancer, ServiceTable) else ServiceTable.of(balancer)
        self.count = options["workers"]
        self.engine = options.get("engine", "fast")
        self.backlog = options.get("backlog", 4096)
        self._main_listen: str | None = None
        #: the last document applied (L{applied}), if newer than the table's
        self._applied: Any = None
        if options.get("listen-tcp"):
            host, port, self.backlog = options["listen-tcp"]
            self._main_listen = f"tcp:{port}:interface={host}"
        self.settings = self.table.settings
        #: C{(destination, format)} of the access log each worker writes, or C{None}.
        self.access_log = options.get("access_log")
        self.workers: list[Worker | None] = [None] * self.count
        self.restarts = 0
        self.listeners = WorkerSockets(self.count, self.backlog, reactor)
        from lbproxy.relay.tlsreload import TLSStore

        #: The certificates the workers serve, read here too: a change with a
        #: bad one is refused before it is stored; the API shows them.
        self.tls = TLSStore(reactor)
        #: fires once every worker has answered its first Listen
        self.ready: defer.Deferred = defer.Deferred()
        self._unfollow: dict[str, Any] = {}
        #: per slot, how many workers in a row died young
        self._young_deaths: dict[int, int] = {}
        #: set by a graceful stop: an exiting worker is not replaced.
        self.draining = False

    @property
    def balancer(self) -> Any:
        """
        The main service's balancer (or the first).
        """
        return self.table.main() or next(iter(self.table.balancers.values()))

    @property
    def sockets(self) -> dict[str, list[socket.socket]]:
        return self.listeners.sockets

    @property
    def port(self) -> int | None:
        main = self.document.main()
        found = self.listeners.addresses(self.document, main.name) if main is not None else []
        return found[0][1] if found else None

    @property
    def document(self) -> Any:
        """
        The document the workers are given: the table's, with the main
        service also on C{listen-tcp} if that was given.
        """
        latest = self.table.document
        if self._applied is not None and self._applied.version > latest.version:
            latest = self._applied
        return self._effective(latest)

    def _effective(self, document: Any) -> Any:
        from dataclasses import replace

        from lbproxy.model.service import Document

        document = as_document(document)
        main = document.main()
        if self._main_listen is None or main is None or self._main_listen in main.listen:
            return document
        stamped = replace(main, listen=(*main.listen, self._main_listen))
        return Document(document.version, tuple(stamped if s is main else s for s in document.services))

    def _live(self) -> list[Worker]:
        return [w for w in self.workers if w is not None and not w.gone]

    # The controller's listener manager -------------------------------------------

    def check(self, document: Any) -> None:
        self.listeners.check(self._effective(document))
        self.tls.check(self._effective(document))

    def prepare(self, document: Any, pending: Any = None) -> Any:
        """
        Bind every slot's socket of the listeners a change adds, before it
        is stored (L{lbproxy.control.controller.ConfigController}).

        @raise lbproxy.control.listeners.ListenRefused: nothing bound stays.
        """
        return self.listeners.prepare(self._effective(document), pending)

    def commit(self, pending: Any, document: Any) -> None:
        """
        Keep the sockets of the change; those of listeners gone close (the
        workers close theirs on applying it, L{applied}).
        """
        from lbproxy.model.service import sharing

        self.listeners.commit(pending, self._effective(document))
        self.tls.commit(sharing(self._effective(document)))

    def addresses(self, service: str) -> list[tuple[str, int]]:
        return self.listeners.addresses(self.document, service)

    # Lifecycle ----------------------------------------------------------------

    def startService(self) -> None:
        # Every listener's sockets, one per worker slot (SO_REUSEPORT), made
        # here and given to the workers: port 0 becomes one concrete port
        # for all, a port in use fails here, at startup, and the parent's
        # copy keeps each socket (and its queue) alive across a worker's
        # restart and hands it over on a takeover.
        document = self.document
        try:
            pending = self.listeners.prepare(document)
        except Exception as e:
            self.listeners.close()
            raise OSError(str(e)) from None
        self.listeners.commit(pending, document)
        from lbproxy.model.service import sharing

        self.tls.check(document)
        self.tls.commit(sharing(document))
        self.tls.start()
        for socks in self.listeners.handed.values():
            for sock in socks:
                sock.close()
        self.listeners.handed = {}
        self._relay_new()
        super().startService()
        for i in range(self.count):
            self._spawn(i)

    def adopt_workers(self, handover: Any) -> None:
        """
        Take the workers' sockets a takeover handed over (used at start
        instead of binding).
        """
        main = self.document.main()
        key = None
        if main is not None and main.listen:
            key = listen_key(main.listen[0], main.name)
        self.listeners.adopt(handover, key)

    def _close_sockets(self) -> None:
        self.listeners.close()

    def listening_fds(self) -> list[tuple[str, int]]:
        """
        The workers' listening sockets, to hand over (L{lbproxy.control.takeover}).
        """
        return self.listeners.listening_fds()

    def _spawn(self, index: int) -> None:
        if not self.running:
            return
        worker = Worker(self, index)
        worker.started = self.reactor.seconds()
        self.workers[index] = worker
        # A relay from now on: a removal waits for its first report.
        for balancer in self.table.all():
            balancer.take_report(worker, 0, {}, {})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = dict(os.environ)
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
            self.reactor.spawnProcess(
                worker, sys.executable,
                [sys.executable, "-m", "lbproxy.control.worker_main", str(CHANNEL_FD)],
                env=env, childFDs={0: "w", 1: 1, 2: 2, CHANNEL_FD: theirs.fileno()},
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
        Start the worker with its sockets, the document and the down
        backends of now.  The commands go at once: AMP keeps their order.
        """
        s = self.settings
        worker.call(Start, index=worker.index, report_interval=self.report_interval,
                    connect_timeout=s.connect_timeout, retries=s.retries,
                    idle_timeout=s.idle_timeout, max_connections=s.max_connections,
                    access_log=s.access_log, tcp_keepalive=list(s.tcp_keepalive or ()),
                    ).addErrback(self._failed, worker, "start")
        if self.access_log is not None:
            destination, kind = self.access_log
            worker.call(OpenAccessLog, destination=destination, format=kind).addErrback(
                self._failed, worker, "open the access log", stop=True)
        document = self.document
        self._apply(worker, document.version, json.dumps(document.to_json()))
        down = [{"service": name, "id": bid, "reason": state.reason}
                for name, b in self.table.balancers.items()
                for bid, state in b.pool.health.items() if not state.healthy]
        d = worker.call(Listen, backlog=self.backlog, engine=self.engine, down=down)
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
        drop_table_reports(self.table, worker)
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

    def status(self) -> dict[str, Any]:
        """
        For C{GET /api/v1/status}: each worker's pid, applied config
        version and last reported counts (also per service).
        """
        return {
            "workers": [w.view() if w is not None else None for w in self.workers],
            "worker_restarts": self.restarts,
            "listen_port": self.port,
            "worker_listeners": {key: where[1] for key in self.listeners.sockets
                                 if (where := self.listeners.address(key)) is not None},
        }
