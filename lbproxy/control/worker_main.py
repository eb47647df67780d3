"""
One worker process of C{--workers}: a balancer and a relay engine on a
C{SO_REUSEPORT} listener of its own, driven by the parent over AMP
(L{lbproxy.control.worker_protocol}).

Run as C{python -m lbproxy.control.worker_main FD}: C{FD} is this end of
a Unix socketpair the parent made.  Nothing else comes on the command line;
the worker learns who it is, its config and the health of the backends
through commands, in this order: L{Start}, L{ApplyConfig}, L{Listen}.
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
    ApplyConfig,
    BackendEvent,
    CloseBackend,
    ConfigRejected,
    Drain,
    Force,
    Health,
    Listen,
    NotReady,
    Poll,
    Report,
    Start,
    report_of,
)

log = Logger()


class WorkerChannel(amp.AMP):
    """
    The worker's end of the channel: answers the parent's commands and
    sends it reports.

    @ivar balancer: the worker's L{lbproxy.policy.balancer.Balancer}, made
        by the first L{ApplyConfig}.
    """

    def __init__(self, reactor: Any, factories: Any = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.factories = factories
        self.index: int | None = None
        self.settings: Any = None
        self.report_interval = 0.5
        self.balancer: Any = None
        self.relay: Any = None
        self.port: Any = None
        self._drain: Any = None
        self._loop: Any = None
        self._soon: Any = None
        #: true while a parent's command runs: the events it causes are the
        #: parent's own, not news to send back.
        self._commanded = False

    @Start.responder
    def start(self, index: int, report_interval: float, **settings: Any) -> dict:
        from lbproxy.model.config import ProxySettings

        self.index = index
        self.report_interval = report_interval
        keepalive = settings.pop("tcp_keepalive", None)
        self.settings = ProxySettings(**settings, tcp_keepalive=tuple(keepalive) if keepalive else None)
        return {"pid": os.getpid()}

    @ApplyConfig.responder
    def apply_config(self, version: int, document: str) -> dict:
        from lbproxy.model.config import ConfigError, parse_config

        if self.settings is None:
            raise NotReady("ApplyConfig before Start")
        try:
            config = parse_config(json.loads(document), "config")
            if config.version != version:
                raise ConfigError(f"the document is version {config.version}, not {version}")
            if self.balancer is None:
                self._build(config)
            elif config.version > self.balancer.config.version:
                self._commanded = True
                try:
                    self.balancer.apply(config)
                finally:
                    self._commanded = False
        except (ValueError, ConfigError) as e:
            log.error("worker {index}: cannot apply config version {version}: {e}",
                      index=self.index, version=version, e=e)
            raise ConfigRejected(str(e)) from None
        return {"applied": self.balancer.config.version}

    def _build(self, config: Any) -> None:
        from lbproxy.policy.balancer import Balancer
        from lbproxy.policy.plugins import strategy_factories

        if self.factories is None:
            self.factories = strategy_factories()
        self.balancer = Balancer(config, self.factories, self.settings, reactor=self.reactor)
        self.balancer.events.subscribe(self._event)

    @Listen.responder
    def listen(self, host: str, port: int, backlog: int, engine: str, down: list, fd: int | None = None) -> dict:
        from lbproxy.relay.fast_engine import listening_socket

        b = self.balancer
        if b is None:
            raise NotReady("Listen before ApplyConfig")
        now = self.reactor.seconds()
        for item in down:
            state = b.pool.health.get(item["id"])
            if state is not None:
                state.healthy, state.reason, state.since = False, item["reason"], now
        b.pool.refresh(now)
        if fd is not None:
            sock = socket.socket(fileno=fd)
        else:
            sock = listening_socket(host, port, backlog, reuse_port=True)
        bound = sock.getsockname()[1]
        if engine == "fast":
            from lbproxy.relay.fast_engine import FastRelay

            self.relay = FastRelay(b, sock, self.reactor)
            self.relay.start()
        else:
            from lbproxy.relay.twisted_engine import ProxyFactory

            sock.setblocking(False)
            self.port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, ProxyFactory(b, self.reactor))
            sock.close()
        b.start()
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self.report)
        self._loop.clock = self.reactor
        self._loop.start(self.report_interval, now=False)
        log.info("worker {index} relaying on port {port}", index=self.index, port=bound)
        return {"port": bound}

    @Health.responder
    def health(self, backend: str, ok: bool, reason: str) -> dict:
        if self.balancer is None:
            raise NotReady("Health before ApplyConfig")
        self._commanded = True
        try:
            self.balancer.health_result(backend, ok, reason)
        finally:
            self._commanded = False
        return {}

    @CloseBackend.responder
    def close_backend(self, backend: str, why: str) -> dict:
        if self.balancer is None:
            return {"closed": 0}
        self._commanded = True
        try:
            closed = self.balancer.close_connections(backend, why)
        finally:
            self._commanded = False
        return {"closed": closed}

    @Drain.responder
    def drain(self, grace: float, spread: float) -> Any:
        from lbproxy.control.lifecycle import LocalDrain

        if self.balancer is None:
            raise NotReady("Drain before ApplyConfig")
        if self._drain is None:
            self._drain = LocalDrain.of_balancer(self.reactor, self._stop_accepting, self.balancer)
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
        if self.relay is not None:
            self.relay.stop_listening()
        if self.port is not None:
            port, self.port = self.port, None
            port.stopListening()

    def _exit(self) -> None:
        if getattr(self.reactor, "running", False):
            self.reactor.stop()

    @Poll.responder
    def poll(self) -> dict:
        if self.balancer is None:
            raise NotReady("Poll before ApplyConfig")
        return report_of(self.balancer)

    def report(self) -> None:
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        if self.balancer is not None and self.transport is not None:
            self.callRemote(Report, **report_of(self.balancer))

    def _event(self, event: Any) -> None:
        if event.type != "backend":
            return
        # A drain or removal may have finished: tell the parent soon, not
        # at the next tick.
        if self._soon is None and self._loop is not None:
            self._soon = self.reactor.callLater(0, self.report)
        data = event.data
        if not self._commanded and data["state"] in ("up", "down"):
            self.callRemote(
                BackendEvent, backend=data["id"], state=data["state"], reason=data["reason"],
                time=data["time"], ejected_until=data.get("ejected_until"),
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
