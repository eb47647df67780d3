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
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from lbproxy.interfaces import IBalancer, IConnectionSession
from lbproxy.policy.pool import AccessRecord, Candidate
from lbproxy.relay.proxyprotocol import header
from lbproxy.relay.sockopts import keepalive_options


def socket_options(balancer: IBalancer) -> tuple[tuple[int, int, int], ...]:
    """
    @return: the C{setsockopt} triples every relayed socket gets, on both
        sides (TCP keepalive, so dead peers of idle connections are found).
    """
    return keepalive_options(balancer.settings.tcp_keepalive)


@implementer(IConnectionSession)
class ConnectionSession:
    """
    One client connection's decisions; see L{IConnectionSession}.

    @ivar attempt: the backend being connected to.
    @ivar backend: the backend once connected (C{None} before).
    @ivar since: when the current connect started, then (once connected)
        when the first-byte wait started.
    """

    __slots__ = (
        "balancer", "clock", "client", "connection", "started", "since", "tried",
        "attempt", "backend", "waiting", "outcome", "backend_outcome", "finished",
    )

    def __init__(self, balancer: IBalancer, clock: Any, client: tuple[str, int]) -> None:
        self.balancer = balancer
        self.clock = clock
        self.client = client
        self.connection: Any = None
        self.started = self.since = clock.seconds()
        self.tried: tuple[str, ...] = ()
        self.attempt: Candidate | None = None
        self.backend: Candidate | None = None
        self.waiting = False
        self.outcome: str | None = None
        self.backend_outcome: str | None = None
        self.finished = False

    @property
    def connect_timeout(self) -> float:
        return self.balancer.settings.connect_timeout

    # Events from the engine ---------------------------------------------------

    def accepted(self) -> Candidate | None:
        balancer = self.balancer
        if not balancer.admit():
            # Never admitted, so there is nothing to report at the end.
            self.outcome = "rejected"
            self.finished = True
            return None
        # _route, inlined: this runs for every connection.
        candidate = self.attempt = balancer.route(self.client, ())
        if candidate is None:
            self._give_up("no-backend")
            return None
        self.tried = (candidate.id,)
        return candidate

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
        if version:
            return header(version, self.client, connection.local_address())
        return None

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
        self.finished = True
        backend = self.backend
        client = self.client
        record = AccessRecord(
            client=f"{client[0]}:{client[1]}",
            backend=backend.id if backend is not None else None,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            duration=self.clock.seconds() - self.started,
            outcome=self.outcome or self.backend_outcome or "ok",
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

    def _route(self) -> Candidate | None:
        candidate = self.balancer.route(self.client, self.tried)
        if candidate is None:
            self._give_up("connect-failed" if self.tried else "no-backend")
            return None
        self.tried += (candidate.id,)
        self.attempt = candidate
        return candidate

    def _give_up(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
        self.ended(0, 0)
