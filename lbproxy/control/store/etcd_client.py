"""
The one etcd v3 client of lbproxy: its JSON gateway (C{/v3/...}) over HTTP.

Used by the config store (L{lbproxy.control.store.etcd}) and by cluster
membership (L{lbproxy.control.cluster}), so both try the members the same
way and both tell the store whether etcd is reachable.  Keys and values are
base64; 64-bit integers arrive as strings; fields at their default value are
left out.  Each request goes to the member that answered last and moves on
to the next one when it gets no answer within C{timeout} or an error.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from lbproxy.model.errors import StoreError

__all__ = ["EtcdClient", "WatchStream", "b64", "unb64", "etcd_int", "prefix_end", "describe", "etcd_message"]


def b64(value: str | bytes) -> str:
    """
    Encode a key or value the way the gateway wants it.
    """
    if isinstance(value, str):
        value = value.encode("utf-8")
    return base64.b64encode(value).decode("ascii")


def etcd_int(value: Any) -> int:
    """
    A 64-bit integer of an answer (a string, or absent when it is 0).
    """
    return int(value) if value is not None else 0


def unb64(value: str) -> bytes:
    return base64.b64decode(value)


def prefix_end(prefix: str | bytes) -> bytes:
    """
    The C{range_end} that makes a range or watch cover every key starting
    with C{prefix} (the prefix with its last byte incremented).
    """
    key = bytearray(prefix.encode("utf-8") if isinstance(prefix, str) else prefix)
    while key:
        if key[-1] < 0xFF:
            key[-1] += 1
            return bytes(key)
        key.pop()
    return b"\0"


def describe(reason: Any) -> str:
    """
    Say in an operator's words why a request to etcd failed.
    """
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, (defer.CancelledError, defer.TimeoutError)):
        return "no answer in time"
    inner = getattr(reason, "reasons", None)
    if inner:
        return "; ".join(describe(r) for r in inner)
    return str(reason) or type(reason).__name__


def etcd_message(data: Any) -> str:
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or data)
    return str(data)


class _Refused(Exception):
    """
    A member answered with an error status.
    """


class WatchStream(Protocol):
    """
    Reads a streamed watch response: one JSON object per line.

    @ivar on_message: called with each decoded object.
    @ivar on_end: called with the reason once the stream ends.
    """

    def __init__(self, on_message: Callable[[dict], None], on_end: Callable[[Failure], None]) -> None:
        self.on_message = on_message
        self.on_end = on_end
        self._buffer = b""
        self.stopped = False

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while not self.stopped and b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip():
                try:
                    message = json.loads(line)
                except ValueError:
                    message = {"error": {"message": f"unreadable watch line {line[:80]!r}"}}
                self.on_message(message)

    def connectionLost(self, reason: Failure) -> None:
        self.on_end(reason)

    def stop(self) -> None:
        """
        Close the stream; C{on_end} is not called for a stream we stopped.
        """
        self.stopped = True
        self.on_end = lambda reason: None
        if self.transport is not None:
            self.transport.stopProducing()


def _default_http(reactor: Any) -> Any:
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    from lbproxy.health.probes import QuietEndpoints

    # A fresh connection per request: a pooled one may be dead after etcd
    # restarts, and the control path is far too slow for reuse to matter.
    # Quiet endpoints: each request (a lease keepalive every few seconds)
    # logged "Starting factory" and "Stopping factory" lines otherwise.
    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, QuietEndpoints(reactor), pool=pool))


def _nothing(*args: Any) -> None:
    pass


class EtcdClient:
    """
    @ivar endpoints: base URLs of the etcd members, tried in turn.
    @ivar current: the index of the member tried first.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        http: Any = None,
        reactor: Any = None,
        timeout: float = 2.0,
        reached: Callable[[str], None] = _nothing,
        unreachable: Callable[[str], None] = _nothing,
    ) -> None:
        """
        @param http: a treq-like client (C{post(url, json=..., unbuffered=...)});
            by default one on non-persistent connections.
        @param reached: called with the member's URL after each answer.
        @param unreachable: called with the reason when no member answered.
        """
        if reactor is None:
            from twisted.internet import reactor
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self._reactor = reactor
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self._http = http if http is not None else _default_http(reactor)
        self.timeout = timeout
        self.current = 0
        self.reached = reached
        self.unreachable = unreachable

    @property
    def endpoint(self) -> str:
        return self.endpoints[self.current]

    def _next_member(self) -> None:
        self.current = (self.current + 1) % len(self.endpoints)

    @defer.inlineCallbacks
    def request(self, path: str, body: dict[str, Any]) -> Any:
        """
        POST C{body} to C{path} on the first member that answers.

        @return: a Deferred firing with the decoded JSON answer.
        @raise StoreError: C{"config store unavailable: ..."} when no member
            answers, or when a member answers with an error.
        """
        errors = []
        for _ in self.endpoints:
            url = self.endpoint + path
            try:
                d = self._http.post(url, json=body)
                d.addTimeout(self.timeout, self._reactor)
                response = yield d
                data = yield response.json()
                if response.code != 200:
                    raise _Refused(f"HTTP {response.code}: {etcd_message(data)}")
            except Exception as e:
                errors.append(f"{self.endpoint}: {describe(e)}")
                self._next_member()
                continue
            self.reached(self.endpoint)
            return data
        self.unreachable("; ".join(errors))
        raise StoreError(f"config store unavailable: {'; '.join(errors)}")

    def watch(self, key: str | bytes, range_end: bytes, start_revision: int) -> defer.Deferred:
        """
        Open a streamed watch of C{[key, range_end)} from C{start_revision}
        on the current member; the caller reads the body with
        C{response.deliverBody(WatchStream(...))}.  A failed open moves to
        the next member.

        @return: a Deferred firing with the response, or failing with
            L{StoreError} naming the member and why.
        """
        body = {"create_request": {
            "key": b64(key), "range_end": b64(range_end), "start_revision": str(start_revision),
        }}
        member = self.endpoint
        d = self._http.post(member + "/v3/watch", json=body, unbuffered=True)
        d.addTimeout(self.timeout, self._reactor)

        def opened(response: Any) -> Any:
            if response.code != 200:
                raise _Refused(f"watch answered HTTP {response.code}")
            return response

        def failed(reason: Failure) -> Failure:
            if reason.check(defer.CancelledError):
                return reason
            self._next_member()
            return Failure(StoreError(f"{member}: {describe(reason)}"))

        return d.addCallback(opened).addErrback(failed)

    # The requests lbproxy makes --------------------------------------------

    def range(self, key: str, prefix: bool = False) -> defer.Deferred:
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        return self.request("/v3/kv/range", body)

    def put(self, key: str, value: str, lease: str | None = None) -> defer.Deferred:
        body = {"key": b64(key), "value": b64(value)}
        if lease is not None:
            body["lease"] = lease
        return self.request("/v3/kv/put", body)

    def grant(self, ttl: int) -> defer.Deferred:
        """
        @return: a Deferred firing with the new lease's id.
        """
        return self.request("/v3/lease/grant", {"TTL": str(ttl)}).addCallback(lambda a: a["ID"])

    def keepalive(self, lease: str) -> defer.Deferred:
        """
        @return: a Deferred firing with the lease's remaining TTL (0: it
            expired).
        """
        d = self.request("/v3/lease/keepalive", {"ID": lease})
        return d.addCallback(lambda a: int((a.get("result") or {}).get("TTL") or 0))

    def revoke(self, lease: str) -> defer.Deferred:
        return self.request("/v3/lease/revoke", {"ID": lease})
