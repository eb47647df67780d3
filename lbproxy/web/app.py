"""
The admin API: a Klein application over the config controller and the
balancer.

L{AdminApp} holds the state every route needs and composes the route
groups: the pool's (L{lbproxy.web.pool_routes}), the services'
(L{lbproxy.web.services}), the history's (L{lbproxy.web.history_routes})
and watching (L{lbproxy.web.watch_routes}); here are what they share
(finding a service's balancer, running a change through the controller)
and what belongs to the whole site: extensions, C{openapi.json}, the UI and
error answers.  Reads come straight from the balancer (on the reactor
thread, so always one consistent snapshot); every change goes through
L{ConfigController.change}, so it is validated, made durable and applied in
that order, or refused with nothing changed.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from klein import Klein
from twisted.logger import Logger
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from lbproxy.control.store.history import Change
from lbproxy.model.config import Config
from lbproxy.model.errors import ConfigError
from lbproxy.web.auth import AdminPolicy
from lbproxy.web.errors import ApiError, dumps, send_json
from lbproxy.web.history_routes import HistoryRoutes
from lbproxy.web.limits import TokenBucket, ViewCache
from lbproxy.web.pool_routes import PoolRoutes
from lbproxy.web.preconditions import if_match
from lbproxy.web.routing import API, guarded, routes
from lbproxy.web.services import services_routes
from lbproxy.web.static import UIFiles, static_dir
from lbproxy.web.watch_routes import WatchRoutes

log = Logger()

_CLIENT_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}")


class AdminApp(PoolRoutes, HistoryRoutes, WatchRoutes):
    """
    The admin API, the SSE feed, C{/metrics} and the web UI of one
    balancer.

    Serve C{AdminApp(...).app.resource()} under a L{twisted.web.server.Site}.

    Extensions: other modules add routes under C{/api/v1/<name>/...} by
    passing C{extensions={"demo": resource}} or calling
    L{add_extension}.  An extension is an L{IResource} or anything with a
    C{resource()} method (a Klein app); it gets the request with the
    C{/api/v1/<name>} prefix consumed, after the same access policy as the
    built-in endpoints (token for reads unless open, token plus same-origin
    plus a JSON content type for anything but C{GET}/C{HEAD}).  Names of
    built-in endpoints cannot be taken.

    Status: C{GET /api/v1/status} merges the dicts returned by each status
    provider (a callable with no arguments returning a dict or a Deferred of
    one), added with C{status_providers=} or L{add_status_provider}; a
    config store with a C{status()} method contributes C{{"store": ...}}.
    A store with C{watch_status(callback)} (etcd) also gets a C{store}
    event on the feed each time its availability or node list changes.

    @ivar controller: the L{lbproxy.control.controller.ConfigController} every change
        goes through.
    @ivar balancer: the L{lbproxy.policy.balancer.Balancer} reads come from.
    @ivar policy: the L{AdminPolicy} for every API request.
    @ivar stats: the L{lbproxy.policy.stats.StatsSampler} behind C{/api/v1/stats}.
    @ivar feed: the L{lbproxy.web.sse.EventFeed} behind C{/api/v1/events}.
    @ivar writes: the L{TokenBucket} every change takes a token from
        (C{write_rate} a second, bursts of C{write_burst}, default twice the
        rate; a rate of C{0} is no limit).
    @ivar views: the L{ViewCache} reads of backends come from.
    """

    app = routes

    def __init__(
        self,
        controller: Any,
        balancer: Any = None,
        *,
        policy: AdminPolicy | None = None,
        stats: Any = None,
        feed: Any = None,
        extensions: Mapping[str, Any] | None = None,
        status_providers: tuple[Callable[[], Any], ...] = (),
        node: str | None = None,
        static: Any = None,
        clock: Any = None,
        write_rate: float = 20.0,
        write_burst: float | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        from lbproxy.policy.stats import StatsSampler
        from lbproxy.web.metrics import metrics_registry
        from lbproxy.web.sse import EventFeed

        self.controller = controller
        self.balancer = balancer if balancer is not None else controller.balancer
        self.policy = policy if policy is not None else AdminPolicy()
        self.clock = clock
        self.stats = stats if stats is not None else StatsSampler(self.balancer, clock)
        from lbproxy.policy.stats import ServiceStats

        table = getattr(controller, "table", None)
        #: every service's sampler (C{/api/v1/services/{name}/stats}), sampled with L{stats}.
        self.service_stats = (ServiceStats(table, self.stats)
                              if table is not None and hasattr(self.stats, "followers") else None)
        self.feed = feed if feed is not None else EventFeed(self.balancer, self.stats, clock,
                                                            table=table, service_stats=self.service_stats)
        # The feed's config events: the bus is one of the controller's observers.
        controller.observe(self.balancer.events)
        self.writes = TokenBucket(write_rate, write_burst, clock)
        self.views = ViewCache(self.balancer, clock)
        self._service_views: dict[str, ViewCache] = {}
        self.registry = metrics_registry(
            self.balancer, self.feed, self.views.views, getattr(controller, "table", None)
        )
        from lbproxy.web.metrics import TLSCollector

        self.registry.register(TLSCollector(lambda: getattr(controller, "listeners", None), self.clock))
        self.node = node
        self.started = clock.seconds()
        self.static = static if static is not None else static_dir()
        self._extensions: dict[str, IResource] = {}
        self._extension_docs: dict[str, Callable[[], dict[str, Any]]] = {}
        for name, ext in (extensions or {}).items():
            self.add_extension(name, ext)
        self._status_providers = list(status_providers)
        store = getattr(controller, "store", None)
        if callable(getattr(store, "watch_status", None)):
            store.watch_status(self._store_changed)

    def _store_changed(self, change: str) -> None:
        # No request carries availability (it changes when etcd comes and
        # goes), so the feed does: the UI then needs no polling.
        store = self.controller.store
        self.balancer.events.publish("store", {"change": change, "node": self.node, "store": store.status()})

    def resource(self) -> IResource:
        return self.app.resource()

    def add_extension(self, name: str, extension: Any) -> None:
        """
        Mount C{extension} under C{/api/v1/<name>}.  If it has an
        C{openapi_paths()} method (sub-path -> OpenAPI path item), its routes
        join the served C{openapi.json}.

        @raise ValueError: if C{name} is a built-in endpoint or taken.
        """
        if name in _builtin_names() or name in self._extensions or not name.replace("-", "").isalnum():
            raise ValueError(f"cannot mount an extension at {API}/{name}")
        paths = getattr(extension, "openapi_paths", None)
        if callable(paths):
            self._extension_docs[name] = paths
        if not IResource.providedBy(extension):
            extension = extension.resource()
        self._extensions[name] = extension

    def add_status_provider(self, provider: Callable[[], Any]) -> None:
        self._status_providers.append(provider)

    # Helpers ---------------------------------------------------------------

    def _with_version(self, request: Any, version: int, body: dict[str, Any], code: int = 200) -> bytes:
        request.setHeader(b"ETag", f'"{version}"'.encode())
        body["version"] = version
        return send_json(request, body, code)

    def _balancer_of(self, service: str | None) -> Any:
        """
        The balancer of a service by name; C{None}: the main one, which the
        top-level routes mean.

        @raise ApiError: 404 if there is no such service.
        """
        table = getattr(self.controller, "table", None)
        if service is None:
            if table is None:
                return self.balancer
            found = table.main()
            if found is None:
                raise ApiError(404, "there is no service 'default' (nor only one): use /api/v1/services/NAME/...")
            return found
        found = table.balancer(service) if table is not None else None
        if found is None:
            raise ApiError(404, f"there is no service {service!r}")
        return found

    def _views_of(self, service: str | None) -> ViewCache:
        balancer = self._balancer_of(service)
        if balancer is self.balancer:
            return self.views
        service = balancer.config.name
        cache = self._service_views.get(service)
        if cache is None or cache.balancer is not balancer:
            cache = self._service_views[service] = ViewCache(balancer, self.clock)
        return cache

    def _who(self, request: Any) -> str:
        """
        Who makes a change, for the history: the token's label and the
        client's C{X-LBProxy-Client} (C{ui}, C{cli}), e.g. C{alice/ui}, and
        in cluster mode the node that took it (C{alice/ui@node2}).
        """
        label = getattr(self.policy, "label", None)
        client = (request.getHeader(b"x-lbproxy-client") or b"").decode("latin-1").strip().lower()
        if not _CLIENT_NAME.fullmatch(client):
            client = ""
        who = "/".join(p for p in (label, client) if p) or "api"
        return f"{who}@{self.node}" if self.node else who

    async def _change(
        self, request: Any, mutate: Callable[[Config], Any], service: str | None = None,
        summary: Any = "",
    ) -> tuple[Config, Any]:
        """
        @param summary: the one line the history shows, or a function of
            the mutation's result giving it; C{""}: computed from the diff.
        """
        condition = if_match(request)
        balancer = self._balancer_of(service)
        try:
            # Bad input is refused as such even with a stale If-Match (RFC
            # 9110 13.2.1); the change itself reruns against the config in
            # force when its turn comes.
            new, _ = mutate(balancer.config)
            balancer.check(new)
        except ConfigError as e:
            raise ApiError(400, str(e)) from None
        expected = condition.expected(balancer.config.version)
        from lbproxy.web.services import answer_change

        kwargs = {} if service is None else {"service": service}
        pending = self.controller.change(mutate, expected, Change(self._who(request), summary), **kwargs)
        return await answer_change(pending, expected, missing=service or "default")

    services_routes(app, API, guarded)

    @app.route(API + "/openapi.json", methods=["GET"])
    def openapi(self, request: Any) -> bytes:
        from lbproxy.web.openapi import openapi_document

        doc = openapi_document()
        for name, paths in self._extension_docs.items():
            for sub, item in paths().items():
                doc["paths"][f"{API}/{name}{sub}"] = item
        return send_json(request, doc)

    # Extensions and the UI -----------------------------------------------------------

    @app.route(API + "/<string:name>/", endpoint="extension_root")
    @app.route(API + "/<string:name>", branch=True)
    def extension(self, request: Any, name: str) -> Any:
        ext = self._extensions.get(name)
        if ext is None:
            allowed = _allowed_methods(self.app, request.path.decode("utf-8", "replace"))
            if allowed:
                raise MethodNotAllowed(valid_methods=allowed)
            raise ApiError(404, f"there is no endpoint {request.path.decode('latin-1')!r}")
        self.policy.check(request)
        return ext

    @app.route("/", branch=True)
    def ui(self, request: Any) -> Any:
        if request.path.startswith(b"/api/") or request.path == b"/api":
            raise ApiError(404, f"there is no endpoint {request.path.decode('latin-1')!r}")
        if request.method not in (b"GET", b"HEAD"):
            raise MethodNotAllowed(valid_methods=["GET", "HEAD"])
        if not self.static.is_dir():
            raise ApiError(404, f"the web UI is not installed (no directory {str(self.static)!r})")
        return UIFiles(str(self.static))

    # Errors ------------------------------------------------------------------------------

    @app.handle_errors(Exception)
    def error(self, request: Any, failure: Any) -> bytes:
        e = failure.value
        if isinstance(e, ApiError):
            for name, value in e.headers.items():
                request.setHeader(name.encode(), value.encode())
            return send_json(request, e.body(), e.code)
        if isinstance(e, HTTPException):
            if isinstance(e, MethodNotAllowed) and e.valid_methods:
                request.setHeader(b"Allow", ", ".join(e.valid_methods).encode())
            return send_json(request, {"error": f"{e.name}: {e.description}"}, e.code or 500)
        log.failure("admin API request {method} {path} failed", failure,
                    method=request.method, path=request.path)
        return send_json(request, {"error": "internal error; the server log has the details"}, 500)


def _allowed_methods(app: Klein, path: str) -> list[str]:
    """
    The methods the built-in routes allow at C{path} (the catch-all
    branches for extensions and the UI take any method, so ask a map
    without them).
    """
    from werkzeug.exceptions import NotFound
    from werkzeug.routing import Map, Rule

    fixed = Map([Rule(r.rule, methods=r.methods, endpoint=r.endpoint)
                 for r in app.url_map.iter_rules() if r.methods and "__rest__" not in r.rule
                 and "<string:name>" not in r.rule])
    try:
        fixed.bind("").match(path, method="--")
    except MethodNotAllowed as e:
        return sorted(e.valid_methods or ())
    except NotFound:
        return []
    return []


def _builtin_names() -> set[str]:
    names = set()
    for rule in AdminApp.app.url_map.iter_rules():
        if rule.rule.startswith(API + "/"):
            head = rule.rule[len(API) + 1:].split("/", 1)[0]
            if not head.startswith("<"):
                names.add(head)
    return names


__all__ = ["AdminApp", "dumps"]
