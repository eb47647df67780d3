"""
The parent and a worker over AMP, without processes: the parent's
L{Worker} channel and a L{WorkerChannel} joined by L{iosim}, on fake
clocks.  What runs is the real command encoding both ways.
"""

from __future__ import annotations

import dataclasses
import json

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface.verify import verifyObject

from lbproxy.control.worker_main import WorkerChannel
from lbproxy.control.worker_protocol import ApplyConfig, Start
from lbproxy.control.workers import Worker, WorkerPool
from lbproxy.interfaces import IConfigObserver
from lbproxy.model.changes import add_backend
from lbproxy.model.config import Backend, Config, ProxySettings
from lbproxy.policy.balancer import Balancer
from tests.test_balancer import FakeConnection


def parent_balancer(factories, n=2):
    config = Config(version=1, backends=tuple(Backend(f"b{i}", "127.0.0.1", 9000 + i) for i in range(n)))
    return Balancer(config, factories, ProxySettings(access_log=False), reactor=Clock())


def pool_with(factories, n_workers=2, worker_factories=None):
    """
    A pool (not started: no processes) whose slots hold workers joined to
    in-memory worker channels that were started and given the config.
    """
    balancer = parent_balancer(factories)
    pool = WorkerPool({"workers": n_workers, "listen-tcp": ("127.0.0.1", 0, 8)}, balancer, Clock())
    pool._relay_new()
    children, pumps = [], []
    for i in range(n_workers):
        worker = Worker(pool, i)
        child = WorkerChannel(Clock(), worker_factories[i] if worker_factories else factories)
        _, _, pump = iosim.connectedServerAndClient(lambda: child, lambda: worker.channel)
        pool.workers[i] = worker
        s = pool.settings
        worker.call(Start, index=i, report_interval=0.5, **dataclasses.asdict(s))
        pool._apply(worker, balancer.config.version, json.dumps(balancer.config.to_json()))
        pump.flush()
        children.append(child)
        pumps.append(pump)
    return pool, balancer, children, pumps


def flush(pumps):
    for _ in range(3):
        for p in pumps:
            p.flush()


def test_pool_provides_IConfigObserver(factories):
    """The worker pool follows the controller through IConfigObserver."""
    pool = WorkerPool({"workers": 2, "listen-tcp": ("127.0.0.1", 0, 8)}, parent_balancer(factories), Clock())
    assert verifyObject(IConfigObserver, pool)


def test_start_carries_every_proxy_setting():
    """Start names every field of ProxySettings, so a new setting cannot
    silently stay behind in the parent."""
    names = {name.decode() for name, _ in Start.arguments} - {"index", "report_interval"}
    assert names == {f.name for f in dataclasses.fields(ProxySettings)}


def test_a_config_larger_than_one_amp_value_is_applied(factories):
    """A document far over AMP's 64 KiB value limit crosses in chunks and
    is acknowledged with its version."""
    pool, balancer, children, pumps = pool_with(factories, 1)
    config = balancer.config
    for i in range(1500):
        config, _ = add_backend(config, {"host": "127.0.0.1", "port": 10000 + i, "id": f"x{i}"})
    document = json.dumps(config.to_json())
    assert len(document) > 3 * 65535
    pool.applied(balancer.config, config)
    flush(pumps)
    assert pool.workers[0].applied == config.version and pool.workers[0].apply_error is None
    assert len(children[0].balancer.config.backends) == 1502


def test_each_worker_acknowledges_and_a_failure_is_logged(factories):
    """Every worker answers a change with the version it applied; one that
    cannot apply it (here: it lacks the strategy plugin) is logged with its
    reason and shown in the pool's status, and keeps its last version."""
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        lacking = {k: v for k, v in factories.items() if k != "least-connections"}
        pool, balancer, children, pumps = pool_with(factories, 2, [factories, lacking])
        assert [w.applied for w in pool.workers] == [1, 1]
        new = dataclasses.replace(
            balancer.config, version=2,
            strategy=dataclasses.replace(balancer.config.strategy, name="least-connections"),
        )
        pool.applied(balancer.config, new)
        flush(pumps)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert [w.applied for w in pool.workers] == [2, 1]
    status = pool.status()["workers"]
    assert status[0]["apply_error"] is None and "least-connections" in status[1]["apply_error"]
    failures = [e for e in logged if "failed to apply" in (e.get("log_format") or "")]
    assert [(e["log_level"], e["index"], e["version"]) for e in failures] == [(LogLevel.error, 1, 2)]
    assert "least-connections" in failures[0]["why"]


def test_reports_sum_in_the_parent_and_routes_reach_its_feed(factories):
    """A worker's report (its counters, its connections in flight, its
    routing decisions) lands in the parent's balancer and recorder."""
    pool, balancer, children, pumps = pool_with(factories, 2)
    for child in children:
        b = child.balancer
        assert b.admit()
        cand = b.route(("10.0.0.1", 5))
        conn = FakeConnection()
        conn.bytes_up = 7
        b.connection_opened(cand, conn, 0.01)
        child.report()
    flush(pumps)
    assert (balancer.totals.accepted, balancer.totals.active, balancer.totals.bytes_up) == (2, 2, 14)
    assert sum(s.active for s in balancer.pool.stats.values()) == 2
    assert balancer.routes.drain()["total"] == 2
    assert [w["active"] for w in pool.status()["workers"]] == [1, 1]


def test_forced_close_answers_what_the_workers_closed(factories):
    """CloseBackend closes each worker's connections to the backend and
    the pool's answer is the sum of theirs."""
    pool, balancer, children, pumps = pool_with(factories, 2)
    conns = []
    for k, child in enumerate(children):
        cand = next(c for c in child.balancer.pool.candidates if c.id == "b0")
        for _ in range(k + 1):
            conn = FakeConnection()
            child.balancer.connection_opened(cand, conn, 0.01)
            conns.append(conn)
    got = []
    pool.close("b0", "removed by operator").addCallback(got.append)
    flush(pumps)
    assert got == [3]
    assert [c.closed for c in conns] == [("abort", "removed by operator")] * 3


def test_refresh_takes_a_fresh_report_from_every_worker(factories):
    """A poll's answer is a report: after refresh() the parent counts
    what the workers have open right now."""
    pool, balancer, children, pumps = pool_with(factories, 2)
    cand = next(c for c in children[1].balancer.pool.candidates if c.id == "b1")
    children[1].balancer.connection_opened(cand, FakeConnection(), 0.01)
    got = []
    balancer.count_connections("b1").addCallback(got.append)
    flush(pumps)
    assert got == [1]


def test_health_results_go_to_workers_and_only_their_own_events_come_back(factories):
    """An active check result in the parent reaches every worker's pool;
    the events it causes there are not sent back, while a worker's own
    passive ejection is republished with the worker's index."""
    pool, balancer, children, pumps = pool_with(factories, 2)
    seen = []
    balancer.events.subscribe(lambda e: seen.append(e.data) if e.type == "backend" else None)
    b = children[0].balancer
    cand = next(c for c in b.pool.candidates if c.id == "b1")
    for _ in range(b.config.outlier.consecutive_failures):
        b.connect_failed(cand, "refused")
    flush(pumps)
    assert [(d["id"], d["state"], d["worker"]) for d in seen] == [("b1", "down", 0)]
    assert seen[-1]["ejected_until"] > 0
    del seen[:]
    fall = balancer.config.health_check.fall if balancer.config.health_check else 3
    for _ in range(fall):
        balancer.health_result("b0", False, "check failed: test")
    flush(pumps)
    assert all(not c.balancer.pool.health["b0"].healthy for c in children)
    assert seen and all("worker" not in d for d in seen)


def test_a_worker_that_exits_leaves_the_sums(factories):
    """When a worker's process ends its open connections leave the
    parent's counters (what it finished stays) and its reports, even late
    ones, are no longer taken."""
    pool, balancer, children, pumps = pool_with(factories, 1)
    b = children[0].balancer
    assert b.admit()
    b.connection_opened(b.route(("10.0.0.1", 5)), FakeConnection(), 0.01)
    children[0].report()
    flush(pumps)
    assert balancer.totals.active == 1
    from twisted.internet.error import ProcessTerminated

    pool.workers[0].processEnded(Failure(ProcessTerminated(signal=9)))
    assert (balancer.totals.active, balancer.totals.accepted) == (0, 1)
    assert pool.workers == [None]


def test_routing_batches_beyond_the_sample_keep_their_counts(factories):
    """A worker's routing batch larger than the sample ring arrives whole
    in the parent's recorder: every decision counted per backend, the
    sample kept as a sample (the UI's feed drains the parent's recorder)."""
    pool, balancer, children, pumps = pool_with(factories, 1)
    b = children[0].balancer
    for i in range(120):
        b.route(("10.0.0.%d" % (i % 250), 5))
    children[0].report()
    flush(pumps)
    batch = balancer.routes.drain()
    assert batch["total"] == 120 and batch["counts"] == {"b0": 60, "b1": 60}
    assert len(batch["sample"]) == 50 and batch["dropped"] == 70


def test_twistd_wiring_follows_the_controller_and_shows_the_workers():
    """With C{--workers 2}, the assembly registers the pool with the config
    controller (a change reaches C{applied}) and GET /api/v1/status lists
    its workers."""
    from treq.testing import StubTreq
    from twisted.internet.testing import MemoryReactorClock

    from lbproxy.startup.assembly import assemble
    from lbproxy.startup.tap import Options
    from tests.webtools import settle

    o = Options()
    o.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--workers", "2", "--backend", "127.0.0.1:9001"])
    built = assemble(o.spec, MemoryReactorClock())
    top = built.top
    pool = top.getServiceNamed("proxy")
    heard = []
    pool.applied = lambda old, new: heard.append((old.version, new.version))
    built.controller.change(lambda c: (dataclasses.replace(c, version=c.version + 1), None))
    assert heard == [(1, 2)]
    stub = StubTreq(built.admin.resource())
    response = settle(stub, stub.get("http://admin.test/api/v1/status"))
    body = json.loads(settle(stub, stub.content(response)))
    assert body["workers"] == [None, None] and body["worker_restarts"] == 0


def test_workers_that_die_young_come_back_ever_more_slowly(factories):
    """A slot whose workers keep dying right after their start is refilled
    after doubling delays up to the maximum; a worker that lived long
    comes back after the base delay."""
    from twisted.internet.error import ProcessTerminated

    clock = Clock()
    pool = WorkerPool({"workers": 1, "listen-tcp": ("127.0.0.1", 0, 8)}, parent_balancer(factories), clock)
    pool.running = True
    delays = []
    for lived in (0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 60):
        worker = Worker(pool, 0)
        worker.started = clock.seconds()
        pool.workers[0] = worker
        clock.advance(lived)
        worker.processEnded(Failure(ProcessTerminated(exitCode=1)))
        call = clock.getDelayedCalls()[-1]
        delays.append(round(call.getTime() - clock.seconds(), 3))
        call.cancel()
    assert delays == [0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 0.2]
    assert pool.restarts == 8
