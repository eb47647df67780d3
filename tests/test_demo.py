"""
The demo's parts without the network: the demo backend's protocol, the
simulated users on a memory reactor with a fake clock, the demo API through
StubTreq, and the demo's command-line checks.
"""

from __future__ import annotations

import json
import random

import pytest
from treq.testing import StubTreq
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure

from lbproxy.model.config import Config
from lbproxy.demo.api import DemoAPI
from lbproxy.demo.backend import DemoBackend, DemoRequest
from lbproxy.demo.service import DEMO_HEALTH_CHECK, Demo, check_demo_options
from lbproxy.demo.users import MAX_INFLIGHT, MAX_USERS, UserPopulation, _backend_of


def _connected(backend: DemoBackend) -> tuple[DemoRequest, StringTransport]:
    proto = DemoRequest(backend)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_backend_answers_after_its_delay_with_its_name():
    """
    A request is answered only once the backend's delay has passed, names
    the backend in a header and the body, and the connection is closed.
    """
    reactor = MemoryReactorClock()
    backend = DemoBackend("alpha", delay=0.25, reactor=reactor)
    proto, transport = _connected(backend)
    proto.dataReceived(b"GET / HTTP/1.0\r\n")
    proto.dataReceived(b"Host: x\r\n\r\n")
    assert transport.value() == b""
    reactor.advance(0.2)
    assert transport.value() == b""
    reactor.advance(0.05)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"X-Backend: alpha\r\n" in answer and answer.endswith(b"hello from alpha\n")
    assert transport.disconnecting
    assert _backend_of(answer) == "alpha"
    assert backend.requests == 1


def test_backend_health_path_answers_at_once():
    """C{/health} skips the delay, so checks see the backend, not its load."""
    reactor = MemoryReactorClock()
    backend = DemoBackend("bravo", delay=5, reactor=reactor)
    proto, transport = _connected(backend)
    proto.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.0 200 OK")
    assert backend.requests == 0


def test_backend_refuses_an_endless_request_head():
    """A head over 8 KiB gets a 400 instead of growing a buffer forever."""
    backend = DemoBackend("alpha", reactor=MemoryReactorClock())
    proto, transport = _connected(backend)
    proto.dataReceived(b"x" * 9000)
    assert transport.value().startswith(b"HTTP/1.0 400 Bad Request")


def test_backend_offline_cuts_connections_and_closes_the_port():
    """
    Going offline stops listening and aborts open connections (a crash,
    not a polite close); online listens again on the same port.
    """
    reactor = MemoryReactorClock()
    backend = DemoBackend("alpha", port=9101, reactor=reactor)
    backend.go_online()
    assert backend.online and reactor.tcpServers[-1][0] == 9101
    proto, transport = _connected(backend)
    proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    backend.go_offline()
    assert not backend.online
    assert transport.disconnecting
    backend.go_online()
    assert [s[0] for s in reactor.tcpServers] == [9101, 9101]


def _population(count=5, **kw):
    reactor = MemoryReactorClock()
    pop = UserPopulation("127.0.0.1", 8080, count, reactor=reactor, rng=random.Random(7), **kw)
    return reactor, pop


def _answer(reactor, index, backend=b"bravo"):
    host, port, factory, timeout, bind = reactor.tcpClients[index]
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"HTTP/1.0 200 OK\r\nX-Backend: " + backend + b"\r\n\r\nhello")
    proto.connectionLost(Failure(ConnectionDone()))
    return transport


def test_users_come_online_and_connect_from_their_own_address():
    """
    Started with a count, that many users come online within a second and
    open connections to the proxy, each from its own loopback address.
    """
    reactor, pop = _population(5)
    pop.start()
    assert len(pop.online) == 5
    reactor.advance(1.0)
    assert reactor.tcpClients, "no user connected"
    sources = {c[4][0] for c in reactor.tcpClients}
    assert all(s.startswith("127.0.0.") for s in sources)
    assert {(c[0], c[1]) for c in reactor.tcpClients} == {("127.0.0.1", 8080)}
    transport = _answer(reactor, 0)
    assert transport.value().startswith(b"GET /?user=u")
    assert pop.answered == 1 and pop.served == {"bravo": 1}


def test_failed_connections_count_as_errors():
    """A refused connection marks the user's status as error and counts."""
    reactor, pop = _population(1)
    pop.start()
    reactor.advance(1.0)
    factory = reactor.tcpClients[0][2]
    factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
    user = next(iter(pop.users.values()))
    assert (user.status, user.errors, pop.failed) == ("error", 1, 1)


def test_users_go_offline_and_others_take_their_place():
    """
    Sessions end (users go offline) and the population tops back up to the
    count, so users keep coming and going.
    """
    reactor, pop = _population(6, session=(2.0, 4.0), pause=(0.1, 0.5))
    pop.start()
    for _ in range(100):
        reactor.advance(0.1)
    assert pop.went_offline >= 6
    assert pop.went_online >= 12
    # Some leavers may still be in their pause before someone replaces them.
    assert 1 <= len(pop.online) <= 6
    assert pop.went_online - pop.went_offline == len(pop.online)
    assert {e for _, _, e in pop.recent} == {"online", "offline"}
    assert 6 < len(pop.users) <= 10, "the roster is bounded, a third over the count"


def test_user_rates_are_bounded():
    """
    A user never has more than MAX_INFLIGHT requests open, however slow
    the answers.
    """
    reactor, pop = _population(3, session=(50.0, 60.0))
    pop.start()
    for _ in range(90):
        reactor.advance(0.1)
    per_user: dict[str, int] = {}
    for c in reactor.tcpClients:
        per_user[c[4][0]] = per_user.get(c[4][0], 0) + 1
    assert per_user and max(per_user.values()) <= MAX_INFLIGHT


def test_set_count_and_its_bounds():
    """
    The count can go down (users leave at once) and up; out-of-range or
    non-integer counts are refused and change nothing.
    """
    reactor, pop = _population(8)
    pop.start()
    pop.set_count(3)
    assert len(pop.online) == 3 and pop.count == 3
    for bad in (-1, MAX_USERS + 1, 2.5, True, "9"):
        with pytest.raises(ValueError):
            pop.set_count(bad)
    assert pop.count == 3
    pop.set_count(10)
    assert len(pop.online) == 10


def test_stop_leaves_no_timer():
    """Stopping takes everyone offline and cancels every timer."""
    reactor, pop = _population(5)
    pop.start()
    reactor.advance(2.0)
    pop.stop()
    assert not pop.online
    assert reactor.getDelayedCalls() == []


def _demo(users=4):
    reactor = MemoryReactorClock()
    demo = Demo([9201, 9202, 9203], users, reactor=reactor)
    demo.listen()
    demo.start_users("127.0.0.1", 8080)
    return reactor, demo


def test_demo_seed_config_has_the_backends_and_fast_checks():
    """The seed pool is the demo backends on their ports, with fast health checks."""
    reactor, demo = _demo()
    config = demo.seed(Config(version=1))
    assert [(b.id, b.port) for b in config.backends] == [("alpha", 9201), ("bravo", 9202), ("charlie", 9203)]
    assert config.health_check == DEMO_HEALTH_CHECK and config.health_check.interval <= 0.5


class _Api:
    def __init__(self):
        self.reactor, self.demo = _demo()
        self.stub = StubTreq(DemoAPI(self.demo).resource())

    def call(self, method, path, body=None, raw=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        d = self.stub.request(method, "http://demo.test" + path, data=data,
                              headers={"Content-Type": "application/json"})
        response = self.stub.flush() or None
        result = []
        d.addCallback(lambda r: r.content().addCallback(lambda c: result.append((r.code, json.loads(c)))))
        self.stub.flush()
        return result[0]


def test_demo_api_reads_and_changes():
    """
    The demo API shows backends and users, takes a backend offline and
    online, changes its delay and the user count.
    """
    api = _Api()
    code, state = api.call("GET", "/")
    assert code == 200 and [b["name"] for b in state["backends"]] == ["alpha", "bravo", "charlie"]
    assert state["users"]["count"] == 4
    code, b = api.call("POST", "/backends/bravo", {"online": False, "delay": 0.3})
    assert code == 200 and b["online"] is False and b["delay"] == 0.3
    assert not api.demo.backends["bravo"].online
    code, b = api.call("POST", "/backends/bravo", {"online": True})
    assert code == 200 and api.demo.backends["bravo"].online
    code, users = api.call("PUT", "/users", {"count": 2})
    assert code == 200 and users["online"] == 2


@pytest.mark.parametrize("method,path,body,code,message", [
    ("POST", "/backends/zulu", {"online": False}, 404, "no demo backend named 'zulu'"),
    ("POST", "/backends/alpha", {"delay": 11}, 400, "delay must be a number of seconds from 0 to 10"),
    ("POST", "/backends/alpha", {"delay": "slow"}, 400, "delay must be a number"),
    ("POST", "/backends/alpha", {"online": 1}, 400, "online must be true or false"),
    ("POST", "/backends/alpha", {}, 400, "body must be a JSON object"),
    ("POST", "/backends/alpha", [1], 400, "body must be a JSON object"),
    ("PUT", "/users", {"count": -3}, 400, "count must be an integer from 0 to"),
    ("PUT", "/users", {"count": 3, "x": 1}, 400, 'body must be {"count": N}'),
])
def test_demo_api_refuses_bad_requests(method, path, body, code, message):
    """Each bad request gets its own 4xx message and changes nothing."""
    api = _Api()
    before = api.call("GET", "/")[1]
    got_code, got = api.call(method, path, body)
    assert got_code == code and message in got["error"], got
    after = api.call("GET", "/")[1]
    assert [(b["online"], b["delay"]) for b in after["backends"]] == [(b["online"], b["delay"]) for b in before["backends"]]
    assert after["users"]["count"] == before["users"]["count"]


def test_demo_api_refuses_invalid_json():
    """A body that is not JSON gets a 400 saying so."""
    code, body = _Api().call("PUT", "/users", raw=b"{count: 3")
    assert code == 400 and "not valid JSON" in body["error"]


@pytest.mark.parametrize("users,ports,message", [
    ("many", "0,0,0", "--demo-users must be a number"),
    ("501", "0,0,0", "--demo-users must be from 0 to 500"),
    ("5", "a,b", "--demo-ports must be port numbers"),
    ("5", "9000,9000", "lists a port twice"),
    ("5", "1,2,3,4", "must list 1 to 3 ports"),
    ("5", "70000", "--demo-ports must be port numbers"),
])
def test_demo_options_are_checked(users, ports, message):
    """Bad demo flags are usage errors that say what is wrong."""
    with pytest.raises(usage.UsageError, match=message):
        check_demo_options(users, ports)


def test_demo_with_a_state_dir_needs_fixed_ports():
    """
    A stored pool outlives the process, so with C{--state-dir} the demo
    backends must come back on the same ports: any-free-port is refused.
    """
    with pytest.raises(usage.UsageError, match="needs fixed --demo-ports"):
        check_demo_options("5", "0,0,0", "/tmp/x")
    assert check_demo_options("5", "9001,9002,9003", "/tmp/x") == (5, (9001, 9002, 9003))


def test_demo_plugin_composes_lbproxy_options_on_loopback():
    """C{twistd lbproxy-demo} takes lbproxy's flags plus the demo's, and
    its proxy listens on loopback unless told otherwise; the product's
    options know nothing of the demo."""
    from lbproxy.demo.tap import Options as DemoOptions
    from lbproxy.startup.tap import Options

    o = DemoOptions()
    o.parseOptions(["--demo-users", "7", "--strategy", "random"])
    assert o.spec.users == 7 and o.spec.ports == (0, 0, 0)
    assert o.spec.proxy.listen.host == "127.0.0.1" and o.spec.proxy.seed.strategy.name == "random"
    assert "tcp:8080:interface=127.0.0.1" in o.getUsage()
    product = {name for name, *_ in Options.optParameters}
    assert not any(name.startswith("demo-") for name in product)
    with pytest.raises(usage.UsageError, match="--demo-users must be a number"):
        DemoOptions().parseOptions(["--demo-users", "lots"])
