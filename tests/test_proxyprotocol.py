"""
PROXY protocol headers, checked against Twisted's own receiving-side parser.
"""

from __future__ import annotations

import ipaddress

import pytest
from twisted.protocols.haproxy import _v1parser, _v2parser

from lbproxy.relay.proxyprotocol import header, header_v1, header_v2


def test_v1_ipv4():
    """v1 is the text line HAProxy documents, and Twisted parses it back."""
    h = header_v1(("192.0.2.1", 5555), ("198.51.100.2", 80))
    assert h == b"PROXY TCP4 192.0.2.1 198.51.100.2 5555 80\r\n"
    info = _v1parser.V1Parser.parse(h.rstrip(b"\r\n"))
    assert (info.source.host, info.source.port) == ("192.0.2.1", 5555)


def test_v2_ipv4_and_ipv6():
    """v2 binary headers parse back to the same addresses."""
    for src, dst in ((("192.0.2.1", 5555), ("198.51.100.2", 80)), (("2001:db8::1", 5), ("2001:db8::2", 443))):
        info = _v2parser.V2Parser.parse(header_v2(src, dst))
        got_src = (ipaddress.ip_address(info.source.host), info.source.port)
        got_dst = (ipaddress.ip_address(info.destination.host), info.destination.port)
        assert got_src == (ipaddress.ip_address(src[0]), src[1])
        assert got_dst == (ipaddress.ip_address(dst[0]), dst[1])


def test_mixed_families_are_unknown():
    """Addresses of different families give UNKNOWN (v1) and LOCAL (v2)."""
    assert header_v1(("192.0.2.1", 1), ("::1", 2)) == b"PROXY UNKNOWN\r\n"
    info = _v2parser.V2Parser.parse(header_v2(("192.0.2.1", 1), ("::1", 2)))
    assert info.source is None


def test_unknown_version():
    """Only v1 and v2 exist."""
    with pytest.raises(ValueError):
        header("v3", ("192.0.2.1", 1), ("192.0.2.2", 2))
