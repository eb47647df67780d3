"""
Each built-in strategy's defining property, checked directly on candidate
tuples (no I/O).
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from lbproxy.model.config import Backend
from lbproxy.interfaces import IStrategy, IStrategyFactory
from lbproxy.policy.plugins import strategy_factories
from lbproxy.policy.pool import BackendStats, Candidate
from lbproxy.policy.strategies import builtin

FACTORIES = strategy_factories()

BUILTIN = [
    "round-robin", "weighted-round-robin", "round-robin-unweighted", "least-connections", "random",
    "power-of-two", "source-hash", "least-response-time", "first-available",
]


#: The strategies that say (through C{uses_weights}) that they ignore weights.
IGNORE_WEIGHTS = {"round-robin-unweighted", "first-available"}


def pool(*weights, limits=None):
    return tuple(
        Candidate(
            Backend(f"b{i}", "10.0.0.1", 1000 + i, weight=w,
                    max_connections=(limits[i] if limits else None)),
            float(w), BackendStats(),
        )
        for i, w in enumerate(weights)
    )


def picks(strategy, candidates, n, client=("192.0.2.1", 1234)):
    return Counter(strategy.choose(candidates, client).id for _ in range(n))


def test_every_builtin_is_a_valid_plugin(factories):
    """All built-in strategies are discovered as plugins and provide both
    plugin interfaces; what they build provides IStrategy."""
    assert set(BUILTIN) <= set(factories)
    for name in BUILTIN:
        factory = factories[name]
        assert verifyObject(IStrategyFactory, factory)
        assert IPlugin.providedBy(factory)
        strategy = factory.build({})
        assert verifyObject(IStrategy, strategy)
        assert strategy.name == name
        assert factory.description
        assert factory.uses_weights is (name not in IGNORE_WEIGHTS)


def test_unweighted_round_robin_cycles():
    """round-robin-unweighted visits each backend in order, ignoring weights."""
    s = builtin.UnweightedRoundRobin()
    c = pool(1, 5, 1)
    assert [s.choose(c, ("a", 1)).id for _ in range(6)] == ["b0", "b1", "b2"] * 2


def test_round_robin_is_weighted_and_smooth():
    """round-robin follows weights, nginx's smooth way: weights 5,1,1 give
    a a b a c a a, so the heavy backend never takes a burst of five; equal
    weights give plain rotation."""
    s = builtin.RoundRobin()
    c = pool(5, 1, 1)
    order = [s.choose(c, ("a", 1)).id for _ in range(7)]
    assert order == ["b0", "b0", "b1", "b0", "b2", "b0", "b0"]
    even = pool(1, 1, 1)
    assert [s.choose(even, ("a", 1)).id for _ in range(6)] == ["b0", "b1", "b2"] * 2


def test_weighted_round_robin_is_an_alias_of_round_robin(factories):
    """The old name weighted-round-robin builds the same weighted strategy."""
    a = factories["weighted-round-robin"].build({})
    b = factories["round-robin"].build({})
    c = pool(1, 3)
    assert [a.choose(c, ("a", 1)).id for _ in range(8)] == [b.choose(c, ("a", 1)).id for _ in range(8)]
    assert picks(a, c, 400) == {"b0": 100, "b1": 300}


@given(st.lists(st.integers(1, 20), min_size=1, max_size=6))
def test_round_robin_shares_are_exact(weights):
    """Over one full cycle (sum of weights picks) each backend is chosen
    exactly its weight in times."""
    s = builtin.RoundRobin()
    c = pool(*weights)
    counts = picks(s, c, sum(weights))
    assert [counts[f"b{i}"] for i in range(len(weights))] == weights


def test_least_connections_prefers_fewest_per_weight():
    """The backend with the fewest active connections per unit of weight
    wins; among equals, picks rotate."""
    s = builtin.LeastConnections()
    c = pool(1, 1, 2)
    c[0].stats.active, c[1].stats.active, c[2].stats.active = 3, 1, 3
    assert s.choose(c, ("a", 1)).id == "b1"
    for x in c:
        x.stats.active = 0
    c2 = pool(1, 1, 1)
    assert set(picks(s, c2, 3)) == {"b0", "b1", "b2"}


def test_least_connections_fills_by_weight():
    """Weighted least connections (HAProxy's leastconn): with weights 1:3
    and connections that stay open, the heavy backend holds three times as
    many."""
    s = builtin.LeastConnections()
    c = pool(1, 3)
    for _ in range(400):
        s.choose(c, ("a", 1)).stats.active += 1
    assert (c[0].stats.active, c[1].stats.active) == (100, 300)


def test_random_follows_weights():
    """Seeded random picks are repeatable and roughly proportional to
    weight."""
    c = pool(1, 3)
    a = picks(builtin.Random(seed=7), c, 4000)
    b = picks(builtin.Random(seed=7), c, 4000)
    assert a == b
    assert 0.70 < a["b1"] / 4000 < 0.80


def test_power_of_two_avoids_the_loaded_backend():
    """With two choices, a heavily loaded backend is picked only when both
    draws land on it, which never happens with distinct draws."""
    c = pool(1, 1, 1)
    c[0].stats.active = 100
    counts = picks(builtin.PowerOfTwo(seed=1), c, 3000)
    assert counts["b0"] == 0
    assert counts["b1"] > 1000 and counts["b2"] > 1000


def test_power_of_two_follows_weights():
    """Draws follow weights (a backend of weight 3 is drawn first about
    three times as often as one of weight 1), and with connections held
    open the pool fills in proportion to weight; a seed makes it
    repeatable."""
    c = pool(1, 1, 1, 3)
    s = builtin.PowerOfTwo(seed=3)
    s.choose(c, ("a", 1))
    first = Counter(s._draw(c, -1) for _ in range(6000))
    assert 0.45 < first[3] / 6000 < 0.55
    c = pool(1, 1, 1, 3)
    s = builtin.PowerOfTwo(seed=3)
    for _ in range(600):
        s.choose(c, ("a", 1)).stats.active += 1
    held = [x.stats.active for x in c]
    assert all(85 <= n <= 115 for n in held[:3]) and 270 <= held[3] <= 330, held
    again = pool(1, 1, 1, 3)
    s2 = builtin.PowerOfTwo(seed=3)
    for _ in range(600):
        s2.choose(again, ("a", 1)).stats.active += 1
    assert [x.stats.active for x in again] == held


@given(st.lists(st.integers(1, 20), min_size=2, max_size=6), st.integers(0, 2**32))
def test_power_of_two_draws_are_distinct(weights, seed):
    """The second draw never repeats the first, whatever the weights."""
    s = builtin.PowerOfTwo(seed=seed)
    c = pool(*weights)
    s.choose(c, ("a", 1))
    for _ in range(20):
        i = s._draw(c, -1)
        assert s._draw(c, i) != i


def test_source_hash_is_sticky_and_spread():
    """The same client always lands on the same backend, and many clients
    spread over all backends."""
    s = builtin.SourceHash()
    c = pool(1, 1, 1, 1)
    clients = [(f"198.51.100.{i}", 5000 + i) for i in range(250)] + [
        (f"203.0.113.{i}", 6000) for i in range(250)
    ]
    first = {cl[0]: s.choose(c, cl).id for cl in clients}
    again = {cl[0]: s.choose(c, (cl[0], 1)).id for cl in clients}
    assert first == again
    spread = Counter(first.values())
    assert len(spread) == 4 and min(spread.values()) > 500 / 4 * 0.6


def test_source_hash_removing_one_of_n_remaps_about_one_nth():
    """Removing one of 10 backends moves only the clients that were on it:
    about a tenth, and no client of a surviving backend moves."""
    s = builtin.SourceHash()
    full = pool(*[1] * 10)
    fewer = tuple(x for x in full if x.id != "b3")
    clients = [(f"10.{i // 250}.{i % 250}.7", 1) for i in range(5000)]
    before = {cl: s.choose(full, cl).id for cl in clients}
    after = {cl: s.choose(fewer, cl).id for cl in clients}
    moved = [cl for cl in clients if before[cl] != after[cl]]
    assert all(before[cl] == "b3" for cl in moved)
    assert 0.05 < len(moved) / len(clients) < 0.15


def test_least_response_time_prefers_fast_and_explores():
    """The backend with the lowest response EWMA takes the traffic, yet
    every explore-th pick goes round-robin so the slow one is re-measured."""
    s = builtin.LeastResponseTime(explore=10)
    c = pool(1, 1)
    c[0].stats.observe_response(0.5)
    c[1].stats.observe_response(0.01)
    counts = picks(s, c, 100)
    assert counts["b1"] >= 90 and counts["b0"] >= 1


def test_least_response_time_uses_weights_before_measuring():
    """Before anything is measured, active connections per unit of weight
    decide, so weights 1:3 fill as weighted least connections does."""
    s = builtin.LeastResponseTime(explore=0)
    c = pool(1, 3)
    for _ in range(400):
        s.choose(c, ("a", 1)).stats.active += 1
    assert (c[0].stats.active, c[1].stats.active) == (100, 300)


def test_source_hash_follows_weights():
    """A backend of weight 3 owns about three times the clients of one of
    weight 1 (it has three times the points on the ring)."""
    s = builtin.SourceHash()
    c = pool(1, 3)
    spread = Counter(s.choose(c, (f"10.1.{i // 250}.{i % 250}", 1)).id for i in range(4000))
    assert 0.68 < spread["b1"] / 4000 < 0.82


def test_least_response_time_falls_back_to_connect_latency():
    """Until a response time is measured, connect latency decides."""
    s = builtin.LeastResponseTime(explore=0)
    c = pool(1, 1)
    c[0].stats.observe_connect(0.2)
    c[1].stats.observe_connect(0.001)
    assert picks(s, c, 10) == Counter({"b1": 10})


def test_first_available_fills_in_order():
    """First-available keeps to the first backend until it reaches its
    limit, then the next; when all are full, the least loaded."""
    s = builtin.FirstAvailable(limit=2)
    c = pool(1, 1, 1, limits=[None, 5, None])
    assert s.choose(c, ("a", 1)).id == "b0"
    c[0].stats.active = 2
    assert s.choose(c, ("a", 1)).id == "b1"
    c[1].stats.active = 5
    assert s.choose(c, ("a", 1)).id == "b2"
    c[2].stats.active = 4
    c[0].stats.active = 3
    assert s.choose(c, ("a", 1)).id == "b1"


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(1, 10), min_size=1, max_size=8), n=st.integers(1, 50))
def test_every_strategy_returns_a_candidate(weights, n):
    """Whatever the pool, every built-in strategy returns one of the
    candidates it was given."""
    c = pool(*weights)
    for name in BUILTIN:
        s = FACTORIES[name].build({})
        for i in range(n):
            assert s.choose(c, (f"192.0.2.{i % 200}", i)) in c
