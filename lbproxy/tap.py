"""
C{twistd lbproxy}: command-line options and the service tree.

Command line and stored config: with C{--state-dir}, changes made through
the API are stored there and survive restarts.  C{--backend} and
C{--strategy} (with C{--strategy-options}) seed an empty store: they are the
config until the first change, which stores them together with it.  Once the
store holds a config, that config wins and those flags are ignored with a
warning.  Without C{--state-dir} the config lives in memory only, and the log
says so.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from lbproxy.model.config import (
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


def _state_dir(path: str) -> str:
    import os

    if not path:
        raise usage.UsageError("--state-dir must name a directory")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise usage.UsageError(f"--state-dir {path!r} cannot be used: {e.strerror or e}") from None
    return os.path.abspath(path)


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
        ["state-dir", "d", None,
         "Directory of the durable config store (created if missing).  An empty "
         "store is seeded from --backend/--strategy; a stored config wins over "
         "them (they are then ignored with a warning).  Without it, API changes "
         "are lost on restart."],
        ["store", None, None,
         "Cluster mode: keep the config in etcd, etcd:http://HOST:PORT[,http://HOST:PORT...]; "
         "every node with the same --store and --store-prefix shares one config."],
        ["store-prefix", None, "/lbproxy/default", "With --store: the etcd key prefix of this cluster."],
        ["node-name", None, None, "This node's name in the cluster (default HOSTNAME-ADMINPORT)."],
        ["connect-timeout", None, "3", "Seconds to wait for a backend connect."],
        ["retries", None, "2", "Other backends to try after a failed connect."],
        ["idle-timeout", None, "300", "Close connections idle this many seconds (0: never)."],
        ["max-connections", None, "10000", "Client connections at once; more are closed."],
        ["engine", None, "auto",
         "Relay engine: fast (Linux epoll relay, plain tcp listen endpoints), "
         "twisted (portable transports), or auto (fast where it can run)."],
        ["workers", None, "1",
         "Relay worker processes sharing the listen port (SO_REUSEPORT, Linux, "
         "plain tcp listen endpoint); this process serves the admin API for all."],
        ["check", None, None, "Active health check of every backend: tcp, http or send-expect (default: none)."],
        ["check-interval", None, None, "Seconds between two checks of a backend (default 2)."],
        ["check-timeout", None, None, "Seconds a check may take, at most the interval (default 1)."],
        ["rise", None, None, "Passed checks in a row that bring a down backend up (default 2)."],
        ["fall", None, None, "Failed checks in a row that take an up backend down (default 3)."],
        ["check-path", None, None, "HTTP check: the path to GET (default /)."],
        ["check-status", None, None, "HTTP check: expected status or range (default 200-399)."],
        ["check-send", None, None, "send-expect check: what to send (backslash escapes like \\r\\n)."],
        ["check-expect", None, None, "send-expect check: what must appear in the answer."],
        ["outlier-failures", None, None, "Connect failures or resets in a row from real traffic that eject a backend (default 5; 0: never)."],
        ["outlier-ejection", None, None, "Seconds of a first ejection; each repeat adds as much (default 30)."],
        ["outlier-max-ejection", None, None, "Longest ejection in seconds (default 300)."],
        ["outlier-max-percent", None, None, "Never eject more than this percentage of the pool (default 50)."],
        ["slow-start", None, None, "Seconds over which a new or recovered backend ramps from 10% to full weight (default 0: off)."],
        ["drain-timeout", None, None, "Seconds after which connections still open to a draining backend are closed (default: none)."],
        ["admin-token-file", None, None,
         "File holding the admin API token: changes then need 'Authorization: Bearer <token>', "
         "and so do reads unless --admin-open-reads.  Required when --admin is not loopback-only."],
        ["admin-max-connections", None, "256",
         "Admin connections open at once (event feed streams included); more are closed as they "
         "are accepted, so the admin can never take the relay's file descriptors."],
        ["admin-read-timeout", None, "10",
         "Seconds a client has to send one whole admin request (headers and body); a slower "
         "one gets 408 and is disconnected."],
        ["admin-write-rate", None, "20",
         "Changes per second the admin API accepts, with bursts of twice as many; past that it "
         "answers 429 with Retry-After (0: no limit)."],
        ["demo-users", None, "20", "With --demo: how many simulated users are online at first."],
        ["demo-ports", None, "0,0,0", "With --demo: ports of the demo backends (0: any free port)."],
    ]
    optFlags = [
        ["no-access-log", None, "Do not log one line per finished connection."],
        ["admin-open-reads", None, "With --admin-token-file: let reads of the admin API through without the token."],
        ["demo", None, "Also run demo backends and simulated users; the pool starts with the demo backends."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["backends"] = []
        self["admin-hosts"] = []

    def opt_admin_host(self, value: str) -> None:
        """
        A name the admin API and UI answer for besides its address and localhost (exactly this name, any port; repeatable); any other Host gets 421, which stops DNS rebinding.
        """
        import re

        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?", value):
            raise usage.UsageError(f"--admin-host must be a host name without a port, not {value!r}")
        self["admin-hosts"].append(value.lower())

    def opt_backend(self, value: str) -> None:
        """
        A backend, HOST:PORT[,weight=N][,proxy=v1|v2][,maxconn=N]; repeatable.
        """
        try:
            self["backends"].append(parse_backend_spec(value))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    opt_b = opt_backend

    def _check_admin_access(self) -> None:
        from lbproxy.web.auth import loopback_only, read_token_file

        self["admin-token"] = None
        if self["admin-token-file"]:
            try:
                self["admin-token"] = read_token_file(self["admin-token-file"])
            except ValueError as e:
                raise usage.UsageError(f"--admin-token-file: {e}") from None
        elif not loopback_only(self["admin"]):
            raise usage.UsageError(
                f"--admin {self['admin']!r} is reachable from other hosts; give --admin-token-file "
                "so that only holders of the token can change the pool (or bind to 127.0.0.1)"
            )
        if self["admin-open-reads"] and not self["admin-token"]:
            raise usage.UsageError("--admin-open-reads only makes sense with --admin-token-file")
        self["admin-max-connections"] = _number(self["admin-max-connections"], "--admin-max-connections", int, 1)
        self["admin-read-timeout"] = _number(self["admin-read-timeout"], "--admin-read-timeout", float, 0.1)
        self["admin-write-rate"] = _number(self["admin-write-rate"], "--admin-write-rate", float, 0)

    def postOptions(self) -> None:
        import json

        from lbproxy.policy.plugins import build_strategy, strategy_factories

        _check_endpoint(self["listen"], "--listen")
        _check_endpoint(self["admin"], "--admin")
        _check_engine(self)
        self._check_admin_access()
        if self["demo"]:
            from lbproxy.demo.service import check_demo_options

            check_demo_options(self)
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
        from lbproxy.health.checker import settings_from_options

        self["seed"] = Config(
            version=1, backends=backends, strategy=choice, **settings_from_options(self)
        )
        if self["state-dir"] is not None:
            self["state-dir"] = _state_dir(self["state-dir"])
        _check_cluster(self)


class LBProxyService(MultiService):
    """
    The root of lbproxy's service tree.  A listener that cannot bind (a port
    taken, an address not on this host) stops twistd with one line naming
    it and a non-zero exit, not a traceback.
    """

    listen = "?"

    def privilegedStartService(self) -> None:
        self._reporting_bind_errors(super().privilegedStartService)

    def startService(self) -> None:
        self._reporting_bind_errors(super().startService)

    def _reporting_bind_errors(self, start: Any) -> None:
        from twisted.internet.error import CannotListenError

        try:
            start()
        except CannotListenError as e:
            where = f"{e.interface or '*'}:{e.port}"
            raise SystemExit(f"lbproxy: cannot listen on {where}: {e.socketError}") from None
        except OSError as e:
            # The fast engine and the workers bind their own sockets.
            raise SystemExit(
                f"lbproxy: cannot listen on --listen {self.listen}: {e.strerror or e}"
            ) from None


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
    from lbproxy.policy.balancer import Balancer
    from lbproxy.control.controller import ConfigController

    # -- the demo's backends listen first, so the seed config has their ports
    demo = None
    if options.get("demo"):
        from lbproxy.demo.service import start_demo_backends

        demo = start_demo_backends(options, reactor)

    # -- config store and initial config (durable store: lbproxy/control/store/)
    if options.get("etcd-endpoints"):
        store, config = _etcd_store(options, reactor), options["seed"]
    else:
        store, config = _open_store(options, reactor)

    # -- the policy core
    balancer = Balancer(config, options["factories"], options["settings"], reactor=reactor)
    controller = ConfigController(balancer, store)
    top = LBProxyService()
    top.listen = options["listen"]
    top.balancer = balancer
    top.controller = controller
    _BalancerService(balancer).setServiceParent(top)

    # -- the proxy listener (relay engines: lbproxy/relay/twisted_engine.py); in cluster
    # mode it starts only once the config came from etcd (lbproxy/control/cluster.py)
    listening = _cluster_gate(options, top, store, reactor) if options.get("etcd-endpoints") else top
    _proxy_service(options, balancer, reactor).setServiceParent(listening)

    # -- the demo's simulated users (lbproxy/demo/)
    if demo is not None:
        from lbproxy.demo.service import demo_service

        demo_service(demo, top, reactor).setServiceParent(top)

    # -- the admin site (lbproxy/web/)
    from lbproxy.web import admin_service

    admin = admin_service(options, top, reactor)
    if getattr(top, "membership", None) is not None:
        from lbproxy.control.cluster import mount_admin

        mount_admin(admin, top.membership, options["admin"], top.getServiceNamed("admin"))

    # -- active health checks (lbproxy/health/checker.py)
    _health_service(balancer, reactor).setServiceParent(top)

    return top


def _open_store(options: Options, reactor: Any) -> tuple[Any, Config]:
    """
    Open the store and pick the initial config; a store that cannot be used
    stops twistd with a one-line reason, not a traceback.
    """
    from lbproxy.model.config import StoreError
    from lbproxy.policy.plugins import build_strategy
    from lbproxy.control.store import open_store

    flags = [
        flag
        for flag, given in (
            ("--backend", options["backends"]),
            ("--strategy", options["strategy"]),
            ("--strategy-options", options["strategy-options"]),
        )
        if given
    ]
    try:
        store, config = open_store(options["state-dir"], options["seed"], flags, reactor)
    except StoreError as e:
        raise SystemExit(f"lbproxy: cannot start: {e}") from None
    try:
        build_strategy(config.strategy, options["factories"])
    except ConfigError as e:
        raise SystemExit(
            f"lbproxy: cannot start: the stored config in {options['state-dir']} cannot be used: {e}"
        ) from None
    return store, config


def _check_cluster(options: Options) -> None:
    """
    Check C{--store}, C{--store-prefix} and C{--node-name}.
    """
    import re

    from lbproxy.control.store.etcd import parse_prefix, parse_store_spec

    options["etcd-endpoints"] = None
    if options["store"] is not None:
        if options["state-dir"] is not None:
            raise usage.UsageError("--store and --state-dir exclude each other: the config lives in one place")
        try:
            options["etcd-endpoints"] = parse_store_spec(options["store"])
            options["store-prefix"] = parse_prefix(options["store-prefix"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
    name = options["node-name"]
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise usage.UsageError(
            f"--node-name must be 1-64 letters, digits, '.', '_' or '-', not {name!r}"
        )
    if name is None and options["store"] is not None:
        from lbproxy.control.cluster import default_node_name

        name = default_node_name(options["admin"])
    options["node"] = name


def _etcd_store(options: Options, reactor: Any) -> Any:
    from lbproxy.control.store.etcd import EtcdStore

    return EtcdStore(options["etcd-endpoints"], options["store-prefix"], reactor=reactor)


def _cluster_gate(options: Options, top: MultiService, store: Any, reactor: Any) -> MultiService:
    """
    The service that loads the config from etcd (retrying while it is
    unreachable), then starts the proxy listener and registers this node.
    """
    from lbproxy.control.cluster import LoadThenServe, Membership, admin_url

    gate = LoadThenServe(store, top.balancer, options["seed"], reactor=reactor)
    gate.setName("cluster")
    gate.setServiceParent(top)
    top.membership = Membership(store, options["node"], admin_url(options["admin"]), reactor=reactor)
    top.membership.setServiceParent(gate)
    top.store = store
    return gate


def _health_service(balancer: Any, reactor: Any) -> Service:
    from lbproxy.health.checker import HealthChecker

    return HealthChecker(balancer, reactor)


def _check_engine(options: Options) -> None:
    """
    Resolve C{--engine auto} and check C{--engine}/C{--workers} against the
    platform and the listen endpoint.
    """
    from lbproxy.relay.fast_engine import available, parse_tcp_endpoint

    engine = options["engine"]
    if engine not in ("auto", "fast", "twisted"):
        raise usage.UsageError(f"--engine must be auto, fast or twisted, not {engine!r}")
    workers = options["workers"] = _number(options["workers"], "--workers", int, 1)
    tcp = parse_tcp_endpoint(options["listen"])
    if engine != "twisted" and (tcp is None or not available()):
        if engine == "fast":
            raise usage.UsageError(
                "--engine fast needs Linux and a plain tcp: --listen endpoint"
            )
        engine = "twisted"
    elif engine == "auto":
        engine = "fast"
    options["engine"] = engine
    if workers > 1 and (tcp is None or not hasattr(__import__("socket"), "SO_REUSEPORT")):
        raise usage.UsageError("--workers above 1 needs SO_REUSEPORT and a plain tcp: --listen endpoint")
    options["listen-tcp"] = tcp


def _proxy_service(options: Options, balancer: Any, reactor: Any) -> Service:
    from lbproxy.relay.twisted_engine import ProxyFactory

    if options.get("workers", 1) > 1:
        from lbproxy.control.workers import WorkerPool

        pool = WorkerPool(options, balancer, reactor)
        pool.setName("proxy")
        return pool
    if options.get("engine") == "fast":
        from lbproxy.relay.fast_engine import FastRelayService

        host, port, backlog = options["listen-tcp"]
        fast = FastRelayService(balancer, host, port, backlog, reactor=reactor)
        fast.setName("proxy")
        return fast
    service = StreamServerEndpointService(
        serverFromString(reactor, options["listen"]), ProxyFactory(balancer, reactor)
    )
    service._raiseSynchronously = True
    service.setName("proxy")
    return service
