"""
How the API and UI see a balancer's backends: config, state, health and
counters, bytes including connections in flight.  Read when asked; nothing
here runs per connection.  L{BalancerViews} is a part of
L{lbproxy.policy.balancer.Balancer}.
"""

from __future__ import annotations

from typing import Any

from lbproxy.model.config import Backend


class BalancerViews:
    """
    The read side of a L{lbproxy.policy.balancer.Balancer}.
    """

    def bytes_of(self, backend_id: str) -> tuple[int, int]:
        """
        Bytes up and down for a backend, including connections in flight.
        """
        stats = self.pool.stats.get(backend_id)
        up, down = (stats.bytes_up, stats.bytes_down) if stats else (0, 0)
        for conn in self.connections.get(backend_id, ()):
            up += conn.bytes_up
            down += conn.bytes_down
        return up, down

    def backend_view(self, backend: Backend) -> dict[str, Any]:
        """
        One backend as the API and UI show it: config, state, health,
        counters.
        """
        now = self._reactor.seconds()
        stats = self.pool.stats.get(backend.id)
        health = self.pool.health.get(backend.id)
        up, down = self.bytes_of(backend.id)
        view = backend.to_json()
        view["address"] = backend.address
        if backend.id in self.removing:
            view["state"] = "removing"
        elif health is not None:
            view["state"] = self.pool.state_of(backend, now)
        view["admin_state"] = backend.state
        view["health"] = health.to_json(now) if health else None
        note = self.resolver.note(backend.host)
        if note and view["health"] is not None:
            view["health"]["dns"] = note
        view["effective_weight"] = (
            self.pool.effective_weight(backend, now) if health else 0
        )
        counters = stats.to_json() if stats else {}
        counters["bytes_up"], counters["bytes_down"] = up, down
        view["stats"] = counters
        return view

    def backends_view(self) -> list[dict[str, Any]]:
        return [self.backend_view(b) for b in self.config.backends] + [
            self.backend_view(b) for b in self.removing.values()
        ]
