"""
The embedded L{IConfigStore}: one fsync'd JSON document in C{--state-dir}.

The document is C{config.json}, a checksummed envelope
(L{lbproxy.control.store.envelope}), so a torn or edited file is
recognised.  The previous good document is kept beside it as
C{config.json.prev}.

A write is durable before it is acknowledged: temporary file in the same
directory, write, C{fsync}, C{os.replace}, C{fsync} of the directory
(L{lbproxy.control.store.durable}).  Writes
run in the reactor's thread pool, one at a time (a L{DeferredLock}); the
version check reads the file, so a file restored by hand is not overwritten
from a stale version.

One process owns a state directory: L{FileStore.claim} (called by
L{lbproxy.control.store.open_store}) takes a lock on C{config.lock} for the
life of the process (L{lbproxy.control.store.ownership}), and a second lbproxy on the same directory refuses to
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

import os
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.control.store.durable import DurableFiles, describe
from lbproxy.control.store.envelope import CorruptFile, decode, decode_history, encode, encode_history
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
from lbproxy.control.store.ownership import DirectoryLock
from lbproxy.interfaces import IConfigStore
from lbproxy.model.config import Config
from lbproxy.model.errors import StoreError, VersionConflict

log = Logger()

CONFIG_NAME = "config.json"
PREVIOUS_NAME = "config.json.prev"
LOCK_NAME = "config.lock"
HISTORY_NAME = "history.json"

Runner = Callable[..., defer.Deferred]


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
        #: the file the last read config came from (C{previous} after a fallback).
        self.loaded_from = self.path
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
        self._owner = DirectoryLock(self.directory, self._lock_path)
        self._files = DurableFiles(self.directory, os_module)
        self._released = False

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def claim(self) -> None:
        """
        Make this process the owner of the state directory until it exits
        (blocking: for startup; L{lbproxy.control.store.ownership}).

        @raise StoreError: if another process owns the directory.
        """
        self._owner.claim()

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
            problem = f"cannot be read: {describe(e)}"
        try:
            return self._read_file(self.previous), problem
        except FileNotFoundError:
            why = "does not exist"
        except CorruptFile as e:
            why = str(e)
        except OSError as e:
            why = f"cannot be read: {describe(e)}"
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
        self.loaded_from = self.path if problem is None else self.previous
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
        if self._owner.fd is None and self._released:
            return defer.fail(StoreError("this lbproxy handed over to a new process: make changes there"))
        return self._lock.run(self._save, config, expected_version, self.pop_note(config.version))

    def release(self) -> None:
        """
        Give up the state directory (a takeover: the new process claims
        it); changes are refused from now on.
        """
        self._owner.release()
        self._released = True

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
                self._files.keep_previous(self.path, self._previous_temp, self.previous)
            self._files.write(self.path, self._temp, data)
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
        try:
            self._files.write(self.history_path, self._history_temp, encode_history(entries))
        except OSError as e:
            log.error("config version {version} is saved, but its history entry is not: "
                      "{path}: {error}", version=version, path=self.history_path, error=describe(e))
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
                return decode_history(f.read())
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
            f"could not save config version {version} to {path}: {describe(e)}; "
            f"the change was not applied"
        )

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
