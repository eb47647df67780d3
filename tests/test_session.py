"""
The connection session on its own: a real Balancer, a task.Clock and a
fake engine connection, no sockets.  Every outcome a connection can have
is decided here, for both engines.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.interfaces import IConnectionSession, IEngineConnection, IRelayedConnection
from lbproxy.model.checks import HealthCheck
from lbproxy.model.config import Backend, Config, ProxySettings, StrategyChoice
from lbproxy.policy.balancer import Balancer
from lbproxy.relay.proxyprotocol import header_v1, header_v2
from lbproxy.relay.route import SingleServiceRoute
from lbproxy.relay.session import ConnectionSession, socket_options

CLIENT = ("192.0.2.7", 40000)
LOCAL = ("198.51.100.1", 8080)


@implementer(IEngineConnection)
class Engine:
    """What an engine's connection does: on abort/close it tells the
    session, closes its sockets, and reports the end."""

    def __init__(self, session):
        self.session = session
        self.bytes_up = 0
        self.bytes_down = 0
        self.idle_mark = 0
        self.idle_since = 0.0
        self.done = None
        self.local_asked = 0

    def local_address(self):
        self.local_asked += 1
        return LOCAL

    def abort(self, why):
        self.session.closing(why)
        self.done = "abort"
        self.session.ended(self.bytes_up, self.bytes_down)

    def close(self, why):
        self.session.closing(why)
        self.done = "close"
        self.session.ended(self.bytes_up, self.bytes_down)


def make(factories, n=2, settings=ProxySettings(), **backend):
    clock = Clock()
    config = Config(
        version=1,
        backends=tuple(Backend(f"b{i}", "127.0.0.1", 9000 + i, **backend) for i in range(n)),
        strategy=StrategyChoice("round-robin"),
        health_check=HealthCheck(interval=1.0, timeout=0.5, rise=1, fall=1),
    )
    balancer = Balancer(config, factories, settings, reactor=clock)
    return balancer, clock, Records()


class Records(list):
    """The access log lines (namespace lbproxy.access) while it lives, as
    C{(backend, outcome)}: what the balancer was told at each end."""

    live: list = []

    def __init__(self):
        super().__init__()
        globalLogPublisher.addObserver(self.observe)
        self.live.append(self)

    def observe(self, event):
        if event.get("log_namespace") == "lbproxy.access":
            self.append((event["backend"], event["outcome"]))


@pytest.fixture(autouse=True)
def _stop_observing():
    yield
    while Records.live:
        globalLogPublisher.removeObserver(Records.live.pop().observe)


def opened(factories, **kw):
    """A session connected to its first backend."""
    balancer, clock, records = make(factories, **kw)
    session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    candidate = session.accepted()
    engine = Engine(session)
    session.connected(engine)
    return balancer, clock, records, session, engine, candidate


def test_provides_interfaces(factories):
    """The session provides IConnectionSession; the fake engine connection
    IEngineConnection, which is what the balancer sees and more."""
    balancer, clock, _ = make(factories)
    session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    assert verifyObject(IConnectionSession, session)
    assert verifyObject(IEngineConnection, Engine(session))
    assert verifyObject(IRelayedConnection, Engine(session))


def test_success_reports_one_ok_record(factories):
    """Accepted, routed, connected, relayed, ended: the balancer counts the
    connect latency, the backend's connection and the bytes, and gets one
    ok record through connection_closed."""
    balancer, clock, records = make(factories)
    session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    candidate = session.accepted()
    assert candidate.id == "b0" and session.connect_timeout == 3.0
    clock.advance(0.125)
    engine = Engine(session)
    assert session.connected(engine) is None
    assert engine.local_asked == 0
    stats = balancer.pool.stats["b0"]
    assert stats.active == 1 and stats.connect_ewma == 0.125
    assert balancer.connections["b0"] == {engine}
    clock.advance(1)
    record = session.ended(3, 5)
    assert (record.backend, record.outcome, record.bytes_up, record.bytes_down) == ("b0", "ok", 3, 5)
    assert record.client == "192.0.2.7:40000" and record.duration == 1.125
    assert records == [("b0", "ok")]
    assert stats.active == 0 and stats.bytes_up == 3 and balancer.totals.active == 0
    assert balancer.connections["b0"] == set()
    assert session.ended(3, 5) is None and records == [("b0", "ok")]


def test_first_byte_timing_reaches_observe_response(factories):
    """The time from the connect to the first backend byte feeds the
    response EWMA, once: later bytes change nothing."""
    balancer, clock, _, session, engine, _ = opened(factories)
    clock.advance(0.25)
    session.first_response()
    clock.advance(5)
    session.first_response()
    assert balancer.pool.stats["b0"].response_ewma == 0.25


def test_connect_latency_counts_from_connecting_after_a_lookup(factories):
    """A connect that waited for a name lookup is timed from when it
    started, not from the routing decision."""
    balancer, clock, _ = make(factories)
    session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    session.accepted()
    clock.advance(5)
    session.connecting()
    clock.advance(0.5)
    session.connected(Engine(session))
    assert balancer.pool.stats["b0"].connect_ewma == 0.5


@pytest.mark.parametrize("reason", ["Connection refused", "connect timed out"])
def test_failed_connect_retries_on_another_backend(factories, reason):
    """A refused or timed-out connect counts against the backend and the
    next attempt excludes it; the retry is counted through the balancer."""
    balancer, clock, records = make(factories, n=3)
    session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    first = session.accepted()
    second = session.connect_failed(reason)
    assert second is not None and second.id != first.id
    assert balancer.pool.stats[first.id].failures == 1
    assert balancer.totals.connect_failures == 1 and balancer.totals.retries == 1
    session.connected(Engine(session))
    assert session.ended(0, 0).backend == second.id


def test_retries_exhausted_closes_with_connect_failed(factories):
    """After --retries more attempts fail the answer is close: the session
    has reported a connect-failed record through client_failed already."""
    balancer, clock, records = make(factories, n=3, settings=ProxySettings(retries=1))
    session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    tried = [session.accepted()]
    tried.append(session.connect_failed("Connection refused"))
    assert session.connect_failed("Connection refused") is None
    assert len({c.id for c in tried}) == 2
    assert records == [("-", "connect-failed")]
    assert balancer.totals.connect_failures == 2 and balancer.totals.retries == 1
    assert balancer.totals.active == 0 and session.finished
    assert session.ended(0, 0) is None


def test_every_backend_tried_is_connect_failed(factories):
    """When the tried backends were all there was, routing finds none: the
    outcome is connect-failed (not no-backend), counted once."""
    balancer, clock, records = make(factories, n=1, settings=ProxySettings(retries=5))
    session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    session.accepted()
    assert session.connect_failed("Connection refused") is None
    assert records == [("-", "connect-failed")]
    assert balancer.totals.active == 0


def test_no_backend_closes_at_once(factories):
    """With every backend down the first answer is close: a no-backend
    record, no connect attempt, nothing left active."""
    balancer, clock, records = make(factories)
    for bid in ("b0", "b1"):
        balancer.health_result(bid, False, "check failed: x")
    session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    assert session.accepted() is None
    assert records == [("-", "no-backend")]
    assert balancer.totals.no_backend == 1 and balancer.totals.active == 0
    assert session.finished


def test_over_max_connections_is_rejected_without_a_record(factories):
    """Over --max-connections the answer is close, counted as rejected;
    the client was never admitted, so there is no access record and the
    active count is untouched."""
    balancer, clock, records = make(factories, settings=ProxySettings(max_connections=1))
    first = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    assert first.accepted() is not None
    second = ConnectionSession(SingleServiceRoute(balancer), clock, ("192.0.2.8", 1))
    assert second.accepted() is None
    assert second.outcome == "rejected" and second.finished
    assert second.ended(0, 0) is None
    assert balancer.totals.rejected == 1 and balancer.totals.active == 1 and records == []


def test_client_gone_while_connecting(factories):
    """The client left during the connect: the record goes through
    client_failed, and the cancelled connect reported after it is not a
    failure of the backend."""
    balancer, clock, records = make(factories)
    session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    session.accepted()
    session.client_reset()
    session.ended(0, 0)
    assert session.connect_failed("cancelled") is None
    assert records == [("-", "client-reset")]
    assert balancer.totals.connect_failures == 0 and balancer.totals.active == 0


def test_client_reset(factories):
    """A client reset is the outcome, and the backend side lost after it
    is not counted against the backend."""
    balancer, clock, records, session, engine, _ = opened(factories)
    session.client_reset()
    session.backend_reset("Connection lost")
    assert session.ended(1, 0).outcome == "client-reset"
    assert balancer.pool.stats["b0"].failures == 0


def test_backend_reset_counts_for_passive_health(factories):
    """A backend reset nobody else caused is the outcome and a failure for
    passive health."""
    balancer, clock, records, session, engine, _ = opened(factories)
    session.backend_reset("Connection lost")
    assert session.ended(0, 0).outcome == "backend-reset"
    stats = balancer.pool.stats["b0"]
    assert stats.failures == 1 and stats.consecutive_failures == 1


def test_backend_reset_after_our_abort_is_not_counted(factories):
    """After lbproxy aborts, the backend side is lost uncleanly too, but
    that is not the backend's fault: our reason is the outcome."""
    balancer, clock, records, session, engine, _ = opened(factories)
    session.closing("drain-timeout")
    session.backend_reset("Connection aborted")
    assert session.ended(0, 0).outcome == "drain-timeout"
    assert balancer.pool.stats["b0"].failures == 0


def test_idle_close(factories):
    """The balancer's idle sweep closes (FIN, not RST) a connection that
    moved no byte for the idle timeout; the record says idle-timeout."""
    balancer, clock, records, session, engine, _ = opened(
        factories, settings=ProxySettings(idle_timeout=10)
    )
    clock.advance(5)
    balancer.sweep_idle(clock.seconds())
    assert engine.done is None
    clock.advance(6)
    balancer.sweep_idle(clock.seconds())
    assert engine.done == "close"
    assert records == [("b0", "idle-timeout")]
    assert balancer.totals.idle_timeouts == 1


def test_forced_removal_aborts(factories):
    """close_connections (forced removal) aborts the backend's connections
    with the reason given, which is the outcome; the first cause wins over
    a later one."""
    balancer, clock, records, session, engine, _ = opened(factories)
    assert balancer.close_connections("b0", "removed") == 1
    assert engine.done == "abort"
    session.closing("shutdown")
    assert records == [("b0", "removed")]
    assert balancer.pool.stats["b0"].active == 0


def test_drain_timeout_aborts(factories):
    """A backend removed from the config drains; at the drain timeout its
    connections are aborted with outcome drain-timeout."""
    balancer, clock, records, session, engine, candidate = opened(factories)
    config = balancer.config
    balancer.apply(replace(
        config, version=2, backends=config.backends[1:], drain_timeout=30.0,
    ))
    assert engine.done is None
    clock.advance(30)
    assert engine.done == "abort"
    assert records == [("b0", "drain-timeout")]


@pytest.mark.parametrize("version, make_header", [("v1", header_v1), ("v2", header_v2)])
def test_proxy_header_to_send(factories, version, make_header):
    """A backend that asks for the PROXY protocol gets the header with the
    client's and the listener's addresses before any byte."""
    balancer, clock, _ = make(factories, proxy_protocol=version)
    session = ConnectionSession(SingleServiceRoute(balancer), clock, CLIENT)
    session.accepted()
    engine = Engine(session)
    assert session.connected(engine) == make_header(CLIENT, LOCAL)
    assert engine.local_asked == 1


def test_socket_options_follow_the_setting(factories):
    """Keepalive is on by default (60 s idle, 10 s interval, 6 probes),
    takes the configured values, and 'off' sets nothing."""
    import socket

    def options(**kw):
        balancer, _, _ = make(factories, settings=ProxySettings(**kw))
        return socket_options(balancer)

    assert options() == (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6),
    )
    assert options(tcp_keepalive=(30, 5, 3))[1:] == (
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
    )
    assert options(tcp_keepalive=None) == ()


def _options(*args):
    from lbproxy.startup.tap import Options

    options = Options()
    options.parseOptions(["--backend", "127.0.0.1:9", *args])
    return options.spec.settings.tcp_keepalive


def test_tcp_keepalive_flag():
    """--tcp-keepalive takes IDLE,INTERVAL,COUNT or off; the default is
    60,10,6 (on)."""
    assert _options() == (60, 10, 6)
    assert _options("--tcp-keepalive", "30,5,3") == (30, 5, 3)
    assert _options("--tcp-keepalive", "off") is None


@pytest.mark.parametrize(
    "value, message",
    [
        ("60,10", "must be IDLE,INTERVAL,COUNT or off"),
        ("60,ten,6", "must be whole numbers"),
        ("0,10,6", "needs 1 <= IDLE"),
        ("60,10,500", "COUNT <= 127"),
    ],
)
def test_tcp_keepalive_flag_refuses_bad_values(value, message):
    """A bad --tcp-keepalive is a one-line usage error saying what is
    expected."""
    from twisted.python import usage

    with pytest.raises(usage.UsageError, match=message) as e:
        _options("--tcp-keepalive", value)
    assert "\n" not in str(e.value)


def test_socket_options_from_json_settings():
    """Worker processes get their settings through JSON, where the
    keepalive triple is a list: it gives the same options."""
    from lbproxy.relay.sockopts import keepalive_options

    assert keepalive_options([60, 10, 6]) == keepalive_options((60, 10, 6))


def test_socket_options_leave_unix_sockets_alone():
    """A Unix socket (the Twisted engine serves unix: endpoints too) has
    no TCP options: applying them is a no-op, not an error."""
    import socket

    from lbproxy.relay.sockopts import apply, keepalive_options

    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        apply(a, keepalive_options((60, 10, 6)))
    finally:
        a.close()
        b.close()
