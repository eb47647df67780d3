"""
The admin API: a Klein application over the config controller and the
balancer.

Reads come straight from the balancer (on the reactor thread, so always one
consistent snapshot); every change goes through
L{ConfigController.change} with one of the pure functions of
L{lbproxy.model.config}, so it is validated, made durable and applied in that
order, or refused with nothing changed.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed

import lbproxy
from lbproxy.control.store.history import Change, IConfigHistory, diff
from lbproxy.model.changes import (
    add_backend,
    remove_backend,
    replace_config,
    set_strategy,
    update_backend,
    update_settings,
)
from lbproxy.model.config import SETTINGS_FIELDS, Config
from lbproxy.model.errors import ConfigError
from lbproxy.model.parse import parse_config, parse_strategy
from lbproxy.policy.plugins import uses_weights
from lbproxy.web.auth import SAFE_METHODS, AdminPolicy
from lbproxy.web.errors import ApiError, dumps, read_json, send_json
from lbproxy.web.limits import TokenBucket, ViewCache, retry_after
from lbproxy.web.preconditions import if_match
from lbproxy.web.services import services_routes
from lbproxy.web.static import UIFiles, static_dir

log = Logger()

API = "/api/v1"
_CLIENT_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}")


def _api(handler: Callable[..., Any]) -> Callable[..., Any]:
    """
    Apply the access policy, and to changes the write rate limit, before
    an API handler runs.
    """

    @functools.wraps(handler)
    def guarded(self: "AdminApp", request: Any, *args: Any, **kwargs: Any) -> Any:
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


def _flag(request: Any, name: bytes) -> bool:
    values = request.args.get(name)
    if not values:
        return False
    value = values[-1].lower()
    if value in (b"true", b"1", b"yes"):
        return True
    if value in (b"false", b"0", b"no", b""):
        return False
    raise ApiError(400, f"?{name.decode()}= must be true or false")


class AdminApp:
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

    app = Klein()

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

    def _backend_view(self, backend_id: str, service: str | None = None) -> dict[str, Any]:
        view = self._views_of(service).view(backend_id)
        if view is None:
            raise ApiError(404, f"there is no backend {backend_id!r}")
        return view

    def _removing(self, backend_id: str, service: str | None = None) -> bool:
        b = self._balancer_of(service)
        return backend_id in b.removing and b.config.backend(backend_id) is None

    # Backends (here and per service, lbproxy.web.services) -------------------

    @app.route(API + "/backends", methods=["GET"])
    @_api
    def list_backends(self, request: Any, service: str | None = None) -> bytes:
        config = self._balancer_of(service).config
        return self._with_version(request, config.version, {"backends": self._views_of(service).views()})

    @app.route(API + "/backends", methods=["POST"])
    @_api
    async def create_backend(self, request: Any, service: str | None = None) -> bytes:
        body = read_json(request)
        new, backend = await self._change(request, lambda c: add_backend(c, body), service,
                                          summary=lambda b: f"added backend {b.id} {b.address}")
        prefix = API if service is None else f"{API}/services/{service}"
        request.setHeader(b"Location", f"{prefix}/backends/{backend.id}".encode())
        return self._with_version(request, new.version, self._backend_view(backend.id, service), 201)

    @app.route(API + "/backends/<string:backend_id>", methods=["GET"])
    @_api
    def get_backend(self, request: Any, backend_id: str, service: str | None = None) -> bytes:
        view = self._backend_view(backend_id, service)
        return self._with_version(request, self._balancer_of(service).config.version, view)

    @app.route(API + "/backends/<string:backend_id>", methods=["PATCH"])
    @_api
    async def patch_backend(self, request: Any, backend_id: str, service: str | None = None) -> bytes:
        body = read_json(request)
        if self._removing(backend_id, service):
            raise ApiError(409, f"backend {backend_id!r} is being removed and cannot be changed; "
                           "DELETE it with ?force=true to close its remaining connections")

        def mutate(config: Config) -> Any:
            try:
                return update_backend(config, backend_id, body)
            except KeyError:
                raise ApiError(404, f"there is no backend {backend_id!r}") from None

        new, backend = await self._change(request, mutate, service)
        return self._with_version(request, new.version, self._backend_view(backend.id, service))

    @app.route(API + "/backends/<string:backend_id>", methods=["DELETE"])
    @_api
    async def delete_backend(self, request: Any, backend_id: str, service: str | None = None) -> bytes:
        force = _flag(request, b"force")
        if self._removing(backend_id, service):
            return await self._close_removing(request, backend_id, force, service)

        def mutate(config: Config) -> Any:
            try:
                return remove_backend(config, backend_id), None
            except KeyError:
                raise ApiError(404, f"there is no backend {backend_id!r}") from None

        new, _ = await self._change(request, mutate, service, summary=f"removed backend {backend_id}")
        b = self._balancer_of(service)
        # With --workers the connections are in other processes: both
        # numbers are their answers, not a local count.
        active = await b.count_connections(backend_id)
        closed = (await b.close_everywhere(backend_id, "removed by operator")) if force else 0
        return self._with_version(request, new.version, {
            "id": backend_id,
            "state": "removing" if backend_id in b.removing else "removed",
            "connections": active,
            "closed": closed,
        })

    async def _close_removing(self, request: Any, backend_id: str, force: bool,
                              service: str | None = None) -> bytes:
        """
        DELETE of a backend already out of the config and draining: nothing
        to store; with C{force}, close what it still has open (with
        --workers, in the workers: a local count would be 0).
        """
        b = self._balancer_of(service)
        active = await b.count_connections(backend_id)
        closed = (await b.close_everywhere(backend_id, "removed by operator")) if force else 0
        return self._with_version(request, b.config.version, {
            "id": backend_id,
            "state": "removing" if backend_id in b.removing else "removed",
            "connections": active,
            "closed": closed,
        })

    # Strategy ------------------------------------------------------------------

    @app.route(API + "/strategies", methods=["GET"])
    @_api
    def list_strategies(self, request: Any) -> bytes:
        found = [
            {"name": name, "description": f.description, "options_schema": f.options_schema,
             "uses_weights": uses_weights(f)}
            for name, f in sorted(self.balancer.factories.items())
        ]
        return send_json(request, {"strategies": found, "active": self.balancer.config.strategy.name})

    @app.route(API + "/strategy", methods=["GET"])
    @_api
    def get_strategy(self, request: Any, service: str | None = None) -> bytes:
        config = self._balancer_of(service).config
        return self._with_version(request, config.version, config.strategy.to_json())

    @app.route(API + "/strategy", methods=["PUT"])
    @_api
    async def put_strategy(self, request: Any, service: str | None = None) -> bytes:
        try:
            choice = parse_strategy(read_json(request), "body")
        except ConfigError as e:
            raise ApiError(400, str(e)) from None
        before = self._balancer_of(service).config.strategy.name
        summary = f"strategy {before} -> {choice.name}" if before != choice.name else ""
        if summary and service is not None:
            summary = f"service {service}: {summary}"
        new, _ = await self._change(request, lambda c: (set_strategy(c, choice), None), service,
                                    summary=summary)
        return self._with_version(request, new.version, new.strategy.to_json())

    # Settings and the whole document ---------------------------------------------

    def _settings(self, config: Config) -> dict[str, Any]:
        doc = config.to_json()
        return {name: doc[name] for name in SETTINGS_FIELDS}

    @app.route(API + "/settings", methods=["GET"])
    @_api
    def get_settings(self, request: Any, service: str | None = None) -> bytes:
        config = self._balancer_of(service).config
        return self._with_version(request, config.version, self._settings(config))

    @app.route(API + "/settings", methods=["PUT", "PATCH"])
    @_api
    async def put_settings(self, request: Any, service: str | None = None) -> bytes:
        body = read_json(request)
        new, _ = await self._change(request, lambda c: (update_settings(c, body), None), service)
        return self._with_version(request, new.version, self._settings(new))

    @app.route(API + "/config", methods=["GET"])
    @_api
    def get_config(self, request: Any) -> bytes:
        config = self.balancer.config
        return self._with_version(request, config.version, config.to_json())

    @app.route(API + "/config", methods=["PUT"])
    @_api
    async def put_config(self, request: Any) -> bytes:
        try:
            imported = parse_config(read_json(request), "body")
            self.balancer.check(imported)
        except ConfigError as e:
            raise ApiError(400, str(e)) from None
        new, _ = await self._change(request, lambda c: (replace_config(c, imported), None))
        return self._with_version(request, new.version, new.to_json())

    services_routes(app, API, _api)

    # History -----------------------------------------------------------------------

    def _history(self) -> Any:
        store = self.controller.store
        if not IConfigHistory.providedBy(store):
            raise ApiError(404, "this config store keeps no history")
        return store

    @app.route(API + "/history", methods=["GET"])
    @_api
    async def get_history(self, request: Any) -> bytes:
        entries = await self._history().history()
        return send_json(request, [e.meta() for e in entries])

    async def _entry(self, version: str) -> Any:
        if not version.isdigit():
            raise ApiError(404, f"there is no version {version!r}")
        entry, previous = await self._history().entry(int(version))
        if entry is None:
            raise ApiError(404, f"version {version} is not in the history (it keeps the "
                           f"last {self._history().keep})")
        return entry, previous

    @app.route(API + "/history/<string:version>", methods=["GET"])
    @_api
    async def get_history_entry(self, request: Any, version: str) -> bytes:
        entry, previous = await self._entry(version)
        body = entry.meta()
        body["document"] = entry.document
        if previous is not None:
            body["previous"], body["diff"] = previous.version, diff(previous.document, entry.document)
        elif entry.changes is not None:
            # The version before is no longer kept: the diff made when this one was stored.
            body["previous"], body["diff"] = entry.version - 1, entry.changes
        else:
            body["previous"], body["diff"] = None, diff(None, entry.document)
        return send_json(request, body)

    @app.route(API + "/history/<string:version>/rollback", methods=["POST"])
    @_api
    async def rollback(self, request: Any, version: str) -> bytes:
        entry, _ = await self._entry(version)
        from lbproxy.model.service import Document, parse_document
        from lbproxy.web.services import change_document

        try:
            old = parse_document(entry.document, f"version {entry.version}")
            self.controller.table.check(old)
        except ConfigError as e:
            raise ApiError(409, f"version {entry.version} cannot be put back in force: {e}") from None
        new, _ = await change_document(
            self, request, lambda d: (Document(d.version + 1, old.services), None),
            note=Change(self._who(request), f"rolled back to version {entry.version}"),
        )
        return self._with_version(request, new.version, new.to_json())

    # Status ------------------------------------------------------------------------

    @app.route(API + "/status", methods=["GET"])
    @_api
    async def status(self, request: Any) -> bytes:
        config = self.balancer.config
        now = self.clock.seconds()
        body: dict[str, Any] = {
            "lbproxy": lbproxy.__version__,
            "node": self.node,
            "started": self.started,
            "uptime": now - self.started,
            "config_version": config.version,
            "strategy": config.strategy.name,
            "backends": len(config.backends),
            "active_connections": self.balancer.totals.active,
            "feed_subscribers": self.feed.subscriber_count,
            "auth": {
                "token": self.policy.token is not None,
                "open_reads": self.policy.token is None or self.policy.open_reads,
            },
        }
        store = getattr(self.controller, "store", None)
        providers = list(self._status_providers)
        if store is not None and callable(getattr(store, "status", None)):
            providers.insert(0, lambda: {"store": store.status()})
        elif store is not None:
            body["store"] = {"kind": type(store).__name__}
        for provider in providers:
            try:
                extra = await defer.maybeDeferred(provider)
            except Exception as e:
                log.failure("status provider {provider!r} failed", provider=provider)
                body.setdefault("status_errors", []).append(str(e) or type(e).__name__)
                continue
            body.update(extra or {})
        return send_json(request, body)

    # Watching ----------------------------------------------------------------------

    @app.route(API + "/stats", methods=["GET"])
    @_api
    def get_stats(self, request: Any) -> bytes:
        return send_json(request, self.stats.snapshot())

    @app.route(API + "/stats/history", methods=["GET"])
    @_api
    def get_stats_history(self, request: Any) -> bytes:
        return send_json(request, self.stats.history())

    def _stats_of(self, name: str) -> Any:
        sampler = self.service_stats.of(name) if self.service_stats is not None else None
        if sampler is None:
            raise ApiError(404, f"there is no service {name!r}")
        return sampler

    @app.route(API + "/services/<string:name>/stats", methods=["GET"])
    @_api
    def get_service_stats(self, request: Any, name: str) -> bytes:
        return send_json(request, self._stats_of(name).snapshot())

    @app.route(API + "/services/<string:name>/stats/history", methods=["GET"])
    @_api
    def get_service_stats_history(self, request: Any, name: str) -> bytes:
        return send_json(request, self._stats_of(name).history())

    @app.route(API + "/events", methods=["GET"])
    @_api
    def events(self, request: Any) -> Any:
        return self.feed.open(request)

    @app.route("/metrics", methods=["GET"])
    @_api
    def metrics(self, request: Any) -> bytes:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)

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
