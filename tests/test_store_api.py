"""
The admin API over the file store: a change is answered 2xx only once it is
on disk; a write that fails (disk full, read-only file system) is answered
507, changes nothing in memory or on disk, and the next change goes through
once the disk is fixed.
"""

from __future__ import annotations

import errno
import os

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from lbproxy.model.config import Backend, Config
from lbproxy.control.store.envelope import decode
from lbproxy.control.store.file import FileStore
from tests.test_store_file import SpyOS
from tests.webtools import Admin

# The config tests.webtools.Admin starts its balancer with.
START = Config(version=1, backends=(
    Backend("b1", "127.0.0.1", 9001), Backend("b2", "127.0.0.1", 9002, weight=2),
))


@pytest.fixture
def admin(tmp_path, factories):
    spy = SpyOS()
    store = FileStore(str(tmp_path), reactor=Clock(), run=defer.maybeDeferred, os_module=spy)
    failures = []
    store.save(START, 0).addErrback(failures.append)
    assert not failures
    admin = Admin(factories, store=store)
    admin.spy = spy
    admin.file = tmp_path / "config.json"
    return admin


def stored(admin):
    return decode(admin.file.read_bytes()).main()


@pytest.mark.parametrize(
    "call, err",
    [("write", errno.ENOSPC), ("open", errno.EROFS), ("fsync", errno.EIO)],
)
@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/api/v1/backends", {"host": "127.0.0.1", "port": 9003}),
        ("PATCH", "/api/v1/backends/b2", {"weight": 5}),
        ("DELETE", "/api/v1/backends/b1", None),
        ("PUT", "/api/v1/strategy", {"name": "random"}),
        ("PUT", "/api/v1/config", {"backends": [{"id": "x", "host": "127.0.0.1", "port": 9100}]}),
    ],
    ids=["add", "patch", "delete", "strategy", "import"],
)
def test_failed_write_is_507_and_changes_nothing(admin, call, err, method, path, body):
    """
    Every kind of change answers 507 with a JSON error naming the file and
    the OS error when the write fails; the running config and the file keep
    the old version; with the disk fixed the same change is acknowledged
    and stored.
    """
    admin.spy.fail[call] = OSError(err, os.strerror(err))
    reply = admin.request(method, path, body)
    assert reply.code == 507
    message = reply.json["error"]
    assert os.strerror(err) in message and str(admin.file.parent) in message
    assert admin.balancer.config == START
    assert stored(admin) == START
    assert admin.request("GET", "/api/v1/config").json == START.to_json()

    del admin.spy.fail[call]
    reply = admin.request(method, path, body)
    assert 200 <= reply.code < 300, reply.json
    assert admin.balancer.config.version == 2
    assert stored(admin) == admin.balancer.config
    assert decode((admin.file.parent / "config.json.prev").read_bytes()).main() == START


def test_status_names_the_store(admin):
    """GET /api/v1/status says where the config is stored and which version."""
    status = admin.request("GET", "/api/v1/status").json
    assert status["store"] == {"kind": "file", "path": str(admin.file), "version": 1}
