"""
Unit tests of L{lbproxy.accesslog}: the line formats, the batch on the
reactor, the writer thread that never makes the reactor wait, the file
sink's reopen and the syslog sink on a test-bound datagram socket.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading

import pytest
from twisted.internet.task import Clock

from lbproxy.accesslog.log import AccessLog, formatter, parse_format
from lbproxy.accesslog.sinks import FileSink, SyslogSink, open_sink
from lbproxy.model.config import Backend, Config
from lbproxy.policy.balancer import Balancer
from lbproxy.policy.pool import AccessRecord

REC = AccessRecord("127.0.0.1:5000", "b\"1", 10, 20, 0.5, "ok")
NONE = AccessRecord("127.0.0.1:5001", None, 0, 0, 0.001, "no-backend")
PLAIN = AccessRecord("127.0.0.1:5002", "b1", 7, 8, 0.25, "ok")


def at(t, record):
    """A pending entry as the balancer appends it: the time, then the record's fields."""
    return (t, *record)


class ListSink:
    """Collects what the writer thread writes; C{gate} holds it back."""

    def __init__(self):
        self.writes = []
        self.reopened = 0
        self.gate = threading.Event()
        self.gate.set()
        self.wrote = threading.Event()

    def write(self, text):
        self.gate.wait(10)
        self.writes.append(text)
        self.wrote.set()

    def reopen(self):
        self.reopened += 1

    def close(self):
        pass


def test_json_lines_parse_and_escape():
    """Each record is one JSON object a line; strings are escaped (a quote
    in a backend id) and a missing backend is null."""
    lines = formatter("json")([at(1000.25, REC), at(1001.0, NONE)]).splitlines()
    assert [json.loads(line) for line in lines] == [
        {"time": 1000.25, "client": "127.0.0.1:5000", "backend": 'b"1', "bytes_up": 10,
         "bytes_down": 20, "duration": 0.5, "outcome": "ok"},
        {"time": 1001.0, "client": "127.0.0.1:5001", "backend": None, "bytes_up": 0,
         "bytes_down": 0, "duration": 0.001, "outcome": "no-backend"},
    ]


def test_plain_and_escaped_lines_agree():
    """The common line (one format, nothing JSON-encoded) and the escaped
    one give the same JSON; a TLS subject is escaped and added; a batch
    mixes both kinds in order."""
    subject = AccessRecord("127.0.0.1:5003", "b1", 1, 2, 0.125, "ok", 'CN="x"')
    lines = formatter("json")([at(3.5, PLAIN), at(4.0, REC), at(4.5, subject), at(5.0, PLAIN)]).splitlines()
    parsed = [json.loads(line) for line in lines]
    assert parsed[0] == {"time": 3.5, "client": "127.0.0.1:5002", "backend": "b1", "bytes_up": 7,
                         "bytes_down": 8, "duration": 0.25, "outcome": "ok"}
    assert parsed[3] == {**parsed[0], "time": 5.0}
    assert parsed[1]["backend"] == 'b"1' and parsed[2]["tls_subject"] == 'CN="x"'
    assert lines[0] == ('{"time":3.500,"client":"127.0.0.1:5002","backend":"b1","bytes_up":7,'
                        '"bytes_down":8,"duration":0.250,"outcome":"ok"}')


def test_file_sink_writes_a_pipe_in_pieces_of_whole_lines(tmp_path):
    """On a pipe (stdout under a supervisor, shared by worker processes) a
    batch larger than PIPE_BUF goes in writes of whole lines, each at most
    PIPE_BUF (atomic on a pipe), so two writers never mix their lines; on a
    regular file a batch is one write (O_APPEND keeps it whole)."""
    import select

    r, w = os.pipe()
    reads = []
    reader = threading.Thread(target=lambda: reads.extend(iter(lambda: os.read(r, 1 << 20), b"")))
    reader.start()
    sink = FileSink("-")
    sink._fd = w
    sink.open = None  # keep the pipe
    sink._piece = None if stat.S_ISREG(os.fstat(w).st_mode) else select.PIPE_BUF
    pieces = []
    write = sink._write
    sink._write = lambda view: (pieces.append(bytes(view)), write(view))
    lines = [f"{i:05d} " + "x" * 90 + "\n" for i in range(200)]
    try:
        sink.write("".join(lines))
    finally:
        os.close(w)
        reader.join(10)
        os.close(r)
    assert b"".join(reads).decode() == "".join(lines)
    assert len(pieces) > 1 and all(len(p) <= select.PIPE_BUF and p.endswith(b"\n") for p in pieces)

    file_sink = FileSink(str(tmp_path / "access.log"))
    try:
        writes = []
        file_write = file_sink._write
        file_sink._write = lambda view: (writes.append(len(view)), file_write(view))
        file_sink.write("".join(lines))
        assert writes == [len("".join(lines))]
    finally:
        file_sink.close()


def test_reactor_writer_writes_in_the_timer():
    """threaded=False (the mode bench/accesslog_cost.py compares) writes
    each batch on the timer itself, and reopens at once."""
    clock = Clock()
    sink = ListSink()
    log = AccessLog(sink, "json", clock=clock, interval=0.1, signals=False, threaded=False)
    log.startService()
    try:
        log.pending.extend([at(1.0, PLAIN), at(2.0, NONE)])
        clock.advance(0.1)
        assert len(sink.writes) == 1 and sink.writes[0].count("\n") == 2 and log.written == 2
        log.reopen()
        assert sink.reopened == 1
    finally:
        log.stopService()


def test_text_lines():
    """The text format is one line with a UTC timestamp and key=value fields."""
    (line,) = formatter("text")([at(0.5, NONE)]).splitlines()
    assert line == ("1970-01-01T00:00:00.500Z 127.0.0.1:5001 -> - up=0 down=0 "
                    "duration=0.001s outcome=no-backend")
    with pytest.raises(ValueError):
        parse_format("xml")


def test_balancer_only_appends(factories):
    """With an access log attached, a finished connection is one tuple of
    primitives (the time, then the record's fields: lbproxy.accesslog.log.FIELDS)
    appended to its list; nothing goes to twisted.logger."""
    clock = Clock()
    clock.advance(5)
    b = Balancer(Config(version=1, backends=(Backend("b1", "127.0.0.1", 9001),)), factories, reactor=clock)
    pending = b.access_records = []
    b.admit()
    b.client_failed(NONE)
    assert pending == [at(5.0, NONE)]
    assert type(pending[0]) is tuple and not any(isinstance(v, tuple) for v in pending[0])


def test_batches_on_the_timer_and_written_by_the_thread():
    """Records wait in the list until the timer; then one batch is one
    write, on the writer thread."""
    clock = Clock()
    sink = ListSink()
    log = AccessLog(sink, "json", clock=clock, interval=0.2, signals=False)
    log.startService()
    try:
        log.pending.extend([at(1.0, REC), at(2.0, NONE)])
        assert sink.writes == []
        clock.advance(0.2)
        assert sink.wrote.wait(5)
        assert len(sink.writes) == 1 and sink.writes[0].count("\n") == 2
        assert log.pending == [] and log.written == 2
    finally:
        log.stopService()


def test_a_blocked_writer_never_blocks_the_reactor():
    """While the sink is stuck, batches queue up to the bound and further
    ones are dropped and counted; flush returns at once every time."""
    clock = Clock()
    sink = ListSink()
    sink.gate.clear()
    log = AccessLog(sink, "json", clock=clock, max_batches=2, signals=False)
    log.startService()
    try:
        for i in range(6):
            log.pending.append(at(float(i), REC))
            log.flush()
        # one is held by the stuck writer, two wait in the queue
        assert log.dropped >= 3 and log.written + log.dropped == 6
        sink.gate.set()
        assert log.drain(5)
        assert len(sink.writes) == log.written
    finally:
        sink.gate.set()
        log.stopService()


def test_file_sink_reopens_after_rename(tmp_path):
    """After a rename (logrotate), reopen makes new lines go to a new file
    at the original path; the renamed file keeps the old ones."""
    path = tmp_path / "access.log"
    sink = FileSink(str(path))
    sink.write("one\n")
    os.rename(path, tmp_path / "access.log.1")
    sink.write("two\n")
    sink.reopen()
    sink.write("three\n")
    sink.close()
    assert (tmp_path / "access.log.1").read_text() == "one\ntwo\n"
    assert path.read_text() == "three\n"


def test_syslog_sink_sends_one_datagram_a_line(tmp_path):
    """syslog:PATH sends each line as its own datagram with the local0.info
    priority and the lbproxy tag, to a socket the test bound."""
    path = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    try:
        sink = open_sink(f"syslog:{path}")
        assert isinstance(sink, SyslogSink)
        sink.write(formatter("json")([at(1.0, REC), at(2.0, NONE)]))
        first, second = server.recv(4096).decode(), server.recv(4096).decode()
        sink.close()
    finally:
        server.close()
    assert first.startswith("<134>") and f"lbproxy[{os.getpid()}]: " in first
    assert json.loads(first.split("]: ", 1)[1])["backend"] == 'b"1'
    assert json.loads(second.split("]: ", 1)[1])["outcome"] == "no-backend"


def test_off_is_no_sink():
    """--access-log off opens nothing."""
    assert open_sink("off") is None


def test_failing_sink_is_reported_once_per_run():
    """A sink that fails every write (a full disk) is reported once, not
    once per batch, and the proxy side keeps going."""

    class Failing(ListSink):
        def write(self, text):
            self.writes.append(text)
            if len(self.writes) == 3:
                self.wrote.set()
            raise OSError(28, "No space left on device")

    class Hops:
        def __init__(self):
            self.calls = []

        def callFromThread(self, f, *args, **kw):
            self.calls.append((f, args, kw))

    clock, hops, sink = Clock(), Hops(), Failing()
    log = AccessLog(sink, "json", clock=clock, signals=False, reactor=hops)
    log.startService()
    try:
        for i in range(3):
            log.pending.append(at(float(i), REC))
            log.flush()
        assert sink.wrote.wait(5)
        assert log.drain(5)
    finally:
        log.stopService()
    assert len(sink.writes) == 3 and len(hops.calls) == 1


class ShutdownClock(Clock):
    """A Clock with the reactor's system event triggers (recorded) and a
    callFromThread that calls at once (the writer thread's log lines)."""

    def __init__(self):
        super().__init__()
        self.triggers = []

    def addSystemEventTrigger(self, phase, event, f, *args):
        self.triggers.append((phase, event, f))

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def test_a_worker_writes_the_access_log_it_is_told(factories, tmp_path):
    """OpenAccessLog (the parent sends it after Start) gives the worker its
    own AccessLog on the same destination: every balancer of its document
    appends to it, and the before-shutdown trigger writes the last batch
    (a worker told to stop loses no line)."""
    import dataclasses

    from lbproxy.control.worker_main import WorkerChannel
    from lbproxy.model.config import ProxySettings
    from lbproxy.model.service import Document

    clock = ShutdownClock()
    child = WorkerChannel(clock, factories)
    child.signals = False
    path = tmp_path / "access.log"
    child.start(index=0, report_interval=0.5, **dataclasses.asdict(ProxySettings()))
    child.open_access_log(destination=str(path), format="json")
    document = Document(1, (Config(version=1, name="web", backends=(Backend("b1", "127.0.0.1", 9001),)),))
    child.apply_config(version=1, document=json.dumps(document.to_json()))
    balancer = child.table.balancer("web")
    assert balancer.access_records is child.access.pending
    balancer.admit()
    balancer.client_failed(PLAIN)
    ((phase, event, stop),) = clock.triggers
    assert (phase, event) == ("before", "shutdown")
    stop()
    (line,) = path.read_text().splitlines()
    assert json.loads(line)["client"] == "127.0.0.1:5002"


def test_the_parent_forwards_sigusr1_to_its_workers():
    """With --workers the parent's SIGUSR1 handler (ForwardReopen) sends
    SIGUSR1 on to each worker through the pool, via the reactor; stopping
    the service puts the previous handler back."""
    import signal

    from lbproxy.accesslog.log import ForwardReopen

    class Pool:
        sent = []

        def signal_workers(self, signum):
            self.sent.append(signum)

    before = signal.getsignal(signal.SIGUSR1)
    forward = ForwardReopen(Pool(), ShutdownClock())
    forward.startService()
    try:
        handler = signal.getsignal(signal.SIGUSR1)
        assert handler != before
        handler(signal.SIGUSR1, None)
        assert Pool.sent == [signal.SIGUSR1]
    finally:
        forward.stopService()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_bench_pairs_each_rounds_log_on_and_off():
    """bench/run.py's access-log figure is the median of per-round ratios
    (log on / off of the same round), so a round where the machine was slow
    for both counts as one ratio, not as two skewed medians."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).parent.parent / "bench" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    close = {
        "lbproxy-fast": [{"rps": 100.0, "req_per_cpu_s": 10.0}, {"rps": 50.0, "req_per_cpu_s": 8.0},
                         {"rps": 200.0, "req_per_cpu_s": 20.0}],
        "lbproxy-fast+log": [{"rps": 97.0, "req_per_cpu_s": 9.8}, {"rps": 49.0, "req_per_cpu_s": 7.6},
                             {"rps": 190.0, "req_per_cpu_s": 19.6}],
    }
    got = bench.access_log_ratios(close)
    assert got["rps_rounds"] == [0.97, 0.98, 0.95] and got["rps"] == pytest.approx(0.97)
    assert got["per_cpu_rounds"] == [0.98, 0.95, 0.98] and got["per_cpu"] == pytest.approx(0.98)
    assert bench.access_log_ratios({"lbproxy-fast": close["lbproxy-fast"]}) is None
