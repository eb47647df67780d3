"""
What every route of the admin API shares: the one Klein app they are
added to, the C{/api/v1} prefix, the guard each API handler runs behind
and the parsing of boolean query flags.

The routes are written in groups (L{lbproxy.web.pool_routes},
L{lbproxy.web.history_routes}, L{lbproxy.web.watch_routes},
L{lbproxy.web.services}) that L{lbproxy.web.app.AdminApp} composes; they
all add to L{routes}, the app's class-level Klein, so one URL map answers
for all of them (405s, extension names, C{openapi.json}).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from klein import Klein

from lbproxy.web.auth import SAFE_METHODS
from lbproxy.web.errors import ApiError
from lbproxy.web.limits import retry_after

API = "/api/v1"

#: The admin API's Klein app (L{lbproxy.web.app.AdminApp.app}).
routes = Klein()


def guarded(handler: Callable[..., Any]) -> Callable[..., Any]:
    """
    Apply the access policy, and to changes the write rate limit, before
    an API handler runs.
    """

    @functools.wraps(handler)
    def guarded(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        self.policy.check(request)
        if request.method not in SAFE_METHODS:
            wait = self.writes.take()
            if wait:
                raise ApiError(
                    429, f"too many changes: at most {self.writes.rate:g} a second "
                    f"(bursts of {self.writes.burst:g}); retry later",
                    headers={"Retry-After": retry_after(wait)},
                )
        return handler(self, request, *args, **kwargs)

    return guarded


def query_flag(request: Any, name: bytes) -> bool:
    values = request.args.get(name)
    if not values:
        return False
    value = values[-1].lower()
    if value in (b"true", b"1", b"yes"):
        return True
    if value in (b"false", b"0", b"no", b""):
        return False
    raise ApiError(400, f"?{name.decode()}= must be true or false")
