"""
Traffic control without sockets: the CIDR matcher, the bounded client
table and its token buckets, the bounded refusal log, and the session's
admission and queue over a real Balancer and a task.Clock.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from lbproxy.interfaces import IBalancer
from lbproxy.model.config import Backend, ClientLimits, Config, StrategyChoice
from lbproxy.model.errors import ConfigError
from lbproxy.model.service import parse_document, update_service
from lbproxy.policy.balancer import Balancer
from lbproxy.policy.limits import (
    ClientTable, Networks, ProcessLimit, RefusalLog, Rules, parse_address,
)
from lbproxy.relay.route import SingleServiceRoute
from lbproxy.relay.session import ConnectionSession, Wait


class Conn:
    """An engine connection: counts and nothing else."""

    bytes_up = bytes_down = 0
    idle_mark = 0
    idle_since = 0.0

    def local_address(self):
        return ("127.0.0.1", 1)

    def abort(self, why):
        pass

    def close(self, why):
        pass


def balancer(factories, n=1, **service):
    clock = Clock()
    config = Config(
        version=1, name="s",
        backends=tuple(Backend(f"b{i}", "127.0.0.1", 9000 + i, max_connections=service.pop("backend_max", None))
                       for i in range(n)),
        strategy=StrategyChoice("round-robin"), health_check=None, **service,
    )
    b = Balancer(config, factories, reactor=clock)
    return b, clock


def session(b, clock, host="192.0.2.1", port=1000):
    s = ConnectionSession(SingleServiceRoute(b), clock, (host, port))
    return s, s.accepted()


# The matcher and the table -------------------------------------------------


def test_networks_match_both_families_and_mapped_addresses():
    """A compiled list matches IPv4, IPv6 and IPv4-mapped IPv6 by prefix, and nothing else."""
    nets = Networks(("10.0.0.0/8", "192.0.2.7", "2001:db8::/32"))
    inside = ["10.1.2.3", "192.0.2.7", "2001:db8::1", "::ffff:10.9.9.9"]
    outside = ["11.0.0.1", "192.0.2.8", "2001:db9::1", "::1"]
    assert all(parse_address(h) in nets for h in inside)
    assert not any(parse_address(h) in nets for h in outside)
    assert parse_address("not-an-address") is None


def test_token_bucket_refills_at_the_rate_up_to_the_burst():
    """rate=2, burst=3: three at once, then one per half second; the refused ones take no token."""
    rules = Rules(Config(client_limits=ClientLimits(rate=2, burst=3)))
    table = ClientTable()
    got = [table.acquire(1, rules, 0.0) for _ in range(5)]
    assert [g if isinstance(g, str) else "ok" for g in got] == ["ok"] * 3 + ["client-rate"] * 2
    assert table.acquire(1, rules, 0.25) == "client-rate"
    assert not isinstance(table.acquire(1, rules, 0.5), str)


def test_client_connections_are_counted_until_released():
    """max_connections=2 per client: a third waits for a release; other clients are not affected."""
    rules = Rules(Config(client_limits=ClientLimits(max_connections=2)))
    table = ClientTable()
    a, b = table.acquire(1, rules, 0), table.acquire(1, rules, 0)
    assert table.acquire(1, rules, 0) == "client-connections"
    assert not isinstance(table.acquire(2, rules, 0), str)
    table.release(a)
    assert not isinstance(table.acquire(1, rules, 0), str)


def test_table_is_bounded_and_evicts_only_idle_entries():
    """A flood of new keys evicts idle entries, oldest first, never one with open connections."""
    rules = Rules(Config(client_limits=ClientLimits(max_connections=5)))
    table = ClientTable(max_entries=10)
    busy = table.acquire(-1, rules, 0)
    for key in range(1000):
        table.release(table.acquire(key, rules, 0))
    assert len(table) == 10
    assert table.entries[-1] is busy and busy.active == 1
    assert table.evicted == 991


def test_table_at_full_size_uses_less_than_64_mib():
    """100,000 entries (each with a token bucket, all idle so in the LRU too), measured with tracemalloc."""
    rules = Rules(Config(client_limits=ClientLimits(max_connections=10, rate=20, burst=40)))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = ClientTable()
        for key in range(100_000):
            table.release(table.acquire(key * 7919, rules, 0.0))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == 100_000 and len(table.idle) == 100_000
    print(f"client table at 100,000 entries: {used / 2**20:.1f} MiB")
    assert used < 64 * 2**20


def test_refusal_log_is_one_line_per_reason_per_interval():
    """A flood of 10,000 refusals logs one line at once and one with the count after the interval."""
    lines = []
    observer = lambda e: lines.append(e) if e.get("reason") else None
    globalLogPublisher.addObserver(observer)
    try:
        refusals = RefusalLog("s", interval=10)
        for i in range(10_000):
            refusals.refused("denied", "192.0.2.1", i / 1000)
        refusals.flush(9.99)
        assert [e["n"] for e in lines] == [1]
        refusals.flush(10.0)
        assert [e["n"] for e in lines] == [1, 9999]
        assert refusals.counts == {"denied": 10_000}
    finally:
        globalLogPublisher.removeObserver(observer)


# Validation ----------------------------------------------------------------


def test_service_fields_are_validated_and_kept():
    """The document takes allow/deny/client_limits/max_queue/queue_timeout, refuses bad ones, and round-trips."""
    doc = parse_document({"services": [{"name": "s", "listen": ["tcp:0"]}]})
    new, s = update_service(doc, "s", {
        "allow": ["10.0.0.0/8", "::1"], "deny": ["10.0.0.7"], "max_queue": 3, "queue_timeout": 2.5,
        "client_limits": {"max_connections": 4, "rate": 20, "burst": 40, "prefix_v4": 24, "prefix_v6": 64},
    }, False)
    assert s.allow == ("10.0.0.0/8", "::1/128") and s.deny == ("10.0.0.7/32",)
    assert s.client_limits == ClientLimits(4, 20.0, 40, 24, 64)
    assert parse_document(new.to_json()).service("s") == s
    for bad in ({"deny": ["10.0.0.300"]}, {"client_limits": {"prefix_v4": 33}},
                {"max_queue": -1}, {"queue_timeout": 0}, {"client_limits": {"rate": "x"}}):
        with pytest.raises(ConfigError):
            update_service(doc, "s", bad, False)


# The session ---------------------------------------------------------------


def test_deny_and_allow_refuse_before_a_backend_is_chosen(factories):
    """A denied or not-allowed client is closed at once, counted by reason; nothing is routed."""
    b, clock = balancer(factories, deny=("192.0.2.0/24",), allow=("192.0.2.0/24", "198.51.100.0/24"))
    s, answer = session(b, clock, "192.0.2.9")
    assert answer is None and s.outcome == "denied" and s.finished
    s, answer = session(b, clock, "203.0.113.1")
    assert answer is None and s.outcome == "not-allowed"
    s, answer = session(b, clock, "198.51.100.5")
    assert answer is not None and answer.id == "b0"
    view = b.traffic_state.view()["refused"]
    assert (view["denied"], view["not-allowed"], b.totals.accepted) == (1, 1, 1)


def test_per_client_limits_release_at_the_end(factories):
    """max_connections=1 per /24: a second client of the prefix is refused until the first ends."""
    b, clock = balancer(factories, client_limits=ClientLimits(max_connections=1, prefix_v4=24))
    s1, c1 = session(b, clock, "192.0.2.1")
    s1.connected(Conn())
    assert session(b, clock, "192.0.2.200")[1] is None
    assert session(b, clock, "198.51.100.1")[1] is not None
    s1.ended(0, 0)
    assert session(b, clock, "192.0.2.200")[1] is not None


def test_queue_serves_in_turn_and_refuses_when_full(factories):
    """Backend max 1, queue 3: 1 served, 3 wait, 6 refused; each end hands the next waiter the backend."""
    b, clock = balancer(factories, backend_max=1, max_queue=3, queue_timeout=5)
    answers = [session(b, clock, "192.0.2.1", 1000 + i) for i in range(10)]
    kinds = [type(a).__name__ for _, a in answers]
    assert kinds == ["Candidate"] + ["Wait"] * 3 + ["NoneType"] * 6
    assert b.traffic_state.view()["refused"]["queue-full"] == 6
    got = []
    for s, a in answers[1:4]:
        a.notify = got.append
    first = answers[0][0]
    first.connected(Conn())
    clock.advance(1)
    first.ended(0, 0)
    assert [c.id for c in got] == ["b0"]
    assert b.traffic_state.view()["queue"]["length"] == 2
    assert b.traffic_state.view()["queue"]["longest_wait"] == 1.0
    # The connect under way counts against max_connections: no one else gets it.
    s2 = answers[1][0]
    s2.connected(Conn())
    s2.ended(0, 0)
    assert len(got) == 2
    clock.advance(10)
    assert got[2] is None and answers[3][0].outcome == "queue-timeout"
    assert b.traffic_state.view()["refused"]["queue-timeout"] == 1


def test_abandoned_connect_frees_the_backend_for_the_queue(factories):
    """A client that leaves while its connect is under way gives the next waiter the backend."""
    b, clock = balancer(factories, backend_max=1, max_queue=3)
    s1, c1 = session(b, clock)
    s2, wait = session(b, clock)
    got = []
    wait.notify = got.append
    s1.ended(0, 0)
    assert [c.id for c in got] == ["b0"]


def test_rules_change_at_runtime_and_a_removed_queue_closes_waiters(factories):
    """Applying a config swaps the rules; waiters of a queue that is gone are closed, a raised limit serves them."""
    b, clock = balancer(factories, backend_max=1, max_queue=5)
    session(b, clock)
    waits = [session(b, clock)[1] for _ in range(2)]
    got = []
    for w in waits:
        w.notify = got.append
    backend = replace(b.config.backends[0], max_connections=2)
    b.apply(replace(b.config, version=2, backends=(backend,)))
    assert [c.id for c in got] == ["b0"]
    b.apply(replace(b.config, version=3, max_queue=0, deny=("192.0.2.0/24",)))
    assert got[1] is None and b.traffic is not None
    assert session(b, clock)[1] is None
    b.apply(replace(b.config, version=4, deny=()))
    assert b.traffic is None


def test_process_limit_is_over_every_service(factories):
    """--max-connections counts every service's connections together."""
    process = ProcessLimit(1)
    b1, clock = balancer(factories)
    b2, _ = balancer(factories)
    b1.process = b2.process = process
    s1, c1 = session(b1, clock)
    assert c1 is not None and session(b2, clock)[1] is None
    s1.ended(0, 0)
    assert session(b2, clock)[1] is not None


def test_process_limit_counts_tls_handshakes_in_progress(factories):
    """
    A plain connection is refused while admitted connections plus TLS
    handshakes in progress fill --max-connections: both hold sockets.
    """
    process = ProcessLimit(2)
    b, clock = balancer(factories)
    b.process = process
    s1, c1 = session(b, clock)
    assert c1 is not None and process.begin_handshake()
    assert session(b, clock)[1] is None
    process.end_handshake()
    assert session(b, clock)[1] is not None


def test_balancer_still_provides_ibalancer(factories):
    """The balancer with traffic control keeps its interface."""
    b, _ = balancer(factories, max_queue=1)
    assert verifyObject(IBalancer, b)
    assert isinstance(Wait(), Wait)


# The API and /metrics ------------------------------------------------------


def test_api_patches_rules_and_shows_counters(factories):
    """PATCH /api/v1/services/NAME takes the traffic fields (validated, versioned, in force at once);
    GET shows them with the counters; /metrics has refusals by reason and the queue."""
    from tests.webtools import Admin

    admin = Admin(factories)
    body = {"name": "redis", "listen": ["tcp:6379"], "backends": [{"host": "127.0.0.1", "port": 6379}]}
    assert admin.request("POST", "/api/v1/services", body).code == 201
    r = admin.request("PATCH", "/api/v1/services/redis", {
        "deny": ["192.0.2.0/24"], "max_queue": 4, "queue_timeout": 3,
        "client_limits": {"max_connections": 2, "rate": 20, "burst": 40, "prefix_v4": 24, "prefix_v6": 64},
    })
    assert r.code == 200, r.json
    assert r.header("ETag") == '"3"'
    assert r.json["deny"] == ["192.0.2.0/24"] and r.json["client_limits"]["prefix_v6"] == 64
    assert r.json["traffic"]["queue"] == {"length": 0, "wait_now": 0.0, "longest_wait": 0.0, "served": 0}
    b = admin.controller.table.balancer("redis")
    s = ConnectionSession(SingleServiceRoute(b), admin.clock, ("192.0.2.5", 1))
    assert s.accepted() is None
    assert admin.get("/api/v1/services/redis").json["traffic"]["refused"]["denied"] == 1
    bad = admin.request("PATCH", "/api/v1/services/redis", {"allow": ["300.0.0.0/8"]})
    assert bad.code == 400 and "allow" in bad.json["error"]
    assert admin.get("/api/v1/services/redis").json["allow"] == []
    text = admin.get("/metrics").body.decode()
    assert 'lbproxy_traffic_refused_total{reason="denied",service="redis"} 1.0' in text
    assert 'lbproxy_queue_length{service="redis"} 0.0' in text


def test_verdict_cache_is_bounded_and_per_rules():
    """The per-address verdicts of a rules snapshot stay under SEEN_MAX, and a new snapshot starts empty."""
    rules = Rules(Config(deny=("10.0.0.0/8",)))
    for i in range(Rules.SEEN_MAX * 3):
        rules.classify(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert 0 < len(rules.seen) <= Rules.SEEN_MAX
    assert rules.classify("10.0.0.1") == "denied" and rules.classify("11.0.0.1") is True
    assert Rules(Config(deny=("10.0.0.0/8",))).seen == {}


class ProxyRoute:
    """A listener route whose clients from 127.0.0.0/8 start with a PROXY header."""

    routes_by_sni = False
    sni_timeout = 5.0
    endpoint = "tcp:0"

    def __init__(self, balancer):
        import ipaddress

        self.accept_proxy = (ipaddress.ip_network("127.0.0.0/8"),)
        self._balancer = balancer
        self.refusals = []

    def default(self):
        return self._balancer

    def for_server_name(self, name):
        return None

    def refused(self, reason):
        self.refusals.append(reason)


def test_rules_see_the_address_a_proxy_header_gives(factories):
    """Behind a trusted PROXY-protocol source, the deny list judges the address of the header, not the peer's."""
    b, clock = balancer(factories, deny=("192.0.2.9/32",))
    route = ProxyRoute(b)
    s = ConnectionSession(route, clock, ("127.0.0.1", 5000))
    s.accepted()
    assert s.client_bytes(b"PROXY TCP4 192.0.2.9 10.0.0.1 1234 80\r\n") is None
    assert s.outcome == "denied" and b.traffic_state.view()["refused"]["denied"] == 1
    s = ConnectionSession(route, clock, ("127.0.0.1", 5001))
    s.accepted()
    assert s.client_bytes(b"PROXY TCP4 192.0.2.10 10.0.0.1 1234 80\r\n").id == "b0"


def test_service_table_shares_the_process_limit(factories):
    """--max-connections (the table's settings) counts the connections of every service together."""
    from lbproxy.model.config import ProxySettings
    from lbproxy.policy.services import ServiceTable

    doc = parse_document({"services": [
        {"name": n, "listen": [f"tcp:{p}"], "backends": [{"id": "b1", "host": "127.0.0.1", "port": p}]}
        for n, p in (("a", 7001), ("b", 7002))
    ]})
    clock = Clock()
    table = ServiceTable(doc, factories, ProxySettings(max_connections=1), reactor=clock)
    a, bb = table.balancer("a"), table.balancer("b")
    s1, c1 = session(a, clock)
    assert c1 is not None and session(bb, clock)[1] is None
    assert bb.totals.rejected == 1
    s1.ended(0, 0)
    assert session(bb, clock)[1] is not None
