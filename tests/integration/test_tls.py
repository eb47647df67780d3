"""
TLS over real loopback sockets: a listener terminating TLS with two
certificates picked by SNI, client certificates (mTLS), backends reached
over verified TLS, certificates replaced through the API and on disk
while a connection opened before keeps working, and bad certificates
refused with nothing changed.  Certificates are made by the test
(tests/tlscerts.py); clients are Python's C{ssl} (in a thread) and
C{openssl s_client}.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, ssl as tssl, threads

from tests.integration.test_services import LOCAL, backend, call, start, until
from tests.tlscerts import CA, handshake

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path):
    ca = CA(tmp_path)
    return {
        "dir": tmp_path,
        "ca": ca,
        "a": ca.issue("a", "a.test", ["a.test"]),
        "b": ca.issue("b", "b.test", ["b.test", "*.b.test"]),
        "client": ca.issue("client", "alice", client=True),
    }


def tls(*pairs, **extra):
    return {"certificates": [{"cert": c, "key": k} for c, k in pairs], **extra}


async def add(url, name, port, tls_body, backends_tls=None):
    body = {"name": name, "listen": [LOCAL], "backends": [{"host": "127.0.0.1", "port": port}]}
    if tls_body is not None:
        body["tls"] = tls_body
    if backends_tls is not None:
        body["backends"][0]["tls"] = backends_tls
    code, out = await call("POST", url + "/services", body)
    assert code == 201, out
    return int(out["listening"][0].rsplit(":", 1)[1]), out


def shake(port, name, ca, client=None, send=b""):
    return threads.deferToThread(handshake, port, name, ca, client, send)


@pytest_twisted.ensureDeferred
async def test_two_certificates_picked_by_sni_for_python_ssl_and_openssl(pki, engine):
    """
    (On each engine, which serves the TLS listener itself.)
    A TLS listener with two certificates: each server name gets its own
    (exact, then wildcard, then the first as default), seen by Python's
    ssl and by openssl s_client -servername; the relay works through TLS;
    the API shows each certificate's subject, names, issuer, fingerprint
    and expiry and no key.
    """
    named = backend(b"web")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{named.getHost().port}", engine=engine)
    try:
        port, out = await add(url, "web", named.getHost().port, tls(pki["a"], pki["b"]))
        listener = next(v for k, v in assembly.listeners.listeners.items() if k.endswith("(web)"))
        assert f"{engine} engine, TLS" in listener.what
        ca = pki["ca"].path
        assert await shake(port, "a.test", ca) == ("a.test", b"web")
        assert await shake(port, "b.test", ca) == ("b.test", b"web")
        assert await shake(port, "x.b.test", ca) == ("b.test", b"web")
        assert await shake(port, "other.test", ca) == ("a.test", b"web")
        assert await shake(port, None, ca) == ("a.test", b"web")

        def s_client(name):
            return subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
                 "-CAfile", ca, "-verify_return_error"],
                input=b"", capture_output=True, timeout=10,
            )

        for name, cn in (("a.test", "a.test"), ("b.test", "b.test")):
            done = await threads.deferToThread(s_client, name)
            text = done.stdout.decode(errors="replace")
            assert f"subject=CN = {cn}" in text or f"subject=CN={cn}" in text, text[:800]
            assert "Verify return code: 0 (ok)" in text

        code, view = await call("GET", url + "/services/web")
        assert code == 200
        shown = view["tls_certificates"]
        assert [c["subject"] for c in shown] == ["CN=a.test", "CN=b.test"]
        assert shown[1]["names"] == ["b.test", "*.b.test"]
        assert shown[0]["issuer"] == "CN=lbproxy test CA"
        assert len(shown[0]["fingerprint_sha256"].split(":")) == 32
        assert shown[0]["expires_in"] > 19 * 86400
        text = json.dumps(view)
        assert "PRIVATE KEY" not in text and "BEGIN" not in text
        import treq

        metrics = (await (await treq.get(url.rsplit("/api", 1)[0] + "/metrics", persistent=False)).text())
        found = [line for line in metrics.splitlines() if line.startswith("lbproxy_tls_certificate_expiry_seconds{")]
        assert len(found) == 2 and 'service="web"' in found[0] and 'name="b.test"' in found[1], found
        assert 19 * 86400 < float(found[0].rsplit(" ", 1)[1]) < 21 * 86400
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()


@pytest_twisted.ensureDeferred
async def test_mtls_admits_a_client_certificate_of_the_ca_and_refuses_one_without(pki, tmp_path, engine):
    """
    With client_ca, a client presenting a certificate of that CA is
    relayed, with its subject in the access log record; a client without
    one fails the handshake and no backend is connected for it.
    """
    named = backend(b"db")
    log_path = tmp_path / "access.log"
    options = ["--listen", LOCAL, "--backend", f"127.0.0.1:{named.getHost().port}"]
    from lbproxy.startup.tap import Options
    from lbproxy.startup.assembly import assemble

    opts = Options()
    opts.parseOptions(["--admin", LOCAL, "--engine", engine, "--access-log", str(log_path), *options])
    assembly = assemble(opts.spec, reactor)
    assembly.top.bind()
    assembly.top.startService()
    url = "http://127.0.0.1:%d/api/v1" % assembly.admin_listener.address()[1]
    try:
        port, _ = await add(url, "db", named.getHost().port, tls(pki["a"], client_ca=pki["ca"].path))
        ca = pki["ca"].path
        balancer = assembly.table.balancer("db")
        seen = []
        route = balancer.route

        def recording(client, exclude):
            seen.append(client)
            return route(client, exclude)

        balancer.route = recording
        assert await shake(port, "a.test", ca, pki["client"]) == ("a.test", b"db")
        # What a strategy is given: the client address, with the handshake's facts.
        assert seen[0].subject == "CN=alice" and seen[0].server_name == "a.test" and seen[0][0] == "127.0.0.1"
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            await shake(port, "a.test", ca, None, send=b"hello\n")
        await until(lambda: log_path.exists() and b"tls_subject" in log_path.read_bytes())
        lines = [json.loads(x) for x in log_path.read_text().splitlines() if "tls_subject" in x]
        assert lines[0]["tls_subject"] == "CN=alice"
        route = assembly.listeners.routes[next(k for k in assembly.listeners.routes if k.endswith("(db)"))]
        await until(lambda: route.refusals["tls-handshake-failed"] == 1)
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()


def tls_backend(pki, name):
    cert, key = pki["ca"].issue("backend", name, [name])
    with open(cert) as c, open(key) as k:
        pem = c.read() + k.read()
    options = tssl.PrivateCertificate.loadPEM(pem).options()
    from twisted.internet import protocol

    class Named(protocol.Protocol):
        def connectionMade(self):
            self.transport.write(b"secure\n")

        def dataReceived(self, data):
            self.transport.write(data)

    return reactor.listenSSL(0, protocol.ServerFactory.forProtocol(Named), options, interface="127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_backend_over_tls_is_verified_by_ca_and_server_name(pki, tmp_path, engine):
    """
    A backend reached over TLS: with the right CA and server name the
    client gets the backend's bytes; a wrong name or another CA fail the
    connect (the client is closed with nothing); verify false connects.
    """
    secure = tls_backend(pki, "backend.test")
    bport = secure.getHost().port
    (tmp_path / "other").mkdir()
    other = CA(tmp_path / "other", "other CA")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{bport}", engine=engine)
    try:
        from tests.integration.test_services import first_line

        cases = [
            ("good", {"ca": pki["ca"].path, "server_name": "backend.test"}, b"secure"),
            ("wrongname", {"ca": pki["ca"].path, "server_name": "other.test"}, None),
            ("wrongca", {"ca": other.path, "server_name": "backend.test"}, None),
            ("unverified", {"verify": False}, b"secure"),
        ]
        for name, backend_tls, expected in cases:
            port, _ = await add(url, name, bport, None, backend_tls)
            assert await first_line(port) == expected, name
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await secure.stopListening()


class Held:
    """A TLS connection opened in a thread, kept open across a change."""

    def __init__(self, port, ca):
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                    server_hostname="a.test")
        self.cn = dict(x[0] for x in self.sock.getpeercert()["subject"])["commonName"]
        self.read_line()

    def read_line(self):
        line = b""
        while b"\n" not in line:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            line += chunk
        return line

    def echo(self, data):
        self.sock.sendall(data)
        return self.read_line()


@pytest_twisted.ensureDeferred
async def test_certificate_replaced_through_api_and_on_disk_while_an_open_connection_keeps_working(pki, engine):
    """
    A PATCH of tls with new paths is served to the next handshake while a
    connection opened before still relays; files rewritten on disk are
    served after the store's poll (files broken on disk keep the ones in
    force and refuse no unrelated change); a key that does not match its
    certificate, or one readable by others, is a 400 and nothing changes.
    """
    named = backend(b"web")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{named.getHost().port}", engine=engine)
    ca = pki["ca"].path
    try:
        port, _ = await add(url, "web", named.getHost().port, tls(pki["a"]))
        held = await threads.deferToThread(Held, port, ca)
        assert held.cn == "a.test"

        new = pki["ca"].issue("a2", "a-renewed.test", ["a.test"])
        code, body = await call("PATCH", url + "/services/web", {"tls": tls(new)})
        assert code == 200, body
        assert (await shake(port, "a.test", ca))[0] == "a-renewed.test"
        assert await threads.deferToThread(held.echo, b"still here\n") == b"still here\n"

        code, before = await call("GET", url + "/services/web")
        version = assembly.table.document.version
        mismatched = (pki["a"][0], pki["b"][1])
        code, body = await call("PATCH", url + "/services/web", {"tls": tls(mismatched)})
        assert code == 400, body
        assert "does not match" in body["error"], body
        os.chmod(pki["b"][1], 0o644)
        code, body = await call("PATCH", url + "/services/web", {"tls": tls(pki["b"])})
        assert code == 400 and "readable by other users" in body["error"], body
        code, after = await call("GET", url + "/services/web")
        assert after["tls"] == before["tls"] and assembly.table.document.version == version
        assert (await shake(port, "a.test", ca))[0] == "a-renewed.test"

        # The files change on disk: the next poll reads them (in a thread).
        again = pki["ca"].issue("a3", "a-ondisk.test", ["a.test"])
        shutil.copy(again[0], new[0])
        shutil.copy(again[1], new[1])
        await assembly.listeners.tls.poll()
        assert (await shake(port, "a.test", ca))[0] == "a-ondisk.test"
        assert await threads.deferToThread(held.echo, b"and now\n") == b"and now\n"

        # Broken on disk: the poll keeps what is in force, and an unrelated
        # change of the service is still accepted.
        with open(new[0], "w") as f:
            f.write("not a certificate\n")
        await assembly.listeners.tls.poll()
        assert (await shake(port, "a.test", ca))[0] == "a-ondisk.test"
        code, body = await call("PATCH", url + "/services/web", {"retries": 1})
        assert code == 200, body
        assert (await shake(port, "a.test", ca))[0] == "a-ondisk.test"
        held.sock.close()
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_finishes_the_handshake_is_closed_at_sni_timeout(pki, engine):
    """
    A client that connects and sends nothing is closed once the
    service's sni_timeout passes (counted as tls-timeout), and no
    backend is connected for it.
    """
    named = backend(b"web")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{named.getHost().port}", engine=engine)
    try:
        body = {"name": "slow", "listen": [LOCAL], "sni_timeout": 0.3,
                "backends": [{"host": "127.0.0.1", "port": named.getHost().port}], "tls": tls(pki["a"])}
        code, out = await call("POST", url + "/services", body)
        assert code == 201, out
        port = int(out["listening"][0].rsplit(":", 1)[1])

        def silent():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                started = reactor.seconds()
                try:
                    assert s.recv(100) == b""
                except ConnectionResetError:
                    pass  # aborted: closed with a reset
                return reactor.seconds() - started

        waited = await threads.deferToThread(silent)
        assert 0.2 < waited < 5
        route = assembly.listeners.routes[next(k for k in assembly.listeners.routes if k.endswith("(slow)"))]
        await until(lambda: route.refusals["tls-timeout"] == 1)
        assert assembly.table.balancer("slow").totals.active == 0
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()


class Plain(Held):
    """A plain connection opened in a thread, kept open across a change."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.first = self.read_line()


@pytest_twisted.ensureDeferred
async def test_tls_turned_on_and_off_where_the_endpoint_listens(pki, engine):
    """
    On a service's endpoint that listens already, a PATCH turning tls on
    makes the next connections TLS on the same port while a plain
    connection opened before still relays; turning it off again makes the
    next ones plain while the TLS connection opened meanwhile (and the
    first plain one) still relay.
    """
    from tests.integration.test_services import first_line

    named = backend(b"web")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{named.getHost().port}", engine=engine)
    ca = pki["ca"].path
    try:
        port, _ = await add(url, "web", named.getHost().port, None)
        plain = await threads.deferToThread(Plain, port)
        assert plain.first == b"web\n"

        code, body = await call("PATCH", url + "/services/web", {"tls": tls(pki["a"])})
        assert code == 200, body
        assert body["listening"] == [f"127.0.0.1:{port}"]
        assert await shake(port, "a.test", ca) == ("a.test", b"web")
        held = await threads.deferToThread(Held, port, ca)
        assert held.cn == "a.test"
        assert await threads.deferToThread(plain.echo, b"plain still\n") == b"plain still\n"

        code, body = await call("PATCH", url + "/services/web", {"tls": None})
        assert code == 200, body
        assert "tls" not in body or body["tls"] is None, body
        assert await first_line(port) == b"web"
        assert await threads.deferToThread(held.echo, b"tls still\n") == b"tls still\n"
        assert await threads.deferToThread(plain.echo, b"and plain\n") == b"and plain\n"
        code, view = await call("GET", url + "/services/web")
        assert view["listening"] == [f"127.0.0.1:{port}"] and not view.get("tls_certificates")
        held.sock.close()
        plain.sock.close()
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()


@pytest_twisted.ensureDeferred
async def test_backend_that_never_finishes_the_tls_handshake_fails_at_connect_timeout(pki, engine):
    """
    A backend over TLS that accepts the TCP connection but never answers
    the ClientHello is a failed connect once the service's connect_timeout
    passes: the client is closed with nothing, and the failure is counted
    against the backend.
    """
    from twisted.internet import protocol

    from tests.integration.test_services import first_line

    mute = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(protocol.Protocol), interface="127.0.0.1")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{mute.getHost().port}", engine=engine)
    try:
        body = {"name": "mute", "listen": [LOCAL], "connect_timeout": 0.3, "retries": 0,
                "backends": [{"host": "127.0.0.1", "port": mute.getHost().port,
                              "tls": {"ca": pki["ca"].path, "server_name": "backend.test"}}]}
        code, out = await call("POST", url + "/services", body)
        assert code == 201, out
        port = int(out["listening"][0].rsplit(":", 1)[1])
        started = reactor.seconds()
        # A deadline, so that a proxy that never gives up fails the test instead of hanging it.
        assert await defer.ensureDeferred(first_line(port)).addTimeout(10, reactor) is None
        assert reactor.seconds() - started < 5
        balancer = assembly.table.balancer("mute")
        await until(lambda: balancer.totals.active == 0)
        code, view = await call("GET", url + "/services/mute")
        assert code == 200
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await mute.stopListening()


def echo_through(port, ca, size):
    """
    Blocking (run it in a thread): send C{size} bytes over TLS while
    reading the echo, in one thread (an SSL socket is not for two), with a
    deadline; whether what came back is what was sent, and its length.
    """
    import select
    import time

    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    data = memoryview(os.urandom(size))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="a.test") as sock:
            assert sock.recv(7) == b"secure\n"
            sock.setblocking(False)
            sent = 0
            got = bytearray()
            deadline = time.monotonic() + 30
            while len(got) < size and time.monotonic() < deadline:
                want_write = [sock] if sent < size else []
                readable, writable, _ = select.select([sock], want_write, [], 1.0)
                if writable:
                    try:
                        sent += sock.send(data[sent:sent + 65536])
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                        pass
                while True:
                    try:
                        chunk = sock.recv(1 << 20)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        break
                    if not chunk:
                        return False, len(got)
                    got += chunk
    return bytes(got) == bytes(data), len(got)


@pytest_twisted.ensureDeferred
async def test_megabytes_both_ways_through_tls_on_both_sides(pki, engine):
    """
    A TLS client, a TLS listener and a backend over TLS: 8 MiB sent while
    the echo is read arrive back whole and in order (backpressure with
    records on both sides, no byte left inside OpenSSL).
    """
    secure = tls_backend(pki, "backend.test")
    bport = secure.getHost().port
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{bport}", engine=engine)
    try:
        port, _ = await add(url, "both", bport, tls(pki["a"]), {"ca": pki["ca"].path, "server_name": "backend.test"})
        same, count = await threads.deferToThread(echo_through, port, pki["ca"].path, 8 * 1024 * 1024)
        assert same, count
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await secure.stopListening()


async def queued_tls_service(pki, engine, queue_timeout):  # noqa: F811
    """
    lbproxy with a TLS service whose one backend takes one connection at
    a time (a queue of 5 behind it); the assembly, the backend and the
    service's port.
    """
    named = backend(b"web")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{named.getHost().port}", engine=engine)
    body = {"name": "web", "listen": [LOCAL], "max_queue": 5, "queue_timeout": queue_timeout, "tls": tls(pki["a"]),
            "backends": [{"host": "127.0.0.1", "port": named.getHost().port, "max_connections": 1}]}
    code, out = await call("POST", url + "/services", body)
    if code != 201:
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()
        raise AssertionError(out)
    return assembly, named, int(out["listening"][0].rsplit(":", 1)[1])


@pytest_twisted.ensureDeferred
async def test_a_tls_client_queued_at_the_backends_max_connections_is_served_in_turn(pki, engine):
    """
    A TLS client whose handshake ends while every backend is at its
    max_connections waits in the service's queue, as a plain client does,
    and is served once the connection ahead of it closes.  (Before, on
    the Twisted engine, the queue's answer was taken for a backend: an
    AttributeError in the reactor, and the client closed with nothing.)
    """
    assembly, named, port = await queued_tls_service(pki, engine, 10)
    try:
        ca = pki["ca"].path
        first = await threads.deferToThread(Held, port, ca)
        second = shake(port, "a.test", ca)
        balancer = assembly.table.balancer("web")
        await until(lambda: balancer.traffic_state.view()["queue"]["length"] == 1)
        await threads.deferToThread(first.sock.close)
        assert await second.addTimeout(10, reactor) == ("a.test", b"web")
        await until(lambda: balancer.totals.active == 0)
        assert balancer.traffic_state.view()["queue"]["served"] == 1
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()


def read_to_the_end(port, ca):
    """
    Blocking (run it in a thread): a TLS client that reads until its
    connection ends; how it ended: C{"close_notify"} (a clean TLS end),
    C{"eof"} (TCP closed without one) or the error's class name.
    """
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="a.test", suppress_ragged_eofs=False) as sock:
            got = b""
            try:
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return got, "close_notify"
                    got += chunk
            except ssl.SSLEOFError:
                return got, "eof"
            except OSError as e:
                return got, type(e).__name__


@pytest_twisted.ensureDeferred
async def test_a_tls_connection_closed_by_lbproxy_ends_with_its_close_notify(pki, engine):
    """
    A TLS connection lbproxy closes itself (here at its idle timeout; a
    graceful stop's cut closes the same way) ends with lbproxy's
    close_notify, so the client can tell the end from a truncation.
    (Before, the fast engine closed the TCP connection without one: the
    client saw an EOF in violation of the protocol.)
    """
    named = backend(b"web")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{named.getHost().port}", engine=engine)
    try:
        body = {"name": "web", "listen": [LOCAL], "idle_timeout": 0.3, "tls": tls(pki["a"]),
                "backends": [{"host": "127.0.0.1", "port": named.getHost().port}]}
        code, out = await call("POST", url + "/services", body)
        assert code == 201, out
        port = int(out["listening"][0].rsplit(":", 1)[1])
        got, ended = await threads.deferToThread(read_to_the_end, port, pki["ca"].path)
        assert (got, ended) == (b"web\n", "close_notify")
        balancer = assembly.table.balancer("web")
        await until(lambda: balancer.totals.active == 0)
        assert balancer.totals.idle_timeouts == 1
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_tls_client_refused_after_its_handshake_gets_a_close_notify(pki, engine):
    """
    A TLS client refused once its handshake is done (here its address is
    denied) is closed with lbproxy's close_notify, a clean end with no
    byte, and counted as denied.  (Before, the fast engine closed the TCP
    connection without one: an EOF in violation of the protocol.)
    """
    named = backend(b"web")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{named.getHost().port}", engine=engine)
    try:
        body = {"name": "web", "listen": [LOCAL], "deny": ["127.0.0.0/8"], "tls": tls(pki["a"]),
                "backends": [{"host": "127.0.0.1", "port": named.getHost().port}]}
        code, out = await call("POST", url + "/services", body)
        assert code == 201, out
        port = int(out["listening"][0].rsplit(":", 1)[1])
        assert await threads.deferToThread(read_to_the_end, port, pki["ca"].path) == (b"", "close_notify")
        balancer = assembly.table.balancer("web")
        await until(lambda: balancer.traffic_state.view()["refused"]["denied"] == 1)
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()



@pytest_twisted.ensureDeferred
async def test_a_tls_client_whose_wait_in_the_queue_times_out_gets_a_close_notify(pki, engine):
    """
    A TLS client still waiting in the queue at its queue_timeout is
    closed with lbproxy's close_notify (a clean end with no byte), and
    counted as queue-timeout.  (Before, the fast engine closed the TCP
    connection without one.)
    """
    assembly, named, port = await queued_tls_service(pki, engine, 0.3)
    try:
        ca = pki["ca"].path
        first = await threads.deferToThread(Held, port, ca)
        try:
            assert await threads.deferToThread(read_to_the_end, port, ca) == (b"", "close_notify")
        finally:
            await threads.deferToThread(first.sock.close)
        balancer = assembly.table.balancer("web")
        await until(lambda: balancer.traffic_state.view()["refused"]["queue-timeout"] == 1)
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()
