"""
The TLS contexts and their store, without sockets: what a bad file is
refused with (never its key), SNI selection, the document rules, the
reload of changed files, and the service/backend fields' round trip.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface.verify import verifyObject

from lbproxy.model.errors import ConfigError
from lbproxy.model.service import Document, add_service, parse_document
from lbproxy.model.tls import ServiceTLS
from lbproxy.relay.tls import ServerTLS, TLSConfigError, build, files_of, signature
from tests.tlscerts import CA


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


def test_sni_selects_exact_then_wildcard_then_nothing(ca):
    """Exact names beat wildcards; an unknown name selects nothing (the default serves)."""
    a = ca.issue("a", "a.test", ["a.test"])
    b = ca.issue("b", "b.test", ["*.b.test", "x.b.test"])
    built = build(ServiceTLS((a, b)), "web")
    assert built.select("a.test") is built.default
    assert built.select("y.b.test") is built.wildcards["b.test"]
    assert built.select("x.b.test") is built.exact["x.b.test"]
    assert built.select("nope.test") is None
    assert [i["subject"] for i in built.info] == ["CN=a.test", "CN=b.test"]


def test_mismatched_key_is_refused_naming_both_files(ca):
    """A key of another certificate: the message names the files, not the key."""
    a = ca.issue("a", "a.test", ["a.test"])
    b = ca.issue("b", "b.test", ["b.test"])
    with pytest.raises(TLSConfigError) as e:
        build(ServiceTLS(((a[0], b[1]),)))
    assert "does not match" in str(e.value) and a[0] in str(e.value)
    assert "PRIVATE" not in str(e.value)


def test_key_readable_by_others_is_refused_like_openssh(ca):
    """Mode 0640 or 0644 on a key refuses it with the chmod to run."""
    a = ca.issue("a", "a.test", ["a.test"])
    for mode in (0o640, 0o604):
        os.chmod(a[1], mode)
        with pytest.raises(TLSConfigError, match="readable by other users .*chmod 600"):
            build(ServiceTLS((a,)))


def test_missing_and_malformed_files_are_refused(ca, tmp_path):
    """A missing file, a certificate file without a certificate, a directory: clear errors."""
    a = ca.issue("a", "a.test", ["a.test"])
    with pytest.raises(TLSConfigError, match="No such file"):
        build(ServiceTLS(((str(tmp_path / "none.crt"), a[1]),)))
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="holds no PEM certificate"):
        build(ServiceTLS(((str(junk), a[1]),)))
    with pytest.raises(TLSConfigError, match="not a regular file"):
        build(ServiceTLS(((str(tmp_path), a[1]),)))


def test_server_tls_replace_changes_the_next_connection_only(ca):
    """A connection made before the replacement keeps its context."""
    a = ca.issue("a", "a.test", ["a.test"])
    b = ca.issue("b", "b.test", ["b.test"])
    first, second = build(ServiceTLS((a,))), build(ServiceTLS((b,)))
    server = ServerTLS(ServiceTLS((a,)), first, ())
    verifyObject(IOpenSSLServerConnectionCreator, server)
    before = server.serverConnectionForTLS(None)
    server.replace(ServiceTLS((b,)), second, ())
    after = server.serverConnectionForTLS(None)
    assert before.get_context() is first.default and after.get_context() is second.default


def test_signature_changes_when_a_file_is_replaced(ca):
    """mtime, inode or size: a rewritten file has a new signature."""
    a = ca.issue("a", "a.test", ["a.test"])
    config = ServiceTLS((a,))
    before = signature(files_of(config))
    ca.issue("a", "a.test", ["a.test"])
    assert signature(files_of(config)) != before


def test_service_and_backend_tls_round_trip_and_document_rules():
    """
    The tls fields survive to_json and parse; a tls service may not share
    its endpoint nor accept PROXY headers.
    """
    body = {"name": "web", "listen": ["tcp:8443"],
            "tls": {"certificates": [{"cert": "/c.pem", "key": "/k.pem"}], "alpn": ["h2"], "client_ca": "/ca.pem"},
            "backends": [{"host": "10.0.0.1", "port": 443, "tls": {"ca": "/ca.pem", "server_name": "b"}}]}
    doc, web = add_service(Document(), body)
    assert web.tls.alpn == ("h2",) and web.backends[0].tls.server_name == "b"
    again = parse_document(doc.to_json())
    assert again.service("web") == web
    with pytest.raises(ConfigError, match="needs a listen endpoint of its own"):
        add_service(doc, {"name": "other", "listen": ["tcp:8443"], "sni": ["o.test"]})
    with pytest.raises(ConfigError, match="accept_proxy"):
        add_service(Document(), {**body, "accept_proxy": ["10.0.0.0/8"]})
    with pytest.raises(ConfigError):
        add_service(Document(), {**body, "tls": {"certificates": [], "min_version": "1.0"}})


def test_engine_classes_provide_their_interfaces(ca):
    """The TLS frontend is an engine connection and a handshake listener; the unverified creator a client creator."""
    from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator

    from lbproxy.interfaces import IEngineConnection
    from lbproxy.model.tls import BackendTLS
    from lbproxy.relay.route import SingleServiceRoute
    from lbproxy.relay.session import ConnectionSession
    from lbproxy.relay.tls import client_creator
    from lbproxy.relay.twisted_tls import TLSFrontendProtocol
    from twisted.internet.task import Clock

    session = ConnectionSession(SingleServiceRoute(None), Clock(), ("127.0.0.1", 1))
    frontend = TLSFrontendProtocol(session, Clock(), {}, (), {}, 5.0)
    verifyObject(IEngineConnection, frontend)
    verifyObject(IHandshakeListener, frontend)
    verifyObject(IOpenSSLClientConnectionCreator, client_creator(BackendTLS(verify=False), "b.test"))
    verifyObject(IOpenSSLClientConnectionCreator, client_creator(BackendTLS(ca=ca.path), "b.test"))
