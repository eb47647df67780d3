"""
The Traffic control panel: an operator edits a service's rules in the
UI, they are in force at once, and the panel counts what they refuse.
"""

from __future__ import annotations

import socket

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def refused_from(host: str, port: int) -> bool:
    """Connect from C{host}; whether lbproxy closed the connection without a byte."""
    s = socket.socket()
    s.settimeout(10)
    try:
        s.bind((host, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    finally:
        s.close()


def test_operator_denies_a_network_and_sees_it_counted(page, lbproxy, backends):
    """
    The panel shows "no rules"; the operator enters a deny list and a
    queue and saves (a new config version); a client of the denied
    address is refused, and the panel counts it under "deny list".  An
    invalid network is refused with the server's message and changes
    nothing.
    """
    web = backends("web1")
    proxy = lbproxy("--backend", f"127.0.0.1:{web.port}")
    page.goto(proxy.url)
    panel = page.locator("#traffic-panel")
    expect(panel.locator(".traffic-summary")).to_have_text("no rules")
    panel.get_by_label("Deny").fill("127.0.0.2")
    panel.get_by_label("Queue length").fill("3")
    panel.get_by_role("button", name="Save traffic control").click()
    expect(panel.locator("output.result")).to_contain_text("saved as config v")
    expect(panel.locator(".traffic-summary")).to_have_text("deny 1, queue 3")
    service = proxy.api("GET", "/services/default")
    assert service["deny"] == ["127.0.0.2/32"] and service["max_queue"] == 3

    assert refused_from("127.0.0.2", proxy.listen)
    assert not refused_from("127.0.0.3", proxy.listen)
    expect(panel.locator('dd[data-counter="refused"]').first).to_have_text("1")

    panel.get_by_label("Deny").fill("127.0.0.300")
    panel.get_by_role("button", name="Save traffic control").click()
    expect(panel.locator("output.result")).to_contain_text("deny")
    expect(panel.locator("output.result")).to_have_attribute("data-kind", "error")
    assert proxy.api("GET", "/services/default")["deny"] == ["127.0.0.2/32"]
