"""
Traffic control over real loopback sockets, on every relay engine:
access lists by source address (loopback has all of 127.0.0.0/8, so the
clients bind 127.0.0.2 and 127.0.0.3), a per-source rate limit that keeps
a flood from hurting another client, and the queue at a backend's
max_connections.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from lbproxy.model.config import ClientLimits
from tests.integration import relay_harness as h
from tests.integration.traffic_clients import one

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def proxy(engine, factories, cleanup, proto=h.Named, **service):
    """A proxy on C{engine} in front of one backend, with C{service}'s traffic fields."""
    backend_max = service.pop("backend_max", None)
    port = h.serve(reactor, proto, name="b1")
    cleanup(port.stopListening)
    balancer = h.make_balancer(reactor, factories, [port.getHost().port], max_connections=backend_max)
    balancer.apply(replace(balancer.config, version=2, **service))
    if engine == "twisted":
        # As the listener manager listens (the harness's default backlog of 50
        # would have the kernel, not lbproxy, throttle a flood).
        from lbproxy.relay.twisted_engine import ProxyFactory

        listening = reactor.listenTCP(0, ProxyFactory(balancer, reactor), backlog=4096, interface="127.0.0.1")
        listen, stop = listening.getHost().port, listening.stopListening
    else:
        listen, stop = h.ENGINES[engine](balancer, reactor)
    cleanup(stop)
    balancer.start(interval=0.05)
    cleanup(balancer.stop)
    return balancer, listen


def run_clients(*argv_list):
    """Run client processes side by side; their JSON answers."""

    def run():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [subprocess.Popen([sys.executable, "-m", "tests.integration.traffic_clients", *map(str, argv)],
                                  stdout=subprocess.PIPE, cwd=ROOT, env=env) for argv in argv_list]
        return [json.loads(p.communicate(timeout=60)[0]) for p in procs]

    return deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_deny_then_allow_by_source_address(engine, factories, cleanup):
    """A deny list refuses 127.0.0.2 while 127.0.0.3 is served; an allow list
    (changed at runtime) the reverse; each refusal is counted by reason."""
    balancer, port = proxy(engine, factories, cleanup, deny=("127.0.0.2/32",))
    assert await deferToThread(one, port, "127.0.0.2") is False
    assert await deferToThread(one, port, "127.0.0.3") is True
    balancer.apply(replace(balancer.config, version=3, deny=(), allow=("127.0.0.2/32",)))
    assert await deferToThread(one, port, "127.0.0.2") is True
    assert await deferToThread(one, port, "127.0.0.3") is False
    refused = balancer.traffic_state.view()["refused"]
    assert (refused["denied"], refused["not-allowed"]) == (1, 1)
    assert balancer.totals.accepted == 2


@pytest_twisted.ensureDeferred
async def test_a_flood_from_one_source_does_not_starve_another(engine, factories, cleanup):
    """With 20 new connections per second per source, a flood from 127.0.0.2
    (one process connecting as fast as it can) leaves 127.0.0.3 (an
    ordinary client at 15 connections per second) at least 90 % of the
    successful rate it gets with no flood, measured side by side."""
    balancer, port = proxy(engine, factories, cleanup,
                           client_limits=ClientLimits(rate=20, burst=20))
    seconds = 3
    [alone] = await run_clients(("paced", port, "127.0.0.3", 15, seconds))
    before = balancer.traffic_state.view()["refused"]["client-rate"]
    flood, beside = await run_clients(("flood", port, "127.0.0.2", seconds + 1),
                                      ("paced", port, "127.0.0.3", 15, seconds))
    refused = balancer.traffic_state.view()["refused"]["client-rate"] - before
    print(f"\n{engine}: alone {alone}, beside a flood {beside}; flood {flood}, refused {refused}")
    assert alone["served"] == alone["tried"]
    assert refused > 1000, "the flood was not a flood"
    assert beside["rate"] >= 0.9 * alone["rate"]


def _held_client(port, hold):
    """Connect, read the line (served) or the close (refused), hold a served connection."""
    s = socket.socket()
    s.settimeout(20)
    start = time.monotonic()
    try:
        s.connect(("127.0.0.1", port))
        got = b""
        while not got.endswith(b"\n"):
            data = s.recv(64)
            if not data:
                break
            got += data
    except OSError:
        got = b""
    took = time.monotonic() - start
    if got:
        time.sleep(hold)
    s.close()
    return got, took


async def together(port, n, hold):
    return await defer.gatherResults([deferToThread(_held_client, port, hold) for _ in range(n)])


@pytest_twisted.ensureDeferred
async def test_queue_serves_ten_clients_in_turn_on_one_connection(engine, factories, cleanup):
    """A backend with max_connections=1 and 10 clients arriving together:
    all 10 are served in turn within the queue timeout, none refused."""
    balancer, port = proxy(engine, factories, cleanup, backend_max=1, max_queue=10, queue_timeout=10)
    results = await together(port, 10, hold=0.1)
    assert [got for got, _ in results] == [b"b1\n"] * 10
    view = balancer.traffic_state.view()
    assert view["refused"]["queue-full"] == view["refused"]["queue-timeout"] == 0
    assert view["queue"]["served"] >= 1 and view["queue"]["longest_wait"] > 0.1
    assert balancer.pool.stats["b1"].total == 10


@pytest_twisted.ensureDeferred
async def test_a_full_queue_refuses_at_once(engine, factories, cleanup):
    """With max_queue=3, 10 clients arriving together: exactly 6 are refused
    at once, the other 4 are served in turn."""
    balancer, port = proxy(engine, factories, cleanup, backend_max=1, max_queue=3, queue_timeout=10)
    results = await together(port, 10, hold=0.5)
    refused = [took for got, took in results if not got]
    assert len(refused) == 6 and max(refused) < 0.5
    assert sum(1 for got, _ in results if got == b"b1\n") == 4
    assert balancer.traffic_state.view()["refused"]["queue-full"] == 6


@pytest_twisted.ensureDeferred
async def test_fast_engine_notices_a_waiting_client_that_resets(factories, cleanup):
    """A client that resets while it waits in the queue is ended at once
    (the fast engine watches its socket for errors only), freeing its place."""
    if "fast" not in h.ENGINES:
        pytest.fail("the fast engine needs Linux")
    balancer, port = proxy("fast", factories, cleanup, backend_max=1, max_queue=1, queue_timeout=30)
    served = await deferToThread(socket.create_connection, ("127.0.0.1", port), 5)
    waiting = await deferToThread(socket.create_connection, ("127.0.0.1", port), 5)
    await h.until(lambda: len(balancer.traffic_state.queue) == 1 and balancer.totals.active == 2)
    waiting.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    waiting.close()
    await h.until(lambda: balancer.totals.active == 1)
    served.close()
    await h.until(lambda: balancer.totals.active == 0)
