"""
C{on_marked_down: "shutdown"} (HAProxy C{on-marked-down shutdown-sessions}):
a backend's connections close when health marks it down, only then.
"""

from __future__ import annotations

from lbproxy.model.changes import update_settings
from lbproxy.model.checks import HealthCheck
from lbproxy.model.parse import parse_config
from tests.test_balancer import FakeConnection, make


def _open(b, n):
    conns = {}
    for i in range(n):
        c = b.route(("192.0.2.1", i))
        conn = FakeConnection()
        b.connection_opened(c, conn, 0.001)
        conns.setdefault(c.id, []).append(conn)
    return conns


def _fail(b, backend, times):
    for _ in range(times):
        b.health_result(backend, False, "check failed: refused")


def test_shutdown_closes_a_marked_down_backends_connections(factories):
    """
    With on_marked_down shutdown, the check that marks b0 down closes its
    connections (and only its), not the failures before it.
    """
    b, _ = make(factories, n=2, health_check=HealthCheck(fall=2), on_marked_down="shutdown")
    conns = _open(b, 4)
    b.health_result("b0", True, "check passed")
    _fail(b, "b0", 1)
    assert [c.closed for c in conns["b0"]] == [None, None]
    _fail(b, "b0", 1)
    assert [c.closed for c in conns["b0"]] == [("abort", "marked-down")] * 2
    assert [c.closed for c in conns["b1"]] == [None, None]


def test_default_keeps_connections_of_a_down_backend(factories):
    """
    Off by default: a backend marked down keeps its open connections.
    """
    b, _ = make(factories, n=2, health_check=HealthCheck(fall=1))
    conns = _open(b, 4)
    _fail(b, "b0", 3)
    assert b.pool.health["b0"].healthy is False
    assert [c.closed for c in conns["b0"]] == [None, None]


def test_setting_round_trips_and_is_checked():
    """
    The setting is part of the document and of the settings API; any
    value but none/shutdown is refused.
    """
    import pytest

    from lbproxy.model.config import Config
    from lbproxy.model.errors import ConfigError

    config = update_settings(Config(version=1), {"on_marked_down": "shutdown"})
    assert config.on_marked_down == "shutdown"
    assert parse_config(config.to_json()).on_marked_down == "shutdown"
    assert parse_config({"version": 1}).on_marked_down == "none"
    with pytest.raises(ConfigError):
        update_settings(config, {"on_marked_down": "sometimes"})
