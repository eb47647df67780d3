"""
What goes over the channels of C{--workers} once a worker is started: the
parent's documents, health results and closes to every worker, and each
worker's reports back into the parent's balancers.

L{WorkerExchange} is a part of L{lbproxy.control.workers.WorkerPool}
(which starts, restarts and stops the processes); it works on the pool's
C{table}, C{workers}, C{listeners}, C{reactor} and C{_unfollow}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from lbproxy.control.worker_process import Worker
from lbproxy.control.worker_protocol import (
    BACKEND_COUNTERS,
    TOTAL_COUNTERS,
    Adopt,
    ApplyConfig,
    CloseBackend,
    Health,
    Poll,
    merge_routes,
    parse_report,
)
from lbproxy.model.service import as_document
from lbproxy.policy.relayed import relay_table, take_table_report

log = Logger()


class WorkerExchange:
    """
    The pool's messages after a worker's start (parent to workers: the
    document in force, health, closes, polls; workers to parent: reports).
    """

    def _relay_new(self) -> None:
        """
        Relay and follow every balancer of the table not yet relayed (at
        the start, and for the services a change adds).
        """
        for name in relay_table(self.table, self, self._live()):
            balancer = self.table.balancer(name)
            self._unfollow[name] = balancer.follow(lambda kind, args, n=name: self._follow(n, kind, args))


    # Parent to workers ------------------------------------------------------------

    def applied(self, old: Any, new: Any) -> None:
        """
        L{IConfigObserver}: send the document now in force to every worker
        (after the sockets of the listeners it adds); the services it adds
        are relayed by the workers from now on.
        """
        self._relay_new()
        for name in tuple(self._unfollow):
            if self.table.balancer(name) is None:
                self._unfollow.pop(name)()
        self._applied = as_document(new)
        document = self._effective(new)
        text = json.dumps(document.to_json())
        for worker in self._live():
            self._apply(worker, document.version, text)

    def _apply(self, worker: Worker, version: int, document: str) -> None:
        self._adopt(worker)

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

    def _adopt(self, worker: Worker) -> None:
        """
        Pass the worker its slot's socket of every listener it lacks.
        """
        for key, socks in self.listeners.sockets.items():
            if key not in worker.keys and worker.index < len(socks):
                worker.keys.add(key)
                worker.call(Adopt, key=key, fd=socks[worker.index].fileno()).addErrback(
                    self._failed, worker, f"take its socket for {key}")
        worker.keys &= set(self.listeners.sockets)

    def _follow(self, service: str, kind: str, args: tuple) -> None:
        # Forced closes are asked through close() (whose answer counts
        # them), and each worker runs its own drain timers: only the
        # parent's health results need repeating, and the closes of a
        # service removed with force (its balancer here retires with force
        # before the workers are sent the document without it).
        if kind == "health":
            backend, ok, reason = args
            for worker in self._live():
                worker.call(Health, service=service, backend=backend, ok=ok, reason=reason).addErrback(
                    self._failed, worker, f"take a health result for {service}/{backend}")
        elif kind == "close" and args[1] == "service-removed":
            backend, why = args
            for worker in self._live():
                worker.call(CloseBackend, service=service, backend=backend, why=why).addErrback(
                    self._failed, worker, f"close {service}/{backend}")

    def refresh(self) -> defer.Deferred:
        """
        Ask every worker for a fresh report (for the balancers).

        @return: a Deferred that fires once all have answered or failed.
        """
        polls = []
        for worker in self._live():
            d = worker.call(Poll)
            d.addCallback(lambda fields, w=worker: self.reported(w, fields))
            d.addErrback(self._failed, worker, "report")
            polls.append(d)
        return defer.gatherResults(polls).addCallback(lambda _: None)

    def close(self, backend_id: str, why: str, service: str | None = None) -> defer.Deferred:
        """
        Close every worker's connections to a backend of a service (the
        main one if not named).

        @return: a Deferred firing with how many they closed (a worker that
            is gone closed none).
        """
        if service is None:
            service = self.balancer.config.name
        closes = []
        for worker in self._live():
            d = worker.call(CloseBackend, service=service, backend=backend_id, why=why)
            d.addCallback(lambda answer: answer["closed"])
            d.addErrback(lambda f, w=worker: self._failed(f, w, f"close {backend_id}") or 0)
            closes.append(d)
        return defer.gatherResults(closes).addCallback(sum)

    # Workers to parent --------------------------------------------------------------

    def reported(self, worker: Worker, fields: dict[str, Any]) -> None:
        """
        Take one worker's report: each service's counters into its
        balancer, its routing decisions into its recorder (for the UI's feed).
        """
        if worker.gone:
            return
        version, services = parse_report(fields)
        parts: dict[str, tuple[dict[str, int], dict[str, dict[str, int]], Any]] = {}
        summed = dict.fromkeys(TOTAL_COUNTERS, 0)
        worker.services = {}
        for name, part in services.items():
            totals = {n: part["totals"][n] for n in TOTAL_COUNTERS}
            backends = {b["id"]: {n: b[n] for n in BACKEND_COUNTERS} for b in part["backends"]}
            parts[name] = (totals, backends, part.get("traffic"))
            refused = sum(((part.get("traffic") or {}).get("refused") or {}).values())
            worker.services[name] = dict(totals, refused=refused)
            for n, v in totals.items():
                summed[n] += v
        worker.report = summed
        worker.reported_at = self.reactor.seconds()
        take_table_report(self.table, worker, version, parts)
        for name, part in services.items():
            balancer = self.table.balancer(name)
            if balancer is not None and part["route_total"]:
                merge_routes(balancer.routes, part)
