"""
The idle sweep tells the operator why quiet connections are cut: one log
line at the first idle close naming --idle-timeout, then at most one a
minute with a count (never one per connection).
"""

from __future__ import annotations

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from lbproxy.model.config import ProxySettings
from lbproxy.relay.route import SingleServiceRoute
from lbproxy.relay.session import ConnectionSession
from tests.test_session import CLIENT, Engine, make


@pytest.fixture
def lines():
    seen = []

    def observe(event):
        if event.get("log_namespace") == "lbproxy.policy.balancer":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def connect(balancer, clock, n):
    engines = []
    for _ in range(n):
        session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
        session.accepted()
        engine = Engine(session)
        session.connected(engine)
        engines.append(engine)
    return engines


def test_first_idle_close_is_logged_once_then_a_count_a_minute(factories, lines):
    """Three connections idle together: one line naming --idle-timeout and
    the count.  Five more closed over the next 55 s: no line yet; the sweep
    a minute after the first line says 5 more, once."""
    balancer, clock, _ = make(factories, settings=ProxySettings(idle_timeout=10))
    connect(balancer, clock, 3)
    balancer.sweep_idle(clock.seconds())
    clock.advance(10)
    balancer.sweep_idle(clock.seconds())
    assert balancer.totals.idle_timeouts == 3
    assert len(lines) == 1
    assert "closed 3 connection(s)" in lines[0] and "--idle-timeout" in lines[0]
    assert "Redis pub/sub" in lines[0]

    for _ in range(5):
        connect(balancer, clock, 1)
        balancer.sweep_idle(clock.seconds())
        clock.advance(6)
        balancer.sweep_idle(clock.seconds())
        clock.advance(5)
        balancer.sweep_idle(clock.seconds())
    assert balancer.totals.idle_timeouts == 8
    assert len(lines) == 1
    clock.advance(60 - 55)
    balancer.sweep_idle(clock.seconds())
    assert len(lines) == 2
    assert "closed 5 more idle connection(s)" in lines[1] and "--idle-timeout" in lines[1]
    clock.advance(120)
    balancer.sweep_idle(clock.seconds())
    assert len(lines) == 2


def test_no_idle_close_no_line(factories, lines):
    """Connections that keep moving bytes are never closed, and nothing is logged."""
    balancer, clock, _ = make(factories, settings=ProxySettings(idle_timeout=10))
    [engine] = connect(balancer, clock, 1)
    for _ in range(5):
        clock.advance(8)
        engine.bytes_up += 1
        balancer.sweep_idle(clock.seconds())
    assert balancer.totals.idle_timeouts == 0 and lines == []
