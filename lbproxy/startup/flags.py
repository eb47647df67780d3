"""
From parsed options to a L{ProxySpec}: every flag checked, each bad one
refused with a L{usage.UsageError} that names it.

The checks that need more than a type (an endpoint that parses, a state
directory that can be made, a token for a reachable admin, the engine the
platform can run, the cluster's etcd URLs, the seed config) live here, so
L{lbproxy.startup.tap.Options} stays the declaration of the flags.  Nothing is
started.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from twisted.python import usage

from lbproxy.listening.endpoints import Endpoint, default_backlog, parse_endpoint
from lbproxy.model.config import Config, ProxySettings, StrategyChoice, freeze
from lbproxy.model.errors import ConfigError
from lbproxy.model.parse import check_unique, parse_backend
from lbproxy.startup.spec import DAY, DEFAULT_MAX_CONNECTIONS, ProxySpec, keepalive_flag, number

#: More relay processes than this would not be faster, only fork-bomb the host.
MAX_WORKERS = 256


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


def _admin_token(options: Any, admin: Endpoint) -> str | None:
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


def _seed(options: Any) -> Config:
    """
    Version 1 of the config, from C{--backend}, C{--strategy}, the health
    and outlier flags.
    """
    import json

    from lbproxy.health.flags import settings_from_options
    from lbproxy.policy.plugins import build_strategy, strategy_factories

    choice_options: dict[str, Any] = {}
    if options["strategy-options"]:
        try:
            choice_options = json.loads(options["strategy-options"])
        except ValueError as e:
            raise usage.UsageError(f"--strategy-options is not valid JSON: {e}") from None
        if not isinstance(choice_options, dict):
            raise usage.UsageError("--strategy-options must be a JSON object")
    if options["strategy"] == "":
        raise usage.UsageError("--strategy must name a strategy (default round-robin)")
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


def _services(options: Any) -> Any:
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

    from lbproxy.relay.tlsreload import TLSStore

    try:
        document = load_services(path)
        strategies_known(document, strategy_factories(), path)
        # The PEM files it names are read now, so a bad one is this flag's
        # error and not the first bind's.
        try:
            TLSStore(None).check(document)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    except ConfigError as e:
        raise usage.UsageError(f"--config {e}") from None
    return document


def _engine(options: Any, listens: Any, workers: int) -> str:
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


def _cluster(options: Any, admin: Endpoint) -> dict[str, Any]:
    """
    Check C{--store}, C{--store-prefix} and C{--node-name}.
    """
    import re

    out: dict[str, Any] = {"etcd_endpoints": None, "store_prefix": options["store-prefix"]}
    if options["store"] is None and options["store-prefix"] != options.defaults["store-prefix"]:
        raise usage.UsageError("--store-prefix only makes sense with --store (the etcd key prefix)")
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


def parse_store_spec(spec: str) -> list[str]:
    """
    Parse C{--store etcd:http://HOST:PORT[,http://HOST2:PORT...]}.

    @return: the endpoint base URLs.
    @raise ValueError: with an operator-readable message.
    """
    from urllib.parse import urlsplit

    scheme, sep, rest = spec.partition(":")
    if not sep or scheme != "etcd":
        raise ValueError(f"--store must look like etcd:http://HOST:PORT[,http://HOST:PORT...], not {spec!r}")
    endpoints = []
    for url in rest.split(","):
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as e:
            raise ValueError(f"--store: {url!r} is not a valid etcd URL: {e}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise ValueError(f"--store: {url!r} is not an etcd URL like http://HOST:PORT")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"--store: {url!r} must be only scheme, host and port")
        endpoints.append(f"{parts.scheme}://{parts.netloc}")
    return endpoints


def parse_prefix(prefix: str) -> str:
    """
    Check C{--store-prefix}: an absolute key path of printable characters.

    @raise ValueError: if it is not one.
    """
    if not prefix.startswith("/") or prefix.strip("/") == "" or not prefix.isprintable() or " " in prefix:
        raise ValueError(f"--store-prefix must be a key path like /lbproxy/mycluster, not {prefix!r}")
    return "/" + prefix.strip("/")


def build_spec(options: Any) -> ProxySpec:
    """
    Check every flag and build the L{ProxySpec}; nothing is started.

    @raise usage.UsageError: naming the first bad flag.
    """
    services = _services(options)
    if services is not None:
        # A bad one names the file and the service it is in, not --listen.
        where: dict[str, str] = {}
        for s in services.services:
            for d in s.listen:
                where.setdefault(d, f"--config {options['config']}: service {s.name!r} listen")
    else:
        # A composing plugin (the demo) may set a default "listen".
        where = {d: "--listen" for d in options["listens"] or [options.get("listen") or "tcp:8080"]}
    listens = tuple(_endpoint(d, flag) for d, flag in where.items())
    listen = listens[0]
    admin = _endpoint(options["admin"], "--admin")
    workers = number(int, 1, MAX_WORKERS)(options["workers"], "--workers")
    engine = _engine(options, listens, workers)
    backlog = listen.backlog or (
        number(int, 1, 1 << 20)(options["backlog"], "--backlog") if options["backlog"] is not None else default_backlog()
    )
    token = _admin_token(options, admin)
    if options["no-access-log"]:
        if options["access-log"] not in (options.defaults["access-log"], "off"):
            raise usage.UsageError(f"--no-access-log and --access-log {options['access-log']} contradict each other")
        options["access-log"] = "off"
    given = options["max-connections"] is not None
    settings = ProxySettings(
        connect_timeout=number(float, 0.001, 3600)(options["connect-timeout"], "--connect-timeout"),
        retries=number(int, 0, 100)(options["retries"], "--retries"),
        idle_timeout=number(float, 0, 7 * DAY)(options["idle-timeout"], "--idle-timeout"),
        max_connections=number(int, 1, 10_000_000)(options["max-connections"], "--max-connections")
        if given else DEFAULT_MAX_CONNECTIONS,
        access_log=options["access-log"] != "off",
        tcp_keepalive=keepalive_flag(options["tcp-keepalive"]),
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
