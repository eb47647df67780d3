"""
Active health checks: one probe loop per backend, results to the balancer.

The policy (C{rise}/C{fall}, ejection, slow start) lives in
L{lbproxy.policy.pool.Pool}; this module only probes and reports
C{balancer.health_result(id, ok, reason)}.  Each backend is probed with its
effective check (its own, else the pool's) every C{interval} seconds, each
probe bounded by its own C{timeout}, so a slow backend never delays the
others.  Loops start spread over the interval (the k-th of n new loops
after C{k/n} of it) so checks of a large pool do not arrive at once.  The
checker follows config changes as an L{lbproxy.interfaces.IConfigObserver}
of the L{lbproxy.control.controller.ConfigController}: new backends get a loop, removed ones lose theirs (a result still in flight
is dropped), and changed check settings restart the loop.  Draining and
disabled backends are still probed, so their health is known the moment an
operator brings them back.

Probe kinds:
  - C{tcp}: the connect succeeds within the timeout.
  - C{http}: C{GET path} through treq answers a status in the range.
  - C{send-expect}: after sending C{send}, C{expect} appears in what the
    backend answers before the timeout.

When every backend is down (failed checks, ejected, draining or disabled)
lbproxy refuses new clients at once: L{lbproxy.policy.balancer.Balancer.route}
returns C{None}, the client connection is aborted without trying any
backend, and it is counted in C{totals.no_backend} (access log outcome
C{no-backend}).  We chose this over sending clients to the least-bad
backend because a fast refusal lets a client or an upstream balancer fail
over at once, whereas a connection to a backend known to be dead would
only hang until the connect timeout.
"""

from __future__ import annotations

import codecs
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.health.resolver import is_name
from lbproxy.interfaces import IConfigObserver
from lbproxy.model.checks import HealthCheck
from lbproxy.model.config import Backend

log = Logger()

__all__ = ["HealthChecker", "CheckFailed", "probe"]


class CheckFailed(Exception):
    """
    A probe got an answer, but not the one expected; the message says how.
    """


def _describe(failure: Failure, check: HealthCheck) -> str:
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


class _Loop:
    """
    The probe loop of one backend: a probe every C{interval}, each bounded
    by C{timeout}; one probe at a time.
    """

    def __init__(self, checker: "HealthChecker", backend: Backend, check: HealthCheck) -> None:
        self.checker = checker
        self.backend = backend
        self.check = check
        self.key = (backend.host, backend.port, check)
        self.running = False
        self.probes = 0
        self._timer: Any = None
        self._pending: defer.Deferred | None = None

    def start(self, offset: float) -> None:
        self.running = True
        self._timer = self.checker.reactor.callLater(offset, self._run)

    def stop(self) -> None:
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def _run(self) -> None:
        reactor = self.checker.reactor
        if self._pending is None:
            self.probes += 1
            d = probe(
                self.backend, self.check, reactor, self.checker.http_client, self.checker.endpoint,
                getattr(self.checker.balancer, "resolver", None),
            )
            d.addTimeout(self.check.timeout, reactor)
            self._pending = d
            d.addCallbacks(self._passed, self._failed, errbackArgs=(d,))
            d.addErrback(self._bug)
        if self.running:
            self._timer = reactor.callLater(self.check.interval, self._run)

    def _passed(self, note: str | None) -> None:
        self._pending = None
        if self.running:
            reason = f"check passed ({note})" if note else "check passed"
            self.checker.balancer.health_result(self.backend.id, True, reason)

    def _failed(self, failure: Failure, d: defer.Deferred) -> None:
        if self._pending is not d or not self.running:
            return None
        self._pending = None
        reason = f"check failed: {_describe(failure, self.check)}"
        self.checker.balancer.health_result(self.backend.id, False, reason)
        return None

    def _bug(self, failure: Failure) -> None:
        log.failure("health check of {backend} went wrong", failure, backend=self.backend.id)


def _default_endpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    from lbproxy.relay.twisted_engine import _endpoint

    return _endpoint(reactor, host, port, timeout)


@implementer(IConfigObserver)
class HealthChecker(Service):
    """
    Runs the active checks of a balancer's backends while the application
    runs, following the controller's applied configs while it runs.

    @ivar loops: backend id -> its probe loop, for the backends that have a
        check.
    """

    name = "health"

    def __init__(
        self,
        balancer: Any,
        reactor: Any = None,
        http_client: Any = None,
        endpoint: Callable[[Any, str, int, float], Any] = _default_endpoint,
        controller: Any = None,
    ) -> None:
        """
        @param balancer: the L{lbproxy.policy.balancer.Balancer} whose backends to
            check and whose C{health_result} takes the results.
        @param http_client: a treq C{HTTPClient} (or C{StubTreq}) for HTTP
            checks; by default one on non-persistent connections.
        @param endpoint: C{endpoint(reactor, host, port, timeout)} making a
            client endpoint for TCP and send/expect checks.
        @param controller: what to L{observe<lbproxy.control.controller.ConfigController.observe>}
            while running; without one the checks follow only the config
            in force at start (and explicit L{reconcile} calls).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.balancer = balancer
        self.reactor = reactor
        self._http_client = http_client
        self.endpoint = endpoint
        self.controller = controller
        self.loops: dict[str, _Loop] = {}
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def http_client(self) -> Any:
        if self._http_client is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            pool = HTTPConnectionPool(self.reactor, persistent=False)
            self._http_client = HTTPClient(
                Agent.usingEndpointFactory(self.reactor, _QuietEndpoints(self.reactor), pool=pool)
            )
        return self._http_client

    def startService(self) -> None:
        super().startService()
        if self.controller is not None:
            self._unsubscribe = self.controller.observe(self)
        self.reconcile()

    def stopService(self) -> Any:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for loop in self.loops.values():
            loop.stop()
        self.loops.clear()
        return super().stopService()

    def applied(self, old: Any, new: Any) -> None:
        if self.running:
            self.reconcile()

    def reconcile(self) -> None:
        """
        Make the loops match the balancer's config: stop those of removed
        backends or changed settings, start the missing ones spread over
        their interval.
        """
        config = self.balancer.config
        wanted: dict[str, tuple[Backend, HealthCheck]] = {}
        for b in config.backends:
            check = config.check_for(b)
            if check is not None:
                wanted[b.id] = (b, check)
        for bid, loop in tuple(self.loops.items()):
            want = wanted.get(bid)
            if want is None or (want[0].host, want[0].port, want[1]) != loop.key:
                loop.stop()
                del self.loops[bid]
        new = [bid for bid in wanted if bid not in self.loops]
        for k, bid in enumerate(new):
            backend, check = wanted[bid]
            loop = self.loops[bid] = _Loop(self, backend, check)
            loop.start(check.interval * k / len(new))


def decode_escapes(value: str, flag: str) -> str:
    """
    Turn backslash escapes of a command-line string (C{\\r\\n}, C{\\x00})
    into the characters they stand for.

    @raise ValueError: for a malformed escape, naming C{flag}.
    """
    try:
        return codecs.escape_decode(value.encode("utf-8"))[0].decode("utf-8")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{flag} {value!r} has a malformed escape: {e}") from None


#: Command-line flags of the pool-wide check, by L{HealthCheck} field.
CHECK_FLAGS = {
    "interval": "--check-interval",
    "timeout": "--check-timeout",
    "rise": "--rise",
    "fall": "--fall",
    "path": "--check-path",
    "status": "--check-status",
    "send": "--check-send",
    "expect": "--check-expect",
}
#: The flags only one check type reads, and that type.
_TYPED_FLAGS = {"path": "http", "status": "http", "send": "send-expect", "expect": "send-expect"}
OUTLIER_FLAGS = {
    "consecutive_failures": "--outlier-failures",
    "base_ejection": "--outlier-ejection",
    "max_ejection": "--outlier-max-ejection",
    "max_ejection_percent": "--outlier-max-percent",
}
_CASTS = {
    "interval": float, "timeout": float, "rise": int, "fall": int,
    "consecutive_failures": int, "base_ejection": float, "max_ejection": float,
    "max_ejection_percent": int, "slow_start": float, "drain_timeout": float,
}
#: What the messages of L{lbproxy.model.parse.parse_settings} call each
#: command-line value ("cli.health_check.interval"), and its flag.
_FLAG_NAMES = {
    **{f"cli.health_check.{name}": flag for name, flag in CHECK_FLAGS.items()},
    "cli.health_check.type": "--check",
    "cli.health_check": "--check",
    **{f"cli.outlier.{name}": flag for name, flag in OUTLIER_FLAGS.items()},
    "cli.outlier": "the outlier flags",
    "cli.slow_start": "--slow-start",
    "cli.drain_timeout": "--drain-timeout",
    "cli": "the command line",
}


def _flag_message(message: str) -> str:
    for name in sorted(_FLAG_NAMES, key=len, reverse=True):
        message = message.replace(name, _FLAG_NAMES[name])
    return message


def _cast(name: str, flag: str, value: str) -> Any:
    from twisted.python import usage

    caster = _CASTS.get(name)
    if caster is None:
        return value
    try:
        return caster(value)
    except ValueError:
        kind = "an integer" if caster is int else "a number"
        raise usage.UsageError(f"{flag} must be {kind}, not {value!r}") from None


def settings_from_options(options: Any) -> dict[str, Any]:
    """
    The pool-wide lifecycle settings of the command line, as L{Config}
    fields (C{health_check}, C{outlier}, C{slow_start}, C{drain_timeout}),
    validated by the same schema and parser as the API.  Without C{--check}
    the pool gets L{lbproxy.model.checks.DEFAULT_HEALTH_CHECK} (tcp; the
    interval and rise/fall flags still apply to it); C{--check none} turns
    active checks off.

    @param options: the parsed C{Options} mapping.
    @raise twisted.python.usage.UsageError: for any invalid value, in one
        line naming its flag; nothing is applied then.
    """
    from twisted.python import usage

    from lbproxy.model.checks import DEFAULT_HEALTH_CHECK
    from lbproxy.model.errors import ConfigError
    from lbproxy.model.parse import parse_settings
    from lbproxy.model.schema import CHECK_TYPES

    def given(flags: dict[str, str]) -> dict[str, Any]:
        return {
            name: _cast(name, flag, options[flag[2:]])
            for name, flag in flags.items()
            if options.get(flag[2:]) is not None
        }

    check = given(CHECK_FLAGS)
    for name in ("send", "expect"):
        if name in check:
            try:
                check[name] = decode_escapes(check[name], CHECK_FLAGS[name])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
    kind = options.get("check")
    if kind == "none":
        if check:
            raise usage.UsageError(f"{CHECK_FLAGS[next(iter(check))]} makes no sense with --check none")
    elif kind is None:
        # The default check is tcp: a flag only http or send-expect reads
        # means the operator wanted one of those.
        for name, needs in _TYPED_FLAGS.items():
            if name in check:
                raise usage.UsageError(
                    f"{CHECK_FLAGS[name]} needs --check {needs} (the default check is {DEFAULT_HEALTH_CHECK.type})"
                )
        kind = DEFAULT_HEALTH_CHECK.type
    elif kind not in CHECK_TYPES:
        raise usage.UsageError(f"--check must be one of {', '.join(CHECK_TYPES)} or none, not {kind!r}")
    outlier = given(OUTLIER_FLAGS)
    lifecycle = given({"slow_start": "--slow-start", "drain_timeout": "--drain-timeout"})
    raw: dict[str, Any] = {
        "health_check": None if kind == "none" else {"type": kind, **check},
        "outlier": None if outlier.get("consecutive_failures") == 0 else outlier,
        "slow_start": 0.0,
        "drain_timeout": None,
        **lifecycle,
    }
    try:
        return parse_settings(raw, "cli")
    except ConfigError as e:
        raise usage.UsageError(_flag_message(str(e))) from None


class _QuietEndpoints:
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
