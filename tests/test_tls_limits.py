"""
C{--max-connections} and TLS handshakes in progress, without sockets:
the rule itself (L{ProcessLimit.begin_handshake}/C{end_handshake}) and
the Twisted engine's listener asking it (over L{StringTransport} and an
in-memory TLS connection).  The fast engine's use of it is in
tests/test_fast_tls.py; both over real sockets in
tests/integration/test_tls_limits.py.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect

from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.interfaces import IListenerRoute
from lbproxy.model.tls import ServiceTLS
from lbproxy.policy.limits import ProcessLimit
from lbproxy.relay.tls import ServerTLS, build
from lbproxy.relay.twisted_tls import SwitchingFactory
from tests.tlscerts import CA


def test_handshakes_in_progress_count_with_admitted_connections():
    """
    A handshake may begin while admitted connections plus handshakes in
    progress are under the limit; a refused one counts nothing; an ended
    one frees its place; admitted connections take places the same way.
    """
    limit = ProcessLimit(3)
    limit.active = 1
    assert limit.begin_handshake() and limit.begin_handshake()
    assert limit.handshaking == 2
    assert not limit.begin_handshake()
    assert limit.handshaking == 2
    limit.end_handshake()
    assert limit.handshaking == 1
    assert limit.begin_handshake()
    limit.end_handshake()
    limit.end_handshake()
    limit.active = 3
    assert not limit.begin_handshake() and limit.handshaking == 0
    limit.active = 2
    assert limit.begin_handshake() and limit.handshaking == 1


@implementer(IListenerRoute)
class Route:
    """
    A listener route with no service that notes how many handshakes were
    in progress when the session asked it for one (at admission).
    """

    endpoint = "tcp:0"
    routes_by_sni = False
    accept_proxy = ()
    sni_timeout = 5.0

    def __init__(self, limit: ProcessLimit) -> None:
        from lbproxy.model.config import ProxySettings

        self.settings = ProxySettings()
        self.limit = limit
        self.refusals: Counter = Counter()
        self.asked: list[int] = []

    def default(self):
        self.asked.append(self.limit.handshaking)
        return None

    def for_server_name(self, name: str):
        return None

    def refused(self, reason: str) -> None:
        self.refusals[reason] += 1


@pytest.fixture
def listener(tmp_path):
    ca = CA(tmp_path)
    a = ca.issue("a", "a.test", ["a.test"])
    limit = ProcessLimit(2)
    route = Route(limit)
    verifyObject(IListenerRoute, route)
    factory = SwitchingFactory(route, Clock(), {}, limit)
    factory.serve(ServerTLS(ServiceTLS((a,)), build(ServiceTLS((a,)), "web"), ()))
    return SimpleNamespace(ca=ca, limit=limit, route=route, factory=factory)


def test_the_twisted_engine_refuses_a_tls_client_past_the_limit_and_frees_its_place_at_the_end(listener):
    """
    On the Twisted engine a TLS client gets no protocol (the port closes
    it at once, counted as rejected) when admitted connections and
    handshakes in progress fill C{--max-connections}; one that goes away
    before finishing its handshake frees its place.  (Before, the Twisted
    engine counted handshakes nowhere: every client got a protocol.)
    """
    limit, factory = listener.limit, listener.factory
    first = factory.buildProtocol(("127.0.0.1", 1))
    second = factory.buildProtocol(("127.0.0.1", 2))
    assert first is not None and second is not None and limit.handshaking == 2
    assert factory.buildProtocol(("127.0.0.1", 3)) is None
    assert listener.route.refusals["rejected"] == 1 and limit.handshaking == 2
    first.makeConnection(StringTransport())
    first.connectionLost(Failure(ConnectionDone()))
    assert limit.handshaking == 1
    assert factory.buildProtocol(("127.0.0.1", 4)) is not None
    assert limit.handshaking == 2 and listener.route.refusals["rejected"] == 1


def test_a_finished_handshake_no_longer_counts_when_the_client_is_admitted(listener):
    """
    When a TLS client's handshake is done its place as a handshake is
    freed before the session is admitted (where the balancer counts it as
    active): it is not counted twice, and it is counted once only when the
    connection then closes.
    """
    limit, factory = listener.limit, listener.factory
    server = factory.buildProtocol(("127.0.0.1", 1))
    assert limit.handshaking == 1
    client = TLSMemoryBIOFactory(
        optionsForClientTLS("a.test", trustRoot=_trust(listener.ca)), True,
        ClientFactory.forProtocol(Protocol),
    ).buildProtocol(None)
    pump = connect(server, FakeTransport(server, True), client, FakeTransport(client, False))
    for _ in range(20):
        pump.pump()
        if listener.route.asked:
            break
    assert listener.route.asked == [0]
    pump.flush()
    assert limit.handshaking == 0


def _trust(ca: CA):
    from twisted.internet.ssl import Certificate

    with open(ca.path) as f:
        return Certificate.loadPEM(f.read())
