"""
The config history panel: the UI's own changes are listed as made by the
UI, a version shows its diff, and its roll-back button puts the old
document back in force as a new version.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_history_lists_diffs_and_rolls_back(page, lbproxy, backends):
    """
    After a strategy change made in the UI and a backend added through the
    API, the panel lists both newest first (the UI's with "ui"); clicking
    the strategy change shows its one-line diff; rolling back to it removes
    the later backend, as a new version, listed at the top.
    """
    one = backends("web1")
    proxy = lbproxy("--backend", f"127.0.0.1:{one.port}")
    page.goto(proxy.url)
    expect(page.locator("#feed-status")).to_have_text("Live")
    page.get_by_label("Load-balancing strategy").select_option("least-connections")
    page.locator("#strategy-form button[type=submit]").click()
    expect(page.locator("#kpi-strategy")).to_have_text("least-connections")
    proxy.api("POST", "/backends", {"id": "late", "host": "127.0.0.1", "port": 9})

    page.locator("#history-details > summary").click()
    items = page.locator("#history-list li")
    # The newest first; the oldest is the config lbproxy started with.
    expect(items).to_have_count(3)
    expect(items.nth(2)).to_contain_text("config at start")
    expect(items.nth(0)).to_contain_text("added backend late 127.0.0.1:9")
    expect(items.nth(0)).to_contain_text("api")
    expect(items.nth(1)).to_contain_text("strategy round-robin -> least-connections")
    expect(items.nth(1).locator(".history-by")).to_have_text("ui")

    items.nth(1).locator("button").click()
    rows = page.locator("#history-diff tr")
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_contain_text("/strategy/name")
    expect(rows.nth(0)).to_contain_text("least-connections")
    page.locator("#history-rollback").click()
    expect(page.locator("#history-result")).to_contain_text("v2 is back in force as v4")
    expect(items).to_have_count(4)
    expect(items.nth(0)).to_contain_text("rolled back to version 2")
    expect(page.locator('article.card[data-id="late"]')).to_have_count(0)
    assert [b["id"] for b in proxy.api("GET", "/config")["backends"]] == ["b1"]


def test_a_services_history_shows_only_what_changed_in_that_service(page, lbproxy, backends):
    """
    With two services, the history panel of one service shows, for each
    version, only the part of the diff that concerns it (paths within the
    service), and says so when a version did not change it: web's strategy
    change is one row in web's view and "did not change" in default's; a
    backend added to default the reverse; the version adding web shows web
    whole.
    """
    one = backends("web1")
    proxy = lbproxy("--backend", f"127.0.0.1:{one.port}")
    proxy.api("POST", "/services", {"name": "web", "listen": ["tcp:0:interface=127.0.0.1"],
                                    "backends": [{"id": "w1", "host": "127.0.0.1", "port": one.port}]})
    proxy.api("PATCH", "/services/web", {"strategy": {"name": "least-connections"}})
    proxy.api("POST", "/services/default/backends", {"id": "late", "host": "127.0.0.1", "port": 9})
    page.goto(proxy.url + "#/services/web")
    expect(page.locator("#feed-status")).to_have_text("Live")
    expect(page.locator("#crumb-name")).to_have_text("web")
    page.locator("#history-details > summary").click()
    items = page.locator("#history-list li")
    expect(items).to_have_count(4)
    rows = page.locator("#history-diff tr")
    scope = page.locator("#history-scope")

    page.locator('#history-list li[data-version="3"] button').click()
    expect(scope).to_contain_text("What v3 changed in service web")
    expect(rows).to_have_count(1)
    expect(rows.nth(0).locator("td").nth(0)).to_have_text("/strategy/name")
    expect(rows.nth(0)).to_contain_text("least-connections")

    page.locator('#history-list li[data-version="4"] button').click()
    expect(scope).to_contain_text("v4 did not change service web")
    expect(rows).to_have_count(0)

    page.locator('#history-list li[data-version="2"] button').click()
    expect(scope).to_contain_text("What v2 changed in service web")
    expect(rows).to_have_count(1)
    expect(rows.nth(0).locator("td").nth(0)).to_have_text("/")
    expect(rows.nth(0).locator("td").nth(2)).to_contain_text('"name":"web"')

    page.goto(proxy.url + "#/services/default")
    expect(page.locator("#crumb-name")).to_have_text("default")
    expect(page.locator("#history-entry")).to_be_hidden()
    page.locator('#history-list li[data-version="3"] button').click()
    expect(scope).to_contain_text("v3 did not change service default")
    expect(rows).to_have_count(0)
    page.locator('#history-list li[data-version="4"] button').click()
    expect(scope).to_contain_text("What v4 changed in service default")
    expect(rows).to_have_count(1)
    expect(rows.nth(0).locator("td").nth(0)).to_have_text("/backends/late")
