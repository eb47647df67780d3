"""
Unit tests of the embedded config store, L{lbproxy.control.store.file.FileStore}:
real files in a temporary directory, writes run synchronously, faults
injected through an C{os} stand-in that records and forwards calls.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import replace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from lbproxy.control.controller import ConfigController
from lbproxy.control.store import file as filestore
from lbproxy.control.store.envelope import checksum, decode, encode
from lbproxy.control.store.file import FileStore
from lbproxy.interfaces import IConfigStore
from lbproxy.model import changes
from lbproxy.model.checks import HealthCheck
from lbproxy.model.config import Backend, Config, StrategyChoice, freeze
from lbproxy.model.errors import StoreError, VersionConflict
from lbproxy.model.service import as_document
from lbproxy.policy.balancer import Balancer


class SpyOS:
    """
    Forwards the C{os} calls the store writes with, recording each one, and
    raises C{fail[name]} instead when set.
    """

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fail: dict[str, OSError] = {}
        self.fds: dict[int, str] = {}

    def _call(self, name, *args):
        shown = tuple(self.fds.get(a, a) if name in ("write", "fsync", "close") and i == 0 else a
                      for i, a in enumerate(args))
        if name == "write":
            shown = shown[:1]
        self.calls.append((name,) + shown)
        if name in self.fail:
            raise self.fail[name]
        result = getattr(os, name)(*args)
        if name == "open":
            self.fds[result] = os.path.basename(args[0]) or args[0]
        return result

    def __getattr__(self, name):
        return lambda *args: self._call(name, *args)


def run_now(f, *args):
    return defer.maybeDeferred(f, *args)


def result_of(d):
    """The result of a Deferred that has already fired (failures raise)."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def make_config(version=1, *ports, strategy="round-robin"):
    ports = ports or (8001,)
    return Config(
        version=version,
        backends=tuple(Backend(f"b{i + 1}", "127.0.0.1", p) for i, p in enumerate(ports)),
        strategy=StrategyChoice(strategy),
    )


@pytest.fixture
def spy():
    return SpyOS()


@pytest.fixture
def logged(monkeypatch):
    events = []
    monkeypatch.setattr(filestore, "log", Logger(observer=events.append))
    return events


def texts(events):
    return [(e["log_level"].name, formatEvent(e)) for e in events]


def store_in(path, spy=None, clock=None):
    return FileStore(str(path), reactor=clock or Clock(), run=run_now, os_module=spy or os)


def test_provides_interface(tmp_path):
    """FileStore provides IConfigStore."""
    assert verifyObject(IConfigStore, store_in(tmp_path))


def test_empty_store_reads_none(tmp_path):
    """A directory without store files is an empty store, not an error."""
    store = store_in(tmp_path)
    assert store.read() is None
    assert result_of(store.load()) is None


def test_round_trip_every_field(tmp_path):
    """What is saved reads back equal, with every config field kept."""
    config = Config(
        version=1,
        backends=(
            Backend("web-1", "10.0.0.1", 80, weight=5, state="draining", proxy_protocol="v2",
                    max_connections=7, health_check=HealthCheck(type="http", path="/h", status=(200, 204))),
            Backend("b2", "::1", 81, state="disabled"),
        ),
        strategy=StrategyChoice("power-of-two", freeze({"choices": 2})),
        health_check=HealthCheck(interval=1.5, timeout=0.5),
        outlier=None,
        slow_start=12.5,
        drain_timeout=30.0,
    )
    store = store_in(tmp_path)
    assert result_of(store.save(config, 0)) is config
    assert store_in(tmp_path).read() == as_document(config)
    assert result_of(store_in(tmp_path).load()) == as_document(config)


def test_file_is_envelope_with_checksum(tmp_path):
    """The file is an envelope whose sha256 covers the config body, version included."""
    store_in(tmp_path).save(make_config(3), 0)
    envelope = json.loads((tmp_path / "config.json").read_bytes())
    assert envelope["format"] == 1
    assert envelope["config"]["version"] == 3
    assert envelope["checksum"] == checksum(envelope["config"])
    assert envelope["checksum"].startswith("sha256:")


def test_durable_write_order(tmp_path, spy):
    """
    The new file is written, fsync'd and closed before it replaces
    config.json, and the directory is fsync'd after the replace; the current
    file is kept as config.json.prev before that; history.json follows with
    the same sequence.
    """
    store = store_in(tmp_path, spy)
    result_of(store.save(make_config(1), 0))
    spy.calls.clear()
    result_of(store.save(make_config(2, 8002), 1))
    names = [c for c in spy.calls if c[0] != "unlink"]
    d = str(tmp_path)
    assert names == [
        ("link", f"{d}/config.json", f"{d}/config.json.prev.tmp"),
        ("replace", f"{d}/config.json.prev.tmp", f"{d}/config.json.prev"),
        ("open", f"{d}/config.json.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        ("write", "config.json.tmp"),
        ("fsync", "config.json.tmp"),
        ("close", "config.json.tmp"),
        ("replace", f"{d}/config.json.tmp", f"{d}/config.json"),
        ("open", d, os.O_RDONLY),
        ("fsync", tmp_path.name),
        ("close", tmp_path.name),
        # then the history, the same way, once the config is durable
        ("open", f"{d}/history.json.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        ("write", "history.json.tmp"),
        ("fsync", "history.json.tmp"),
        ("close", "history.json.tmp"),
        ("replace", f"{d}/history.json.tmp", f"{d}/history.json"),
        ("open", d, os.O_RDONLY),
        ("fsync", tmp_path.name),
        ("close", tmp_path.name),
    ]
    assert decode((tmp_path / "config.json").read_bytes()).version == 2
    assert decode((tmp_path / "config.json.prev").read_bytes()).version == 1
    assert not (tmp_path / "config.json.tmp").exists()


def test_partial_writes_are_completed(tmp_path, spy):
    """A short os.write does not truncate the file: the rest is written."""

    class Short(SpyOS):
        def write(self, fd, data):
            self.calls.append(("write",))
            return os.write(fd, bytes(data[:100]))

    short = Short()
    config = make_config(1, *range(9000, 9020))
    result_of(store_in(tmp_path, short).save(config, 0))
    assert len([c for c in short.calls if c[0] == "write"]) > 5
    assert store_in(tmp_path).read() == as_document(config)


def test_stale_version_conflicts(tmp_path):
    """A save based on a version that is no longer stored fails and writes nothing."""
    store = store_in(tmp_path)
    result_of(store.save(make_config(1), 0))
    result_of(store.save(make_config(2, 8002), 1))
    before = (tmp_path / "config.json").read_bytes()
    with pytest.raises(VersionConflict) as e:
        result_of(store.save(make_config(2, 8003), 1))
    assert (e.value.expected, e.value.current) == (1, 2)
    assert (tmp_path / "config.json").read_bytes() == before


def test_version_checked_against_disk_not_memory(tmp_path):
    """The version check reads the disk, so a file put there behind the
    store's back is not overwritten from a stale version."""
    a, b = store_in(tmp_path), store_in(tmp_path)
    result_of(a.save(make_config(1), 0))
    result_of(b.save(make_config(2, 8002), 1))
    with pytest.raises(VersionConflict):
        result_of(a.save(make_config(2, 8003), 1))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda good: b"{not json", "is not valid JSON"),
        (lambda good: good[: len(good) // 2], "is not valid JSON"),
        (lambda good: b"", "is empty"),
        (lambda good: good.replace(b'"port": 8002', b'"port": 8009'), "fails its checksum"),
        (lambda good: json.dumps({"format": 99, "config": {}}).encode(), "format 1"),
    ],
    ids=["bad-json", "truncated", "empty", "checksum", "format"],
)
def test_damaged_file_falls_back_to_previous(tmp_path, logged, damage, reason):
    """
    A corrupt, truncated, empty or edited config.json is not used: the
    previous good version is, with a critical log line naming the file and
    the problem.
    """
    store = store_in(tmp_path)
    result_of(store.save(make_config(1), 0))
    result_of(store.save(make_config(2, 8002), 1))
    path = tmp_path / "config.json"
    path.write_bytes(damage(path.read_bytes()))
    assert store_in(tmp_path).read() == as_document(make_config(1))
    [(level, text)] = [t for t in texts(logged) if t[0] == "critical"]
    assert str(path) in text and reason in text and "config.json.prev" in text


def test_invalid_config_in_valid_envelope_falls_back(tmp_path, logged):
    """A file whose checksum holds but whose config is invalid is refused like a corrupt one."""
    store = store_in(tmp_path)
    result_of(store.save(make_config(1), 0))
    result_of(store.save(make_config(2, 8002), 1))
    body = make_config(3).to_json()
    body["backends"][0]["port"] = 70000
    (tmp_path / "config.json").write_text(json.dumps({"format": 1, "checksum": checksum(body), "config": body}))
    assert store_in(tmp_path).read().version == 1
    assert any("invalid config" in t for _, t in texts(logged))


def test_missing_file_with_previous_falls_back(tmp_path, logged):
    """If config.json is gone but the previous version is there, the previous one is used, loudly."""
    store = store_in(tmp_path)
    result_of(store.save(make_config(1), 0))
    result_of(store.save(make_config(2, 8002), 1))
    (tmp_path / "config.json").unlink()
    assert store_in(tmp_path).read().version == 1
    assert any(level == "critical" and "does not exist" in t for level, t in texts(logged))


def test_both_files_bad_refuses(tmp_path):
    """If neither file is usable, reading fails with a message naming both files."""
    store = store_in(tmp_path)
    result_of(store.save(make_config(1), 0))
    result_of(store.save(make_config(2, 8002), 1))
    (tmp_path / "config.json").write_bytes(b"\x00\x00")
    (tmp_path / "config.json.prev").write_bytes(b'{"format": 1, "checks')
    with pytest.raises(StoreError) as e:
        store_in(tmp_path).read()
    message = str(e.value)
    assert f"{tmp_path}/config.json is not valid JSON" in message
    assert f"{tmp_path}/config.json.prev is not valid JSON" in message
    with pytest.raises(StoreError):
        result_of(store_in(tmp_path).load())


def test_only_bad_file_without_previous_refuses(tmp_path):
    """A damaged config.json with no previous version refuses too (never an empty start)."""
    (tmp_path / "config.json").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="config.json.prev does not exist"):
        store_in(tmp_path).read()


def test_save_after_fallback_keeps_the_good_previous(tmp_path, logged):
    """After falling back, the next save does not make the damaged file the previous version."""
    store = store_in(tmp_path)
    result_of(store.save(make_config(1), 0))
    result_of(store.save(make_config(2, 8002), 1))
    (tmp_path / "config.json").write_bytes(b"garbage")
    store = store_in(tmp_path)
    assert store.read().version == 1
    result_of(store.save(make_config(2, 8005), 1))
    assert decode((tmp_path / "config.json").read_bytes()) == as_document(make_config(2, 8005))
    assert decode((tmp_path / "config.json.prev").read_bytes()) == as_document(make_config(1))


@pytest.mark.parametrize(
    "call, err",
    [
        ("write", errno.ENOSPC),
        ("fsync", errno.EIO),
        ("open", errno.EROFS),
        ("link", errno.EACCES),
    ],
)
def test_write_failure_is_store_error_and_changes_nothing(tmp_path, spy, call, err):
    """
    Disk full, I/O error, read-only file system, permission denied: save
    fails with a StoreError naming the file and the error, config.json
    still holds the old version and no temporary file is left.
    """
    store = store_in(tmp_path, spy)
    result_of(store.save(make_config(1), 0))
    before = (tmp_path / "config.json").read_bytes()
    spy.fail[call] = OSError(err, os.strerror(err))
    with pytest.raises(StoreError) as e:
        result_of(store.save(make_config(2, 8002), 1))
    message = str(e.value)
    assert os.strerror(err) in message and errno.errorcode[err] in message
    assert str(tmp_path) in message and "version 2" in message
    assert (tmp_path / "config.json").read_bytes() == before
    assert not (tmp_path / "config.json.tmp").exists()
    del spy.fail[call]
    result_of(store.save(make_config(2, 8002), 1))
    assert store_in(tmp_path).read().version == 2


def test_link_unsupported_copies_previous(tmp_path, spy):
    """On a file system without hard links the previous version is copied instead."""
    store = store_in(tmp_path, spy)
    result_of(store.save(make_config(1), 0))
    spy.fail["link"] = OSError(errno.EPERM, "Operation not permitted")
    result_of(store.save(make_config(2, 8002), 1))
    assert decode((tmp_path / "config.json.prev").read_bytes()) == as_document(make_config(1))
    assert decode((tmp_path / "config.json").read_bytes()).version == 2


def test_saves_run_one_at_a_time(tmp_path):
    """A second save waits until the first one's write has finished, then runs in order."""
    pending = []

    def run_later(f, *args):
        d = defer.Deferred()
        pending.append((d, f, args))
        return d

    store = FileStore(str(tmp_path), reactor=Clock(), run=run_later)
    first = store.save(make_config(1), 0)
    second = store.save(make_config(2, 8002), 1)
    assert len(pending) == 1
    d, f, args = pending.pop()
    d.callback(f(*args))
    assert result_of(first).version == 1
    assert len(pending) == 1
    d, f, args = pending.pop()
    d.callback(f(*args))
    assert result_of(second).version == 2
    assert store_in(tmp_path).read().version == 2


def test_failed_write_applies_nothing(tmp_path, spy, factories):
    """
    Through the controller: a disk-full write fails the change with
    StoreError and the balancer keeps the old config; the next change,
    with the disk fixed, goes through.
    """
    clock = Clock()
    store = FileStore(str(tmp_path), reactor=clock, run=run_now, os_module=spy)
    balancer = Balancer(make_config(0), factories, reactor=clock)
    controller = ConfigController(balancer, store)
    body = {"host": "127.0.0.1", "port": 8002}
    spy.fail["write"] = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(StoreError, match="No space left on device"):
        result_of(controller.change(lambda c: changes.add_backend(c, body)))
    assert balancer.config == make_config(0)
    assert [c.id for c in balancer.pool.candidates] == ["b1"]
    assert store_in(tmp_path).read() is None
    del spy.fail["write"]
    new, backend = result_of(controller.change(lambda c: changes.add_backend(c, body)))
    assert balancer.config is new and new.version == 1
    assert store_in(tmp_path).read() == as_document(new)
    controller.stop()


def test_watch_never_polls(tmp_path):
    """Nothing else writes an owned state directory, so the watch arms no
    timer and runs no job (it used to stat the file every 0.5 s)."""
    clock = Clock()
    jobs = []
    store = FileStore(str(tmp_path), reactor=clock, run=lambda f, *a: jobs.append(f) or run_now(f, *a))
    unwatch = store.watch(lambda config: None)
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert jobs == []
    unwatch()


CLAIM = (
    "import sys; from lbproxy.control.store.file import FileStore; "
    "from lbproxy.model.errors import StoreError\n"
    "try:\n    FileStore(sys.argv[1]).claim()\n"
    "except StoreError as e:\n    print(e); sys.exit(3)\n"
    "print('claimed')"
)


def claim_elsewhere(directory):
    """Try to claim C{directory} from a separate process; its exit code and output."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", CLAIM, str(directory)], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=root),
    )
    return done.returncode, done.stdout.strip()


@pytest.mark.integration
def test_second_process_on_a_state_dir_is_refused(tmp_path):
    """While one process owns a state directory another cannot claim it,
    and the message names the directory and the owner's pid; once the owner
    is gone (its lock dropped) the directory can be claimed again."""
    code, out = claim_elsewhere(tmp_path)
    assert (code, out) == (0, "claimed")
    store_in(tmp_path).claim()
    code, out = claim_elsewhere(tmp_path)
    assert code == 3
    assert f"the state directory {tmp_path} is in use by another lbproxy process (pid {os.getpid()}" in out


@pytest.mark.integration
def test_open_store_claims_the_directory(tmp_path):
    """open_store (what makeService uses) claims the state directory."""
    from lbproxy.control.store import open_store

    open_store(str(tmp_path), make_config(0), [])
    code, out = claim_elsewhere(tmp_path)
    assert code == 3 and "in use by another lbproxy process" in out


def test_encode_decode_are_inverse():
    """encode/decode round-trip and decode verifies the checksum it computes."""
    config = make_config(4, 8001, 8002)
    assert decode(encode(config)) == as_document(config)
    assert decode(encode(replace(config, slow_start=1.25))).main().slow_start == 1.25
