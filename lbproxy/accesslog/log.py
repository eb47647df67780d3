"""
The access log: one line per finished client connection, at almost no
cost to the connection path.

The balancer's C{_finish} appends C{(time, *record)} (L{FIELDS}: a tuple
of primitives) to L{AccessLog.pending} (a plain list: one append per
connection, nothing else).  A timer on the
reactor swaps the list for an empty one every C{interval} seconds, formats
the batch into one string and hands it to a writer thread through a
bounded queue; the thread does the one C{write} (or one datagram a line
for syslog).  The reactor never waits for the disk: when the queue is full
(a disk or pipe that blocks) the batch is dropped and counted in
L{AccessLog.dropped}, and a log line says so.

Destinations (C{--access-log}): a file path (appended to; C{SIGUSR1}
reopens it, for logrotate's rename-then-signal), C{-} for stdout,
C{syslog} for the local syslog socket C{/dev/log} (a UNIX datagram socket,
facility local0; L{lbproxy.accesslog.sinks}), C{off}.  Formats
(C{--access-log-format}): C{json} (one object a line) or C{text}.

The operational log (twisted.logger) is separate and unchanged.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time as _time
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

FORMATS = ("json", "text")
#: Batches waiting for the writer before new ones are dropped.
QUEUE_BATCHES = 64
_REOPEN = object()


def parse_destination(value: str) -> str:
    """
    Check C{--access-log}: C{-}, C{off}, C{syslog}, C{syslog:PATH} or a
    file path.

    @raise ValueError: for an empty value.
    """
    if not value or not value.strip():
        raise ValueError("--access-log needs a file path, '-', 'syslog' or 'off'")
    return value


def parse_format(value: str) -> str:
    if value not in FORMATS:
        raise ValueError(f"--access-log-format must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


#: What the balancer appends per finished connection: C{(time, *record)},
#: a plain tuple of primitives (L{lbproxy.policy.pool.AccessRecord}'s
#: fields after the time).  The record itself is freed at once, and the
#: cyclic GC untracks a tuple of primitives, so a batch waiting for the
#: timer costs the collector nothing.
FIELDS = ("time", "client", "backend", "bytes_up", "bytes_down", "duration", "outcome", "tls_subject")


class _Quoted(dict):
    """
    JSON string literals of backend ids, outcomes and subjects, made once
    each (there are few distinct ones).  Bounded: it starts again past
    L{LIMIT} (backend ids that come and go).
    """

    LIMIT = 4096

    def __missing__(self, key: Any) -> str:
        if len(self) >= self.LIMIT:
            self.clear()
        value = self[key] = "null" if key is None else json.dumps(key, ensure_ascii=False)
        return value


class _Plain(dict):
    """
    Whether a value can stand between JSON quotes as it is (no quote,
    backslash or control character): backend ids and outcomes always can
    (the schema's id pattern), so the common line is one C{%} format with
    no JSON encoding at all.
    """

    LIMIT = 4096

    def __missing__(self, key: Any) -> bool:
        if len(self) >= self.LIMIT:
            self.clear()
        value = self[key] = isinstance(key, str) and json.dumps(key, ensure_ascii=False) == f'"{key}"'
        return value


def formatter(kind: str) -> Callable[[list], str]:
    """
    @return: C{format(batch) -> str} of a batch of L{FIELDS} tuples, every
        line ending in a newline.
    """
    quoted = _Quoted()
    if kind == "json":
        # The client is "host:port" of an IP address: nothing in it needs escaping.
        head = '{"time":%.3f,"client":"%s","backend":'
        tail = ',"bytes_up":%d,"bytes_down":%d,"duration":%.3f,"outcome":'
        # The common line: the whole tuple in one format (the subject, None, printed as "").
        plain_line = (head + '"%s"' + tail + '"%s"%.0s}\n').__mod__
        line = head + "%s" + tail + "%s}\n"
        # A TLS client's verified certificate subject, when it gave one.
        tls_line = line[:-2] + ',"tls_subject":%s}\n'
        plain = _Plain()

        def escaped(r: tuple) -> str:
            q = quoted
            if r[7] is None:
                return line % (r[0], r[1], q[r[2]], r[3], r[4], r[5], q[r[6]])
            return tls_line % (r[0], r[1], q[r[2]], r[3], r[4], r[5], q[r[6]], q[r[7]])

        def format_json(batch: list) -> str:
            ok, fast = plain, plain_line
            return "".join([fast(r) if r[7] is None and ok[r[2]] and ok[r[6]] else escaped(r) for r in batch])

        return format_json

    def format_text(batch: list) -> str:
        out = []
        for t, client, backend, up, down, duration, outcome, subject in batch:
            stamp = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
            out.append(f"{stamp} {client} -> {backend or '-'} up={up} down={down} "
                       f"duration={duration:.3f}s outcome={outcome}"
                       + (f" tls_subject={quoted[subject]}" if subject is not None else "") + "\n")
        return "".join(out)

    return format_text


class AccessLog(Service):
    """
    Batches access records from L{pending} to a sink on a writer thread.

    @ivar pending: the list the balancer appends L{FIELDS} tuples to.
    @ivar dropped: records dropped because the writer fell behind.
    @ivar written: records handed to the writer.
    """

    def __init__(self, sink: Any, kind: str = "json", clock: Any = None, interval: float = 0.2,
                 max_batches: int = QUEUE_BATCHES, signals: bool = True, reactor: Any = None,
                 threaded: bool = True) -> None:
        """
        @param clock: runs the batch timer.
        @param threaded: write on the writer thread; C{False}: on the
            reactor, in the timer (for C{bench/accesslog_cost.py}, which
            compares the two: a disk that blocks would block the reactor).
        @param reactor: has C{callFromThread} (the writer's errors and
            C{SIGUSR1} come back through it); by default C{clock}.
        @param signals: install the C{SIGUSR1} handler that reopens the sink.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.reactor = reactor if reactor is not None else clock
        self.sink = sink
        self.format = formatter(kind)
        self.clock = clock
        self.interval = interval
        self.pending: list = []
        self.dropped = 0
        self.written = 0
        self._signals = signals
        self._threaded = threaded
        self._failing = False
        self._queue: queue.Queue = queue.Queue(max_batches)
        self._loop: LoopingCall | None = None
        self._thread: threading.Thread | None = None
        self._previous_handler: Any = None
        self._warned = False
        # Events, not queue items, so that a full queue can never lose them.
        self._reopen = threading.Event()
        self._stop = threading.Event()

    def startService(self) -> None:
        super().startService()
        if self._threaded:
            self._thread = threading.Thread(target=self._write_loop, name="lbproxy-access-log", daemon=True)
            self._thread.start()
        self._loop = LoopingCall(self.flush)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)
        if self._signals:
            self._previous_handler = signal.signal(signal.SIGUSR1, self._on_signal)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.flush()
        if self._signals and self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
        self._stop.set()
        if self._threaded:
            self._put(_REOPEN)
        if self._thread is not None:
            # Shutdown only: a bounded wait for the last batches.
            self._thread.join(2.0)
        self.sink.close()
        return None

    def _on_signal(self, signum: int, frame: Any) -> None:
        # A signal handler must not do I/O itself: hand over to the reactor.
        self.reactor.callFromThread(self.reopen)

    def reopen(self) -> None:
        """
        Reopen the sink (after logrotate renamed the file): the writer does
        it between two batches, so no line goes to the old file after the
        reopen.
        """
        self.flush()
        if not self._threaded:
            self._wrote(self.sink.reopen)
            log.info("access log reopened ({pid})", pid=os.getpid())
            return
        self._reopen.set()
        self._put(_REOPEN)

    def flush(self) -> None:
        """
        Hand the pending records to the writer as one batch (on the
        reactor; never waits).
        """
        pending = self.pending
        if not pending:
            return
        # The balancer holds this very list: empty it, never replace it.
        batch = pending[:]
        pending.clear()
        self._batch_taken(batch)

    def _batch_taken(self, batch: list) -> None:
        try:
            text = self.format(batch)
        except Exception:
            log.failure("cannot format {n} access records", n=len(batch))
            return
        if not self._threaded:
            self.written += len(batch)
            self._wrote(self.sink.write, text)
            return
        if self._put(text):
            self.written += len(batch)
        else:
            self.dropped += len(batch)
            if not self._warned:
                self._warned = True
                log.warn("access log writer is behind (a slow disk or pipe): dropping "
                         "records rather than slowing the proxy; see the dropped count")

    def _wrote(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
            self._failing = False
        except Exception as e:
            if not self._failing:
                log.error("access log write failed: {error}", error=e)
            self._failing = True

    def _put(self, item: Any) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            return False

    def _write_loop(self) -> None:
        failing = False
        while True:
            try:
                item = self._queue.get(block=not self._stop.is_set())
            except queue.Empty:
                return
            try:
                if self._reopen.is_set():
                    self._reopen.clear()
                    self.sink.reopen()
                    self.reactor.callFromThread(log.info, "access log reopened ({pid})", pid=os.getpid())
                if item is not _REOPEN:
                    self.sink.write(item)
                failing = False
            except Exception as e:
                # Once per run of failures (a full disk fails every batch).
                if not failing:
                    self.reactor.callFromThread(log.error, "access log write failed: {error}", error=e)
                failing = True
            finally:
                self._queue.task_done()

    def drain(self, timeout: float = 5.0) -> bool:
        """
        Flush and wait until the writer has written everything (tests,
        shutdown; blocking).

        @return: whether it finished within C{timeout}.
        """
        self.flush()
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)


class ForwardReopen(Service):
    """
    With C{--workers N} the workers write the access log, each its own
    batches to the same destination; the parent only passes on logrotate's
    C{SIGUSR1}, so that every worker reopens the file.

    @param workers: has C{signal_workers(signum)}
        (L{lbproxy.control.workers.WorkerPool}).
    """

    def __init__(self, workers: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.workers = workers
        self.reactor = reactor
        self._previous_handler: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous_handler = signal.signal(signal.SIGUSR1, self._on_signal)

    def stopService(self) -> Any:
        super().stopService()
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._previous_handler = None
        return None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.workers.signal_workers, signal.SIGUSR1)

