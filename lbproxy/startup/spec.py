"""
The frozen L{ProxySpec}: what the command line asks for, checked.

L{lbproxy.startup.tap.Options} reads the flags, L{lbproxy.startup.flags.build_spec} checks
them into one of these, and L{lbproxy.startup.assembly.assemble} builds the service
tree from it alone; nothing in it is a built object.  A simple flag is one
L{flag} field here (with its parser) and one C{optParameters} line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.python import usage

from lbproxy.listening.endpoints import Endpoint
from lbproxy.model.config import Config, ProxySettings

#: C{--max-connections} when not given (fewer if the descriptor limit is lower).
DEFAULT_MAX_CONNECTIONS = 10000

#: The longest a flag's seconds may be (the API's limits are the same).
DAY = 86400.0


def flag(name: str, parse: Callable[[Any, str], Any] = lambda value, flag: value, default: Any = None) -> Any:
    """
    A L{ProxySpec} field read from C{--name}: C{parse(value, "--name")}
    (not called when the flag is absent, which gives C{default}).  Adding an
    option is its C{optParameters} line and one such field.
    """
    return field(default=default, metadata={"flag": name, "parse": parse})


def keepalive_flag(value: str) -> Any:
    from lbproxy.relay.sockopts import parse_keepalive

    try:
        return parse_keepalive(value)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def _access(value: str, check: str) -> str:
    from lbproxy.accesslog import log as accesslog

    try:
        return getattr(accesslog, check)(value)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def number(cast: Any = float, low: float = 0, high: float | None = None) -> Callable[[Any, str], Any]:
    """
    A C{parse} for L{flag}: a finite number of type C{cast}, at least
    C{low} (and at most C{high}); C{nan} and C{inf} are refused, as a timer
    or a comparison with them misbehaves silently.
    """

    def parse(value: Any, flag: str) -> Any:
        try:
            n = cast(value)
        except (TypeError, ValueError, OverflowError):
            raise usage.UsageError(f"{flag} must be a number, not {value!r}") from None
        if not math.isfinite(n):
            raise usage.UsageError(f"{flag} must be a finite number, not {value!r}")
        if n < low:
            raise usage.UsageError(f"{flag} must be at least {low}, not {value!r}")
        if high is not None and n > high:
            most = int(high) if float(high).is_integer() else high
            raise usage.UsageError(f"{flag} must be at most {most}, not {value!r}")
        return n

    return parse


def _new_file(value: str, flag: str) -> str:
    """
    A path lbproxy creates once running (a socket, a pid file): its
    directory must exist now, else the failure would come after the proxy
    already listens, as a traceback.
    """
    path = os.path.abspath(value)
    if os.path.isdir(path):
        raise usage.UsageError(f"{flag} {value!r} is a directory; give a file path in it")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise usage.UsageError(f"{flag} {value!r}: the directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise usage.UsageError(f"{flag} {value!r}: cannot create files in {parent!r}")
    return path


def _socket_path(value: str, flag: str) -> str:
    path = _new_file(value, flag)
    if len(os.fsencode(path)) > 107:
        raise usage.UsageError(f"{flag} {value!r} is longer than a UNIX socket path may be (107 bytes)")
    return path


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
    this alone (L{lbproxy.startup.assembly.assemble}).

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
    admin_max_connections: int = flag("admin-max-connections", number(int, 1, 1_000_000), default=256)
    admin_read_timeout: float = flag("admin-read-timeout", number(float, 0.1, 3600), default=10.0)
    admin_write_rate: float = flag("admin-write-rate", number(float, 0, 1_000_000), default=20.0)
    dns_servers: tuple[tuple[str, int], ...] | None = flag("dns-server", lambda v, f: tuple(_dns_servers(v)))
    dns_refresh: float = flag("dns-refresh", number(float, 0.1, DAY), default=30.0)
    grace: float = flag("grace", number(float, 0, DAY), default=30.0)
    grace_spread: float = flag("grace-spread", number(float, 0, DAY), default=5.0)
    control_socket: str | None = flag("control-socket", _socket_path)
    takeover: bool = flag("takeover", lambda v, f: bool(v), default=False)
    pid_file: str | None = flag("pid-file", _new_file)
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
