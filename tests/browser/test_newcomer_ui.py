"""
What a newcomer trips over in the web UI, in a real headless Chromium
against real lbproxy processes: a page that keeps showing a dead server's
data as live, a drained backend that never says it is done, stale errors,
a slider that stops short, a dot grid cut off, truncated or wrapping text,
and panels in an order that hides the demo on a phone.  Each test keeps
screenshots at 1280 and 390 px in C{artifacts/} (gitignored).
"""

from __future__ import annotations

import re
import signal

import pytest
from playwright.sync_api import expect

from tests.browser.procs import ROOT

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "artifacts"


def open_dashboard(page, proxy):
    page.goto(proxy.url)
    expect(page.locator("#feed-status")).to_have_text("Live")


def card(page, backend_id):
    return page.locator(f'article.card[data-id="{backend_id}"]')


def shots(page, name):
    """Full-page screenshots at 1280 and 390 px wide, then back to 1280."""
    ARTIFACTS.mkdir(exist_ok=True)
    for width, height in ((1280, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)   # one layout and paint at the new width
        path = ARTIFACTS / f"newcomer-{name}-{width}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10000
    page.set_viewport_size({"width": 1280, "height": 800})


def boxes(page, *selectors):
    """
    The bounding boxes of C{selectors} from one layout: measured one call
    at a time, a page whose live content (user dots, the recent list)
    changes height or scroll in between compares boxes of different
    moments.
    """
    return page.evaluate("""sels => sels.map(s => {
        const r = document.querySelector(s).getBoundingClientRect();
        return {x: r.x, y: r.y, width: r.width, height: r.height}; })""", list(selectors))


def test_a_dead_server_greys_out_the_page_and_says_since_when(page, lbproxy, backends):
    """
    Killing lbproxy turns the page to "not live": a banner says since when
    (the time of the last data), the KPIs, flow, cards and chart are greyed
    out and the cards' states read "was up"; starting lbproxy again on the
    same ports brings the page back live, banner gone, nothing greyed.
    """
    b = backends("web1")
    first = lbproxy("--backend", f"127.0.0.1:{b.port}")
    open_dashboard(page, first)
    c = card(page, "b1")
    expect(c).to_have_attribute("data-state", "up")
    banner = page.locator("#stale-banner")
    expect(banner).to_be_hidden()
    assert "grayscale" not in page.locator("#cards").evaluate("el => getComputedStyle(el).filter")

    first.stop(signal.SIGKILL)
    expect(page.locator("body")).to_have_class(re.compile(r"\bstale\b"))
    expect(banner).to_be_visible()
    expect(banner).to_contain_text(re.compile(r"no data from lbproxy since \d\d:\d\d:\d\d"))
    expect(banner).to_contain_text("not the current state")
    since = page.locator("#stale-since").get_attribute("datetime")
    assert re.match(r"\d{4}-\d\d-\d\dT", since), since
    for selector in ("#cards", ".kpis", "#flow-panel", "#chart-panel"):
        expect(page.locator(selector)).to_have_css("filter", "grayscale(1)")
        expect(page.locator(selector)).to_have_css("opacity", "0.45")
    pill = c.locator(".pill").evaluate("el => getComputedStyle(el, '::before').content")
    assert pill == '"was "', pill
    shots(page, "stale")

    lbproxy("--backend", f"127.0.0.1:{b.port}", listen=first.listen, admin=first.admin)
    expect(page.locator("#feed-status")).to_have_text("Live", timeout=30000)
    expect(banner).to_be_hidden()
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bstale\b"))
    expect(page.locator("#cards")).to_have_css("filter", "none")
    expect(page.locator("#cards")).to_have_css("opacity", "1")
    expect(c).to_have_attribute("data-state", "up")


def test_draining_an_idle_backend_says_drained_and_offers_the_next_step(page, lbproxy, backends):
    """
    Drain on a backend with no connections: the card says "drained (no
    connections)" at once (not DRAINING forever), Drain is gone and Enable
    and Remove are offered as the next step; Enable brings it back up, and
    after a second drain Remove takes it out at once.  The event log says
    "b1 is drained: no connections left", and the removal "b1 is removed",
    never "removed: removed".
    """
    one, two = backends("web1"), backends("web2")
    proxy = lbproxy("--backend", f"127.0.0.1:{one.port}", "--backend", f"127.0.0.1:{two.port}")
    open_dashboard(page, proxy)
    c = card(page, "b1")
    expect(c).to_have_attribute("data-state", "up")
    c.get_by_role("button", name="Drain").click()
    expect(c).to_have_attribute("data-state", "drained")
    expect(c.locator(".pill")).to_have_text("drained")
    expect(c.locator(".reason")).to_contain_text("drained (no connections)")
    expect(c.locator("output.result")).to_contain_text("drained at once: it had no connections")
    expect(c.get_by_role("button", name="Drain")).to_be_hidden()
    enable = c.get_by_role("button", name="Enable")
    remove = c.get_by_role("button", name="Remove", exact=True)
    expect(enable).to_be_visible()
    expect(remove).to_be_visible()
    expect(enable).to_have_class(re.compile(r"\bnext\b"))
    expect(remove).to_have_class(re.compile(r"\bnext\b"))
    expect(page.locator("#log")).to_contain_text("b1 is drained: no connections left")
    assert proxy.api("GET", "/backends/b1")["admin_state"] == "draining"
    shots(page, "drained")

    enable.click()
    expect(c).to_have_attribute("data-state", "up")
    expect(enable).to_be_hidden()
    c.get_by_role("button", name="Drain").click()
    expect(c).to_have_attribute("data-state", "drained")
    remove.click()
    expect(c).to_have_count(0)
    expect(page.locator("#log")).to_contain_text("b1 is removed")
    assert "removed: removed" not in page.locator("#log").inner_text()
    assert [x["id"] for x in proxy.api("GET", "/backends")["backends"]] == ["b2"]


def test_an_error_goes_once_its_form_is_edited_or_a_later_action_succeeds(page, lbproxy, backends):
    """
    The server's error under the add form stays while it is true, but not
    through later successful actions: a successful strategy switch clears
    it; a new error there goes as soon as the form is edited.
    """
    b, other = backends("web1"), backends("web2")
    proxy = lbproxy("--backend", f"127.0.0.1:{b.port}")
    open_dashboard(page, proxy)
    form = page.locator("#add-form")
    result = page.locator("#add-result")
    form.get_by_label("Port").fill("70000")
    form.get_by_role("button", name="Add backend").click()
    expect(result).to_have_attribute("data-kind", "error")
    expect(result).to_contain_text("port must be at most 65535")
    shots(page, "add-error")

    page.get_by_label("Load-balancing strategy").select_option("least-connections")
    page.get_by_role("button", name="Apply strategy").click()
    expect(page.locator("#strategy-result")).to_contain_text("now using least-connections")
    expect(result).to_be_hidden()
    expect(result).to_have_text("")

    form.get_by_role("button", name="Add backend").click()
    expect(result).to_contain_text("port must be at most 65535")
    form.get_by_label("Port").fill(str(other.port))
    expect(result).to_be_hidden()
    form.get_by_role("button", name="Add backend").click()
    expect(result).to_contain_text(f"Added b2 (127.0.0.1:{other.port})")


def test_a_crowd_in_the_demo_fits_and_reads_at_both_widths(page, lbproxy):
    """
    With 300 simulated users: the slider goes as far as the number box
    (the server's maximum, 500) and follows it to 300; every drawn user
    dot is inside the grid (none cut off) and the ones not drawn are
    counted; the strategy name in the routing list is not truncated; a
    response time over a second ("1004 ms") stays on one line and the
    cards' buttons stay in line.  At 1280 px the left column has no gaps
    beyond the grid's; at 390 px Live traffic comes first, then the demo,
    then the backends, and Pool settings is near the end.
    """
    proxy = lbproxy("--demo", "--demo-users", "300")
    open_dashboard(page, proxy)
    panel = page.locator("#demo-panel")
    expect(panel).to_be_visible()
    slider = page.locator("#users-count")
    number = panel.get_by_label("Users online (number)")
    expect(slider).to_have_attribute("max", "500")
    expect(number).to_have_attribute("max", "500")
    expect(slider).to_have_value("300")
    number.fill("320")
    number.dispatch_event("input")
    expect(slider).to_have_value("320")
    number.fill("300")
    panel.locator("#users-form").get_by_role("button", name="Set").click()
    expect(page.locator("#users-result")).to_contain_text("aiming for 300 users online")
    page.wait_for_function("Number(document.getElementById('users-online').textContent) >= 250", timeout=30000)

    dots = page.locator("#user-dots")
    clipped = dots.evaluate("""el => {
        const r = el.getBoundingClientRect();
        return [...el.children].filter(d => d.getBoundingClientRect().bottom > r.bottom + 0.5).length; }""")
    assert clipped == 0
    assert dots.evaluate("el => el.scrollHeight <= el.clientHeight + 1")
    expect(page.locator("#user-dots-more")).to_contain_text(re.compile(r"^\+\d+ more online, not drawn$"))

    page.get_by_label("Load-balancing strategy").select_option("least-response-time")
    page.get_by_role("button", name="Apply strategy").click()
    expect(page.locator("#recent li .via").first).to_have_text("least-response-time")
    truncated = page.locator("#recent li .via").evaluate_all(
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)")
    assert truncated == []

    row = panel.locator('li.demo-backend[data-name="charlie"]')
    row.get_by_label("Response delay of charlie in milliseconds").fill("1000")
    row.get_by_role("button", name="Set").click()
    expect(row.locator("output.result")).to_contain_text("delay now 1000 ms")
    latency = card(page, "charlie").locator(".m-latency dd")
    expect(latency).to_have_text(re.compile(r"^\d{4} ms$"), timeout=30000)
    line = latency.evaluate("el => [el.getBoundingClientRect().height, parseFloat(getComputedStyle(el).lineHeight)]")
    assert line[0] < line[1] * 1.5, line
    cut = page.locator("#cards .metrics dd").evaluate_all(
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)")
    assert cut == []
    tops = page.locator("#cards .card .buttons").evaluate_all("els => els.map(e => e.getBoundingClientRect().top)")
    assert len(tops) == 3 and max(tops) - min(tops) < 1, tops

    flow, backends_, chart = boxes(page, "#flow-panel", "#backends-panel", "#chart-panel")
    assert backends_["y"] - (flow["y"] + flow["height"]) <= 17
    assert chart["y"] - (backends_["y"] + backends_["height"]) <= 17
    shots(page, "crowd")

    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    panels = (("flow", "#flow-panel"), ("demo", "#demo-panel"), ("backends", "#backends-panel"),
              ("strategy", "#strategy-panel"), ("settings", "#settings-panel"), ("log", "#log-panel"))
    ys = {name: b["y"] for (name, _), b in zip(panels, boxes(page, *(sel for _, sel in panels)))}
    order = sorted(ys, key=ys.get)
    assert order[:4] == ["flow", "demo", "backends", "strategy"], order
    assert order.index("settings") > order.index("strategy"), order
    assert ys["demo"] < 844 * 2, ys


def test_the_chart_starts_from_the_servers_history_after_a_reload(page, lbproxy, backends):
    """
    The chart's points come from the server's kept history on connect: after
    a reload the chart already holds points from before the page loaded
    (the page alone could not have them), with the traffic sent then; its
    label says the span the axis shows.
    """
    b = backends("web1")
    proxy = lbproxy("--backend", f"127.0.0.1:{b.port}")
    for _ in range(5):
        proxy.request()
    open_dashboard(page, proxy)
    page.wait_for_function("(window.lbproxy.chart.series.get('b1') || []).length >= 4", timeout=30000)
    history = proxy.api("GET", "/stats/history")
    assert sum(p["backends"].get("b1", 0) for p in history["points"]) >= 4, history

    page.reload()
    expect(page.locator("#feed-status")).to_have_text("Live")
    page.wait_for_function("""() => {
        const points = window.lbproxy.chart.series.get('b1') || [];
        const loaded = performance.timeOrigin / 1000;
        return points.filter(p => p.t < loaded - 1).length >= 3 && points.some(p => p.v > 0);
    }""")
    expect(page.locator("#chart-span")).to_have_text("last minute, per backend")
    expect(page.locator("#chart")).to_have_attribute("aria-label", re.compile("over the last minute"))
    shots(page, "history")
