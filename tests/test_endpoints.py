"""
The endpoints module: listen descriptions parsed once, listeners bound
before any starts (all or none), TCP sockets handed to the reactor with
the backlog asked, other kinds listened on through their endpoint.
"""

from __future__ import annotations

import socket

import pytest
from twisted.application.service import IService
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from zope.interface.verify import verifyObject

from lbproxy.startup.binding import LBProxyService
from lbproxy.listening.endpoints import parse_endpoint
from lbproxy.listening.listener_services import FastRelayService, ListenerService, ListenError


def _taken():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_bind(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_listeners_provide_iservice():
    """Both listeners are services twistd can parent."""
    endpoint = parse_endpoint("tcp:0:interface=127.0.0.1")
    verifyObject(IService, ListenerService(endpoint, Factory(), 50, "x", MemoryReactor()))
    verifyObject(IService, FastRelayService(None, endpoint, 50, reactor=MemoryReactor()))


def test_every_listener_binds_or_none_does():
    """The root binds every listener before any starts; if one cannot
    bind, the one line names its endpoint and reason, and the others'
    sockets are closed again (their ports are free)."""
    taken = _taken()
    first_port = _free_port()
    top = LBProxyService()
    first = ListenerService(parse_endpoint(f"tcp:{first_port}:interface=127.0.0.1"), Factory(), 50, "a", MemoryReactor())
    first.setServiceParent(top)
    busy = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
    ListenerService(parse_endpoint(busy), Factory(), 50, "b", MemoryReactor()).setServiceParent(top)
    try:
        with pytest.raises(SystemExit) as e:
            top.startService()
    finally:
        taken.close()
    assert str(e.value) == f"lbproxy: cannot listen on {busy}: Address already in use"
    assert not top.running and not first.running
    assert _can_bind(first_port)


def test_tcp_listener_hands_its_socket_to_the_reactor_with_the_backlog():
    """Started, a TCP listener listens with the backlog asked and gives
    the reactor the socket (adoptStreamPort); stopped, the port is free."""
    reactor = MemoryReactor()
    port = _free_port()
    factory = Factory()
    listener = ListenerService(parse_endpoint(f"tcp:{port}:interface=127.0.0.1"), factory, 321, "proxy", reactor)
    listener.privilegedStartService()
    assert not _can_bind(port)
    listener.startService()
    [(fd, family, adopted)] = reactor.adoptedPorts
    assert (family, adopted) == (socket.AF_INET, factory)
    assert listener.address() == ("127.0.0.1", 1234)  # the memory reactor's fake port
    listener.stopService()
    assert listener.address() is None
    assert _can_bind(port)


def test_other_endpoints_listen_through_serverFromString(tmp_path):
    """A unix: listener listens through its endpoint at start; a failure
    there is a ListenError at once, not a logged failure later."""
    reactor = MemoryReactor()
    path = str(tmp_path / "s.sock")
    listener = ListenerService(parse_endpoint(f"unix:{path}", reactor), Factory(), 50, "proxy", reactor)
    listener.startService()
    assert [server[0] for server in reactor.unixServers] == [path]
    assert listener.address() is None

    class Refusing(MemoryReactor):
        def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
            raise CannotListenError(None, address, OSError(13, "Permission denied"))

    refusing = Refusing()
    broken = ListenerService(parse_endpoint(f"unix:{path}", refusing), Factory(), 50, "proxy", refusing)
    with pytest.raises(ListenError, match="cannot listen on unix:.*Permission denied"):
        broken.startService()


@pytest.mark.parametrize("kind", ["twisted", "fast"])
def test_listening_line_names_the_bound_address_not_loopback(kind):
    """The 'listening on' line says where the socket is bound: a wildcard
    C{tcp:PORT} listener says C{0.0.0.0:PORT} (it was logged as
    C{127.0.0.1:PORT}, telling an operator that a listener open to every
    interface was loopback-only), an C{interface=127.0.0.1} one says
    C{127.0.0.1:PORT}, whatever address the reactor's port reports."""
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import capturedLogs, formatEvent

    for interface, shown in (("", "0.0.0.0"), (":interface=127.0.0.1", "127.0.0.1")):
        port = _free_port()
        description = f"tcp:{port}{interface}"
        if kind == "twisted":
            listener = ListenerService(parse_endpoint(description), Factory(), 50, "proxy", MemoryReactor())
        else:
            listener = FastRelayService(None, parse_endpoint(description), 50, reactor=MemoryReactorClock())
        with capturedLogs() as events:
            listener.startService()
        try:
            lines = [formatEvent(e) for e in events if e.get("log_namespace") == "lbproxy.listening"]
            assert lines == [f"{listener.what} listening on {shown}:{port} ({description}, backlog 50)"]
        finally:
            listener.stopService()


def test_an_unescaped_ipv6_interface_says_to_escape_its_colons():
    """C{tcp6:8080:interface=::1} splits at the address's colons; the
    refusal says to escape them (it said only "interface given twice"),
    and the escaped form parses."""
    for description in ("tcp6:8080:interface=::1", "tcp:8080:interface=2001:db8::1"):
        with pytest.raises(ValueError, match=r"escape the colons of an IPv6 address with a backslash: interface=\\:\\:1"):
            parse_endpoint(description)
    assert parse_endpoint(r"tcp6:8080:interface=\:\:1").host == "::1"
    with pytest.raises(ValueError) as e:
        parse_endpoint("tcp:8080:backlog=1:backlog=2")
    assert str(e.value) == "backlog given twice"
