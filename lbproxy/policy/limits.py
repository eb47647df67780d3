"""
Traffic control of one service, with no I/O: access lists, limits per
client and the queue at maxconn.

The session asks before a backend is chosen (L{Traffic.admit}); the
balancer holds one L{Traffic} per service and replaces its L{Rules} (an
immutable snapshot compiled once per config) when the config changes,
while the client table and the queue live on.  A service with no rules
pays one attribute test per connection (C{balancer.traffic is None}).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.logger import Logger

from lbproxy.policy.rules import (  # noqa: F401 (re-exported: the balancer, tests)
    CLIENT_CONNECTIONS,
    CLIENT_RATE,
    DENIED,
    MAX_ENTRIES,
    NOT_ALLOWED,
    ClientTable,
    Entry,
    Networks,
    Rules,
    parse_address,
)

log = Logger()

#: Reasons a connection is refused by traffic control (the first four
#: are L{lbproxy.policy.rules}').
QUEUE_FULL = "queue-full"
QUEUE_TIMEOUT = "queue-timeout"
REASONS = (DENIED, NOT_ALLOWED, CLIENT_CONNECTIONS, CLIENT_RATE, QUEUE_FULL, QUEUE_TIMEOUT)

#: What L{lbproxy.policy.balancer.Balancer.route} answers when every
#: eligible backend is at its max_connections and the service has a queue.
QUEUE = "queue"

#: Seconds between two log lines of one refusal reason.
LOG_INTERVAL = 10.0


class RefusalLog:
    """
    Counts refusals by reason and logs them at a bounded rate: the first
    of a reason at once, then at most one line per reason per
    C{interval} seconds, with the count since the last line.
    """

    def __init__(self, service: str, interval: float = LOG_INTERVAL) -> None:
        self.service = service
        self.interval = interval
        self.counts: dict[str, int] = {}
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}

    def refused(self, reason: str, client: str, now: float) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        last = self._logged_at.get(reason)
        if last is None or now - last >= self.interval:
            self._log(reason, now, client)

    def flush(self, now: float) -> None:
        """
        Log the counts whose interval has passed (the balancer's tick).
        """
        for reason, n in tuple(self._unlogged.items()):
            if n and now - self._logged_at.get(reason, 0.0) >= self.interval:
                self._log(reason, now, None)

    def _log(self, reason: str, now: float, client: str | None) -> None:
        n = self._unlogged.pop(reason, 0)
        self._logged_at[reason] = now
        log.info(
            "service {service}: refused {n} connection(s) ({reason}){last}",
            service=self.service, n=n, reason=reason,
            last=f", last from {client}" if client else "",
        )


class WaitQueue:
    """
    The FIFO of sessions waiting for a backend, bounded by C{max_queue};
    one timer, for the oldest, expires waits past C{queue_timeout} (the
    timeout is one setting, so arrival order is deadline order).
    """

    def __init__(self, clock: Any, expired: Callable[[Any], None]) -> None:
        self.clock = clock
        self._expired = expired
        self.waiting: deque[tuple[float, Any]] = deque()
        self.longest = 0.0
        self.served = 0
        self._timer: Any = None
        self._timeout = 0.0
        #: when the session L{pop} last returned began to wait.
        self.last_since = 0.0

    def __len__(self) -> int:
        return len(self.waiting)

    def push(self, session: Any, timeout: float) -> None:
        now = self.clock.seconds()
        self._timeout = timeout
        self.waiting.append((now, session))
        if self._timer is None:
            self._arm(now + timeout)

    def pop(self) -> Any:
        """
        @return: the oldest waiting session, or C{None}.
        """
        waiting = self.waiting
        while waiting:
            since, session = waiting.popleft()
            if session.finished:
                continue
            self.last_since = since
            self._waited(self.clock.seconds() - since)
            self.served += 1
            return session
        return None

    def push_front(self, session: Any, since: float) -> None:
        self.waiting.appendleft((since, session))

    def wait_now(self) -> float:
        """
        @return: how long the oldest waiting client has waited.
        """
        if not self.waiting:
            return 0.0
        return self.clock.seconds() - self.waiting[0][0]

    def longest_wait(self) -> float:
        return max(self.longest, self.wait_now())

    def clear(self) -> list[Any]:
        out = [session for _, session in self.waiting]
        self.waiting.clear()
        self._cancel()
        return out

    def _waited(self, seconds: float) -> None:
        if seconds > self.longest:
            self.longest = seconds

    def _arm(self, when: float) -> None:
        self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._expire)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        waiting = self.waiting
        timeout = self._timeout
        while waiting and now - waiting[0][0] >= timeout:
            since, session = waiting.popleft()
            if not session.finished:
                self._waited(now - since)
                self._expired(session)
        if waiting:
            self._arm(waiting[0][0] + timeout)


class ProcessLimit:
    """
    The command line's C{--max-connections}, over every service of the
    process (each service's own C{max_connections} limits it alone).

    A client of a TLS listener is admitted once its handshake is done, but
    holds a socket from its accept: handshakes in progress count against
    the limit with the admitted connections (L{begin_handshake},
    L{end_handshake}, called by both engines), so clients that open TLS
    connections and never finish them cannot hold more sockets than it
    allows.

    @ivar active: connections admitted and not yet finished.
    @ivar handshaking: TLS handshakes begun and not yet ended.
    """

    __slots__ = ("limit", "active", "handshaking")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.handshaking = 0

    def begin_handshake(self) -> bool:
        """
        A TLS client was accepted and is about to start its handshake.

        @return: whether the limit leaves room for it (then it counts until
            L{end_handshake}); if not, the caller closes it at once (a
            C{rejected} refusal).
        """
        if self.active + self.handshaking >= self.limit:
            return False
        self.handshaking += 1
        return True

    def end_handshake(self) -> None:
        """
        A handshake L{begin_handshake} let start is over (done, failed, timed
        out or closed): call it before the client is admitted, so that its
        own handshake does not count against it.
        """
        self.handshaking -= 1


class Traffic:
    """
    A service's traffic control: the L{Rules} in force, the client table,
    the refusal counts and the wait queue.

    In the parent of C{--workers} (which relays nothing) it also holds what
    each worker reports of its own (L{report}, L{take_report}): counts are
    added up (a worker's refusals stay counted after it exits), levels
    (queue length, wait, table entries) are kept per worker and summed, so
    L{view} and the metrics show the whole process group.
    """

    def __init__(self, config: Any, clock: Any, expired: Callable[[Any], None]) -> None:
        self.clock = clock
        self.rules = Rules(config)
        self.clients = ClientTable()
        self.refusals = RefusalLog(config.name)
        self.queue = WaitQueue(clock, expired)
        #: relay -> its last L{report}; its levels count while it is here.
        self.elsewhere: dict[Any, dict[str, Any]] = {}

    def apply(self, config: Any) -> None:
        """
        Swap in a new config's rules; a new prefix length starts a new
        client table (entries of the old one still release into it).
        """
        old = self.rules.limits
        self.rules = rules = Rules(config)
        self.refusals.service = config.name
        new = rules.limits
        if old is not None and new is not None and (
            (old.prefix_v4, old.prefix_v6) != (new.prefix_v4, new.prefix_v6)
        ):
            self.clients = ClientTable(self.clients.max_entries)

    def admit(self, host: str) -> Any:
        """
        Check a new client against the access lists and its limits.

        @return: C{None} (admitted, nothing to release), an L{Entry} of the
            client table (admitted; L{Entry.release} it at the end), or the
            refusal reason (a C{str}).
        """
        rules = self.rules
        verdict = rules.seen.get(host)
        if verdict is None:
            verdict = rules.classify(host)
        if verdict is True:
            return None
        if verdict.__class__ is str:
            return self.refuse(verdict, host)
        found = self.clients.acquire(verdict, rules, self.clock.seconds())
        if found.__class__ is str:
            return self.refuse(found, host)
        return found

    def refuse(self, reason: str, host: str) -> str:
        self.refusals.refused(reason, host, self.clock.seconds())
        return reason

    def queue_length(self) -> int:
        return len(self.queue) + sum(r["queued"] for r in self.elsewhere.values())

    def wait_now(self) -> float:
        return max((self.queue.wait_now(), *(r["wait_now"] for r in self.elsewhere.values())))

    def longest_wait(self) -> float:
        return max(self.queue.longest_wait(), self.wait_now())

    def entries(self) -> int:
        return len(self.clients) + sum(r["entries"] for r in self.elsewhere.values())

    def report(self) -> dict[str, Any]:
        """
        What a worker reports of this service's traffic control (counts
        are cumulative for the worker, the rest are levels).
        """
        queue = self.queue
        return {
            "refused": dict(self.refusals.counts), "served": queue.served, "evicted": self.clients.evicted,
            "longest_wait": queue.longest, "queued": len(queue), "wait_now": queue.wait_now(),
            "entries": len(self.clients),
        }

    def take_report(self, source: Any, new: dict[str, Any]) -> None:
        """
        Fold in one relay's L{report}: the counts it added since its last
        one (a count that went down was restarted: all of it is new), its
        levels in place of its last ones.
        """
        old = self.elsewhere.get(source, {})
        self.elsewhere[source] = new
        counts = self.refusals.counts
        before = old.get("refused", {})
        for reason, value in new.get("refused", {}).items():
            delta = _grown(before.get(reason, 0), value)
            if delta:
                counts[reason] = counts.get(reason, 0) + delta
        self.queue.served += _grown(old.get("served", 0), new.get("served", 0))
        self.clients.evicted += _grown(old.get("evicted", 0), new.get("evicted", 0))
        self.queue.longest = max(self.queue.longest, new.get("longest_wait", 0.0))

    def forget(self, source: Any) -> None:
        """
        A relay has nothing of this service now (it retired it, or has not
        got it yet): its levels go, its counts so far stay counted.
        """
        old = self.elsewhere.get(source)
        if old is not None:
            self.elsewhere[source] = dict(old, queued=0, wait_now=0.0, entries=0)

    def drop(self, source: Any) -> None:
        """
        A relay is gone: its levels go; what it counted stays.
        """
        self.elsewhere.pop(source, None)

    def view(self) -> dict[str, Any]:
        """
        What the API and UI show: refusals by reason, the queue, the table
        (with C{--workers}, of every worker).
        """
        queue = self.queue
        return {
            "refused": {reason: self.refusals.counts.get(reason, 0) for reason in REASONS},
            "queue": {
                "length": self.queue_length(), "wait_now": round(self.wait_now(), 3),
                "longest_wait": round(self.longest_wait(), 3), "served": queue.served,
            },
            "clients": {"entries": self.entries(), "evicted": self.clients.evicted,
                        "max_entries": self.clients.max_entries},
            # The worker processes these are the sums of (0: this process relays).
            "workers": len(self.elsewhere),
        }


def _grown(before: int, value: int) -> int:
    """
    What a cumulative count of a relay added since it was C{before}.
    """
    return value - before if value >= before else value
