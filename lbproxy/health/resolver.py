"""
Backend host names to addresses, looked up in the background.

A backend configured by host name is connected to at the address of its
last good lookup, so a DNS outage does not take it down.  Names are looked
up off the connect path: at once when a backend appears, then every
C{refresh} seconds.  A failed lookup keeps the last good address (and
L{Resolver.note} says so, for the health reason) and is retried with
backoff.  Whoever asks, one lookup per name is in flight; each is bounded
by C{timeout}.  Only a name that has never resolved makes a caller wait,
for that one bounded lookup; if it failed, callers fail at once until the
next retry (negative caching).

Lookups go through twisted.names (L{lbproxy.health.dnslookup}), not C{getaddrinfo} in
threads: a query is asynchronous, has its own timeouts and can be
abandoned, so an outage ties up no thread and shutdown has nothing to wait
for (Twisted's thread pool is joined at shutdown: a hung C{getaddrinfo}
held the process for minutes).  It reads the hosts file and the
C{nameserver}, C{search} and C{ndots} lines of resolv.conf, and can be
pointed at given DNS servers.  What it does not do: the other sources of
nsswitch.conf (mDNS, LDAP, nss-myhostname).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Callable, Iterable

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from zope.interface import implementer

from lbproxy.health.dnslookup import Address, DNSLookup, LookupFailed
from lbproxy.interfaces import IConfigObserver

log = Logger()

__all__ = ["Resolver", "DNSLookup", "LookupFailed", "is_name"]

def is_name(host: str) -> bool:
    """
    @return: whether C{host} is a host name rather than an IP literal.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _sockaddr(address: Address, port: int) -> tuple[int, tuple]:
    family, ip = address
    return family, ((ip, port) if family == socket.AF_INET else (ip, port, 0, 0))


class _Name:
    """
    What the resolver knows of one host name.
    """

    __slots__ = ("host", "addresses", "good_at", "error", "failures", "due", "pending", "waiters", "timer")

    def __init__(self, host: str) -> None:
        self.host = host
        self.addresses: tuple[Address, ...] = ()
        self.good_at = 0.0
        self.error: str | None = None
        self.failures = 0
        #: when the next lookup is due (0: at once).
        self.due = 0.0
        self.pending: defer.Deferred | None = None
        self.waiters: list[tuple[defer.Deferred, int]] = []
        self.timer: Any = None


@implementer(IConfigObserver)
class Resolver(Service):
    """
    Keeps the addresses of backend host names fresh; follows the config as
    an L{IConfigObserver} of the controller.

    @ivar lookups: lookups started so far (tests and curiosity).
    """

    name = "resolver"

    def __init__(
        self,
        reactor: Any = None,
        lookup: Callable[[str], defer.Deferred] | None = None,
        refresh: float = 30.0,
        timeout: float = 5.0,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        """
        @param lookup: C{lookup(name)} returning a Deferred of a list of
            L{Address}, best first; by default a L{DNSLookup}.
        @param refresh: seconds between two lookups of a name that resolves.
        @param timeout: seconds one lookup may take.
        @param backoff: C{backoff(failures)} giving the seconds until a
            failed lookup is tried again; by default from 1 s doubling up
            to C{refresh}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._lookup = lookup
        self.refresh = refresh
        self.timeout = timeout
        self._backoff = backoff or backoffPolicy(1.0, refresh, 2.0, jitter=lambda: 0.0)
        self._names: dict[str, _Name] = {}
        self.lookups = 0

    # The connect path --------------------------------------------------------

    def address(self, host: str) -> Address | None:
        """
        @return: the last good address of C{host}, or C{None}; never waits.
        """
        entry = self._names.get(host)
        return entry.addresses[0] if entry is not None and entry.addresses else None

    def resolve(self, host: str, port: int) -> defer.Deferred:
        """
        The address to connect to for C{host}: at once from the last good
        lookup (starting a refresh in the background if one is due), else
        after the one bounded lookup in flight.

        @return: a Deferred of C{(family, sockaddr)}, failing with
            L{LookupFailed} (a L{twisted.internet.error.DNSLookupError})
            if the name has no address.
        """
        entry = self._names.get(host)
        if entry is None:
            entry = self._names[host] = _Name(host)
        now = self.reactor.seconds()
        due = entry.pending is None and now >= entry.due
        if entry.addresses:
            if due:
                self._start(entry)
            return defer.succeed(_sockaddr(entry.addresses[0], port))
        if entry.pending is None:
            if not due:
                return defer.fail(LookupFailed(f"{host}: {entry.error}"))
            self._start(entry)
            if entry.pending is None:
                return self.resolve(host, port)

        def forget(d: defer.Deferred) -> None:
            entry.waiters[:] = [w for w in entry.waiters if w[0] is not d]

        waiter: defer.Deferred = defer.Deferred(forget)
        entry.waiters.append((waiter, port))
        return waiter

    def note(self, host: str) -> str | None:
        """
        @return: for a name whose last lookup failed but that has a last
            good address, a line saying so for the backend's health reason;
            else C{None}.
        """
        entry = self._names.get(host)
        if entry is None or not entry.addresses or entry.error is None:
            return None
        age = self.reactor.seconds() - entry.good_at
        return f"address from last good lookup {age:.0f} s ago: {entry.error}"

    # Which names to keep fresh -------------------------------------------------

    def track(self, hosts: Iterable[str]) -> None:
        """
        Keep exactly these names fresh (IP literals are ignored): new ones
        are looked up at once, others are forgotten.
        """
        wanted = {h for h in hosts if is_name(h)}
        for host in tuple(self._names):
            if host not in wanted:
                entry = self._names.pop(host)
                self._cancel_timer(entry)
        for host in wanted:
            if host not in self._names:
                entry = self._names[host] = _Name(host)
                if self.running:
                    self._start(entry)

    def applied(self, old: Any, new: Any) -> None:
        """
        L{lbproxy.interfaces.IConfigObserver}: keep the names of the new
        config's backends fresh, of every service.
        """
        for service in getattr(new, "services", (new,)):
            self.track(b.host for b in service.backends)

    # Lifecycle -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for entry in tuple(self._names.values()):
            if entry.pending is None:
                self._start(entry)

    def stopService(self) -> Any:
        """
        Stop at once: timers are cancelled and lookups in flight abandoned,
        so shutdown never waits for DNS.
        """
        super().stopService()
        for entry in tuple(self._names.values()):
            self._cancel_timer(entry)
            if entry.pending is not None:
                entry.pending.cancel()
        close = getattr(self._lookup, "close", None)
        if close is not None:
            close()
        return None

    # Lookups -------------------------------------------------------------------

    def _start(self, entry: _Name) -> None:
        self._cancel_timer(entry)
        if self._lookup is None:
            self._lookup = DNSLookup(self.reactor)
        self.lookups += 1
        d = defer.maybeDeferred(self._lookup, entry.host)
        d.addTimeout(self.timeout, self.reactor)
        entry.pending = d
        d.addCallbacks(self._found, self._failed, callbackArgs=(entry, d), errbackArgs=(entry, d))
        d.addErrback(lambda f: log.failure("looking up {host} went wrong", f, host=entry.host))

    def _found(self, addresses: list, entry: _Name, d: defer.Deferred) -> None:
        if entry.pending is not d:
            return
        if not addresses:
            self._failed(Failure(LookupFailed("no address")), entry, d)
            return
        entry.pending = None
        now = self.reactor.seconds()
        if entry.error is not None and entry.addresses:
            log.info("looking up {host} works again", host=entry.host)
        entry.addresses = tuple(addresses)
        entry.good_at = now
        entry.error = None
        entry.failures = 0
        self._arm(entry, now + self.refresh)
        waiters, entry.waiters = entry.waiters, []
        for waiter, port in waiters:
            waiter.callback(_sockaddr(entry.addresses[0], port))

    def _failed(self, failure: Failure, entry: _Name, d: defer.Deferred) -> None:
        if entry.pending is not d:
            return
        entry.pending = None
        now = self.reactor.seconds()
        if failure.check(defer.TimeoutError):
            entry.error = f"lookup timed out after {self.timeout:g}s"
        elif failure.check(defer.CancelledError):
            entry.error = "lookup cancelled"
        else:
            entry.error = failure.getErrorMessage() or failure.type.__name__
        if entry.failures == 0 and self.running:
            if entry.addresses:
                log.warn(
                    "looking up {host} failed ({error}); keeping its last good address {address}",
                    host=entry.host, error=entry.error, address=entry.addresses[0][1],
                )
            else:
                log.warn("looking up {host} failed: {error}", host=entry.host, error=entry.error)
        self._arm(entry, now + self._backoff(entry.failures))
        entry.failures += 1
        waiters, entry.waiters = entry.waiters, []
        for waiter, _ in waiters:
            waiter.errback(LookupFailed(f"{entry.host}: {entry.error}"))

    def _arm(self, entry: _Name, due: float) -> None:
        entry.due = due
        if self.running and self._names.get(entry.host) is entry:
            entry.timer = self.reactor.callLater(max(0.0, due - self.reactor.seconds()), self._start, entry)

    def _cancel_timer(self, entry: _Name) -> None:
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        entry.timer = None
