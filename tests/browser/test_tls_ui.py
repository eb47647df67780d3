"""
The dashboard shows TLS: a chip per served certificate with its expiry
(amber under 14 days), and a backend reached over unverified TLS marked so.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.tlscerts import CA

pytestmark = pytest.mark.browser


def test_certificate_expiry_chip_and_unverified_backend_note(page, lbproxy, backends, tmp_path):
    """
    A TLS service with a certificate expiring in 5 days gets an amber
    chip naming it; one with 20 days a plain one; a backend with
    verify false says "TLS, not verified".
    """
    web = backends("web1")
    proxy = lbproxy("--backend", f"127.0.0.1:{web.port}")
    ca = CA(tmp_path)
    soon = ca.issue("soon", "soon.test", ["soon.test"], days=5)
    later = ca.issue("later", "later.test", ["later.test"], days=20)
    for name, pair in (("soon", soon), ("later", later)):
        proxy.api("POST", "/services", {
            "name": name, "listen": ["tcp:0:interface=127.0.0.1"],
            "backends": [{"host": "127.0.0.1", "port": web.port}],
            "tls": {"certificates": [{"cert": pair[0], "key": pair[1]}]},
        })
    try:
        proxy.api("PATCH", "/backends/b1", {"tls": {"verify": False}})
    except Exception as e:
        raise AssertionError(e.read().decode()) from None
    # Three services: the page lands on the overview; the backend's note is
    # on the default service's own view.
    page.goto(proxy.url + "#/services/default")
    expect(page.locator("#feed-status")).to_have_text("Live")
    expect(page.locator(".tls-chip.tls-warn")).to_contain_text("TLS soon soon.test: expires in 4 d")
    expect(page.locator(".tls-chip.tls-ok")).to_contain_text("TLS later later.test: expires in 19 d")
    expect(page.locator('article.card[data-id="b1"] .tls-unverified')).to_have_text(" · TLS, not verified")
