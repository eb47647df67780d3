"""
The page's first moments: it decides which view it shows (the only
service, or the overview) before it opens the event feed, so "Live" means
every event from then on is applied, none dropped as another service's.
"""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_the_feed_opens_only_once_the_view_is_chosen_so_nothing_after_live_is_dropped(page, lbproxy, backends):
    """
    With the answer to GET /api/v1/services held back, the page has asked
    for no event feed yet (it used to open it at once, and events coming
    before the list named the only service were dropped as another
    service's: a route batch never showed); once the list is answered the
    feed opens, the view is the service, and one connection made right
    after "Live" shows as a dot.
    """
    one = backends("web1")
    proxy = lbproxy("--backend", f"127.0.0.1:{one.port}")
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    held: list = []
    released: list = []

    def hold(route):
        if released:
            route.continue_()
        else:
            held.append(route)

    page.route("**/api/v1/services", hold)
    page.goto(proxy.url)
    deadline = time.monotonic() + 15
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the page never asked for the list of services"
    assert not [u for u in requested if "/api/v1/events" in u], requested
    expect(page.locator("#feed-status")).to_have_text("Connecting…")
    released.append(True)
    for route in held:
        route.continue_()
    expect(page.locator("#feed-status")).to_have_text("Live")
    assert page.evaluate("window.lbproxy.service") == "default"
    proxy.request()
    page.wait_for_function("window.lbproxy.flow.dots.length >= 1")
