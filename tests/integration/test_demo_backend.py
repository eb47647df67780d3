"""
A demo backend over real sockets: offline really closes its port (clients
are refused), online listens again on the same port.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError

from lbproxy.demo.backend import DemoBackend

pytestmark = pytest.mark.integration


class _Fetch(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.0\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.done.callback(self.data)


async def fetch(port: int) -> bytes:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    proto = await endpoint.connect(protocol.Factory.forProtocol(_Fetch))
    return await proto.done


@pytest_twisted.ensureDeferred
async def test_offline_closes_the_real_port_and_online_reopens_it():
    """
    Online it answers with its name; offline a connect is refused; online
    again it answers on the very same port.
    """
    backend = DemoBackend("alpha", delay=0.01, reactor=reactor)
    backend.go_online()
    port = backend.port
    try:
        assert (await fetch(port)).endswith(b"hello from alpha\n")
        await backend.go_offline()
        with pytest.raises(ConnectionRefusedError):
            await fetch(port)
        backend.go_online()
        assert backend.port == port
        assert (await fetch(port)).endswith(b"hello from alpha\n")
        assert backend.requests == 2
    finally:
        await backend.go_offline()
