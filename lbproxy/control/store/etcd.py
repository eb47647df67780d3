"""
An L{IConfigStore} on etcd v3, so several lbproxy nodes share one config.

It speaks etcd's JSON gateway through L{EtcdClient}
(L{lbproxy.control.store.etcd_client}), the one client cluster membership
uses too.  The config document lives at C{PREFIX/config}; member nodes
register under C{PREFIX/nodes/} (L{lbproxy.control.cluster}).

Writes are compare-and-swap on the key's C{mod_revision}, so two nodes
editing at once cannot lose an update: the loser gets L{VersionConflict}.
A streaming watch on the prefix (L{lbproxy.control.store.etcd_watch})
delivers changes made by other nodes, and re-reads and watches again when
it breaks, so no change is missed.  While etcd cannot be reached,
L{EtcdStore.save} fails with L{lbproxy.model.errors.StoreError} (the node
keeps proxying with the config it has) and the store keeps retrying with
backoff; on return it re-reads and delivers what changed meanwhile.

History (L{lbproxy.control.store.history}) stays within etcd and bounded:
each version's entry is a key C{PREFIX/history/VERSION} (zero-padded, so
keys sort by version), put in the same transaction as the config, and the
same transaction deletes the entries that fall out of the last C{keep}.
A config without its entry (or an entry without its config) cannot exist.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.control.store.etcd_client import EtcdClient, WatchStream, b64, etcd_int, prefix_end, unb64
from lbproxy.control.store.etcd_watch import ConfigWatch
from lbproxy.control.store.history import DEFAULT_KEEP, Entry, IConfigHistory, Notes, make_entry
from lbproxy.interfaces import IConfigStore
from lbproxy.model.config import Config
from lbproxy.model.errors import ConfigError, VersionConflict
from lbproxy.model.service import as_document, parse_document

log = Logger()

__all__ = ["EtcdStore"]


_VERSION_DIGITS = 12


@implementer(IConfigStore, IConfigHistory)
class EtcdStore(ConfigWatch, Notes):
    """
    @ivar etcd: the L{EtcdClient} (cluster membership uses it too).
    @ivar endpoints: base URLs of the etcd members, tried in turn.
    @ivar prefix: the key prefix of this lbproxy cluster.
    @ivar current: the config last read or written, or C{None}.
    @ivar mod_revision: the etcd C{mod_revision} of C{current} (0: no key),
        the condition of the next write.
    @ivar revision: the last etcd revision the watch has delivered up to.
    @ivar available: whether the last request reached etcd.
    @ivar error: why etcd is unavailable, or C{None}.
    """

    kind = "etcd"

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = "/lbproxy/default",
        client: Any = None,
        reactor: Any = None,
        timeout: float = 2.0,
        max_backoff: float = 1.0,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        """
        @param client: the treq-like HTTP client the L{EtcdClient} posts with.
        @param max_backoff: the longest wait between two re-reads while etcd
            is unreachable (waits double from 0.1 s).
        @param keep: versions of history kept under C{PREFIX/history/}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.etcd = EtcdClient(endpoints, client, reactor, timeout, reached=self._up, unreachable=self._down)
        self.endpoints = self.etcd.endpoints
        self.prefix = "/" + prefix.strip("/")
        self.config_key = self.key("config")
        self.keep = keep
        Notes.__init__(self)
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.current: Config | None = None
        self.mod_revision = 0
        self.revision = 0
        self.available = False
        self.error: str | None = "not connected yet"
        self.since = reactor.seconds()
        self._watchers: list[Callable[[Config], None]] = []
        self._status_watchers: list[Callable[[str], None]] = []
        self._watching = False
        self._stream: WatchStream | None = None
        self._pending: defer.Deferred | None = None
        self._retry: Any = None
        self._failures = 0
        self._closed = False
        self._saving: Config | None = None

    def key(self, name: str) -> str:
        """
        The full key of C{name} under this cluster's prefix.
        """
        return f"{self.prefix}/{name}"

    # Availability ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """
        What the admin API shows about the store.
        """
        return {
            "kind": self.kind,
            "available": self.available,
            "error": self.error,
            "since": self.since,
            "endpoints": list(self.endpoints),
            "prefix": self.prefix,
            "revision": self.revision,
            "watching": self._stream is not None,
        }

    def watch_status(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """
        Call C{callback(change)} when what the UI shows about the store
        changes: C{"available"} or C{"unavailable"} as etcd comes and goes,
        C{"nodes"} when a key under C{PREFIX/nodes/} changes (a node joined,
        left or its lease expired).

        @return: a callable that stops this watch.
        """
        self._status_watchers.append(callback)

        def unwatch() -> None:
            if callback in self._status_watchers:
                self._status_watchers.remove(callback)

        return unwatch

    def _status_changed(self, change: str) -> None:
        for callback in list(self._status_watchers):
            try:
                callback(change)
            except Exception:
                log.failure("store status watcher failed")

    def _up(self, endpoint: str) -> None:
        if not self.available:
            log.info("config store available: etcd at {endpoint}", endpoint=endpoint)
            self.available = True
            self.error = None
            self.since = self._reactor.seconds()
            self._status_changed("available")

    def _down(self, error: str) -> None:
        was_available = self.available
        if self.available or self.error != error:
            log.warn(
                "config store unavailable: {error}; proxying continues with config "
                "version {version}, changes are refused until etcd is back",
                error=error,
                version=self.current.version if self.current else None,
            )
        if self.available:
            self.since = self._reactor.seconds()
        self.available = False
        self.error = error
        if was_available:
            self._status_changed("unavailable")

    # Requests --------------------------------------------------------------

    def request(self, path: str, body: dict[str, Any]) -> Any:
        """
        POST C{body} to C{path} on the first etcd member that answers
        (L{EtcdClient.request}).
        """
        return self.etcd.request(path, body)

    # IConfigStore ------------------------------------------------------------

    @defer.inlineCallbacks
    def load(self) -> Any:
        """
        Read the config and, the first time, start watching from the
        revision read.
        """
        data = yield self.etcd.range(self.config_key)
        kvs = data.get("kvs") or []
        self._take(kvs[0] if kvs else None)
        self.revision = etcd_int(data.get("header", {}).get("revision"))
        if not self._watching and not self._closed:
            self._watching = True
            self._open_watch()
        return self.current

    def history_key(self, version: int) -> str:
        """
        The key of C{version}'s history entry.
        """
        return self.key(f"history/{version:0{_VERSION_DIGITS}d}")

    @defer.inlineCallbacks
    def save(self, config: Config, expected_version: int) -> Any:
        config = as_document(config)
        if self.current is not None and self.current.version != expected_version:
            raise VersionConflict(expected_version, self.current.version)
        key = b64(self.config_key)
        if self.mod_revision:
            compare = {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": str(self.mod_revision)}
        else:
            compare = {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        value = json.dumps(config.to_json(), sort_keys=True, separators=(",", ":"))
        change = self.pop_note(config.version)
        previous = self.current.to_json() if self.current is not None else None
        entry = make_entry(config.to_json(), config.version, self._reactor.seconds(), change, previous)
        success = [
            {"request_put": {"key": key, "value": b64(value)}},
            {"request_put": {"key": b64(self.history_key(config.version)),
                             "value": b64(json.dumps(entry.to_json(), separators=(",", ":")))}},
        ]
        oldest = config.version - self.keep + 1
        if oldest > 0:
            success.append({"request_delete_range": {
                "key": b64(self.history_key(0)), "range_end": b64(self.history_key(oldest)),
            }})
        self._saving = config
        try:
            data = yield self.etcd.request(
                "/v3/kv/txn",
                {
                    "compare": [compare],
                    "success": success,
                    "failure": [{"request_range": {"key": key}}],
                },
            )
        finally:
            self._saving = None
        if data.get("succeeded"):
            self.current = config
            self.mod_revision = etcd_int(data["header"]["revision"])
            return config
        responses = data.get("responses") or [{}]
        kvs = responses[0].get("response_range", {}).get("kvs") or []
        changed = self._take(kvs[0] if kvs else None)
        if changed:
            self._notify()
        raise VersionConflict(expected_version, self.current.version if self.current else 0)

    @defer.inlineCallbacks
    def history(self) -> Any:
        """
        @return: a Deferred firing with the kept L{Entry}s, newest first,
            as etcd holds them (written by every node).
        """
        start = self.key("history/")
        data = yield self.etcd.request("/v3/kv/range", {
            "key": b64(start), "range_end": b64(prefix_end(start)),
            "sort_order": "DESCEND", "sort_target": "KEY", "limit": str(self.keep),
        })
        entries = []
        for kv in data.get("kvs") or []:
            try:
                entries.append(Entry.from_json(json.loads(unb64(kv.get("value", "")))))
            except ValueError as e:
                log.warn("ignoring a damaged history entry {key}: {error}",
                         key=unb64(kv.get("key", "")).decode("utf-8", "replace"), error=e)
        return entries

    @defer.inlineCallbacks
    def entry(self, version: int) -> Any:
        """
        @return: a Deferred firing with C{(entry, previous)} of C{version}.
        """
        found = None
        for e in (yield self.history()):
            if found is not None:
                return found, e
            if e.version == version:
                found = e
        return found, None

    def watch(self, callback: Callable[[Config], None]) -> Callable[[], None]:
        """
        Call C{callback} with each config written by another node.  The
        stream itself starts with the first successful L{load}.
        """
        self._watchers.append(callback)

        def unwatch() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return unwatch

    def close(self) -> None:
        """
        Stop watching and retrying (on shutdown).
        """
        self._closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._pending is not None:
            self._pending.cancel()
        if self._stream is not None:
            self._stream.stop()
            self._stream = None

    # The stored document ---------------------------------------------------

    def _take(self, kv: dict[str, Any] | None) -> bool:
        """
        Adopt the config key's value if it is newer than what we know.

        @return: whether C{current} changed.
        """
        if kv is None:
            if self.mod_revision:
                log.warn("the config key {key} was deleted; keeping config in force", key=self.config_key)
            self.mod_revision = 0
            self.current = None
            return False
        mod = etcd_int(kv.get("mod_revision"))
        if mod <= self.mod_revision:
            return False
        try:
            config = parse_document(json.loads(unb64(kv.get("value", ""))))
        except (ValueError, ConfigError) as e:
            # Remember the revision so the next write still compares on it
            # and replaces the broken document.
            self.mod_revision = mod
            log.error(
                "ignoring invalid config at {key} (revision {rev}): {error}",
                key=self.config_key, rev=mod, error=e,
            )
            return False
        self.mod_revision = mod
        changed = config != self.current
        self.current = config
        return changed

    def _notify(self) -> None:
        for callback in list(self._watchers):
            try:
                callback(self.current)
            except Exception:
                log.failure("config watcher failed")
