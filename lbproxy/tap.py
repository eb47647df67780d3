"""
C{twistd lbproxy}: command-line options -> a frozen L{ProxySpec} -> the
service tree (L{lbproxy.assembly}).

Command line and stored config: with C{--state-dir}, changes made through
the API are stored there and survive restarts.  C{--backend} and
C{--strategy} (with C{--strategy-options}) seed an empty store: they are the
config until the first change, which stores them together with it.  Once the
store holds a config, that config wins and those flags are ignored with a
warning.  Without C{--state-dir} the config lives in memory only, and the log
says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.python import usage

from lbproxy.endpoints import Endpoint, default_backlog, parse_endpoint
from lbproxy.model.config import Config, ProxySettings, StrategyChoice, freeze
from lbproxy.model.errors import ConfigError
from lbproxy.model.parse import check_unique, parse_backend, parse_backend_spec

#: C{--max-connections} when not given (fewer if the descriptor limit is lower).
DEFAULT_MAX_CONNECTIONS = 10000


def flag(name: str, parse: Callable[[Any, str], Any] = lambda value, flag: value, default: Any = None) -> Any:
    """
    A L{ProxySpec} field read from C{--name}: C{parse(value, "--name")}
    (not called when the flag is absent, which gives C{default}).  Adding an
    option is its C{optParameters} line and one such field.
    """
    return field(default=default, metadata={"flag": name, "parse": parse})


def _keepalive(value: str) -> Any:
    from lbproxy.relay.sockopts import parse_keepalive

    try:
        return parse_keepalive(value)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def _access(value: str, check: str) -> str:
    from lbproxy import accesslog

    try:
        return getattr(accesslog, check)(value)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def number(cast: Any = float, low: float = 0, high: float | None = None) -> Callable[[Any, str], Any]:
    """
    A C{parse} for L{flag}: a number of type C{cast}, at least C{low} (and
    at most C{high}).
    """

    def parse(value: Any, flag: str) -> Any:
        try:
            n = cast(value)
        except (TypeError, ValueError):
            raise usage.UsageError(f"{flag} must be a number, not {value!r}") from None
        if n < low:
            raise usage.UsageError(f"{flag} must be at least {low}, not {value!r}")
        if high is not None and n > high:
            raise usage.UsageError(f"{flag} must be at most {high}, not {value!r}")
        return n

    return parse


def _dns_servers(value: str) -> list[tuple[str, int]]:
    servers = []
    for item in value.split(","):
        host, _, port = item.strip().rpartition(":")
        try:
            n = int(port)
            if not host or not 0 < n < 65536:
                raise ValueError
        except ValueError:
            raise usage.UsageError(f"--dns-server {item.strip()!r} is not HOST:PORT") from None
        servers.append((host.strip("[]"), n))
    return servers


@dataclass(frozen=True, kw_only=True)
class ProxySpec:
    """
    What the command line asks for, checked: the service tree is built from
    this alone (L{lbproxy.assembly.assemble}).

    @ivar listen: the proxy's endpoint.
    @ivar admin: the admin API and UI's endpoint.
    @ivar backlog: the proxy listener's accept queue (its endpoint's
        C{backlog=}, else C{--backlog}, else 4096 capped by somaxconn).
    @ivar engine: C{fast} or C{twisted} (C{auto} resolved).
    @ivar seed: the config built from the command line (version 1).
    @ivar seed_flags: the config flags given, named when a stored config wins.
    @ivar max_connections_given: whether C{--max-connections} was given
        (else it may be lowered to fit the descriptor limit).
    @ivar etcd_endpoints: cluster mode's etcd URLs, else C{None}.
    """

    listen: Endpoint
    #: every C{--listen}, the first being L{listen}.
    listens: tuple[Endpoint, ...] = ()
    admin: Endpoint
    backlog: int
    engine: str
    workers: int
    settings: ProxySettings
    seed: Config
    seed_flags: tuple[str, ...] = ()
    #: the services of C{--config FILE}, which replace L{seed}.
    services: Any = None
    max_connections_given: bool = False
    state_dir: str | None = None
    etcd_endpoints: tuple[str, ...] | None = None
    store_prefix: str = "/lbproxy/default"
    node: str | None = None
    admin_token: str | None = None
    #: who the config history says made a change with the token (the token file's second line).
    admin_token_label: str | None = None
    admin_open_reads: bool = flag("admin-open-reads", lambda v, f: bool(v), default=False)
    #: names the admin answers for besides its address and localhost (--admin-host).
    admin_hosts: tuple[str, ...] = ()
    admin_max_connections: int = flag("admin-max-connections", number(int, 1), default=256)
    admin_read_timeout: float = flag("admin-read-timeout", number(float, 0.1), default=10.0)
    admin_write_rate: float = flag("admin-write-rate", number(float, 0), default=20.0)
    dns_servers: tuple[tuple[str, int], ...] | None = flag("dns-server", lambda v, f: tuple(_dns_servers(v)))
    dns_refresh: float = flag("dns-refresh", lambda v, f: number(float, 0.1)(v, f), default=30.0)
    grace: float = flag("grace", number(float, 0), default=30.0)
    grace_spread: float = flag("grace-spread", number(float, 0), default=5.0)
    control_socket: str | None = flag("control-socket", lambda v, f: os.path.abspath(v))
    takeover: bool = flag("takeover", lambda v, f: bool(v), default=False)
    pid_file: str | None = flag("pid-file", lambda v, f: os.path.abspath(v))
    access_log: str = flag("access-log", lambda v, f: _access(v, "parse_destination"), default="-")
    access_log_format: str = flag("access-log-format", lambda v, f: _access(v, "parse_format"), default="json")
    history: int = flag("history", number(int, 1, 100000), default=100)

    @property
    def seed_document(self) -> Any:
        """
        The document the command line seeds an empty store with: the
        C{--config} file's services, else the flags' one service, C{default}.
        """
        from lbproxy.model.service import Document

        if self.services is not None:
            return self.services
        return Document(self.seed.version, (self.seed,))


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A TCP load balancer: accepts clients on --listen and relays each to a "
        "backend chosen by the active strategy.  The admin API and web UI "
        "listen on --admin."
    )
    optParameters = [
        ["config", "c", None,
         "A TOML file of services ([services.NAME] tables: listen, backends, strategy, ...); "
         "it seeds an empty store, as --backend/--strategy do for one service."],
        ["admin", "a", "tcp:8081:interface=127.0.0.1", "Endpoint for the admin API and UI."],
        ["backlog", None, None,
         "Accept queue of the proxy listener (default 4096, capped by net.core.somaxconn); "
         "a backlog= in --listen wins."],
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
        ["max-connections", None, None,
         "Client connections at once; more are closed (default 10000, fewer if the "
         "open-files limit cannot hold them; given, it must fit or lbproxy will not start)."],
        ["tcp-keepalive", None, "60,10,6",
         "TCP keepalive on both sides of relayed connections: IDLE,INTERVAL,COUNT "
         "(seconds, seconds, probes), or off."],
        ["engine", None, "auto",
         "Relay engine: fast (Linux epoll relay, plain tcp listen endpoints), "
         "twisted (portable transports), or auto (fast where it can run)."],
        ["workers", None, "1",
         "Relay worker processes sharing the listen port (SO_REUSEPORT, Linux, "
         "plain tcp listen endpoint); this process serves the admin API for all."],
        ["check", None, None,
         "Active health check of every backend: tcp, http, send-expect, or none to turn checks off "
         "(default tcp: a connect every second, so a dead backend is down within about 2 s and "
         "back up about 2 s after it answers again)."],
        ["check-interval", None, None, "Seconds between two checks of a backend (default 1)."],
        ["check-timeout", None, None, "Seconds a check may take, at most the interval (default 1)."],
        ["rise", None, None, "Passed checks in a row that bring a down backend up (default 2)."],
        ["fall", None, None, "Failed checks in a row that take an up backend down (default 2)."],
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
        ["dns-server", None, None,
         "HOST:PORT[,HOST:PORT...] of DNS servers for backend host names (default: those of "
         "/etc/resolv.conf); the hosts file is read first either way."],
        ["dns-refresh", None, "30", "Seconds between two lookups of a backend host name."],
        ["grace", None, "30", "On SIGTERM: seconds open connections may go on before they are closed."],
        ["grace-spread", None, "5", "Seconds over which connections left after --grace are closed."],
        ["control-socket", None, None,
         "UNIX socket where a new lbproxy started with --takeover takes this one's listening "
         "sockets over (default STATE_DIR/control.sock with --state-dir)."],
        ["pid-file", None, None,
         "Write this process's pid here once it accepts (after a takeover too, before the old "
         "process exits: systemd's PIDFile= then follows it).  Not twistd's --pidfile."],
        ["admin-token-file", None, None,
         "File holding the admin API token: changes then need 'Authorization: Bearer <token>', "
         "and so do reads unless --admin-open-reads.  Required when --admin is not loopback-only."],
        ["admin-max-connections", None, "256",
         "Admin connections open at once (event feed streams included); more are closed as they "
         "are accepted, so the admin can never take the relay's file descriptors."],
        ["admin-read-timeout", None, "10",
         "Seconds a client has to send one whole admin request (headers and body); a slower "
         "one gets 408 and is disconnected."],
        ["access-log", None, "-",
         "Where the access log (one line per finished connection) goes: a file (reopened on "
         "SIGUSR1, for logrotate), '-' for stdout, 'syslog' for /dev/log (syslog:PATH for "
         "another socket), or 'off'."],
        ["access-log-format", None, "json", "The access log's lines: json or text."],
        ["history", None, "100", "Config versions the store keeps in its history (for rollback)."],
        ["admin-write-rate", None, "20",
         "Changes per second the admin API accepts, with bursts of twice as many; past that it "
         "answers 429 with Retry-After (0: no limit)."],
    ]
    optFlags = [
        ["no-access-log", None, "The same as --access-log off."],
        ["admin-open-reads", None, "With --admin-token-file: let reads of the admin API through without the token."],
        ["takeover", None, "Take the listening sockets over from the lbproxy on --control-socket, "
         "then let it drain (a restart or upgrade that refuses no connection)."],
        ["demo", None, "Moved: the demo is 'twistd -n lbproxy-demo' (or 'python3 dev.py run')."],
    ]

    #: The checked spec, once parsed.
    spec: ProxySpec

    def __init__(self) -> None:
        super().__init__()
        self["backends"] = []
        self["admin-hosts"] = []
        self["listens"] = []

    def opt_listen(self, value: str) -> None:
        """
        Endpoint for clients (Twisted endpoint syntax), default tcp:8080; repeatable: the service listens on each.
        """
        self["listens"].append(value)

    opt_l = opt_listen

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
        A backend, HOST:PORT[,KEY=VALUE...] with the keys weight=N, proxy=v1|v2, maxconn=N, id=NAME (default b1, b2, ... in order) and state=up|draining|disabled; repeatable.
        """
        try:
            self["backends"].append(parse_backend_spec(value))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    opt_b = opt_backend

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Under twistd, a bad flag is one line and a hint, not twistd's
        whole help; used directly (tests), it raises L{usage.UsageError}.
        """
        parent = getattr(self, "parent", None)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if parent is None:
                raise
            name = getattr(parent, "subCommand", None) or "lbproxy"
            raise SystemExit(f"{name}: {e}\nsee: twistd {name} --help") from None

    def postOptions(self) -> None:
        if self["demo"]:
            raise usage.UsageError("--demo moved: run 'twistd -n lbproxy-demo' (or 'python3 dev.py run')")
        self.spec = build_spec(self)


def _endpoint(description: str, flag: str) -> Endpoint:
    try:
        return parse_endpoint(description)
    except ValueError as e:
        raise usage.UsageError(f"{flag} {description!r} is not a valid endpoint: {e}") from None


def _state_dir(path: str | None) -> str | None:
    import os

    if path is None:
        return None
    if not path:
        raise usage.UsageError("--state-dir must name a directory")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise usage.UsageError(f"--state-dir {path!r} cannot be used: {e.strerror or e}") from None
    return os.path.abspath(path)


def _token_label(path: str | None) -> str | None:
    """
    The optional second line of the token file: a label the config history
    names as the author of changes made with the token (C{alice},
    C{deploy-bot}).
    """
    import re

    if not path:
        return None
    try:
        with open(path, "rb") as f:
            lines = f.read(4097).decode("ascii", "replace").strip().splitlines()
    except OSError:
        return None
    label = lines[1].strip() if len(lines) > 1 else ""
    if not label:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", label):
        raise usage.UsageError(
            "--admin-token-file: its second line, the token's label, must be 1-64 letters, "
            f"digits or _.@- (not {label[:70]!r})"
        )
    return label


def _admin_token(options: Options, admin: Endpoint) -> str | None:
    from lbproxy.web.auth import loopback_only, read_token_file

    token = None
    if options["admin-token-file"]:
        try:
            token = read_token_file(options["admin-token-file"])
        except ValueError as e:
            raise usage.UsageError(f"--admin-token-file: {e}") from None
    elif not loopback_only(admin.description):
        raise usage.UsageError(
            f"--admin {admin.description!r} is reachable from other hosts; give --admin-token-file "
            "so that only holders of the token can change the pool (or bind to 127.0.0.1)"
        )
    if options["admin-open-reads"] and not token:
        raise usage.UsageError("--admin-open-reads only makes sense with --admin-token-file")
    return token


def _seed(options: Options) -> Config:
    """
    Version 1 of the config, from C{--backend}, C{--strategy}, the health
    and outlier flags.
    """
    import json

    from lbproxy.health.checker import settings_from_options
    from lbproxy.policy.plugins import build_strategy, strategy_factories

    choice_options: dict[str, Any] = {}
    if options["strategy-options"]:
        try:
            choice_options = json.loads(options["strategy-options"])
        except ValueError as e:
            raise usage.UsageError(f"--strategy-options is not valid JSON: {e}") from None
        if not isinstance(choice_options, dict):
            raise usage.UsageError("--strategy-options must be a JSON object")
    choice = StrategyChoice(options["strategy"] or "round-robin", freeze(choice_options))
    try:
        build_strategy(choice, strategy_factories())
        backends = tuple(
            parse_backend(spec, f"--backend {i + 1}", backend_id=f"b{i + 1}")
            for i, spec in enumerate(options["backends"])
        )
        check_unique(backends)
    except ConfigError as e:
        raise usage.UsageError(str(e)) from None
    return Config(version=1, backends=backends, strategy=choice, **settings_from_options(options))


def _services(options: Options) -> Any:
    """
    The services of C{--config FILE}, checked, or C{None} without one.
    """
    path = options["config"]
    if path is None:
        return None
    given = [flag for flag, value in (
        ("--listen", options["listens"]), ("--backend", options["backends"]),
        ("--strategy", options["strategy"]), ("--strategy-options", options["strategy-options"]),
    ) if value]
    if given:
        raise usage.UsageError(
            f"{', '.join(given)} and --config {path} both define services: give them in the file"
        )
    from lbproxy.model.tomlfile import load_services, strategies_known
    from lbproxy.policy.plugins import strategy_factories

    try:
        document = load_services(path)
        strategies_known(document, strategy_factories(), path)
    except ConfigError as e:
        raise usage.UsageError(f"--config {e}") from None
    return document


def _engine(options: Options, listens: Any, workers: int) -> str:
    """
    Resolve C{--engine auto} and check C{--engine}/C{--workers} against the
    platform and the listen endpoint.
    """
    import socket

    from lbproxy.relay.fast_engine import available

    engine = options["engine"]
    if engine not in ("auto", "fast", "twisted"):
        raise usage.UsageError(f"--engine must be auto, fast or twisted, not {engine!r}")
    if isinstance(listens, Endpoint):
        listens = (listens,)
    listen = listens[0]
    tcp = all(e.tcp for e in listens)
    if engine != "twisted" and (not tcp or not available()):
        if engine == "fast":
            raise usage.UsageError("--engine fast needs Linux and a plain tcp: --listen endpoint")
        engine = "twisted"
    elif engine == "auto":
        engine = "fast"
    if workers > 1 and (not tcp or not hasattr(socket, "SO_REUSEPORT")):
        raise usage.UsageError("--workers above 1 needs SO_REUSEPORT and plain tcp: listen endpoints")
    return engine


def _cluster(options: Options, admin: Endpoint) -> dict[str, Any]:
    """
    Check C{--store}, C{--store-prefix} and C{--node-name}.
    """
    import re

    from lbproxy.control.store.etcd import parse_prefix, parse_store_spec

    out: dict[str, Any] = {"etcd_endpoints": None, "store_prefix": options["store-prefix"]}
    if options["store"] is not None:
        if options["state-dir"] is not None:
            raise usage.UsageError("--store and --state-dir exclude each other: the config lives in one place")
        try:
            out["etcd_endpoints"] = tuple(parse_store_spec(options["store"]))
            out["store_prefix"] = parse_prefix(options["store-prefix"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
    name = options["node-name"]
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise usage.UsageError(f"--node-name must be 1-64 letters, digits, '.', '_' or '-', not {name!r}")
    if name is None and options["store"] is not None:
        from lbproxy.control.cluster import default_node_name

        name = default_node_name(admin.description)
    out["node"] = name
    return out


def build_spec(options: Options) -> ProxySpec:
    """
    Check every flag and build the L{ProxySpec}; nothing is started.

    @raise usage.UsageError: naming the first bad flag.
    """
    services = _services(options)
    if services is not None:
        descriptions = [d for s in services.services for d in s.listen]
    else:
        # A composing plugin (the demo) may set a default "listen".
        descriptions = options["listens"] or [options.get("listen") or "tcp:8080"]
    listens = tuple(_endpoint(d, "--listen") for d in dict.fromkeys(descriptions))
    listen = listens[0]
    admin = _endpoint(options["admin"], "--admin")
    workers = number(int, 1)(options["workers"], "--workers")
    engine = _engine(options, listens, workers)
    backlog = listen.backlog or (
        number(int, 1, 1 << 20)(options["backlog"], "--backlog") if options["backlog"] is not None else default_backlog()
    )
    token = _admin_token(options, admin)
    if options["no-access-log"]:
        options["access-log"] = "off"
    given = options["max-connections"] is not None
    settings = ProxySettings(
        connect_timeout=number(float, 0.001)(options["connect-timeout"], "--connect-timeout"),
        retries=number(int, 0)(options["retries"], "--retries"),
        idle_timeout=number(float, 0)(options["idle-timeout"], "--idle-timeout"),
        max_connections=number(int, 1)(options["max-connections"], "--max-connections")
        if given else DEFAULT_MAX_CONNECTIONS,
        access_log=options["access-log"] != "off",
        tcp_keepalive=_keepalive(options["tcp-keepalive"]),
    )
    seed = replace(_seed(options), listen=tuple(e.description for e in listens))
    seed_flags = ("--config",) if services is not None else tuple(
        name for name, value in (
            ("--backend", options["backends"]),
            ("--strategy", options["strategy"]),
            ("--strategy-options", options["strategy-options"]),
        ) if value
    )
    state_dir = _state_dir(options["state-dir"])
    cluster = _cluster(options, admin)
    simple = {
        f.name: f.metadata["parse"](options[f.metadata["flag"]], "--" + f.metadata["flag"])
        for f in fields(ProxySpec)
        if "flag" in f.metadata and options.get(f.metadata["flag"]) is not None
    }
    return ProxySpec(
        listen=listen, listens=listens, services=services, admin=admin, backlog=backlog, engine=engine, workers=workers,
        settings=settings, seed=seed, seed_flags=seed_flags, max_connections_given=given,
        state_dir=state_dir, admin_token=token, admin_hosts=tuple(options["admin-hosts"]),
        admin_token_label=_token_label(options["admin-token-file"]),
        **cluster, **simple,
    )


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """
    The service tree for C{twistd lbproxy}: first the open-files limit is
    raised (and C{--max-connections} checked against it), then
    L{lbproxy.assembly.assemble} builds the tree from the spec, and every
    listener is bound (before twistd's log starts, so a taken port is one
    plain line).
    """
    from lbproxy.assembly import assemble
    from lbproxy.limits import fit_descriptors

    top = assemble(fit_descriptors(options.spec), reactor).top
    top.bind()
    return top
