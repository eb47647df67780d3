"""
C{--max-connections} and TLS handshakes over real loopback sockets, on
each engine: clients stalled in their handshake hold places of the
limit, the next one is refused at once, and a place freed serves a new
client.  The rule itself is unit-tested in tests/test_tls_limits.py.
"""

from __future__ import annotations

import socket
import ssl

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.integration.test_services import LOCAL, backend, call, start, until
from tests.integration.test_tls import pki, tls  # noqa: F401 (the fixture)
from tests.tlscerts import handshake

pytestmark = pytest.mark.integration

#: The start of a TLS record (a handshake, TLS 1.0 framing) and no more: a
#: client stalled in its handshake.  It sends something because the fast
#: engine's TLS listener has TCP_DEFER_ACCEPT: a client that sends nothing
#: is not even accepted (it holds no socket of the process) until then.
STALLED = b"\x16\x03\x01"


def refused_handshake(port: int, ca: str) -> bytes | str:
    """
    Blocking (run it in a thread): send a whole ClientHello and read what
    comes first.

    @return: C{b""} (closed: a refused client gets not even a
        ServerHello), the first bytes of the server's answer, or
        C{"reset"}.
    """
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="a.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(hello)
        try:
            return sock.recv(65536)  # b"" at the close; a ServerHello otherwise
        except ConnectionResetError:
            return "reset"


@pytest_twisted.ensureDeferred
async def test_clients_stalled_in_the_handshake_hold_places_of_max_connections(pki, engine):  # noqa: F811
    """
    With --max-connections 2, two clients that open a TCP connection to a
    TLS listener and stall in their handshake hold both places (counted as
    handshakes in progress); the next client is closed before any
    handshake (counted as rejected) and no backend is connected; once one
    stalled client goes away, a new client completes its handshake and is
    relayed.  (Before, the Twisted engine counted no handshake: the third
    client got a handshake.)
    """
    named = backend(b"web")
    assembly, url = start("--listen", LOCAL, "--backend", f"127.0.0.1:{named.getHost().port}",
                          "--max-connections", "2", engine=engine)
    stalled = []
    try:
        body = {"name": "web", "listen": [LOCAL], "sni_timeout": 60,
                "backends": [{"host": "127.0.0.1", "port": named.getHost().port}], "tls": tls(pki["a"])}
        code, out = await call("POST", url + "/services", body)
        assert code == 201, out
        port = int(out["listening"][0].rsplit(":", 1)[1])
        limit = assembly.table.process
        route = assembly.listeners.routes[next(k for k in assembly.listeners.routes if k.endswith("(web)"))]
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(STALLED)
            stalled.append(s)
        await until(lambda: limit.handshaking == 2)

        sent = await threads.deferToThread(refused_handshake, port, pki["ca"].path)
        assert sent in (b"", "reset")
        assert route.refusals["rejected"] == 1
        assert limit.handshaking == 2 and limit.active == 0

        stalled.pop().close()
        await until(lambda: limit.handshaking == 1)
        got = await threads.deferToThread(handshake, port, "a.test", pki["ca"].path)
        assert got == ("a.test", b"web")
        assert route.refusals["rejected"] == 1
        balancer = assembly.table.balancer("web")
        await until(lambda: balancer.totals.accepted == 1 and balancer.totals.active == 0)
        assert balancer.totals.rejected == 0
    finally:
        for s in stalled:
            s.close()
        await defer.maybeDeferred(assembly.top.stopService)
        await named.stopListening()
