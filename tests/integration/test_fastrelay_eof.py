"""
The fast engine's deferred EOF, driven by hand: real loopback sockets, a
memory reactor, and L{FastRelay.doRead} called by the test, so which events
fall into which batch is decided here and not by timing.

A backend's FIN is passed on to the client after the next batch of
events, not at once: a client that closes meanwhile (one connection per
request) ends the relay with two close() calls and no shutdown() or
epoll mask change; a client that does not still gets its FIN before
C{doRead} returns.
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
    The engine's epoll, counting interest changes; C{between} runs before
    the poll that starts the second batch of a C{doRead}.
    """

    def __init__(self, real):
        self.real = real
        self.changes = 0
        self.polls = 0
        self.between = None

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
        if self.polls == 2 and self.between is not None:
            hook, self.between = self.between, None
            hook()
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


def test_client_close_before_next_batch_needs_no_shutdown(rig):
    """The backend answers and sends its FIN; the client closes before the
    next batch: the relay ends with neither side shut down (no
    shutdown() call) and no epoll interest change, and the client got the
    whole answer."""
    engine, epoll, relay, client, server = rig
    server.sendall(b"answer")
    server.shutdown(socket.SHUT_WR)
    got = []

    def client_reads_and_closes():
        got.append(client.recv(100))
        client.close()

    epoll.between = client_reads_and_closes
    engine.doRead()
    assert got == [b"answer"]
    assert relay.finished
    assert not relay.up.shut and not relay.down.shut
    assert epoll.changes == 0
    assert relay.bytes_down == len(b"answer")
    assert server.recv(100) == b""


def test_backend_fin_reaches_a_waiting_client_within_one_doread(rig):
    """The backend answers and sends its FIN while the client waits for it
    (it never closes first): one C{doRead} passes the FIN on, the relay
    lives on half-closed, and the client's later bytes still reach the
    backend."""
    engine, epoll, relay, client, server = rig
    server.sendall(b"answer")
    server.shutdown(socket.SHUT_WR)
    engine.doRead()
    assert h.read_all(client) == b"answer"
    assert relay.down.shut and not relay.finished
    client.sendall(b"more")
    client.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 10
    while not relay.finished and time.monotonic() < deadline:
        engine.doRead()
    assert relay.finished
    assert h.read_all(server) == b"more"
