"""
SNI and PROXY-protocol routing end to end through a real lbproxy (the
assembly on the real reactor, both engines): services created with
C{POST /api/v1/services} share one port by server name, told apart by
Python's ssl client and C{openssl s_client -servername}, in front of real
TLS servers (a certificate made by openssl); a service with accept_proxy
behind HAProxy's send-proxy-v2 sees the original client.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from tests.integration import relay_harness as h
from tests.integration.test_services import LOCAL, call, start
from tests.integration.test_sni import (  # noqa: F401  (fixtures)
    ReadProxyLine,
    certificate,
    haproxy,
    s_client,
    tls_read,
    tls_server,
    wait_listening,
)

pytestmark = pytest.mark.integration

ENGINES = pytest.mark.parametrize("engine", ["twisted", "fast"])


def listening_port(body) -> int:
    (where,) = body["listening"]
    return int(where.rsplit(":", 1)[1])


@ENGINES
@pytest_twisted.ensureDeferred
async def test_two_services_posted_on_one_port_are_told_apart_by_sni(engine, cleanup, certificate):
    """
    Two services POSTed on the same port with their sni names: each name
    reaches its own TLS server (Python ssl and openssl s_client), no SNI
    and an unknown name go to the sni_default one, and the route of the
    shared listener names both services and refused no one.
    """
    site_a = tls_server(cleanup, certificate, "site-a")
    site_b = tls_server(cleanup, certificate, "site-b")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{h.dead_port()}", engine=engine)
    cleanup(lambda: defer.maybeDeferred(assembly.top.stopService))
    shared = f"tcp:{h.dead_port()}:interface=127.0.0.1"
    for name, port, extra in (("a", site_a, {"sni_default": True}), ("b", site_b, {})):
        code, body = await call("POST", url + "/services", {
            "name": name, "listen": [shared], "sni": [f"{name}.test"], **extra,
            "backends": [{"host": "127.0.0.1", "port": port}], "strategy": {"name": "round-robin"},
        })
        assert code == 201, body
    port = listening_port(body)
    route = assembly.listeners.routes[shared]
    assert route.services == ("a", "b") and route.routes_by_sni

    got = await deferToThread(lambda: [tls_read(port, n) for n in ("a.test", "b.test", None, "other.example")])
    assert got == [b"site-a\n", b"site-b\n", b"site-a\n", b"site-a\n"]
    got = await deferToThread(lambda: [s_client(port, n) for n in ("b.test", "a.test")])
    assert got == [b"site-b\n", b"site-a\n"]
    assert route.refusals == {}
    b1 = assembly.table.balancer("b").pool.stats["b1"]
    await h.until(lambda: b1.active == 0 and b1.total == 2)


@ENGINES
@pytest_twisted.ensureDeferred
async def test_posted_service_with_accept_proxy_behind_haproxy(engine, cleanup, haproxy):
    """
    A service POSTed with accept_proxy 127.0.0.0/8 behind HAProxy's
    send-proxy-v2: lbproxy reads the header, so its backend (sent PROXY
    v1) sees the original client's address and port, then the bytes.
    """
    backend = h.serve(reactor, ReadProxyLine)
    cleanup(backend.stopListening)
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{h.dead_port()}", engine=engine)
    cleanup(lambda: defer.maybeDeferred(assembly.top.stopService))
    code, body = await call("POST", url + "/services", {
        "name": "behind", "listen": [LOCAL], "accept_proxy": ["127.0.0.0/8"],
        "backends": [{"host": "127.0.0.1", "port": backend.getHost().port, "proxy_protocol": "v1"}],
        "strategy": {"name": "round-robin"},
    })
    assert code == 201, body
    front = haproxy(listening_port(body))

    def run():
        wait_listening(front)
        with socket.create_connection(("127.0.0.1", front), timeout=10, source_address=("127.0.0.3", 0)) as s:
            mine = s.getsockname()
            s.sendall(b"hello through two proxies!")
            return mine, h.read_all(s)

    (_, cport), answer = await deferToThread(run)
    assert answer == f"PROXY TCP4 127.0.0.3 127.0.0.1 {cport} {front}\r\n".encode() + b"hello through two proxies!"
