"""
The parent's balancer under C{--workers} (L{lbproxy.policy.relayed}): its
counters are the sums of the workers' reports, and removals and drains
finish only when every worker has drained.  Fake clock, no processes.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer

from lbproxy.model.changes import update_backend
from tests.test_balancer import FakeConnection, make


def counters(active=0, total=0, failures=0, up=0, down=0):
    return {"active": active, "total": total, "failures": failures, "bytes_up": up, "bytes_down": down}


class Relays:
    """Stands in for the worker pool: records what the balancer asks."""

    def __init__(self, closed=0):
        self.refreshes = 0
        self.closes = []
        self.closed = closed

    def refresh(self):
        self.refreshes += 1
        return defer.succeed(None)

    def close(self, backend_id, why):
        self.closes.append((backend_id, why))
        return defer.succeed(self.closed)


def relayed(factories, relays=None, n=2):
    b, clock = make(factories, n=n)
    b.relay_elsewhere(relays or Relays())
    seen = []
    b.events.subscribe(lambda e: seen.append((e.data["id"], e.data["state"])) if e.type == "backend" else None)
    return b, clock, seen


def without(b, bid):
    b.apply(replace(b.config, version=b.config.version + 1,
                    backends=tuple(x for x in b.config.backends if x.id != bid)))
    return b.config.version


def test_counters_are_the_sums_of_reports_added_by_change(factories):
    """Two workers' cumulative reports add up; a later report adds only
    what changed; C{active} follows the level; a counter that went down
    (a worker's backend re-created) counts as restarted."""
    b, _, _ = relayed(factories)
    b.take_report("w0", 1, {"accepted": 3, "active": 2}, {"b0": counters(2, 3, 1, 10, 20)})
    b.take_report("w1", 1, {"accepted": 5, "active": 1}, {"b0": counters(1, 5, 0, 1, 2)})
    assert (b.totals.accepted, b.totals.active) == (8, 3)
    s = b.pool.stats["b0"]
    assert (s.active, s.total, s.failures, s.bytes_up, s.bytes_down) == (3, 8, 1, 11, 22)
    b.take_report("w0", 1, {"accepted": 4, "active": 0}, {"b0": counters(0, 4, 1, 15, 25)})
    assert (b.totals.accepted, b.totals.active) == (9, 1)
    assert (s.active, s.total, s.bytes_up) == (1, 9, 16)
    b.take_report("w1", 1, {"accepted": 5, "active": 1}, {"b0": counters(1, 2, 0, 1, 2)})
    assert s.total == 11
    assert b.backend_view(b.config.backend("b0"))["stats"]["active"] == 1


def test_a_dead_worker_takes_its_open_connections_not_its_history(factories):
    """When a worker's reports are dropped (it exited), its open
    connections leave the sums and what it finished stays."""
    b, _, _ = relayed(factories)
    b.take_report("w0", 1, {"accepted": 3, "active": 2}, {"b0": counters(2, 3)})
    b.drop_reports("w0")
    assert (b.totals.accepted, b.totals.active) == (3, 0)
    assert (b.pool.stats["b0"].active, b.pool.stats["b0"].total) == (0, 3)


def test_removal_waits_until_every_worker_applied_it_and_drained(factories):
    """A removed backend stays C{removing}, even with no connection in
    the parent, while any worker reports connections to it or has not yet
    reported under the removing version; then it is C{removed}."""
    b, _, seen = relayed(factories)
    b.take_report("w0", 1, {}, {"b0": counters(1, 1)})
    b.take_report("w1", 1, {}, {"b0": counters(0, 0)})
    v = without(b, "b0")
    assert "b0" in b.removing and seen[-1] == ("b0", "removing")
    b.take_report("w1", v, {}, {})
    assert "b0" in b.removing
    b.take_report("w0", v, {}, {"b0": counters(1, 1)})
    assert "b0" in b.removing
    assert b.backend_view(b.removing["b0"])["state"] == "removing"
    b.take_report("w0", v, {}, {})
    assert "b0" not in b.removing and seen[-1] == ("b0", "removed")
    assert "b0" not in b.pool.stats


def test_removal_with_a_silent_worker_finishes_when_it_exits(factories):
    """A worker that never reports the new version holds a removal until
    it is gone."""
    b, _, _ = relayed(factories)
    b.take_report("w0", 1, {}, {"b0": counters(1, 1)})
    without(b, "b0")
    assert "b0" in b.removing
    b.drop_reports("w0")
    assert "b0" not in b.removing


def test_removal_with_no_worker_reporting_is_immediate(factories):
    """With no worker alive there is nothing to wait for."""
    b, _, seen = relayed(factories)
    without(b, "b0")
    assert "b0" not in b.removing and seen[-2:] == [("b0", "removing"), ("b0", "removed")]


def test_drained_comes_when_the_workers_report_no_connection(factories):
    """A backend set to draining gives its C{drained} event once every
    worker reports under that version with no connection to it."""
    b, _, seen = relayed(factories)
    b.take_report("w0", 1, {}, {"b0": counters(1, 1)})
    b.apply(update_backend(b.config, "b0", {"state": "draining"})[0])
    assert ("b0", "drained") not in seen
    b.take_report("w0", 2, {}, {"b0": counters(1, 1)})
    assert ("b0", "drained") not in seen
    b.take_report("w0", 2, {}, {"b0": counters(0, 1)})
    assert seen[-1] == ("b0", "drained")


def test_count_and_close_ask_the_workers(factories):
    """C{count_connections} refreshes the reports before counting (local
    plus reported), and C{close_everywhere} adds the workers' closes to
    the local ones."""
    relays = Relays(closed=4)
    b, _, _ = relayed(factories, relays)
    cand = next(c for c in b.pool.candidates if c.id == "b1")
    conn = FakeConnection()
    b.connection_opened(cand, conn, 0.001)
    b.take_report("w0", 1, {}, {"b1": counters(4, 4)})
    got = []
    b.count_connections("b1").addCallback(got.append)
    b.close_everywhere("b1", "removed by operator").addCallback(got.append)
    assert got == [5, 5] and relays.refreshes == 1
    assert relays.closes == [("b1", "removed by operator")]
    assert conn.closed == ("abort", "removed by operator")


def test_without_relays_counting_and_closing_are_local(factories):
    """A balancer that relays itself counts and closes its own
    connections, at once."""
    b, _ = make(factories)
    cand = next(c for c in b.pool.candidates if c.id == "b1")
    b.connection_opened(cand, FakeConnection(), 0.001)
    got = []
    b.count_connections("b1").addCallback(got.append)
    b.close_everywhere("b1", "x").addCallback(got.append)
    assert got == [1, 1]


def test_second_delete_with_force_counts_and_closes_in_the_workers(factories):
    """With --workers, DELETE ?force=true of a backend already removing
    answers the workers' count and closes their connections (not the
    parent's zero)."""
    from tests.webtools import Admin

    admin = Admin(factories)
    relays = Relays(closed=3)
    admin.balancer.relay_elsewhere(relays)
    admin.balancer.take_report("w0", 1, {}, {"b1": counters(3, 3)})
    r = admin.request("DELETE", "/api/v1/backends/b1")
    assert r.code == 200 and r.json["state"] == "removing" and r.json["connections"] == 3
    r = admin.request("DELETE", "/api/v1/backends/b1?force=true")
    assert r.code == 200 and (r.json["connections"], r.json["closed"]) == (3, 3)
    assert relays.closes == [("b1", "removed by operator")]


def traffic(refused=None, served=0, evicted=0, longest=0.0, queued=0, wait=0.0, entries=0):
    return {"refused": refused or {}, "served": served, "evicted": evicted, "longest_wait": longest,
            "queued": queued, "wait_now": wait, "entries": entries}


def test_traffic_counters_are_the_sums_of_the_workers_reports(factories):
    """Two workers' traffic-control reports: refusals by reason, served
    from the queue and evictions add up by change (a count that went down
    restarted); queue length and table entries are the sums of the latest
    levels, the waits the longest of any; the view, which the API and the
    metrics read, shows them."""
    b, _, _ = relayed(factories)
    b.take_report("w0", 1, {}, {}, traffic({"denied": 3, "client-rate": 1}, served=2, queued=1, wait=0.5,
                                            longest=0.7, entries=4))
    b.take_report("w1", 1, {}, {}, traffic({"denied": 2}, served=1, queued=2, wait=0.2, entries=6, evicted=1))
    view = b.traffic_state.view()
    assert view["refused"]["denied"] == 5 and view["refused"]["client-rate"] == 1
    assert view["queue"] == {"length": 3, "wait_now": 0.5, "longest_wait": 0.7, "served": 3}
    assert (view["clients"]["entries"], view["clients"]["evicted"]) == (10, 1)
    assert view["workers"] == 2
    b.take_report("w0", 1, {}, {}, traffic({"denied": 4, "client-rate": 1}, served=2, entries=1))
    b.take_report("w1", 1, {}, {}, traffic({"denied": 1}, served=1, queued=2, entries=6, evicted=1))
    view = b.traffic_state.view()
    assert view["refused"]["denied"] == 4 + 2 + 1   # w0 added 1, w1 restarted with 1
    assert (view["queue"]["length"], view["clients"]["entries"]) == (2, 7)


def test_a_dead_workers_refusals_stay_counted_and_its_levels_go(factories):
    """A worker that exits (L{drop_reports}) takes its queue and table
    entries with it, not the refusals it counted; a service a worker no
    longer reports (L{relay_forgot}) keeps its counts and drops its levels."""
    b, _, _ = relayed(factories)
    b.take_report("w0", 1, {}, {}, traffic({"queue-full": 6}, queued=3, entries=2))
    b.take_report("w1", 1, {}, {}, traffic({"queue-full": 1}, queued=1, entries=5))
    b.drop_reports("w0")
    view = b.traffic_state.view()
    assert view["refused"]["queue-full"] == 7
    assert (view["queue"]["length"], view["clients"]["entries"]) == (1, 5)
    b.relay_forgot("w1", 2)
    view = b.traffic_state.view()
    assert view["refused"]["queue-full"] == 7
    assert (view["queue"]["length"], view["clients"]["entries"]) == (0, 0)
