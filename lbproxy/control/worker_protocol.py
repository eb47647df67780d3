"""
The AMP commands between the parent of C{--workers} and its worker
processes (L{lbproxy.control.workers}, L{lbproxy.control.worker_main}).

Parent to worker, each answered:

 - L{Start}: who the worker is and how it relays (index, proxy settings).
 - L{Adopt}: one listening socket of the worker's slot, by listener key
   (L{lbproxy.model.service.listen_key}), passed as a file descriptor over
   the Unix socket (L{amp.Descriptor}, C{SCM_RIGHTS}); sent before the
   L{ApplyConfig} whose document first listens there.
 - L{ApplyConfig}: the whole document (every service) at start and at
   every change, answered with the version the worker now has in force
   (or L{ConfigRejected}).
 - L{Listen}: start relaying on every listener of the document; carries
   the backends the parent's checks hold down at that moment.
 - L{Health}: one active check result of one service (checks run once,
   in the parent).
 - L{CloseBackend}: a forced close in one service, answered with how many
   connections the worker closed.
 - L{Poll}: a fresh L{Report} now, as the answer.
 - L{Drain}: a graceful stop, answered with how many connections finished
   and how many were cut; L{Force} cuts the rest at once.

Worker to parent, unanswered: L{Report} (per service: counters, open
connections per backend, traffic control's refusals, queue and client
table, the routing batch for the UI; every
C{report_interval} and soon after a backend event) and L{BackendEvent} (passive ejections the worker
raised on its own traffic).  Nothing is sent per connection.

An AMP value holds at most 64 KiB; L{Chunked} spreads a larger one (the
config document, the counters of a large pool) over several.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.protocols import amp
from twisted.python.compat import nativeString

from lbproxy.policy.balancer import Totals

_CHUNK = amp.MAX_VALUE_LENGTH


class Chunked(amp.Argument):
    """
    Another argument's encoding split over the keys C{name}, C{name.2},
    C{name.3}, ... so that it may exceed one AMP value.
    """

    def __init__(self, inner: amp.Argument, optional: bool = False) -> None:
        super().__init__(optional)
        self.inner = inner

    def toBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        value = objects.pop(nativeString(name), None)
        if value is None:
            if not self.optional:
                raise KeyError(name)
            return
        data = self.inner.toStringProto(value, proto)
        strings[name] = data[:_CHUNK]
        for i, start in enumerate(range(_CHUNK, len(data), _CHUNK), 2):
            strings[b"%s.%d" % (name, i)] = data[start:start + _CHUNK]

    def fromBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        first = strings.pop(name, None)
        key = nativeString(name)
        if first is None:
            if not self.optional:
                raise KeyError(name)
            objects[key] = None
            return
        parts = [first]
        i = 2
        while (more := strings.pop(b"%s.%d" % (name, i), None)) is not None:
            parts.append(more)
            i += 1
        objects[key] = self.inner.fromStringProto(b"".join(parts), proto)


class ConfigRejected(Exception):
    """
    The worker could not apply a config document (the message says why).
    """


class NotReady(Exception):
    """
    A command came before the worker had what it needs (Start, a config).
    """


_ERRORS = {ConfigRejected: b"CONFIG_REJECTED", NotReady: b"NOT_READY"}


class Start(amp.Command):
    arguments = [
        (b"index", amp.Integer()),
        (b"report_interval", amp.Float()),
        # lbproxy.model.config.ProxySettings, field by field (a test checks
        # that none is missing).
        (b"connect_timeout", amp.Float()),
        (b"retries", amp.Integer()),
        (b"idle_timeout", amp.Float()),
        (b"max_connections", amp.Integer()),
        (b"access_log", amp.Boolean()),
        # IDLE, INTERVAL, COUNT; empty for off.
        (b"tcp_keepalive", amp.ListOf(amp.Integer())),
    ]
    response = [(b"pid", amp.Integer())]


class OpenAccessLog(amp.Command):
    """
    Write the access log as the parent would (L{lbproxy.accesslog}): the
    same destination and format, batched; sent after L{Start}.  The parent
    sends a worker C{SIGUSR1} to reopen it.
    """

    arguments = [(b"destination", amp.Unicode()), (b"format", amp.Unicode())]
    response: list = []
    errors = _ERRORS


class ApplyConfig(amp.Command):
    arguments = [(b"version", amp.Integer()), (b"document", Chunked(amp.Unicode()))]
    response = [(b"applied", amp.Integer())]
    errors = _ERRORS


class Adopt(amp.Command):
    """
    A listening socket of this worker's slot for the listener C{key}; the
    worker listens on it (instead of binding) once a document names it.
    """

    arguments = [(b"key", amp.Unicode()), (b"fd", amp.Descriptor())]
    response: list = []
    errors = _ERRORS


class Listen(amp.Command):
    arguments = [
        (b"backlog", amp.Integer()),
        (b"engine", amp.Unicode()),
        (b"down", Chunked(amp.AmpList(
            [(b"service", amp.Unicode()), (b"id", amp.Unicode()), (b"reason", amp.Unicode())]
        ))),
    ]
    response = [(b"listening", amp.ListOf(amp.Unicode()))]
    errors = _ERRORS


class Health(amp.Command):
    arguments = [(b"service", amp.Unicode()), (b"backend", amp.Unicode()), (b"ok", amp.Boolean()),
                 (b"reason", amp.Unicode())]
    response: list = []
    errors = _ERRORS


class CloseBackend(amp.Command):
    arguments = [(b"service", amp.Unicode()), (b"backend", amp.Unicode()), (b"why", amp.Unicode())]
    response = [(b"closed", amp.Integer())]
    errors = _ERRORS


class Drain(amp.Command):
    """
    Stop accepting and drain (L{lbproxy.control.lifecycle.LocalDrain});
    answered once no connection is left, then the worker exits.
    """

    arguments = [(b"grace", amp.Float()), (b"spread", amp.Float())]
    response = [(b"finished", amp.Integer()), (b"cut", amp.Integer())]
    errors = _ERRORS


class Force(amp.Command):
    """
    While draining: reset every connection now.
    """

    arguments: list = []
    response: list = []
    errors = _ERRORS


#: Per-backend counters a worker reports (cumulative, except C{active}).
BACKEND_COUNTERS = ("active", "total", "failures", "bytes_up", "bytes_down")
#: Listener counters a worker reports: all of L{Totals}.
TOTAL_COUNTERS = Totals.__slots__

#: A report: the document version in force and, per service, its
#: counters (JSON: sent twice a second, not per connection).
REPORT = [
    (b"version", amp.Integer()),
    (b"services", Chunked(amp.Unicode())),
]


class Report(amp.Command):
    arguments = REPORT
    requiresAnswer = False


class Poll(amp.Command):
    arguments: list = []
    response = REPORT
    errors = _ERRORS


class BackendEvent(amp.Command):
    arguments = [
        (b"service", amp.Unicode()),
        (b"backend", amp.Unicode()),
        (b"state", amp.Unicode()),
        (b"reason", amp.Unicode()),
        (b"time", amp.Float()),
        (b"ejected_until", amp.Float(optional=True)),
    ]
    requiresAnswer = False


def service_report(balancer: Any) -> dict[str, Any]:
    """
    What one service's balancer reports: its counters (bytes include the
    connections in flight), its traffic control's counters
    (L{lbproxy.policy.limits.Traffic.report}) and its routing batch since
    the last report.
    """
    totals = balancer.totals.to_json()
    for group in balancer.connections.values():
        for conn in group:
            totals["bytes_up"] += conn.bytes_up
            totals["bytes_down"] += conn.bytes_down
    backends = []
    for bid, stats in balancer.pool.stats.items():
        up, down = balancer.bytes_of(bid)
        backends.append({"id": bid, "active": stats.active, "total": stats.total,
                         "failures": stats.failures, "bytes_up": up, "bytes_down": down})
    batch = balancer.routes.drain() or {"total": 0, "counts": {}, "sample": ()}
    return {
        "totals": totals, "backends": backends, "traffic": balancer.traffic_state.report(),
        "route_total": batch["total"],
        "route_counts": [{"id": bid, "n": n} for bid, n in batch["counts"].items()],
        "route_sample": list(batch["sample"]),
    }


def report_of(table: Any) -> dict[str, Any]:
    """
    What a worker reports: every service of its L{ServiceTable} (those
    retiring too, under their name, unless a namesake is current).
    """
    services: dict[str, Any] = {}
    for name, balancer in (*table.retiring.items(), *table.balancers.items()):
        services[name] = service_report(balancer)
    return {"version": table.document.version, "services": json.dumps(services)}


def parse_report(fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """
    The version and the per-service reports of a L{Report}'s fields.
    """
    return fields["version"], json.loads(fields["services"])


def merge_routes(recorder: Any, report: dict[str, Any]) -> None:
    """
    Fold a worker's routing batch into the parent's recorder: the samples
    go into its ring, the decisions that were not sampled into its counts.
    """
    sample = report["route_sample"]
    for s in sample:
        recorder.record(s["time"], s["client"], s["backend"])
    extra = report["route_total"] - len(sample)
    if extra:
        counts = recorder._counts
        sampled: dict[str, int] = {}
        for s in sample:
            sampled[s["backend"]] = sampled.get(s["backend"], 0) + 1
        for item in report["route_counts"]:
            bid = item["id"]
            counts[bid] = counts.get(bid, 0) + item["n"] - sampled.get(bid, 0)
        recorder._total += extra
