"""
The fast engine's TLS contexts, from the standard library's C{ssl}: one
per certificate of a listener (chosen by the client's server name), and
one per backend reached over TLS.  The files were checked before by
L{lbproxy.relay.tls.build} (sizes, modes, a key matching its
certificate), which builds these beside the Twisted engine's.
"""

from __future__ import annotations

import ssl
from typing import Any

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(config: Any, cert_path: str, key_path: str, ciphers: str) -> ssl.SSLContext:
    """
    One certificate's context for the fast engine (files already checked
    by L{lbproxy.relay.tls.build}).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[config.min_version]
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
                    | getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0))
    ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(cert_path, key_path)
    if config.alpn:
        ctx.set_alpn_protocols(list(config.alpn))
    if config.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=config.client_ca)
    return ctx


def select_by_name(default: ssl.SSLContext, exact: dict, wildcards: dict, select: Any) -> None:
    """
    Make C{default} choose the context of the client's server name
    (C{select}: L{lbproxy.relay.tls.Certificates.select} over the fast
    contexts) and remember the name for the session.
    """

    def on_name(owner: Any, name: str | None, ctx: Any) -> None:
        if name:
            name = name.lower()
            owner.name = name
            chosen = select(name)
            if chosen is not None and chosen is not default:
                owner.tls.context = chosen

    for ctx in {id(c): c for c in (default, *exact.values(), *wildcards.values())}.values():
        ctx.sni_callback = on_name


def client_context(config: Any, host: str) -> tuple[ssl.SSLContext, str | None]:
    """
    The context and server name of a backend over TLS on the fast engine:
    verified against C{config.ca} (else the system's trust store) and the
    server name (else C{host}), or not at all with C{verify: false}.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    name = config.server_name or host
    if not config.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif config.ca:
        ctx.load_verify_locations(cafile=config.ca)
    else:
        ctx.load_default_certs()
    return ctx, name.encode("idna").decode("ascii") if name else None
