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


def admin_service(spec: Any, controller: Any, balancer: Any, reactor: Any = None) -> tuple[Any, list[Any]]:
    """
    The admin site of L{lbproxy.tap.ProxySpec} C{spec}: the L{AdminApp}
    (where other parts mount extensions or add status providers) and the
    services that run it while the application runs: the stats sampler and
    the listener on C{spec.admin}, named C{admin}.

    @return: C{(app, services)}.
    """
    if reactor is None:
        from twisted.internet import reactor
    from twisted.application.service import Service

    from lbproxy.endpoints import ListenerService
    from lbproxy.web.app import AdminApp

    policy = AdminPolicy(spec.admin_token, spec.admin_open_reads)
    app = AdminApp(controller, balancer, policy=policy, clock=reactor, node=spec.node)

    class _Lifecycle(Service):
        def startService(self) -> None:
            super().startService()
            app.stats.start()

        def stopService(self) -> Any:
            app.stats.stop()
            app.feed.close()
            return super().stopService()

    listener = ListenerService(
        spec.admin, admin_site(app), spec.admin.backlog or 50, "admin API and UI", reactor
    )
    listener.setName("admin")
    return app, [_Lifecycle(), listener]
