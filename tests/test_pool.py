"""
The health policy of L{lbproxy.policy.pool.Pool} as the balancer drives it: active
check rise/fall, passive ejection and its growing period and share cap,
slow start, the all-down refusal, and one event plus one log line per
transition.  Time is a L{task.Clock}; nothing touches the network.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from lbproxy.model.checks import HealthCheck, Outlier
from lbproxy.model.config import Backend, Config, StrategyChoice
from lbproxy.policy.balancer import Balancer
from lbproxy.policy.pool import AccessRecord, Pool


def make(n=2, clock=None, weights=None, **fields):
    clock = clock or task.Clock()
    backends = tuple(
        Backend(f"b{i + 1}", "127.0.0.1", 9001 + i, weight=(weights[i] if weights else 1))
        for i in range(n)
    )
    fields.setdefault("strategy", StrategyChoice("round-robin"))
    config = Config(version=1, backends=backends, **fields)
    from lbproxy.policy.plugins import strategy_factories

    return Balancer(config, strategy_factories(), reactor=clock), clock


def events(balancer, kind="backend"):
    seen = []
    balancer.events.subscribe(lambda e: seen.append(e.data) if e.type == kind else None)
    return seen


def ids(balancer):
    return [c.id for c in balancer.pool.candidates]


def candidate(balancer, bid):
    return next(c for c in balancer.pool.candidates if c.id == bid)


CHECK = HealthCheck(interval=1.0, timeout=0.5, rise=2, fall=3)


# Active checks: rise and fall ------------------------------------------------


def test_fall_failures_take_a_proven_backend_down_and_rise_bring_it_back():
    """After a passed check, C{fall} failures in a row (not fewer) take the
    backend out of the candidates with one C{down} event carrying the
    reason; C{rise} passes (not fewer) bring it back with one C{up}."""
    b, clock = make(health_check=CHECK)
    seen = events(b)
    b.health_result("b1", True, "check passed")
    for _ in range(2):
        b.health_result("b1", False, "check failed: connection refused")
    assert ids(b) == ["b1", "b2"] and seen == []
    b.health_result("b1", False, "check failed: connection refused")
    assert ids(b) == ["b2"]
    assert [(e["id"], e["state"], e["reason"]) for e in seen] == [
        ("b1", "down", "check failed: connection refused")
    ]
    b.health_result("b1", True, "check passed")
    assert ids(b) == ["b2"]
    b.health_result("b1", True, "check passed")
    assert ids(b) == ["b1", "b2"]
    assert [(e["state"], e["reason"]) for e in seen[1:]] == [("up", "check passed")]


def test_a_pass_between_failures_restarts_the_count():
    """Failures must be consecutive: a pass in between resets the count, so
    a flapping backend with fall=3 never goes down on 2-failure runs."""
    b, _ = make(health_check=CHECK)
    b.health_result("b1", True, "check passed")
    for _ in range(5):
        b.health_result("b1", False, "check failed: x")
        b.health_result("b1", False, "check failed: x")
        b.health_result("b1", True, "check passed")
    assert "b1" in ids(b)


def test_backend_that_never_passed_goes_down_at_its_first_failure():
    """As in HAProxy, an unproven backend (new, or never checked) goes down
    at the first failed check rather than after C{fall} of them."""
    b, _ = make(health_check=CHECK)
    seen = events(b)
    b.health_result("b2", False, "check failed: connection refused")
    assert ids(b) == ["b1"]
    assert seen[0]["state"] == "down"


def test_per_backend_rise_fall_override_the_pool():
    """A backend's own check (rise/fall) beats the pool-wide one."""
    b, _ = make(health_check=CHECK)
    own = replace(b.config.backends[0], health_check=replace(CHECK, fall=1))
    b.apply(replace(b.config, version=2, backends=(own, b.config.backends[1])))
    b.health_result("b1", True, "check passed")
    b.health_result("b2", True, "check passed")
    b.health_result("b1", False, "check failed: x")
    b.health_result("b2", False, "check failed: x")
    assert ids(b) == ["b2"]


def test_removing_the_check_brings_a_down_backend_back():
    """A backend down by checks would stay down forever once its check is
    taken away; so it comes back up, with an event saying why."""
    b, _ = make(health_check=CHECK)
    seen = events(b)
    b.health_result("b1", False, "check failed: connection refused")
    assert ids(b) == ["b2"]
    b.apply(replace(b.config, version=2, health_check=None))
    assert ids(b) == ["b1", "b2"]
    assert (seen[-1]["id"], seen[-1]["state"], seen[-1]["reason"]) == (
        "b1", "up", "health check removed",
    )


def test_results_for_unknown_backends_are_ignored():
    """A late result for a backend no longer in the config changes nothing
    and raises nothing."""
    b, _ = make(health_check=CHECK)
    seen = events(b)
    b.health_result("gone", False, "check failed: x")
    assert seen == [] and ids(b) == ["b1", "b2"]


def test_health_is_runtime_state_not_in_the_config():
    """Health never reaches the durable config document; check settings do."""
    b, _ = make(health_check=CHECK)
    b.health_result("b1", False, "check failed: connection refused")
    doc = b.config.to_json()
    assert "connection refused" not in repr(doc)
    assert doc["health_check"]["fall"] == 3
    assert all(set(x) >= {"id", "state"} and x["state"] == "up" for x in doc["backends"])
    assert b.backend_view(b.config.backends[0])["state"] == "down"


# All backends down -------------------------------------------------------------


def test_all_backends_down_refuses_clients_at_once_and_counts_them():
    """With every backend down, route() returns None and counts
    C{no_backend}; the relay aborts the client at once without any connect
    attempt (the documented all-down behaviour)."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock

    from lbproxy.relay.twisted_engine import ProxyFactory

    reactor = MemoryReactorClock()
    b, _ = make(clock=reactor, health_check=CHECK)
    b.health_result("b1", False, "check failed: x")
    b.health_result("b2", False, "check failed: x")
    assert b.route(("192.0.2.1", 1)) is None
    assert b.totals.no_backend == 1
    factory = ProxyFactory(b, reactor)
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 2)) is None
    assert reactor.tcpClients == [] and factory._endpoints == {}
    assert b.totals.no_backend == 2 and b.totals.active == 0


# Passive ejection ----------------------------------------------------------------


OUTLIER = Outlier(consecutive_failures=3, base_ejection=10.0, max_ejection=25.0, max_ejection_percent=50)


def fail(b, bid, n, how="connect"):
    for _ in range(n):
        c = _any_candidate(b, bid)
        if how == "connect":
            b.connect_failed(c, "Connection refused")
        else:
            b.connection_reset(c, "Connection lost")


def _any_candidate(b, bid):
    from lbproxy.policy.pool import Candidate

    backend = b.config.backend(bid)
    return Candidate(backend, float(backend.weight), b.pool.stats[bid])


def test_consecutive_connect_failures_eject_for_the_base_period():
    """N consecutive connect failures eject at once (one C{down} event with
    the reason and the end time); after C{base_ejection} seconds the
    backend is back (one C{up} event)."""
    b, clock = make(outlier=OUTLIER)
    seen = events(b)
    fail(b, "b1", 2)
    assert ids(b) == ["b1", "b2"]
    fail(b, "b1", 1)
    assert ids(b) == ["b2"]
    assert seen == [{
        "service": "default", "id": "b1", "state": "down", "time": 0.0, "ejected_until": 10.0,
        "reason": "ejected after 3 consecutive failures: connect failed: Connection refused",
    }]
    clock.advance(9.9)
    assert ids(b) == ["b2"]
    clock.advance(0.1)
    assert ids(b) == ["b1", "b2"]
    assert (seen[-1]["state"], seen[-1]["reason"]) == ("up", "ejection period over")
    assert len(seen) == 2


def test_resets_from_real_traffic_count_even_when_connects_succeed():
    """A backend that accepts then resets every connection is ejected: a
    successful connect does not clear the failure run, only a connection
    that ends cleanly does."""
    b, _ = make(outlier=OUTLIER)
    c = _any_candidate(b, "b1")
    for _ in range(3):
        conn = _Conn()
        b.admit()
        b.connection_opened(c, conn, 0.001)
        b.connection_reset(c, "Connection lost")
        b.connection_closed(c, conn, AccessRecord("c", "b1", 0, 0, 0.1, "backend-reset"))
    assert ids(b) == ["b2"]


def test_a_clean_connection_clears_the_failure_run():
    """Failures are consecutive: a connection that ends cleanly in between
    resets the run, so no ejection."""
    b, _ = make(outlier=OUTLIER)
    c = _any_candidate(b, "b1")
    for _ in range(3):
        fail(b, "b1", 2)
        conn = _Conn()
        b.admit()
        b.connection_opened(c, conn, 0.001)
        b.connection_closed(c, conn, AccessRecord("c", "b1", 1, 1, 0.1, "ok"))
    assert ids(b) == ["b1", "b2"]


def test_repeat_ejections_grow_and_are_capped():
    """Each ejection lasts C{base_ejection} times the number of ejections so
    far (10 s, 20 s), capped at C{max_ejection} (25 s)."""
    b, clock = make(outlier=OUTLIER)
    periods = []
    for _ in range(4):
        start = clock.seconds()
        fail(b, "b1", 3)
        until = b.pool.health["b1"].ejected_until
        periods.append(until - start)
        clock.advance(until - start)
        assert "b1" in ids(b)
    assert periods == [10.0, 20.0, 25.0, 25.0]


def test_a_backend_good_for_max_ejection_seconds_is_forgiven():
    """After C{max_ejection} seconds back in the pool, the next ejection is
    the base period again rather than a longer one."""
    b, clock = make(outlier=OUTLIER)
    fail(b, "b1", 3)
    clock.advance(10)
    fail(b, "b1", 3)
    assert b.pool.health["b1"].ejected_until - clock.seconds() == 20.0
    clock.advance(20)
    clock.advance(25)
    fail(b, "b1", 3)
    assert b.pool.health["b1"].ejected_until - clock.seconds() == 10.0


def test_never_ejects_more_than_the_allowed_share():
    """With 4 backends and max_ejection_percent=50, two may be ejected at
    once; the third keeps taking traffic however often it fails; once an
    ejection ends, another may be ejected."""
    b, clock = make(n=4, outlier=OUTLIER)
    for bid in ("b1", "b2", "b3"):
        fail(b, bid, 3)
    assert ids(b) == ["b3", "b4"]
    fail(b, "b3", 30)
    assert ids(b) == ["b3", "b4"]
    clock.advance(10)
    assert ids(b) == ["b1", "b2", "b3", "b4"]
    fail(b, "b3", 3)
    assert ids(b) == ["b1", "b2", "b4"]


def test_a_lone_backend_is_never_ejected_by_default_share():
    """Ejecting the only backend of a pool would leave nothing: at 50 % a
    pool of one never ejects."""
    b, _ = make(n=1, outlier=OUTLIER)
    fail(b, "b1", 10)
    assert ids(b) == ["b1"]


def test_no_outlier_policy_means_no_passive_ejection():
    """With C{outlier} null, connect failures never eject."""
    b, _ = make(outlier=None)
    fail(b, "b1", 50)
    assert ids(b) == ["b1", "b2"]


def test_ejection_ending_while_checks_fail_keeps_backend_down_silently():
    """If active checks took the backend down during its ejection, the end
    of the ejection changes nothing visible: no C{up} event, still not a
    candidate, and its reason says why."""
    b, clock = make(outlier=OUTLIER, health_check=CHECK)
    b.health_result("b1", True, "check passed")
    seen = events(b)
    fail(b, "b1", 3)
    for _ in range(3):
        b.health_result("b1", False, "check failed: connection refused")
    assert [e["state"] for e in seen] == ["down"]
    clock.advance(10)
    assert [e["state"] for e in seen] == ["down"]
    assert ids(b) == ["b2"]
    assert b.pool.health["b1"].reason == (
        "ejection period over; still failing checks: check failed: connection refused"
    )
    b.health_result("b1", True, "check passed")
    b.health_result("b1", True, "check passed")
    assert [e["state"] for e in seen] == ["down", "up"] and ids(b) == ["b1", "b2"]


def test_checks_passing_during_an_ejection_do_not_end_it():
    """An ejected backend stays out for its period even if active checks
    pass meanwhile, and no premature C{up} event is published."""
    b, clock = make(outlier=OUTLIER, health_check=CHECK)
    seen = events(b)
    fail(b, "b1", 3)
    for _ in range(3):
        b.health_result("b1", True, "check passed")
    assert ids(b) == ["b2"] and [e["state"] for e in seen] == ["down"]
    clock.advance(10)
    assert ids(b) == ["b1", "b2"] and [e["state"] for e in seen] == ["down", "up"]


def test_removed_backend_cancels_its_ejection_timer():
    """Removing an ejected backend leaves no timer behind."""
    b, clock = make(outlier=OUTLIER)
    fail(b, "b1", 3)
    assert len(clock.getDelayedCalls()) == 1
    b.apply(replace(b.config, version=2, backends=b.config.backends[1:]))
    assert clock.getDelayedCalls() == []


# Slow start ---------------------------------------------------------------------


def test_slow_start_ramps_effective_weight_from_a_tenth_to_full():
    """A backend that recovers starts at 10 % of its weight and ramps
    linearly (the floor applies until 10 % of the window) to full weight at
    the end of the window, as the housekeeping ticker refreshes it."""
    b, clock = make(weights=[10, 10], slow_start=10.0, health_check=replace(CHECK, rise=1))
    b.start(interval=1.0)
    clock.advance(10)
    b.health_result("b1", False, "check failed: x")
    b.health_result("b1", True, "check passed")
    seen = []
    for _ in range(11):
        seen.append(candidate(b, "b1").weight)
        clock.advance(1)
    assert seen == pytest.approx([1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert candidate(b, "b2").weight == 10
    assert not b.pool.ramping()
    b.stop()


def test_weighted_round_robin_sees_the_ramp():
    """Weighted round-robin sends a recovering backend its ramped share:
    1 pick in 11 at the start, 5 in 15 at half the window, and an even
    split once the window is over."""
    b, clock = make(
        weights=[10, 10], slow_start=10.0, health_check=replace(CHECK, rise=1),
        strategy=StrategyChoice("weighted-round-robin"),
    )
    b.start(interval=0.5)
    clock.advance(10)
    b.health_result("b1", False, "check failed: x")
    b.health_result("b1", True, "check passed")

    def share(n):
        return Counter(b.route(("192.0.2.1", i)).id for i in range(n))

    assert share(11) == {"b1": 1, "b2": 10}
    clock.advance(5)
    assert share(15) == {"b1": 5, "b2": 10}
    clock.advance(5)
    assert share(20) == {"b1": 10, "b2": 10}
    b.stop()


def test_new_backend_and_reenabled_backend_slow_start():
    """A backend added by a config change, and one an operator sets back to
    C{up} from C{disabled}, both start at the floor weight."""
    b, clock = make(weights=[10, 10], slow_start=10.0)
    new = Backend("b3", "127.0.0.1", 9003, weight=10)
    b.apply(replace(b.config, version=2, backends=b.config.backends + (new,)))
    assert candidate(b, "b3").weight == 1
    off = replace(b.config.backends[0], state="disabled")
    b.apply(replace(b.config, version=3, backends=(off,) + b.config.backends[1:]))
    assert "b1" not in ids(b)
    b.apply(replace(b.config, version=4, backends=(replace(off, state="up"),) + b.config.backends[1:]))
    assert candidate(b, "b1").weight == 1
    assert candidate(b, "b2").weight == 10


def test_ejection_end_starts_slow_start():
    """A backend back from an ejection ramps too."""
    b, clock = make(weights=[10, 10], slow_start=10.0, outlier=OUTLIER)
    fail(b, "b1", 3)
    clock.advance(10)
    assert candidate(b, "b1").weight == 1


# Events and log lines ----------------------------------------------------------------


def test_each_transition_is_one_event_and_one_log_line_with_reason():
    """Down by check, up by check, ejected and back: four transitions, four
    C{backend} events, four log lines each naming backend, state and
    reason."""
    b, clock = make(health_check=CHECK, outlier=OUTLIER)
    seen = events(b)
    lines = []

    def observe(event):
        if event.get("log_namespace") == "lbproxy.policy.balancer" and "backend" in event:
            lines.append((event["backend"], event["state"], event["reason"]))

    globalLogPublisher.addObserver(observe)
    try:
        b.health_result("b1", False, "check failed: connection refused")
        b.health_result("b1", True, "check passed")
        b.health_result("b1", True, "check passed")
        fail(b, "b2", 3)
        clock.advance(10)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [(e["id"], e["state"], e["reason"]) for e in seen] == lines
    assert [(x[0], x[1]) for x in lines] == [
        ("b1", "down"), ("b1", "up"), ("b2", "down"), ("b2", "up"),
    ]


class _Conn:
    """A relayed connection as the balancer sees it."""

    bytes_up = bytes_down = idle_mark = 0
    idle_since = 0.0

    def abort(self, why):
        self.aborted = why


def test_pool_direct_update_keeps_health_of_staying_backends():
    """Adopting a new config keeps the health of backends that stay and
    drops that of backends that go."""
    config = Config(version=1, backends=(Backend("a", "127.0.0.1", 1), Backend("b", "127.0.0.1", 2)),
                    health_check=CHECK)
    pool = Pool(config, 0.0)
    pool.check_result("a", False, "check failed: x", 1.0)
    pool.update(replace(config, version=2, backends=config.backends[:1]), 2.0)
    assert not pool.health["a"].healthy and "b" not in pool.health
    assert [c.id for c in pool.candidates] == []


def _relay(outlier=OUTLIER):
    """A relay engine's frontend on a memory reactor, connected through to
    backend b1; returns the balancer, the frontend and the backend
    protocol."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock

    from lbproxy.relay.twisted_engine import ProxyFactory

    reactor = MemoryReactorClock()
    b, _ = make(n=1, clock=reactor, outlier=outlier)
    frontend = ProxyFactory(b, reactor).buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
    client = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 4000))
    frontend.makeConnection(client)
    host, port, factory, _, _ = reactor.tcpClients[-1]
    wrapper = factory.buildProtocol(IPv4Address("TCP", host, port))
    wrapper.makeConnection(StringTransport())
    return b, frontend, frontend.peer


def test_relay_reports_a_backend_reset_for_passive_health():
    """When the backend side of a relayed connection is lost uncleanly and
    neither lbproxy nor the client closed it, the relay reports a reset:
    it counts as a failure toward ejection."""
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    b, frontend, backend = _relay()
    backend.connectionLost(Failure(ConnectionLost()))
    assert b.pool.stats["b1"].consecutive_failures == 1
    assert b.pool.stats["b1"].failures == 1


def test_relay_does_not_blame_the_backend_for_our_own_abort():
    """An abort by lbproxy (idle or drain timeout) loses the backend side
    uncleanly too, but is not the backend's fault: no failure is counted."""
    from twisted.internet.error import ConnectionAborted
    from twisted.python.failure import Failure

    b, frontend, backend = _relay()
    frontend.abort("idle-timeout")
    backend.connectionLost(Failure(ConnectionAborted()))
    assert b.pool.stats["b1"].consecutive_failures == 0
    assert b.pool.stats["b1"].failures == 0


def test_backends_down_by_checks_count_toward_the_ejection_share():
    """With 4 backends at 50 %, one down by its checks and one ejected, a
    third is not ejected: passive ejection never takes more than half the
    pool out of service, whatever took the rest out."""
    b, _ = make(n=4, outlier=OUTLIER, health_check=CHECK)
    b.health_result("b1", False, "check failed: connection refused")
    fail(b, "b2", 3)
    assert ids(b) == ["b3", "b4"]
    fail(b, "b3", 30)
    assert ids(b) == ["b3", "b4"]


def test_turning_slow_start_off_ends_ramps_in_progress():
    """Setting slow start to 0 mid-ramp gives full weight at once and ends
    the ramp, so the ticker stops rebuilding the candidates."""
    b, clock = make(weights=[10, 10], slow_start=10.0)
    new = Backend("b3", "127.0.0.1", 9003, weight=10)
    b.apply(replace(b.config, version=2, backends=b.config.backends + (new,)))
    assert b.pool.ramping() and candidate(b, "b3").weight == 1
    b.apply(replace(b.config, version=3, slow_start=0.0))
    assert candidate(b, "b3").weight == 10
    assert not b.pool.ramping()


def test_backends_of_the_first_config_do_not_slow_start():
    """At process start the configured backends take full weight at once
    (as HAProxy does): they are presumably serving already."""
    b, _ = make(weights=[10, 10], slow_start=10.0)
    assert [c.weight for c in b.pool.candidates] == [10, 10]
    assert not b.pool.ramping()
