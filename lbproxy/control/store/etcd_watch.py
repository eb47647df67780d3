"""
The etcd store's streaming watch: changes other nodes make reach this one
without polling, and none is missed when the watch breaks.

The watch covers the cluster's whole prefix from the revision last read.
When it breaks (etcd restarts, the watched revision was compacted, the
stream ends) the store re-reads the config key, delivers it if it changed
meanwhile, and watches again from the revision it read, retrying with
backoff while etcd cannot be reached.  Changes of node keys
(C{PREFIX/nodes/}) are passed on as a C{nodes} status change.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.control.store.etcd_client import (
    WatchStream,
    describe,
    etcd_int,
    etcd_message,
    prefix_end,
    unb64,
)
from lbproxy.model.errors import StoreError

log = Logger()


class ConfigWatch:
    """
    The watch of L{lbproxy.control.store.etcd.EtcdStore}, mixed into it: it
    uses the store's C{etcd}, C{prefix}, C{config_key}, C{revision},
    C{current}, C{max_backoff}, C{_closed}, C{_saving} and its C{_take},
    C{_notify}, C{_up}, C{_down} and C{_status_changed}, and keeps its own
    state in C{_pending}, C{_stream}, C{_retry} and C{_failures}.
    """

    def _open_watch(self) -> None:
        if self._closed:
            return
        start = self.prefix + "/"
        d = self._pending = self.etcd.watch(start, prefix_end(start), self.revision + 1)
        d.addCallback(self._watch_connected)
        d.addErrback(self._watch_failed)

    def _watch_connected(self, response: Any) -> None:
        self._pending = None
        self._stream = WatchStream(self._watch_message, self._watch_ended)
        response.deliverBody(self._stream)

    def _watch_failed(self, reason: Failure) -> None:
        self._pending = None
        if self._closed:
            return
        self._down(reason.getErrorMessage() if reason.check(StoreError) else describe(reason))
        self._schedule_resync()

    def _watch_message(self, message: dict[str, Any]) -> None:
        if "error" in message:
            self._restart_watch(f"watch error: {etcd_message(message['error'])}")
            return
        result = message.get("result", {})
        if result.get("canceled"):
            compacted = etcd_int(result.get("compact_revision"))
            if compacted:
                log.info(
                    "watch from revision {rev} was compacted (oldest kept {compacted}): re-reading",
                    rev=self.revision + 1, compacted=compacted,
                )
            self._restart_watch(f"watch canceled: {result.get('cancel_reason') or 'compacted'}")
            return
        if result.get("created"):
            self._failures = 0
            self._up(self.etcd.endpoint)
        changed = nodes = False
        for event in result.get("events") or []:
            kv = event.get("kv", {})
            self.revision = max(self.revision, etcd_int(kv.get("mod_revision")))
            key = unb64(kv.get("key", "")).decode("utf-8", "replace")
            if key != self.config_key:
                nodes = nodes or key.startswith(self.key("nodes/"))
                continue
            if event.get("type") == "DELETE":
                self._take(None)
            else:
                changed = self._take(kv) or changed
        if changed and self.current == self._saving:
            # Our own write, echoed before etcd answered the txn.
            changed = False
        if changed:
            log.info("config version {version} written elsewhere", version=self.current.version)
            self._notify()
        if nodes:
            self._status_changed("nodes")

    def _watch_ended(self, reason: Failure) -> None:
        self._stream = None
        if self._closed:
            return
        log.info("watch on {prefix} ended ({why}): re-reading", prefix=self.prefix, why=describe(reason))
        self._schedule_resync()

    def _restart_watch(self, why: str) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream = None
        log.info("{why}: re-reading and watching again", why=why)
        self._schedule_resync()

    def _schedule_resync(self) -> None:
        if self._closed or (self._retry is not None and self._retry.active()):
            return
        delay = backoffPolicy(0.1, self.max_backoff, 2.0, jitter=lambda: 0.0)(self._failures)
        self._failures += 1
        self._retry = self._reactor.callLater(delay, self._resync)

    def _resync(self) -> None:
        """
        Re-read the config (delivering it if it changed while we were not
        watching), then watch again from the revision read.
        """
        if self._closed:
            return
        d = self.etcd.range(self.config_key)

        def read(data: dict[str, Any]) -> None:
            kvs = data.get("kvs") or []
            if self._take(kvs[0] if kvs else None):
                log.info("resynced: config version {version}", version=self.current.version)
                self._notify()
            self.revision = etcd_int(data.get("header", {}).get("revision"))
            self._open_watch()

        def failed(reason: Failure) -> None:
            reason.trap(StoreError)
            self._schedule_resync()

        d.addCallbacks(read, failed)
        d.addErrback(lambda f: log.failure("resync failed", f))
