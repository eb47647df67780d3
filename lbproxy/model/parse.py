"""
Parsers from JSON (and the command line's backend syntax) to config values.

Each parser checks its value against the schema of L{lbproxy.model.schema},
then the rules a schema cannot say (a timeout not longer than its interval,
no address twice), then builds the value object.  The same parsers validate
the command line, API bodies, imported files and the stored document, so
bad input is refused the same way everywhere.
"""

from __future__ import annotations

from typing import Any, Mapping

from lbproxy.model.address import address_key, canonical_host
from lbproxy.model.checks import DEFAULT_HEALTH_CHECK, HealthCheck, Outlier
from lbproxy.model.config import (
    CONNECTION_FIELDS,
    SETTINGS_FIELDS,
    Backend,
    Config,
    StrategyChoice,
    freeze,
)
from lbproxy.model.errors import ConfigError
from lbproxy.model.schema import (
    BACKEND,
    BACKEND_FIELDS,
    CONFIG,
    NEW_BACKEND,
    SETTINGS,
    SETTINGS_FIELDS as _SETTINGS_SCHEMAS,
    STRATEGY,
)
from lbproxy.model.validation import status_range, validate
from lbproxy.model.tls import BackendTLS, ServiceTLS


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
    return build_pool(obj, what, int(obj.get("version", 0)))


def build_pool(obj: Mapping[str, Any], what: str, version: int) -> Config:
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


def same_address_note(new: Backend, old: Backend) -> str:
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
                f"as backend {other.id!r}{same_address_note(b, other)}"
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
        raise ConfigError(f"--backend {spec!r} must look like HOST:PORT[,weight=N]")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ConfigError(f"--backend {spec!r}: an IPv6 address goes in brackets, [ADDRESS]:PORT")
    host = host[1:-1] if host.startswith("[") else host
    if not port.isdigit():
        raise ConfigError(f"--backend {spec!r}: port {port!r} is not a number")
    obj: dict[str, Any] = {"host": host, "port": int(port)}
    for opt in opts:
        key, sep, val = opt.partition("=")
        if not sep:
            raise ConfigError(f"--backend {spec!r}: option {opt!r} must look like key=value")
        if key == "weight":
            if not val.isdigit():
                raise ConfigError(f"--backend {spec!r}: weight {val!r} is not a number")
            obj["weight"] = int(val)
        elif key == "proxy":
            obj["proxy_protocol"] = val
        elif key in ("id", "state"):
            obj[key] = val
        elif key == "maxconn":
            if not val.isdigit():
                raise ConfigError(f"--backend {spec!r}: maxconn {val!r} is not a number")
            obj["max_connections"] = int(val)
        else:
            raise ConfigError(f"--backend {spec!r}: unknown option {key!r} (weight, proxy, id, state, maxconn)")
    return obj


# Changes: pure functions from one config to the next -----------------------

