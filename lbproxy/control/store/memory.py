"""
An in-memory L{IConfigStore}: for tests, and for running without
C{--state-dir} (changes are then lost on restart, and the log says so).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from zope.interface import implementer

from lbproxy.model.config import Config, VersionConflict
from lbproxy.interfaces import IConfigStore


@implementer(IConfigStore)
class MemoryStore:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config
        self._watchers: list[Callable[[Config], None]] = []

    def load(self) -> defer.Deferred:
        return defer.succeed(self.config)

    def save(self, config: Config, expected_version: int) -> defer.Deferred:
        current = self.config.version if self.config is not None else 0
        if current != expected_version:
            return defer.fail(VersionConflict(expected_version, current))
        self.config = config
        return defer.succeed(config)

    def watch(self, callback: Callable[[Config], None]) -> Callable[[], None]:
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None
