"""
An in-memory L{IConfigStore}: for tests, and for running without
C{--state-dir} (changes are then lost on restart, and the log says so).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.internet import defer
from zope.interface import implementer

from lbproxy.control.store.history import (
    DEFAULT_KEEP,
    IConfigHistory,
    Notes,
    Ring,
    make_entry,
    start_entry,
)
from lbproxy.interfaces import IConfigStore
from lbproxy.model.config import Config
from lbproxy.model.errors import VersionConflict
from lbproxy.model.service import as_document


@implementer(IConfigStore, IConfigHistory)
class MemoryStore(Notes):
    def __init__(self, config: Config | None = None, keep: int = DEFAULT_KEEP, clock: Any = None) -> None:
        """
        @param keep: versions of history kept (in memory, like the config).
        @param clock: has C{seconds()} for the history's times.
        """
        Notes.__init__(self)
        self.config = config
        self.keep = keep
        self._ring = Ring(keep)
        self._seconds = clock.seconds if clock is not None else time.time
        self._watchers: list[Callable[[Config], None]] = []
        if config is not None:
            self._ring.add(start_entry(as_document(config).to_json(), config.version, self._seconds()))

    def load(self) -> defer.Deferred:
        return defer.succeed(self.config)

    def save(self, config: Config, expected_version: int) -> defer.Deferred:
        current = self.config.version if self.config is not None else 0
        if current != expected_version:
            return defer.fail(VersionConflict(expected_version, current))
        # Both as documents: a store seeded with one pool diffs against its one service.
        previous = as_document(self.config).to_json() if self.config is not None else None
        change = self.pop_note(config.version)
        self._ring.add(make_entry(as_document(config).to_json(), config.version, self._seconds(), change, previous))
        self.config = config
        return defer.succeed(config)

    def history(self) -> defer.Deferred:
        return defer.succeed(self._ring.newest_first())

    def entry(self, version: int) -> defer.Deferred:
        return defer.succeed(self._ring.find(version))

    def watch(self, callback: Callable[[Config], None]) -> Callable[[], None]:
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None
