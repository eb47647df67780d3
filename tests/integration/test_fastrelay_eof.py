"""
The fast engine's half-close, driven by hand: real loopback sockets, a
memory reactor, and L{FastRelay.doRead} called by the test, so which events
fall into which call is decided here and not by timing.
"""

from __future__ import annotations

import socket
import sys
import time

import pytest
from twisted.internet.testing import MemoryReactorClock

from lbproxy.model.config import ProxySettings
from tests.integration import relay_harness as h

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fast engine is Linux-only"),
]


class CountingEpoll:
    """
    The engine's epoll, counting interest changes and polls.
    """

    def __init__(self, real):
        self.real = real
        self.changes = 0
        self.polls = 0

    def fileno(self):
        return self.real.fileno()

    def register(self, fd, mask=0):
        self.changes += 1
        self.real.register(fd, mask)

    def modify(self, fd, mask):
        self.changes += 1
        self.real.modify(fd, mask)

    def unregister(self, fd):
        self.changes += 1
        self.real.unregister(fd)

    def poll(self, timeout=-1):
        self.polls += 1
        return self.real.poll(timeout)

    def close(self):
        self.real.close()


@pytest.fixture
def rig(factories):
    """An engine on a memory reactor, a backend listener, a connected relay."""
    from lbproxy.relay.fast_engine import FastRelay, Relay, listening_socket

    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(8)
    backend.settimeout(10)
    clock = MemoryReactorClock()
    balancer = h.make_balancer(clock, factories, [backend.getsockname()[1]],
                               settings=ProxySettings(access_log=False, tcp_keepalive=None))
    engine = FastRelay(balancer, listening_socket("127.0.0.1", 0), clock)
    epoll = engine.epoll = CountingEpoll(engine.epoll)
    engine.start()
    client = h.client(engine.port)
    client.sendall(b"request")
    backend.setblocking(False)
    server = None
    got = b""
    deadline = time.monotonic() + 10
    while got != b"request" and time.monotonic() < deadline:
        engine.doRead()
        try:
            if server is None:
                server, _ = backend.accept()
                server.setblocking(False)
            got += server.recv(100)
        except BlockingIOError:
            pass
    server.settimeout(10)
    assert got == b"request"
    relays = {getattr(f, "__self__", None) for f in engine.handlers.values()}
    (relay,) = [r for r in relays if isinstance(r, Relay)]
    epoll.polls = 0
    epoll.changes = 0
    yield engine, epoll, relay, client, server
    for s in (client, server, backend):
        s.close()
    engine.stop()


def test_backend_fin_reaches_a_waiting_client_within_one_doread(rig):
    """The backend answers and sends its FIN while the client waits for it
    (it never closes first): one C{doRead} passes the FIN on, the relay
    lives on half-closed with the backend no longer read (and no interest
    change: the backend socket is edge-triggered, so its EOF needs no
    epoll_ctl), and the client's later bytes still reach the backend."""
    engine, epoll, relay, client, server = rig
    server.sendall(b"answer")
    server.shutdown(socket.SHUT_WR)
    engine.doRead()
    assert h.read_all(client) == b"answer"
    assert relay.down.shut and not relay.finished
    assert epoll.changes == 0
    client.sendall(b"more")
    client.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 10
    while not relay.finished and time.monotonic() < deadline:
        engine.doRead()
    assert relay.finished
    assert h.read_all(server) == b"more"
