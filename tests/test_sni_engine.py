"""
The Twisted engine drives the session's first phase without sockets
(MemoryReactorClock, StringTransport): bytes go to the session until it
decides, the deadline closes an undecided client, EOF is counted, and an
ordinary listener schedules nothing.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from lbproxy.interfaces import IListenerRoute
from lbproxy.model.config import Backend, Config
from lbproxy.policy.balancer import Balancer
from lbproxy.relay.twisted_engine import ProxyFactory
from tests.fuzz.samples import client_hello


@implementer(IListenerRoute)
class Route:
    endpoint = "tcp:443"
    routes_by_sni = True
    sni_timeout = 2.0
    accept_proxy = ()

    def __init__(self, balancer):
        self.balancer = balancer
        self.refusals = []

    def default(self):
        return self.balancer

    def for_server_name(self, name):
        return self.balancer if name == "a.test" else None

    def refused(self, reason):
        self.refusals.append(reason)


def setup(factories, route_of=Route):
    reactor = MemoryReactorClock()
    balancer = Balancer(Config(version=1, backends=(Backend("b1", "127.0.0.1", 9000),)), factories, reactor=reactor)
    route = route_of(balancer)
    factory = ProxyFactory(route, reactor)
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return reactor, route, protocol, transport


def test_hello_in_pieces_then_connect(factories):
    """Bytes go to the session until the ClientHello is whole; then the
    client is paused, the backend connect starts, the timer is cancelled."""
    reactor, route, protocol, transport = setup(factories)
    hello = client_hello("a.test")
    assert len(reactor.getDelayedCalls()) == 1 and reactor.tcpClients == []
    protocol.dataReceived(hello[:50])
    assert reactor.tcpClients == [] and transport.producerState == "producing"
    protocol.dataReceived(hello[50:])
    assert transport.producerState == "paused"
    assert [c[:2] for c in reactor.tcpClients] == [("127.0.0.1", 9000)]
    assert [c for c in reactor.getDelayedCalls() if c.func.__name__ == "_first_timed_out"] == []
    assert "dataReceived" not in protocol.__dict__ and route.refusals == []


def test_deadline_closes_an_undecided_client(factories):
    """No whole ClientHello by sni_timeout: the client is closed, counted."""
    reactor, route, protocol, transport = setup(factories)
    protocol.dataReceived(b"\x16\x03")
    reactor.advance(2.0)
    assert transport.disconnecting and route.refusals == ["sni-timeout"]
    assert reactor.tcpClients == []


def test_eof_while_reading_is_counted(factories):
    """The client half-closes before deciding: closed, client-closed."""
    reactor, route, protocol, transport = setup(factories)
    protocol.dataReceived(b"\x16")
    protocol.readConnectionLost()
    assert transport.disconnecting and route.refusals == ["client-closed"]
    assert reactor.getDelayedCalls() == []


def test_ordinary_listener_schedules_nothing(factories):
    """A balancer alone (an ordinary listener): paused and connecting at
    once, no timer, nothing read."""
    reactor, route, protocol, transport = setup(factories, route_of=lambda b: b)
    assert transport.producerState == "paused" and len(reactor.tcpClients) == 1
    assert [c for c in reactor.getDelayedCalls() if c.func.__name__ == "_first_timed_out"] == []
