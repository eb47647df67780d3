"""
Unit tests of L{lbproxy.control.store.etcd.EtcdStore}: what it sends to etcd's JSON
gateway, how it reads the answers, and its compare-and-swap and watch state
machine, with a fake HTTP client and a fake clock for the cases a real etcd
cannot produce on demand (a stream cut mid-line, a compaction exactly
between two watches, a member that never answers).
"""

from __future__ import annotations

import base64
import json

from lbproxy.model.service import as_document
from urllib.parse import urlsplit

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from lbproxy.control.store.etcd import EtcdStore
from lbproxy.control.store.etcd_client import b64, prefix_end
from lbproxy.startup.flags import parse_prefix, parse_store_spec
from lbproxy.interfaces import IConfigStore
from lbproxy.model.changes import add_backend
from lbproxy.model.config import Backend, Config
from lbproxy.model.errors import StoreError, VersionConflict

SEED = Config(version=1, backends=(Backend(id="b1", host="127.0.0.1", port=9001),))
V2, _ = add_backend(SEED, {"host": "127.0.0.1", "port": 9002})
V3, _ = add_backend(V2, {"host": "127.0.0.1", "port": 9003})
# The store holds documents; a one-pool config is a document of one service.
SEED, V2, V3 = (as_document(c) for c in (SEED, V2, V3))
KEY = "/lbproxy/t/config"


def doc(config):
    return b64(json.dumps(config.to_json()))


def kv(config, mod, key=KEY):
    return {"key": b64(key), "create_revision": "2", "mod_revision": str(mod), "version": "1", "value": doc(config)}


def header(rev):
    return {"header": {"cluster_id": "1", "member_id": "2", "revision": str(rev), "raft_term": "2"}}


class StreamTransport:
    def __init__(self):
        self.stopped = False

    def stopProducing(self):
        self.stopped = True


class FakeResponse:
    def __init__(self, code=200, body=None):
        self.code = code
        self.body = body
        self.protocol = None
        self.transport = StreamTransport()

    def json(self):
        return defer.succeed(self.body)

    def deliverBody(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, message, split=None):
        data = json.dumps(message).encode() + b"\n"
        if split:
            self.protocol.dataReceived(data[:split])
            self.protocol.dataReceived(data[split:])
        else:
            self.protocol.dataReceived(data)

    def end(self):
        self.protocol.connectionLost(Failure(ConnectionDone("etcd went away")))


class Request:
    def __init__(self, url, body, unbuffered):
        self.url = url
        self.body = body
        self.unbuffered = unbuffered
        self.deferred = defer.Deferred()

    @property
    def path(self):
        return urlsplit(self.url).path

    @property
    def base(self):
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def respond(self, body, code=200):
        response = FakeResponse(code, body)
        self.deferred.callback(response)
        return response

    def refuse(self):
        self.deferred.errback(ConnectionRefusedError("refused"))


class FakeClient:
    """Records each POST; the test answers it."""

    def __init__(self):
        self.requests = []

    def post(self, url, json=None, unbuffered=False):
        request = Request(url, json, unbuffered)
        self.requests.append(request)
        return request.deferred

    def next(self, path=None):
        request = self.requests.pop(0)
        if path is not None:
            assert request.path == path, (request.path, request.body)
        return request


def make(endpoints=("http://e1:2379",), **kw):
    client = FakeClient()
    clock = Clock()
    store = EtcdStore(list(endpoints), "/lbproxy/t/", client=client, reactor=clock, **kw)
    return store, client, clock


def loaded(config=None, mod=5, rev=7, **kw):
    """A store that has loaded C{config} and whose watch stream is open."""
    store, client, clock = make(**kw)
    seen = []
    store.watch(seen.append)
    d = store.load()
    client.next("/v3/kv/range").respond({**header(rev), **({"kvs": [kv(config, mod)], "count": "1"} if config else {})})
    assert d.result == config
    watch = client.next("/v3/watch")
    stream = watch.respond(None)
    stream.send({"result": {**header(rev), "created": True}})
    return store, client, clock, seen, watch, stream


def test_provides_interface():
    """EtcdStore provides IConfigStore."""
    store, _, _ = make()
    assert verifyObject(IConfigStore, store)


def test_encoding_helpers():
    """Keys are base64; a prefix range ends at the prefix with its last byte bumped."""
    assert base64.b64decode(b64("/a/b")) == b"/a/b"
    assert prefix_end("/lbproxy/t/") == b"/lbproxy/t0"
    assert prefix_end(b"a\xff") == b"b"


def test_load_reads_base64_and_string_integers_then_watches_the_prefix():
    """
    load() asks for the config key in base64, decodes the value, takes the
    string revisions as integers and opens a streaming watch on the prefix
    from the revision after the one it read.
    """
    store, client, clock = make()
    d = store.load()
    request = client.next("/v3/kv/range")
    assert request.body == {"key": b64(KEY)}
    assert request.base == "http://e1:2379"
    request.respond({**header(7), "kvs": [kv(V2, 5)], "count": "1"})
    assert d.result == V2
    assert (store.mod_revision, store.revision) == (5, 7)
    watch = client.next("/v3/watch")
    assert watch.unbuffered is True
    assert watch.body == {"create_request": {
        "key": b64("/lbproxy/t/"), "range_end": b64("/lbproxy/t0"), "start_revision": "8"}}
    assert store.status()["available"] is True


def test_load_of_an_empty_store_is_none():
    """A range with no C{kvs} field (omitted as default) loads as None."""
    store, client, _ = make()
    d = store.load()
    client.next("/v3/kv/range").respond(header(3))
    assert d.result is None
    assert store.mod_revision == 0


def test_first_save_creates_only_if_absent():
    """With no key yet, save compares C{create_revision == 0} and puts the JSON document."""
    store, client, _, _, _, _ = loaded(None)
    d = store.save(SEED, 0)
    txn = client.next("/v3/kv/txn")
    assert txn.body["compare"] == [
        {"key": b64(KEY), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}]
    put = txn.body["success"][0]["request_put"]
    assert put["key"] == b64(KEY)
    assert json.loads(base64.b64decode(put["value"])) == SEED.to_json()
    txn.respond({**header(8), "succeeded": True, "responses": [{"response_put": header(8)}]})
    assert d.result == SEED
    assert store.mod_revision == 8


def test_save_compares_on_mod_revision():
    """A save after a load compares on the C{mod_revision} read."""
    store, client, _, _, _, _ = loaded(SEED, mod=5)
    d = store.save(V2, 1)
    txn = client.next("/v3/kv/txn")
    assert txn.body["compare"] == [
        {"key": b64(KEY), "target": "MOD", "result": "EQUAL", "mod_revision": "5"}]
    txn.respond({**header(9), "succeeded": True})
    assert d.result == V2
    assert (store.current, store.mod_revision) == (V2, 9)


def test_lost_compare_and_swap_is_a_version_conflict():
    """
    When etcd answers C{succeeded} false (omitted), the failure branch's
    range holds the winner: save fails with L{VersionConflict} naming its
    version, and the watchers get the winner's config at once.
    """
    store, client, _, seen, _, _ = loaded(SEED, mod=5)
    d = store.save(V2, 1)
    client.next("/v3/kv/txn").respond(
        {**header(9), "responses": [{"response_range": {**header(9), "kvs": [kv(V3, 9)], "count": "1"}}]})
    failure = d.result
    d.addErrback(lambda f: None)
    assert failure.check(VersionConflict)
    assert (failure.value.expected, failure.value.current) == (1, 3)
    assert seen == [V3]
    assert store.mod_revision == 9


def test_stale_expected_version_fails_without_a_request():
    """A save based on a version older than the store's is refused locally."""
    store, client, _, _, _, _ = loaded(V2, mod=5)
    d = store.save(V3, 1)
    assert d.result.check(VersionConflict)
    d.addErrback(lambda f: None)
    assert client.requests == []


def test_next_endpoint_is_tried_when_one_is_down():
    """A refused connection moves the request to the next member; the next requests start there."""
    store, client, _ = make(("http://e1:2379", "http://e2:2379"))
    d = store.load()
    client.next().refuse()
    second = client.next("/v3/kv/range")
    assert second.base == "http://e2:2379"
    second.respond(header(3))
    assert d.result is None
    assert client.next("/v3/watch").base == "http://e2:2379"


def test_unreachable_etcd_fails_saves_and_says_so():
    """
    When no member answers, save fails with StoreError "config store
    unavailable: ..." naming each member, and the status says unavailable;
    the next answer makes it available again.
    """
    store, client, _, _, watch, stream = loaded(SEED, mod=5, endpoints=("http://e1:2379", "http://e2:2379"))
    d = store.save(V2, 1)
    client.next("/v3/kv/txn").refuse()
    client.next("/v3/kv/txn").refuse()
    failure = d.result
    d.addErrback(lambda f: None)
    assert failure.check(StoreError)
    assert str(failure.value).startswith("config store unavailable: ")
    assert "e1:2379" in str(failure.value) and "e2:2379" in str(failure.value)
    status = store.status()
    assert status["available"] is False and "refused" in status["error"]
    assert store.current == SEED
    d = store.save(V2, 1)
    client.next("/v3/kv/txn").respond({**header(9), "succeeded": True})
    assert d.result == V2
    assert store.status()["available"] is True and store.status()["error"] is None


def test_a_member_that_does_not_answer_times_out():
    """A request with no answer within the timeout counts as unreachable."""
    store, client, clock = make(timeout=2.0)
    d = store.load()
    clock.advance(2.0)
    assert d.result.check(StoreError)
    d.addErrback(lambda f: None)
    assert "no answer in time" in store.status()["error"]


def test_an_error_status_counts_as_unavailable():
    """An HTTP error answer (etcd without a leader) fails the request like a dead member."""
    store, client, _ = make()
    d = store.load()
    client.next().respond({"error": "etcdserver: no leader", "code": 14, "message": "etcdserver: no leader"}, code=503)
    assert d.result.check(StoreError)
    d.addErrback(lambda f: None)
    assert "no leader" in store.status()["error"]


def test_watch_delivers_changes_from_elsewhere_even_split_mid_line():
    """
    A PUT event (no C{type} field) for the config key, arriving in two
    chunks, calls the watchers with the new config; events for other keys
    (node registrations) only advance the revision.
    """
    store, _, _, seen, _, stream = loaded(SEED, mod=5, rev=7)
    stream.send({"result": {**header(9), "events": [{"kv": kv(V2, 9)}]}}, split=40)
    assert seen == [V2]
    stream.send({"result": {**header(10), "events": [
        {"kv": {"key": b64("/lbproxy/t/nodes/a"), "mod_revision": "10", "value": b64("{}")}}]}})
    assert seen == [V2]
    assert store.revision == 10


def test_own_write_echoed_by_the_watch_is_not_delivered():
    """The watch echoes this store's own write; watchers are not called for it."""
    store, client, _, seen, _, stream = loaded(SEED, mod=5)
    d = store.save(V2, 1)
    txn = client.next("/v3/kv/txn")
    stream.send({"result": {**header(9), "events": [{"kv": kv(V2, 9)}]}})
    txn.respond({**header(9), "succeeded": True})
    stream.send({"result": {**header(9), "events": [{"kv": kv(V2, 9)}]}})
    assert d.result == V2
    assert seen == []


def test_deleted_key_keeps_config_in_force():
    """A DELETE event is not a config: nothing is delivered and the next save creates the key."""
    store, client, _, seen, _, stream = loaded(SEED, mod=5)
    stream.send({"result": {**header(9), "events": [{"type": "DELETE", "kv": {"key": b64(KEY), "mod_revision": "9"}}]}})
    assert seen == []
    store.save(V2, 1)
    assert client.next("/v3/kv/txn").body["compare"][0]["target"] == "CREATE"


def test_compacted_watch_rereads_and_watches_from_the_read_revision():
    """
    A watch canceled with C{compact_revision} is closed; after a short
    backoff the store re-reads the key, delivers the change it missed, and
    watches again from the revision after the read.
    """
    store, client, clock, seen, _, stream = loaded(SEED, mod=5, rev=7)
    stream.send({"result": {"header": {"cluster_id": "1"}, "canceled": True, "compact_revision": "12"}})
    assert stream.transport.stopped
    assert client.requests == []
    clock.advance(store.max_backoff)
    client.next("/v3/kv/range").respond({**header(15), "kvs": [kv(V3, 14)], "count": "1"})
    assert seen == [V3]
    watch = client.next("/v3/watch")
    assert watch.body["create_request"]["start_revision"] == "16"


def test_broken_watch_retries_with_backoff_until_etcd_returns():
    """
    When the stream ends, the store re-reads; while etcd is unreachable it
    retries with growing delays capped at C{max_backoff}; when etcd answers
    it delivers what changed meanwhile and watches again.
    """
    store, client, clock, seen, _, stream = loaded(SEED, mod=5, rev=7, max_backoff=1.0)
    stream.end()
    delays = []
    for _ in range(6):
        [retry] = clock.getDelayedCalls()
        delays.append(retry.getTime() - clock.seconds())
        clock.advance(delays[-1])
        client.next("/v3/kv/range").refuse()
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert store.status()["available"] is False
    clock.advance(1.0)
    client.next("/v3/kv/range").respond({**header(20), "kvs": [kv(V2, 18)], "count": "1"})
    assert seen == [V2]
    assert store.status()["available"] is True
    assert client.next("/v3/watch").body["create_request"]["start_revision"] == "21"


def test_watch_error_line_restarts_the_watch():
    """An C{error} object on the stream closes it and resyncs."""
    store, client, clock, _, _, stream = loaded(SEED)
    stream.send({"error": {"grpc_code": 14, "message": "transport is closing"}})
    assert stream.transport.stopped
    clock.advance(store.max_backoff)
    assert client.next().path == "/v3/kv/range"


def test_close_stops_watch_and_retries():
    """After close() nothing more is sent, even when a retry was due."""
    store, client, clock, _, _, stream = loaded(SEED)
    stream.end()
    store.close()
    clock.advance(10)
    assert client.requests == []


def test_store_spec_parsing():
    """--store takes etcd: and a comma list of http(s)://HOST:PORT; anything else is refused."""
    assert parse_store_spec("etcd:http://127.0.0.1:2379,https://h2:2380/") == [
        "http://127.0.0.1:2379", "https://h2:2380"]
    for bad in ["etcd:", "file:/x", "etcd:127.0.0.1:2379", "etcd:http://h", "etcd:http://h:99999",
                "etcd:http://h:1/x", "http://h:1", "etcd:http://h:1,", "etcd:ftp://h:1"]:
        with pytest.raises(ValueError):
            parse_store_spec(bad)
    assert parse_prefix("/lbproxy/prod/") == "/lbproxy/prod"
    for bad in ["lbproxy", "/", "/a b", "/a\n"]:
        with pytest.raises(ValueError):
            parse_prefix(bad)


def test_save_writes_history_in_the_same_txn_and_trims_it():
    """
    The txn that puts the config also puts PREFIX/history/VERSION (who and
    what, the document, its diff) and deletes the keys of versions older
    than the last C{keep}; the history is read back newest first.
    """
    from lbproxy.control.store.history import Change

    store, client, clock, _, _, _ = loaded(V2, mod=5, keep=2)
    clock.advance(50)
    store.describe(3, Change("alice/ui", "added backend b3"))
    d = store.save(V3, 2)
    txn = client.next("/v3/kv/txn")
    puts = [op["request_put"] for op in txn.body["success"] if "request_put" in op]
    assert [base64.b64decode(p["key"]).decode() for p in puts] == [KEY, "/lbproxy/t/history/000000000003"]
    entry = json.loads(base64.b64decode(puts[1]["value"]))
    assert (entry["version"], entry["time"], entry["by"], entry["summary"]) == (3, 50.0, "alice/ui", "added backend b3")
    assert entry["document"] == V3.to_json() and entry["changes"][0]["path"] == "/services/default/backends/b3"
    (delete,) = [op["request_delete_range"] for op in txn.body["success"] if "request_delete_range" in op]
    assert base64.b64decode(delete["key"]).decode() == "/lbproxy/t/history/000000000000"
    assert base64.b64decode(delete["range_end"]).decode() == "/lbproxy/t/history/000000000002"
    txn.respond({**header(9), "succeeded": True})
    assert d.result == V3
    h = store.history()
    read = client.next("/v3/kv/range")
    assert read.body["sort_order"] == "DESCEND" and read.body["limit"] == "2"
    read.respond({**header(9), "kvs": [{"key": puts[1]["key"], "value": puts[1]["value"]},
                                       {"key": b64("/lbproxy/t/history/2"), "value": b64("not json")}]})
    assert [(e.version, e.by) for e in h.result] == [(3, "alice/ui")]
