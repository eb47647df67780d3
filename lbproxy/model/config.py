"""
The config document: pool, strategy and health-check settings.

A L{Config} is immutable and versioned.  Every change builds a new one
through the pure functions at the end of this module; nothing here does I/O.
The same parsers, over the schemas of L{lbproxy.model.schema}, validate the
command line, API bodies, imported files and the stored document, so bad
input is refused the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from lbproxy.model.address import address_key, canonical_host
from lbproxy.model.schema import (
    BACKEND,
    BACKEND_FIELDS,
    BACKEND_PATCH,
    BACKEND_STATES,
    CHECK_TYPES,
    CONFIG,
    NEW_BACKEND,
    PROXY_PROTOCOLS,
    SETTINGS,
    SETTINGS_FIELDS as _SETTINGS_SCHEMAS,
    STRATEGY,
    ConfigError,
    status_range,
    validate,
)

# BACKEND_STATES, CHECK_TYPES, PROXY_PROTOCOLS and ConfigError are
# re-exported: they were defined here first.


class VersionConflict(Exception):
    """
    A change was based on a config version that is no longer current.
    """

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"config version {expected} is stale; the current version is {current}"
        )
        self.expected = expected
        self.current = current


class StoreError(Exception):
    """
    The config store could not make a change durable; nothing was applied.
    """


@dataclass(frozen=True)
class HealthCheck:
    """
    How to probe a backend, in HAProxy's terms: every C{interval} seconds,
    C{rise} successes in a row mark it up and C{fall} failures mark it down.

    The defaults are also the check of a new pool (L{DEFAULT_HEALTH_CHECK}):
    a dead backend is down within about C{fall x interval} = 2 s, before a
    client pays for it, yet one lost probe does not take it out (nginx's
    C{max_fails=1} would); a connect a second per backend costs nothing.
    """

    type: str = "tcp"
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2
    path: str = "/"
    status: tuple[int, int] = (200, 399)
    send: str = ""
    expect: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "interval": self.interval,
            "timeout": self.timeout,
            "rise": self.rise,
            "fall": self.fall,
            "path": self.path,
            "status": f"{self.status[0]}-{self.status[1]}",
            "send": self.send,
            "expect": self.expect,
        }


#: The check of a config that does not say (a new seed, a document without
#: C{health_check}).  An explicit C{null}, as every config stored by the
#: first release has, keeps meaning no active checks.
DEFAULT_HEALTH_CHECK = HealthCheck()


@dataclass(frozen=True)
class Outlier:
    """
    Passive health: eject a backend after C{consecutive_failures} failures
    from real traffic, for C{base_ejection} seconds times the number of times
    it was ejected, never ejecting more than C{max_ejection_percent} of the
    pool.
    """

    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: int = 50

    def to_json(self) -> dict[str, Any]:
        return {
            "consecutive_failures": self.consecutive_failures,
            "base_ejection": self.base_ejection,
            "max_ejection": self.max_ejection,
            "max_ejection_percent": self.max_ejection_percent,
        }


@dataclass(frozen=True)
class BackendTLS:
    """
    lbproxy speaks TLS to a backend: verified against C{ca} (or the
    system's trust store) and C{server_name} (or the backend's host),
    unless C{verify} is false.
    """

    verify: bool = True
    ca: str | None = None
    server_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verify": self.verify}
        if self.ca is not None:
            out["ca"] = self.ca
        if self.server_name is not None:
            out["server_name"] = self.server_name
        return out


@dataclass(frozen=True)
class ServiceTLS:
    """
    A service terminates TLS on its listeners: certificate chains with
    their keys (PEM paths, C{(cert, key)} pairs) picked by SNI, the first
    the default.  Only paths are here: the files are read by
    L{lbproxy.relay.tls}.
    """

    certificates: tuple[tuple[str, str], ...] = ()
    min_version: str = "1.2"
    ciphers: str | None = None
    alpn: tuple[str, ...] = ()
    client_ca: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "certificates": [{"cert": c, "key": k} for c, k in self.certificates],
            "min_version": self.min_version,
            "alpn": list(self.alpn),
        }
        if self.ciphers is not None:
            out["ciphers"] = self.ciphers
        if self.client_ca is not None:
            out["client_ca"] = self.client_ca
        return out


def parse_backend_tls(obj: Mapping[str, Any] | None) -> BackendTLS | None:
    if obj is None:
        return None
    return BackendTLS(bool(obj.get("verify", True)), obj.get("ca"), obj.get("server_name"))


def parse_service_tls(obj: Mapping[str, Any] | None) -> ServiceTLS | None:
    if obj is None:
        return None
    return ServiceTLS(
        certificates=tuple((c["cert"], c["key"]) for c in obj["certificates"]),
        min_version=obj.get("min_version", "1.2"),
        ciphers=obj.get("ciphers"),
        alpn=tuple(obj.get("alpn", ())),
        client_ca=obj.get("client_ca"),
    )


@dataclass(frozen=True)
class Backend:
    """
    One backend as configured.  Its health is runtime state and lives in
    L{lbproxy.policy.pool.Pool}, not here.
    """

    id: str
    host: str
    port: int
    weight: int = 1
    state: str = "up"
    proxy_protocol: str | None = None
    max_connections: int | None = None
    health_check: HealthCheck | None = None
    tls: BackendTLS | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "port": self.port,
            "weight": self.weight,
            "state": self.state,
            "proxy_protocol": self.proxy_protocol,
            "max_connections": self.max_connections,
            "health_check": (
                self.health_check.to_json() if self.health_check else None
            ),
            **({"tls": self.tls.to_json()} if self.tls is not None else {}),
        }


@dataclass(frozen=True)
class ClientLimits:
    """
    Limits per client address, or per network of C{prefix_v4}/C{prefix_v6}
    bits (L{lbproxy.policy.limits.ClientTable}); C{None}: no such limit.
    """

    max_connections: int | None = None
    rate: float | None = None
    burst: int | None = None
    prefix_v4: int = 32
    prefix_v6: int = 128

    def to_json(self) -> dict[str, Any]:
        return {
            "max_connections": self.max_connections, "rate": self.rate, "burst": self.burst,
            "prefix_v4": self.prefix_v4, "prefix_v6": self.prefix_v6,
        }


@dataclass(frozen=True)
class StrategyChoice:
    name: str = "round-robin"
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": _thaw(self.options)}


@dataclass(frozen=True)
class Config:
    """
    The whole durable configuration, at one version.
    """

    version: int = 0
    backends: tuple[Backend, ...] = ()
    strategy: StrategyChoice = StrategyChoice()
    health_check: HealthCheck | None = None
    outlier: Outlier | None = Outlier()
    slow_start: float = 0.0
    drain_timeout: float | None = None
    #: C{shutdown}: close a backend's connections when health marks it
    #: down (HAProxy C{on-marked-down shutdown-sessions}); C{none}: keep them.
    on_marked_down: str = "none"
    #: The service's id in the document (L{lbproxy.model.document.Document}).
    name: str = "default"
    #: Listen endpoint descriptions (Twisted endpoint strings); the
    #: C{default} service of a migrated store takes the command line's.
    listen: tuple[str, ...] = ()
    #: TLS server names (C{db.example.com}, C{*.example.com}) telling apart
    #: the services that share a listen endpoint.
    sni: tuple[str, ...] = ()
    sni_default: bool = False
    sni_timeout: float = 5.0
    #: Source networks (CIDR strings) whose connections start with a PROXY header.
    accept_proxy: tuple[str, ...] = ()
    # Connection settings; C{None}: the command line's (L{ProxySettings}).
    connect_timeout: float | None = None
    retries: int | None = None
    idle_timeout: float | None = None
    max_connections: int | None = None
    #: C{(idle, interval, count)}, C{"off"}, or C{None}: the command line's.
    tcp_keepalive: tuple[int, int, int] | str | None = None
    # Traffic control (L{lbproxy.policy.limits}).
    #: Client networks (CIDR strings) served if not empty; C{deny} is refused first.
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    client_limits: ClientLimits | None = None
    #: Clients that wait when every backend is at its max_connections.
    max_queue: int = 0
    queue_timeout: float = 10.0
    #: TLS terminated on every listener of the service (C{None}: plain TCP).
    tls: ServiceTLS | None = None

    def backend(self, backend_id: str) -> Backend | None:
        for b in self.backends:
            if b.id == backend_id:
                return b
        return None

    def check_for(self, backend: Backend) -> HealthCheck | None:
        """
        The health check that applies to C{backend}: its own, else the pool's.
        """
        return backend.health_check or self.health_check

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "backends": [b.to_json() for b in self.backends],
            "strategy": self.strategy.to_json(),
            "health_check": self.health_check.to_json() if self.health_check else None,
            "outlier": self.outlier.to_json() if self.outlier else None,
            "slow_start": self.slow_start,
            "drain_timeout": self.drain_timeout,
            "on_marked_down": self.on_marked_down,
            **self.service_json(),
        }

    def service_json(self) -> dict[str, Any]:
        """
        The service's own fields (besides the pool's).
        """
        return {
            "name": self.name,
            "listen": list(self.listen),
            "sni": list(self.sni),
            "sni_default": self.sni_default,
            "sni_timeout": self.sni_timeout,
            "accept_proxy": list(self.accept_proxy),
            **{k: getattr(self, k) for k in CONNECTION_FIELDS},
            "tcp_keepalive": _thaw(self.tcp_keepalive),
            "allow": list(self.allow),
            "deny": list(self.deny),
            "client_limits": self.client_limits.to_json() if self.client_limits else None,
            "max_queue": self.max_queue,
            "queue_timeout": self.queue_timeout,
            **({"tls": self.tls.to_json()} if self.tls is not None else {}),
        }

    def connection_settings(self, base: "ProxySettings") -> "ProxySettings":
        """
        C{base} (the command line's) with this service's own connection
        settings in force.
        """
        own = {k: getattr(self, k) for k in CONNECTION_FIELDS if getattr(self, k) is not None}
        if self.tcp_keepalive is not None:
            own["tcp_keepalive"] = None if self.tcp_keepalive == "off" else self.tcp_keepalive
        return replace(base, **own) if own else base


@dataclass(frozen=True)
class ProxySettings:
    """
    Listener and connection settings from the command line.
    """

    connect_timeout: float = 3.0
    retries: int = 2
    idle_timeout: float = 300.0
    max_connections: int = 10000
    access_log: bool = True
    #: TCP keepalive of relayed sockets, C{(idle, interval, count)}; C{None}: off.
    tcp_keepalive: tuple[int, int, int] | None = (60, 10, 6)


#: The per-service connection settings that override L{ProxySettings}.
CONNECTION_FIELDS = ("connect_timeout", "retries", "idle_timeout", "max_connections")


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def freeze(value: Any) -> Any:
    """
    Make a JSON value immutable (dicts become read-only mappings, lists
    tuples), so a snapshot cannot be changed by whoever parsed it.
    """
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


# Parsing -----------------------------------------------------------------
#
# Each parser checks its value against the schema of lbproxy.model.schema,
# then the rules a schema cannot say, then builds the value object.


def parse_host(value: Any, what: str = "host") -> str:
    validate(value, BACKEND_FIELDS["host"], what)
    return canonical_host(value)


def parse_port(value: Any, what: str = "port") -> int:
    return int(validate(value, BACKEND_FIELDS["port"], what))


def parse_weight(value: Any, what: str = "weight") -> int:
    return int(validate(value, BACKEND_FIELDS["weight"], what))


def parse_state(value: Any, what: str = "state") -> str:
    return validate(value, BACKEND_FIELDS["state"], what)


def parse_status_range(value: Any, what: str) -> tuple[int, int]:
    try:
        return status_range(value)
    except ValueError as e:
        raise ConfigError(f"{what} {e}") from None


def parse_proxy_protocol(value: Any, what: str = "proxy_protocol") -> str | None:
    return validate(value, BACKEND_FIELDS["proxy_protocol"], what)


def _health_check(obj: Mapping[str, Any] | None, what: str) -> HealthCheck | None:
    if obj is None:
        return None
    d = HealthCheck()
    interval = float(obj.get("interval", d.interval))
    timeout = float(obj.get("timeout", d.timeout))
    if timeout > interval:
        raise ConfigError(
            f"{what}.timeout ({timeout}) must not be longer than its interval ({interval})"
        )
    kind = obj.get("type", d.type)
    expect = obj.get("expect", d.expect)
    if kind == "send-expect" and not expect:
        raise ConfigError(f"{what}.expect must not be empty for a send-expect check")
    return HealthCheck(
        kind, interval, timeout, int(obj.get("rise", d.rise)), int(obj.get("fall", d.fall)),
        obj.get("path", d.path), status_range(obj.get("status", "200-399")),
        obj.get("send", d.send), expect,
    )


def parse_health_check(value: Any, what: str = "health_check") -> HealthCheck | None:
    return _health_check(validate(value, _SETTINGS_SCHEMAS["health_check"], what), what)


def _outlier(obj: Mapping[str, Any] | None, what: str) -> Outlier | None:
    if obj is None:
        return None
    d = Outlier()
    o = Outlier(
        int(obj.get("consecutive_failures", d.consecutive_failures)),
        float(obj.get("base_ejection", d.base_ejection)),
        float(obj.get("max_ejection", d.max_ejection)),
        int(obj.get("max_ejection_percent", d.max_ejection_percent)),
    )
    if o.max_ejection < o.base_ejection:
        raise ConfigError(
            f"{what}.max_ejection ({o.max_ejection}) must not be shorter than "
            f"{what}.base_ejection ({o.base_ejection})"
        )
    return o


def parse_outlier(value: Any, what: str = "outlier") -> Outlier | None:
    return _outlier(validate(value, _SETTINGS_SCHEMAS["outlier"], what), what)


def _backend(obj: Mapping[str, Any], what: str, backend_id: str | None = None) -> Backend:
    mc = obj.get("max_connections")
    return Backend(
        id=obj.get("id", backend_id),
        host=canonical_host(obj["host"]),
        port=int(obj["port"]),
        weight=int(obj.get("weight", 1)),
        state=obj.get("state", "up"),
        proxy_protocol=obj.get("proxy_protocol"),
        max_connections=None if mc is None else int(mc),
        health_check=_health_check(obj.get("health_check"), f"{what}.health_check"),
        tls=parse_backend_tls(obj.get("tls")),
    )


def parse_backend(value: Any, what: str = "backend", backend_id: str | None = None) -> Backend:
    """
    Parse one backend object.  C{backend_id} is used when the object has
    none (a new backend from the API).
    """
    if backend_id is None:
        return _backend(validate(value, BACKEND, what), what)
    return _backend(validate(value, NEW_BACKEND, what), what, backend_id)


def parse_strategy(value: Any, what: str = "strategy") -> StrategyChoice:
    """
    Parse the shape of a strategy choice.  Whether the plugin exists and the
    options fit its schema is checked by L{lbproxy.policy.plugins.build_strategy}.
    """
    obj = validate(value, STRATEGY, what)
    return StrategyChoice(obj["name"], freeze(dict(obj.get("options") or {})))


def parse_settings(value: Any, what: str = "settings") -> dict[str, Any]:
    """
    Parse pool-wide settings (any of C{SETTINGS_FIELDS}) into the values
    of the L{Config} fields they name.
    """
    obj = validate(value, SETTINGS, what)
    out: dict[str, Any] = {}
    if "health_check" in obj:
        out["health_check"] = _health_check(obj["health_check"], f"{what}.health_check")
    if "outlier" in obj:
        out["outlier"] = _outlier(obj["outlier"], f"{what}.outlier")
    if "slow_start" in obj:
        out["slow_start"] = float(obj["slow_start"])
    if obj.get("drain_timeout") is not None:
        out["drain_timeout"] = float(obj["drain_timeout"])
    elif "drain_timeout" in obj:
        out["drain_timeout"] = None
    if "on_marked_down" in obj:
        out["on_marked_down"] = obj["on_marked_down"]
    for name in CONNECTION_FIELDS:
        if name in obj:
            value = obj[name]
            out[name] = None if value is None else (int if name in ("retries", "max_connections") else float)(value)
    if "sni_timeout" in obj:
        out["sni_timeout"] = float(obj["sni_timeout"])
    if "tcp_keepalive" in obj:
        value = obj["tcp_keepalive"]
        if isinstance(value, list):
            if value[2] > 127:
                raise ConfigError(f"{what}.tcp_keepalive: COUNT must be at most 127, not {value[2]}")
            value = tuple(value)
        out["tcp_keepalive"] = value
    return out


def parse_config(value: Any, what: str = "config") -> Config:
    """
    Parse and validate a whole config document.
    """
    obj = validate(value, CONFIG, what)
    backends = tuple(
        _backend(b, f"{what}.backends[{i}]") for i, b in enumerate(obj.get("backends", []))
    )
    check_unique(backends)
    return _pool(obj, what, int(obj.get("version", 0)))


def _pool(obj: Mapping[str, Any], what: str, version: int) -> Config:
    """
    A L{Config} from an object already valid against a schema that has the
    pool's and service's fields.
    """
    from lbproxy.model.service import service_fields

    backends = tuple(
        _backend(b, f"{what}.backends[{i}]") for i, b in enumerate(obj.get("backends", []))
    )
    check_unique(backends)
    settings = {
        "outlier": Outlier().to_json(),
        "health_check": DEFAULT_HEALTH_CHECK.to_json(),
        **{k: obj[k] for k in SETTINGS_FIELDS if k in obj},
    }
    return Config(
        version=version,
        backends=backends,
        strategy=parse_strategy(obj.get("strategy", {"name": "round-robin"}), f"{what}.strategy"),
        **parse_settings(settings, what),
        **service_fields(obj, what),
    )


def _same(new: Backend, old: Backend) -> str:
    return "" if new.address == old.address else f" ({old.address})"


def check_unique(backends: tuple[Backend, ...]) -> None:
    """
    Refuse two backends with one id or one address (however spelled: see
    L{lbproxy.model.address.address_key}), naming the backend duplicated.
    """
    ids: set[str] = set()
    addresses: dict[tuple[str, int], Backend] = {}
    for b in backends:
        if b.id in ids:
            raise ConfigError(f"backend id {b.id!r} is used twice")
        key = address_key(b.host, b.port)
        other = addresses.get(key)
        if other is not None:
            raise ConfigError(
                f"backend {b.id!r} ({b.address}) is listed twice: it is the same address "
                f"as backend {other.id!r}{_same(b, other)}"
            )
        ids.add(b.id)
        addresses[key] = b


def parse_backend_spec(spec: str) -> dict[str, Any]:
    """
    Parse a command-line backend, C{HOST:PORT[,weight=N][,proxy=v1|v2]
    [,id=NAME][,state=STATE]}, into the JSON form L{parse_backend} takes.
    """
    head, *opts = spec.split(",")
    host, sep, port = head.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"backend {spec!r} must look like HOST:PORT[,weight=N]")
    host = host.strip("[]")
    if not port.isdigit():
        raise ConfigError(f"backend {spec!r}: port {port!r} is not a number")
    obj: dict[str, Any] = {"host": host, "port": int(port)}
    for opt in opts:
        key, sep, val = opt.partition("=")
        if not sep:
            raise ConfigError(f"backend {spec!r}: option {opt!r} must look like key=value")
        if key == "weight":
            if not val.isdigit():
                raise ConfigError(f"backend {spec!r}: weight {val!r} is not a number")
            obj["weight"] = int(val)
        elif key == "proxy":
            obj["proxy_protocol"] = val
        elif key in ("id", "state"):
            obj[key] = val
        elif key == "maxconn":
            if not val.isdigit():
                raise ConfigError(f"backend {spec!r}: maxconn {val!r} is not a number")
            obj["max_connections"] = int(val)
        else:
            raise ConfigError(f"backend {spec!r}: unknown option {key!r} (weight, proxy, id, state, maxconn)")
    return obj


# Changes: pure functions from one config to the next -----------------------


def next_backend_id(config: Config) -> str:
    used = {b.id for b in config.backends}
    n = len(config.backends) + 1
    while f"b{n}" in used:
        n += 1
    return f"b{n}"


def add_backend(config: Config, body: Any) -> tuple[Config, Backend]:
    backend = parse_backend(body, "backend", backend_id=next_backend_id(config))
    if config.backend(backend.id):
        raise ConfigError(f"backend id {backend.id!r} already exists")
    key = address_key(backend.host, backend.port)
    for b in config.backends:
        if address_key(b.host, b.port) == key:
            raise ConfigError(f"backend {backend.address} already exists as {b.id!r}{_same(backend, b)}")
    return replace(config, version=config.version + 1, backends=config.backends + (backend,)), backend


def update_backend(config: Config, backend_id: str, body: Any) -> tuple[Config, Backend]:
    old = config.backend(backend_id)
    if old is None:
        raise KeyError(backend_id)
    validate(body, BACKEND_PATCH, "body")
    merged = old.to_json()
    merged.update(body)
    new = parse_backend(merged, "backend")
    return replace(
        config,
        version=config.version + 1,
        backends=tuple(new if b.id == backend_id else b for b in config.backends),
    ), new


def remove_backend(config: Config, backend_id: str) -> Config:
    if config.backend(backend_id) is None:
        raise KeyError(backend_id)
    return replace(
        config,
        version=config.version + 1,
        backends=tuple(b for b in config.backends if b.id != backend_id),
    )


def set_strategy(config: Config, choice: StrategyChoice) -> Config:
    return replace(config, version=config.version + 1, strategy=choice)


def replace_config(config: Config, new: Config) -> Config:
    """
    Adopt an imported document as the next version of C{config}.
    """
    return replace(new, version=config.version + 1)


SETTINGS_FIELDS = (
    "health_check", "outlier", "slow_start", "drain_timeout", "on_marked_down", "sni_timeout",
    *CONNECTION_FIELDS, "tcp_keepalive",
)


def update_settings(config: Config, body: Any) -> Config:
    """
    Change the pool-wide settings (health check, outlier ejection, slow
    start, drain timeout); fields not in C{body} keep their value.
    """
    return replace(config, version=config.version + 1, **parse_settings(body, "body"))
