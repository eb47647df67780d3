"""
One worker process of C{--workers}: a L{ServiceTable} (one balancer per
service of the document) and a L{ListenerManager} listening on every
listener of the document, driven by the parent over AMP
(L{lbproxy.control.worker_protocol}).

Run as C{python -m lbproxy.control.worker_main FD}: C{FD} is this end of
a Unix socketpair the parent made.  Nothing else comes on the command line;
the worker learns who it is, its listening sockets, its document and the
health of the backends through commands, in this order: L{Start},
L{Adopt} (one per listener), L{ApplyConfig}, L{Listen}; later an
L{Adopt} comes before the L{ApplyConfig} that first listens there.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from twisted.protocols import amp
from twisted.logger import Logger

from lbproxy.control.worker_protocol import (
    Adopt,
    ApplyConfig,
    BackendEvent,
    CloseBackend,
    ConfigRejected,
    Drain,
    Force,
    Health,
    Listen,
    NotReady,
    OpenAccessLog,
    Poll,
    Report,
    Start,
    report_of,
)

# Named: a worker runs as "python -m lbproxy.control.worker_main", where a
# plain Logger() would log as [__main__].
log = Logger(namespace="lbproxy.control.worker_main")


class WorkerChannel(amp.AMP):
    """
    The worker's end of the channel: answers the parent's commands and
    sends it reports.

    @ivar table: the worker's L{lbproxy.policy.services.ServiceTable}, made
        by the first L{ApplyConfig}.
    @ivar manager: its L{lbproxy.control.listeners.ListenerManager}, made
        by L{Listen}.
    @ivar handed: listening sockets adopted before the manager exists, by key.
    """

    def __init__(self, reactor: Any, factories: Any = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.factories = factories
        self.index: int | None = None
        self.settings: Any = None
        self.report_interval = 0.5
        self.table: Any = None
        self.manager: Any = None
        self.handed: dict[str, socket.socket] = {}
        self._drain: Any = None
        #: the L{lbproxy.accesslog.log.AccessLog} this worker writes, if any
        self.access: Any = None
        #: install the access log's signal handlers (not in unit tests)
        self.signals = True
        self._loop: Any = None
        self._soon: Any = None
        #: true while a parent's command runs: the events it causes are the
        #: parent's own, not news to send back.
        self._commanded = False

    @property
    def balancer(self) -> Any:
        """
        The main service's balancer (C{None} before the first config).
        """
        return self.table.main() if self.table is not None else None

    def _service(self, name: str) -> Any:
        if self.table is None:
            return None
        return self.table.balancer(name) or self.table.retiring.get(name)

    @Start.responder
    def start(self, index: int, report_interval: float, **settings: Any) -> dict:
        from lbproxy.model.config import ProxySettings

        self.index = index
        self.report_interval = report_interval
        keepalive = settings.pop("tcp_keepalive", None)
        self.settings = ProxySettings(**settings, tcp_keepalive=tuple(keepalive) if keepalive else None)
        return {"pid": os.getpid()}

    @OpenAccessLog.responder
    def open_access_log(self, destination: str, format: str) -> dict:
        """
        Write the access log as the parent would have: the same sink (a
        file appended to in whole-line batches, the inherited stdout, or
        syslog), reopened on the C{SIGUSR1} the parent forwards.  A worker
        stopped with C{SIGTERM} writes its last batch before it exits.
        """
        import signal

        from lbproxy.accesslog.log import AccessLog, parse_format
        from lbproxy.accesslog.sinks import open_sink

        if self.access is not None:
            return {}
        try:
            kind = parse_format(format)
            sink = open_sink(destination)  # at start: a local open or connect
        except (OSError, ValueError) as e:
            raise ConfigRejected(f"--access-log {destination}: {e}") from None
        if sink is None:
            return {}
        access = AccessLog(sink, kind, clock=self.reactor, signals=self.signals)
        access.startService()
        self.access = access
        if self.table is not None:
            self.table.log_access_to(access.pending)
        self.reactor.addSystemEventTrigger("before", "shutdown", access.stopService)
        if self.signals:
            signal.signal(signal.SIGTERM, lambda *_: self.reactor.callFromThread(self._exit))
        return {}

    @Adopt.responder
    def adopt(self, key: str, fd: int) -> dict:
        sock = socket.socket(fileno=fd)
        handed = self.manager.handed if self.manager is not None else self.handed
        old = handed.pop(key, None)
        if old is not None:
            old.close()
        handed[key] = sock
        return {}

    @ApplyConfig.responder
    def apply_config(self, version: int, document: str) -> dict:
        from lbproxy.listening.listener_services import ListenError
        from lbproxy.model.errors import ConfigError
        from lbproxy.model.service import parse_document

        if self.settings is None:
            raise NotReady("ApplyConfig before Start")
        try:
            new = parse_document(json.loads(document), "config")
            if new.version != version:
                raise ConfigError(f"the document is version {new.version}, not {version}")
            if self.table is None:
                self._build(new)
            elif new.version > self.table.document.version:
                strategies = self.table.check(new)
                manager = self.manager
                pending = manager.prepare(new) if manager is not None and manager.running else None
                self._commanded = True
                try:
                    self.table.apply(new, strategies)
                    if pending is not None:
                        manager.commit(pending, new)
                finally:
                    self._commanded = False
        except (ValueError, ConfigError, ListenError) as e:
            log.error("worker {index}: cannot apply config version {version}: {e}",
                      index=self.index, version=version, e=e)
            raise ConfigRejected(str(e)) from None
        return {"applied": self.table.document.version}

    def _build(self, document: Any) -> None:
        from lbproxy.policy.plugins import strategy_factories
        from lbproxy.policy.services import ServiceTable

        if self.factories is None:
            self.factories = strategy_factories()
        table = ServiceTable(document, self.factories, self.settings, reactor=self.reactor)
        table.check(document)
        self.table = table
        if self.access is not None:
            table.log_access_to(self.access.pending)
        table.events.subscribe(self._event)

    @Listen.responder
    def listen(self, backlog: int, engine: str, down: list) -> dict:
        from lbproxy.control.listeners import ListenerManager
        from lbproxy.listening.listener_services import ListenError

        table = self.table
        if table is None:
            raise NotReady("Listen before ApplyConfig")
        now = self.reactor.seconds()
        for item in down:
            b = table.balancer(item["service"])
            state = b.pool.health.get(item["id"]) if b is not None else None
            if state is not None:
                state.healthy, state.reason, state.since = False, item["reason"], now
        for b in table.balancers.values():
            b.pool.refresh(now)
        # A listener the parent passed no socket for is bound here, with
        # SO_REUSEPORT beside the other workers'.
        manager = ListenerManager(table, engine, backlog, reuse_port=True, reactor=self.reactor,
                                  settings=self.settings)
        manager.handed.update(self.handed)
        self.handed = {}
        try:
            manager.start(table.document)
        except ListenError as e:
            manager.stop()
            raise ConfigRejected(str(e)) from None
        self.manager = manager
        # Each worker reads its certificates again when their files change.
        manager.tls.start()
        table.start()
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self.report)
        self._loop.clock = self.reactor
        self._loop.start(self.report_interval, now=False)
        log.info("worker {index} relaying on {where}", index=self.index,
                 where=", ".join(f"{h}:{p}" for h, p in filter(None, map(manager.address, manager.listeners))))
        return {"listening": list(manager.listeners)}

    @Health.responder
    def health(self, service: str, backend: str, ok: bool, reason: str) -> dict:
        if self.table is None:
            raise NotReady("Health before ApplyConfig")
        b = self._service(service)
        if b is None:
            return {}
        self._commanded = True
        try:
            b.health_result(backend, ok, reason)
        finally:
            self._commanded = False
        return {}

    @CloseBackend.responder
    def close_backend(self, service: str, backend: str, why: str) -> dict:
        b = self._service(service)
        if b is None:
            return {"closed": 0}
        self._commanded = True
        try:
            closed = b.close_connections(backend, why)
        finally:
            self._commanded = False
        return {"closed": closed}

    @Drain.responder
    def drain(self, grace: float, spread: float) -> Any:
        from lbproxy.control.lifecycle import LocalDrain

        table = self.table
        if table is None:
            raise NotReady("Drain before ApplyConfig")
        if self._drain is None:
            def connections() -> list[Any]:
                return [c for b in table.all() for group in tuple(b.connections.values()) for c in tuple(group)]

            def is_open(conn: Any) -> bool:
                return any(conn in group for b in table.all() for group in b.connections.values())

            self._drain = LocalDrain(self.reactor, self._stop_accepting, connections,
                                     lambda: sum(b.totals.active for b in table.all()), is_open=is_open)
        d = self._drain.drain(grace, spread)

        def answer(result: tuple) -> dict:
            finished, cut = result
            log.info("worker {index}: drained ({finished} finished, {cut} cut)",
                     index=self.index, finished=finished, cut=cut)
            # The answer goes out first, then the worker exits.
            self.reactor.callLater(0.05, self._exit)
            return {"finished": finished, "cut": cut}

        return d.addCallback(answer)

    @Force.responder
    def force(self) -> dict:
        if self._drain is not None:
            self._drain.force()
        return {}

    def _stop_accepting(self) -> None:
        if self.manager is not None:
            for listener in tuple(self.manager.listeners.values()):
                listener.stop_accepting()

    def _exit(self) -> None:
        if getattr(self.reactor, "running", False):
            self.reactor.stop()

    @Poll.responder
    def poll(self) -> dict:
        if self.table is None:
            raise NotReady("Poll before ApplyConfig")
        return report_of(self.table)

    def report(self) -> None:
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        if self.table is not None and self.transport is not None:
            self.callRemote(Report, **report_of(self.table))

    def _event(self, event: Any) -> None:
        if event.type not in ("backend", "service"):
            return
        # A drain, a removal or a service's retirement may have finished:
        # tell the parent soon, not at the next tick.
        if self._soon is None and self._loop is not None:
            self._soon = self.reactor.callLater(0, self.report)
        data = event.data
        if event.type == "backend" and not self._commanded and data["state"] in ("up", "down"):
            self.callRemote(
                BackendEvent, service=data.get("service", ""), backend=data["id"], state=data["state"],
                reason=data["reason"], time=data["time"], ejected_until=data.get("ejected_until"),
            )

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        # The parent is gone: so is the reason to run.
        if getattr(self.reactor, "running", False):
            self.reactor.stop()


def main(fd: int) -> None:
    """
    Run one worker on the channel at file descriptor C{fd}.
    """
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    channel = WorkerChannel(reactor)
    reactor.adoptStreamConnection(fd, socket.AF_UNIX, Factory.forProtocol(lambda: channel))
    os.close(fd)  # the reactor holds its own duplicate
    # The parent stops its workers (Drain over AMP): a terminal's Ctrl-C
    # reaches the whole process group and must not cut their connections.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main(int(sys.argv[1]))
