"""
The dashboard says when the active strategy ignores the weights it shows.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_weight_note_follows_the_strategy(page, lbproxy, backends):
    """
    Under round-robin (weighted) a card shows its weight with no note;
    switching to first-available, which ignores weights, puts "weight
    ignored by first-available" next to every weight, and switching back
    takes it away.  The strategy panel says the same in its description.
    """
    one, two = backends("web1"), backends("web2")
    proxy = lbproxy("--backend", f"127.0.0.1:{one.port},weight=3", "--backend", f"127.0.0.1:{two.port}")
    page.goto(proxy.url)
    expect(page.locator("#feed-status")).to_have_text("Live")
    notes = page.locator("article.card .weight-note")
    expect(page.locator('article.card[data-id="b1"]').get_by_label("Weight of b1")).to_have_value("3")
    expect(notes).to_have_count(2)
    for i in range(2):
        expect(notes.nth(i)).to_be_hidden()

    proxy.api("PUT", "/strategy", {"name": "first-available"})
    expect(page.locator("#kpi-strategy")).to_have_text("first-available")
    for i in range(2):
        expect(notes.nth(i)).to_be_visible()
        expect(notes.nth(i)).to_have_text("weight ignored by first-available")
    page.get_by_label("Load-balancing strategy").select_option("first-available")
    expect(page.locator("#strategy-desc")).to_contain_text("It ignores backend weights.")

    proxy.api("PUT", "/strategy", {"name": "round-robin"})
    expect(page.locator("#kpi-strategy")).to_have_text("round-robin")
    for i in range(2):
        expect(notes.nth(i)).to_be_hidden()
    page.get_by_label("Load-balancing strategy").select_option("round-robin")
    expect(page.locator("#strategy-desc")).not_to_contain_text("ignores")
