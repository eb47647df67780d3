"""
The PROXY protocol header (HAProxy's v1 text and v2 binary forms), sent to a
backend that asks for it so it sees the client's real address.
"""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _family(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def header_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    C{PROXY TCP4 src dst sport dport\\r\\n}; C{PROXY UNKNOWN\\r\\n} when the
    two addresses are not both IPv4 or both IPv6.
    """
    fs, fd = _family(source[0]), _family(destination[0])
    if fs is None or fs != fd:
        return b"PROXY UNKNOWN\r\n"
    return (
        f"PROXY TCP{fs} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    ).encode("ascii")


def header_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    The binary header: signature, version 2 command PROXY, then TCP over
    IPv4 or IPv6 addresses; C{LOCAL} with no address when the families
    differ or are not IP.
    """
    fs, fd = _family(source[0]), _family(destination[0])
    if fs is None or fs != fd:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    if fs == 4:
        body = (
            ipaddress.IPv4Address(source[0]).packed
            + ipaddress.IPv4Address(destination[0]).packed
            + struct.pack("!HH", source[1], destination[1])
        )
        family = 0x11
    else:
        body = (
            ipaddress.IPv6Address(source[0]).packed
            + ipaddress.IPv6Address(destination[0]).packed
            + struct.pack("!HH", source[1], destination[1])
        )
        family = 0x21
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body


def header(version: str, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    if version == "v1":
        return header_v1(source, destination)
    if version == "v2":
        return header_v2(source, destination)
    raise ValueError(f"unknown PROXY protocol version {version!r}")


# The receiving side ---------------------------------------------------------

V1_SIGNATURE = b"PROXY "
#: The longest v1 header, CRLF included (the specification's bound).
V1_MAX = 107
#: The longest v2 header accepted (16-byte header and its TLVs).
V2_MAX = 16 * 1024


class Parsed:
    """
    A whole PROXY header.

    @ivar length: bytes it took; what follows is the client's own data.
    @ivar source: the client's C{(host, port)} it carries, or C{None}
        (C{LOCAL}, C{UNKNOWN}, not TCP over IP): keep the connection's own.
    @ivar destination: the address the client connected to, or C{None}.
    """

    __slots__ = ("length", "source", "destination")

    def __init__(self, length: int, source: tuple | None = None, destination: tuple | None = None) -> None:
        self.length = length
        self.source = source
        self.destination = destination

    def __repr__(self) -> str:
        return f"Parsed({self.length}, {self.source}, {self.destination})"


#: Answers of L{parse} that are not a header.
NEED_MORE = "need-more"
MALFORMED = "malformed"


def starts_with_signature(data: bytes) -> bool | None:
    """
    @return: whether C{data} starts with a v1 or v2 signature; C{None} if
        it is too short to tell.
    """
    for signature in (V1_SIGNATURE, V2_SIGNATURE):
        n = min(len(data), len(signature))
        if data[:n] == signature[:n]:
            if n == len(signature):
                return True
            return None
    return False


def parse(data: bytes) -> Parsed | str:
    """
    Read a PROXY v1 or v2 header at the start of C{data}.

    @return: a L{Parsed}, L{NEED_MORE} or L{MALFORMED} (also for a header
        over its bound); never raises.
    """
    try:
        found = starts_with_signature(data)
        if found is None:
            return NEED_MORE
        if not found:
            return MALFORMED
        if data[:1] == b"P":
            return _parse_v1(data)
        return _parse_v2(data)
    except Exception:  # pragma: no cover - a bug here must not cost a connection
        return MALFORMED


def _parse_v1(data: bytes) -> Parsed | str:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        return MALFORMED if len(data) >= V1_MAX or b"\n" in data[:V1_MAX] else NEED_MORE
    line = data[:end]
    if not line.isascii():
        return MALFORMED
    parts = line.decode("ascii").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return Parsed(end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        return MALFORMED
    version = 4 if parts[1] == "TCP4" else 6
    try:
        source = ipaddress.ip_address(parts[2])
        destination = ipaddress.ip_address(parts[3])
    except ValueError:
        return MALFORMED
    if source.version != version or destination.version != version:
        return MALFORMED
    ports = []
    for text in parts[4:6]:
        if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
            return MALFORMED
        ports.append(int(text))
    return Parsed(end + 2, (str(source), ports[0]), (str(destination), ports[1]))


def _parse_v2(data: bytes) -> Parsed | str:
    if len(data) < 16:
        return NEED_MORE
    command, family, size = struct.unpack("!BBH", data[12:16])
    length = 16 + size
    if command >> 4 != 2 or command & 0x0F > 1 or family >> 4 > 3 or family & 0x0F > 2:
        return MALFORMED
    if length > V2_MAX:
        return MALFORMED
    if len(data) < length:
        return NEED_MORE
    if command & 0x0F == 0:  # LOCAL: the connection's own addresses
        return Parsed(length)
    if family == 0x11 and size >= 12:
        source = str(ipaddress.IPv4Address(data[16:20]))
        destination = str(ipaddress.IPv4Address(data[20:24]))
        sport, dport = struct.unpack("!HH", data[24:28])
    elif family == 0x21 and size >= 36:
        source = str(ipaddress.IPv6Address(data[16:32]))
        destination = str(ipaddress.IPv6Address(data[32:48]))
        sport, dport = struct.unpack("!HH", data[48:52])
    elif family in (0x11, 0x21):
        return MALFORMED  # too short for its addresses
    else:
        return Parsed(length)  # UNSPEC, UNIX, datagram: nothing usable
    return Parsed(length, (source, sport), (destination, dport))
