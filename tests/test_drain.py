"""
Graceful drain and removal, driven by a L{task.Clock}: a draining backend
takes no new connections, open ones finish, an optional drain timeout
closes the rest, and removal completes when the count reaches zero.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.policy.balancer import Balancer
from lbproxy.model.config import Backend, Config
from lbproxy.interfaces import IRelayedConnection
from lbproxy.policy.plugins import strategy_factories
from lbproxy.policy.pool import AccessRecord


@implementer(IRelayedConnection)
class Conn:
    """
    A relayed connection as the balancer sees it; closing it (by the client
    or by L{abort}) reports back like the relay engine does.
    """

    def __init__(self, balancer, candidate):
        self.balancer = balancer
        self.candidate = candidate
        self.bytes_up = self.bytes_down = self.idle_mark = 0
        self.idle_since = 0.0
        self.outcome = None

    def abort(self, why):
        self.close(why)

    def close(self, why="ok"):
        if self.outcome is None:
            self.outcome = why
            self.balancer.connection_closed(
                self.candidate, self, AccessRecord("c", self.candidate.id, 0, 0, 1.0, why)
            )


def make(drain_timeout=None):
    clock = task.Clock()
    config = Config(
        version=1,
        backends=(Backend("b1", "127.0.0.1", 9001), Backend("b2", "127.0.0.1", 9002)),
        drain_timeout=drain_timeout,
    )
    b = Balancer(config, strategy_factories(), reactor=clock)
    seen = []
    b.events.subscribe(lambda e: seen.append((e.data["id"], e.data["state"])) if e.type == "backend" else None)
    return b, clock, seen


def open_to(b, bid, n):
    conns = []
    while len(conns) < n:
        c = b.route(("192.0.2.1", len(conns)))
        if c.id != bid:
            continue
        b.admit()
        conn = Conn(b, c)
        b.connection_opened(c, conn, 0.001)
        conns.append(conn)
    return conns


def set_state(b, bid, state):
    backends = tuple(replace(x, state=state) if x.id == bid else x for x in b.config.backends)
    b.apply(replace(b.config, version=b.config.version + 1, backends=backends))


def without(b, bid):
    backends = tuple(x for x in b.config.backends if x.id != bid)
    b.apply(replace(b.config, version=b.config.version + 1, backends=backends))


def test_fake_connection_provides_the_interface():
    """The test double provides L{IRelayedConnection}."""
    b, _, _ = make()
    verifyObject(IRelayedConnection, open_to(b, "b1", 1)[0])


def test_draining_takes_no_new_connections_and_open_ones_finish():
    """Without a drain timeout, a draining backend gets no new connection,
    its open ones are never closed by lbproxy however long they last, and
    when the last one ends a C{drained} event says so."""
    b, clock, seen = make()
    conns = open_to(b, "b1", 2)
    set_state(b, "b1", "draining")
    assert seen == [("b1", "draining")]
    assert {b.route(("192.0.2.9", i)).id for i in range(10)} == {"b2"}
    clock.advance(3600)
    assert [c.outcome for c in conns] == [None, None]
    conns[0].close()
    assert seen == [("b1", "draining")]
    conns[1].close()
    assert seen == [("b1", "draining"), ("b1", "drained")]
    assert b.pool.stats["b1"].active == 0


def test_drain_timeout_closes_what_is_left():
    """With a drain timeout, connections still open when it expires are
    closed with outcome C{drain-timeout}, and the backend reports
    C{drained}; one that ended earlier finished normally."""
    b, clock, seen = make(drain_timeout=5.0)
    conns = open_to(b, "b1", 3)
    set_state(b, "b1", "draining")
    clock.advance(2)
    conns[0].close()
    clock.advance(2.9)
    assert [c.outcome for c in conns] == ["ok", None, None]
    clock.advance(0.1)
    assert [c.outcome for c in conns] == ["ok", "drain-timeout", "drain-timeout"]
    assert seen == [("b1", "draining"), ("b1", "drained")]
    assert clock.getDelayedCalls() == []


def test_backend_set_back_up_before_the_timeout_keeps_its_connections():
    """Cancelling a drain (state back to C{up}) means the pending drain
    timeout closes nothing, and the backend takes connections again."""
    b, clock, seen = make(drain_timeout=5.0)
    conns = open_to(b, "b1", 1)
    set_state(b, "b1", "draining")
    set_state(b, "b1", "up")
    clock.advance(10)
    assert conns[0].outcome is None
    assert "b1" in {b.route(("192.0.2.9", i)).id for i in range(4)}
    assert seen == [("b1", "draining"), ("b1", "up")]


def test_draining_an_idle_backend_is_drained_at_once():
    """A backend with no connection is drained the moment it is set
    draining."""
    b, _, seen = make(drain_timeout=5.0)
    set_state(b, "b1", "draining")
    assert seen == [("b1", "draining"), ("b1", "drained")]


def test_removal_waits_for_the_last_connection_without_timeout():
    """A backend removed from the config while it has connections is
    C{removing} (no new connections, shown in the views) until the last
    one ends, then C{removed}, and its counters are forgotten."""
    b, clock, seen = make()
    conns = open_to(b, "b1", 2)
    without(b, "b1")
    assert seen == [("b1", "removing")]
    assert [v["state"] for v in b.backends_view() if v["id"] == "b1"] == ["removing"]
    assert {b.route(("192.0.2.9", i)).id for i in range(6)} == {"b2"}
    clock.advance(3600)
    conns[0].close()
    assert "b1" in b.removing
    conns[1].close()
    assert seen == [("b1", "removing"), ("b1", "removed")]
    assert "b1" not in b.removing and "b1" not in b.pool.stats


def test_removal_with_drain_timeout_forces_the_rest_closed():
    """With a drain timeout, removal closes what is left when it expires
    and completes at once."""
    b, clock, seen = make(drain_timeout=2.0)
    conns = open_to(b, "b1", 2)
    without(b, "b1")
    clock.advance(1.99)
    assert "b1" in b.removing
    clock.advance(0.01)
    assert [c.outcome for c in conns] == ["drain-timeout", "drain-timeout"]
    assert seen == [("b1", "removing"), ("b1", "removed")]
    assert clock.getDelayedCalls() == []


def test_removing_an_idle_backend_is_immediate():
    """Without connections, removal is one C{removed} event."""
    b, _, seen = make()
    without(b, "b1")
    assert seen == [("b1", "removed")] and not b.removing
