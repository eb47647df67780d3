"""
The config of one pool (a service of the document) as an immutable value.

A L{Config} is immutable and versioned: L{lbproxy.model.parse} builds it
from JSON and L{lbproxy.model.changes} builds the next one; its parts are
the backends here, the health settings of L{lbproxy.model.checks} and the
TLS settings of L{lbproxy.model.tls}.  Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from lbproxy.model.checks import HealthCheck, Outlier
from lbproxy.model.tls import BackendTLS, ServiceTLS


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
    #: The service's id in the document (L{lbproxy.model.service.Document}).
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
#: The pool-wide settings (PATCH of the settings; L{lbproxy.model.parse.parse_settings}).
SETTINGS_FIELDS = (
    "health_check", "outlier", "slow_start", "drain_timeout", "on_marked_down", "sni_timeout",
    *CONNECTION_FIELDS, "tcp_keepalive",
)


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

