"""
The probes of an active health check, one per kind:

  - C{tcp}: the connect succeeds within the timeout.
  - C{http}: C{GET path} through treq answers a status in the range.
  - C{send-expect}: after sending C{send}, C{expect} appears in what the
    backend answers before the timeout.

L{probe} runs one probe and says why it failed in an operator's words
(L{describe_failure}); the scheduling, bounds and reporting are
L{lbproxy.health.checker}'s.  Probes connect quietly: no "Starting
factory" line per check.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, error
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from lbproxy.health.resolver import is_name
from lbproxy.model.checks import HealthCheck
from lbproxy.model.config import Backend

__all__ = ["CheckFailed", "probe", "describe_failure", "default_endpoint", "QuietEndpoints"]


class CheckFailed(Exception):
    """
    A probe got an answer, but not the one expected; the message says how.
    """


def describe_failure(failure: Failure, check: HealthCheck) -> str:
    """
    Say in an operator's words why a probe failed.
    """
    from twisted.web.client import ResponseFailed, ResponseNeverReceived

    if failure.check(ResponseNeverReceived, ResponseFailed) and failure.value.reasons:
        failure = failure.value.reasons[0]
    if failure.check(CheckFailed):
        return str(failure.value)
    if failure.check(
        defer.TimeoutError, error.TimeoutError, defer.CancelledError, error.ConnectingCancelledError
    ):
        return f"timeout after {check.timeout}s"
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return f"host name lookup failed: {failure.getErrorMessage()}"
    if failure.check(error.ConnectionDone, error.ConnectionLost):
        return "connection closed"
    text = failure.getErrorMessage() or failure.type.__name__
    return text.strip().rstrip(".") or failure.type.__name__


class _Connected(Protocol):
    """
    A TCP check's connection: success is the connect itself; close at once.
    """

    def connectionMade(self) -> None:
        self.transport.loseConnection()


class _SendExpect(Protocol):
    """
    Send C{send}, then succeed once C{expect} has arrived; fail if the
    backend closes first.  Keeps only the tail of the answer that could
    still be the start of C{expect}.
    """

    def __init__(self, send: bytes, expect: bytes) -> None:
        self._send = send
        self._expect = expect
        self._tail = b""
        self.done: defer.Deferred[None] = defer.Deferred(self._cancel)

    def _cancel(self, d: defer.Deferred) -> None:
        self.transport.abortConnection()

    def connectionMade(self) -> None:
        if self._send:
            self.transport.write(self._send)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        seen = self._tail + data
        if self._expect in seen:
            self.transport.loseConnection()
            self.done.callback(None)
            return
        self._tail = seen[-(len(self._expect) - 1):] if len(self._expect) > 1 else b""

    def connectionLost(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(
                CheckFailed(f"connection closed before {self._expect.decode('utf-8', 'replace')!r} arrived")
            )


def _discard(data: bytes) -> None:
    pass


@defer.inlineCallbacks
def probe(
    backend: Backend,
    check: HealthCheck,
    reactor: Any,
    http_client: Any,
    endpoint: Callable[[Any, str, int, float], Any],
    resolver: Any = None,
) -> Any:
    """
    Probe C{backend} once, without a timeout of its own (the caller bounds
    it and cancels it).  A backend given by host name is probed at the
    address C{resolver} has for it (the last good lookup), so a DNS
    failure alone never fails a check.

    @return: a Deferred that fires with C{None} if the backend passed (or
        the resolver's note that its address is from an older lookup), or
        fails with the reason it did not.
    """
    host, note = backend.host, None
    if resolver is not None and is_name(host):
        family, sockaddr = yield resolver.resolve(host, backend.port)
        host, note = sockaddr[0], resolver.note(backend.host)
    if check.type == "http":
        where = f"[{host}]:{backend.port}" if ":" in host else f"{host}:{backend.port}"
        headers = {"Host": [backend.address]} if host != backend.host else None
        response = yield http_client.get(f"http://{where}{check.path}", headers=headers, allow_redirects=False)
        code = response.code
        yield response.collect(_discard)
        low, high = check.status
        if not low <= code <= high:
            raise CheckFailed(f"HTTP {code} (expected {low}-{high})")
        return note
    point = endpoint(reactor, host, backend.port, check.timeout)
    if check.type == "tcp":
        yield point.connect(_QuietFactory.forProtocol(_Connected))
        return note
    proto = _SendExpect(check.send.encode("utf-8"), check.expect.encode("utf-8"))
    yield point.connect(_QuietFactory.forProtocol(lambda: proto))
    yield proto.done
    return note


class _QuietFactory(Factory):
    """
    A probe's factory: without C{noisy = False} every check logs two
    "Starting/Stopping factory" lines.
    """

    noisy = False


def default_endpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    from lbproxy.relay.backend_endpoint import backend_endpoint

    return backend_endpoint(reactor, host, port, timeout)


class QuietEndpoints:
    """
    Plain-HTTP endpoints for the checks' agent whose connection factories
    do not log "Starting factory" for every probe (public API: an
    C{IAgentEndpointFactory} instead of the pool's private factory class).
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint

        endpoint = HostnameEndpoint(self.reactor, uri.host, uri.port)

        class _Quiet:
            def connect(self, factory: Any) -> Any:
                factory.noisy = False
                return endpoint.connect(factory)

        return _Quiet()
