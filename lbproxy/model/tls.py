"""
TLS settings as values: TLS to a backend (L{BackendTLS}) and TLS
terminated by a service (L{ServiceTLS}).

Only names and paths live here, so a config stays a plain value that can
be compared and stored; L{lbproxy.relay.tls} reads the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BackendTLS:
    """
    lbproxy speaks TLS to a backend: verified against C{ca} (or the
    system's trust store) and C{server_name} (or the backend's host),
    unless C{verify} is false.
    """

    verify: bool = True
    ca: str | None = None
    server_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verify": self.verify}
        if self.ca is not None:
            out["ca"] = self.ca
        if self.server_name is not None:
            out["server_name"] = self.server_name
        return out


@dataclass(frozen=True)
class ServiceTLS:
    """
    A service terminates TLS on its listeners: certificate chains with
    their keys (PEM paths, C{(cert, key)} pairs) picked by SNI, the first
    the default.  Only paths are here: the files are read by
    L{lbproxy.relay.tls}.
    """

    certificates: tuple[tuple[str, str], ...] = ()
    min_version: str = "1.2"
    ciphers: str | None = None
    alpn: tuple[str, ...] = ()
    client_ca: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "certificates": [{"cert": c, "key": k} for c, k in self.certificates],
            "min_version": self.min_version,
            "alpn": list(self.alpn),
        }
        if self.ciphers is not None:
            out["ciphers"] = self.ciphers
        if self.client_ca is not None:
            out["client_ca"] = self.client_ca
        return out
