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


def _redacting_formatter(timestamp: str, request: Any) -> str:
    from twisted.web.http import combinedLogFormatter

    line = combinedLogFormatter(timestamp, request)
    return re.sub(r"access_token=[^&\s\"]*", "access_token=REDACTED", line)


def admin_site(app: Any) -> Any:
    """
    A L{twisted.web.server.Site} for C{app}: no traceback pages, and access
    log lines with any C{access_token} query parameter redacted.
    """
    from twisted.web.server import Site

    site = Site(app.resource(), logFormatter=_redacting_formatter)
    site.displayTracebacks = False
    site.noisy = False
    return site


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

    policy = AdminPolicy(options.get("admin-token"), bool(options.get("admin-open-reads")))
    app = AdminApp(top.controller, top.balancer, policy=policy, clock=reactor, node=options.get("node"))

    class _Lifecycle(Service):
        def startService(self) -> None:
            super().startService()
            app.stats.start()

        def stopService(self) -> Any:
            app.stats.stop()
            app.feed.close()
            return super().stopService()

    _Lifecycle().setServiceParent(top)
    service = StreamServerEndpointService(serverFromString(reactor, options["admin"]), admin_site(app))
    service._raiseSynchronously = True
    service.setName("admin")
    service.setServiceParent(top)
    top.admin = app
    return app
