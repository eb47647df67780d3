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
