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


def admin_service(options: Any, top: Any, reactor: Any = None) -> Any:
    """
    Add the admin site to C{top} (the service tree of L{lbproxy.tap}): the
    listener on C{--admin} and the stats sampler, which run while the
    application runs.  The app is C{top.admin}, so other parts can mount
    extensions or add status providers.

    @param options: the parsed L{lbproxy.tap.Options}.
    @param top: the L{MultiService} with C{.balancer} and C{.controller}.
    @return: the L{AdminApp}.
    """
    if reactor is None:
        from twisted.internet import reactor
    from twisted.application.internet import StreamServerEndpointService
    from twisted.application.service import Service
    from twisted.internet.endpoints import serverFromString

    from lbproxy.web.app import AdminApp
    from lbproxy.web.site import MAX_CONNECTIONS, READ_TIMEOUT

    hosts = list(options.get("admin-hosts") or ())
    if options.get("etcd-endpoints"):
        import socket

        # The name other nodes' UIs link to for a wildcard --admin
        # (lbproxy.control.cluster.admin_url).
        hosts.append(socket.gethostname().lower())
    policy = AdminPolicy(options.get("admin-token"), bool(options.get("admin-open-reads")), hosts=hosts)
    app = AdminApp(top.controller, top.balancer, policy=policy, clock=reactor, node=options.get("node"),
                   write_rate=float(options.get("admin-write-rate", 20.0)))

    class _Lifecycle(Service):
        def startService(self) -> None:
            super().startService()
            app.stats.start()

        def stopService(self) -> Any:
            app.stats.stop()
            app.feed.close()
            return super().stopService()

    _Lifecycle().setServiceParent(top)
    site = admin_site(
        app, reactor=reactor,
        max_connections=int(options.get("admin-max-connections", MAX_CONNECTIONS)),
        read_timeout=float(options.get("admin-read-timeout", READ_TIMEOUT)),
    )
    service = StreamServerEndpointService(serverFromString(reactor, options["admin"]), site)
    service._raiseSynchronously = True
    service.setName("admin")
    service.setServiceParent(top)
    top.admin = app
    return app
