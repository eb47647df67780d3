"""
The web UI of many services, in a real headless Chromium against a real
lbproxy started from a C{--config} TOML file with two services: the
overview lists them with their listeners, a service made with the form
takes real connections, a taken port shows the server's 409 and adds
nothing, deleting a service removes it, and a service's own view shows
only its backends and its routing.  Screenshots at 1280 and 390 px go to
C{artifacts/} (gitignored).
"""

from __future__ import annotations

import re
import socket
import sys

import pytest
from playwright.sync_api import expect

from tests.browser.procs import ROOT, LBProxy, free_port

pytestmark = pytest.mark.browser

CHECKS = "health_check = { type = \"tcp\", interval = 0.3, timeout = 0.25, rise = 1, fall = 1 }"


class ConfigLBProxy(LBProxy):
    """
    lbproxy with its services from a C{--config} file (which cannot be
    mixed with C{--listen}, so none is given).
    """

    def __init__(self, log_dir, config, token=None):
        super().__init__(log_dir, token=token)
        self.args = [
            sys.executable, "-m", "twisted", "lbproxy", "--config", str(config),
            "--admin", f"tcp:{self.admin}:interface=127.0.0.1", "--connect-timeout", "1",
        ]


@pytest.fixture
def two_services(tmp_path, backends):
    """
    lbproxy with services C{alpha} (one port, two backends) and C{beta}
    (two ports, one backend), each backend a demo backend process.
    """
    a1, a2, b1 = backends("alpha-1"), backends("alpha-2"), backends("beta-1")
    ports = {"alpha": free_port(), "beta": free_port(), "beta2": free_port()}
    config = tmp_path / "services.toml"
    config.write_text(f"""
[services.alpha]
listen = ["tcp:{ports['alpha']}:interface=127.0.0.1"]
{CHECKS}
backends = [{{ host = "127.0.0.1", port = {a1.port} }}, {{ host = "127.0.0.1", port = {a2.port} }}]

[services.beta]
listen = ["tcp:{ports['beta']}:interface=127.0.0.1", "tcp:{ports['beta2']}:interface=127.0.0.1"]
strategy = "least-connections"
{CHECKS}
backends = [{{ host = "127.0.0.1", port = {b1.port} }}]
""")
    proxy = ConfigLBProxy(tmp_path, config).start()
    proxy.ports = ports
    proxy.backend_ports = {"alpha": [a1.port, a2.port], "beta": [b1.port]}
    yield proxy
    proxy.stop()


def request(port: int) -> bytes:
    """One HTTP request through lbproxy's port C{port}; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def service(page, name):
    return page.locator(f'#services article.svc[data-service="{name}"]')


def open_overview(page, proxy):
    page.goto(proxy.url)
    expect(page.locator("#feed-status")).to_have_text("Live")
    expect(page.locator("#overview")).to_be_visible()


def shot(page, name):
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    path = artifacts / name
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10000


def test_overview_lists_the_services_of_the_config_file(page, two_services):
    """
    With two services the page lands on the overview (no service opened):
    each service with its listen endpoints and the addresses they are
    bound to, its health once the checks pass, and an open connection
    counted as active on its service only.  At 390 px nothing overflows.
    """
    proxy, ports = two_services, two_services.ports
    open_overview(page, proxy)
    expect(page.locator("#services article.svc")).to_have_count(2)
    expect(page.locator("#service-view")).to_be_hidden()
    alpha, beta = service(page, "alpha"), service(page, "beta")
    expect(alpha.locator(".listen li")).to_have_count(1)
    expect(alpha.locator(".listen")).to_contain_text(f"tcp:{ports['alpha']}:interface=127.0.0.1")
    expect(alpha.locator(".listen .bound")).to_have_text(f"127.0.0.1:{ports['alpha']}")
    expect(beta.locator(".listen li")).to_have_count(2)
    expect(beta.locator(".listen .bound")).to_have_text([f"127.0.0.1:{ports['beta']}", f"127.0.0.1:{ports['beta2']}"])
    expect(alpha.locator(".health")).to_have_text("2/2 up")
    expect(beta.locator(".health")).to_have_text("1/1 up")
    expect(beta).to_have_attribute("data-health", "ok")
    expect(beta.locator(".m-strategy dd")).to_have_text("least-connections")

    held = socket.create_connection(("127.0.0.1", ports["beta2"]), timeout=5)
    try:
        expect(beta.locator(".m-active dd")).to_have_text("1")
        expect(alpha.locator(".m-active dd")).to_have_text("0")
        for _ in range(3):
            assert request(ports["alpha"]).startswith(b"HTTP/1.0 200")
        expect(alpha.locator(".m-rate dd")).not_to_have_text(re.compile(r"^(0|–)$"))
        shot(page, "services-overview-1280.png")
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "services-overview-390.png")
    finally:
        held.close()


def test_a_service_created_with_the_form_takes_connections(page, two_services, backends):
    """
    A third service made through the form (name, listen endpoint, a
    backend, a strategy) appears in the overview, bound to its port, and a
    real TCP connection to that port reaches its backend.
    """
    proxy = two_services
    gamma = backends("gamma-1")
    port = free_port()
    open_overview(page, proxy)
    form = page.locator("#create-form")
    form.get_by_label("Name", exact=True).fill("gamma")
    form.get_by_label("Listen endpoints").fill(f"tcp:{port}:interface=127.0.0.1")
    form.get_by_label("Backends").fill(f"127.0.0.1:{gamma.port} weight=2")
    form.get_by_label("Strategy").select_option("first-available")
    form.get_by_role("button", name="Create service").click()
    expect(page.locator("#create-result")).to_have_text(f"created gamma, listening on 127.0.0.1:{port}")
    card = service(page, "gamma")
    expect(card).to_be_visible()
    expect(card.locator(".listen .bound")).to_have_text(f"127.0.0.1:{port}")
    expect(card.locator(".m-strategy dd")).to_have_text("first-available")
    assert request(port).endswith(b"hello from gamma-1\n")
    expect(card.locator(".health")).to_have_text("1/1 up")
    created = proxy.api("GET", "/services/gamma")
    assert created["backends"][0]["weight"] == 2 and created["listen"] == [f"tcp:{port}:interface=127.0.0.1"]

    # The optional fields: SNI names, sni_default, accept_proxy.
    form.get_by_label("Name", exact=True).fill("delta")
    form.get_by_label("Listen endpoints").fill(f"tcp:{free_port()}:interface=127.0.0.1")
    form.get_by_text("Shared endpoints: SNI and PROXY protocol").click()
    form.get_by_label("SNI names").fill("db.example.com, *.db.example.com")
    form.get_by_label("SNI default of its endpoints").check()
    form.get_by_label("Accept PROXY from").fill("10.0.0.0/8")
    form.get_by_role("button", name="Create service").click()
    expect(page.locator("#create-result")).to_contain_text("created delta")
    delta = service(page, "delta")
    expect(delta.locator(".sni").first).to_have_text("SNI db.example.com, *.db.example.com default")
    expect(delta.locator(".sni").nth(1)).to_have_text("PROXY from 10.0.0.0/8")
    got = proxy.api("GET", "/services/delta")
    assert (got["sni"], got["sni_default"], got["accept_proxy"]) == (["db.example.com", "*.db.example.com"], True, ["10.0.0.0/8"])
    expect(page.locator("#services article.svc")).to_have_count(4)


def test_a_taken_port_shows_the_servers_409_and_adds_nothing(page, two_services):
    """
    A listen endpoint on a port another socket holds: the server's own
    message (409, nothing changed) is shown next to the form, the overview
    still lists two services, and the document did not move.
    """
    proxy = two_services
    before = proxy.api("GET", "/services")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        open_overview(page, proxy)
        form = page.locator("#create-form")
        form.get_by_label("Name", exact=True).fill("delta")
        form.get_by_label("Listen endpoints").fill(f"tcp:{port}:interface=127.0.0.1")
        with page.expect_response(lambda r: r.url.endswith("/api/v1/services") and r.request.method == "POST") as answer:
            form.get_by_role("button", name="Create service").click()
        assert answer.value.status == 409
        result = page.locator("#create-result")
        expect(result).to_have_attribute("data-kind", "error")
        expect(result).to_contain_text(f"cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use")
        expect(result).to_contain_text("nothing changed")
    expect(page.locator("#services article.svc")).to_have_count(2)
    assert proxy.api("GET", "/services") == before
    # An address that is not on this host: the server's 400, shown the same way.
    form.get_by_label("Listen endpoints").fill(f"tcp:{free_port()}:interface=192.0.2.1")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/services") and r.request.method == "POST") as answer:
        form.get_by_role("button", name="Create service").click()
    assert answer.value.status == 400
    expect(result).to_contain_text("Cannot assign requested address")
    assert proxy.api("GET", "/services") == before


def test_deleting_a_service_asks_and_removes_it(page, two_services):
    """
    Delete asks first (cancel keeps the service); graceful deletion
    removes the service from the overview and its port stops accepting;
    force deletion closes a connection that was open.
    """
    proxy, ports = two_services, two_services.ports
    open_overview(page, proxy)
    beta = service(page, "beta")
    dialog = page.locator("#delete-dialog")
    beta.get_by_role("button", name="Delete…").click()
    expect(dialog).to_be_visible()
    expect(dialog.locator("#delete-name")).to_have_text("beta")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert [s["name"] for s in proxy.api("GET", "/services")["services"]] == ["alpha", "beta"]

    beta.get_by_role("button", name="Delete…").click()
    dialog.get_by_label("let them finish (graceful)").check()
    dialog.get_by_role("button", name="Delete service").click()
    expect(beta).to_have_count(0)
    expect(page.locator("#create-result")).to_contain_text("beta deleted")
    assert [s["name"] for s in proxy.api("GET", "/services")["services"]] == ["alpha"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports["beta"]), timeout=5).close()

    held = socket.create_connection(("127.0.0.1", ports["alpha"]), timeout=5)
    alpha = service(page, "alpha")
    expect(alpha.locator(".m-active dd")).to_have_text("1")
    alpha.get_by_role("button", name="Delete…").click()
    expect(dialog.locator("#delete-why")).to_contain_text("1 open connection")
    dialog.get_by_label("close them now (force)").check()
    dialog.get_by_role("button", name="Delete service").click()
    expect(page.locator("#services .empty")).to_be_visible()
    held.settimeout(5)
    try:
        assert held.recv(100) == b""
    except ConnectionResetError:
        pass
    held.close()
    assert proxy.api("GET", "/services")["services"] == []


def test_a_services_view_shows_only_its_backends_and_routing(page, two_services):
    """
    #/services/beta shows beta's one backend (not alpha's two), routes of
    beta's traffic only (alpha's connections do not count on it), and
    survives a reload; a listen endpoint added there takes connections
    and goes again when removed.  alpha's view shows its own routing from
    the feed.  Screenshots at 1280 and 390 px.
    """
    proxy, ports = two_services, two_services.ports
    page.goto(proxy.url + "#/services/beta")
    expect(page.locator("#feed-status")).to_have_text("Live")
    expect(page.locator("#crumb-name")).to_have_text("beta")
    cards = page.locator("#cards article.card")
    expect(cards).to_have_count(1)
    expect(cards.first.locator(".addr")).to_have_text(f"127.0.0.1:{proxy.backend_ports['beta'][0]}")
    expect(page.locator("#kpi-strategy")).to_have_text("least-connections")
    expect(page.locator("#service-listen li")).to_have_count(2)
    # beta is not the feed's snapshot service, but the feed carries its routes.
    page.wait_for_function("window.lbproxy.feedAll && window.lbproxy.routesFromFeed")

    for _ in range(3):
        request(ports["alpha"])
    for _ in range(2):
        assert request(ports["beta"]).endswith(b"hello from beta-1\n")
    expect(cards.first.locator(".m-total dd")).to_have_text("2")
    expect(page.locator('#recent li .to[data-backend="b1"]').first).to_be_visible()
    page.wait_for_function("(window.lbproxy.chart.series.get('b1') || []).some(p => p.v > 0)", timeout=30000)

    page.reload()
    expect(page.locator("#crumb-name")).to_have_text("beta")
    expect(cards).to_have_count(1)
    page.wait_for_function("window.lbproxy.feedAll && window.lbproxy.routesFromFeed")

    extra = free_port()
    head = page.locator("#service-head")
    head.get_by_label("New listen endpoint").fill(f"tcp:{extra}:interface=127.0.0.1")
    head.get_by_role("button", name="Add listen endpoint").click()
    expect(page.locator("#listen-result")).to_contain_text(f"now also listening on tcp:{extra}")
    expect(page.locator("#service-listen li")).to_have_count(3)
    assert request(extra).endswith(b"hello from beta-1\n")
    expect(cards.first.locator(".m-total dd")).to_have_text("3")
    expect(page.locator("#kpi-accepted")).to_have_text("3")
    expect(page.locator('#recent li .to[data-backend="b1"]').first).to_be_visible()
    shot(page, "service-view-1280.png")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "service-view-390.png")
    page.set_viewport_size({"width": 1280, "height": 800})
    head.get_by_role("button", name=f"Stop listening on tcp:{extra}:interface=127.0.0.1").click()
    expect(page.locator("#service-listen li")).to_have_count(2)
    assert f"tcp:{extra}:interface=127.0.0.1" not in proxy.api("GET", "/services/beta")["listen"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", extra), timeout=5).close()

    # The pool routes of the view go to its service: a backend added here is beta's.
    form = page.locator("#add-form")
    spare = free_port()
    form.get_by_label("Port").fill(str(spare))
    form.get_by_role("button", name="Add backend").click()
    expect(page.locator("#add-result")).to_contain_text(f"Added b2 (127.0.0.1:{spare})")
    expect(cards).to_have_count(2)
    assert [b["port"] for b in proxy.api("GET", "/services/beta/backends")["backends"]] == [
        proxy.backend_ports["beta"][0], spare]
    assert len(proxy.api("GET", "/services/alpha/backends")["backends"]) == 2

    page.get_by_role("link", name="All services").click()
    expect(page.locator("#overview")).to_be_visible()
    service(page, "alpha").get_by_role("link", name="Open").click()
    expect(page.locator("#crumb-name")).to_have_text("alpha")
    expect(cards).to_have_count(2)
    request(ports["alpha"])
    expect(page.locator("#recent li .client").first).to_have_text("127.0.0.1")

    # Deleting the service in view goes back to the overview.
    head.get_by_role("button", name="Delete service…").click()
    page.locator("#delete-dialog").get_by_role("button", name="Delete service").click()
    expect(page.locator("#overview")).to_be_visible()
    expect(page.locator("#services article.svc")).to_have_count(1)
    assert page.evaluate("location.hash") == "#/"
    assert [s["name"] for s in proxy.api("GET", "/services")["services"]] == ["beta"]


def test_one_service_opens_at_once_and_the_overview_greys_when_not_live(page, lbproxy, backends):
    """
    With one service (the flags' C{default}) the page opens it at once, as
    before services; "All services" shows the overview of that one, and
    when lbproxy goes away the overview is greyed out as not live.
    """
    b = backends("web1")
    proxy = lbproxy("--backend", f"127.0.0.1:{b.port}")
    page.goto(proxy.url)
    expect(page.locator("#feed-status")).to_have_text("Live")
    expect(page.locator("#crumb-name")).to_have_text("default")
    expect(page.locator('#cards article.card[data-id="b1"]')).to_be_visible()
    page.get_by_role("link", name="All services").click()
    expect(page.locator("#overview")).to_be_visible()
    expect(page.locator("#services article.svc")).to_have_count(1)
    expect(service(page, "default").locator(".listen .bound")).to_have_text(f"127.0.0.1:{proxy.listen}")
    assert "grayscale" not in page.locator("#services").evaluate("el => getComputedStyle(el).filter")
    proxy.stop()
    expect(page.locator("#stale-banner")).to_be_visible()
    expect(page.locator("#services")).to_have_css("filter", "grayscale(1)")
