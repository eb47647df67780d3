"""
Traffic control under C{twistd lbproxy --workers 2}: each worker enforces
the rules on its own connections and reports its counters; the parent's
API and C{/metrics} show the sums, equal to the refusals the clients saw.
"""

from __future__ import annotations

import socket
import sys
import urllib.request

import pytest

from tests.integration import lifecycle_harness as lh
from tests.integration.test_workers_services import Backend, call, spawn, stop

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers are Linux-only"),
]


def attempt(port: int, source: str) -> socket.socket | None:
    """
    Connect from C{source}: the open socket if the backend's line came
    (served), else C{None} (refused: closed or reset before any byte).
    """
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    if data.endswith(b"\n"):
        return s
    s.close()
    return None


@pytest.fixture
def proxy(tmp_path):
    backend = Backend(b"t1")
    port = lh.free_port()
    config = tmp_path / "traffic.toml"
    config.write_text(f"""
[services.alpha]
listen = ["tcp:{port}:interface=127.0.0.1"]
deny = ["127.0.0.2/32"]
client_limits = {{ max_connections = 1 }}
backends = [{{ host = "127.0.0.1", port = {backend.port}, id = "t1" }}]
""")
    p = spawn(tmp_path, config, port, lh.free_port(), lh.free_port())
    try:
        yield p
    finally:
        stop(p)
        backend.stop()


def test_the_apis_traffic_counters_are_the_sums_of_what_both_workers_refused(proxy):
    """
    40 connections from a denied address and 20 held ones from an address
    limited to one connection per client: every refusal the clients saw is
    in the API's and /metrics' counters (both workers refused some, so
    these are sums), and the per-client limit holds per worker (at most 2
    of the held connections served, one per worker).
    """
    denied = [attempt(proxy.listen, "127.0.0.2") for _ in range(40)]
    assert denied == [None] * 40
    held = [attempt(proxy.listen, "127.0.0.3") for _ in range(20)]
    served = [s for s in held if s is not None]
    try:
        refused = len(held) - len(served)
        assert 1 <= len(served) <= 2, len(served)

        def counted() -> dict | None:
            traffic = call(proxy.admin, "GET", "/services/alpha")[1]["traffic"]["refused"]
            return traffic if (traffic["denied"], traffic["client-connections"]) == (40, refused) else None

        traffic = lh.until(counted, 10, f"the API counting 40 denied and {refused} over the client limit")
        assert call(proxy.admin, "GET", "/services/alpha")[1]["traffic"]["workers"] == 2
        assert sum(traffic.values()) == 40 + refused
        per_worker = [w["services"]["alpha"]["refused"] for w in proxy.status()["workers"]]
        assert sum(per_worker) == 40 + refused and min(per_worker) > 0, per_worker
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert 'lbproxy_traffic_refused_total{reason="denied",service="alpha"} 40.0' in metrics, metrics
        assert (f'lbproxy_traffic_refused_total{{reason="client-connections",service="alpha"}} {refused}.0'
                in metrics)
    finally:
        for s in served:
            s.close()
