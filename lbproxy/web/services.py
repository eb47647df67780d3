"""
The admin API's services: C{/api/v1/services} and, per service, the
backends, strategy and settings routes of the top level.

The top-level routes mean the main service (C{default}, else the only
one); C{/api/v1/services/{name}/...} take the same bodies and give the
same answers, ETags and errors for any service.  A change of a service
itself (added, replaced, removed) is a change of the document: a new
listen endpoint is bound before the document is stored, so a taken port
is a 409 and an address not on this host a 400, with nothing changed.
"""

from __future__ import annotations

from typing import Any, Callable

from lbproxy.model.errors import ConfigError, StoreError, VersionConflict
from lbproxy.model.service import add_service, apply_services, remove_service, service_json, update_service
from lbproxy.web.errors import ApiError, read_json


def service_view(app: Any, name: str) -> dict[str, Any]:
    """
    A service as C{GET /api/v1/services/{name}} shows it: its config plus
    where it listens and how many connections it has.
    """
    controller = app.controller
    config = controller.document.service(name)
    if config is None:
        raise ApiError(404, f"there is no service {name!r}")
    view = service_json(config)
    balancer = controller.table.balancer(name)
    listeners = getattr(controller, "listeners", None)
    view["listening"] = [f"{h}:{p}" for h, p in listeners.addresses(name)] if listeners else []
    view["active_connections"] = balancer.totals.active if balancer else 0
    # Traffic control's counters (refused by reason, the queue, the client table).
    view["traffic"] = balancer.traffic_state.view() if balancer is not None else None
    if config.tls is not None and listeners is not None:
        # What is served now: subject, names, issuer, fingerprint, expiry (never a key).
        now = app.clock.seconds()
        view["tls_certificates"] = [
            {**info, "expires_in": info["not_after"] - now} for info in listeners.tls.info(name)
        ]
    return view


def note(app: Any, request: Any, summary: str, *names: Any) -> Any:
    """
    The history's note of a change: who made it (the token's label and
    the client) and C{summary} naming the service.
    """
    from lbproxy.control.store.history import Change

    return Change(app._who(request), summary.format(*names))


async def change_document(app: Any, request: Any, mutate: Callable[[Any], Any], note: Any = None) -> tuple[Any, Any]:
    """
    Run a change of the document through the controller, mapping its
    refusals to API errors (the same as a change of one pool, plus a
    listen endpoint that cannot be bound).
    """
    from lbproxy.web.preconditions import if_match

    condition = if_match(request)
    controller = app.controller
    try:
        new, _ = mutate(controller.document)
        controller.table.check(new)
        if controller.listeners is not None:
            controller.listeners.check(new)
    except ConfigError as e:
        raise ApiError(400, str(e)) from None
    expected = condition.expected(controller.document.version)
    return await answer_change(controller.change_document(mutate, expected, note), expected)


async def answer_change(pending: Any, expected: int | None, missing: str | None = None) -> Any:
    """
    The outcome of a change under way (the controller's Deferred), with
    its refusals as API errors: one mapping for a change of one pool and
    of the document.

    @param missing: the service the change names, if a C{KeyError} means
        it does not exist (404).
    """
    from lbproxy.control.listeners import ListenRefused

    try:
        return await pending
    except ListenRefused as e:
        raise ApiError(e.status, f"{e}; nothing changed") from None
    except KeyError:
        if missing is None:
            raise
        raise ApiError(404, f"there is no service {missing!r}") from None
    except VersionConflict as e:
        code = 412 if expected is not None else 409
        raise ApiError(code, str(e), current_version=e.current) from None
    except StoreError as e:
        raise ApiError(507, f"the change was not saved, so nothing changed: {e}") from None
    except ConfigError as e:
        raise ApiError(400, str(e)) from None


def services_routes(app: Any, API: str, guard: Callable[..., Any]) -> None:
    """
    Add the services routes to the L{lbproxy.web.app.AdminApp}'s Klein
    C{app} (called in its class body).
    """
    base = API + "/services"

    @app.route(base, methods=["GET"])
    @guard
    def list_services(self: Any, request: Any) -> bytes:
        document = self.controller.document
        views = [service_view(self, name) for name in document.names]
        return self._with_version(request, document.version, {"services": views})

    @app.route(base, methods=["POST"])
    @guard
    async def create_service(self: Any, request: Any) -> bytes:
        body = read_json(request)
        name = body.get("name") if isinstance(body, dict) else None
        new, service = await change_document(self, request, lambda d: add_service(d, body),
                                             note(self, request, "added service {}", name))
        request.setHeader(b"Location", f"{base}/{service.name}".encode())
        return self._with_version(request, new.version, service_view(self, service.name), 201)

    @app.route(base, methods=["PATCH"])
    @guard
    async def apply_services_route(self: Any, request: Any) -> bytes:
        # lbproxyctl apply: the named services replaced or added as one
        # version, refused whole; a batch that changes nothing makes none.
        from lbproxy.control.store.history import Change
        from lbproxy.web.preconditions import if_match

        condition = if_match(request)  # a malformed header is refused before the body is read
        body = read_json(request)
        controller = self.controller
        try:
            _, applied = apply_services(controller.document, body)
        except ConfigError as e:
            raise ApiError(400, str(e)) from None
        if applied.created or applied.replaced:
            new, applied = await change_document(
                self, request, lambda d: apply_services(d, body),
                Change(self._who(request), lambda result: result.summary()))
        else:
            new = controller.document
            expected = condition.expected(new.version)
            if expected is not None and expected != new.version:
                raise ApiError(412, str(VersionConflict(expected, new.version)), current_version=new.version)
        return self._with_version(request, new.version, {
            "created": list(applied.created), "replaced": list(applied.replaced),
            "unchanged": list(applied.unchanged),
            "services": [{**service_view(self, s["name"]), "version": new.version} for s in body["services"]],
        })

    @app.route(base + "/<string:name>", methods=["GET"])
    @guard
    def get_service(self: Any, request: Any, name: str) -> bytes:
        return self._with_version(request, self.controller.document.version, service_view(self, name))

    def _update(whole: bool) -> Callable[..., Any]:
        async def update(self: Any, request: Any, name: str) -> bytes:
            body = read_json(request)

            def mutate(document: Any) -> Any:
                try:
                    return update_service(document, name, body, whole)
                except KeyError:
                    raise ApiError(404, f"there is no service {name!r}") from None

            # No summary: the history computes one from the diff.
            new, _ = await change_document(self, request, mutate, note(self, request, ""))
            return self._with_version(request, new.version, service_view(self, name))

        return update

    put_service = _update(True)
    put_service.__name__ = "put_service"
    app.route(base + "/<string:name>", methods=["PUT"])(guard(put_service))
    patch_service = _update(False)
    patch_service.__name__ = "patch_service"
    app.route(base + "/<string:name>", methods=["PATCH"])(guard(patch_service))

    @app.route(base + "/<string:name>", methods=["DELETE"])
    @guard
    async def delete_service(self: Any, request: Any, name: str) -> bytes:
        from lbproxy.web.routing import query_flag

        force = query_flag(request, b"force")
        table = self.controller.table
        balancer = table.balancer(name)
        if balancer is None:
            raise ApiError(404, f"there is no service {name!r}")
        active = balancer.totals.active

        def mutate(document: Any) -> Any:
            try:
                return remove_service(document, name), None
            except KeyError:
                raise ApiError(404, f"there is no service {name!r}") from None

        if force:
            table.force_next_removal(name)
        try:
            new, _ = await change_document(self, request, mutate, note(self, request, "removed service {}", name))
        finally:
            table.unforce(name)
        return self._with_version(request, new.version, {
            "name": name,
            "state": "removing" if name in table.retiring else "removed",
            "connections": active,
            "closed": active if force else 0,
        })

    # Per service: the top-level routes' handlers, for the named service.
    def per_service(path: str, methods: list[str], handler: str) -> None:
        def route(self: Any, request: Any, name: str, **kwargs: Any) -> Any:
            inner = getattr(type(self), handler).__wrapped__
            return inner(self, request, service=name, **kwargs)

        route.__name__ = f"service_{handler}_{'_'.join(methods).lower()}"
        app.route(base + "/<string:name>" + path, methods=methods, endpoint=route.__name__)(guard(route))

    per_service("/backends", ["GET"], "list_backends")
    per_service("/backends", ["POST"], "create_backend")
    per_service("/backends/<string:backend_id>", ["GET"], "get_backend")
    per_service("/backends/<string:backend_id>", ["PATCH"], "patch_backend")
    per_service("/backends/<string:backend_id>", ["DELETE"], "delete_backend")
    per_service("/strategy", ["GET"], "get_strategy")
    per_service("/strategy", ["PUT"], "put_strategy")
    per_service("/settings", ["GET"], "get_settings")
    per_service("/settings", ["PUT", "PATCH"], "put_settings")
