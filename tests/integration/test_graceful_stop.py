"""
SIGTERM on a real C{twistd lbproxy} (lbproxy.control.lifecycle): open
streams finish, what outlives the grace period is closed over the spread
window, a second SIGTERM stops at once, and the exit status is 0.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.integration import lifecycle_harness as lh

pytestmark = pytest.mark.integration

ENGINES = ["fast", "twisted"]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("engine", ENGINES)
def test_sigterm_lets_200_streams_finish_and_exits_0(tmp_path, echo, proxies, engine):
    """
    200 streams that end within the grace period all complete (every byte
    echoed, clean EOF) after SIGTERM; meanwhile the status says
    C{stopping} and new connections are refused; the exit status is 0 and
    the log counts 200 finished, 0 cut.
    """
    proxy = lh.spawn(tmp_path, echo.port, "--engine", engine, "--grace", "20").wait_ready()
    proxies.append(proxy)
    streams = lh.Streams(proxy.listen, 200, duration=3.0)
    lh.until(lambda: proxy.status()["active_connections"] == 200, 20, "200 relayed")
    proxy.signal(signal.SIGTERM)
    lh.until(lambda: proxy.status()["state"] == "stopping", 10, "state stopping")
    assert _refused(proxy.listen)
    assert proxy.wait(30) == 0, proxy.output()
    streams.join(30)
    assert streams.outcomes() == {"ok": 200}, proxy.output()
    assert "200 connections finished, 0 were cut" in proxy.output()


@pytest.mark.parametrize("engine", ENGINES)
def test_streams_outliving_grace_are_closed_over_the_spread(tmp_path, echo, proxies, engine):
    """
    Streams still open at the end of the grace period are closed (FIN: the
    client reads EOF) one after another over the spread window, not in one
    instant: their close times span most of the window.
    """
    spread = 3.0
    proxy = lh.spawn(tmp_path, echo.port, "--engine", engine, "--grace", "1",
                     "--grace-spread", str(spread)).wait_ready()
    proxies.append(proxy)
    streams = lh.Streams(proxy.listen, 40, duration=120)
    lh.until(lambda: proxy.status()["active_connections"] == 40, 20, "40 relayed")
    sent = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(30) == 0, proxy.output()
    streams.join(30)
    assert streams.outcomes() == {"eof-early": 40}, proxy.output()
    ends = sorted(st.ended_at - sent for st in streams.streams)
    print(f"{engine}: closes from {ends[0]:.2f}s to {ends[-1]:.2f}s after SIGTERM (grace 1, spread {spread})")
    assert ends[0] >= 0.9, ends
    assert ends[-1] - ends[0] >= 0.7 * spread, ends
    assert ends[-1] <= 1 + spread + 1.5, ends
    assert "0 connections finished, 40 were cut" in proxy.output()


def test_second_sigterm_stops_at_once(tmp_path, echo, proxies):
    """
    A second SIGTERM while stopping resets every stream and the process
    exits 0 at once instead of after its 60 s grace period.
    """
    proxy = lh.spawn(tmp_path, echo.port, "--grace", "60").wait_ready()
    proxies.append(proxy)
    streams = lh.Streams(proxy.listen, 20, duration=120)
    lh.until(lambda: proxy.status()["active_connections"] == 20, 20, "20 relayed")
    proxy.signal(signal.SIGTERM)
    lh.until(lambda: proxy.status()["state"] == "stopping", 10, "state stopping")
    sent = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(10) == 0, proxy.output()
    assert time.monotonic() - sent < 3
    streams.join(10)
    assert sum(streams.outcomes().get(k, 0) for k in ("reset", "eof-early")) == 20


def test_workers_drain_over_amp_and_parent_exits_0(tmp_path, echo, proxies):
    """
    With C{--workers 2} the parent tells its workers to drain (AMP
    C{Drain}): 100 streams spread over both finish, no worker is
    restarted meanwhile, and the parent exits 0 once both are done.
    """
    proxy = lh.spawn(tmp_path, echo.port, "--workers", "2", "--grace", "20").wait_ready()
    proxies.append(proxy)
    lh.until(lambda: all(w and w["listening"] for w in proxy.status()["workers"]), 30, "workers listening")
    streams = lh.Streams(proxy.listen, 100, duration=3.0)
    lh.until(lambda: sum(w["active"] for w in proxy.status()["workers"]) == 100, 20, "100 relayed")
    proxy.signal(signal.SIGTERM)
    lh.until(lambda: proxy.status()["state"] == "stopping", 10, "state stopping")
    assert proxy.wait(30) == 0, proxy.output()
    streams.join(30)
    assert streams.outcomes() == {"ok": 100}, proxy.output()
    assert "100 connections finished, 0 were cut" in proxy.output()
    assert "starting another" not in proxy.output()


def test_workers_stop_refuses_new_connections_at_once(tmp_path, echo, proxies):
    """
    With --workers 2, once stopping, a new client is refused at once (not
    left in an accept queue no one reads): the parent lets go of its copies
    of the workers' sockets when it tells them to drain.
    """
    proxy = lh.spawn(tmp_path, echo.port, "--workers", "2", "--grace", "20").wait_ready()
    proxies.append(proxy)
    lh.until(lambda: all(w and w["listening"] for w in proxy.status()["workers"]), 30, "workers listening")
    streams = lh.Streams(proxy.listen, 10, duration=120)
    lh.until(lambda: sum(w["active"] for w in proxy.status()["workers"]) == 10, 20, "10 relayed")
    proxy.signal(signal.SIGTERM)
    lh.until(lambda: proxy.status()["state"] == "stopping", 10, "state stopping")
    lh.until(lambda: _refused(proxy.listen), 10, "new clients refused")
    streams.finish()
    assert proxy.wait(30) == 0, proxy.output()
    streams.join(30)
    assert streams.outcomes() == {"ok": 10}
