"""
The fast engine's pieces that need no sockets: interfaces, endpoint
parsing and the --engine/--workers options.
"""

from __future__ import annotations

import socket
import sys

import pytest
from twisted.internet.interfaces import IReadDescriptor
from twisted.python import usage
from zope.interface.verify import verifyObject

from lbproxy.interfaces import IEngineConnection, IRelayedConnection

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll is Linux-only")


def _relay():
    from twisted.internet.task import Clock

    from lbproxy.model.config import Backend, Config
    from lbproxy.policy.balancer import Balancer
    from lbproxy.policy.plugins import strategy_factories
    from lbproxy.relay.fast_engine import FastRelay, Relay
    from lbproxy.relay.session import ConnectionSession

    clock = Clock()
    balancer = Balancer(
        Config(version=1, backends=(Backend("b1", "127.0.0.1", 9),)), strategy_factories(), reactor=clock
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    engine = FastRelay(balancer, listener, reactor=clock)
    client = socket.socket()
    from lbproxy.relay.route import SingleServiceRoute

    session = ConnectionSession(SingleServiceRoute(balancer), clock, ("127.0.0.1", 1234))
    return engine, Relay(engine, client, session), (listener, client)


def test_engine_is_a_read_descriptor():
    """The engine is what the reactor watches: an IReadDescriptor whose fd
    is the private epoll object's."""
    engine, relay, socks = _relay()
    try:
        assert verifyObject(IReadDescriptor, engine)
        assert engine.fileno() == engine.epoll.fileno()
    finally:
        engine.epoll.close()
        for s in socks:
            s.close()


def test_relay_is_a_relayed_connection():
    """A relay provides IRelayedConnection (what the balancer sees) and
    IEngineConnection (what its session sees), with zero byte counters
    before a backend is connected."""
    engine, relay, socks = _relay()
    try:
        assert verifyObject(IRelayedConnection, relay)
        assert verifyObject(IEngineConnection, relay)
        assert (relay.bytes_up, relay.bytes_down) == (0, 0)
    finally:
        engine.epoll.close()
        for s in socks:
            s.close()


@pytest.mark.parametrize(
    "description, expected",
    [
        ("tcp:8080", ("0.0.0.0", 8080, None)),
        ("tcp:0:interface=127.0.0.1:backlog=7", ("127.0.0.1", 0, 7)),
        ("tcp:port=9:backlog=3", ("0.0.0.0", 9, 3)),
        ("tcp6:8080:interface=\\:\\:1", ("::1", 8080, None)),
        ("tcp6:8080", ("::", 8080, None)),
        ("unix:/tmp/x.sock", None),
    ],
)
def test_parse_endpoint(description, expected):
    """Plain tcp/tcp6 endpoints parse to what the engines bind (the
    backlog only if the description has one); other kinds are not TCP."""
    from lbproxy.listening.endpoints import parse_endpoint

    endpoint = parse_endpoint(description)
    assert endpoint.description == description
    assert ((endpoint.host, endpoint.port, endpoint.backlog) if endpoint.tcp else None) == expected


@pytest.mark.parametrize("description, message", [
    ("tcp:notaport", "the port must be a number"),
    ("tcp:", "needs a port"),
    ("tcp:80:colour=red", "unknown tcp: option 'colour'"),
    ("tcp:80:backlog=0", "backlog must be a number from 1"),
    ("tcp:80:port=81", "port given twice"),
    ("tcp6:80:interface=127.0.0.1", "needs an IPv6 interface"),
    ("not an endpoint", "Unknown endpoint type"),
    ("bogus:1", "Unknown endpoint type: .bogus."),
])
def test_parse_endpoint_refuses_malformed(description, message):
    """A malformed description is a ValueError saying what is wrong."""
    from lbproxy.listening.endpoints import parse_endpoint

    with pytest.raises(ValueError, match=message):
        parse_endpoint(description)


def _options(*args):
    from lbproxy.startup.tap import Options

    options = Options()
    options.parseOptions(["--backend", "127.0.0.1:9", *args])
    return options


def test_engine_auto_picks_fast_for_tcp():
    """--engine auto (the default) is the fast engine for a tcp listener on
    Linux, and the twisted engine for any other endpoint."""
    assert _options("--listen", "tcp:0").spec.engine == "fast"
    assert _options("--listen", "unix:/tmp/lbproxy-test.sock").spec.engine == "twisted"
    assert _options("--listen", "tcp:0", "--engine", "twisted").spec.engine == "twisted"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engine", "turbo"], "--engine must be auto, fast or twisted"),
        (["--engine", "fast", "--listen", "unix:/tmp/x.sock"], "--engine fast needs"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--workers", "two"], "--workers must be a number"),
        (["--workers", "2", "--listen", "unix:/tmp/x.sock"], "--workers above 1 needs"),
    ],
)
def test_engine_and_workers_refuse_bad_values(args, message):
    """Bad --engine/--workers values are usage errors that say what is
    wrong."""
    with pytest.raises(usage.UsageError, match=message):
        _options(*args)
