"""
The admin site's limits on real loopback sockets: bodies refused from their
headers before the client sends them, chunked bodies cut at 1 MiB, no
temporary files, the connection cap and the read deadline.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from lbproxy.control.controller import ConfigController
from lbproxy.control.store.memory import MemoryStore
from lbproxy.model.config import Backend, Config, ProxySettings
from lbproxy.policy.balancer import Balancer
from lbproxy.web import admin_site
from lbproxy.web.app import AdminApp
from lbproxy.web.auth import AdminPolicy
from tests.webtools import wait_for

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-0123456789"


def _reactor():
    from twisted.internet import reactor

    return reactor


class Raw(Protocol):
    """A client that writes what it is told and keeps what it gets until the server closes."""

    def __init__(self):
        self.data = b""
        self.closed = False

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.closed = True

    @property
    def status(self):
        line = self.data.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 else None


def start(factories, policy=None, **limits):
    reactor = _reactor()
    config = Config(version=1, backends=(Backend("b1", "127.0.0.1", 1),))
    balancer = Balancer(config, factories, ProxySettings(access_log=False), reactor=reactor)
    app = AdminApp(ConfigController(balancer, MemoryStore(config)), balancer, policy=policy, clock=reactor)
    site = admin_site(app, **limits)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return app, site, port


@defer.inlineCallbacks
def connect(port, first=b""):
    client = Raw()
    yield connectProtocol(TCP4ClientEndpoint(_reactor(), "127.0.0.1", port.getHost().port), client)
    if first:
        client.transport.write(first)
    return client


def closed(reactor, client, what):
    return wait_for(reactor, lambda: client.closed, timeout=10, what=what)


@pytest.fixture
def no_temp_files(monkeypatch, tmp_path):
    """Records every temporary file twisted.web would spool a body to (and points the temp dir at tmp_path)."""
    import tempfile

    import twisted.web.http as http

    made = []
    real = tempfile.TemporaryFile

    def recording(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(http.tempfile, "TemporaryFile", recording)
    return made


@pytest_twisted.inlineCallbacks
def test_huge_body_without_token_answered_from_headers(factories, no_temp_files, tmp_path):
    """A 1 GiB Content-Length without the token is answered 401 and closed while the client has sent only headers."""
    reactor = _reactor()
    app, site, port = start(factories, policy=AdminPolicy(TOKEN))
    try:
        host = f"127.0.0.1:{port.getHost().port}".encode()
        client = yield connect(port, b"POST /api/v1/backends HTTP/1.1\r\nHost: " + host +
                               b"\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")
        yield closed(reactor, client, "the 401 and the close")
        assert client.status == 401 and b"Bearer" in client.data
        client = yield connect(port, b"PUT /api/v1/config HTTP/1.1\r\nHost: " + host + b"\r\nAuthorization: Bearer "
                               + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 1048577\r\n\r\n")
        yield closed(reactor, client, "the 413 and the close")
        assert client.status == 413
        assert no_temp_files == [] and list(tmp_path.iterdir()) == []
        assert app.balancer.config.version == 1
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_chunked_body_cut_and_never_spooled(factories, no_temp_files, tmp_path):
    """A chunked body past 1 MiB is cut with 413; a 200 kB body is read in memory: no temporary file either way."""
    reactor = _reactor()
    app, site, port = start(factories)
    try:
        head = (b"PUT /api/v1/strategy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
        body = b'{"name": "random"}' + b" " * 200_000
        client = yield connect(port, head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        yield closed(reactor, client, "the answer to a 200 kB body")
        assert client.status == 200 and app.balancer.config.strategy.name == "random"
        client = yield connect(port, head + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        for _ in range(16):
            client.transport.write(chunk)
        # The byte that passes the limit is the last one sent, so the server
        # has read everything when it closes (no reset eats the answer).
        client.transport.write(b"1\r\n \r\n")
        yield closed(reactor, client, "the 413 and the close")
        assert client.status == 413 and b"larger than 1048576" in client.data
        assert no_temp_files == [] and list(tmp_path.iterdir()) == []
        assert app.balancer.config.version == 2
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_connection_cap(factories):
    """Past --admin-max-connections a new connection is closed at once, unanswered; when one closes there is room again."""
    reactor = _reactor()
    app, site, port = start(factories, max_connections=3)
    try:
        held = []
        for _ in range(3):
            held.append((yield connect(port)))
        yield wait_for(reactor, lambda: site.open_connections == 3, what="three open admin connections")
        extra = yield connect(port, b"GET /api/v1/strategy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        yield closed(reactor, extra, "the server to close the fourth connection")
        assert extra.data == b"" and site.refused_connections == 1
        assert not any(c.closed for c in held)
        held[0].transport.loseConnection()
        yield wait_for(reactor, lambda: site.open_connections == 2, what="the server to see a close")
        again = yield connect(port, b"GET /api/v1/strategy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        yield closed(reactor, again, "an answer once there is room")
        assert again.status == 200
    finally:
        for c in held[1:]:
            c.transport.loseConnection()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_slow_client_cut_by_read_deadline(factories):
    """A client that trickles its request is answered 408 and disconnected once the read timeout passes."""
    reactor = _reactor()
    app, site, port = start(factories, read_timeout=0.5)
    try:
        client = yield connect(port, b"GET /api/v1/strategy HTTP/1.1\r\nHost: 127.0")
        started = reactor.seconds()
        yield closed(reactor, client, "the 408 and the close")
        assert client.status == 408
        assert reactor.seconds() - started >= 0.4
        assert site.open_connections == 0
    finally:
        yield port.stopListening()
