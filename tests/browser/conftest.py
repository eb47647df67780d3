"""
Fixtures for the browser tests: Debian's Chromium driven by Playwright
(never a downloaded browser), and lbproxy and demo backends as real
processes.  A missing Chromium fails these tests; it never skips them.
"""

from __future__ import annotations

import pytest

from tests.browser.procs import DemoBackendProcess, LBProxy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session."""
    from playwright.sync_api import expect, sync_playwright

    # CI runs the whole suite on two cores: give the page time to catch up.
    expect.set_options(timeout=20000)

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    """A fresh tab at 1280x800 whose console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15000)
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture
def lbproxy(tmp_path):
    """Start lbproxy processes with C{lbproxy(*args)}; all stop after the test."""
    started: list[LBProxy] = []

    def start(*args: str, token: str | None = None, **ports: int) -> LBProxy:
        proc = LBProxy(tmp_path, *args, token=token, **ports)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def backends():
    """Start demo backend processes with C{backends(name)}; all stop after."""
    started: list[DemoBackendProcess] = []

    def start(name: str, port: int = 0) -> DemoBackendProcess:
        b = DemoBackendProcess(name, port)
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()
