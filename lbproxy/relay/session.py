"""
The connection session: every decision about one client connection, with
no sockets (in the spirit of magic-wormhole's C{TransitServerState}).

Both relay engines drive it the same way: they report what happened
(accepted, connected, connect failed, first backend byte, a reset, the
end) and do what the answer says.  Admission, routing with retries that
exclude tried backends, the connect timeout, the PROXY header, first-byte
timing, reset attribution, the access record's outcome and whether the
balancer hears C{connection_closed} or C{client_failed} are decided here
once; the engines only move bytes.

The answers are plain values rather than action objects, since a session
runs on the fast engine's hot path: a L{Candidate} is "connect to it",
C{None} is "close the client" (the session has then reported the end
already), bytes from L{ConnectionSession.connected} are "send this
first".

A listener whose route needs it (L{IListenerRoute.routes_by_sni}, or a
trusted source of PROXY headers) first has the engine read the client's
opening bytes: L{ConnectionSession.accepted} then answers a L{ReadFirst}
and the engine hands what it reads to L{ConnectionSession.client_bytes}
until the answer is a backend or C{None}.  Every byte read is replayed to
the backend, after lbproxy's own PROXY header.  An ordinary listener
never gets a L{ReadFirst}: no read, no timer (server-speaks-first
protocols keep working).
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from lbproxy.interfaces import IBalancer, IConnectionSession
from lbproxy.policy.limits import QUEUE, QUEUE_FULL
from lbproxy.policy.pool import AccessRecord, Candidate
from lbproxy.relay.first_bytes import FIRST_READ_MAX, FirstBytes, ReadFirst
from lbproxy.relay.proxyprotocol import header
from lbproxy.relay.sockopts import route_options, service_options, socket_options

__all__ = [
    "FIRST_READ_MAX", "ConnectionSession", "ReadFirst", "Wait", "route_options",
    "service_options", "socket_options",
]


def handshake_admitted(route: Any, limit: Any) -> bool:
    """
    Whether a TLS client accepted on C{route} may begin its handshake
    under the process's C{--max-connections} (C{limit}, a
    L{lbproxy.policy.limits.ProcessLimit}, or C{None}: no limit).  A
    refusal is counted on the route as C{rejected}, as one the balancer
    makes; the engine then closes the socket.  Both engines ask it at the
    accept, before any TLS byte.
    """
    if limit is None or limit.begin_handshake():
        return True
    route.refused("rejected")
    return False


class Wait:
    """
    The answer "every backend is full: keep the client, read none of its
    bytes, and wait".  The engine sets C{notify}, a callable the session
    calls once with what to do then: a L{Candidate} (connect to it) or
    C{None} (close the client: the queue timeout, or no backend left).
    """

    __slots__ = ("notify",)

    def __init__(self) -> None:
        self.notify: Any = None



@implementer(IConnectionSession)
class ConnectionSession(FirstBytes):
    """
    One client connection's decisions; see L{IConnectionSession}.

    @ivar route: the L{IListenerRoute} in force when the client came.
    @ivar balancer: the chosen service's L{IBalancer} (C{None} before).
    @ivar attempt: the backend being connected to.
    @ivar backend: the backend once connected (C{None} before).
    @ivar since: when the current connect started, then (once connected)
        when the first-byte wait started.
    @ivar phase: while reading the first bytes: C{"proxy"} (a trusted
        source's header), then C{"sni"}; C{"untrusted"}: SNI from a
        source whose PROXY header would be refused.
    @ivar first: the first bytes read so far (replayed to the backend).
    """

    __slots__ = (
        "route", "balancer", "clock", "client", "local", "connection", "started", "since",
        "tried", "attempt", "backend", "waiting", "outcome", "backend_outcome", "finished",
        "phase", "first", "deadline", "held", "wait", "connect_timeout",
    )

    def __init__(self, route: Any, clock: Any, client: tuple[str, int]) -> None:
        self.route = route
        self.balancer: Any = None
        self.clock = clock
        self.client = client
        self.local: tuple[str, int] | None = None
        self.connection: Any = None
        self.started = self.since = clock.seconds()
        self.tried: tuple[str, ...] = ()
        self.attempt: Candidate | None = None
        self.backend: Candidate | None = None
        self.waiting = False
        self.outcome: str | None = None
        self.backend_outcome: str | None = None
        self.finished = False
        self.first = b""
        #: the client's entry in its service's client table, if counted.
        self.held: Any = None
        self.wait: Wait | None = None
        #: the chosen service's connect timeout (a plain attribute, set
        #: when the service is chosen: read once per connect).
        self.connect_timeout = 0.0

    @property
    def resolver(self) -> Any:
        """
        The chosen service's resolver of backend host names (C{None}: the
        engine's own).
        """
        return getattr(self.balancer, "resolver", None)

    def socket_options(self, listener: tuple) -> tuple[tuple, tuple | None]:
        """
        The keepalive options of this connection's service: see
        L{service_options}.
        """
        return service_options(self.balancer, listener)

    def wants_keepalive(self, listener: tuple) -> bool:
        """
        Whether either socket gets keepalive options (from the listener or
        the chosen service), so that the engine sets them once the
        connection outlives its connect timeout.
        """
        return bool(listener) or bool(self.balancer is not None and self.balancer.settings.tcp_keepalive)

    # Events from the engine ---------------------------------------------------

    def accepted(self) -> Candidate | ReadFirst | None:
        route = self.route
        if route.routes_by_sni or route.accept_proxy:
            return self._read_first(route)
        return self._admit(route.default())

    def connecting(self) -> None:
        self.since = self.clock.seconds()

    def connected(self, connection: Any) -> bytes | None:
        now = self.clock.seconds()
        candidate = self.backend = self.attempt
        self.connection = connection
        self.balancer.connection_opened(candidate, connection, now - self.since)
        self.since = now
        self.waiting = True
        version = candidate.backend.proxy_protocol
        replay = self.first
        if version:
            data = header(version, self.client, self.local or connection.local_address())
            return data + replay if replay else data
        return replay or None

    def connect_failed(self, reason: str) -> Candidate | None:
        if self.finished:
            return None
        candidate, self.attempt = self.attempt, None
        balancer = self.balancer
        balancer.connect_failed(candidate, reason)
        if len(self.tried) > balancer.settings.retries:
            self._give_up("connect-failed")
            return None
        balancer.retried()
        self.since = self.clock.seconds()
        return self._route()

    def resume(self, candidate: Candidate | None) -> None:
        """
        The balancer's queue hands this waiting session a backend (or
        C{None}: none is left); the engine hears it through L{Wait.notify}.
        """
        wait, self.wait = self.wait, None
        if candidate is None:
            self._give_up("connect-failed" if self.tried else "no-backend")
        else:
            self.attempt = candidate
            self.tried += (candidate.id,)
            self.since = self.clock.seconds()
        if wait is not None and wait.notify is not None:
            wait.notify(candidate)

    def queue_timed_out(self) -> None:
        """
        The wait passed the service's queue_timeout: close the client.
        """
        wait, self.wait = self.wait, None
        self._give_up("queue-timeout")
        if wait is not None and wait.notify is not None:
            wait.notify(None)

    def first_response(self) -> None:
        if self.waiting:
            self.waiting = False
            self.balancer.observe_response(self.backend, self.clock.seconds() - self.since)

    def client_reset(self) -> None:
        if self.outcome is None:
            self.outcome = "client-reset"

    def backend_reset(self, reason: str) -> None:
        self.backend_outcome = "backend-reset"
        if self.outcome is None and self.backend is not None and not self.finished:
            # Not our abort nor the client's: passive health counts it.
            self.balancer.connection_reset(self.backend, reason)

    def closing(self, why: str) -> None:
        if self.outcome is None:
            self.outcome = why

    def ended(self, bytes_up: int, bytes_down: int) -> AccessRecord | None:
        if self.finished:
            return None
        if self.balancer is None:
            # Gone while its first bytes were read: no service to tell.
            self._refuse(self.outcome or "client-closed")
            return None
        self.finished = True
        if self.held is not None:
            self.held.release()
            self.held = None
        backend = self.backend
        if backend is None and self.attempt is not None:
            self.balancer.connect_abandoned(self.attempt)
        if backend is not None:
            bytes_up += len(self.first)
        client = self.client
        record = AccessRecord(
            client=f"{client[0]}:{client[1]}",
            backend=backend.id if backend is not None else None,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            duration=self.clock.seconds() - self.started,
            outcome=self.outcome or self.backend_outcome or "ok",
            subject=getattr(client, "subject", None),
        )
        if backend is None:
            self.balancer.client_failed(record)
        else:
            connection = self.connection
            # The engine's connection refers to its session: break the
            # cycle so both are freed now, not by the cyclic collector.
            self.connection = None
            self.balancer.connection_closed(backend, connection, record)
        return record

    # Internals ----------------------------------------------------------------

    def _admit(self, balancer: IBalancer) -> Candidate | None:
        self.balancer = balancer
        if balancer is None:
            return self._refuse("no-service")
        self.connect_timeout = balancer.settings.connect_timeout
        traffic = balancer.traffic
        if traffic is not None:
            # Access lists and per-client limits, on the real client
            # address (after a PROXY header), before a backend is chosen.
            held = traffic.admit(self.client[0])
            if held is not None:
                if held.__class__ is str:
                    self.outcome = held
                    self.finished = True
                    return None
                self.held = held
        if not balancer.admit():
            # Never admitted, so there is nothing to report at the end.
            self.outcome = "rejected"
            self.finished = True
            if self.held is not None:
                self.held.release()
                self.held = None
            return None
        candidate = self.attempt = balancer.route(self.client, ())
        if candidate is None:
            self._give_up("no-backend")
            return None
        if candidate is QUEUE:
            self.attempt = None
            return self._queue()
        self.tried = (candidate.id,)
        return candidate

    def _queue(self) -> Wait | None:
        if not self.balancer.enqueue(self):
            self._give_up(QUEUE_FULL)
            return None
        wait = self.wait = Wait()
        return wait

    def _refuse(self, reason: str) -> None:
        if self.outcome is None:
            self.outcome = reason
        self.finished = True
        self.route.refused(reason)
        return None

    def _route(self) -> Candidate | None:
        candidate = self.balancer.route(self.client, self.tried)
        if candidate is None:
            self._give_up("connect-failed" if self.tried else "no-backend")
            return None
        if candidate is QUEUE:
            return self._queue()
        self.tried += (candidate.id,)
        self.attempt = candidate
        return candidate

    def _give_up(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
        self.ended(0, 0)

