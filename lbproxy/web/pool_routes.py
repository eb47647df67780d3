"""
The admin API's routes of one pool: its backends, strategy and settings,
and the whole one-pool document (C{/api/v1/config}).

Without a service name they mean the main service; L{lbproxy.web.services}
serves the same handlers under C{/api/v1/services/{name}/...}.  Every
change goes through L{lbproxy.web.app.AdminApp._change} with a pure
function of L{lbproxy.model.changes}, so it is validated, made durable and
applied in that order, or refused with nothing changed.
"""

from __future__ import annotations

from typing import Any

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
from lbproxy.web.errors import ApiError, read_json, send_json
from lbproxy.web.routing import API, guarded, query_flag, routes


class PoolRoutes:
    """
    The pool routes, mixed into L{lbproxy.web.app.AdminApp} (whose
    C{_balancer_of}, C{_views_of}, C{_change} and C{_with_version} they use).
    """

    def _backend_view(self, backend_id: str, service: str | None = None) -> dict[str, Any]:
        view = self._views_of(service).view(backend_id)
        if view is None:
            raise ApiError(404, f"there is no backend {backend_id!r}")
        return view

    def _removing(self, backend_id: str, service: str | None = None) -> bool:
        b = self._balancer_of(service)
        return backend_id in b.removing and b.config.backend(backend_id) is None


    @routes.route(API + "/backends", methods=["GET"])
    @guarded
    def list_backends(self, request: Any, service: str | None = None) -> bytes:
        config = self._balancer_of(service).config
        return self._with_version(request, config.version, {"backends": self._views_of(service).views()})

    @routes.route(API + "/backends", methods=["POST"])
    @guarded
    async def create_backend(self, request: Any, service: str | None = None) -> bytes:
        body = read_json(request)
        new, backend = await self._change(request, lambda c: add_backend(c, body), service,
                                          summary=lambda b: f"added backend {b.id} {b.address}")
        prefix = API if service is None else f"{API}/services/{service}"
        request.setHeader(b"Location", f"{prefix}/backends/{backend.id}".encode())
        return self._with_version(request, new.version, self._backend_view(backend.id, service), 201)

    @routes.route(API + "/backends/<string:backend_id>", methods=["GET"])
    @guarded
    def get_backend(self, request: Any, backend_id: str, service: str | None = None) -> bytes:
        view = self._backend_view(backend_id, service)
        return self._with_version(request, self._balancer_of(service).config.version, view)

    @routes.route(API + "/backends/<string:backend_id>", methods=["PATCH"])
    @guarded
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

    @routes.route(API + "/backends/<string:backend_id>", methods=["DELETE"])
    @guarded
    async def delete_backend(self, request: Any, backend_id: str, service: str | None = None) -> bytes:
        force = query_flag(request, b"force")
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

    @routes.route(API + "/strategies", methods=["GET"])
    @guarded
    def list_strategies(self, request: Any) -> bytes:
        found = [
            {"name": name, "description": f.description, "options_schema": f.options_schema,
             "uses_weights": uses_weights(f)}
            for name, f in sorted(self.balancer.factories.items())
        ]
        table = getattr(self.controller, "table", None)
        main = table.main() if table is not None else self.balancer
        # The plugins are the process's; "active" is the main service's
        # choice, and null when there is none (no default, nor only one).
        active = main.config.strategy.name if main is not None else None
        return send_json(request, {"strategies": found, "active": active})

    @routes.route(API + "/strategy", methods=["GET"])
    @guarded
    def get_strategy(self, request: Any, service: str | None = None) -> bytes:
        config = self._balancer_of(service).config
        return self._with_version(request, config.version, config.strategy.to_json())

    @routes.route(API + "/strategy", methods=["PUT"])
    @guarded
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

    @routes.route(API + "/settings", methods=["GET"])
    @guarded
    def get_settings(self, request: Any, service: str | None = None) -> bytes:
        config = self._balancer_of(service).config
        return self._with_version(request, config.version, self._settings(config))

    @routes.route(API + "/settings", methods=["PUT", "PATCH"])
    @guarded
    async def put_settings(self, request: Any, service: str | None = None) -> bytes:
        body = read_json(request)
        new, _ = await self._change(request, lambda c: (update_settings(c, body), None), service)
        return self._with_version(request, new.version, self._settings(new))

    @routes.route(API + "/config", methods=["GET"])
    @guarded
    def get_config(self, request: Any) -> bytes:
        config = self._balancer_of(None).config
        return self._with_version(request, config.version, config.to_json())

    @routes.route(API + "/config", methods=["PUT"])
    @guarded
    async def put_config(self, request: Any) -> bytes:
        balancer = self._balancer_of(None)
        try:
            imported = parse_config(read_json(request), "body")
            balancer.check(imported)
        except ConfigError as e:
            raise ApiError(400, str(e)) from None
        new, _ = await self._change(request, lambda c: (replace_config(c, imported), None))
        return self._with_version(request, new.version, new.to_json())
