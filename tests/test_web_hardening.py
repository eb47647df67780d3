"""
The admin API against the attacks of the hardening review, without sockets:
DNS rebinding, Host header rules, the query-string token and the access
log, strict JSON, odd paths, force-closing a backend that is already
being removed, the write rate limit and cheap reads.  The site is driven
over a L{StringTransport} on a L{Clock}; the app through StubTreq.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from lbproxy.web import _redacting_formatter, admin_site
from lbproxy.web.auth import AdminPolicy
from tests.test_web_api import _open
from tests.webtools import Admin

TOKEN = "s3cret-token-0123456789"
JSON = "application/json"


class Wire:
    """One connection to an L{AdminSite} over a StringTransport, local address 127.0.0.1:8081."""

    def __init__(self, admin: Admin, **limits):
        self.clock = Clock()
        self.site = admin_site(admin.app, **limits) if limits else admin_site(admin.app)
        self.site.reactor = self.clock
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8081))
        self.channel.makeConnection(self.transport)

    def send(self, method, path, headers=(), body=b"", version="HTTP/1.1"):
        lines = [f"{method} {path} {version}", *(f"{k}: {v}" for k, v in headers)]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return self.response()

    def response(self):
        raw = self.transport.value()
        self.transport.clear()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        return int(status.split()[1]) if status else None, body


@pytest.fixture
def admin(factories):
    return Admin(factories)


def _rebind(origin=True):
    h = [("Host", "rebind.evil.example:8081"), ("Content-Type", JSON)]
    return h + [("Origin", "http://rebind.evil.example:8081")] if origin else h


def test_dns_rebinding_refused(admin):
    """With no token on loopback (the default), a request for another host name is 421 whatever it asks, and nothing changes."""
    w = Wire(admin)
    assert w.send("GET", "/api/v1/config", _rebind(False))[0] == 421
    code, body = w.send("POST", "/api/v1/backends", _rebind(), b'{"host": "127.0.0.1", "port": 9050}')
    assert code == 421 and "DNS rebinding" in json.loads(body)["error"]
    w = Wire(admin)
    assert w.send("DELETE", "/api/v1/backends/b1?force=true", _rebind())[0] == 421
    w = Wire(admin)
    assert w.send("PUT", "/api/v1/strategy", _rebind(), b'{"name": "random"}')[0] == 421
    w = Wire(admin)
    assert w.send("GET", "/", _rebind(False))[0] == 421
    assert admin.balancer.config.version == 1


@pytest.mark.parametrize("host, hosts, code", [
    ("127.0.0.1:8081", (), 200),
    ("127.0.0.1", (), 200),
    ("localhost:8081", (), 200),
    ("LOCALHOST:8081", (), 200),
    ("lb.example.com:8081", ("lb.example.com",), 200),
    ("lb.example.com:8081", (), 421),
    ("sub.lb.example.com", ("lb.example.com",), 421),
    ("127.0.0.2:8081", (), 421),
    ("[::1]:8081", (), 421),
    ("127.0.0.1.nip.io:8081", (), 421),
    ("user@127.0.0.1:8081", (), 421),
])
def test_host_allowed_set(factories, host, hosts, code):
    """Only the literal address the connection arrived on, localhost, and --admin-host names are answered."""
    admin = Admin(factories, policy=AdminPolicy(hosts=hosts))
    assert Wire(admin).send("GET", "/api/v1/strategy", [("Host", host)])[0] == code


def test_origin_checked_against_allowed_set(factories):
    """A change's Origin must be the same origin as the Host and a name of the allowed set."""
    admin = Admin(factories, policy=AdminPolicy(hosts=["lb.example.com"]))
    body = b'{"name": "random"}'
    ok = [("Host", "127.0.0.1:8081"), ("Origin", "http://127.0.0.1:8081"), ("Content-Type", JSON)]
    assert Wire(admin).send("PUT", "/api/v1/strategy", ok, body)[0] == 200
    named = [("Host", "lb.example.com:8081"), ("Origin", "http://lb.example.com:8081"), ("Content-Type", JSON)]
    assert Wire(admin).send("PUT", "/api/v1/strategy", named, body)[0] == 200
    other_port = [("Host", "127.0.0.1:8081"), ("Origin", "http://localhost:9999"), ("Content-Type", JSON)]
    assert Wire(admin).send("PUT", "/api/v1/strategy", other_port, body)[0] == 403
    # The app alone (no site in front) still refuses an Origin outside the set.
    r = Admin(factories).request("PUT", "/api/v1/strategy", {"name": "random"},
                                 headers={"Origin": "http://admin.test"})
    assert r.code == 403


@pytest.mark.parametrize("headers, version, code", [
    ([("Host", "127.0.0.1:8081"), ("Host", "127.0.0.1:8081")], "HTTP/1.1", 400),
    ([("Host", "127.0.0.1:8081"), ("Host", "evil.example")], "HTTP/1.1", 400),
    ([], "HTTP/1.1", 400),
    ([], "HTTP/1.0", 200),
    ([("Host", "")], "HTTP/1.1", 421),
])
def test_host_header_rules(admin, headers, version, code):
    """Two Host headers, or none on HTTP/1.1, are 400; HTTP/1.0 may omit it."""
    assert Wire(admin).send("GET", "/api/v1/strategy", headers, version=version)[0] == code


def test_host_name_parsing():
    """Host values are split into their host part, IPv6 brackets removed; anything else is no host."""
    from lbproxy.web.auth import host_name

    assert host_name("127.0.0.1:8081") == "127.0.0.1"
    assert host_name("[::1]:8081") == "::1"
    assert host_name("Example.COM") == "example.com"
    assert host_name("a b") is None and host_name("") is None and host_name("x:y") is None


# Bodies decided from the headers ---------------------------------------------------


def test_body_refused_from_headers(factories):
    """A request announcing a body is answered 401, 403, 415 or 413 from its headers, and its connection closed."""
    admin = Admin(factories, policy=AdminPolicy(TOKEN))
    host = [("Host", "127.0.0.1:8081")]
    big = host + [("Content-Length", str(1 << 30)), ("Content-Type", JSON)]
    for extra, code in [
        ([], 401),
        ([("Authorization", f"Bearer {TOKEN}"), ("Origin", "http://evil.example")], 403),
        ([("Authorization", f"Bearer {TOKEN}")], 413),
    ]:
        w = Wire(admin)
        w.channel.dataReceived(("\r\n".join(["POST /api/v1/backends HTTP/1.1", *(f"{k}: {v}" for k, v in big + extra)])
                                + "\r\n\r\n").encode())
        assert w.response()[0] == code
        assert w.transport.disconnecting
    w = Wire(admin)
    w.channel.dataReceived(b"PUT /api/v1/strategy HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                           + TOKEN.encode() + b"\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\n"
                           b"Content-Length: 10\r\n\r\n")
    code, _ = w.response()
    assert code == 415 and b"100 Continue" not in w.transport.value()


def test_chunked_body_cut_at_limit(factories):
    """A chunked body is cut with 413 as soon as it passes 1 MiB; nothing past it is kept."""
    admin = Admin(factories)
    w = Wire(admin)
    w.channel.dataReceived(b"PUT /api/v1/config HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    for _ in range(16):
        w.channel.dataReceived(chunk)
    assert w.transport.value() == b""
    w.channel.dataReceived(b"1\r\n \r\n")
    code, body = w.response()
    assert code == 413 and w.transport.disconnecting
    assert admin.balancer.config.version == 1


# The read deadline -------------------------------------------------------------------


def test_slow_request_gets_408(admin):
    """A request not whole within the read timeout gets 408 and the connection is closed, however the bytes trickle."""
    w = Wire(admin, read_timeout=10)
    for _ in range(9):
        w.channel.dataReceived(b"G")
        w.clock.advance(1)
    assert not w.transport.disconnecting
    w.clock.advance(1)
    assert w.response()[0] == 408 and w.transport.disconnecting


def test_deadline_restarts_per_request_and_spares_streams(admin):
    """Each request gets its own deadline; an idle keep-alive connection is closed without a 408; a feed stream is never cut by it."""
    w = Wire(admin, read_timeout=10)
    w.clock.advance(9)
    assert w.send("GET", "/api/v1/strategy", [("Host", "127.0.0.1")])[0] == 200
    w.clock.advance(9)
    assert not w.transport.disconnecting
    w.clock.advance(1)
    assert w.transport.disconnecting and w.transport.value() == b""
    feed = Wire(admin, read_timeout=10)
    feed.channel.dataReceived(b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    feed.clock.advance(60)
    assert not feed.transport.disconnecting
    assert admin.app.feed.subscriber_count == 1


def test_connection_cap(admin):
    """Past max_connections the site builds no protocol (the connection is closed); a closed one frees its place."""
    site = admin_site(admin.app, reactor=Clock(), max_connections=2)
    addr = IPv4Address("TCP", "127.0.0.1", 1)
    channels = []
    for _ in range(2):
        channel = site.buildProtocol(addr)
        channel.makeConnection(StringTransport())
        channels.append(channel)
    assert site.buildProtocol(addr) is None
    channels[0].connectionLost(None)
    assert site.open_connections == 1 and site.buildProtocol(addr) is not None


# Tokens in URLs and logs ---------------------------------------------------------------


class _LogRequest:
    def __init__(self, uri, referer=None):
        self.uri, self.method, self.clientproto, self.code, self.sentLength = uri, b"GET", b"HTTP/1.1", 200, 1
        self._referer = referer

    def getClientAddress(self):
        return IPv4Address("TCP", "127.0.0.1", 1)

    def getHeader(self, name):
        return self._referer if name.lower() == b"referer" else None


@pytest.mark.parametrize("uri", [
    b"/api/v1/events?%61ccess_token=hunter2-secret",
    b"/api/v1/events?types=config;access_token=hunter2-secret",
    b"/api/v1/events?access%5Ftoken=hunter2-secret&types=config",
    b"/api/v1/events?ACCESS_TOKEN=hunter2-secret",
])
def test_every_spelling_of_the_token_redacted(uri):
    """Whatever spelling of access_token the query parser decodes, the access log shows REDACTED, here and in the Referer."""
    line = _redacting_formatter("[01/Dec/2026:09:00:00 +0000]", _LogRequest(uri, referer=b"http://x/?" + uri.split(b"?")[1]))
    assert "hunter2" not in line and line.count("REDACTED") == 2


def test_redact_keeps_other_parameters():
    """Only the token's value changes."""
    from lbproxy.web import redact

    assert redact(b"/a?types=config&%61ccess_token=x;b=2") == b"/a?types=config&%61ccess_token=REDACTED;b=2"
    assert redact(b"/a") == b"/a"


# Strict JSON and odd paths ------------------------------------------------------------


def _failures():
    seen = []

    def observe(event):
        if "log_failure" in event or event.get("isError"):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    return seen, lambda: globalLogPublisher.removeObserver(observe)


@pytest.mark.parametrize("path, method", [
    ("/api/v1/strategy", "PUT"), ("/api/v1/config", "PUT"), ("/api/v1/backends", "POST"), ("/api/v1/settings", "PATCH"),
])
def test_deep_nesting_is_400(admin, path, method):
    """JSON nested 5,000 levels (or just past the limit) is 400, not a 500 with a traceback."""
    seen, stop = _failures()
    try:
        for depth in (5000, 33):
            r = admin.request(method, path, raw=b"[" * depth + b"]" * depth, headers={"Content-Type": JSON})
            assert r.code == 400 and "nested" in r.json["error"]
    finally:
        stop()
    assert seen == []
    assert admin.balancer.config.version == 1


def test_duplicate_keys_are_400(admin):
    """A key given twice in one object is refused with 400 naming it, at any depth, and nothing changes."""
    r = admin.request("PATCH", "/api/v1/backends/b1", raw=b'{"weight": 1, "weight": 100}', headers={"Content-Type": JSON})
    assert r.code == 400 and "'weight'" in r.json["error"]
    r = admin.request("PUT", "/api/v1/strategy", raw=b'{"name": "random", "options": {"a": 1, "a": 2}}',
                      headers={"Content-Type": JSON})
    assert r.code == 400 and "'a'" in r.json["error"]
    assert admin.balancer.config.version == 1


def test_undecodable_path_is_400_without_traceback(admin):
    """A path that is not UTF-8 once percent-decoded is a plain 400 from the site, with nothing logged as a failure."""
    seen, stop = _failures()
    try:
        for path in ("/%ff", "/api/v1/backends/%c3%28", "/api/v1/%ff/x"):
            code, body = Wire(admin).send("GET", path, [("Host", "127.0.0.1")])
            assert code == 400 and json.loads(body)["error"].endswith("percent-decoded"), path
    finally:
        stop()
    assert seen == []


def test_nul_in_path_is_404(factories, tmp_path):
    """/%00 (and a NUL anywhere in a UI path) is 404, not a 500."""
    (tmp_path / "index.html").write_text("<title>x</title>")
    admin = Admin(factories, static=tmp_path)
    seen, stop = _failures()
    try:
        for path in ("/%00", "/index.html%00", "/sub/%00x", "/api/v1/%00"):
            assert admin.get(path).code == 404, path
    finally:
        stop()
    assert seen == []


# Force-closing a backend that is being removed ----------------------------------------


def test_force_close_of_removing_backend(admin):
    """After a graceful DELETE the backend is removing; DELETE ?force=true closes its connections, PATCH is 409."""
    cand, conn, record = _open(admin, "b1")
    assert admin.request("DELETE", "/api/v1/backends/b1").json["state"] == "removing"
    r = admin.request("PATCH", "/api/v1/backends/b1", {"weight": 3})
    assert r.code == 409 and "force=true" in r.json["error"]
    r = admin.request("DELETE", "/api/v1/backends/b1")
    assert r.code == 200 and r.json["closed"] == 0 and conn.aborted is None
    r = admin.request("DELETE", "/api/v1/backends/b1?force=true")
    assert r.code == 200 and r.json["closed"] == 1 and r.json["version"] == 2
    assert conn.aborted == "removed by operator"
    admin.balancer.connection_closed(cand, conn, record)
    assert admin.request("DELETE", "/api/v1/backends/b1?force=true").code == 404


# Write rate and cheap reads ------------------------------------------------------------


def test_write_rate_limited(factories):
    """Past the burst, changes get 429 with Retry-After and change nothing; tokens come back with time; reads are never limited."""
    admin = Admin(factories, write_rate=20)
    names = ["random", "round-robin"]
    for i in range(40):
        assert admin.request("PUT", "/api/v1/strategy", {"name": names[i % 2]}).code == 200
    r = admin.request("PUT", "/api/v1/strategy", {"name": "random"})
    assert r.code == 429 and r.header("Retry-After") == "1"
    assert admin.balancer.config.version == 41
    assert admin.request("DELETE", "/api/v1/backends/b1").code == 429
    assert admin.get("/api/v1/strategy").code == 200
    admin.clock.advance(0.06)
    assert admin.request("PUT", "/api/v1/strategy", {"name": "random"}).code == 200
    assert admin.request("PUT", "/api/v1/strategy", {"name": "random"}).code == 429
    admin.clock.advance(2)
    assert admin.request("PUT", "/api/v1/strategy", {"name": "random"}).code == 200


def test_reads_do_not_walk_connections_per_request(admin):
    """Many reads of the backends in one second build the per-backend view once; a change or a second later rebuilds it."""
    b = admin.balancer
    calls = []
    real = b.backend_view
    b.backend_view = lambda backend: calls.append(backend.id) or real(backend)
    for _ in range(50):
        assert admin.get("/api/v1/backends").code == 200
        assert admin.get("/api/v1/backends/b1").code == 200
    assert len(calls) == 2
    assert admin.request("PATCH", "/api/v1/backends/b1", {"weight": 5}).json["weight"] == 5
    assert admin.get("/api/v1/backends").json["backends"][0]["weight"] == 5
    admin.clock.advance(1)
    admin.get("/api/v1/backends")
    assert len(calls) == 6
    assert "version" not in admin.app.views.views()[0]


def test_a_feed_the_client_ends_is_logged_with_the_token_redacted(admin):
    """An event feed is a response the client ends, not the server: its
    access line is written when the connection goes (it was never written,
    so the feed requests the operations guide says are logged, token
    redacted, did not appear at all); a finished request is logged once."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from lbproxy.web import _redacting_formatter

    w = Wire(admin)
    logged = []
    w.site.log = lambda request: logged.append(_redacting_formatter("[01/Dec/2026:09:00:00 +0000]", request))
    assert w.send("GET", "/api/v1/status", [("Host", "127.0.0.1:8081")])[0] == 200
    assert len(logged) == 1
    w.channel.dataReceived(b"GET /api/v1/events?access_token=hunter2 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n\r\n")
    assert w.transport.value().startswith(b"HTTP/1.1 200")
    assert len(logged) == 1
    w.channel.connectionLost(Failure(ConnectionDone()))
    assert len(logged) == 2
    assert '"GET /api/v1/events?access_token=REDACTED HTTP/1.1" 200' in logged[1]
    assert "hunter2" not in logged[1]
