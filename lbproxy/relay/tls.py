"""
TLS: the contexts of listeners that terminate it and of backends reached
over it, the certificates they serve, and their replacement at runtime.

Each engine has its library.  The Twisted engine: pyOpenSSL through
Twisted's C{TLSMemoryBIOProtocol}, so its transports stay Twisted
transports (backpressure, producers, the one L{ConnectionSession} path);
SNI selection is one C{set_tlsext_servername_callback} that moves the
connection to the certificate's context; backends are verified by
service_identity (C{optionsForClientTLS}).  The fast engine: the standard
library's C{ssl} on its raw sockets (L{lbproxy.relay.fast_tls}), from
contexts built here beside the pyOpenSSL ones (L{Certificates.fast}).
Either way a set of contexts is swapped whole for new handshakes while
open connections keep the one they started with.

A listener's certificates live in a L{ServerTLS}, which makes the
connection of each new handshake from the L{Certificates} in force.
L{build} reads the PEM files and makes a L{Certificates}, or raises
L{TLSConfigError} saying what is wrong, so a change is refused before it
is stored; L{ServerTLS.replace} then puts it in force.  Keys are never
logged nor shown: L{Certificates.info} gives subject, names, issuer,
fingerprint and expiry.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from zope.interface import implementer

from lbproxy.model.errors import ConfigError
from lbproxy.model.tls import BackendTLS, ServiceTLS
from lbproxy.relay.sni import match_server_name

#: Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3 has its own, all modern).
MODERN_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: A PEM file bigger than this is refused: reading one stays bounded.
MAX_PEM = 1024 * 1024

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


class TLSConfigError(ConfigError):
    """
    A certificate, key or CA bundle cannot be used; the message names the
    file and why (never the key's content).
    """


def _read(path: str, what: str, secret: bool = False) -> bytes:
    """
    Read a small regular PEM file; a key readable by group or others is
    refused, as OpenSSH refuses such keys.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise TLSConfigError(f"{what} {path!r}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TLSConfigError(f"{what} {path!r} is not a regular file")
    if st.st_size > MAX_PEM:
        raise TLSConfigError(f"{what} {path!r} is larger than {MAX_PEM} bytes")
    if secret and st.st_mode & 0o077:
        raise TLSConfigError(
            f"{what} {path!r} is readable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"it must be accessible by its owner only: chmod 600 {path}"
        )
    try:
        with open(path, "rb") as f:
            return f.read(MAX_PEM + 1)
    except OSError as e:
        raise TLSConfigError(f"{what} {path!r}: {e.strerror}") from None


def signature(paths: tuple[str, ...]) -> tuple:
    """
    What changes when a file is replaced (mtime, inode, size), per path:
    the watcher compares it to know when to read them again.
    """
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_ino, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def files_of(config: ServiceTLS) -> tuple[str, ...]:
    paths = [p for pair in config.certificates for p in pair]
    if config.client_ca:
        paths.append(config.client_ca)
    return tuple(paths)


def _chain(data: bytes, path: str) -> list:
    certs = []
    marker = b"-----BEGIN CERTIFICATE-----"
    for part in data.split(marker)[1:]:
        try:
            certs.append(crypto.load_certificate(crypto.FILETYPE_PEM, marker + part))
        except crypto.Error:
            raise TLSConfigError(f"certificate {path!r} holds a malformed PEM certificate") from None
    if not certs:
        raise TLSConfigError(f"certificate {path!r} holds no PEM certificate")
    return certs


def _names(cert: Any) -> list[str]:
    from cryptography import x509

    c = cert.to_cryptography()
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [a.value.lower() for a in c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return names


def describe(cert: Any) -> dict[str, Any]:
    """
    What the API shows of a certificate: nothing secret.
    """
    from cryptography.hazmat.primitives import hashes

    c = cert.to_cryptography()
    return {
        "subject": c.subject.rfc4514_string(),
        "names": _names(cert),
        "issuer": c.issuer.rfc4514_string(),
        "fingerprint_sha256": c.fingerprint(hashes.SHA256()).hex(":"),
        "not_after": c.not_valid_after_utc.timestamp(),
    }


def subject_of(cert: Any) -> str | None:
    """
    The verified client certificate's subject (RFC 4514), for the access
    log and the strategies.
    """
    if cert is None:
        return None
    return cert.to_cryptography().subject.rfc4514_string()


@dataclass(frozen=True)
class Certificates:
    """
    One built set of a listener's contexts: the default (the first
    certificate) and the ones selected by exact and wildcard names.
    """

    default: Any
    exact: dict
    wildcards: dict
    info: tuple
    #: The fast engine's default C{ssl.SSLContext} (it picks the others by name).
    fast: Any = None

    def select(self, name: str) -> Any:
        return match_server_name(name, self.exact, self.wildcards)


def _context(config: ServiceTLS, cert_path: str, key_path: str, ca: Any, session_id: bytes) -> Any:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(_VERSIONS[config.min_version])
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    try:
        ctx.set_cipher_list((config.ciphers or MODERN_CIPHERS).encode())
    except SSL.Error:
        raise TLSConfigError(f"ciphers {config.ciphers!r}: OpenSSL knows none of them") from None
    chain = _chain(_read(cert_path, "certificate"), cert_path)
    key_pem = _read(key_path, "key", secret=True)
    try:
        key = load_pem_private_key(key_pem, None)
    except (ValueError, TypeError):
        raise TLSConfigError(f"key {key_path!r} is not a PEM private key (or it is encrypted)") from None
    try:
        ctx.use_certificate(chain[0].to_cryptography())
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra.to_cryptography())
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error:
        raise TLSConfigError(f"key {key_path!r} does not match certificate {cert_path!r}") from None
    if config.alpn:
        offered = [p.encode() for p in config.alpn]

        def choose(conn: Any, protocols: list) -> Any:
            for p in offered:
                if p in protocols:
                    return p
            return SSL.NO_OVERLAPPING_PROTOCOLS

        ctx.set_alpn_select_callback(choose)
    if ca is not None:
        ctx.load_verify_locations(config.client_ca)
        ctx.load_client_ca(config.client_ca.encode())
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda conn, cert, errno, depth, ok: bool(ok))
    ctx.set_session_id(session_id)
    return ctx, chain[0]


def _client_ca(path: str) -> Any:
    return _chain(_read(path, "client_ca"), path)


def build(config: ServiceTLS, name: str = "") -> Certificates:
    """
    Read the files of C{config} and make its contexts.

    @raise TLSConfigError: a file is missing, malformed, a key does not
        match its certificate or is readable by others.
    """
    if config.min_version not in _VERSIONS:
        raise TLSConfigError(f"min_version {config.min_version!r} must be 1.2 or 1.3")
    ca = _client_ca(config.client_ca) if config.client_ca else None
    session_id = f"lbproxy:{name}".encode()[:32]
    built = []
    for cert_path, key_path in config.certificates:
        built.append(_context(config, cert_path, key_path, ca, session_id))
    exact: dict = {}
    wildcards: dict = {}
    info = []
    for ctx, leaf in built:
        shown = describe(leaf)
        info.append(shown)
        for n in shown["names"]:
            if n.startswith("*."):
                wildcards.setdefault(n[2:], ctx)
            else:
                exact.setdefault(n, ctx)
    found = Certificates(built[0][0], exact, wildcards, tuple(info), _fast(config, info))

    def on_name(conn: Any) -> None:
        server_name = conn.get_servername()
        if server_name:
            ctx = found.select(server_name.decode("ascii", "replace").lower())
            if ctx is not None and ctx is not found.default:
                conn.set_context(ctx)

    for ctx, _ in built:
        ctx.set_tlsext_servername_callback(on_name)
    return found


def _fast(config: ServiceTLS, info: list) -> Any:
    """
    The same certificates as standard-library contexts, for the fast
    engine (L{lbproxy.relay.fast_tls}); the files were checked just before.
    """
    import ssl

    from lbproxy.relay.ssl_contexts import select_by_name, server_context

    ciphers = config.ciphers or MODERN_CIPHERS
    contexts = []
    for cert_path, key_path in config.certificates:
        try:
            contexts.append(server_context(config, cert_path, key_path, ciphers))
        except (ssl.SSLError, OSError) as e:
            raise TLSConfigError(f"certificate {cert_path!r} with key {key_path!r}: {e}") from None
    exact: dict = {}
    wildcards: dict = {}
    for ctx, shown in zip(contexts, info):
        for n in shown["names"]:
            if n.startswith("*."):
                wildcards.setdefault(n[2:], ctx)
            else:
                exact.setdefault(n, ctx)
    select_by_name(contexts[0], exact, wildcards, lambda n: match_server_name(n, exact, wildcards))
    return contexts[0]


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The connection creator of one TLS listener: each handshake starts on
    the L{Certificates} in force; L{replace} changes them for the next
    handshakes only.

    @ivar config: the L{ServiceTLS} the certificates were built from.
    @ivar files: the L{signature} of its files when they were read.
    """

    def __init__(self, config: ServiceTLS, certificates: Certificates, files: tuple) -> None:
        self.config = config
        self.certificates = certificates
        self.files = files

    def replace(self, config: ServiceTLS, certificates: Certificates, files: tuple) -> None:
        self.config = config
        self.certificates = certificates
        self.files = files

    def serverConnectionForTLS(self, protocol: Any) -> Any:
        return SSL.Connection(self.certificates.default, None)


def client_creator(config: BackendTLS, host: str) -> Any:
    """
    The connection creator for a backend over TLS: verified against
    C{config.ca} (else the system's trust store) and the server name
    (else C{host}), or not verified at all with C{verify: false}.

    @raise TLSConfigError: the CA bundle cannot be read.
    """
    from twisted.internet import ssl

    name = config.server_name or host
    if not config.verify:
        return _Unverified(name)
    if config.ca:
        data = _read(config.ca, "ca")
        try:
            roots = [ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
                     for part in data.split(b"-----BEGIN CERTIFICATE-----")[1:]]
        except Exception:
            raise TLSConfigError(f"ca {config.ca!r} holds a malformed PEM certificate") from None
        if not roots:
            raise TLSConfigError(f"ca {config.ca!r} holds no PEM certificate")
        trust = ssl.trustRootFromCertificates(roots)
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(name, trustRoot=trust)


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """
    TLS to a backend without verifying it (C{"verify": false}): SNI is
    still sent.
    """

    def __init__(self, name: str) -> None:
        self._ctx = SSL.Context(SSL.TLS_METHOD)
        self._ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._name = name.encode("idna") if name and not _is_ip(name) else None

    def clientConnectionForTLS(self, protocol: Any) -> Any:
        conn = SSL.Connection(self._ctx, None)
        if self._name:
            conn.set_tlsext_host_name(self._name)
        conn.set_connect_state()
        return conn


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False

