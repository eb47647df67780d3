"""
L{EtcdStore} against a real one-member etcd: the encoding, compare-and-swap
and the watch as etcd itself answers them.
"""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from lbproxy.control.store.etcd import EtcdStore
from lbproxy.model.changes import add_backend
from lbproxy.model.config import Backend, Config
from lbproxy.model.errors import StoreError, VersionConflict
from lbproxy.model.service import as_document
from tests.integration import relay_harness as h

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

# The store holds documents: a one-pool config is a document of one service.
D = as_document
SEED = Config(version=1, backends=(Backend(id="b1", host="127.0.0.1", port=9001),))


def until(predicate, timeout=10.0, step=0.01):
    """Wait without blocking the reactor; see L{relay_harness.until}."""
    return h.until(predicate, timeout, step)

@pytest.fixture
def stores():
    """Make stores and close them after the test."""
    made = []

    def make(endpoints, prefix="/lbproxy/t", **kw):
        store = EtcdStore(endpoints, prefix, reactor=reactor, **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest_twisted.ensureDeferred
async def test_create_then_cas_then_conflict(etcd1, stores):
    """
    An empty key loads as None; the first save creates it; a second store
    that read the same revision loses its compare-and-swap with
    L{VersionConflict} naming the winner's version, and nothing it wrote is
    stored.
    """
    a = stores(etcd1.endpoints)
    b = stores(etcd1.endpoints)
    assert await a.load() is None
    await a.save(SEED, 0)
    assert (await b.load()) == D(SEED)
    v2, _ = add_backend(SEED, {"host": "127.0.0.1", "port": 9002})
    other = replace(v2, backends=v2.backends[:1] + (Backend(id="b2", host="127.0.0.1", port=9003),))
    await a.save(v2, 1)
    with pytest.raises(VersionConflict) as e:
        await b.save(other, 1)
    assert e.value.current == 2
    assert b.current == D(v2)
    check = stores(etcd1.endpoints)
    assert await check.load() == D(v2)


@pytest_twisted.ensureDeferred
async def test_simultaneous_saves_one_winner(etcd1, stores):
    """
    Two stores at the same revision send their writes at the same moment:
    etcd's compare on C{mod_revision} lets exactly one through.
    """
    a = stores(etcd1.endpoints)
    b = stores(etcd1.endpoints)
    await a.load()
    await a.save(SEED, 0)
    await b.load()
    va, _ = add_backend(SEED, {"host": "127.0.0.1", "port": 9100})
    vb, _ = add_backend(SEED, {"host": "127.0.0.1", "port": 9200})
    results = await defer.DeferredList([a.save(va, 1), b.save(vb, 1)], consumeErrors=True)
    wins = [r for ok, r in results if ok]
    losses = [r for ok, r in results if not ok]
    assert len(wins) == 1 and len(losses) == 1
    assert losses[0].check(VersionConflict)
    check = stores(etcd1.endpoints)
    assert await check.load() == wins[0]


@pytest_twisted.ensureDeferred
async def test_watch_delivers_other_writers_changes_not_own(etcd1, stores):
    """
    A watching store is called back with a config another store wrote, and
    not for its own writes.
    """
    a = stores(etcd1.endpoints)
    b = stores(etcd1.endpoints)
    seen_a, seen_b = [], []
    a.watch(seen_a.append)
    b.watch(seen_b.append)
    await a.load()
    await b.load()
    await a.save(SEED, 0)
    await until(lambda: seen_b)
    assert seen_b == [D(SEED)]
    v2, _ = add_backend(SEED, {"host": "127.0.0.1", "port": 9002})
    await b.save(v2, 1)
    await until(lambda: seen_a)
    assert seen_a == [D(v2)]
    # b's own watch has delivered its write (the acknowledgement), and
    # did not call back for it.
    await until(lambda: b.revision >= b.mod_revision)
    assert seen_b == [D(SEED)]


@pytest_twisted.ensureDeferred
async def test_compacted_watch_rereads_without_missing_a_change(etcd1, stores):
    """
    When the watch is cut and the revisions it would resume from are
    compacted meanwhile, etcd cancels the new watch with
    C{compact_revision}; the store re-reads, delivers the change it missed,
    then follows later changes again.
    """
    a = stores(etcd1.endpoints)
    writer = stores(etcd1.endpoints)
    seen = []
    a.watch(seen.append)
    await a.load()
    await writer.load()
    await writer.save(SEED, 0)
    await until(lambda: seen)
    # Cut a's watch and hold its retry, then write and compact behind its back.
    a.max_backoff = 0.5
    a._stream.transport.stopProducing()
    v2, _ = add_backend(SEED, {"host": "127.0.0.1", "port": 9002})
    await writer.save(v2, 1)
    head = writer.mod_revision
    await writer.request("/v3/kv/compaction", {"revision": str(head), "physical": True})
    await until(lambda: seen[-1] == D(v2))
    v3, _ = add_backend(v2, {"host": "127.0.0.1", "port": 9003})
    await writer.save(v3, 2)
    await until(lambda: seen[-1] == D(v3))
    assert seen == [D(SEED), D(v2), D(v3)]


@pytest_twisted.ensureDeferred
async def test_unreachable_etcd_refuses_saves(stores):
    """
    With nothing listening at the endpoints, load and save fail with
    C{"config store unavailable"} and the status says why.
    """
    from tests.etcdtools import free_port

    store = stores([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])
    with pytest.raises(StoreError, match="config store unavailable"):
        await store.load()
    with pytest.raises(StoreError, match="config store unavailable"):
        await store.save(SEED, 0)
    status = store.status()
    assert status["available"] is False and status["kind"] == "etcd"
    assert "127.0.0.1" in status["error"]


@pytest_twisted.ensureDeferred
async def test_history_in_the_same_txn_and_bounded(etcd1, stores):
    """
    Each save puts PREFIX/history/VERSION with the config in one txn; with
    keep=3, five versions leave exactly the last three keys in etcd, and a
    second node reads the same history (who and what) newest first.
    """
    from lbproxy.control.store.history import Change

    a = stores(etcd1.endpoints, keep=3)
    assert await a.load() is None
    config = SEED
    a.describe(1, Change("file", ""))
    await a.save(config, 0)
    for port in range(9002, 9006):
        new, _ = add_backend(config, {"host": "127.0.0.1", "port": port})
        a.describe(new.version, Change("alice/cli", f"added {port}"))
        await a.save(new, config.version)
        config = new
    raw = await a.etcd.range(a.key("history/"), prefix=True)
    keys = sorted(base64.b64decode(kv["key"]).decode() for kv in raw.get("kvs", []))
    assert keys == [a.history_key(v) for v in (3, 4, 5)]
    b = stores(etcd1.endpoints, keep=3)
    await b.load()
    entries = await b.history()
    assert [(e.version, e.by, e.summary) for e in entries] == [
        (5, "alice/cli", "added 9005"), (4, "alice/cli", "added 9004"), (3, "alice/cli", "added 9003")]
    assert entries[0].document == as_document(config).to_json()
    entry, previous = await b.entry(4)
    assert (entry.version, previous.version) == (4, 3)
    assert entry.changes == [{"path": "/services/default/backends/b4", "old": None,
                              "new": config.to_json()["backends"][3]}]
