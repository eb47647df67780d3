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

import ipaddress
import socket
from collections import OrderedDict, deque
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()

#: Reasons a connection is refused by traffic control.
DENIED = "denied"
NOT_ALLOWED = "not-allowed"
CLIENT_CONNECTIONS = "client-connections"
CLIENT_RATE = "client-rate"
QUEUE_FULL = "queue-full"
QUEUE_TIMEOUT = "queue-timeout"
REASONS = (DENIED, NOT_ALLOWED, CLIENT_CONNECTIONS, CLIENT_RATE, QUEUE_FULL, QUEUE_TIMEOUT)

#: What L{lbproxy.policy.balancer.Balancer.route} answers when every
#: eligible backend is at its max_connections and the service has a queue.
QUEUE = "queue"

#: Client table entries kept at most (idle ones are evicted, oldest first).
MAX_ENTRIES = 100_000
#: Seconds between two log lines of one refusal reason.
LOG_INTERVAL = 10.0


def parse_address(host: str) -> tuple[int, int] | None:
    """
    @return: C{(bits, value)} of an IP address (32 or 128 bits; an
        IPv4-mapped IPv6 address counts as IPv4), or C{None}.
    """
    if ":" not in host:
        try:
            return 32, int.from_bytes(socket.inet_aton(host), "big")
        except OSError:
            return None
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0]), "big")
    except OSError:
        return None
    if value >> 32 == 0xFFFF:
        return 32, value & 0xFFFFFFFF
    return 128, value


class Networks:
    """
    A set of CIDR networks, compiled for matching: per family and prefix
    length, a set of the networks' top bits, so a lookup costs one set
    test per distinct prefix length.
    """

    __slots__ = ("by_bits",)

    def __init__(self, cidrs: tuple[str, ...]) -> None:
        by_bits: dict[int, dict[int, set[int]]] = {32: {}, 128: {}}
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            bits = net.max_prefixlen
            shift = bits - net.prefixlen
            by_bits[bits].setdefault(shift, set()).add(int(net.network_address) >> shift)
        self.by_bits = {bits: tuple(shifts.items()) for bits, shifts in by_bits.items()}

    def __contains__(self, address: tuple[int, int]) -> bool:
        bits, value = address
        for shift, tops in self.by_bits[bits]:
            if value >> shift in tops:
                return True
        return False


class Rules:
    """
    One config's traffic rules, compiled; immutable.
    """

    __slots__ = (
        "allow", "deny", "limits", "max_queue", "queue_timeout", "shift4", "shift6", "burst", "seen",
    )

    #: Client addresses whose verdict L{seen} keeps at most (then it starts
    #: again): a returning client costs one dict lookup, not a parse and
    #: a match.
    SEEN_MAX = 16384

    def __init__(self, config: Any) -> None:
        self.allow = Networks(config.allow) if config.allow else None
        self.deny = Networks(config.deny) if config.deny else None
        limits = config.client_limits
        if limits is not None and limits.max_connections is None and limits.rate is None:
            limits = None
        self.limits = limits
        self.max_queue = config.max_queue
        self.queue_timeout = config.queue_timeout
        #: host -> L{classify}'s verdict for it, under these rules.
        self.seen: dict[str, Any] = {}
        if limits is not None:
            self.shift4 = 32 - limits.prefix_v4
            self.shift6 = 128 - limits.prefix_v6
            rate = limits.rate
            self.burst = float(limits.burst or max(1, int(rate or 1))) if rate else 0.0

    def classify(self, host: str) -> Any:
        """
        @return: C{True} (admitted, no per-client limit), the key of the
            client in the L{ClientTable}, or the refusal reason (a C{str}).
        """
        address = parse_address(host)
        if address is None:
            verdict: Any = True if self.allow is None else NOT_ALLOWED
        elif self.deny is not None and address in self.deny:
            verdict = DENIED
        elif self.allow is not None and address not in self.allow:
            verdict = NOT_ALLOWED
        elif self.limits is None:
            verdict = True
        else:
            bits, value = address
            verdict = value >> self.shift4 if bits == 32 else -1 - (value >> self.shift6)
        seen = self.seen
        if len(seen) >= self.SEEN_MAX:
            seen.clear()
        seen[host] = verdict
        return verdict

    @staticmethod
    def needed(config: Any) -> bool:
        """
        @return: whether C{config} has any traffic rule (else the balancer
            keeps no L{Traffic} and connections pay nothing).
        """
        return bool(config.allow or config.deny or config.client_limits or config.max_queue)


class Entry:
    """
    One client (or prefix) in the L{ClientTable}.
    """

    __slots__ = ("key", "table", "active", "tokens", "stamp")

    def __init__(self, key: int, table: "ClientTable", tokens: float, stamp: float) -> None:
        self.key = key
        self.table = table
        self.active = 0
        self.tokens = tokens
        self.stamp = stamp

    def release(self) -> None:
        """
        One of this client's connections ended.
        """
        self.active -= 1
        if self.active <= 0:
            self.table._rest(self)


class ClientTable:
    """
    Connections open and the token bucket of each client, bounded: at
    most C{max_entries} entries, the idle ones (no open connection) kept
    in least-recently-used order and evicted first.  An entry with open
    connections is never evicted (there are at most as many as
    connections), so a client cannot shed its count by flooding the table
    from other addresses.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.entries: dict[int, Entry] = {}
        self.idle: OrderedDict[int, None] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.entries)

    def acquire(self, key: int, rules: Rules, now: float) -> Entry | str:
        """
        Count a new connection of C{key}.

        @return: its L{Entry} (release it when the connection ends), or the
            refusal reason.
        """
        limits = rules.limits
        entry = self.entries.get(key)
        if entry is None:
            entries = self.entries
            if len(entries) >= self.max_entries and self.idle:
                old, _ = self.idle.popitem(last=False)
                del entries[old]
                self.evicted += 1
            entry = entries[key] = Entry(key, self, rules.burst, now)
        else:
            self.idle.pop(key, None)
        if limits.max_connections is not None and entry.active >= limits.max_connections:
            self._rest(entry)
            return CLIENT_CONNECTIONS
        rate = limits.rate
        if rate:
            tokens = entry.tokens + (now - entry.stamp) * rate
            burst = rules.burst
            if tokens > burst:
                tokens = burst
            entry.stamp = now
            if tokens < 1.0:
                entry.tokens = tokens
                self._rest(entry)
                return CLIENT_RATE
            entry.tokens = tokens - 1.0
        entry.active += 1
        return entry

    def release(self, entry: Entry) -> None:
        entry.release()

    def _rest(self, entry: Entry) -> None:
        if entry.active <= 0 and self.entries.get(entry.key) is entry:
            self.idle[entry.key] = None


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
    """

    __slots__ = ("limit", "active")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0


class Traffic:
    """
    A service's traffic control: the L{Rules} in force, the client table,
    the refusal counts and the wait queue.
    """

    def __init__(self, config: Any, clock: Any, expired: Callable[[Any], None]) -> None:
        self.clock = clock
        self.rules = Rules(config)
        self.clients = ClientTable()
        self.refusals = RefusalLog(config.name)
        self.queue = WaitQueue(clock, expired)

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

    def view(self) -> dict[str, Any]:
        """
        What the API and UI show: refusals by reason, the queue, the table.
        """
        queue = self.queue
        return {
            "refused": {reason: self.refusals.counts.get(reason, 0) for reason in REASONS},
            "queue": {
                "length": len(queue), "wait_now": round(queue.wait_now(), 3),
                "longest_wait": round(queue.longest_wait(), 3), "served": queue.served,
            },
            "clients": {"entries": len(self.clients), "evicted": self.clients.evicted,
                        "max_entries": self.clients.max_entries},
        }
