"""
Backend host names and addresses: one spelling per address.

IP literals are stored in canonical form (C{127.000.000.001} and
C{0x7f.1} become C{127.0.0.1}, C{::0001} becomes C{::1}), the way the
resolver reads them, so a duplicate cannot hide behind another spelling.
Host names are kept as the operator wrote them; for the duplicate check
they compare without case or trailing dot, and C{localhost} counts as
C{127.0.0.1}.
"""

from __future__ import annotations

import ipaddress
import re

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
#: What C{inet_aton} (and so C{getaddrinfo}) reads as an IPv4 address:
#: one to four parts, each decimal, octal (leading 0) or hex (0x).
_NUMERIC = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)(\.(0[xX][0-9a-fA-F]*|[0-9]+)){0,3}$")
_LOOPBACK_NAMES = {"localhost"}


def _parts(parts: list[str], octal: bool) -> str | None:
    """
    The dotted quad C{inet_aton} makes of C{parts} (the last part fills the
    remaining bytes), reading a leading 0 as octal when C{octal}; C{None}
    if they are no address.
    """
    values = []
    for p in parts:
        try:
            if p[:2].lower() == "0x":
                values.append(int(p[2:] or "0", 16))
            elif octal and len(p) > 1 and p[0] == "0":
                values.append(int(p, 8))
            else:
                values.append(int(p, 10))
        except ValueError:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for v in head:
        number = number * 256 + v
    number = number * 256 ** (4 - len(head)) + last
    return str(ipaddress.IPv4Address(number))


def canonical_host(value: str) -> str:
    """
    The host to store: an IP literal in canonical form, else the host name
    as given.

    @raise ValueError: for something that is neither, saying why.
    """
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if _NUMERIC.match(value):
        parts = value.split(".")
        octal = _parts(parts, octal=True)
        decimal = _parts(parts, octal=False)
        if octal is None:
            raise ValueError(f"{value!r} looks like an IPv4 address but is not one")
        if decimal is not None and decimal != octal:
            raise ValueError(
                f"{value!r} is ambiguous: resolvers read a leading 0 as octal ({octal}), "
                f"not decimal ({decimal}); write the address you mean without leading zeros"
            )
        return octal
    if not _HOSTNAME.match(value) or value.rstrip(".").replace(".", "").isdigit():
        raise ValueError(f"{value!r} is neither an IP address nor a host name")
    return value


def address_key(host: str, port: int) -> tuple[str, int]:
    """
    What two backends must not share: the same port on the same host, with
    host names compared without case or trailing dot, C{localhost} as
    C{127.0.0.1} and IPv4-mapped IPv6 addresses as their IPv4 address.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.rstrip(".").lower()
        return ("127.0.0.1" if name in _LOOPBACK_NAMES else name, port)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (str(ip), port)
