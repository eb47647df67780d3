"""
The portable relay engine's protocols, driven by a memory reactor and
string transports: what happens before, during and after the backend
connect, with no sockets.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from lbproxy.policy.balancer import Balancer
from lbproxy.model.config import Backend, Config, ProxySettings
from lbproxy.interfaces import IEngineConnection, IRelayedConnection
from lbproxy.relay.twisted_engine import ProxyFactory


class HalfCloseTransport(StringTransport):
    """A string transport that also records half-closes."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


def setup(factories, n=2, settings=ProxySettings(), **backend):
    reactor = MemoryReactorClock()
    config = Config(
        version=1,
        backends=tuple(Backend(f"b{i}", "127.0.0.1", 9000 + i, **backend) for i in range(n)),
    )
    balancer = Balancer(config, factories, settings, reactor=reactor)
    factory = ProxyFactory(balancer, reactor)
    return reactor, balancer, factory


def accept(factory):
    proto = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
    transport = HalfCloseTransport(
        hostAddress=IPv4Address("TCP", "198.51.100.1", 8080),
        peerAddress=IPv4Address("TCP", "192.0.2.7", 40000),
    )
    proto.makeConnection(transport)
    return proto, transport


def complete_connect(reactor, index=-1):
    """Play the backend accepting the latest connect attempt."""
    host, port, f, timeout, _ = reactor.tcpClients[index]
    backend = f.buildProtocol(IPv4Address("TCP", host, port))
    transport = HalfCloseTransport()
    backend.makeConnection(transport)
    return backend, transport


def test_client_is_paused_until_backend_connects(factories):
    """No client byte is read before the backend is up: the client
    transport is paused at once, and resumed only after connecting."""
    reactor, balancer, factory = setup(factories)
    proto, client = accept(factory)
    assert verifyObject(IRelayedConnection, proto)
    assert verifyObject(IEngineConnection, proto)
    assert client.producerState == "paused"
    host, port, _, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("127.0.0.1", 9000, 3.0)
    complete_connect(reactor)
    assert client.producerState == "producing"


def test_backpressure_is_wired_both_ways(factories):
    """Once connected each transport is the other's streaming producer, so
    a full buffer on one side pauses reading on the other."""
    reactor, balancer, factory = setup(factories)
    proto, client = accept(factory)
    backend, server = complete_connect(reactor)
    assert client.producer is server and client.streaming
    assert server.producer is client and server.streaming


def test_bytes_relay_and_count(factories):
    """Bytes flow both ways and are counted on the connection."""
    reactor, balancer, factory = setup(factories)
    proto, client = accept(factory)
    backend, server = complete_connect(reactor)
    proto.dataReceived(b"hello")
    backend.dataReceived(b"world!")
    assert server.value() == b"hello" and client.value() == b"world!"
    assert (proto.bytes_up, proto.bytes_down) == (5, 6)


def test_refused_connect_retries_elsewhere_then_gives_up(factories):
    """A refused connect is counted and retried on another backend; after
    the retries the client is closed and the attempt counted."""
    reactor, balancer, factory = setup(factories, n=3, settings=ProxySettings(retries=1))
    proto, client = accept(factory)
    first = reactor.tcpClients[0]
    first[2].clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
    assert len(reactor.tcpClients) == 2
    assert reactor.tcpClients[1][1] != first[1]
    reactor.tcpClients[1][2].clientConnectionFailed(reactor.connectors[1], Failure(ConnectionRefusedError()))
    assert len(reactor.tcpClients) == 2
    assert client.disconnecting
    assert balancer.totals.connect_failures == 2 and balancer.totals.retries == 1
    proto.connectionLost(Failure(ConnectionLost()))
    assert balancer.totals.active == 0


def test_client_gone_while_connecting_cancels(factories):
    """If the client leaves before the backend answers, the connect attempt
    is cancelled and nothing is counted against the backend."""
    reactor, balancer, factory = setup(factories)
    proto, client = accept(factory)
    proto.connectionLost(Failure(ConnectionDone()))
    assert reactor.connectors[0].stoppedConnecting
    assert balancer.totals.active == 0 and balancer.totals.connect_failures == 0


def test_half_close_passes_through(factories):
    """A client EOF half-closes the backend's write side (and drops the
    producer link that would block it); a backend EOF does the reverse."""
    reactor, balancer, factory = setup(factories)
    proto, client = accept(factory)
    backend, server = complete_connect(reactor)
    proto.readConnectionLost()
    assert server.write_closed and server.producer is None
    assert not client.disconnecting
    backend.dataReceived(b"late answer")
    assert client.value() == b"late answer"
    backend.readConnectionLost()
    assert client.write_closed


def test_proxy_protocol_header_precedes_data(factories):
    """A backend flagged v2 gets the binary PROXY header with the client's
    address before any relayed byte."""
    from lbproxy.relay.proxyprotocol import header_v2

    reactor, balancer, factory = setup(factories, proxy_protocol="v2")
    proto, client = accept(factory)
    backend, server = complete_connect(reactor)
    proto.dataReceived(b"x")
    assert server.value() == header_v2(("192.0.2.7", 40000), ("198.51.100.1", 8080)) + b"x"


def test_close_records_one_access_record(factories):
    """When both sides are gone the balancer hears of it once, with the
    byte counts, and the backend's active count drops."""
    reactor, balancer, factory = setup(factories)
    proto, client = accept(factory)
    backend, server = complete_connect(reactor)
    proto.dataReceived(b"abc")
    stats = balancer.pool.stats["b0"]
    assert stats.active == 1
    backend.connectionLost(Failure(ConnectionDone()))
    assert client.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    proto.connectionLost(Failure(ConnectionDone()))
    assert stats.active == 0 and stats.bytes_up == 3
    assert balancer.totals.active == 0


def test_over_the_limit_no_protocol(factories):
    """Over max-connections buildProtocol returns None, which makes Twisted
    close the new connection at once."""
    reactor, balancer, factory = setup(factories, settings=ProxySettings(max_connections=1))
    accept(factory)
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.8", 1)) is None
    assert balancer.totals.rejected == 1


def test_response_time_is_measured(factories):
    """The time from connect to the backend's first byte feeds the
    backend's response EWMA (least-response-time uses it)."""
    reactor, balancer, factory = setup(factories)
    proto, client = accept(factory)
    backend, server = complete_connect(reactor)
    reactor.advance(0.25)
    backend.dataReceived(b"a")
    reactor.advance(5)
    backend.dataReceived(b"b")
    assert balancer.pool.stats["b0"].response_ewma == 0.25
