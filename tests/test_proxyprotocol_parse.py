"""
The receiving side of the PROXY protocol: v1 and v2 headers read from the
start of a stream, compared with Twisted's own (private) parser on valid
inputs, and under hypothesis mutations (always an answer, never raises).
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from lbproxy.relay.proxyprotocol import (
    MALFORMED, NEED_MORE, V1_MAX, V2_MAX, V2_SIGNATURE, Parsed, header_v1, header_v2, parse,
    starts_with_signature,
)
from tests.fuzz.samples import proxy_seeds

PAIRS = [
    (("192.0.2.7", 40000), ("198.51.100.1", 443)),
    (("10.0.0.1", 0), ("10.0.0.2", 65535)),
    (("2001:db8::7", 1234), ("2001:db8::1", 8443)),
    (("::1", 5), ("fe80::1:2:3:4", 6)),
]


@pytest.mark.parametrize("make", [header_v1, header_v2])
@pytest.mark.parametrize("source, destination", PAIRS)
def test_round_trip_with_our_sending_side(make, source, destination):
    """What lbproxy sends, lbproxy reads back: addresses, ports, length;
    bytes after the header are left for the client's data."""
    data = make(source, destination)
    found = parse(data + b"\x16\x03\x01rest")
    assert isinstance(found, Parsed)
    assert (found.length, found.source, found.destination) == (len(data), source, destination)


@pytest.mark.parametrize("make", [header_v1, header_v2])
@pytest.mark.parametrize("source, destination", PAIRS)
def test_same_answers_as_twisted(make, source, destination):
    """On valid headers our parser agrees with Twisted's haproxy parser."""
    from twisted.protocols.haproxy._v1parser import V1Parser
    from twisted.protocols.haproxy._v2parser import V2Parser

    data = make(source, destination)
    info = (V1Parser if make is header_v1 else V2Parser).parse(data.rstrip(b"\r\n") if make is header_v1 else data)
    ours = parse(data)

    def normal(addr):
        return (str(ipaddress.ip_address(addr.host)), addr.port)

    assert ours.source == normal(info.source) and ours.destination == normal(info.destination)


def test_unknown_and_local_keep_the_connections_address():
    """v1 UNKNOWN (with or without addresses after it) and v2 LOCAL or
    UNSPEC carry no usable address; Twisted agrees (its v1 parser refuses
    a bare C{PROXY UNKNOWN}, which the specification allows)."""
    from twisted.protocols.haproxy._v1parser import V1Parser
    from twisted.protocols.haproxy._v2parser import V2Parser

    for data in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ::1 ::2 1 2\r\n"):
        found = parse(data)
        assert (found.length, found.source) == (len(data), None)
    assert V1Parser.parse(b"PROXY UNKNOWN ::1 ::2 1 2").source is None
    local = header_v2(("192.0.2.1", 1), ("::1", 2))
    unspec = V2_SIGNATURE + bytes([0x21, 0x00, 0, 4]) + b"abcd"
    for data in (local, unspec):
        found = parse(data)
        assert (found.length, found.source) == (len(data), None)
        assert V2Parser.parse(data).source is None


def test_tlvs_after_v2_addresses_are_skipped():
    """A v2 header's length covers TLVs after the addresses: they are part
    of the header, not client data."""
    base = header_v2(("192.0.2.7", 1), ("192.0.2.8", 2))
    tlv = b"\x04\x00\x03abc"
    data = base[:14] + struct.pack("!H", 12 + len(tlv)) + base[16:] + tlv
    found = parse(data + b"DATA")
    assert found.length == len(data) and found.source == ("192.0.2.7", 1)


@pytest.mark.parametrize("make", [header_v1, header_v2])
def test_every_prefix_needs_more(make):
    """A header cut anywhere needs more bytes."""
    data = make(("192.0.2.7", 40000), ("198.51.100.1", 443))
    for cut in range(len(data)):
        assert parse(data[:cut]) is NEED_MORE, cut


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.0\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY \xff\r\n",
        b"PROXY " + b"x" * (V1_MAX - 6),
        V2_SIGNATURE + bytes([0x11, 0x11, 0, 12]) + b"\x00" * 12,  # version 1
        V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]) + b"\x00" * 12,  # command 2
        V2_SIGNATURE + bytes([0x21, 0x41, 0, 12]) + b"\x00" * 12,  # family 4
        V2_SIGNATURE + bytes([0x21, 0x13, 0, 12]) + b"\x00" * 12,  # protocol 3
        V2_SIGNATURE + bytes([0x21, 0x11, 0, 8]) + b"\x00" * 8,  # too short for IPv4
        V2_SIGNATURE + bytes([0x21, 0x21, 0, 12]) + b"\x00" * 12,  # too short for IPv6
    ],
)
def test_malformed_headers_are_answers(data):
    """Malformed headers, including a v1 line with no CRLF within 107 bytes,
    answer MALFORMED rather than raising."""
    assert parse(data) is MALFORMED


def test_over_long_v2_is_malformed_before_it_is_read():
    """A v2 header declaring more than the bound is refused from its first
    16 bytes, not buffered."""
    data = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", V2_MAX)
    assert parse(data) is MALFORMED
    fits = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", V2_MAX - 16)
    assert parse(fits) is NEED_MORE


def test_signature_detection():
    """A signature is told from its first bytes: a prefix is undecided,
    anything else is no signature."""
    assert starts_with_signature(b"") is None
    assert starts_with_signature(b"PRO") is None
    assert starts_with_signature(b"\r\n\r\n") is None
    assert starts_with_signature(b"PROXY ") is True
    assert starts_with_signature(V2_SIGNATURE) is True
    assert starts_with_signature(b"\x16\x03") is False
    assert starts_with_signature(b"PROXZ") is False


SEEDS = proxy_seeds()


def _answers_well(data):
    found = parse(data)
    assert found is NEED_MORE or found is MALFORMED or (
        isinstance(found, Parsed) and 0 < found.length <= len(data)
    )


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6), st.integers(0, 300))
def test_mutated_headers_never_raise(seed, flips, cut):
    """Real headers with bytes changed and cut anywhere: always an answer."""
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    _answers_well(bytes(data[: cut % (len(data) + 1)]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_after_signatures_never_raise(noise):
    """Anything after either signature: always an answer."""
    _answers_well(b"PROXY " + noise)
    _answers_well(V2_SIGNATURE + noise)
