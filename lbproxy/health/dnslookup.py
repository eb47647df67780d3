"""
Host names to addresses through twisted.names, for L{lbproxy.health.resolver}.

The hosts file first, then A (else AAAA) queries to the DNS servers given,
or else to those of resolv.conf (its C{nameserver}, C{search} and C{ndots}
lines, re-read when the file changes).  Every query is asynchronous and has
its own timeouts, so nothing waits on a thread, and a query given up on
leaves nothing behind.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Iterable

from twisted.internet import defer
from twisted.internet.error import DNSLookupError

__all__ = ["DNSLookup", "LookupFailed", "Address"]

#: (family, ip) of one address.
Address = tuple[int, str]


class LookupFailed(DNSLookupError):
    """
    A host name has no address; the message says why in an operator's words.
    """

    def __str__(self) -> str:
        return " ".join(str(a) for a in self.args)



#: Seconds after which the query socket is replaced (when idle), so the
#: source port does not stay the same for the life of the process.
ROTATE = 600.0


class _Unsolicited:
    """
    The controller of the query sockets: answers nobody waits for any more
    (late, or to a query given up) are dropped.
    """

    def messageReceived(self, message: Any, protocol: Any, address: Any = None) -> None:
        pass


class DNSLookup:
    """
    C{lookup(name)} for L{lbproxy.health.resolver.Resolver}: the hosts file
    first, then A (else AAAA) queries to the DNS servers given, or else to
    those of resolv.conf with its search list.

    Queries go out on one UDP socket per address family, kept open and
    replaced every L{ROTATE} seconds when idle (Twisted's own client opens a
    socket per query and logs two lines for each); answers must come from
    the server asked and carry the random id of the query.
    """

    def __init__(
        self,
        reactor: Any = None,
        servers: list[tuple[str, int]] | None = None,
        resolv_conf: str = "/etc/resolv.conf",
        hosts_file: str = "/etc/hosts",
        attempts: tuple[float, ...] = (1.0, 3.0),
    ) -> None:
        """
        @param attempts: the timeout of each try of a query; each try asks
            the next server.
        """
        from twisted.names import hosts

        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._fixed = list(servers) if servers else None
        self._resolv_conf = resolv_conf
        self._hosts = hosts.Resolver(file=hosts_file.encode())
        self._attempts = attempts
        self._servers: list[tuple[str, int]] = []
        self._search: tuple[str, ...] = ()
        self._ndots = 1
        self._conf_stamp: Any = object()
        self._sockets: dict[int, tuple[Any, float]] = {}

    def __call__(self, name: str) -> defer.Deferred:
        return self._lookup(name)

    def close(self) -> None:
        """
        Close the query sockets (a later lookup opens new ones).
        """
        sockets, self._sockets = self._sockets, {}
        for proto, _ in sockets.values():
            if proto.transport is not None:
                proto.transport.stopListening()

    @defer.inlineCallbacks
    def _lookup(self, name: str) -> Any:
        from twisted.names import dns, error

        bare = name.rstrip(".")
        for query, rtype in ((self._hosts.lookupAddress, dns.A), (self._hosts.lookupIPV6Address, dns.AAAA)):
            try:
                answers, _, _ = yield query(bare)
            except error.DomainError:
                continue
            found = _addresses(bare, answers, rtype)
            if found:
                return found
        servers, names = self._configured(name)
        problems = []
        for candidate in names:
            try:
                found = yield self._query(servers, candidate)
            except error.DNSNameError:
                problems.append(f"{candidate}: no such name")
                continue
            except error.DNSServerError as e:
                problems.append(f"{candidate}: DNS server failure ({e})")
                continue
            except error.DNSQueryTimeoutError:
                listed = ", ".join(f"{h}:{p}" for h, p in servers)
                raise LookupFailed(f"no answer from DNS server {listed}") from None
            if found:
                return found
            problems.append(f"{candidate}: no address")
        if len(problems) == 1:
            raise LookupFailed(problems[0].split(": ", 1)[1])
        raise LookupFailed("; ".join(problems) or "no address")

    @defer.inlineCallbacks
    def _query(self, servers: list[tuple[str, int]], name: str) -> Any:
        from twisted.names import dns

        answers = yield self._ask(servers, name, dns.A)
        found = _addresses(name, answers, dns.A)
        if not found:
            answers = yield self._ask(servers, name, dns.AAAA)
            found = _addresses(name, answers, dns.AAAA)
        return found

    @defer.inlineCallbacks
    def _ask(self, servers: list[tuple[str, int]], name: str, rtype: int) -> Any:
        """
        One question, each try to the next server: the answer records, or
        L{DNSNameError} (no such name), L{DNSServerError} (every try got a
        server failure) or L{DNSQueryTimeoutError}.
        """
        from twisted.names import dns, error

        failed = None
        for i, timeout in enumerate(self._attempts):
            server = servers[i % len(servers)]
            try:
                message = yield self._socket(server).query(server, [dns.Query(name, rtype, dns.IN)], timeout)
            except error.DNSQueryTimeoutError:
                continue
            if message.rCode == dns.OK:
                return message.answers
            if message.rCode == dns.ENAME:
                raise error.DNSNameError(name)
            failed = {dns.ESERVER: "SERVFAIL", dns.EREFUSED: "REFUSED"}.get(message.rCode, f"rcode {message.rCode}")
        if failed is not None:
            raise error.DNSServerError(failed)
        raise error.DNSQueryTimeoutError(name)

    def _socket(self, server: tuple[str, int]) -> Any:
        from twisted.names import dns

        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        now = self.reactor.seconds()
        proto, opened = self._sockets.get(family, (None, 0.0))
        if proto is not None and now - opened > ROTATE and not proto.liveMessages:
            proto.transport.stopListening()
            proto = None
        if proto is None:
            proto = dns.DNSDatagramProtocol(_Unsolicited(), reactor=self.reactor)
            proto.noisy = False
            self.reactor.listenUDP(0, proto, interface="::" if family == socket.AF_INET6 else "", maxPacketSize=512)
            self._sockets[family] = (proto, now)
        return proto

    def _configured(self, name: str) -> tuple[list[tuple[str, int]], list[str]]:
        """
        @return: the DNS servers to ask and the names to query for C{name}
            (search list and C{ndots} applied).
        """
        if self._fixed is not None:
            servers, search, ndots = self._fixed, (), 1
        else:
            self._read_resolv_conf()
            servers, search, ndots = self._servers, self._search, self._ndots
        if name.endswith("."):
            return servers, [name[:-1]]
        searched = [f"{name}.{domain}" for domain in search]
        names = [name, *searched] if name.count(".") >= ndots else [*searched, name]
        return servers, names

    def _read_resolv_conf(self) -> None:
        try:
            st = os.stat(self._resolv_conf)
            stamp: Any = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._conf_stamp:
            return
        self._conf_stamp = stamp
        servers, search, ndots = [], (), 1
        try:
            with open(self._resolv_conf, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[0] == "nameserver":
                servers.append((words[1], 53))
            elif words and words[0] in ("search", "domain"):
                search = tuple(w.rstrip(".") for w in words[1:])
            elif words and words[0] == "options":
                for word in words[1:]:
                    if word.startswith("ndots:") and word[6:].isdigit():
                        ndots = int(word[6:])
        self._servers = servers or [("127.0.0.1", 53)]
        self._search, self._ndots = search, ndots


def _addresses(name: str, answers: Iterable[Any], rtype: int) -> list[Address]:
    """
    The addresses of type C{rtype} for C{name} in C{answers}, following
    a CNAME chain within them.
    """
    from twisted.names import dns

    records = list(answers)
    target = dns.Name(name.rstrip("."))
    family = socket.AF_INET if rtype == dns.A else socket.AF_INET6
    for _ in range(8):
        found = [
            (family, socket.inet_ntop(family, r.payload.address))
            for r in records if r.name == target and r.type == rtype
        ]
        if found:
            return found
        alias = next((r for r in records if r.name == target and r.type == dns.CNAME), None)
        if alias is None:
            return []
        target = alias.payload.name
    return []
