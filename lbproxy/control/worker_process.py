"""
One worker process as the parent of C{--workers} sees it (L{Worker}), and
the parent's end of its AMP channel, which takes its reports and events.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp

from lbproxy.control.worker_protocol import BackendEvent, Report

log = Logger()


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
    def backend_event(self, service: str, backend: str, state: str, reason: str, time: float,
                      ejected_until: float | None) -> dict:
        data: dict[str, Any] = {"service": service, "id": backend, "state": state, "reason": reason,
                                "time": time, "worker": self.worker.index}
        if ejected_until is not None:
            data["ejected_until"] = ejected_until
        self.worker.pool.table.events.publish("backend", data)
        return {}


class Worker(ProcessProtocol):
    """
    One worker process, as the parent sees it.

    @ivar applied: the config version the worker last acknowledged.
    @ivar apply_error: why the last L{ApplyConfig} failed, or C{None}.
    @ivar report: the worker's last report (totals by name, summed over
        its services), or C{None}.
    @ivar services: its last report's totals per service.
    @ivar keys: the listeners whose sockets it was given.
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
        self.services: dict[str, dict[str, int]] = {}
        self.keys: set[str] = set()
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
            "services": {name: {"active": t.get("active", 0), "accepted": t.get("accepted", 0),
                                "refused": t.get("refused", 0)}
                         for name, t in self.services.items()},
            "reported": self.reported_at,
        }
