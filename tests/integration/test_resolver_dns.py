"""
Backends by host name against a real DNS server on 127.0.0.1 (twisted.names,
started by the test) that answers, then goes silent or answers SERVFAIL:
the lookup itself (hosts file, search list, timeouts), a backend by name that
keeps serving and stays UP through the outage on both relay engines, and a
C{twistd lbproxy} child that stops at once on SIGTERM while a lookup hangs.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.threads import deferToThread
from twisted.names import dns, error, server

from lbproxy.health.checker import HealthChecker
from lbproxy.health.resolver import DNSLookup, LookupFailed, Resolver
from lbproxy.model.checks import HealthCheck
from lbproxy.model.config import Backend, Config, ProxySettings
from lbproxy.policy.balancer import Balancer
from tests.integration import relay_harness as h

pytestmark = pytest.mark.integration


class Zone:
    """
    What the test DNS server answers: C{records} while C{mode} is C{"ok"},
    nothing at all when C{"silent"}, SERVFAIL when C{"servfail"}.
    """

    def __init__(self, records: dict[str, str]) -> None:
        self.records = records
        self.mode = "ok"
        self.queries: list[tuple[str, str]] = []
        self.sources: list[Any] = []

    def query(self, query: Any, timeout: Any = None) -> defer.Deferred:
        name = query.name.name.decode()
        self.queries.append((self.mode, name))
        if self.mode == "silent":
            return defer.Deferred()
        ip = self.records.get(name)
        if ip is None:
            return defer.fail(error.DomainError(name))
        if query.type != dns.A:
            return defer.succeed(([], [], []))
        return defer.succeed(([dns.RRHeader(query.name.name, dns.A, dns.IN, 1, dns.Record_A(ip))], [], []))

    def served_since(self, mode: str) -> int:
        return sum(1 for m, _ in self.queries if m == mode)


class _Server(server.DNSServerFactory):
    """Answers SERVFAIL itself while the zone says so (a resolver error
    would make the server log a traceback)."""

    def handleQuery(self, message: Any, protocol: Any, address: Any) -> Any:
        zone = self.resolver.resolvers[0]
        zone.sources.append(address)
        if zone.mode != "servfail":
            return super().handleQuery(message, protocol, address)
        zone.queries.append(("servfail", message.queries[0].name.name.decode()))
        reply = dns.Message(id=message.id, answer=1, rCode=dns.ESERVER)
        reply.queries = message.queries
        self.sendReply(protocol, reply, address)


def dns_server(zone: Zone, interface: str = "127.0.0.1", port: int = 0) -> Any:
    factory = _Server(clients=[zone])
    factory.noisy = False
    return reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface=interface)


@pytest_twisted.inlineCallbacks
def test_lookup_against_a_real_dns_server():
    """DNSLookup gets A records from the server, says "no such name" for
    NXDOMAIN and "DNS server failure" for SERVFAIL, and gives up on a silent
    server after its attempts."""
    zone = Zone({"web.test": "127.0.0.7"})
    udp = dns_server(zone)
    try:
        lookup = DNSLookup(reactor, servers=[("127.0.0.1", udp.getHost().port)], attempts=(0.2, 0.2))
        assert (yield lookup("web.test")) == [(socket.AF_INET, "127.0.0.7")]
        with pytest.raises(LookupFailed, match="^no such name$"):
            yield lookup("nothing.test")
        zone.mode = "servfail"
        with pytest.raises(LookupFailed, match="DNS server failure"):
            yield lookup("web.test")
        zone.mode = "silent"
        start = reactor.seconds()
        with pytest.raises(LookupFailed, match="no answer from DNS server 127.0.0.1:"):
            yield lookup("web.test")
        assert reactor.seconds() - start < 2
    finally:
        yield udp.stopListening()


@pytest_twisted.inlineCallbacks
def test_one_quiet_socket_replaced_when_old(monkeypatch):
    """Lookups share one UDP socket (no log lines per query) until it is
    older than ROTATE, then a fresh one (another source port) is used."""
    from twisted.logger import formatEvent, globalLogPublisher

    from lbproxy.health import dnslookup

    zone = Zone({"web.test": "127.0.0.7"})
    udp = dns_server(zone)
    lines: list = []
    globalLogPublisher.addObserver(lines.append)
    try:
        lookup = DNSLookup(reactor, servers=[("127.0.0.1", udp.getHost().port)])
        for _ in range(3):
            yield lookup("web.test")
        assert len({port for _, port in zone.sources}) == 1
        opened = [formatEvent(e) for e in lines if "starting on" in formatEvent(e)]
        assert len(opened) == 1, opened
        monkeypatch.setattr(dnslookup, "ROTATE", -1.0)
        yield lookup("web.test")
        assert len({port for _, port in zone.sources}) == 2
        lookup.close()
    finally:
        globalLogPublisher.removeObserver(lines.append)
        yield udp.stopListening()


@pytest_twisted.inlineCallbacks
def test_hosts_file_first_and_localhost(tmp_path):
    """Names in the hosts file (and localhost in /etc/hosts) resolve without
    asking DNS, even when the DNS server is silent."""
    zone = Zone({})
    zone.mode = "silent"
    udp = dns_server(zone)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.9 db.internal db\n::1 six.internal\n")
    try:
        servers = [("127.0.0.1", udp.getHost().port)]
        lookup = DNSLookup(reactor, servers=servers, hosts_file=str(hosts))
        assert (yield lookup("db.internal")) == [(socket.AF_INET, "127.0.0.9")]
        assert (yield lookup("db")) == [(socket.AF_INET, "127.0.0.9")]
        assert (yield lookup("six.internal")) == [(socket.AF_INET6, "::1")]
        system = DNSLookup(reactor, servers=servers)
        assert (socket.AF_INET, "127.0.0.1") in (yield system("localhost"))
        assert zone.queries == []
    finally:
        yield udp.stopListening()


@pytest_twisted.inlineCallbacks
def test_resolv_conf_nameserver_and_search_list(tmp_path):
    """Without given servers, resolv.conf's nameserver is asked and its
    search list applied to a short name (a DNS server on port 53 of a spare
    loopback address; needs root)."""
    if os.geteuid() != 0:
        pytest.skip("binding port 53 needs root")
    zone = Zone({"api.corp.test": "127.0.0.5"})
    udp = dns_server(zone, interface="127.83.5.3", port=53)
    conf = tmp_path / "resolv.conf"
    conf.write_text("# test\nnameserver 127.83.5.3\nsearch corp.test\noptions ndots:1\n")
    try:
        lookup = DNSLookup(reactor, resolv_conf=str(conf), hosts_file=str(tmp_path / "none"))
        assert (yield lookup("api")) == [(socket.AF_INET, "127.0.0.5")]
        assert [name for _, name in zone.queries][:1] == ["api.corp.test"]
    finally:
        yield udp.stopListening()


def _engine(name: str, balancer: Balancer) -> tuple[int, Any]:
    return h.ENGINES[name](balancer, reactor)


@pytest.mark.parametrize("engine", sorted(h.ENGINES))
@pytest_twisted.inlineCallbacks
def test_backend_by_name_survives_a_dns_outage(engine, factories):
    """With --check tcp (fall 1), a backend given by a name only the test DNS
    server knows goes UP, then stays UP and keeps serving every client while
    the server is silent and then answers SERVFAIL; the check's reason says
    the address is from the last good lookup.  (Before the resolver, the
    check failed with "host name lookup failed" and clients were refused.)"""
    backend = h.serve(reactor, h.Named, name="web")
    zone = Zone({"web.test": "127.0.0.1"})
    udp = dns_server(zone)
    lookup = DNSLookup(reactor, servers=[("127.0.0.1", udp.getHost().port)], attempts=(0.2,))
    resolver = Resolver(reactor, lookup, refresh=0.3, timeout=0.5)
    check = HealthCheck(type="tcp", interval=0.1, timeout=0.5, rise=1, fall=1)
    config = Config(
        version=1, backends=(Backend(id="b1", host="web.test", port=backend.getHost().port),),
        health_check=check,
    )
    balancer = Balancer(config, factories, ProxySettings(), reactor=reactor, resolver=resolver)
    events: list = []
    balancer.events.subscribe(lambda e: events.append(e.data) if e.type == "backend" else None)
    resolver.track(["web.test"])
    resolver.startService()
    checker = HealthChecker(balancer, reactor)
    checker.startService()
    port, stop = _engine(engine, balancer)
    health = balancer.pool.health["b1"]
    try:
        yield h.until(lambda: health.last_check == "check passed" and health.available(reactor.seconds()))
        assert (yield deferToThread(h.names, port, 3)) == [b"web\n"] * 3
        for mode in ("silent", "servfail"):
            zone.mode = mode
            yield h.until(lambda: zone.served_since(mode) >= 2 and resolver.note("web.test"))
            yield h.until(lambda: (health.last_check or "").startswith("check passed (address from last good lookup"))
            assert (yield deferToThread(h.names, port, 10)) == [b"web\n"] * 10
            assert health.available(reactor.seconds())
        assert "lookup" in resolver.note("web.test")
        assert [e for e in events if e["state"] == "down"] == []
        assert balancer.totals.no_backend == 0 and balancer.totals.connect_failures == 0
        zone.mode = "ok"
        yield h.until(lambda: resolver.note("web.test") is None and health.last_check == "check passed")
    finally:
        checker.stopService()
        resolver.stopService()
        yield stop()
        yield backend.stopListening()
        yield udp.stopListening()


TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Child(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.inlineCallbacks
def test_twistd_serves_through_outage_and_stops_at_once_while_a_lookup_hangs():
    """A C{twistd lbproxy --check tcp} child with a backend by name serves
    clients and reports it UP while DNS is silent, and exits within a few
    seconds of SIGTERM while its lookup hangs (it used to wait for the
    getaddrinfo thread pool)."""
    backend = h.serve(reactor, h.Named, name="web")
    zone = Zone({"web.test": "127.0.0.1"})
    udp = dns_server(zone)
    listen, admin = _free_port(), _free_port()
    child = _Child()
    args = [
        sys.executable, "-c", TWISTD, "-n", "--pidfile=", "lbproxy",
        "--listen", f"tcp:{listen}:interface=127.0.0.1",
        "--admin", f"tcp:{admin}:interface=127.0.0.1",
        "--backend", f"web.test:{backend.getHost().port}",
        "--dns-server", f"127.0.0.1:{udp.getHost().port}", "--dns-refresh", "1",
        "--check", "tcp", "--check-interval", "0.2", "--check-timeout", "0.2", "--fall", "1", "--rise", "1",
    ]
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    transport = reactor.spawnProcess(child, sys.executable, args, env=env, path=REPO)
    killer = reactor.callLater(60, lambda: child.ended.called or transport.signalProcess("KILL"))

    @defer.inlineCallbacks
    def backend_state():
        try:
            response = yield treq.get(f"http://127.0.0.1:{admin}/api/v1/backends", persistent=False)
            body = yield response.json()
        except Exception:
            return None
        return body["backends"][0]

    @defer.inlineCallbacks
    def wait(predicate, what, deadline=30.0):
        start = reactor.seconds()
        while reactor.seconds() - start < deadline:
            assert not child.ended.called, child.output.decode(errors="replace")[-3000:]
            state = yield backend_state()
            if state is not None and predicate(state):
                return state
            yield task.deferLater(reactor, 0.2, lambda: None)
        raise AssertionError(f"timed out waiting for {what}:\n{child.output.decode(errors='replace')[-3000:]}")

    try:
        yield wait(lambda b: b["state"] == "up" and b["health"]["last_check"] == "check passed", "backend up")
        zone.mode = "silent"
        yield h.until(lambda: zone.served_since("silent") >= 1, timeout=60)
        state = yield wait(
            lambda b: (b["health"]["last_check"] or "").startswith("check passed (address from last good lookup"),
            "a passed check during the outage",
        )
        assert state["state"] == "up"
        assert (yield deferToThread(h.names, listen, 5)) == [b"web\n"] * 5
        queries = len(zone.queries)
        yield h.until(lambda: len(zone.queries) > queries, timeout=60)
        start = reactor.seconds()
        transport.signalProcess("TERM")
        yield child.ended
        took = reactor.seconds() - start
        output = child.output.decode(errors="replace")
        assert took < 3.0, (took, output[-3000:])
        assert "Traceback" not in output and "Server Shut Down." in output, output[-3000:]
    finally:
        if killer.active():
            killer.cancel()
        if not child.ended.called:
            transport.signalProcess("KILL")
            yield child.ended
        yield backend.stopListening()
        yield udp.stopListening()
