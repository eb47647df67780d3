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

The probe kinds (tcp, http, send-expect) are L{lbproxy.health.probes};
the command line's check flags are read by L{lbproxy.health.flags}.

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

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.health.probes import QuietEndpoints, default_endpoint, describe_failure, probe
from lbproxy.interfaces import IConfigObserver
from lbproxy.model.checks import HealthCheck
from lbproxy.model.config import Backend

log = Logger()

__all__ = ["HealthChecker", "HealthCheckers"]


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
        reason = f"check failed: {describe_failure(failure, self.check)}"
        self.checker.balancer.health_result(self.backend.id, False, reason)
        return None

    def _bug(self, failure: Failure) -> None:
        log.failure("health check of {backend} went wrong", failure, backend=self.backend.id)


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
        endpoint: Callable[[Any, str, int, float], Any] = default_endpoint,
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
                Agent.usingEndpointFactory(self.reactor, QuietEndpoints(self.reactor), pool=pool)
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


class HealthCheckers(Service):
    """
    One L{lbproxy.health.checker.HealthChecker} per service, following the
    document: a new service's checks start, a removed one's stop.

    @ivar checkers: service name -> its checker.
    """

    name = "health"

    def __init__(self, table: Any, controller: Any, reactor: Any) -> None:
        self.table = table
        self.controller = controller
        self.reactor = reactor
        self.checkers: dict[str, Any] = {}
        self._unobserve: Any = None

    def startService(self) -> None:
        super().startService()
        self._unobserve = self.controller.observe(self)
        self.applied(None, self.table.document)

    def stopService(self) -> Any:
        if self._unobserve is not None:
            self._unobserve()
        for checker in self.checkers.values():
            checker.stopService()
        self.checkers.clear()
        return super().stopService()

    def applied(self, old: Any, new: Any) -> None:
        for name, checker in tuple(self.checkers.items()):
            if checker.balancer is not self.table.balancer(name):
                checker.stopService()
                del self.checkers[name]
        for name, balancer in self.table.balancers.items():
            checker = self.checkers.get(name)
            if checker is None:
                checker = self.checkers[name] = HealthChecker(balancer, self.reactor)
                checker.startService()
            else:
                checker.reconcile()
