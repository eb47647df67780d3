"""
The TLS ClientHello reader on real ClientHellos (Python's C{ssl}, TLS 1.2
and 1.3), on hand-built ones for the edges, and under hypothesis
mutations: it answers for every input and never raises.
"""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings, strategies as st

from lbproxy.relay.sni import MAX_HELLO, NEED_MORE, NO_SNI, NOT_TLS, Answer, read_server_name
from tests.fuzz.samples import _records, built_hello, client_hello, hello_seeds, refragment, sni_extension

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.mark.parametrize("version", VERSIONS)
def test_real_hello_gives_its_server_name(version):
    """A real client's ClientHello with SNI answers the name, over TLS 1.2
    and 1.3, in one record or spread over many small ones."""
    hello = client_hello("www.example.org", version)
    assert read_server_name(hello) == "www.example.org"
    assert read_server_name(refragment(hello, 50)) == "www.example.org"


@pytest.mark.parametrize("version", VERSIONS)
def test_real_hello_without_server_name_is_no_sni(version):
    """A real ClientHello without server_hostname is TLS with no SNI."""
    assert read_server_name(client_hello(None, version)) is NO_SNI


@pytest.mark.parametrize("version", VERSIONS)
def test_every_prefix_needs_more(version):
    """Any proper prefix of a hello (however it was cut into TCP segments
    and records) needs more bytes; the whole one answers."""
    for hello in (client_hello("a.example", version), refragment(client_hello("a.example", version), 77)):
        for cut in range(len(hello)):
            assert read_server_name(hello[:cut]) is NEED_MORE, cut
        assert read_server_name(hello) == "a.example"


def test_bytes_after_the_hello_change_nothing():
    """What follows a complete hello (more records, junk) is not looked at."""
    hello = client_hello("a.example")
    assert read_server_name(hello + b"\x17\x03\x03\x00\x05hello") == "a.example"


def test_not_tls_answers_from_the_first_byte():
    """Plain text is not TLS at its first byte; a handshake type byte with
    a wrong version byte is not TLS either."""
    assert read_server_name(b"G") is NOT_TLS
    assert read_server_name(b"SSH-2.0-x\r\n") is NOT_TLS
    assert read_server_name(b"\x16") is NEED_MORE
    assert read_server_name(b"\x16\x02") is NOT_TLS
    assert read_server_name(b"") is NEED_MORE


def test_a_record_of_another_type_inside_the_hello_is_not_tls():
    """An alert record in the middle of a fragmented hello is malformed."""
    hello = refragment(client_hello("a.example"), 100)
    broken = hello[:105] + b"\x15\x03\x03\x00\x02\x02\x28" + hello[105:]
    assert read_server_name(broken) is NOT_TLS


def test_names_are_lowered_and_lose_a_trailing_dot():
    """Server names compare case-insensitively and without the root dot."""
    assert read_server_name(built_hello([sni_extension(b"WWW.Example.COM.")])) == "www.example.com"


@pytest.mark.parametrize("name", [b"", b"a b", b"\xff.example", b"a" * 254, b"x/y"])
def test_bad_names_are_not_tls(name):
    """A server name that is not a host name is malformed input."""
    assert read_server_name(built_hello([sni_extension(name)])) is NOT_TLS


def test_sni_after_other_extensions_and_no_extensions():
    """SNI is found after other extensions; a hello with no extensions
    block, or without extension 0, has no SNI."""
    assert read_server_name(built_hello([(10, b"\x00\x02\x00\x17"), sni_extension(b"b.example")])) == "b.example"
    assert read_server_name(built_hello(None)) is NO_SNI
    assert read_server_name(built_hello([(10, b"\x00\x02\x00\x17")])) is NO_SNI


def test_hello_over_16_kib_is_not_tls():
    """A ClientHello declaring more than 16 KiB is refused at once; one that
    really is longer (in several records) is refused once 16 KiB were
    read, not read further."""
    big = built_hello([(21, b"\x00" * (MAX_HELLO + 10)), sni_extension(b"a.example")])
    assert read_server_name(big[:9]) is NOT_TLS
    declared_small = _records(b"\x01" + (MAX_HELLO - 8).to_bytes(3, "big") + b"\x03\x03" + b"\x00" * (MAX_HELLO - 10), 1000)
    assert read_server_name(declared_small[:MAX_HELLO - 1]) is NEED_MORE
    assert read_server_name(declared_small[:MAX_HELLO]) is NOT_TLS


def test_answers_are_not_names():
    """The non-name answers are not strings, so a client naming its server
    "no-sni" is not mistaken for one; each carries the refusal reason."""
    assert not isinstance(NO_SNI, str) and isinstance(NO_SNI, Answer)
    assert (NO_SNI.reason, NOT_TLS.reason) == ("no-sni", "not-tls")
    assert read_server_name(built_hello([sni_extension(b"no-sni")])) == "no-sni"


def _answers_well(data: bytes) -> None:
    found = read_server_name(data)
    assert found in (NEED_MORE, NOT_TLS, NO_SNI) or (isinstance(found, str) and found)


SEEDS = hello_seeds()


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 20000), st.integers(0, 255)), max_size=8),
    st.integers(0, 20000),
)
def test_mutated_hellos_never_raise(seed, flips, cut):
    """Real hellos with bytes changed and cut anywhere: always an answer."""
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    _answers_well(bytes(data[: cut % (len(data) + 1)]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=40))
def test_random_bytes_and_insertions_never_raise(noise, insert):
    """Random bytes, alone and spliced into a real hello: always an answer."""
    _answers_well(noise)
    _answers_well(b"\x16\x03\x01" + noise)
    seed = SEEDS[len(noise) % len(SEEDS)]
    at = len(insert) * 7 % len(seed)
    _answers_well(seed[:at] + insert + seed[at:])
