"""
Every service through the workers, without processes: the parent's
L{WorkerPool} over a L{ServiceTable} of two services and worker channels
joined by L{iosim} (the real command encoding both ways), on fake clocks;
and the parent's per-slot sockets (L{WorkerSockets}) on real sockets.
"""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest
from twisted.internet.task import Clock
from twisted.test import iosim

from lbproxy.control.listeners import ListenRefused
from lbproxy.control.worker_main import WorkerChannel
from lbproxy.control.worker_protocol import Start
from lbproxy.control.worker_sockets import WorkerSockets
from lbproxy.control.workers import Worker, WorkerPool
from lbproxy.model.changes import remove_backend
from lbproxy.model.config import Backend, Config, ProxySettings
from lbproxy.model.service import Document
from lbproxy.policy.services import ServiceTable
from tests.test_balancer import FakeConnection, record


def document(*names: str, version: int = 1) -> Document:
    services = tuple(
        Config(version=version, name=name,
               backends=tuple(Backend(f"{name}{i}", "127.0.0.1", 9000 + i) for i in range(2)))
        for name in names
    )
    return Document(version, services)


def pool_of(factories, n_workers=2, names=("alpha", "beta")):
    table = ServiceTable(document(*names), factories, ProxySettings(access_log=False), reactor=Clock())
    pool = WorkerPool({"workers": n_workers, "backlog": 8}, table, Clock())
    pool._relay_new()
    children, pumps = [], []
    for i in range(n_workers):
        worker = Worker(pool, i)
        child = WorkerChannel(Clock(), factories)
        _, _, pump = iosim.connectedServerAndClient(lambda: child, lambda: worker.channel)
        pool.workers[i] = worker
        for b in table.all():
            b.take_report(worker, 0, {}, {})
        worker.call(Start, index=i, report_interval=0.5, **dataclasses.asdict(pool.settings))
        pool._apply(worker, table.document.version, json.dumps(table.document.to_json()))
        pump.flush()
        children.append(child)
        pumps.append(pump)
    return pool, table, children, pumps


def flush(pumps):
    for _ in range(3):
        for p in pumps:
            p.flush()


def open_conn(balancer, backend_id):
    cand = next(c for c in balancer.pool.candidates if c.id == backend_id)
    conn = FakeConnection()
    balancer.connection_opened(cand, conn, 0.01)
    return cand, conn


def test_each_worker_builds_every_service(factories):
    """ApplyConfig carries the whole document: each worker has a balancer
    per service, with that service's backends."""
    pool, table, children, pumps = pool_of(factories)
    for child in children:
        assert sorted(child.table.balancers) == ["alpha", "beta"]
        assert [b.id for b in child.table.balancer("beta").config.backends] == ["beta0", "beta1"]
    assert [w.applied for w in pool.workers] == [1, 1]


def test_reports_land_in_their_own_services_balancer(factories):
    """A worker's connection in one service counts in the parent's balancer
    of that service only; the worker's view shows it per service."""
    pool, table, children, pumps = pool_of(factories)
    open_conn(children[0].table.balancer("beta"), "beta1")
    open_conn(children[1].table.balancer("beta"), "beta1")
    open_conn(children[1].table.balancer("alpha"), "alpha0")
    for child in children:
        child.report()
    flush(pumps)
    assert table.balancer("beta").pool.stats["beta1"].active == 2
    assert table.balancer("alpha").pool.stats["alpha0"].active == 1
    assert table.balancer("alpha").pool.stats["alpha1"].active == 0
    assert [w.view()["services"]["beta"]["accepted"] for w in pool.workers] == [0, 0]
    b = children[1].table.balancer("alpha")
    assert b.admit()
    b.connection_opened(b.route(("10.0.0.1", 5)), FakeConnection(), 0.01)
    children[1].report()
    flush(pumps)
    assert [w.view()["services"]["alpha"]["active"] for w in pool.workers] == [0, 1]
    assert (table.balancer("alpha").totals.active, table.balancer("beta").totals.active) == (1, 0)


def test_workers_traffic_refusals_are_summed_in_the_parents_service(factories):
    """Each worker's traffic control counts its own refusals (and table
    entries); over AMP, the parent's balancer of that service shows the
    sums (the view the API, metrics and UI read), the other service none."""
    pool, table, children, pumps = pool_of(factories)
    for child, refusals in zip(children, (3, 2)):
        traffic = child.table.balancer("beta").traffic_state
        for _ in range(refusals):
            traffic.refuse("denied", "127.0.0.2")
        traffic.refuse("client-rate", "127.0.0.3")
    for child in children:
        child.report()
    flush(pumps)
    view = table.balancer("beta").traffic_state.view()
    assert (view["refused"]["denied"], view["refused"]["client-rate"]) == (5, 2)
    assert table.balancer("alpha").traffic_state.view()["refused"]["denied"] == 0


def test_health_results_and_forced_closes_carry_the_service(factories):
    """A health result of one service's checker reaches that service in
    every worker (not a namesake backend of another); a forced close in one
    service closes only that service's connections, answering their count."""
    pool, table, children, pumps = pool_of(factories, names=("alpha", "beta"))
    beta = table.balancer("beta")
    fall = beta.config.health_check.fall if beta.config.health_check else 3
    for _ in range(fall):
        beta.health_result("beta0", False, "check failed: test")
    flush(pumps)
    assert all(not c.table.balancer("beta").pool.health["beta0"].healthy for c in children)
    assert all(c.table.balancer("alpha").pool.health["alpha0"].healthy for c in children)

    _, in_beta = open_conn(children[0].table.balancer("beta"), "beta1")
    _, in_alpha = open_conn(children[0].table.balancer("alpha"), "alpha1")
    got = []
    beta.close_everywhere("beta1", "removed by operator").addCallback(got.append)
    flush(pumps)
    assert got == [1]
    assert in_beta.closed == ("abort", "removed by operator") and in_alpha.closed is None


def test_a_removal_in_the_second_service_waits_for_the_workers(factories):
    """A backend removed from the second service stays removing while a
    worker reports a connection to it under the new version, and is removed
    once that connection closed there."""
    pool, table, children, pumps = pool_of(factories)
    cand, conn = open_conn(children[1].table.balancer("beta"), "beta0")
    children[1].report()
    flush(pumps)
    old = table.document
    new = Document(2, (old.service("alpha"), remove_backend(old.service("beta"), "beta0")))
    table.apply(new)
    pool.applied(old, new)
    flush(pumps)
    for child in children:
        child.report()
    flush(pumps)
    assert [w.applied for w in pool.workers] == [2, 2]
    assert "beta0" in table.balancer("beta").removing

    children[1].table.balancer("beta").connection_closed(cand, conn, record("beta0"))
    children[1].report()
    flush(pumps)
    assert "beta0" not in table.balancer("beta").removing


def test_a_service_added_later_is_relayed_and_reaches_the_workers(factories):
    """A service a change adds gets a relayed balancer in the parent (its
    removals wait for every worker's report) and a balancer in each worker."""
    pool, table, children, pumps = pool_of(factories)
    old = table.document
    new = Document(2, (*old.services, *document("gamma").services))
    table.apply(new)
    pool.applied(old, new)
    flush(pumps)
    gamma = table.balancer("gamma")
    assert gamma._relays is not None and set(gamma._reports) == set(pool.workers)
    assert all(c.table.balancer("gamma") is not None for c in children)
    open_conn(children[0].table.balancer("gamma"), "gamma1")
    children[0].report()
    flush(pumps)
    assert gamma.pool.stats["gamma1"].active == 1


def test_a_removed_service_retires_in_the_parent_once_the_workers_have_nothing_open(factories):
    """The parent's balancer of a removed service is forgotten only once no
    worker reports a connection of it."""
    pool, table, children, pumps = pool_of(factories)
    b = children[0].table.balancer("beta")
    assert b.admit()
    cand = b.route(("10.0.0.1", 5))
    conn = FakeConnection()
    b.connection_opened(cand, conn, 0.01)
    children[0].report()
    flush(pumps)
    old = table.document
    new = Document(2, (old.service("alpha"),))
    table.apply(new)
    pool.applied(old, new)
    flush(pumps)
    children[0].report()
    flush(pumps)
    assert "beta" in table.retiring
    b.connection_closed(cand, conn, record(cand.id))
    children[0].reactor.advance(0)
    flush(pumps)
    children[0].report()
    children[1].report()
    flush(pumps)
    assert "beta" not in table.retiring


def test_a_service_removed_with_force_closes_the_workers_connections(factories):
    """DELETE ?force=true of a service (the table's forced removal) closes
    every worker's connections of that service, not another's."""
    pool, table, children, pumps = pool_of(factories)
    conns = []
    for child in children:
        b = child.table.balancer("beta")
        assert b.admit()
        cand = b.route(("10.0.0.1", 5))
        conn = FakeConnection()
        b.connection_opened(cand, conn, 0.01)
        conns.append(conn)
        child.report()
    _, other = open_conn(children[0].table.balancer("alpha"), "alpha0")
    flush(pumps)
    old = table.document
    new = Document(2, (old.service("alpha"),))
    table.force_next_removal("beta")
    table.apply(new)
    pool.applied(old, new)
    flush(pumps)
    assert [c.closed for c in conns] == [("abort", "service-removed")] * 2 and other.closed is None


def test_worker_sockets_bind_every_slot_on_one_port_and_close_what_a_change_drops():
    """For a tcp:0 listener the parent makes one socket per slot on one
    concrete port; a document without it closes them all."""
    sockets = WorkerSockets(3, 8)
    doc = Document(1, (dataclasses.replace(document("alpha").services[0],
                                           listen=("tcp:0:interface=127.0.0.1",)),))
    sockets.commit(sockets.prepare(doc), doc)
    (key, socks), = sockets.sockets.items()
    assert len(socks) == 3 and len({s.getsockname()[1] for s in socks}) == 1
    assert sockets.addresses(doc, "alpha") == [("127.0.0.1", socks[0].getsockname()[1])]
    assert [name for name, _ in sockets.listening_fds()] == [f"worker:{key}"] * 3
    empty = Document(2, (document("alpha").services[0],))
    sockets.commit(sockets.prepare(empty), empty)
    assert sockets.sockets == {} and all(s.fileno() == -1 for s in socks)


def test_a_taken_port_is_refused_with_nothing_left_bound():
    """A change whose second listener's port is taken raises ListenRefused
    (409) and leaves the first listener's new sockets closed."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        sockets = WorkerSockets(2, 8)
        base = document("alpha", "beta")
        doc = Document(1, (dataclasses.replace(base.services[0], listen=("tcp:0:interface=127.0.0.1",)),
                           dataclasses.replace(base.services[1], listen=(f"tcp:{port}:interface=127.0.0.1",))))
        with pytest.raises(ListenRefused) as caught:
            sockets.prepare(doc)
        assert caught.value.status == 409 and caught.value.service == "beta"
        assert sockets.sockets == {}
    finally:
        taken.close()
