"""
C{twistd lbproxy --workers 2} terminating TLS: real processes, each
worker serving the certificates of the document it was sent (two picked
by SNI), refusing a client without a certificate where mTLS is asked, and
serving a certificate replaced through the API once it applied the
change.  Clients are Python's C{ssl}.
"""

from __future__ import annotations

import shutil
import ssl
import sys
import time

import pytest

from tests.integration import lifecycle_harness as lh
from tests.integration.test_workers_services import Backend, call, per_worker, spawn, stop
from tests.tlscerts import CA, handshake

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers are Linux-only"),
]


def applied_everywhere(p: lh.Proxy, version: int) -> bool:
    return all(w and w["applied_version"] == version for w in p.status()["workers"])


def test_two_workers_serve_sni_certificates_mtls_and_a_reload(tmp_path):
    """
    With --workers 2: a service with two certificates gives each server
    name its own through both workers (the per-worker counters); a
    service with client_ca admits a client with a certificate of the CA
    and refuses one without; after a PATCH of the certificates, once both
    workers acknowledged the new version, every handshake (through both
    workers) gets the new certificate, and so it does once new files are
    written at the same paths (each worker watches them); a mismatched key
    is refused.
    """
    ca = CA(tmp_path)
    a = ca.issue("a", "a.test", ["a.test"])
    b = ca.issue("b", "b.test", ["b.test"])
    client = ca.issue("client", "alice", client=True)
    named = Backend(b"w1")
    web, secure, admin = lh.free_port(), lh.free_port(), lh.free_port()
    config = tmp_path / "tls.toml"
    config.write_text(f"""
[services.web]
listen = ["tcp:{web}:interface=127.0.0.1"]
backends = [{{ host = "127.0.0.1", port = {named.port}, id = "w1" }}]
tls = {{ certificates = [{{ cert = "{a[0]}", key = "{a[1]}" }}, {{ cert = "{b[0]}", key = "{b[1]}" }}] }}

[services.secure]
listen = ["tcp:{secure}:interface=127.0.0.1"]
backends = [{{ host = "127.0.0.1", port = {named.port}, id = "s1" }}]
tls = {{ certificates = [{{ cert = "{a[0]}", key = "{a[1]}" }}], client_ca = "{ca.path}" }}
""")
    p = None
    try:
        p = spawn(tmp_path, config, web, secure, admin)
        for _ in range(15):
            assert handshake(web, "a.test", ca.path) == ("a.test", b"w1")
            assert handshake(web, "b.test", ca.path) == ("b.test", b"w1")
        lh.until(lambda: sum(per_worker(p, "web")) == 30, 10, "the workers' reports of web")
        assert min(per_worker(p, "web")) > 0

        assert handshake(secure, "a.test", ca.path, client) == ("a.test", b"w1")
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            handshake(secure, "a.test", ca.path, None, send=b"hello\n")

        renewed = ca.issue("a2", "a-renewed.test", ["a.test"])
        code, body = call(admin, "PATCH", "/services/web",
                          {"tls": {"certificates": [{"cert": renewed[0], "key": renewed[1]}]}})
        assert code == 200, body
        status, document = call(admin, "GET", "/services")
        version = document.get("version") if status == 200 else None
        lh.until(lambda: version is not None and applied_everywhere(p, version), 10, "both workers applied it")
        before = per_worker(p, "web")
        assert {handshake(web, "a.test", ca.path)[0] for _ in range(30)} == {"a-renewed.test"}
        lh.until(lambda: sum(per_worker(p, "web")) == sum(before) + 30, 10, "the workers' reports")
        assert all(now > then for now, then in zip(per_worker(p, "web"), before)), (before, per_worker(p, "web"))
        # New files at the same paths: each worker reads them on its own
        # poll; done once a batch through both workers all gets them.
        ondisk = ca.issue("a3", "a-ondisk.test", ["a.test"])
        shutil.copy(ondisk[0], renewed[0])
        shutil.copy(ondisk[1], renewed[1])
        deadline = time.monotonic() + 30
        while True:
            before = per_worker(p, "web")
            names = {handshake(web, "a.test", ca.path)[0] for _ in range(20)}
            lh.until(lambda: sum(per_worker(p, "web")) == sum(before) + 20, 10, "the workers' reports")
            after = per_worker(p, "web")
            if names == {"a-ondisk.test"} and all(n > b for n, b in zip(after, before)):
                break
            assert time.monotonic() < deadline, (names, before, after)
        # A mismatched key is refused by the parent, nothing sent to the workers.
        code, body = call(admin, "PATCH", "/services/web",
                          {"tls": {"certificates": [{"cert": a[0], "key": b[1]}]}})
        assert code == 400 and "does not match" in body["error"], body
        assert handshake(web, "a.test", ca.path)[0] == "a-ondisk.test"
    finally:
        if p is not None:
            stop(p)
        named.stop()
