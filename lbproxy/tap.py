"""
C{twistd lbproxy}: command-line options and the service tree.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from lbproxy.config import (
    Config,
    ConfigError,
    ProxySettings,
    StrategyChoice,
    freeze,
    parse_backend,
    parse_backend_spec,
    check_unique,
)


def _check_endpoint(description: str, flag: str) -> str:
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:
        raise usage.UsageError(f"{flag} {description!r} is not a valid endpoint: {e}") from None
    return description


def _number(value: str, flag: str, cast: Any = float, low: float = 0) -> Any:
    try:
        n = cast(value)
    except ValueError:
        raise usage.UsageError(f"{flag} must be a number, not {value!r}") from None
    if n < low:
        raise usage.UsageError(f"{flag} must be at least {low}, not {value!r}")
    return n


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A TCP load balancer: accepts clients on --listen and relays each to a "
        "backend chosen by the active strategy.  The admin API and web UI "
        "listen on --admin."
    )
    optParameters = [
        ["listen", "l", "tcp:8080", "Endpoint for clients (Twisted endpoint syntax)."],
        ["admin", "a", "tcp:8081:interface=127.0.0.1", "Endpoint for the admin API and UI."],
        ["strategy", "s", None, "Strategy plugin name (default round-robin)."],
        ["strategy-options", None, None, "Strategy options as a JSON object."],
        ["state-dir", "d", None, "Directory of the durable config store."],
        ["connect-timeout", None, "3", "Seconds to wait for a backend connect."],
        ["retries", None, "2", "Other backends to try after a failed connect."],
        ["idle-timeout", None, "300", "Close connections idle this many seconds (0: never)."],
        ["max-connections", None, "10000", "Client connections at once; more are closed."],
    ]
    optFlags = [
        ["no-access-log", None, "Do not log one line per finished connection."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["backends"] = []

    def opt_backend(self, value: str) -> None:
        """
        A backend, HOST:PORT[,weight=N][,proxy=v1|v2][,maxconn=N]; repeatable.
        """
        try:
            self["backends"].append(parse_backend_spec(value))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    opt_b = opt_backend

    def postOptions(self) -> None:
        import json

        from lbproxy.plugins import build_strategy, strategy_factories

        _check_endpoint(self["listen"], "--listen")
        _check_endpoint(self["admin"], "--admin")
        self["settings"] = ProxySettings(
            connect_timeout=_number(self["connect-timeout"], "--connect-timeout", float, 0.001),
            retries=_number(self["retries"], "--retries", int, 0),
            idle_timeout=_number(self["idle-timeout"], "--idle-timeout", float, 0),
            max_connections=_number(self["max-connections"], "--max-connections", int, 1),
            access_log=not self["no-access-log"],
        )
        options: dict[str, Any] = {}
        if self["strategy-options"]:
            try:
                options = json.loads(self["strategy-options"])
            except ValueError as e:
                raise usage.UsageError(f"--strategy-options is not valid JSON: {e}") from None
            if not isinstance(options, dict):
                raise usage.UsageError("--strategy-options must be a JSON object")
        choice = StrategyChoice(self["strategy"] or "round-robin", freeze(options))
        self["factories"] = strategy_factories()
        try:
            build_strategy(choice, self["factories"])
            backends = tuple(
                parse_backend(spec, f"--backend {i + 1}", backend_id=f"b{i + 1}")
                for i, spec in enumerate(self["backends"])
            )
            check_unique(backends)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self["seed"] = Config(version=1, backends=backends, strategy=choice)


class _BalancerService(Service):
    """
    Runs the balancer's housekeeping (idle timeouts, slow start) while the
    application runs.
    """

    def __init__(self, balancer: Any) -> None:
        self.balancer = balancer

    def startService(self) -> None:
        super().startService()
        self.balancer.start()

    def stopService(self) -> Any:
        self.balancer.stop()
        return super().stopService()


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """
    Build lbproxy's service tree under one L{MultiService}: housekeeping,
    the proxy listener, the admin site, health checks.
    """
    if reactor is None:
        from twisted.internet import reactor
    from lbproxy.balancer import Balancer
    from lbproxy.control import ConfigController
    from lbproxy.store.memory import MemoryStore

    # -- config store and initial config (durable store: lbproxy/store/)
    config = options["seed"]
    store = MemoryStore(config)

    # -- the policy core
    balancer = Balancer(config, options["factories"], options["settings"], reactor=reactor)
    controller = ConfigController(balancer, store)
    top = MultiService()
    top.balancer = balancer
    top.controller = controller
    _BalancerService(balancer).setServiceParent(top)

    # -- the proxy listener (relay engines: lbproxy/proxy.py)
    _proxy_service(options, balancer, reactor).setServiceParent(top)

    # -- the admin site (lbproxy/web/)

    # -- active health checks (lbproxy/health.py)

    return top


def _proxy_service(options: Options, balancer: Any, reactor: Any) -> Service:
    from lbproxy.proxy import ProxyFactory

    service = StreamServerEndpointService(
        serverFromString(reactor, options["listen"]), ProxyFactory(balancer, reactor)
    )
    service._raiseSynchronously = True
    service.setName("proxy")
    return service
