"""
Certificates for the TLS tests, made with C{cryptography}: a CA, leaf
certificates it signs (server or client), written as PEM files with the
key at mode 0600; and a blocking C{ssl} client for a thread.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key) -> tuple[str, str]:
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    os.chmod(key_path, 0o600)
    return str(cert_path), str(key_path)


class CA:
    """A certificate authority in C{directory} (C{NAME.crt})."""

    def __init__(self, directory: Path, name: str = "lbproxy test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        stem = name.replace(" ", "-")
        self.path = str(directory / f"{stem}.crt")
        Path(self.path).write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, cn: str, names: list[str] = (), client: bool = False,
              days: int = 20) -> tuple[str, str]:
        """
        A leaf for C{names} (DNS names, or IP addresses) written as
        C{stem.crt} and C{stem.key}; C{client}: a client certificate.
        """
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        alt = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return _write(self.directory, stem, builder.sign(self.key, hashes.SHA256()), key)


def handshake(port: int, server_name: str | None, ca: str, client: tuple[str, str] | None = None,
              send: bytes = b"", timeout: float = 5.0) -> tuple[str, bytes]:
    """
    Blocking (run it in a thread): a TLS connection to 127.0.0.1:C{port}
    asking for C{server_name}, verifying against C{ca} (names not
    checked: the test reads the subject).

    @return: the server certificate's common name and the first line read.
    """
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if client is not None:
        ctx.load_cert_chain(*client)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            cert = tls.getpeercert()
            cn = dict(x[0] for x in cert["subject"])["commonName"]
            if send:
                tls.sendall(send)
            line = b""
            while b"\n" not in line:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                line += chunk
            return cn, line.split(b"\n", 1)[0]
