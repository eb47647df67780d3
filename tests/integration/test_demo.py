"""
The demo as a user runs it (C{twistd -n --pidfile= lbproxy-demo}, a real
child process): simulated users come and go, their traffic reaches every
demo backend, a backend taken offline turns C{down} and its traffic moves
to the others, and Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.error import ConnectError
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Watch(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred = defer.Deferred()
        self.status: Any = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.status = reason.value
        self.ended.callback(reason.value.exitCode)


class Demo:
    """
    One C{twistd lbproxy-demo} child and an HTTP client for its admin API.
    """

    def __init__(self, *args: str) -> None:
        self.listen = free_port()
        self.admin = free_port()
        self.args = [
            sys.executable, "-c", TWISTD, "-n", "--pidfile=", "lbproxy-demo",
            "--listen", f"tcp:{self.listen}:interface=127.0.0.1",
            "--admin", f"tcp:{self.admin}:interface=127.0.0.1", *args,
        ]
        self.watch = _Watch()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.transport: Any = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.transport = reactor.spawnProcess(self.watch, sys.executable, self.args, env=env, path=str(REPO))

    @property
    def output(self) -> str:
        return self.watch.output.decode(errors="replace")

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        url = f"http://127.0.0.1:{self.admin}/api/v1{path}"
        kw: dict[str, Any] = {"pool": self.pool}
        if body is not None:
            kw["json"] = body
        response = await treq.request(method, url, **kw)
        data = await response.json()
        assert response.code < 400, (method, path, response.code, data)
        return data

    async def until(self, what: str, check: Callable[[], Any], deadline: float = 30.0) -> Any:
        """
        Poll C{check} (an async callable returning a truthy value when
        done) every 0.2 s until C{deadline} seconds have passed.
        """
        waited = 0.0
        last: Any = None
        while waited < deadline:
            if self.watch.ended.called:
                raise AssertionError(f"the demo exited while waiting for {what}:\n{self.output[-3000:]}")
            try:
                last = await check()
            except (ConnectError, ResponseNeverReceived, OSError, AssertionError) as e:
                last = e
            else:
                if last:
                    return last
            await task.deferLater(reactor, 0.2, lambda: None)
            waited += 0.2
        raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{self.output[-3000:]}")

    async def backends(self) -> dict[str, dict[str, Any]]:
        body = await self.api("GET", "/backends")
        return {b["id"]: b for b in body["backends"]}

    async def stop(self) -> int:
        if not self.watch.ended.called:
            self.transport.signalProcess("INT")
            timer = reactor.callLater(15, self._kill)
            await self.watch.ended
            if timer.active():
                timer.cancel()
        await self.pool.closeCachedConnections()
        return self.watch.status.exitCode

    def assert_clean_exit(self) -> None:
        """
        Ctrl-C ended it the way twistd ends on SIGINT (exit 0, or re-raising
        the signal after shutting down), with nothing logged as an error.
        """
        status = self.watch.status
        assert status.exitCode == 0 or status.signal == signal.SIGINT, (status, self.output[-3000:])
        assert "Server Shut Down." in self.output, self.output[-3000:]
        assert "Traceback" not in self.output and "Unhandled" not in self.output, self.output[-5000:]

    def _kill(self) -> None:
        if not self.watch.ended.called:
            self.transport.signalProcess("KILL")


@pytest_twisted.ensureDeferred
async def test_demo_users_traffic_and_a_backend_going_offline():
    """
    Users come online and go offline; every demo backend gets traffic;
    taking one offline (its port really closes) makes it C{down} and its
    share goes to the others while it gets no new connection; back online it
    is C{up} again; Ctrl-C ends the process cleanly with its ports closed.
    """
    demo = Demo("--demo-users", "30")
    demo.start()
    try:
        async def users():
            state = await demo.api("GET", "/demo")
            u = state["users"]
            return u if u and u["online"] >= 10 and u["went_offline"] >= 3 and u["went_online"] > u["online"] else None

        u = await demo.until("users to come and go", users, 40)
        assert u["count"] == 30
        assert "open the dashboard:  http://127.0.0.1:%d/" % demo.admin in demo.output
        assert "the proxy listens:   127.0.0.1:%d" % demo.listen in demo.output

        async def all_served():
            views = await demo.backends()
            return views if all(views[n]["stats"]["total"] >= 5 for n in ("alpha", "bravo", "charlie")) else None

        await demo.until("traffic on every backend", all_served)
        state = await demo.api("GET", "/demo")
        ports = {b["name"]: b["port"] for b in state["backends"]}
        assert set(state["users"]["served"]) == {"alpha", "bravo", "charlie"}

        offline = await demo.api("POST", "/demo/backends/alpha", {"online": False})
        assert offline["online"] is False

        async def alpha_down():
            views = await demo.backends()
            return views if views["alpha"]["state"] == "down" else None

        views = await demo.until("alpha to be down", alpha_down, 15)
        assert views["alpha"]["health"]["reason"]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ports["alpha"]), timeout=2).close()
        before = {n: v["stats"]["total"] for n, v in views.items()}

        async def moved():
            now = {n: v["stats"]["total"] for n, v in (await demo.backends()).items()}
            return now if all(now[n] - before[n] >= 15 for n in ("bravo", "charlie")) else None

        after = await demo.until("traffic to move to bravo and charlie", moved)
        assert after["alpha"] == before["alpha"], (before, after)

        await demo.api("POST", "/demo/backends/alpha", {"online": True})

        async def alpha_back():
            views = await demo.backends()
            return views["alpha"]["state"] == "up" and views["alpha"]["stats"]["total"] > after["alpha"]

        await demo.until("alpha to be up and serving again", alpha_back, 30)
    finally:
        await demo.stop()
    demo.assert_clean_exit()
    for port in (demo.listen, demo.admin, *ports.values()):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest_twisted.ensureDeferred
async def test_demo_user_count_and_bad_requests():
    """
    The user count follows C{PUT /api/v1/demo/users}; invalid demo requests
    get a 4xx JSON error and change nothing.
    """
    demo = Demo("--demo-users", "5")
    demo.start()
    try:
        await demo.until("the demo API", lambda: demo.api("GET", "/demo"), 30)
        await demo.api("PUT", "/demo/users", {"count": 12})

        async def twelve():
            u = (await demo.api("GET", "/demo"))["users"]
            return u["count"] == 12 and u["online"] >= 10

        await demo.until("12 users online", twelve, 20)
        for method, path, body, code, text in (
            ("PUT", "/demo/users", {"count": 100000}, 400, "count must be an integer from 0 to"),
            ("PUT", "/demo/users", {"count": "many"}, 400, "count must be an integer"),
            ("POST", "/demo/backends/alpha", {"delay": -1}, 400, "delay must be a number of seconds"),
            ("POST", "/demo/backends/alpha", {"online": "no"}, 400, "online must be true or false"),
            ("POST", "/demo/backends/alpha", {"colour": "red"}, 400, "unknown field"),
            ("POST", "/demo/backends/nobody", {"online": False}, 404, "no demo backend named 'nobody'"),
        ):
            response = await treq.request(
                method, f"http://127.0.0.1:{demo.admin}/api/v1{path}", json=body, pool=demo.pool,
            )
            data = await response.json()
            assert (response.code, text in data["error"]) == (code, True), (path, body, data)
        state = await demo.api("GET", "/demo")
        assert state["users"]["count"] == 12
        assert all(b["online"] for b in state["backends"])
        assert state["backends"][0]["delay"] == 0.02
        slow = await demo.api("POST", "/demo/backends/charlie", {"delay": 0.5})
        assert slow["delay"] == 0.5
    finally:
        await demo.stop()
    demo.assert_clean_exit()


@pytest_twisted.ensureDeferred
async def test_least_response_time_moves_load_off_the_slow_backend():
    """
    The demo's point: with one slow backend, round-robin still sends it a
    third of the connections; after switching to least-response-time it
    gets only a small share.
    """
    demo = Demo("--demo-users", "30")
    demo.start()
    try:
        await demo.until("the demo API", lambda: demo.api("GET", "/demo"), 30)
        await demo.api("POST", "/demo/backends/charlie", {"delay": 0.4})

        async def share_over(n: int) -> dict[str, float]:
            start = {k: v["stats"]["total"] for k, v in (await demo.backends()).items()}

            async def enough():
                now = {k: v["stats"]["total"] for k, v in (await demo.backends()).items()}
                done = sum(now[k] - start[k] for k in now)
                return {k: (now[k] - start[k]) / done for k in now} if done >= n else None

            return await demo.until(f"{n} more connections", enough, 40)

        rr = await share_over(60)
        assert rr["charlie"] > 0.25, rr
        await demo.api("PUT", "/strategy", {"name": "least-response-time"})
        await share_over(30)  # let the averages settle on the new strategy
        lrt = await share_over(120)
        assert lrt["charlie"] < 0.15, lrt
    finally:
        await demo.stop()
    demo.assert_clean_exit()


def test_demo_names_a_taken_port_and_exits_nonzero():
    """
    A demo port that is already taken is named in the error, and the demo
    exits non-zero without starting.
    """
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        for flags, needle in (
            (["--demo-ports", f"0,{port},0", "--listen", f"tcp:{free_port()}", "--admin", f"tcp:{free_port()}:interface=127.0.0.1"],
             f"demo backend bravo: cannot listen on 127.0.0.1:{port}"),
            (["--listen", f"tcp:{port}:interface=127.0.0.1", "--admin", f"tcp:{free_port()}:interface=127.0.0.1"],
             f"--listen port {port} on 127.0.0.1 is not available"),
        ):
            result = subprocess.run(
                [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "lbproxy-demo", *flags],
                capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
            )
            assert result.returncode != 0
            assert needle in result.stdout + result.stderr, result.stdout + result.stderr
