"""
Real-socket harness for the relay behaviour tests: small backend servers in
the test reactor, a proxy built on either relay engine, and blocking
clients run in threads (as real, separate clients would be).
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Callable

import pytest_twisted
from twisted.internet import protocol, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import classImplements

from lbproxy.policy.balancer import Balancer
from lbproxy.model.config import Backend, Config, ProxySettings, StrategyChoice

#: Relay engines the behaviour tests run against.  A new engine registers a
#: starter here: C{starter(balancer, reactor) -> (port, stop)} where C{stop()}
#: returns a Deferred or None.
ENGINES: dict[str, Callable[[Balancer, Any], tuple[int, Callable[[], Any]]]] = {}


def _twisted_engine(balancer: Balancer, reactor: Any) -> tuple[int, Callable[[], Any]]:
    from lbproxy.relay.twisted_engine import ProxyFactory

    port = reactor.listenTCP(0, ProxyFactory(balancer, reactor), interface="127.0.0.1")
    return port.getHost().port, port.stopListening


ENGINES["twisted"] = _twisted_engine


def _fast_engine(balancer: Balancer, reactor: Any) -> tuple[int, Callable[[], Any]]:
    from lbproxy.relay.fast_engine import FastRelay, listening_socket

    relay = FastRelay(balancer, listening_socket("127.0.0.1", 0), reactor)
    relay.start()
    return relay.port, relay.stop


if sys.platform.startswith("linux"):
    ENGINES["fast"] = _fast_engine


def relayed_sockets(connection: Any) -> tuple[socket.socket, socket.socket]:
    """
    The client-side and backend-side sockets of a relayed connection (as
    the balancer holds it), whichever engine made it.
    """
    client_sock = getattr(connection, "client_sock", None)
    if client_sock is not None:
        return client_sock, connection.backend_sock
    return connection.transport.getHandle(), connection.peer.transport.getHandle()


class Hold(protocol.Protocol):
    """Keeps every connection (in C{factory.held}), so a test can look at
    or reset it."""

    def connectionMade(self) -> None:
        self.factory.held.append(self)


class Echo(protocol.Protocol):
    """Echoes; on the client's EOF flushes what it owes, then closes."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Named(protocol.Protocol):
    """Says its server's name on connect, then echoes."""

    def connectionMade(self) -> None:
        self.transport.write(self.factory.name.encode() + b"\n")

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class CountUntilEOF(protocol.Protocol):
    """Counts bytes until the client half-closes, then answers the count."""

    def connectionMade(self) -> None:
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"got %d\n" % self.count)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


classImplements(CountUntilEOF, IHalfCloseableProtocol)
classImplements(Echo, IHalfCloseableProtocol)


class SpeakThenHalfClose(protocol.Protocol):
    """Sends a greeting and half-closes; records what the client sends after."""

    def connectionMade(self) -> None:
        self.received = b""
        self.transport.write(b"bye from server\n")
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.factory.received.append(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


classImplements(SpeakThenHalfClose, IHalfCloseableProtocol)


class Paused(protocol.Protocol):
    """Does not read until told to; then echoes nothing, only counts."""

    def connectionMade(self) -> None:
        self.count = 0
        self.transport.pauseProducing()
        self.factory.instances.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        self.factory.digest.update(data)


def serve(reactor: Any, proto: type, **attrs: Any) -> Any:
    """
    Start a backend server on 127.0.0.1, port chosen by the OS.

    @return: the listening port; C{.getHost().port} is its number and
        C{.factory} its factory.
    """
    factory = protocol.Factory.forProtocol(proto)
    for k, v in attrs.items():
        setattr(factory, k, v)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port.factory = factory
    return port


def dead_port() -> int:
    """A port on 127.0.0.1 with nobody listening (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_balancer(
    reactor: Any,
    factories: Any,
    ports: list[int],
    strategy: str = "round-robin",
    weights: list[int] | None = None,
    settings: ProxySettings | None = None,
    **backend_attrs: Any,
) -> Balancer:
    backends = tuple(
        Backend(
            id=f"b{i + 1}", host="127.0.0.1", port=p,
            weight=(weights[i] if weights else 1), **backend_attrs,
        )
        for i, p in enumerate(ports)
    )
    config = Config(version=1, backends=backends, strategy=StrategyChoice(strategy))
    return Balancer(config, factories, settings or ProxySettings(access_log=True), reactor=reactor)


def client(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return s


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def read_until_closed(port: int) -> bytes:
    """
    Connect and read until the proxy closes.  A reset counts as a close,
    wherever it lands: while reading, or already during the connect (the
    proxy may accept and reset before the client has seen its SYN-ACK
    confirmed).
    """
    try:
        s = client(port)
    except ConnectionResetError:
        return b""
    try:
        return read_all(s)
    except ConnectionResetError:
        return b""
    finally:
        s.close()


@pytest_twisted.inlineCallbacks
def until(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> Any:
    """
    Wait, without blocking the reactor, until C{predicate()} is true.

    @return: a Deferred firing with the seconds waited.
    """
    from twisted.internet import reactor

    start = reactor.seconds()
    while not predicate():
        if reactor.seconds() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        yield task.deferLater(reactor, step, lambda: None)
    return reactor.seconds() - start


def access_log(add_cleanup: Callable[[Callable[[], Any]], Any]) -> list:
    """
    Collect access-log events (namespace C{lbproxy.access}) until cleanup.
    """
    from twisted.logger import globalLogPublisher

    records: list = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "lbproxy.access":
            records.append(event)

    globalLogPublisher.addObserver(observe)
    add_cleanup(lambda: globalLogPublisher.removeObserver(observe))
    return records


def names(port: int, n: int) -> list[bytes]:
    """Open C{n} connections one after another; the first line of each
    (a L{Named} backend's name)."""
    out = []
    for _ in range(n):
        s = client(port)
        out.append(read_line(s))
        s.close()
    return out


def read_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        data = s.recv(1)
        if not data:
            break
        buf += data
    return buf
