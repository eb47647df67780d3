"""
C{twistd lbproxy}: the command-line options, checked into a frozen
L{lbproxy.startup.spec.ProxySpec} (L{lbproxy.startup.flags.build_spec}), then the service
tree (L{lbproxy.startup.assembly}).

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

from twisted.application.service import MultiService
from twisted.python import usage

from lbproxy.startup.flags import build_spec
from lbproxy.model.errors import ConfigError
from lbproxy.model.parse import parse_backend_spec
from lbproxy.startup.spec import ProxySpec


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


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """
    The service tree for C{twistd lbproxy}: first the open-files limit is
    raised (and C{--max-connections} checked against it), then
    L{lbproxy.startup.assembly.assemble} builds the tree from the spec, and every
    listener is bound (before twistd's log starts, so a taken port is one
    plain line).
    """
    from lbproxy.startup.assembly import assemble
    from lbproxy.startup.open_files import fit_descriptors

    top = assemble(fit_descriptors(options.spec), reactor).top
    top.bind()
    return top
