"""
Takeover in cluster mode: the node's membership passes from the old
process to the new one (a real etcd server).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request

import pytest

from tests.integration import lifecycle_harness as lh

ETCD = "/usr/bin/etcd"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.etcd,
    pytest.mark.skipif(not os.path.exists(ETCD), reason="needs /usr/bin/etcd"),
]


@pytest.fixture
def etcd(tmp_path):
    client, peer = lh.free_port(), lh.free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    with open(tmp_path / "etcd.log", "wb") as out:
        proc = subprocess.Popen(
            [ETCD, "--name", "e1", "--data-dir", str(tmp_path / "etcd.data"),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"e1={peer_url}"],
            stdout=out, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin"})
    try:
        def healthy():
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    return json.loads(r.read()).get("health") == "true"
            except OSError:
                return False

        lh.until(healthy, 30, "etcd")
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def _nodes(admin: int) -> list:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/v1/nodes", timeout=5) as r:
        return json.loads(r.read())["nodes"]


def test_membership_passes_to_the_new_process(tmp_path, etcd, echo):
    """
    After a takeover and the old process's exit (which revokes its lease),
    the node is still registered, now by the new process, and stays so.
    """
    flags = ["--store", f"etcd:{etcd}", "--node-name", "n1",
             "--control-socket", str(tmp_path / "control.sock")]
    old = lh.spawn(tmp_path, echo.port, *flags).wait_ready()
    new = None
    try:
        lh.until(lambda: [n["name"] for n in _nodes(old.admin)] == ["n1"], 20, "n1 registered")
        new = lh.spawn(tmp_path, echo.port, *flags, "--takeover", listen=old.listen, admin=old.admin)
        assert old.wait(30) == 0, old.output()
        new.wait_ready()
        lh.until(lambda: "registered node n1" in new.output(), 20, "the new process registered")
        # The old process revoked its lease before it exited (twistd waits for
        # the membership's stop): the key is held by the new lease.
        assert [n["name"] for n in _nodes(new.admin)] == ["n1"], new.output()
    finally:
        for p in (old, new):
            if p is not None and p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(5)
