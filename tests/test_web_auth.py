"""
The admin API's access rules: bearer token, open reads, CSRF (Origin,
Sec-Fetch-Site, JSON content type), extensions under the same rules, and
the command-line rules for tokens.
"""

from __future__ import annotations

import pytest
from twisted.python import usage
from twisted.web.resource import Resource

from lbproxy.startup.tap import Options
from lbproxy.web.auth import AdminPolicy, loopback_only, read_token_file
from tests.webtools import Admin

TOKEN = "s3cret-token-0123456789"
NEW = {"host": "127.0.0.1", "port": 9050}


@pytest.fixture
def locked(factories):
    return Admin(factories, policy=AdminPolicy(TOKEN))


def bearer(token=TOKEN, **extra):
    return {"Authorization": f"Bearer {token}", **extra}


def test_mutation_needs_token(locked):
    """With a token configured, a change without it or with a wrong one is 401 and changes nothing."""
    r = locked.request("POST", "/api/v1/backends", NEW)
    assert r.code == 401 and "Bearer" in r.json["error"]
    assert r.header("WWW-Authenticate").startswith("Bearer")
    r = locked.request("POST", "/api/v1/backends", NEW, headers=bearer("wrong-token"))
    assert r.code == 401
    r = locked.request("POST", "/api/v1/backends", NEW, headers={"Authorization": f"Basic {TOKEN}"})
    assert r.code == 401
    assert locked.balancer.config.version == 1
    r = locked.request("POST", "/api/v1/backends", NEW, headers=bearer())
    assert r.code == 201


def test_reads_need_token_unless_open(factories, locked):
    """Reads need the token too, unless the policy opens them; EventSource-style ?access_token= works for reads of the event feed only."""
    assert locked.get("/api/v1/backends").code == 401
    assert locked.get("/metrics").code == 401
    assert locked.get("/api/v1/backends", headers=bearer()).code == 200
    assert locked.request("HEAD", f"/api/v1/events?access_token={TOKEN}").code == 200
    assert locked.request("HEAD", f"/api/v1/events?%61ccess_token={TOKEN}").code == 200
    assert locked.get(f"/api/v1/stats?access_token={TOKEN}").code == 401
    assert locked.get(f"/api/v1/config?access_token={TOKEN}").code == 401
    r = locked.request("POST", f"/api/v1/backends?access_token={TOKEN}", NEW)
    assert r.code == 401
    assert locked.get("/api/v1/openapi.json").code == 200
    open_reads = Admin(factories, policy=AdminPolicy(TOKEN, open_reads=True))
    assert open_reads.get("/api/v1/backends").code == 200
    assert open_reads.get("/api/v1/status").json["auth"] == {"token": True, "open_reads": True}
    assert open_reads.request("POST", "/api/v1/backends", NEW).code == 401


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://admin.test.evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site", "Origin": "http://other.admin.test"},
])
def test_cross_origin_changes_refused(locked, headers):
    """A change from another origin is 403 even with a valid token, and changes nothing."""
    r = locked.request("POST", "/api/v1/backends", NEW, headers=bearer(**headers))
    assert r.code == 403 and "CSRF" in r.json["error"]
    r = locked.request("DELETE", "/api/v1/backends/b1", headers=bearer(**headers))
    assert r.code == 403
    assert locked.balancer.config.version == 1


def test_same_origin_changes_allowed(factories):
    """The site's own pages (Origin equal to an allowed Host) and configured origins may change it."""
    admin = Admin(factories, policy=AdminPolicy(origins=["http://ui.example:8000"], hosts=["admin.test"]))
    r = admin.request("POST", "/api/v1/backends", NEW,
                      headers={"Origin": "http://admin.test", "Sec-Fetch-Site": "same-origin"})
    assert r.code == 201
    r = admin.request("PATCH", "/api/v1/backends/b1", {"weight": 3},
                      headers={"Origin": "http://ui.example:8000", "Sec-Fetch-Site": "cross-site"})
    assert r.code == 200


def test_form_posts_refused(factories):
    """Bodies a plain HTML form can send (not declared JSON) are 415, even without a token configured."""
    admin = Admin(factories)
    for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"):
        r = admin.request("PUT", "/api/v1/strategy", raw=b'{"name": "random"}', headers={"Content-Type": ctype})
        assert r.code == 415, ctype
    r = admin.request("PUT", "/api/v1/strategy", raw=b'{"name": "round-robin"}')
    assert r.code == 415
    assert admin.balancer.config.version == 1


class Echo(Resource):
    """An extension resource answering with its method and remaining path."""

    isLeaf = True

    def render(self, request):
        request.setHeader(b"Content-Type", b"text/plain")
        return request.method + b" " + b"/".join(request.postpath)


def test_extensions(factories):
    """An extension is mounted under /api/v1/<name>, behind the same policy; built-in names cannot be taken."""
    admin = Admin(factories, policy=AdminPolicy(TOKEN, open_reads=True), extensions={"demo": Echo()})
    r = admin.get("/api/v1/demo/users/5")
    assert r.code == 200 and r.body == b"GET users/5"
    r = admin.request("POST", "/api/v1/demo/kill", {"a": 1})
    assert r.code == 401
    r = admin.request("POST", "/api/v1/demo/kill", {"a": 1}, headers=bearer(Origin="http://evil.example"))
    assert r.code == 403
    r = admin.request("POST", "/api/v1/demo/kill", {"a": 1}, headers=bearer())
    assert r.code == 200 and r.body == b"POST kill"
    with pytest.raises(ValueError):
        admin.app.add_extension("backends", Echo())
    with pytest.raises(ValueError):
        admin.app.add_extension("demo", Echo())


def test_extension_klein_app(factories):
    """A Klein app (anything with resource()) can be an extension."""
    from klein import Klein

    class Nodes:
        app = Klein()

        @app.route("/", methods=["GET"])
        def list_nodes(self, request):
            return b"nodes"

        def resource(self):
            return self.app.resource()

    admin = Admin(factories)
    admin.app.add_extension("nodes", Nodes())
    assert admin.get("/api/v1/nodes/").body == b"nodes"


# The command line -------------------------------------------------------------


def _parse(*args):
    o = Options()
    o.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *args])
    return o


def test_token_file(tmp_path):
    """--admin-token-file reads the token; bad files are UsageErrors."""
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert _parse("--admin-token-file", str(f)).spec.admin_token == TOKEN
    assert _parse().spec.admin_token is None
    with pytest.raises(usage.UsageError, match="cannot read"):
        _parse("--admin-token-file", str(tmp_path / "missing"))
    f.write_text("short")
    with pytest.raises(usage.UsageError, match="at least 16"):
        _parse("--admin-token-file", str(f))
    f.write_text("")
    with pytest.raises(usage.UsageError):
        _parse("--admin-token-file", str(f))


def test_non_loopback_admin_needs_token(tmp_path):
    """An admin endpoint reachable from other hosts without a token is refused at startup."""
    with pytest.raises(usage.UsageError, match="reachable from other hosts"):
        _parse("--admin", "tcp:0")
    with pytest.raises(usage.UsageError, match="reachable from other hosts"):
        _parse("--admin", "tcp:0:interface=0.0.0.0")
    f = tmp_path / "token"
    f.write_text(TOKEN)
    assert _parse("--admin", "tcp:0", "--admin-token-file", str(f)).spec.admin_token == TOKEN
    assert _parse("--admin", "tcp:0:interface=127.0.0.1").spec.admin_token is None
    with pytest.raises(usage.UsageError, match="open-reads"):
        _parse("--admin-open-reads")


@pytest.mark.parametrize("description, local", [
    ("tcp:8081:interface=127.0.0.1", True),
    ("tcp6:8081:interface=\\:\\:1", True),
    ("unix:/tmp/lbproxy-admin.sock", True),
    ("tcp:8081", False),
    ("tcp:8081:interface=0.0.0.0", False),
    ("tcp:8081:interface=192.0.2.1", False),
    ("nonsense:1", False),
])
def test_loopback_only(description, local):
    """Only loopback interfaces and UNIX sockets count as local."""
    assert loopback_only(description) is local


def test_read_token_file_rejects_spaces(tmp_path):
    """A token with inner spaces cannot be sent in a header, so it is refused."""
    f = tmp_path / "t"
    f.write_text("abc def ghi jkl mno pqr")
    with pytest.raises(ValueError, match="printable"):
        read_token_file(str(f))


def test_admin_limit_flags_reach_the_site(factories):
    """--admin-host, --admin-max-connections, --admin-read-timeout and --admin-write-rate are parsed, checked and given to the admin site."""
    from twisted.internet.testing import MemoryReactorClock

    from lbproxy.web import admin_service

    o = _parse("--admin-host", "LB1.example.com", "--admin-host", "lb2", "--admin-max-connections", "7",
               "--admin-read-timeout", "2.5", "--admin-write-rate", "3")
    helper = Admin(factories)
    app, services = admin_service(o.spec, helper.controller, helper.balancer, reactor=MemoryReactorClock())
    site = next(s for s in services if s.name == "admin").factory
    assert app.policy.hosts == {"lb1.example.com", "lb2"}
    assert (site.max_connections, site.read_timeout, app.writes.rate, app.writes.burst) == (7, 2.5, 3, 6)
    defaults = _parse()
    spec = defaults.spec
    assert (spec.admin_max_connections, spec.admin_read_timeout, spec.admin_write_rate) == (256, 10, 20)
    for bad in (["--admin-host", "lb:8081"], ["--admin-host", "a b"], ["--admin-max-connections", "0"],
                ["--admin-write-rate", "-1"], ["--admin-read-timeout", "x"]):
        with pytest.raises(usage.UsageError):
            _parse(*bad)
