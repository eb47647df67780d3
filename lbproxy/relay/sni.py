"""
A sans-I/O reader of the TLS ClientHello's server name (SNI), so one
listener can pass TLS through to the service the client asked for.

L{read_server_name} looks at the bytes a client sent so far and answers:
L{NEED_MORE}, L{NOT_TLS}, L{NO_SNI}, or the server name (a C{str}, lower
case, no trailing dot).  The ClientHello may span several TLS records and
TCP segments; at most L{MAX_HELLO} bytes are looked at, and anything
malformed or longer is L{NOT_TLS}: the reader never raises, since every
byte a client sends is untrusted.
"""

from __future__ import annotations

from typing import Any

#: Bytes of TLS records looked at, at most, for one ClientHello.
MAX_HELLO = 16 * 1024



class Answer:
    """
    An answer that is not a server name; C{reason} is what a refusal
    counts (L{lbproxy.interfaces.IListenerRoute.refused}).  Not a C{str},
    so no server name can be mistaken for one.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"<{self.reason}>"


NEED_MORE = Answer("sni-timeout")
NOT_TLS = Answer("not-tls")
NO_SNI = Answer("no-sni")

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_SERVER_NAME = 0x0000
_HOST_NAME = 0x00
_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-._*")


def read_server_name(data: bytes) -> str | Answer:
    """
    @param data: every byte the client sent so far (the start of the
        stream).
    @return: L{NEED_MORE}, L{NOT_TLS}, L{NO_SNI} or the server name.
    """
    try:
        return _read(data)
    except Exception:  # pragma: no cover - a bug here must not cost a connection
        return NOT_TLS


def _read(data: bytes) -> str | Answer:
    if not data:
        return NEED_MORE
    if data[0] != _HANDSHAKE:
        return NOT_TLS
    if len(data) > 1 and data[1] != 0x03:
        return NOT_TLS
    handshake, complete = _handshake_bytes(data)
    if handshake is None:
        return NOT_TLS
    if handshake and handshake[0] != _CLIENT_HELLO:
        return NOT_TLS
    if len(handshake) < 4:
        return NOT_TLS if complete else NEED_MORE
    length = int.from_bytes(handshake[1:4], "big")
    if length + 4 > MAX_HELLO:
        return NOT_TLS
    if len(handshake) < 4 + length:
        return NOT_TLS if complete else NEED_MORE
    return _hello(memoryview(handshake)[4:4 + length])


def _handshake_bytes(data: bytes) -> tuple[bytes | None, bool]:
    """
    Concatenate the payloads of the handshake records at the start of
    C{data} (within L{MAX_HELLO}) until they hold a whole handshake
    message; what follows it is not looked at.

    @return: C{(payload, complete)}: C{None} for a record that is not a
        TLS handshake record; C{complete} when no more may be read.
    """
    payload = b""
    offset = 0
    limit = min(len(data), MAX_HELLO)
    while offset + 5 <= limit:
        if data[offset] != _HANDSHAKE or data[offset + 1] != 0x03:
            return None, True
        size = int.from_bytes(data[offset + 3:offset + 5], "big")
        if size == 0 or size > 16384 + 2048:
            return None, True
        payload += data[offset + 5:offset + 5 + size]
        offset += 5 + size
        if len(payload) >= 4 and len(payload) >= 4 + int.from_bytes(payload[1:4], "big"):
            break
    return payload, len(data) >= MAX_HELLO


def _hello(body: memoryview) -> str | Answer:
    """The server name in a whole ClientHello body (after its 4-byte header)."""
    end = len(body)
    pos = 2 + 32  # legacy_version, random
    if pos + 1 > end:
        return NOT_TLS
    pos += 1 + body[pos]  # session id
    if pos + 2 > end:
        return NOT_TLS
    suites = int.from_bytes(body[pos:pos + 2], "big")
    if suites < 2 or suites % 2:
        return NOT_TLS
    pos += 2 + suites
    if pos + 1 > end:
        return NOT_TLS
    pos += 1 + body[pos]  # compression methods
    if pos > end:
        return NOT_TLS
    if pos == end:
        return NO_SNI  # no extensions at all
    if pos + 2 > end:
        return NOT_TLS
    extensions_end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
    if extensions_end > end:
        return NOT_TLS
    pos += 2
    while pos + 4 <= extensions_end:
        kind = int.from_bytes(body[pos:pos + 2], "big")
        size = int.from_bytes(body[pos + 2:pos + 4], "big")
        pos += 4
        if pos + size > extensions_end:
            return NOT_TLS
        if kind == _SERVER_NAME:
            return _server_name(body[pos:pos + size])
        pos += size
    if pos != extensions_end:
        return NOT_TLS
    return NO_SNI


def _server_name(ext: memoryview) -> str | Answer:
    """The host name in a server_name extension's body."""
    if len(ext) < 2 or int.from_bytes(ext[0:2], "big") != len(ext) - 2:
        return NOT_TLS
    pos = 2
    while pos + 3 <= len(ext):
        kind = ext[pos]
        size = int.from_bytes(ext[pos + 1:pos + 3], "big")
        pos += 3
        if pos + size > len(ext):
            return NOT_TLS
        if kind == _HOST_NAME:
            name = bytes(ext[pos:pos + size]).lower()
            if name.endswith(b"."):
                name = name[:-1]
            if not name or len(name) > 253 or not _NAME_BYTES.issuperset(name):
                return NOT_TLS
            return name.decode("ascii")
        pos += size
    return NO_SNI


def match_server_name(name: str, exact: dict, wildcards: dict) -> Any:
    """
    What a server name selects, as SNI routing and TLS certificate choice
    both do it: the exact name first, then the longest matching wildcard.

    @param exact: server name -> value.
    @param wildcards: the part after C{*.} of each wildcard name -> value.
    @return: the value, or C{None} if nothing matches.
    """
    found = exact.get(name)
    if found is not None:
        return found
    rest = name
    while "." in rest:
        rest = rest.split(".", 1)[1]
        found = wildcards.get(rest)
        if found is not None:
            return found
    return None
