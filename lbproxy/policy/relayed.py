"""
A balancer whose connections other processes relay: the parent of
C{--workers} relays nothing, its workers do and report their counters.

L{RelayedElsewhere} is a part of L{lbproxy.policy.balancer.Balancer}: the
parent's API, metrics and feed read the balancer as always, and its
counters are the sums of what the relays reported, kept by adding each
report's changes (no one overwrites them); so are its traffic control's
refusals, queue and client table (L{lbproxy.policy.limits.Traffic}).  A backend removed or drained
there is finished only once every relay has applied that config and
reports no connection to it.

With several services (L{lbproxy.policy.services.ServiceTable}) each
balancer of the table is relayed elsewhere on its own: L{relay_table}
attaches the balancers (those a change adds too) and L{take_table_report}
gives each its part of a relay's report, by service name.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet import defer


class RelayedElsewhere:
    """
    The balancer's side of relays in other processes.  Until
    L{relay_elsewhere} is called it is inactive: counting and closing
    answer for the local connections only.  It works on the balancer's
    C{config}, C{pool}, C{totals}, C{traffic_state}, C{connections} and
    C{removing}.
    """

    _relays: Any = None
    _reports: dict[Any, tuple[int, dict[str, int], dict[str, dict[str, int]]]]
    #: backend id -> the config version every relay must report to finish
    #: its removal or drain.
    _settling: dict[str, int]

    def relay_elsewhere(self, relays: Any) -> None:
        """
        Say that other processes relay for this balancer and report what
        they do (L{take_report}): the parent of C{--workers}, which relays
        nothing itself.  From then on its counters also count their
        connections, a backend removed (or set to draining) stays
        C{removing} (or gives no C{drained} event) until every relay
        reports, under that config version or a later one, no connection
        to it, and L{count_connections} and L{close_everywhere} ask them.

        @param relays: has C{refresh()}, a Deferred that fires once every
            live relay has sent a fresh report, and C{close(backend_id,
            why)}, a Deferred firing with how many connections they closed.
        """
        self._relays = relays
        self._reports = {}
        self._settling = {}

    def take_report(self, source: Any, version: int, totals: Mapping[str, int],
                    backends: Mapping[str, Mapping[str, int]], traffic: Any = None) -> None:
        """
        Take one relay's counters.  They are cumulative for that relay, so
        the balancer adds what changed since its last report (a counter
        that went down was restarted: all of it is new); C{active} is a
        level, so it adds the difference.

        @param version: the config version in force at the relay.
        @param backends: counters by backend id (L{Totals} names for
            C{totals}; C{active}, C{total}, C{failures}, C{bytes_up},
            C{bytes_down} for each backend).
        @param traffic: the relay's traffic control counters
            (L{lbproxy.policy.limits.Traffic.report}), if it sent them.
        """
        _, old_totals, old_backends = self._reports.get(source, (0, {}, {}))
        self._reports[source] = (version, dict(totals), {k: dict(v) for k, v in backends.items()})
        _add_counts(self.totals, old_totals, totals)
        for bid in set(old_backends) | set(backends):
            stats = self.pool.stats.get(bid)
            if stats is not None:
                new = backends.get(bid)
                if new is None:  # the relay forgot it: nothing open there
                    new = dict(old_backends[bid], active=0)
                _add_counts(stats, old_backends.get(bid, {}), new)
        if traffic is not None:
            self.traffic_state.take_report(source, traffic)
        self._settle()

    def relay_forgot(self, source: Any, version: int) -> None:
        """
        A relay reports nothing for this service under C{version} (it
        retired it, or does not have it yet): nothing is open there.
        """
        _, old_totals, _ = self._reports.get(source, (0, {}, {}))
        self.traffic_state.forget(source)
        self.take_report(source, version, dict(old_totals, active=0), {})

    def drop_reports(self, source: Any) -> None:
        """
        A relay is gone (a worker exited): its connections are gone with
        it; what it finished stays counted.
        """
        gone = self._reports.pop(source, None) if self._relays is not None else None
        if gone is None:
            return
        self.traffic_state.drop(source)
        _, totals, backends = gone
        self.totals.active -= totals.get("active", 0)
        for bid, counters in backends.items():
            stats = self.pool.stats.get(bid)
            if stats is not None:
                stats.active -= counters.get("active", 0)
        self._settle()

    def _open_elsewhere(self, backend_id: str) -> int:
        if self._relays is None:
            return 0
        return sum(r[2].get(backend_id, {}).get("active", 0) for r in self._reports.values())

    def _settle(self) -> None:
        """
        Finish the removals and drains every relay has caught up with, and
        the retirement of a removed service once no relay has a connection.
        """
        if getattr(self, "_retired", None) is not None:
            self._check_retired()
        for bid, version in tuple(self._settling.items()):
            if self.connections.get(bid) or self._open_elsewhere(bid):
                continue
            if any(r[0] < version for r in self._reports.values()):
                continue
            if bid in self.removing:
                self._removed(bid, "drained")
                continue
            del self._settling[bid]
            backend = self.config.backend(bid)
            if backend is not None and backend.state == "draining":
                self._backend_event(bid, "drained", "drained: no connections left")

    def count_connections(self, backend_id: str) -> defer.Deferred:
        """
        @return: a Deferred firing with the number of connections open to
            a backend, here and (freshly asked) in every relay.
        """
        d = self._relays.refresh() if self._relays is not None else defer.succeed(None)
        return d.addCallback(
            lambda _: len(self.connections.get(backend_id, ())) + self._open_elsewhere(backend_id)
        )

    def close_everywhere(self, backend_id: str, why: str) -> defer.Deferred:
        """
        L{close_connections} here and in every relay.

        @return: a Deferred firing with how many connections were closed.
        """
        here = self.close_connections(backend_id, why)
        if self._relays is None:
            return defer.succeed(here)
        return self._relays.close(backend_id, why).addCallback(lambda there: here + there)


class ServiceRelays:
    """
    What one service's balancer asks of the relays (L{relay_elsewhere}):
    the relays' L{refresh}, and their C{close} for that service.
    """

    def __init__(self, relays: Any, service: str) -> None:
        self.relays = relays
        self.service = service

    def refresh(self) -> defer.Deferred:
        return self.relays.refresh()

    def close(self, backend_id: str, why: str) -> defer.Deferred:
        return self.relays.close(backend_id, why, self.service)


def relay_table(table: Any, relays: Any, sources: Any = ()) -> list[str]:
    """
    Have every balancer of C{table} that is not yet relayed elsewhere be
    relayed by C{relays} (which close by service: C{close(backend_id, why,
    service)}); each waits for a first report of every one of C{sources}.

    @return: the names of the balancers attached now.
    """
    attached = []
    for name, balancer in table.balancers.items():
        if balancer._relays is None:
            balancer.relay_elsewhere(ServiceRelays(relays, name))
            for source in sources:
                balancer.take_report(source, 0, {}, {})
            attached.append(name)
    return attached


def take_table_report(table: Any, source: Any, version: int, services: Mapping[str, Any]) -> None:
    """
    Give each relayed balancer of C{table} its part of one relay's report:
    C{services} maps a service name to C{(totals, backends)} or
    C{(totals, backends, traffic)}; a service
    the relay did not report has nothing open there.
    """
    for name, balancer in table.balancers.items():
        if balancer._relays is None:
            continue
        got = services.get(name)
        if got is None:
            balancer.relay_forgot(source, version)
        else:
            balancer.take_report(source, version, *got)
    for balancer in tuple(table.retiring.values()):
        if balancer._relays is not None:
            # A name both current and retiring is reported as the current one.
            got = services.get(balancer.config.name) if balancer.config.name not in table.balancers else None
            if got is None:
                balancer.relay_forgot(source, version)
            else:
                balancer.take_report(source, version, *got)


def drop_table_reports(table: Any, source: Any) -> None:
    """
    A relay is gone: L{RelayedElsewhere.drop_reports} in every balancer.
    """
    for balancer in table.all():
        balancer.drop_reports(source)


def _add_counts(counters: Any, old: Mapping[str, int], new: Mapping[str, int]) -> None:
    """
    Add to C{counters} (a L{Totals} or L{lbproxy.policy.pool.BackendStats})
    what one relay counted between two of its reports.
    """
    for name, value in new.items():
        before = old.get(name, 0)
        if name == "active":
            delta = value - before
        else:
            delta = value - before if value >= before else value
        if delta and hasattr(counters, name):
            setattr(counters, name, getattr(counters, name) + delta)
