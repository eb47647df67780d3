"""
The admin site: JSON API, event feed, metrics and the web UI, on Klein.
"""

from __future__ import annotations

import re
from typing import Any

from lbproxy.web.auth import AdminPolicy

__all__ = ["AdminApp", "AdminPolicy", "admin_service", "admin_site", "static_dir"]


def __getattr__(name: str) -> Any:
    # Klein imports the global reactor and twisted.web is heavy: the command
    # line (which only needs lbproxy.web.auth) must not pay for them.
    if name == "AdminApp":
        from lbproxy.web.app import AdminApp

        return AdminApp
    if name == "static_dir":
        from lbproxy.web.static import static_dir

        return static_dir
    raise AttributeError(name)


def redact(uri: bytes) -> bytes:
    """
    C{uri} with the value of every C{access_token} query parameter replaced
    by C{REDACTED}.  Names are decoded as the request's C{args} decode them
    (C{+} and C{%XX}, C{&} or C{;} between pairs), so no spelling that the
    token check accepts shows the token.
    """
    from urllib.parse import unquote_to_bytes

    path, sep, query = uri.partition(b"?")
    if not sep:
        return uri
    parts = re.split(rb"([&;])", query)
    for i in range(0, len(parts), 2):
        name, eq, _ = parts[i].partition(b"=")
        if eq and unquote_to_bytes(name.replace(b"+", b" ")).lower() == b"access_token":
            parts[i] = name + b"=REDACTED"
    return path + sep + b"".join(parts)


class _Redacted:
    """A request as the access log sees it: URI and Referer redacted."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self.uri = redact(request.uri)

    def getHeader(self, name: bytes) -> Any:
        value = self._request.getHeader(name)
        return redact(value) if value and name.lower() == b"referer" else value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _redacting_formatter(timestamp: str, request: Any) -> str:
    from twisted.web.http import combinedLogFormatter

    return combinedLogFormatter(timestamp, _Redacted(request))


def admin_site(app: Any, **limits: Any) -> Any:
    """
    The L{lbproxy.web.site.AdminSite} for C{app}: no traceback pages, access
    log lines with any C{access_token} query parameter redacted, requests
    checked from their headers, and the connection and time limits
    (C{max_connections=}, C{read_timeout=}, C{reactor=}).
    """
    from lbproxy.web.site import AdminSite

    return AdminSite(app, logFormatter=_redacting_formatter, **limits)


def admin_service(spec: Any, controller: Any, balancer: Any, reactor: Any = None) -> tuple[Any, list[Any]]:
    """
    The admin site of L{lbproxy.startup.spec.ProxySpec} C{spec}: the L{AdminApp}
    (where other parts mount extensions or add status providers) and the
    services that run it while the application runs: the stats sampler and
    the listener on C{spec.admin}, named C{admin}.

    @return: C{(app, services)}.
    """
    if reactor is None:
        from twisted.internet import reactor
    from twisted.application.service import Service

    from lbproxy.listening.listener_services import ListenerService
    from lbproxy.web.app import AdminApp
    from lbproxy.web.site import MAX_CONNECTIONS, READ_TIMEOUT

    hosts = list(spec.admin_hosts)
    if spec.etcd_endpoints:
        import socket

        # The name other nodes' UIs link to for a wildcard --admin
        # (lbproxy.control.cluster.admin_url).
        hosts.append(socket.gethostname().lower())
    policy = AdminPolicy(spec.admin_token, spec.admin_open_reads, hosts=hosts)
    policy.label = getattr(spec, "admin_token_label", None)  # the history's author
    app = AdminApp(controller, balancer, policy=policy, clock=reactor, node=spec.node,
                   write_rate=spec.admin_write_rate)

    class _Lifecycle(Service):
        def startService(self) -> None:
            super().startService()
            app.stats.start()

        def stopService(self) -> Any:
            app.stats.stop()
            app.feed.close()
            return super().stopService()

    site = admin_site(
        app, reactor=reactor,
        max_connections=spec.admin_max_connections,
        read_timeout=spec.admin_read_timeout,
    )
    listener = ListenerService(
        spec.admin, site, spec.admin.backlog or 50, "admin API and UI", reactor
    )
    listener.setName("admin")
    return app, [_Lifecycle(), listener]
