"""
The admin API's read-only routes for watching: status, stats (of the
whole balancer and per service), the SSE event feed and C{/metrics}.

None of them changes anything; they read the samplers, the feed and the
Prometheus registry the app was built with.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

import lbproxy
from lbproxy.web.errors import ApiError, send_json
from lbproxy.web.routing import API, guarded, routes

log = Logger()


class WatchRoutes:
    """
    The watching routes, mixed into L{lbproxy.web.app.AdminApp}.
    """

    # Status ------------------------------------------------------------------------

    @routes.route(API + "/status", methods=["GET"])
    @guarded
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

    @routes.route(API + "/stats", methods=["GET"])
    @guarded
    def get_stats(self, request: Any) -> bytes:
        return send_json(request, self.stats.snapshot())

    @routes.route(API + "/stats/history", methods=["GET"])
    @guarded
    def get_stats_history(self, request: Any) -> bytes:
        return send_json(request, self.stats.history())

    def _stats_of(self, name: str) -> Any:
        sampler = self.service_stats.of(name) if self.service_stats is not None else None
        if sampler is None:
            raise ApiError(404, f"there is no service {name!r}")
        return sampler

    @routes.route(API + "/services/<string:name>/stats", methods=["GET"])
    @guarded
    def get_service_stats(self, request: Any, name: str) -> bytes:
        return send_json(request, self._stats_of(name).snapshot())

    @routes.route(API + "/services/<string:name>/stats/history", methods=["GET"])
    @guarded
    def get_service_stats_history(self, request: Any, name: str) -> bytes:
        return send_json(request, self._stats_of(name).history())

    @routes.route(API + "/events", methods=["GET"])
    @guarded
    def events(self, request: Any) -> Any:
        return self.feed.open(request)

    @routes.route("/metrics", methods=["GET"])
    @guarded
    def metrics(self, request: Any) -> bytes:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)
