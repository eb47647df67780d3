"""
The web UI in a real headless Chromium against a real lbproxy process:
each test drives the page the way an operator would and checks what the
page shows, and through the API what the server did.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from playwright.sync_api import expect

from tests.browser.procs import ROOT

pytestmark = pytest.mark.browser

FAST_CHECKS = {"health_check": {"type": "tcp", "interval": 0.3, "timeout": 0.25, "rise": 1, "fall": 1}}


def open_dashboard(page, proxy):
    page.goto(proxy.url)
    expect(page.locator("#feed-status")).to_have_text("Live")


def card(page, backend_id):
    return page.locator(f'article.card[data-id="{backend_id}"]')


def test_add_backend_shows_its_card(page, lbproxy, backends):
    """
    Adding a backend with the form creates it on the server and its card
    appears, up, with its address and weight, without a reload.
    """
    proxy = lbproxy()
    b = backends("web1")
    open_dashboard(page, proxy)
    expect(page.locator("#cards .empty")).to_be_visible()
    form = page.locator("#add-form")
    form.get_by_label("Host").fill("127.0.0.1")
    form.get_by_label("Port").fill(str(b.port))
    form.get_by_label("Weight").fill("3")
    form.get_by_role("button", name="Add backend").click()
    expect(page.locator("#add-result")).to_contain_text(f"Added b1 (127.0.0.1:{b.port})")
    c = card(page, "b1")
    expect(c).to_be_visible()
    expect(c).to_have_attribute("data-state", "up")
    expect(c.locator(".addr")).to_have_text(f"127.0.0.1:{b.port}")
    expect(c.get_by_label("Weight of b1")).to_have_value("3")
    assert [x["id"] for x in proxy.api("GET", "/backends")["backends"]] == ["b1"]
    assert proxy.request().endswith(b"hello from web1\n")
    expect(c.locator(".m-total dd")).to_have_text("1")


def test_invalid_input_shows_the_server_error_and_changes_nothing(page, lbproxy, backends):
    """
    A port out of range and a weight that is not a number reach the server
    (the page does not pre-empt it), its message is shown next to the
    control, and the pool and config version stay as they were.
    """
    b = backends("web1")
    proxy = lbproxy("--backend", f"127.0.0.1:{b.port}")
    before = proxy.api("GET", "/config")
    open_dashboard(page, proxy)
    expect(card(page, "b1")).to_be_visible()
    form = page.locator("#add-form")
    form.get_by_label("Port").fill("70000")
    form.get_by_role("button", name="Add backend").click()
    result = page.locator("#add-result")
    expect(result).to_have_attribute("data-kind", "error")
    expect(result).to_contain_text("port must be at most 65535, not 70000")
    c = card(page, "b1")
    c.get_by_label("Weight of b1").fill("heavy")
    c.get_by_role("button", name="Set").click()
    expect(c.locator("output.result")).to_contain_text("weight must be an integer, not 'heavy'")
    assert proxy.api("GET", "/config") == before
    expect(page.locator("#cards article.card")).to_have_count(1)
    expect(page.locator("#kpi-version")).to_have_text(f"v{before['version']}")


def test_strategy_switch_is_used_by_the_next_routing_events(page, lbproxy, backends):
    """
    Choosing a strategy from the list (with its description and options
    form) and applying it makes the next routing decisions, as the live
    feed shows them, come from that strategy.
    """
    one, two = backends("web1"), backends("web2")
    proxy = lbproxy("--backend", f"127.0.0.1:{one.port}", "--backend", f"127.0.0.1:{two.port}")
    open_dashboard(page, proxy)
    recent = page.locator("#recent li .via")
    for _ in range(4):
        proxy.request()
    expect(recent.first).to_have_text("round-robin")
    expect(page.locator('#recent li .to[data-backend="b2"]').first).to_be_visible()

    select = page.get_by_label("Load-balancing strategy")
    names = select.locator("option").evaluate_all("els => els.map(e => e.value)")
    assert {"round-robin", "least-connections", "first-available"} <= set(names)
    select.select_option("first-available")
    expect(page.locator("#strategy-desc")).to_contain_text("first")
    page.locator("#strategy-options").get_by_label("limit").fill("50")
    page.get_by_role("button", name="Apply strategy").click()
    expect(page.locator("#strategy-result")).to_contain_text("now using first-available")
    expect(page.locator("#kpi-strategy")).to_have_text("first-available")
    assert proxy.api("GET", "/strategy")["options"] == {"limit": 50}

    for _ in range(6):
        proxy.request()
    expect(recent.first).to_have_text("first-available")
    vias = recent.all_inner_texts()
    targets = page.locator("#recent li .to").all_inner_texts()
    assert set(vias) == {"first-available"}, vias
    assert set(targets) == {"b1"}, targets
    expect(page.locator("#log")).to_contain_text("strategy round-robin → first-available")


def test_stopped_backend_turns_down_with_reason_then_up(page, lbproxy, backends):
    """
    Killing a backend's process turns its card red (down) with the health
    check's reason; starting it again on the same port brings it back up.
    """
    b = backends("web1")
    other = backends("web2")
    proxy = lbproxy("--backend", f"127.0.0.1:{b.port}", "--backend", f"127.0.0.1:{other.port}")
    proxy.api("PUT", "/settings", FAST_CHECKS)
    open_dashboard(page, proxy)
    c = card(page, "b1")
    expect(c).to_have_attribute("data-state", "up")
    b.stop()
    expect(c).to_have_attribute("data-state", "down")
    expect(c.locator(".pill")).to_have_text("down")
    expect(c.locator(".reason")).to_contain_text(re.compile("refused", re.I))
    expect(page.locator("#log")).to_contain_text("b1 is down")
    assert card(page, "b2").get_attribute("data-state") == "up"
    backends("web1", b.port)
    expect(c).to_have_attribute("data-state", "up")
    expect(page.locator("#log")).to_contain_text("b1 is up")


def test_drain_then_remove(page, lbproxy, backends):
    """
    Drain keeps a backend's open connection but takes it out of routing;
    Remove then waits for that connection, and the card goes once it ends.
    Force remove (confirmed by a second click) closes connections at once.
    """
    one, two = backends("web1"), backends("web2")
    proxy = lbproxy("--backend", f"127.0.0.1:{one.port}", "--backend", f"127.0.0.1:{two.port}")
    open_dashboard(page, proxy)
    held = proxy.connect()   # round-robin: the first connection goes to b1
    c = card(page, "b1")
    expect(c.locator(".m-active dd")).to_have_text("1")
    c.get_by_role("button", name="Drain").click()
    expect(c).to_have_attribute("data-state", "draining")
    expect(c.locator("output.result")).to_contain_text("draining")
    for _ in range(3):
        assert proxy.request().endswith(b"hello from web2\n")
    c.get_by_role("button", name="Remove", exact=True).click()
    expect(c).to_have_attribute("data-state", "removing")
    expect(c.locator("output.result")).to_contain_text("waiting for 1 connection")
    held.close()
    expect(c).to_have_count(0)
    assert [x["id"] for x in proxy.api("GET", "/backends")["backends"]] == ["b2"]

    held = proxy.connect()
    c2 = card(page, "b2")
    expect(c2.locator(".m-active dd")).to_have_text("1")
    force = c2.get_by_role("button", name="Force remove")
    force.click()
    expect(c2.get_by_role("button", name="Confirm: close connections")).to_be_visible()
    assert len(proxy.api("GET", "/backends")["backends"]) == 1
    c2.get_by_role("button", name="Confirm: close connections").click()
    expect(c2).to_have_count(0)
    held.settimeout(5)
    try:
        assert held.recv(100) == b""   # closed by lbproxy...
    except ConnectionResetError:
        pass                           # ...or aborted: either way, not left open
    held.close()
    expect(page.locator("#cards .empty")).to_be_visible()


def test_admin_token_is_asked_for_and_kept_for_the_tab(page, lbproxy, backends, tmp_path):
    """
    With a token required, the page asks for it on the first 401, sends it
    as a bearer token, goes live and can change the pool; the token sits in
    sessionStorage (this tab only), not in localStorage or a cookie.
    """
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-for-the-test\n")
    b = backends("web1")
    proxy = lbproxy("--admin-token-file", str(token_file), "--backend", f"127.0.0.1:{b.port}",
                    token="s3cret-token-for-the-test")
    page.goto(proxy.url)
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Admin token").fill("s3cret-token-for-the-test")
    dialog.get_by_role("button", name="Use token").click()
    expect(page.locator("#feed-status")).to_have_text("Live")
    expect(card(page, "b1")).to_be_visible()
    card(page, "b1").get_by_role("button", name="Disable").click()
    expect(card(page, "b1")).to_have_attribute("data-state", "disabled")
    expect(card(page, "b1").get_by_role("button", name="Disable")).to_be_hidden()
    card(page, "b1").get_by_role("button", name="Enable").click()
    expect(card(page, "b1")).to_have_attribute("data-state", "up")
    assert proxy.api("GET", "/backends/b1")["admin_state"] == "up"
    assert page.evaluate("sessionStorage.getItem('lbproxy.token')") == "s3cret-token-for-the-test"
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []


def test_feed_drop_is_shown_and_the_page_reconnects(page, lbproxy, backends):
    """
    When lbproxy goes away the page says it is disconnected and retrying;
    when it is back (a new process, same ports) the page is live again and
    shows the new process's pool, without a reload.
    """
    b = backends("web1")
    first = lbproxy("--backend", f"127.0.0.1:{b.port}")
    open_dashboard(page, first)
    expect(card(page, "b1")).to_be_visible()
    first.stop()
    status = page.locator("#feed-status")
    expect(status).to_have_attribute("data-state", "down")
    expect(status).to_contain_text("retrying")
    second = lbproxy("--backend", f"127.0.0.1:{b.port},weight=7", listen=first.listen, admin=first.admin)
    expect(status).to_have_text("Live", timeout=30000)
    expect(card(page, "b1").get_by_label("Weight of b1")).to_have_value("7")
    expect(page.locator("#log")).to_contain_text("live feed reconnected")
    assert second.api("GET", "/backends")["backends"][0]["weight"] == 7


def test_flow_view_reads_the_same_at_one_and_ten_thousand_per_second(page, lbproxy, backends):
    """
    One real connection is one dot.  At 10,000 decisions a second (fed to
    the page as the feed would batch them: two cores cannot make that many
    real connections next to a browser) the view aggregates: each dot
    stands for hundreds, the number of dots stays bounded, and the rates
    are shown as numbers.
    """
    one, two = backends("web1"), backends("web2")
    proxy = lbproxy("--backend", f"127.0.0.1:{one.port}", "--backend", f"127.0.0.1:{two.port}")
    open_dashboard(page, proxy)
    proxy.request()
    page.wait_for_function("window.lbproxy.flow.dots.length >= 1")
    assert page.evaluate("window.lbproxy.flow.perDot") == 1
    page.evaluate("""() => { window.flood = setInterval(() => window.lbproxy.onEvent('route', {
        counts: {b1: 600, b2: 400}, total: 1000, dropped: 950, strategy: 'round-robin',
        sample: [{time: Date.now() / 1000, client: '10.0.0.1', backend: 'b1'}]}), 100); }""")
    expect(page.locator("#flow-scale")).to_have_text("each dot ≈ 500 connections")
    expect(page.locator("#kpi-rate")).to_have_text(re.compile(r"^(9\.\d|10\.\d)k$"))
    expect(card(page, "b1").locator(".m-rate dd")).to_have_text(re.compile(r"^(5\.\d\dk|6\.\d\dk)$"))
    assert page.evaluate("window.lbproxy.flow.dots.length") <= 400
    expect(page.locator("#recent .dropped")).to_contain_text("+950 more")
    page.evaluate("clearInterval(window.flood)")


def test_pool_settings_form(page, lbproxy, backends):
    """
    The settings form shows the health check in force, refuses a bad value
    with the server's message (nothing saved), and saves a good one.
    """
    b = backends("web1")
    proxy = lbproxy("--backend", f"127.0.0.1:{b.port}")
    proxy.api("PUT", "/settings", FAST_CHECKS)
    before = proxy.api("GET", "/config")
    open_dashboard(page, proxy)
    panel = page.locator("#settings-panel")
    expect(panel.locator("#settings-summary")).to_have_text("tcp every 0.3s")
    panel.get_by_text("Pool settings").click()
    form = panel.locator("#settings-form")
    expect(form.get_by_label("Interval (s)")).to_have_value("0.3")
    form.get_by_label("Timeout (s)", exact=True).fill("5")
    form.get_by_role("button", name="Save settings").click()
    expect(panel.locator("#settings-result")).to_contain_text("must not be longer than its interval")
    assert proxy.api("GET", "/config") == before
    form.get_by_label("Timeout (s)", exact=True).fill("0.2")
    form.get_by_label("Rise").fill("3")
    form.get_by_label("Drain timeout (s)").fill("30")
    form.get_by_role("button", name="Save settings").click()
    expect(panel.locator("#settings-result")).to_contain_text(f"saved as config v{before['version'] + 1}")
    after = proxy.api("GET", "/config")
    assert after["health_check"]["rise"] == 3 and after["health_check"]["timeout"] == 0.2
    assert after["health_check"]["type"] == "tcp" and after["drain_timeout"] == 30
    expect(page.locator("#log")).to_contain_text("health check settings changed")


def test_narrow_window_and_keyboard(page, lbproxy, backends):
    """
    At phone width nothing overflows sideways, and the add form works from
    the keyboard alone (Tab to the fields, Enter to submit).
    """
    b = backends("web1")
    proxy = lbproxy()
    page.set_viewport_size({"width": 390, "height": 844})
    open_dashboard(page, proxy)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.locator("#add-form input[name=host]").focus()
    page.keyboard.press("Tab")
    page.keyboard.type(str(b.port))
    page.keyboard.press("Enter")
    expect(card(page, "b1")).to_be_visible()


def test_demo_panel_and_screenshot_under_demo_load(page, lbproxy):
    """
    Under the demo's load the dashboard shows users online and three live
    backends.  From the demo panel: more users, a backend taken offline
    (its card turns red, its traffic goes to the others), and a switch to
    least-response-time.  The screenshot of that is kept as a build
    artifact (C{artifacts/dashboard.png}); with
    C{LBPROXY_UPDATE_DOCS_SCREENSHOT=1} it also replaces the docs' copy.
    """
    proxy = lbproxy("--demo", "--demo-users", "20")
    open_dashboard(page, proxy)
    panel = page.locator("#demo-panel")
    expect(panel).to_be_visible()
    expect(page.locator("#cards article.card")).to_have_count(3)
    for name in ("alpha", "bravo", "charlie"):
        expect(card(page, name)).to_have_attribute("data-state", "up")
        expect(card(page, name).locator(".m-rate dd")).not_to_have_text("0")
    page.wait_for_function("Number(document.getElementById('users-online').textContent) >= 15")
    expect(panel.locator(".dot.on").first).to_be_visible()

    panel.get_by_label("Users online (number)").fill("40")
    panel.locator("#users-form").get_by_role("button", name="Set").click()
    expect(page.locator("#users-result")).to_contain_text("aiming for 40 users online")
    page.wait_for_function("Number(document.getElementById('users-online').textContent) >= 30")
    assert proxy.api("GET", "/demo")["users"]["count"] == 40
    page.wait_for_function("[...window.lbproxy.chart.series.values()].every(p => p.length >= 10)", timeout=30000)

    row = panel.locator('li.demo-backend[data-name="bravo"]')
    row.get_by_role("button", name="Take offline").click()
    expect(row).to_have_attribute("data-online", "no")
    expect(row.locator("output.result")).to_contain_text("bravo closed its port")
    expect(card(page, "bravo")).to_have_attribute("data-state", "down")
    expect(card(page, "bravo").locator(".m-rate dd")).to_have_text("0")
    expect(page.locator("#log")).to_contain_text("bravo is down")

    page.get_by_label("Load-balancing strategy").select_option("least-response-time")
    page.get_by_role("button", name="Apply strategy").click()
    expect(page.locator("#kpi-strategy")).to_have_text("least-response-time")
    row = panel.locator('li.demo-backend[data-name="charlie"]')
    row.get_by_label("Response delay of charlie in milliseconds").fill("400")
    row.get_by_role("button", name="Set").click()
    expect(row.locator("output.result")).to_contain_text("delay now 400 ms")
    page.wait_for_function("[...window.lbproxy.chart.series.values()].every(p => p.length >= 22)", timeout=30000)

    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "dashboard.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20000
    if os.environ.get("LBPROXY_UPDATE_DOCS_SCREENSHOT"):
        # Opt in, so a test run leaves the checkout clean.
        shutil.copyfile(shot, ROOT / "docs" / "_static" / "dashboard.png")
