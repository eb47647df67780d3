"""
The UI's Force remove button on a backend that is already being removed,
in a real headless Chromium against a real lbproxy process.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_dashboard import card, open_dashboard

pytestmark = pytest.mark.browser


def test_force_remove_of_a_removing_backend(page, lbproxy, backends):
    """After Remove leaves a backend removing with an open connection, Force remove (confirmed) closes it and the card goes."""
    one, two = backends("web1"), backends("web2")
    proxy = lbproxy("--backend", f"127.0.0.1:{one.port}", "--backend", f"127.0.0.1:{two.port}")
    open_dashboard(page, proxy)
    held = proxy.connect()   # round-robin: the first connection goes to b1
    c = card(page, "b1")
    expect(c.locator(".m-active dd")).to_have_text("1")
    c.get_by_role("button", name="Remove", exact=True).click()
    expect(c).to_have_attribute("data-state", "removing")
    force = c.get_by_role("button", name="Force remove")
    expect(force).to_have_attribute("title", "Close its remaining connections now")
    force.click()
    c.get_by_role("button", name="Confirm: close connections").click()
    expect(c).to_have_count(0)
    held.settimeout(5)
    try:
        assert held.recv(100) == b""
    except ConnectionResetError:
        pass
    held.close()
    assert [x["id"] for x in proxy.api("GET", "/backends")["backends"]] == ["b2"]
