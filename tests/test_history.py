"""
Config history: the generic JSON diff and summary, the bounded ring, the
memory and file stores' history, and the admin routes that list, show and
roll back versions (through L{tests.webtools.Admin}, no network).
"""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from lbproxy.control.store.file import FileStore
from lbproxy.control.store.history import Change, Entry, IConfigHistory, Ring, diff, summarize
from lbproxy.control.store.memory import MemoryStore
from lbproxy.interfaces import IConfigStore
from lbproxy.model.changes import add_backend
from lbproxy.model.config import Backend, Config
from lbproxy.model.service import as_document
from tests.webtools import Admin

SEED = Config(version=1, backends=(Backend("b1", "127.0.0.1", 9001),))


def sync(f, *args):
    return defer.maybeDeferred(f, *args)


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_diff_matches_list_members_by_id():
    """Removing the first of two backends is one change at /backends/ID, not
    a change per index; scalars are compared by path; the version is not a
    change."""
    old = {"version": 1, "strategy": {"name": "round-robin"},
           "backends": [{"id": "b1", "port": 1}, {"id": "b2", "port": 2}]}
    new = {"version": 2, "strategy": {"name": "least-connections"}, "backends": [{"id": "b2", "port": 3}]}
    assert diff(old, new) == [
        {"path": "/strategy/name", "old": "round-robin", "new": "least-connections"},
        {"path": "/backends/b1", "old": {"id": "b1", "port": 1}, "new": None},
        {"path": "/backends/b2/port", "old": 2, "new": 3},
    ]


def test_diff_matches_services_by_name():
    """In the document of services, removing the first service is one change
    at /services/NAME, and a change inside another is at its name, not at
    an index that moved."""
    old = {"version": 1, "services": [{"name": "a", "listen": ["tcp:1"]},
                                      {"name": "b", "strategy": {"name": "round-robin"}}]}
    new = {"version": 2, "services": [{"name": "b", "strategy": {"name": "least-connections"}}]}
    assert diff(old, new) == [
        {"path": "/services/a", "old": {"name": "a", "listen": ["tcp:1"]}, "new": None},
        {"path": "/services/b/strategy/name", "old": "round-robin", "new": "least-connections"},
    ]


def test_diff_is_generic_over_the_document():
    """Any JSON shape diffs: lists without ids by index, added keys, a
    whole document against nothing."""
    assert diff({"a": [1, 2]}, {"a": [1, 3, 4], "b": {"c": True}}) == [
        {"path": "/a/1", "old": 2, "new": 3},
        {"path": "/a/2", "old": None, "new": 4},
        {"path": "/b", "old": None, "new": {"c": True}},
    ]
    assert diff(None, {"x": 1}) == [{"path": "/", "old": None, "new": {"x": 1}}]
    assert diff({"k/e~y": 1}, {"k/e~y": 2})[0]["path"] == "/k~1e~0y"


def test_summarize_one_line():
    """A diff becomes one line naming what changed, cut after three."""
    assert summarize([{"path": "/strategy/name", "old": "a", "new": "b"}]) == "/strategy/name a -> b"
    added = {"path": "/backends/b4", "old": None, "new": {"id": "b4", "host": "h", "port": 4}}
    assert summarize([added]) == "added /backends/b4 b4 h:4"
    many = [{"path": f"/x/{i}", "old": i, "new": i + 1} for i in range(5)]
    assert summarize(many).endswith("; 2 more") and "\n" not in summarize(many)
    assert summarize([]) == "no change"


def test_ring_keeps_the_last_n():
    """The ring drops the oldest entries past its bound and finds a
    version with the one before it."""
    ring = Ring(3)
    for v in range(1, 6):
        ring.add(Entry(v, float(v), "t", f"v{v}", {"v": v}))
    assert [e.version for e in ring.newest_first()] == [5, 4, 3]
    entry, before = ring.find(4)
    assert (entry.version, before.version) == (4, 3)
    assert ring.find(3)[1] is None and ring.find(1) == (None, None)


def test_stores_provide_history():
    """The memory and etcd stores provide both interfaces (the file store's
    test below checks it)."""
    from twisted.internet.task import Clock

    from lbproxy.control.store.etcd import EtcdStore

    verifyObject(IConfigHistory, MemoryStore(SEED))
    verifyObject(IConfigStore, MemoryStore(SEED))
    etcd = EtcdStore(["http://127.0.0.1:1"], "/lbproxy/t", client=object(), reactor=Clock())
    verifyObject(IConfigHistory, etcd)
    verifyObject(IConfigStore, etcd)


def test_file_store_history_is_bounded_durable_and_reloaded(tmp_path):
    """Saving 5 versions with keep=3 keeps 3 entries in history.json; a new
    store on the directory reads them back with who and what."""
    store = FileStore(str(tmp_path), run=sync, keep=3)
    verifyObject(IConfigHistory, store)
    config = SEED
    result_of(store.save(config, 0))
    for port in range(9002, 9006):
        new, _ = add_backend(config, {"host": "127.0.0.1", "port": port})
        store.describe(new.version, Change("alice/ui", f"added {port}"))
        result_of(store.save(new, config.version))
        config = new
    kept = json.loads((tmp_path / "history.json").read_text())["entries"]
    assert [e["version"] for e in kept] == [3, 4, 5]
    again = FileStore(str(tmp_path), run=sync, keep=3)
    entries = result_of(again.history())
    assert [(e.version, e.by, e.summary) for e in entries] == [
        (5, "alice/ui", "added 9005"), (4, "alice/ui", "added 9004"), (3, "alice/ui", "added 9003")]
    assert entries[0].document == config.to_json()


def test_damaged_history_never_stops_the_store(tmp_path):
    """A history.json that fails its checksum is an empty history (logged),
    and the next save starts a new one; the config itself loads."""
    store = FileStore(str(tmp_path), run=sync)
    result_of(store.save(SEED, 0))
    path = tmp_path / "history.json"
    path.write_text(path.read_text().replace("first version", "edited by hand"))
    again = FileStore(str(tmp_path), run=sync)
    assert again.read() == as_document(SEED)
    assert result_of(again.history()) == []
    v2, _ = add_backend(SEED, {"host": "127.0.0.1", "port": 9002})
    result_of(again.save(v2, 1))
    # The loaded version 1 is recorded as the start, so it can be rolled back to.
    assert [(e.version, e.by) for e in result_of(FileStore(str(tmp_path), run=sync).history())] == [
        (2, "unknown"), (1, "start")]


@pytest.fixture
def admin(factories):
    return Admin(factories)


def test_history_routes_list_show_and_roll_back(admin):
    """Changes through the API appear newest first with who made them (the
    X-LBProxy-Client header) and the change's own summary; an entry shows
    its document and its diff; a rollback is a new version equal to the
    old document, and the history is not rewritten."""
    r = admin.request("POST", "/api/v1/backends", {"id": "b4", "host": "127.0.0.1", "port": 9004},
                      headers={"X-LBProxy-Client": "ui"})
    assert r.code == 201
    r = admin.request("PUT", "/api/v1/strategy", {"name": "least-connections"},
                      headers={"X-LBProxy-Client": "cli"})
    assert r.code == 200
    listed = admin.get("/api/v1/history").json
    assert [(e["version"], e["by"], e["summary"]) for e in listed] == [
        (3, "cli", "strategy round-robin -> least-connections"),
        (2, "ui", "added backend b4 127.0.0.1:9004"),
        (1, "start", "config at start"),
    ]
    assert set(listed[0]) == {"version", "time", "by", "summary"} and isinstance(listed[0]["time"], float)
    shown = admin.get("/api/v1/history/3").json
    assert shown["previous"] == 2
    assert shown["diff"] == [{"path": "/services/default/strategy/name", "old": "round-robin",
                              "new": "least-connections"}]
    assert shown["document"]["services"][0]["strategy"]["name"] == "least-connections"
    r = admin.request("POST", "/api/v1/history/2/rollback", {})
    assert r.code == 200 and r.json["version"] == 4
    assert admin.balancer.config.strategy.name == "round-robin"
    assert [b.id for b in admin.balancer.config.backends] == ["b1", "b2", "b4"]
    listed = admin.get("/api/v1/history").json
    assert [(e["version"], e["by"], e["summary"]) for e in listed] == [
        (4, "api", "rolled back to version 2"),
        (3, "cli", "strategy round-robin -> least-connections"),
        (2, "ui", "added backend b4 127.0.0.1:9004"),
        (1, "start", "config at start"),
    ]
    d = admin.get("/api/v1/history/4").json
    assert d["diff"] == [{"path": "/services/default/strategy/name", "old": "least-connections",
                          "new": "round-robin"}]


def test_unknown_versions_and_computed_summaries(admin):
    """A version not kept is 404 (and a rollback of it changes nothing); a
    change that does not describe itself (PATCH) gets a summary computed
    from the diff; a header that is not a client name is ignored."""
    assert admin.get("/api/v1/history/99").code == 404
    assert admin.get("/api/v1/history/x").code == 404
    assert admin.request("POST", "/api/v1/history/99/rollback", {}).code == 404
    assert admin.balancer.config.version == 1
    r = admin.request("PATCH", "/api/v1/backends/b1", {"weight": 5},
                      headers={"X-LBProxy-Client": "<script>"})
    assert r.code == 200
    entry, _start = admin.get("/api/v1/history").json
    assert entry["by"] == "api" and entry["summary"] == "/services/default/backends/b1/weight 1 -> 5"


def test_token_label_names_the_author(factories):
    """A policy with a label (from the token file's second line) names the
    author, with the client after it; in cluster mode the node follows."""
    from lbproxy.web.auth import AdminPolicy

    policy = AdminPolicy()
    policy.label = "alice"
    admin = Admin(factories, policy=policy)
    admin.request("PATCH", "/api/v1/backends/b1", {"weight": 2}, headers={"X-LBProxy-Client": "ui"})
    assert admin.get("/api/v1/history").json[0]["by"] == "alice/ui"
    clustered = Admin(factories, node="node2")
    clustered.request("PATCH", "/api/v1/backends/b1", {"weight": 2}, headers={"X-LBProxy-Client": "cli"})
    assert clustered.get("/api/v1/history").json[0]["by"] == "cli@node2"


def test_token_file_second_line_is_the_label(tmp_path):
    """--admin-token-file's optional second line becomes the spec's token
    label; a label with spaces is refused with a clear message."""
    from twisted.python import usage

    from lbproxy.startup.tap import Options

    path = tmp_path / "token"
    path.write_text("0123456789abcdef0123\nalice\n")
    options = Options()
    options.parseOptions(["--backend", "127.0.0.1:9001", "--admin-token-file", str(path)])
    assert options.spec.admin_token == "0123456789abcdef0123"
    assert options.spec.admin_token_label == "alice"
    path.write_text("0123456789abcdef0123\nnot a label\n")
    with pytest.raises(usage.UsageError, match="second line"):
        Options().parseOptions(["--backend", "127.0.0.1:9001", "--admin-token-file", str(path)])


def test_access_log_and_history_flags():
    """--access-log, --access-log-format and --history reach the spec;
    --no-access-log is --access-log off."""
    from twisted.python import usage

    from lbproxy.startup.tap import Options

    o = Options()
    o.parseOptions(["--backend", "127.0.0.1:9001"])
    assert (o.spec.access_log, o.spec.access_log_format, o.spec.history) == ("-", "json", 100)
    assert o.spec.settings.access_log
    o = Options()
    o.parseOptions(["--backend", "127.0.0.1:9001", "--access-log", "syslog", "--access-log-format",
                    "text", "--history", "7"])
    assert (o.spec.access_log, o.spec.access_log_format, o.spec.history) == ("syslog", "text", 7)
    o = Options()
    o.parseOptions(["--backend", "127.0.0.1:9001", "--no-access-log"])
    assert o.spec.access_log == "off" and not o.spec.settings.access_log
    with pytest.raises(usage.UsageError, match="json, text"):
        Options().parseOptions(["--backend", "127.0.0.1:9001", "--access-log-format", "xml"])


def test_empty_store_records_the_start_and_the_first_change(tmp_path):
    """An empty file store started from the command line's document records
    it as version 0 (by start) with the first change, which keeps its own
    author and a summary computed against the start (not "first version"
    by "unknown"); rolling back to version 0 through the API works."""
    from lbproxy.control.store import open_store

    store, start = open_store(str(tmp_path), SEED, reactor=None)
    store._run = sync
    assert start.version == 0
    from lbproxy.model.service import Document

    service, _ = add_backend(start.services[0], {"host": "127.0.0.1", "port": 9002})
    new = Document(1, (service,))
    store.describe(1, Change("alice/ui", ""))
    result_of(store.save(new, 0))
    again = FileStore(str(tmp_path), run=sync)
    entries = result_of(again.history())
    assert [(e.version, e.by, e.summary) for e in entries] == [
        (1, "alice/ui", "added /services/default/backends/b2 b2 127.0.0.1:9002"),
        (0, "start", "config at start"),
    ]
    assert entries[1].document == start.to_json()
    store.release()


def test_rollback_to_the_config_at_start(admin):
    """The memory store records the document it was seeded with, so the
    state before the first change can be put back."""
    assert admin.request("POST", "/api/v1/backends", {"id": "b4", "host": "127.0.0.1", "port": 9004}).code == 201
    r = admin.request("POST", "/api/v1/history/1/rollback", {})
    assert r.code == 200 and r.json["version"] == 3
    assert [b.id for b in admin.balancer.config.backends] == ["b1", "b2"]

