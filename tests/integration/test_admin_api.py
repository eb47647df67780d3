"""
The admin site on a real loopback socket: the web UI files, schemathesis
against openapi.json, a feed client that stops reading, and the site as
C{twistd lbproxy} builds it.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import pytest_twisted
import treq
from twisted.internet import utils

from lbproxy.policy.balancer import Balancer
from lbproxy.model.config import Backend, Config, ProxySettings
from lbproxy.control.controller import ConfigController
from lbproxy.control.store.memory import MemoryStore
from lbproxy.web import admin_site
from lbproxy.web.app import AdminApp
from lbproxy.web.auth import AdminPolicy
from tests.webtools import FeedReader, connect_feed, wait_for

pytestmark = pytest.mark.integration


def _reactor():
    from twisted.internet import reactor

    return reactor


def start_admin(factories, static=None, policy=None, **kwargs):
    """An admin site over a two-backend balancer, listening on 127.0.0.1:0."""
    reactor = _reactor()
    config = Config(version=1, backends=(Backend("b1", "127.0.0.1", 1), Backend("b2", "127.0.0.1", 2)))
    balancer = Balancer(config, factories, ProxySettings(access_log=False), reactor=reactor)
    controller = ConfigController(balancer, MemoryStore(config))
    app = AdminApp(controller, balancer, policy=policy, clock=reactor, static=static, **kwargs)
    port = reactor.listenTCP(0, admin_site(app), interface="127.0.0.1")
    app.stats.start()
    return app, port, f"http://127.0.0.1:{port.getHost().port}"


@pytest_twisted.inlineCallbacks
def stop(app, port):
    app.stats.stop()
    app.feed.close()
    yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_ui_files(factories, tmp_path):
    """/ serves the UI's index.html and files below it, with anti-framing headers; no listings, no escapes."""
    (tmp_path / "index.html").write_text("<!doctype html><title>lbproxy</title>")
    (tmp_path / "app.js").write_text("console.log(1)")
    (tmp_path / "sub").mkdir()
    app, port, url = start_admin(factories, static=tmp_path)
    try:
        r = yield treq.get(url + "/")
        body = yield r.content()
        assert r.code == 200 and b"<title>lbproxy</title>" in body
        assert r.headers.getRawHeaders(b"X-Frame-Options") == [b"DENY"]
        r = yield treq.get(url + "/app.js")
        assert (yield r.content()) == b"console.log(1)"
        assert b"javascript" in r.headers.getRawHeaders(b"Content-Type")[0]
        r = yield treq.get(url + "/sub/")
        yield r.content()
        assert r.code == 404
        r = yield treq.get(url + "/%2e%2e/%2e%2e/etc/passwd")
        body = yield r.content()
        assert r.code in (400, 404) and b"root:" not in body
    finally:
        yield stop(app, port)


@pytest_twisted.inlineCallbacks
def test_schemathesis_finds_no_server_errors(factories, tmp_path):
    """schemathesis, generating requests from openapi.json against the live site, finds no 5xx and no response that breaks the document."""
    # No write limit, or most generated changes would only meet 429.
    app, port, url = start_admin(factories, write_rate=0)
    try:
        args = [
            "-m", "schemathesis.cli", "run", url + "/api/v1/openapi.json",
            "--checks", "all",
            # Schema-valid bodies can still be refused for reasons a schema
            # cannot say (unknown strategy name, duplicate address, stale
            # If-Match): those 4xx are right, so that one check is off.
            "--exclude-checks", "positive_data_acceptance",
            # The feed never ends; tests/test_web_sse.py covers it.
            "--exclude-path", "/api/v1/events",
            "--max-examples", "25", "--seed", "1234", "--workers", "1",
            "--generation-database", "none", "--no-color",
        ]
        # An invalid body over the 1 MiB limit is rightly refused with 413
        # (before it is read): a rejection too, beside schemathesis's defaults.
        (tmp_path / "schemathesis.toml").write_text(
            '[checks.negative_data_rejection]\nexpected-statuses = '
            '["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]\n')
        env = dict(os.environ, NO_COLOR="1")
        out, err, code = yield utils.getProcessOutputAndValue(sys.executable, args, env=env, path=str(tmp_path))
        text = out.decode(errors="replace") + err.decode(errors="replace")
        assert code == 0, text[-6000:]
        assert "passed" in text
    finally:
        yield stop(app, port)


@pytest_twisted.inlineCallbacks
def test_feed_client_that_stops_reading_is_cut_off(factories):
    """A real feed client that stops reading is disconnected once its backlog is full; the server's buffer stays bounded and a reading client is unaffected."""
    reactor = _reactor()
    app, port, url = start_admin(factories)
    app.feed.max_backlog = 64 * 1024
    try:
        stuck = FeedReader("/api/v1/events", read=False)
        fine = FeedReader("/api/v1/events")
        yield connect_feed(reactor, port.getHost().port, stuck)
        yield connect_feed(reactor, port.getHost().port, fine)
        yield wait_for(reactor, lambda: app.feed.subscriber_count == 2, what="two subscribers")
        blob = {"blob": "y" * 50_000}
        published = 0
        while app.feed.cut_offs == 0:
            app.balancer.events.publish("backend", blob)
            published += 1
            assert published < 2000, "the stuck client was never cut off"
            yield wait_for(reactor, lambda: len(fine.of("backend")) == published, what="the reading client")
        # A paused transport does not notice the peer hanging up (Twisted #11168).
        stuck.transport.resumeProducing()
        yield wait_for(reactor, lambda: stuck.lost.called, what="the stuck client to be disconnected")
        assert app.feed.subscriber_count == 1
        assert stuck.received < published * 50_000, "the stuck client read nothing more"
        app.balancer.events.publish("backend", {"last": True})
        yield wait_for(reactor, lambda: fine.events and fine.events[-1][2] == {"last": True}, what="last event")
    finally:
        yield stop(app, port)


@pytest_twisted.inlineCallbacks
def test_http_changes_with_token(factories):
    """Over real HTTP, with a token: reads open by flag, a change with the token and If-Match works, a stale one is 412."""
    token = "integration-token-123456"
    app, port, url = start_admin(factories, policy=AdminPolicy(token, open_reads=True))
    try:
        r = yield treq.get(url + "/api/v1/backends")
        etag = r.headers.getRawHeaders("ETag")[0]
        yield r.content()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "If-Match": etag}
        r = yield treq.patch(url + "/api/v1/backends/b2", data=b'{"weight": 9}', headers=headers)
        assert r.code == 200 and (yield r.json())["weight"] == 9
        r = yield treq.patch(url + "/api/v1/backends/b2", data=b'{"weight": 8}', headers=headers)
        assert r.code == 412
        assert app.balancer.config.backend("b2").weight == 9
        r = yield treq.post(url + "/api/v1/backends", data=b'{"host": "127.0.0.1", "port": 3}',
                            headers={"Content-Type": "application/json"})
        assert r.code == 401
        yield r.content()
    finally:
        yield stop(app, port)


@pytest_twisted.inlineCallbacks
def test_twistd_service_serves_admin(tmp_path):
    """The assembly wires the admin site: it answers on --admin, the feed and stats run, and stopping ends them."""
    from lbproxy.startup.assembly import assemble
    from lbproxy.startup.tap import Options

    reactor = _reactor()
    token = tmp_path / "token"
    token.write_text("service-token-abcdef123")
    options = Options()
    options.parseOptions([
        "--listen", "tcp:0:interface=127.0.0.1", "--admin", "tcp:0:interface=127.0.0.1",
        "--admin-token-file", str(token), "--admin-open-reads", "--no-access-log",
        "-b", "127.0.0.1:1", "--state-dir", str(tmp_path / "state"),
    ])
    assembly = assemble(options.spec, reactor)
    top = assembly.top
    top.startService()
    try:
        url = "http://%s:%d" % top.getServiceNamed("admin").address()
        r = yield treq.get(url + "/api/v1/status")
        status = yield r.json()
        assert r.code == 200 and status["backends"] == 1, status
        r = yield treq.put(url + "/api/v1/strategy", data=json.dumps({"name": "random"}).encode(),
                           headers={"Content-Type": "application/json"})
        assert r.code == 401
        yield r.content()
        assert assembly.admin.stats._loop is not None
    finally:
        yield top.stopService()
    assert assembly.admin.stats._loop is None
    assert assembly.admin.feed.subscriber_count == 0
