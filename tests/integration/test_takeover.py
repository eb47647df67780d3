"""
Restart without refusing a connection (lbproxy.control.takeover): a new
C{twistd lbproxy --takeover} takes the running one's listening sockets
over its control socket, under a steady connect rate and with streams
open, five times in a row.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.integration import lifecycle_harness as lh

pytestmark = pytest.mark.integration

#: New connections per second during the takeovers (the issue's figure).
RATE = 300
STREAMS = 50
TAKEOVERS = 5


@pytest.mark.parametrize("flags", [[], ["--workers", "2"], ["--engine", "twisted"]],
                         ids=["one-process", "workers-2", "twisted-engine"])
def test_five_takeovers_refuse_no_connection_and_cut_no_stream(tmp_path, echo, proxies, flags):
    """
    Under about 300 new connections per second, five takeovers in a row:
    every connect succeeds (each gets its byte echoed), and each batch of
    50 streams opened on the old process just before its takeover
    finishes there (every byte back, clean EOF) after the new one took
    over, while the new one serves;
    each old process exits 0 once drained, the PID file names the new
    process by then, and the last takes changes (it owns the state
    directory's lock).
    """
    pid_file = tmp_path / "lbproxy.pid"
    common = ["--state-dir", str(tmp_path / "state"), "--pid-file", str(pid_file), *flags]
    current = lh.spawn(tmp_path, echo.port, *common).wait_ready()
    proxies.append(current)
    if "--workers" in flags:
        lh.until(lambda: all(w and w["listening"] for w in current.status()["workers"]), 30, "workers")
    connects = lh.Connects(current.listen, RATE)
    began = time.monotonic()
    try:
        for round in range(TAKEOVERS):
            streams = lh.Streams(current.listen, STREAMS, duration=120)
            new = lh.spawn(tmp_path, echo.port, *common, "--takeover",
                           listen=current.listen, admin=current.admin)
            proxies.append(new)
            # The old process drains from now on: its streams end while it does.
            lh.until(lambda: "it drains now" in new.output(), 30, "the takeover")
            streams.finish()
            assert current.wait(40) == 0, current.output()
            # Rewritten before the old process exited (systemd's PIDFile= follows it).
            assert pid_file.read_text().strip() == str(new.proc.pid)
            drained = re.search(r"(\d+) connections finished, (\d+) were cut", current.output())
            assert drained and int(drained[2]) == 0, current.output()
            assert int(drained[1]) >= STREAMS, current.output()
            streams.join(30)
            assert streams.outcomes() == {"ok": STREAMS}, (round, new.output())
            current = new.wait_ready()
            assert current.status()["state"] == "running"
        time.sleep(0.5)
    finally:
        connects.stop()
    took = time.monotonic() - began
    print(f"takeover {flags}: {connects.ok} connects ok in {took:.1f}s "
          f"({connects.ok / took:.0f}/s), {len(connects.failed)} failed")
    assert connects.failed == [], connects.failed[:5]
    assert connects.ok > RATE  # it ran for more than a second (it is paced, not a stress test)
    import json
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{current.admin}/api/v1/settings", method="PATCH",
        data=json.dumps({"slow_start": 1}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
    current.signal()
    assert current.wait(30) == 0
    assert not pid_file.exists()


def test_takeover_without_a_running_process_just_starts(tmp_path, echo, proxies):
    """
    --takeover with nothing on the control socket (a stale socket file
    from a process that is gone included) starts afresh and relays.
    """
    state = tmp_path / "state"
    state.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(state / "control.sock"))
    stale.close()  # the path stays, nobody listens
    proxy = lh.spawn(tmp_path, echo.port, "--state-dir", str(state), "--takeover").wait_ready()
    proxies.append(proxy)
    assert "no lbproxy on" in proxy.output()
    with socket.create_connection(("127.0.0.1", proxy.listen), timeout=5) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    proxy.signal()
    assert proxy.wait(30) == 0


def test_a_new_process_that_goes_away_before_draining_changes_nothing(tmp_path, echo, proxies):
    """
    A takeover abandoned after the sockets were handed (the new process
    died before asking for the drain): the old process never stopped
    accepting, takes its state directory's lock back (changes work) and
    listens on its control socket again (a later takeover works).
    """
    import json
    import urllib.request

    from lbproxy.control.takeover import request

    state = tmp_path / "state"
    proxy = lh.spawn(tmp_path, echo.port, "--state-dir", str(state)).wait_ready()
    proxies.append(proxy)
    handover = request(str(state / "control.sock"))
    assert handover is not None and sorted(handover.sockets) == [
        "admin", f"proxy:tcp:{proxy.listen}:interface=127.0.0.1"]
    for socks in handover.sockets.values():
        for s in socks:
            s.close()
    handover.conn.close()
    lh.until(lambda: "went away before taking over" in proxy.output(), 10, "the old process noticed")
    lh.until(lambda: (state / "control.sock").exists(), 10, "the control socket again")
    req = urllib.request.Request(
        f"http://127.0.0.1:{proxy.admin}/api/v1/settings", method="PATCH",
        data=json.dumps({"slow_start": 2}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
    new = lh.spawn(tmp_path, echo.port, "--state-dir", str(state), "--takeover",
                   listen=proxy.listen, admin=proxy.admin)
    proxies.append(new)
    assert proxy.wait(30) == 0
    new.wait_ready()
    with socket.create_connection(("127.0.0.1", new.listen), timeout=5) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
