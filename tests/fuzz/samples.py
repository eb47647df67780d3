"""
Real inputs for the parsers' tests and fuzzers: ClientHellos made by
Python's own C{ssl} module (TLS 1.2 and 1.3, with and without SNI) and
PROXY headers from lbproxy's sending side.
"""

from __future__ import annotations

import ssl

from lbproxy.relay.proxyprotocol import header_v1, header_v2


def client_hello(server_hostname: str | None = None, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> bytes:
    """The bytes a real TLS client sends first (its ClientHello records)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def refragment(hello: bytes, size: int) -> bytes:
    """The same handshake in TLS records of at most C{size} bytes each."""
    payload = b""
    offset = 0
    while offset < len(hello):
        length = int.from_bytes(hello[offset + 3:offset + 5], "big")
        payload += hello[offset + 5:offset + 5 + length]
        offset += 5 + length
    records = b""
    for start in range(0, len(payload), size):
        chunk = payload[start:start + size]
        records += b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
    return records


def built_hello(extensions: list[tuple[int, bytes]] | None) -> bytes:
    """A ClientHello record built by hand, with these extensions (C{None}:
    no extensions block at all)."""
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        block = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in extensions)
        body += len(block).to_bytes(2, "big") + block
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return _records(handshake)


def _records(handshake: bytes, size: int = 16384) -> bytes:
    out = b""
    for start in range(0, len(handshake), size):
        chunk = handshake[start:start + size]
        out += b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
    return out


def sni_extension(name: bytes) -> tuple[int, bytes]:
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    return (0, len(entry).to_bytes(2, "big") + entry)


def hello_seeds() -> list[bytes]:
    seeds = []
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        for name in (None, "a.example", "www.long-name.example.org"):
            hello = client_hello(name, version)
            seeds += [hello, refragment(hello, 61)]
    padded = built_hello([(21, b"\x00" * 15000), sni_extension(b"big.example")])
    seeds += [padded, _records(padded[5:], 4000)]
    return seeds


def proxy_seeds() -> list[bytes]:
    pairs = [(("192.0.2.7", 40000), ("198.51.100.1", 443)), (("2001:db8::7", 1), ("2001:db8::1", 65535))]
    seeds = [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"]
    for source, destination in pairs:
        seeds += [header_v1(source, destination), header_v2(source, destination)]
    seeds.append(header_v2(("192.0.2.7", 1), ("::1", 2)))  # LOCAL
    return seeds
