"""
The AMP commands between the parent of C{--workers} and its worker
processes (L{lbproxy.control.workers}, L{lbproxy.control.worker_main}).

Parent to worker, each answered:

 - L{Start}: who the worker is and how it relays (index, proxy settings).
 - L{ApplyConfig}: the initial config and every change, answered with the
   version the worker now has in force (or L{ConfigRejected}).
 - L{Listen}: bind the shared port and start relaying; carries the
   backends the parent's checks hold down at that moment.
 - L{Health}: one active check result (checks run once, in the parent).
 - L{CloseBackend}: a forced close, answered with how many connections the
   worker closed.
 - L{Poll}: a fresh L{Report} now, as the answer.
 - L{Drain}: a graceful stop, answered with how many connections finished
   and how many were cut; L{Force} cuts the rest at once.

Worker to parent, unanswered: L{Report} (counters, open connections per
backend, the routing batch for the UI; every C{report_interval} and soon
after a backend event) and L{BackendEvent} (passive ejections the worker
raised on its own traffic).  Nothing is sent per connection.

An AMP value holds at most 64 KiB; L{Chunked} spreads a larger one (the
config document, the counters of a large pool) over several.
"""

from __future__ import annotations

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


class ApplyConfig(amp.Command):
    arguments = [(b"version", amp.Integer()), (b"document", Chunked(amp.Unicode()))]
    response = [(b"applied", amp.Integer())]
    errors = _ERRORS


class Listen(amp.Command):
    arguments = [
        (b"host", amp.Unicode()),
        (b"port", amp.Integer()),
        (b"backlog", amp.Integer()),
        (b"engine", amp.Unicode()),
        (b"down", Chunked(amp.AmpList([(b"id", amp.Unicode()), (b"reason", amp.Unicode())]))),
        # The listening socket the parent gave the worker, else it binds one.
        (b"fd", amp.Integer(optional=True)),
    ]
    response = [(b"port", amp.Integer())]
    errors = _ERRORS


class Health(amp.Command):
    arguments = [(b"backend", amp.Unicode()), (b"ok", amp.Boolean()), (b"reason", amp.Unicode())]
    response: list = []
    errors = _ERRORS


class CloseBackend(amp.Command):
    arguments = [(b"backend", amp.Unicode()), (b"why", amp.Unicode())]
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

REPORT = [
    (b"version", amp.Integer()),
    *[(name.encode(), amp.Integer()) for name in TOTAL_COUNTERS],
    (b"backends", Chunked(amp.AmpList(
        [(b"id", amp.Unicode())] + [(name.encode(), amp.Integer()) for name in BACKEND_COUNTERS]
    ))),
    (b"route_total", amp.Integer()),
    (b"route_counts", Chunked(amp.AmpList([(b"id", amp.Unicode()), (b"n", amp.Integer())]))),
    (b"route_sample", Chunked(amp.AmpList(
        [(b"time", amp.Float()), (b"client", amp.Unicode()), (b"backend", amp.Unicode())]
    ))),
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
        (b"backend", amp.Unicode()),
        (b"state", amp.Unicode()),
        (b"reason", amp.Unicode()),
        (b"time", amp.Float()),
        (b"ejected_until", amp.Float(optional=True)),
    ]
    requiresAnswer = False


def report_of(balancer: Any) -> dict[str, Any]:
    """
    What a worker's balancer reports: its counters (bytes include the
    connections in flight) and its routing batch since the last report.
    """
    report: dict[str, Any] = {"version": balancer.config.version}
    report.update(balancer.totals.to_json())
    for group in balancer.connections.values():
        for conn in group:
            report["bytes_up"] += conn.bytes_up
            report["bytes_down"] += conn.bytes_down
    backends = []
    for bid, stats in balancer.pool.stats.items():
        up, down = balancer.bytes_of(bid)
        backends.append({"id": bid, "active": stats.active, "total": stats.total,
                         "failures": stats.failures, "bytes_up": up, "bytes_down": down})
    report["backends"] = backends
    batch = balancer.routes.drain() or {"total": 0, "counts": {}, "sample": ()}
    report["route_total"] = batch["total"]
    report["route_counts"] = [{"id": bid, "n": n} for bid, n in batch["counts"].items()]
    report["route_sample"] = list(batch["sample"])
    return report


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
