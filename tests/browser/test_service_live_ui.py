"""
A service that is not the feed's main one gets its live view from the
feed itself (route events naming it, with the real clients' addresses),
its chart from its own stats history, and a traffic panel that edits it
(remounted with each service shown).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_services_ui import request, two_services  # noqa: F401  (the fixture)

pytestmark = pytest.mark.browser


def test_a_non_main_services_view_routes_from_the_feed_and_edits_its_traffic(page, two_services):  # noqa: F811
    """
    #/services/beta (alpha is the feed's snapshot service) shows beta's
    routing from feed samples of real connections (client 127.0.0.1, no
    polled counts) and charts them; its traffic panel is beta's and a deny
    list saved there lands on beta only; opening alpha remounts the panel
    on alpha.
    """
    proxy, ports = two_services, two_services.ports
    page.goto(proxy.url + "#/services/beta")
    expect(page.locator("#feed-status")).to_have_text("Live")
    expect(page.locator("#crumb-name")).to_have_text("beta")
    page.wait_for_function("window.lbproxy.feedAll && window.lbproxy.routesFromFeed")
    assert page.evaluate("window.lbproxy.feedService") != "beta"
    for _ in range(3):
        assert request(ports["beta"]).endswith(b"hello from beta-1\n")
    recent = page.locator("#recent li:not(.polled)")
    expect(recent.locator(".client").first).to_have_text("127.0.0.1")
    expect(recent.locator('.to[data-backend="b1"]').first).to_be_visible()
    expect(page.locator("#recent li.polled")).to_have_count(0)
    page.wait_for_function("(window.lbproxy.chart.series.get('b1') || []).some(p => p.v > 0)", timeout=30000)

    panel = page.locator("#traffic-panel")
    expect(panel.get_by_label("Service")).to_have_value("beta")
    panel.get_by_label("Deny").fill("127.0.0.9")
    panel.get_by_role("button", name="Save traffic control").click()
    expect(panel.locator("output.result")).to_contain_text("saved as config v")
    expect(panel.locator(".traffic-summary")).to_have_text("deny 1")
    assert proxy.api("GET", "/services/beta")["deny"] == ["127.0.0.9/32"]
    assert proxy.api("GET", "/services/alpha")["deny"] == []

    page.goto(proxy.url + "#/services/alpha")
    expect(page.locator("#crumb-name")).to_have_text("alpha")
    expect(panel.get_by_label("Service")).to_have_value("alpha")
    expect(panel.locator(".traffic-summary")).to_have_text("no rules")
    assert page.locator("#traffic-panel details").count() == 1
