"""
round-robin honours weights over real loopback sockets: through each relay
engine in this process, and through a real lbproxy process on each engine.
"""

from __future__ import annotations

from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from tests.integration import relay_harness as h

pytestmark = pytest.mark.integration


def assert_one_to_three(counts, light, heavy):
    assert abs(counts[light] - 100) <= 8 and abs(counts[heavy] - 300) <= 8, counts
    assert counts[light] + counts[heavy] == 400, counts


@pytest.mark.parametrize("engine", sorted(h.ENGINES))
@pytest.mark.parametrize("strategy", ["round-robin", "weighted-round-robin"])
@pytest_twisted.inlineCallbacks
def test_weights_one_to_three_over_400_connections(engine, strategy, factories, cleanup):
    """Weights 1:3 give 100 and 300 of 400 connections (each within 8),
    through each engine, under round-robin and its old name."""
    servers = [h.serve(reactor, h.Named, name=name) for name in ("light", "heavy")]
    for s in servers:
        cleanup(s.stopListening)
    balancer = h.make_balancer(reactor, factories, [s.getHost().port for s in servers],
                               strategy=strategy, weights=[1, 3])
    port, stop = h.ENGINES[engine](balancer, reactor)
    cleanup(stop)
    balancer.start(interval=0.05)
    cleanup(balancer.stop)
    names = yield deferToThread(h.names, port, 400)
    assert_one_to_three(Counter(n.strip().decode() for n in names), "light", "heavy")


@pytest.mark.parametrize("engine", ["twisted", "fast"])
def test_real_lbproxy_honours_weights(engine, tmp_path):
    """A real lbproxy process (twistd, --engine twisted or fast) started
    with weights 1 and 3 and the default strategy sends 100 and 300 of 400
    sequential requests to two real demo backend processes."""
    from tests.browser.procs import DemoBackendProcess, LBProxy

    started = []
    try:
        light = DemoBackendProcess("light").start()
        started.append(light)
        heavy = DemoBackendProcess("heavy").start()
        started.append(heavy)
        proxy = LBProxy(tmp_path, "--engine", engine,
                        "--backend", f"127.0.0.1:{light.port},weight=1",
                        "--backend", f"127.0.0.1:{heavy.port},weight=3")
        started.append(proxy.start())
        assert proxy.api("GET", "/strategy")["name"] == "round-robin"
        counts = Counter(proxy.request().rsplit(b"hello from ", 1)[-1].strip().decode() for _ in range(400))
        assert_one_to_three(counts, "light", "heavy")
    finally:
        for p in reversed(started):
            p.stop()
