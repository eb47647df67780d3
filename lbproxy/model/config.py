"""
The config document: pool, strategy and health-check settings.

A L{Config} is immutable and versioned.  Every change builds a new one
through the pure functions at the end of this module; nothing here does I/O.
The same parser validates the command line, API bodies, imported files and
the stored document, so bad input is refused the same way everywhere.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

BACKEND_STATES = ("up", "draining", "disabled")
PROXY_PROTOCOLS = (None, "v1", "v2")
CHECK_TYPES = ("tcp", "http", "send-expect")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """
    A config document, or a change to one, is invalid.  The message says
    what is wrong, in words an operator can act on.
    """


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
    """

    type: str = "tcp"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
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
        }


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


def _expect_object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a JSON object")
    return value


def _unknown(obj: Mapping[str, Any], allowed: set[str], what: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise ConfigError(f"{what}: unknown field(s) {', '.join(map(repr, extra))}")


def _int(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, not {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{what} must be at least {low}, not {value}")
    if high is not None and value > high:
        raise ConfigError(f"{what} must be at most {high}, not {value}")
    return value


def _number(value: Any, what: str, low: float = 0.0, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, not {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{what} must be a finite number")
    if positive and value <= 0:
        raise ConfigError(f"{what} must be greater than 0, not {value}")
    if value < low:
        raise ConfigError(f"{what} must be at least {low}, not {value}")
    return float(value)


def parse_host(value: Any, what: str = "host") -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ConfigError(f"{what} {value!r} is neither an IP address nor a host name")
    return value


def parse_port(value: Any, what: str = "port") -> int:
    return _int(value, what, 1, 65535)


def parse_weight(value: Any, what: str = "weight") -> int:
    return _int(value, what, 0, 1000)


def parse_state(value: Any, what: str = "state") -> str:
    if value not in BACKEND_STATES:
        raise ConfigError(
            f"{what} must be one of {', '.join(BACKEND_STATES)}, not {value!r}"
        )
    return value


def parse_status_range(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a status like '200' or a range like '200-399'")
    m = re.fullmatch(r"\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?", value)
    if not m:
        raise ConfigError(f"{what} {value!r} is not a status like '200' or a range like '200-399'")
    low = int(m.group(1))
    high = int(m.group(2) or low)
    if not (100 <= low <= high <= 599):
        raise ConfigError(f"{what} {value!r} must lie within 100-599, low to high")
    return (low, high)


def parse_health_check(value: Any, what: str = "health_check") -> HealthCheck | None:
    if value is None:
        return None
    obj = _expect_object(value, what)
    _unknown(obj, set(HealthCheck.__dataclass_fields__), what)
    d = HealthCheck()
    kind = obj.get("type", d.type)
    if kind not in CHECK_TYPES:
        raise ConfigError(f"{what}.type must be one of {', '.join(CHECK_TYPES)}, not {kind!r}")
    interval = _number(obj.get("interval", d.interval), f"{what}.interval", positive=True)
    timeout = _number(obj.get("timeout", d.timeout), f"{what}.timeout", positive=True)
    if timeout > interval:
        raise ConfigError(
            f"{what}.timeout ({timeout}) must not be longer than its interval ({interval})"
        )
    rise = _int(obj.get("rise", d.rise), f"{what}.rise", 1, 100)
    fall = _int(obj.get("fall", d.fall), f"{what}.fall", 1, 100)
    path = obj.get("path", d.path)
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or any(c in path for c in " \r\n\t#")
        or len(path) > 2048
    ):
        raise ConfigError(f"{what}.path must be an absolute HTTP path like '/health', not {path!r}")
    status = parse_status_range(obj.get("status", "200-399"), f"{what}.status")
    send = obj.get("send", d.send)
    expect = obj.get("expect", d.expect)
    for name, v in (("send", send), ("expect", expect)):
        if not isinstance(v, str) or len(v) > 4096:
            raise ConfigError(f"{what}.{name} must be a string of at most 4096 characters")
    if kind == "send-expect" and not expect:
        raise ConfigError(f"{what}.expect must not be empty for a send-expect check")
    return HealthCheck(kind, interval, timeout, rise, fall, path, status, send, expect)


def parse_outlier(value: Any, what: str = "outlier") -> Outlier | None:
    if value is None:
        return None
    obj = _expect_object(value, what)
    _unknown(obj, set(Outlier.__dataclass_fields__), what)
    d = Outlier()
    o = Outlier(
        _int(obj.get("consecutive_failures", d.consecutive_failures), f"{what}.consecutive_failures", 1, 1000),
        _number(obj.get("base_ejection", d.base_ejection), f"{what}.base_ejection", positive=True),
        _number(obj.get("max_ejection", d.max_ejection), f"{what}.max_ejection", positive=True),
        _int(obj.get("max_ejection_percent", d.max_ejection_percent), f"{what}.max_ejection_percent", 0, 100),
    )
    if o.max_ejection < o.base_ejection:
        raise ConfigError(f"{what}.max_ejection must not be shorter than base_ejection")
    return o


def parse_proxy_protocol(value: Any, what: str = "proxy_protocol") -> str | None:
    if value not in PROXY_PROTOCOLS:
        raise ConfigError(f"{what} must be null, 'v1' or 'v2', not {value!r}")
    return value


def parse_backend(value: Any, what: str = "backend", backend_id: str | None = None) -> Backend:
    """
    Parse one backend object.  C{backend_id} is used when the object has
    none (a new backend from the API).
    """
    obj = _expect_object(value, what)
    _unknown(obj, set(Backend.__dataclass_fields__), what)
    bid = obj.get("id", backend_id)
    if not isinstance(bid, str) or not _ID.match(bid):
        raise ConfigError(f"{what}.id must be 1-64 letters, digits, '.', '_' or '-', not {bid!r}")
    if "host" not in obj or "port" not in obj:
        raise ConfigError(f"{what} needs both 'host' and 'port'")
    mc = obj.get("max_connections")
    return Backend(
        id=bid,
        host=parse_host(obj["host"], f"{what}.host"),
        port=parse_port(obj["port"], f"{what}.port"),
        weight=parse_weight(obj.get("weight", 1), f"{what}.weight"),
        state=parse_state(obj.get("state", "up"), f"{what}.state"),
        proxy_protocol=parse_proxy_protocol(obj.get("proxy_protocol"), f"{what}.proxy_protocol"),
        max_connections=None if mc is None else _int(mc, f"{what}.max_connections", 1),
        health_check=parse_health_check(obj.get("health_check"), f"{what}.health_check"),
    )


def parse_strategy(value: Any, what: str = "strategy") -> StrategyChoice:
    """
    Parse the shape of a strategy choice.  Whether the plugin exists and the
    options fit its schema is checked by L{lbproxy.policy.plugins.build_strategy}.
    """
    obj = _expect_object(value, what)
    _unknown(obj, {"name", "options"}, what)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what}.name must be a non-empty string")
    options = obj.get("options", {})
    if options is None:
        options = {}
    _expect_object(options, f"{what}.options")
    return StrategyChoice(name, freeze(dict(options)))


def parse_config(value: Any, what: str = "config") -> Config:
    """
    Parse and validate a whole config document.
    """
    obj = _expect_object(value, what)
    _unknown(obj, set(Config.__dataclass_fields__), what)
    version = _int(obj.get("version", 0), f"{what}.version", 0)
    raw_backends = obj.get("backends", [])
    if not isinstance(raw_backends, list):
        raise ConfigError(f"{what}.backends must be a list")
    backends = tuple(
        parse_backend(b, f"{what}.backends[{i}]") for i, b in enumerate(raw_backends)
    )
    check_unique(backends)
    drain = obj.get("drain_timeout")
    return Config(
        version=version,
        backends=backends,
        strategy=parse_strategy(obj.get("strategy", {"name": "round-robin"}), f"{what}.strategy"),
        health_check=parse_health_check(obj.get("health_check"), f"{what}.health_check"),
        outlier=parse_outlier(obj.get("outlier", Outlier().to_json()), f"{what}.outlier"),
        slow_start=_number(obj.get("slow_start", 0), f"{what}.slow_start"),
        drain_timeout=None if drain is None else _number(drain, f"{what}.drain_timeout", positive=True),
    )


def check_unique(backends: tuple[Backend, ...]) -> None:
    ids: set[str] = set()
    addresses: set[tuple[str, int]] = set()
    for b in backends:
        if b.id in ids:
            raise ConfigError(f"backend id {b.id!r} is used twice")
        if (b.host, b.port) in addresses:
            raise ConfigError(f"backend {b.address} is listed twice")
        ids.add(b.id)
        addresses.add((b.host, b.port))


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
    for b in config.backends:
        if (b.host, b.port) == (backend.host, backend.port):
            raise ConfigError(f"backend {backend.address} already exists as {b.id!r}")
    return replace(config, version=config.version + 1, backends=config.backends + (backend,)), backend


def update_backend(config: Config, backend_id: str, body: Any) -> tuple[Config, Backend]:
    old = config.backend(backend_id)
    if old is None:
        raise KeyError(backend_id)
    obj = _expect_object(body, "body")
    allowed = {"weight", "state", "proxy_protocol", "max_connections", "health_check"}
    _unknown(obj, allowed, "body")
    if not obj:
        raise ConfigError(f"body must change at least one of {', '.join(sorted(allowed))}")
    merged = old.to_json()
    merged.update(obj)
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


SETTINGS_FIELDS = ("health_check", "outlier", "slow_start", "drain_timeout")


def update_settings(config: Config, body: Any) -> Config:
    """
    Change the pool-wide settings (health check, outlier ejection, slow
    start, drain timeout); fields not in C{body} keep their value.
    """
    obj = _expect_object(body, "body")
    _unknown(obj, set(SETTINGS_FIELDS), "body")
    merged = config.to_json()
    merged.update(obj)
    parsed = parse_config(merged)
    return replace(
        config,
        version=config.version + 1,
        **{name: getattr(parsed, name) for name in SETTINGS_FIELDS},
    )
