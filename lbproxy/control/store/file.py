"""
The embedded L{IConfigStore}: one fsync'd JSON document in C{--state-dir}.

The document is C{config.json}, an envelope C{{"format": 1, "checksum":
"sha256:...", "config": {...}}} whose checksum covers the canonical JSON of
the config (version included), so a torn or edited file is recognised.  The
previous good document is kept beside it as C{config.json.prev}.

A write is durable before it is acknowledged: temporary file in the same
directory, write, C{fsync}, C{os.replace}, C{fsync} of the directory.  Writes
run in the reactor's thread pool, one at a time (a L{DeferredLock}); the
version check reads the file, so a file restored by hand is not overwritten
from a stale version.

One process owns a state directory: L{FileStore.claim} (called by
L{lbproxy.control.store.open_store}) takes a lock on C{config.lock} for the
life of the process, and a second lbproxy on the same directory refuses to
start.  Nothing else writes the directory (worker processes get the config
from the parent; cluster mode keeps it in etcd), so there is nothing to
watch: L{FileStore.watch} never calls back.

Startup may read synchronously (L{FileStore.read}), before the reactor runs.

History (L{lbproxy.control.store.history}) is a second file,
C{history.json}: the last C{keep} entries in an envelope with its own
checksum, rewritten with the same durable sequence right after
C{config.json}.  It is a separate file so that the document stays small and
readable and a damaged history can never stop the proxy from starting:
C{config.json} is the truth, the history only describes it.  A crash
between the two writes loses the newest entry, never a config; a history
write that fails is logged and the change stands (it is already durable).
The entries are also kept in memory, so reading history costs no I/O.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.control.store.history import (
    DEFAULT_KEEP,
    Change,
    Entry,
    IConfigHistory,
    Notes,
    Ring,
    make_entry,
    start_entry,
)
from lbproxy.interfaces import IConfigStore
from lbproxy.model.config import Config
from lbproxy.model.errors import ConfigError, StoreError, VersionConflict
from lbproxy.model.service import as_document, parse_document

log = Logger()

FORMAT = 1
CONFIG_NAME = "config.json"
PREVIOUS_NAME = "config.json.prev"
LOCK_NAME = "config.lock"
HISTORY_NAME = "history.json"

Runner = Callable[..., defer.Deferred]


class CorruptFile(Exception):
    """
    A store file cannot be used; the message says why, in an operator's
    words.
    """


def canonical(body: Any) -> bytes:
    """
    The bytes the checksum covers: sorted keys, no spaces, UTF-8.
    """
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def checksum(body: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def encode(config: Config) -> bytes:
    """
    The file contents that store C{config}.
    """
    body = as_document(config).to_json()
    envelope = {"format": FORMAT, "checksum": checksum(body), "config": body}
    return json.dumps(envelope, indent=1, ensure_ascii=False).encode() + b"\n"


def decode(data: bytes) -> Config:
    """
    Parse and verify the contents of a store file.

    @raise CorruptFile: if it is empty, truncated, not JSON, of an unknown
        format, fails its checksum or holds an invalid config.
    """
    if not data.strip():
        raise CorruptFile("is empty")
    try:
        envelope = json.loads(data)
    except ValueError as e:
        raise CorruptFile(f"is not valid JSON (truncated or damaged): {e}") from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise CorruptFile(f"is not a lbproxy config store file of format {FORMAT}")
    body = envelope.get("config")
    if envelope.get("checksum") != checksum(body):
        raise CorruptFile("fails its checksum: it was damaged or edited by hand")
    try:
        return parse_document(body)
    except ConfigError as e:
        raise CorruptFile(f"holds an invalid config: {e}") from None


def _describe(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e} [{name}]" if name else str(e.strerror or e)


@implementer(IConfigStore, IConfigHistory)
class FileStore(Notes):
    """
    @ivar directory: the state directory.
    @ivar path: the config document, C{directory/config.json}.
    @ivar previous: the previous good document, C{directory/config.json.prev}.
    """

    def __init__(
        self,
        directory: str,
        reactor: Any = None,
        run: Runner | None = None,
        os_module: Any = os,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        """
        @param run: C{run(f, *args)} returning a Deferred of C{f(*args)};
            by default the reactor's thread pool.  Tests pass a synchronous
            one.
        @param os_module: the C{os} functions used to write (C{open},
            C{write}, C{fsync}, C{close}, C{replace}, C{link}, C{unlink}),
            so tests can watch their order and inject faults.
        @param keep: versions of history kept in C{history.json}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, CONFIG_NAME)
        self.previous = os.path.join(self.directory, PREVIOUS_NAME)
        self._temp = self.path + ".tmp"
        self._previous_temp = self.previous + ".tmp"
        self._lock_path = os.path.join(self.directory, LOCK_NAME)
        self.history_path = os.path.join(self.directory, HISTORY_NAME)
        self._history_temp = self.history_path + ".tmp"
        self.keep = keep
        self._ring: Ring | None = None
        #: the document an empty store starts from (the command line's,
        #: version 0), recorded in history with the first save
        self.start: Any = None
        Notes.__init__(self)
        self._os = os_module
        self._run = run if run is not None else self._in_thread
        self._lock = defer.DeferredLock()
        self._known = 0
        self._claim: int | None = None
        self._released = False

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def claim(self) -> None:
        """
        Make this process the owner of the state directory until it exits
        (blocking: for startup).  The lock is a POSIX record lock on
        C{config.lock}, which the kernel drops when the process ends, however
        it ends; the file names the owner's pid.

        @raise StoreError: if another process owns the directory.
        """
        if self._claim is not None:
            return
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open {self._lock_path}: {_describe(e)}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise StoreError(
                    f"the state directory {self.directory} is in use by another lbproxy "
                    f"process (pid {owner}, which holds {self._lock_path}); one process "
                    f"owns a state directory"
                ) from None
            raise StoreError(f"cannot lock {self._lock_path}: {_describe(e)}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._claim = fd

    # Reading --------------------------------------------------------------

    def read(self) -> Config | None:
        """
        Read the stored config now (blocking: for startup, before the
        reactor runs, or from a thread).  A damaged C{config.json} falls
        back to C{config.json.prev} with a critical log line.

        @return: the stored L{Config}, or C{None} if the store is empty.
        @raise StoreError: if neither file is usable; the message names both.
        """
        return self._loaded(self._current())

    def _current(self) -> tuple[Config | None, str | None]:
        """
        @return: C{(config, problem)}: the usable config (C{None} if the
            store is empty) and what is wrong with C{config.json} if the
            config came from C{config.json.prev}.
        @raise StoreError: if the store is not empty and nothing is usable.
        """
        try:
            return self._read_file(self.path), None
        except FileNotFoundError:
            problem = "does not exist"
            if not os.path.exists(self.previous):
                return None, None
        except CorruptFile as e:
            problem = str(e)
        except OSError as e:
            problem = f"cannot be read: {_describe(e)}"
        try:
            return self._read_file(self.previous), problem
        except FileNotFoundError:
            why = "does not exist"
        except CorruptFile as e:
            why = str(e)
        except OSError as e:
            why = f"cannot be read: {_describe(e)}"
        raise StoreError(
            f"the config store {self.path} {problem}, and the previous version "
            f"{self.previous} {why}; refusing to guess a config (restore one of "
            f"them, or move both away to start from the command line)"
        )

    def _read_file(self, path: str) -> Config:
        with open(path, "rb") as f:
            return decode(f.read())

    def load(self) -> defer.Deferred:
        """
        Read the stored config off the reactor thread.

        @return: a Deferred firing with the L{Config} or C{None}; it fails
            with L{StoreError} if neither file is usable.
        """
        return self._run(self._current).addCallback(self._loaded)

    def _loaded(self, result: tuple[Config | None, str | None]) -> Config | None:
        config, problem = result
        if problem is not None:
            log.critical(
                "config store {path} {problem}; falling back to the previous good "
                "version in {previous}",
                path=self.path, problem=problem, previous=self.previous,
            )
        if config is not None:
            self._known = max(self._known, config.version)
        return config

    # Writing --------------------------------------------------------------

    def save(self, config: Config, expected_version: int) -> defer.Deferred:
        """
        Make C{config} durable if the stored version is C{expected_version}
        (C{0} for an empty store).  Saves run one at a time, in call order.

        @return: a Deferred firing with C{config} once it is on disk, or
            failing with L{VersionConflict} or L{StoreError} (nothing
            changed on disk then).
        """
        if self._claim is None and self._released:
            return defer.fail(StoreError("this lbproxy handed over to a new process: make changes there"))
        return self._lock.run(self._save, config, expected_version, self.pop_note(config.version))

    def release(self) -> None:
        """
        Give up the state directory (a takeover: the new process claims
        it); changes are refused from now on.
        """
        fd, self._claim = self._claim, None
        self._released = True
        if fd is not None:
            os.close(fd)  # drops the record lock

    def _save(self, config: Config, expected_version: int, change: Change | None = None) -> defer.Deferred:
        data = encode(config)
        d = self._run(self._write, data, config.version, expected_version,
                      (config.to_json(), self._reactor.seconds(), change))

        def saved(entry: Entry | None) -> Config:
            self._known = max(self._known, config.version)
            if entry is not None and self._ring is not None:
                self._ring.add(entry)
            return config

        return d.addCallback(saved)

    def _write(self, data: bytes, version: int, expected_version: int,
               note: tuple[Any, float, Change | None] | None = None) -> Entry | None:
        """
        The blocking part of L{save}: check the version on disk, keep the
        current file as the previous one, write the new one, then the
        history with the new entry.
        """
        try:
            current, problem = self._current()
        except StoreError as e:
            raise StoreError(f"cannot save config version {version}: {e}") from None
        stored = current.version if current is not None else 0
        if stored != expected_version:
            raise VersionConflict(expected_version, stored)
        try:
            if current is not None and problem is None:
                self._keep_previous()
            self._durable_write(self.path, self._temp, data)
        except OSError as e:
            raise self._failed(version, getattr(e, "filename", None) or self.path, e) from None
        if note is None:
            return None
        document, when, change = note
        start = current if current is not None else self.start
        previous = start.to_json() if start is not None else None
        entry = make_entry(document, version, when, change, previous)
        ring = self._history_ring()
        if not len(ring) and start is not None:
            ring.add(start_entry(previous, start.version, when))
        entries = ring.with_entry(entry)
        body = [e.to_json() for e in entries]
        blob = json.dumps({"format": FORMAT, "checksum": checksum(body), "entries": body},
                          ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        try:
            self._durable_write(self.history_path, self._history_temp, blob)
        except OSError as e:
            log.error("config version {version} is saved, but its history entry is not: "
                      "{path}: {error}", version=version, path=self.history_path, error=_describe(e))
        return entry

    # History ---------------------------------------------------------------

    def _history_ring(self) -> Ring:
        """
        The history in memory, read from C{history.json} the first time
        (blocking).  A missing or damaged file is an empty history (logged):
        history never stops the store from working.
        """
        if self._ring is None:
            self._ring = Ring(self.keep, self._read_history())
        return self._ring

    def _read_history(self) -> list[Entry]:
        try:
            with open(self.history_path, "rb") as f:
                envelope = json.loads(f.read())
            if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
                raise ValueError(f"not a history file of format {FORMAT}")
            body = envelope.get("entries")
            if envelope.get("checksum") != checksum(body) or not isinstance(body, list):
                raise ValueError("fails its checksum")
            return [Entry.from_json(e) for e in body]
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.error("config history {path} is unusable ({error}); starting an empty history",
                      path=self.history_path, error=e)
            return []

    def history(self) -> defer.Deferred:
        """
        @return: a Deferred firing with the kept L{Entry}s, newest first.
        """
        if self._ring is not None:
            return defer.succeed(self._ring.newest_first())
        return self._lock.run(self._run, self._history_ring).addCallback(lambda ring: ring.newest_first())

    def entry(self, version: int) -> defer.Deferred:
        """
        @return: a Deferred firing with C{(entry, previous)} of C{version}.
        """
        return self.history().addCallback(lambda _: self._ring.find(version))

    def _failed(self, version: int, path: str, e: OSError) -> StoreError:
        return StoreError(
            f"could not save config version {version} to {path}: {_describe(e)}; "
            f"the change was not applied"
        )

    def _keep_previous(self) -> None:
        """
        Make the current (good) C{config.json} the previous version: a hard
        link renamed over C{config.json.prev}, so C{config.json} itself
        never disappears.  Where hard links are not supported, a copy.
        """
        o = self._os
        try:
            o.unlink(self._previous_temp)
        except FileNotFoundError:
            pass
        try:
            o.link(self.path, self._previous_temp)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            with open(self.path, "rb") as f:
                self._durable_write(self.previous, self._previous_temp, f.read())
            return
        o.replace(self._previous_temp, self.previous)

    def _durable_write(self, path: str, temp: str, data: bytes) -> None:
        o = self._os
        fd = o.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[o.write(fd, view):]
            o.fsync(fd)
        except BaseException:
            o.close(fd)
            try:
                o.unlink(temp)
            except OSError:
                pass
            raise
        o.close(fd)
        o.replace(temp, path)
        dfd = o.open(self.directory, os.O_RDONLY)
        try:
            o.fsync(dfd)
        finally:
            o.close(dfd)

    def status(self) -> dict[str, Any]:
        """
        For C{GET /api/v1/status}: where the config is stored, and the
        highest version this process has read or written.
        """
        return {"kind": "file", "path": self.path, "version": self._known}

    # Watching -------------------------------------------------------------

    def watch(self, callback: Callable[[Config], None]) -> Callable[[], None]:
        """
        Nothing but this process writes the directory it owns
        (L{claim}), so there are no changes from elsewhere to report.

        @return: a callable that stops this (empty) watch.
        """
        return lambda: None
