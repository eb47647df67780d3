"""
The demo's admin API extension, mounted at C{/api/v1/demo}:

    - C{GET /api/v1/demo}: backends (online, delay, port) and users;
    - C{POST /api/v1/demo/backends/NAME} C{{"online": bool, "delay": s}}:
      take a backend offline or online, change its response delay;
    - C{PUT /api/v1/demo/users} C{{"count": N}}: how many users online.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein

from lbproxy.demo.service import Demo, DemoError


def _json(request: Any, body: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body).encode()


def _body(request: Any) -> Any:
    raw = request.content.read()
    try:
        return json.loads(raw or b"null")
    except ValueError as e:
        raise DemoError(f"the request body is not valid JSON: {e}") from None


class DemoAPI:
    """
    @ivar demo: the L{Demo} it drives.
    """

    app = Klein()

    def __init__(self, demo: Demo) -> None:
        self.demo = demo

    def resource(self) -> Any:
        return self.app.resource()

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """
        This extension's routes for the admin app's C{openapi.json}.
        """
        obj = {"type": "object"}
        ok = {"200": {"description": "The demo's state.", "content": {"application/json": {"schema": obj}}}}
        bad = {"400": {"description": "Invalid request; nothing changed.",
                       "content": {"application/json": {"schema": obj}}}}
        body = {"required": True, "content": {"application/json": {"schema": obj}}}
        return {
            "": {"get": {"summary": "The demo: backends, users online, recent comings and goings.",
                         "responses": ok}},
            "/backends/{name}": {"post": {
                "summary": 'Take a demo backend offline or online, or change its delay: {"online": bool, "delay": seconds}.',
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": body,
                "responses": {**ok, **bad, "404": {"description": "No demo backend of that name.",
                                                   "content": {"application/json": {"schema": obj}}}},
            }},
            "/users": {"put": {"summary": 'Set how many simulated users are online: {"count": N}.',
                               "requestBody": body, "responses": {**ok, **bad}}},
        }

    @app.route("/", methods=["GET"], strict_slashes=False)
    def show(self, request: Any) -> bytes:
        return _json(request, self.demo.to_json())

    @app.route("/backends/<name>", methods=["POST"])
    def change_backend(self, request: Any, name: str) -> Any:
        try:
            d = self.demo.set_backend(name, _body(request))
        except KeyError:
            return _json(request, {"error": f"no demo backend named {name!r}"}, 404)
        except DemoError as e:
            return _json(request, {"error": str(e)}, 400)
        return d.addCallback(lambda view: _json(request, view))

    @app.route("/users", methods=["PUT"])
    def change_users(self, request: Any) -> bytes:
        try:
            return _json(request, self.demo.set_users(_body(request)))
        except DemoError as e:
            return _json(request, {"error": str(e)}, 400)

    @app.handle_errors
    def _errors(self, request: Any, failure: Any) -> bytes:
        from werkzeug.exceptions import HTTPException

        if failure.check(HTTPException):
            e = failure.value
            return _json(request, {"error": f"{e.name}: {request.path.decode()}"}, e.code)
        return _json(request, {"error": "internal error"}, 500)
