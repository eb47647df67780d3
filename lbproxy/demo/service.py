"""
The demo beside lbproxy: start the demo backends before the pool is built
(so their ports are known), seed the pool with them, and run the simulated
users once the proxy listens.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lbproxy.demo.backend import DemoBackend
from lbproxy.demo.users import UserPopulation
from lbproxy.model.checks import DEFAULT_HEALTH_CHECK, HealthCheck, Outlier
from lbproxy.model.config import Backend, Config

log = Logger()

#: Name and response delay (seconds) of each demo backend, in order.
#: Different delays make least-response-time visibly differ from
#: round-robin.
DEMO_BACKENDS = (("alpha", 0.02), ("bravo", 0.05), ("charlie", 0.25))
#: Longest response delay the demo API accepts.
MAX_DELAY = 10.0

#: Fast checks so an offline backend turns red within a second or two.
DEMO_HEALTH_CHECK = HealthCheck(type="http", interval=0.5, timeout=0.4, rise=2, fall=2, path="/health")
DEMO_OUTLIER = Outlier(consecutive_failures=3, base_ejection=2.0, max_ejection=10.0, max_ejection_percent=67)


class DemoError(Exception):
    """
    The demo cannot start (a port is taken) or a demo request is invalid.
    """


class Demo:
    """
    The demo's moving parts: named backends and the user population.

    @ivar backends: L{DemoBackend}s by name, in start order.
    @ivar users: the L{UserPopulation}, once the proxy listens.
    """

    def __init__(self, ports: list[int], users: int = 20, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if len(ports) > len(DEMO_BACKENDS):
            raise DemoError(f"the demo has at most {len(DEMO_BACKENDS)} backends")
        self.reactor = reactor
        self.initial_users = users
        self.backends: dict[str, DemoBackend] = {}
        for (name, delay), port in zip(DEMO_BACKENDS, ports):
            self.backends[name] = DemoBackend(name, port, delay, reactor=reactor)
        self.users: UserPopulation | None = None
        self.on_change: Callable[[], None] = lambda: None

    def listen(self) -> None:
        """
        Open every backend's listener now.

        @raise DemoError: naming the backend and port that is taken.
        """
        for backend in self.backends.values():
            try:
                backend.go_online()
            except CannotListenError as e:
                self.close()
                raise DemoError(
                    f"demo backend {backend.name}: cannot listen on 127.0.0.1:{backend.port} "
                    f"({e.socketError})"
                ) from None

    def close(self) -> defer.Deferred:
        return defer.gatherResults(
            [b.go_offline() for b in self.backends.values()], consumeErrors=True
        )

    def seed(self, config: Config) -> Config:
        """
        The pool to start with: the demo backends (plus any given on the
        command line), fast health checks, short ejections.
        """
        demo = tuple(
            Backend(id=b.name, host=b.interface, port=b.port, weight=1)
            for b in self.backends.values()
        )
        return replace(
            config,
            backends=demo + config.backends,
            # The demo's backends answer HTTP: its own check unless one was asked for.
            health_check=DEMO_HEALTH_CHECK if config.health_check in (None, DEFAULT_HEALTH_CHECK) else config.health_check,
            outlier=DEMO_OUTLIER,
        )

    def start_users(self, host: str, port: int) -> None:
        self.users = UserPopulation(
            host, port, self.initial_users, reactor=self.reactor, on_change=self._changed
        )
        self.users.start()

    def _changed(self) -> None:
        self.on_change()

    def set_backend(self, name: str, body: Any) -> defer.Deferred:
        """
        Change a demo backend: C{{"online": bool, "delay": seconds}}, either
        or both.

        @raise KeyError: for an unknown name.
        @raise DemoError: for an invalid body; nothing is changed then.
        """
        backend = self.backends[name]
        if not isinstance(body, dict) or not body:
            raise DemoError('body must be a JSON object with "online" and/or "delay"')
        extra = sorted(set(body) - {"online", "delay"})
        if extra:
            raise DemoError(f"unknown field(s) {', '.join(map(repr, extra))}; use online, delay")
        online = body.get("online")
        if "online" in body and not isinstance(online, bool):
            raise DemoError(f"online must be true or false, not {online!r}")
        delay = body.get("delay")
        if "delay" in body:
            if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_DELAY:
                raise DemoError(f"delay must be a number of seconds from 0 to {MAX_DELAY:g}, not {delay!r}")
            backend.delay = float(delay)
        d: defer.Deferred = defer.succeed(None)
        if online is True and not backend.online:
            try:
                backend.go_online()
            except CannotListenError as e:
                raise DemoError(f"cannot reopen port {backend.port}: {e.socketError}") from None
            log.info("demo backend {name} is online on port {port}", name=name, port=backend.port)
        elif online is False and backend.online:
            d = backend.go_offline()
            log.info("demo backend {name} is offline: port {port} closed", name=name, port=backend.port)
        self.on_change()
        return d.addCallback(lambda _: backend.to_json())

    def set_users(self, body: Any) -> dict[str, Any]:
        """
        @raise DemoError: unless the body is C{{"count": N}} with N in range.
        """
        if not isinstance(body, dict) or set(body) != {"count"}:
            raise DemoError('body must be {"count": N}')
        if self.users is None:
            raise DemoError("the simulated users have not started yet")
        try:
            self.users.set_count(body["count"])
        except ValueError as e:
            raise DemoError(str(e)) from None
        return self.users.to_json()

    def to_json(self) -> dict[str, Any]:
        return {
            "backends": [b.to_json() for b in self.backends.values()],
            "users": self.users.to_json() if self.users else None,
            "max_delay": MAX_DELAY,
        }

    def event(self) -> dict[str, Any]:
        """
        The demo's state for the live feed, compact: users as
        C{[id, online, status, backend]}.
        """
        data = self.to_json()
        users = data["users"]
        if users is not None:
            users["users"] = [
                [u["id"], u["online"], u["status"], u["backend"]] for u in users["users"]
            ]
        return data


class DemoService(Service):
    """
    Runs the demo while lbproxy runs: users start once the proxy listens,
    the demo API is mounted on the admin site, the demo's state goes out on
    the event feed twice a second, and on stop users and backends go away.

    @ivar assembly: lbproxy's parts (L{lbproxy.startup.assembly.Assembly}); this
        service starts after them.
    """

    def __init__(self, demo: Demo, assembly: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.demo = demo
        self.assembly = assembly
        self._reactor = reactor
        self._ticker: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        admin = self.assembly.admin
        from lbproxy.demo.api import DemoAPI

        try:
            admin.add_extension("demo", DemoAPI(self.demo))
        except ValueError:
            pass  # mounted by an earlier start of this service
        else:
            # The UI looks here to know whether to show its demo panel.
            admin.add_status_provider(lambda: {"demo": {"api": "/api/v1/demo"}})
        proxy = listening_address(self.assembly.proxy)
        if proxy is None:
            log.error("demo users cannot start: the proxy does not listen on TCP")
        else:
            self.demo.start_users(*proxy)
        where = listening_address(self.assembly.admin_listener)
        if where is not None:
            self._announce(where, proxy)
        self._ticker = LoopingCall(self.publish)
        self._ticker.clock = self._reactor
        self._ticker.start(0.5, now=False)

    def _announce(self, address: tuple[str, int], proxy: tuple[str, int] | None) -> None:
        def shown(host: str) -> str:
            return f"[{host}]" if ":" in host else host

        host, port = address
        lines = [
            "",
            "  lbproxy demo is running",
            f"  open the dashboard:  http://{shown(host)}:{port}/",
        ]
        if proxy is not None:
            lines.append(f"  the proxy listens:   {shown(proxy[0])}:{proxy[1]}"
                         f"  (try: curl http://{shown(proxy[0])}:{proxy[1]}/)")
        token = getattr(getattr(self.assembly.admin, "policy", None), "token", None)
        if token:
            lines.append("  admin token:         the one in --admin-token-file (the page asks for it)")
        lines += [
            "  demo backends:       " + ", ".join(
                f"{b.name} :{b.port}" for b in self.demo.backends.values()
            ),
            "  stop with Ctrl-C",
            "",
        ]
        print("\n".join(lines), file=sys.__stdout__, flush=True)
        log.info("demo dashboard at http://{host}:{port}/", host=shown(host), port=port)

    def publish(self) -> None:
        events = self.assembly.balancer.events
        if events.subscriber_count:
            events.publish("demo", self.demo.event())

    def stopService(self) -> Any:
        super().stopService()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self.demo.users is not None:
            self.demo.users.stop()
        return self.demo.close()


def listening_address(service: Any) -> tuple[str, int] | None:
    """
    Where a started listener of lbproxy (the proxy or the admin site)
    accepts connections, on loopback for a wildcard address; C{None} if it
    is not a TCP listener.
    """
    address = getattr(service, "address", None)
    if address is not None:
        return address()
    port = getattr(service, "port", None)  # the worker pool
    if isinstance(port, int):
        host = getattr(service, "host", "127.0.0.1")
        return ("::1" if host == "::" else "127.0.0.1" if host == "0.0.0.0" else host), port
    return None


# Checks and start, for lbproxy.demo.tap -------------------------------------


def check_demo_options(users: Any, ports: Any, state_dir: str | None = None) -> tuple[int, tuple[int, ...]]:
    """
    Check C{--demo-users} and C{--demo-ports}.

    @return: C{(users, ports)}, parsed.
    @raise twisted.python.usage.UsageError: for bad values.
    """
    from twisted.python import usage

    from lbproxy.demo.users import MAX_USERS

    try:
        n = int(users)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--demo-users must be a number, not {users!r}") from None
    if not 0 <= n <= MAX_USERS:
        raise usage.UsageError(f"--demo-users must be from 0 to {MAX_USERS}, not {n}")
    parsed = []
    for part in str(ports).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) > 65535:
            raise usage.UsageError(f"--demo-ports must be port numbers separated by commas, not {ports!r}")
        parsed.append(int(part))
    if not 1 <= len(parsed) <= len(DEMO_BACKENDS):
        raise usage.UsageError(f"--demo-ports must list 1 to {len(DEMO_BACKENDS)} ports, not {len(parsed)}")
    fixed = [p for p in parsed if p]
    if len(set(fixed)) != len(fixed):
        raise usage.UsageError(f"--demo-ports lists a port twice: {ports!r}")
    if state_dir and len(fixed) != len(parsed):
        raise usage.UsageError(
            "--demo with --state-dir needs fixed --demo-ports (like 9001,9002,9003): "
            "the stored pool must find the demo backends on the same ports next time"
        )
    return n, tuple(parsed)


def port_taken(endpoint: Any) -> str | None:
    """
    Whether a TCP endpoint's fixed port is in use, so the demo can name it
    before it starts anything (a first-time user may well have something
    on 8080 already).

    @param endpoint: an L{lbproxy.listening.endpoints.Endpoint}.
    @return: a message naming the port, or C{None} if it is free or the
        endpoint is of another kind.
    """
    from lbproxy.listening.endpoints import bound_socket

    if not endpoint.tcp or endpoint.port == 0:
        return None
    try:
        bound_socket(endpoint.host, endpoint.port).close()
    except OSError as e:
        return f"port {endpoint.port} on {endpoint.host} is not available: {e.strerror or e}"
    return None


def start_demo_backends(spec: Any, reactor: Any) -> Demo:
    """
    Open the demo backends' listeners (after checking that lbproxy's own
    ports are free).

    @param spec: a L{lbproxy.demo.tap.DemoSpec}.
    @raise SystemExit: naming the port, if one is taken.
    """
    for flag, endpoint in (("listen", spec.proxy.listen), ("admin", spec.proxy.admin)):
        problem = port_taken(endpoint)
        if problem:
            raise SystemExit(f"lbproxy: cannot start the demo: --{flag} {problem}")
    demo = Demo(list(spec.ports), spec.users, reactor=reactor)
    try:
        demo.listen()
    except DemoError as e:
        raise SystemExit(f"lbproxy: cannot start the demo: {e}") from None
    return demo
