"""
The simulated users count a request as failed the way lbproxy counts a
backend failure (no answer, a reset, no answer in time), not by whether
the answer carries the demo backends' C{X-Backend} header.
"""

from __future__ import annotations

import random

from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from lbproxy.demo.users import REQUEST_TIMEOUT, UserPopulation


def _one_request():
    """A population of one user, advanced until it has opened a connection."""
    reactor = MemoryReactorClock()
    pop = UserPopulation("127.0.0.1", 8080, 1, reactor=reactor, rng=random.Random(3))
    pop.start()
    reactor.advance(1.0)
    assert len(reactor.tcpClients) == 1
    factory = reactor.tcpClients[0][2]
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    return reactor, pop, proto


def _user(pop):
    return next(iter(pop.users.values()))


def test_an_answer_without_x_backend_is_answered_not_failed():
    """
    A plain HTTP server (no C{X-Backend}) that answers and closes is an
    answered request: counted in C{answered}, not in C{failed}, and the
    user's status is ok.  (The old count called it a failure.)
    """
    _, pop, proto = _one_request()
    proto.dataReceived(b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\n\r\n<html>listing</html>")
    proto.connectionLost(Failure(ConnectionDone()))
    assert (pop.answered, pop.failed, pop.served) == (1, 0, {})
    assert (_user(pop).status, _user(pop).errors, _user(pop).ok) == ("ok", 0, 1)


def test_an_error_status_is_still_an_answer():
    """
    A 404 from the backend is an answer at L4, as lbproxy sees it (its card
    shows no failure for it), so the demo does not count it failed either.
    """
    _, pop, proto = _one_request()
    proto.dataReceived(b"HTTP/1.0 404 Not Found\r\nX-Backend: alpha\r\n\r\nnope")
    proto.connectionLost(Failure(ConnectionDone()))
    assert (pop.answered, pop.failed, pop.served) == (1, 0, {"alpha": 1})


def test_a_close_without_a_byte_is_a_failure():
    """
    lbproxy closes a client whose backend it could not reach without
    sending anything: that is a failed request.
    """
    _, pop, proto = _one_request()
    proto.connectionLost(Failure(ConnectionDone()))
    assert (pop.answered, pop.failed) == (0, 1)
    assert _user(pop).status == "error"


def test_a_reset_after_part_of_an_answer_is_a_failure():
    """A connection lost uncleanly (reset) mid-answer is a failure."""
    _, pop, proto = _one_request()
    proto.dataReceived(b"HTTP/1.0 200 OK\r\nX-Backend: alpha\r\n\r\nhal")
    proto.connectionLost(Failure(ConnectionLost()))
    assert (pop.answered, pop.failed, pop.served) == (0, 1, {})


def test_a_refused_connection_is_a_failure():
    """The proxy itself unreachable: a failure."""
    reactor = MemoryReactorClock()
    pop = UserPopulation("127.0.0.1", 8080, 1, reactor=reactor, rng=random.Random(3))
    pop.start()
    reactor.advance(1.0)
    reactor.tcpClients[0][2].clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
    assert (pop.answered, pop.failed) == (0, 1)


def test_no_answer_in_time_is_a_failure_even_if_closed_cleanly():
    """
    After L{REQUEST_TIMEOUT} the user gives up: the connection is closed
    from our side (cleanly), and that counts as a failure even though some
    bytes had arrived.
    """
    reactor, pop, proto = _one_request()
    proto.dataReceived(b"HTTP/1.0 200 OK\r\n")
    connector = reactor.connectors[0]
    disconnected = []
    connector.disconnect = lambda: disconnected.append(True)
    reactor.advance(REQUEST_TIMEOUT)
    assert disconnected
    proto.connectionLost(Failure(ConnectionDone()))
    assert (pop.answered, pop.failed) == (0, 1)
