"""
Who may connect to a service, with no I/O: its access lists and per-client
limits compiled once per config (L{Rules}), and the bounded table of
clients' open connections and token buckets (L{ClientTable}).  The rest of
traffic control (refusal counts, the queue) is L{lbproxy.policy.limits}.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from typing import Any

#: Reasons a connection is refused by the access lists and client limits.
DENIED = "denied"
NOT_ALLOWED = "not-allowed"
CLIENT_CONNECTIONS = "client-connections"
CLIENT_RATE = "client-rate"

#: Client table entries kept at most (idle ones are evicted, oldest first).
MAX_ENTRIES = 100_000

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
