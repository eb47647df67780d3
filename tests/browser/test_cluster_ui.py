"""
The node/store panel of the web UI in a real headless Chromium: against two
real lbproxy nodes sharing a real etcd (which the test kills and starts
again on the same data directory), and against single nodes with the memory
and the file store.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.procs import ROOT, free_port
from tests.etcdtools import ETCD, EtcdCluster

pytestmark = pytest.mark.browser

UNAVAILABLE = "config store unavailable: changes are refused; proxying continues with the last known config"


class Etcd:
    """
    One etcd member as a plain subprocess (these tests run no reactor), with
    the flags of L{tests.etcdtools}; it can be killed and started again on
    the same data directory and ports.
    """

    def __init__(self, base: Path) -> None:
        # Only the member's ports and command line are used: never started
        # through a reactor.
        self.member = EtcdCluster(base, size=1, reactor=object()).members[0]
        self.url = self.member.url
        self.proc: subprocess.Popen | None = None

    def start(self, deadline: float = 20.0) -> "Etcd":
        if not os.path.exists(ETCD):
            raise RuntimeError(f"{ETCD} is missing: install Debian's etcd-server package")
        log = open(self.member.log_path, "ab")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self.proc = subprocess.Popen(self.member.argv(), env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                request = urllib.request.Request(
                    self.url + "/v3/kv/range", data=json.dumps({"key": "AA=="}).encode(), method="POST",
                )
                with urllib.request.urlopen(request, timeout=1) as response:
                    if "header" in json.loads(response.read()):
                        return self
            except (OSError, ValueError, urllib.error.URLError):
                pass
            try:
                code = self.proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"etcd exited with {code}:\n{self.member.log_tail()}")
        raise RuntimeError(f"etcd not ready after {deadline}s:\n{self.member.log_tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def etcd(tmp_path):
    """A real one-member etcd on 127.0.0.1, killed after the test."""
    server = Etcd(tmp_path / "etcd").start()
    try:
        yield server
    finally:
        server.kill()


def screenshot(page, name: str) -> None:
    """Keep a picture of the page as a build artifact."""
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    page.screenshot(path=str(artifacts / name), full_page=True)


def add_backend(page, port: int) -> None:
    form = page.locator("#add-form")
    form.get_by_label("Port").fill(str(port))
    form.get_by_role("button", name="Add backend").click()


@pytest.mark.etcd
def test_cluster_panel_shows_node_members_and_store_outage(page, lbproxy, etcd):
    """
    Node a's page names node a, lists a and b (linked to their own UIs) and
    an available etcd store; with etcd killed it shows the red banner (from
    a feed event, no reload) and an add is refused with the server's
    message, changing nothing; with etcd back on the same data directory the
    banner goes, an add succeeds, and b's UI (reached through its link)
    shows the new backend under node b's name; when a stops, b's list
    drops it (a feed event, no reload).
    """
    store = ("--store", f"etcd:{etcd.url}", "--store-prefix", "/lbproxy/ui-test")
    a = lbproxy(*store, "--node-name", "a")
    b = lbproxy(*store, "--node-name", "b")
    page.goto(a.url)
    expect(page.locator("#feed-status")).to_have_text("Live")

    expect(page.locator("#node-name")).to_have_text("a")
    chip = page.locator("#store-chip")
    expect(chip).to_have_text("store: etcd")
    expect(chip).to_have_attribute("data-state", "ok")
    expect(page.locator("#cluster-title")).to_have_text("Cluster")
    expect(page.locator("#store-facts .endpoints")).to_contain_text(etcd.url)
    nodes = page.locator("#nodes li.node")
    expect(nodes).to_have_count(2)
    link_a = page.locator('#nodes li[data-node="a"] a.node-link')
    link_b = page.locator('#nodes li[data-node="b"] a.node-link')
    expect(link_a).to_have_attribute("href", f"http://127.0.0.1:{a.admin}")
    expect(link_a).to_have_attribute("aria-current", "page")
    expect(page.locator('#nodes li[data-node="a"] .here')).to_have_text("this view")
    expect(link_b).to_have_attribute("href", f"http://127.0.0.1:{b.admin}")
    expect(page.locator('#nodes li[data-node="b"] .here')).to_have_count(0)
    banner = page.locator("#store-banner")
    expect(banner).to_be_hidden()
    screenshot(page, "cluster.png")

    etcd.kill()
    expect(banner).to_be_visible()
    expect(banner).to_contain_text(UNAVAILABLE)
    expect(chip).to_have_attribute("data-state", "down")
    expect(page.locator("#nodes")).to_have_class("nodes stale")
    add_backend(page, 9)
    result = page.locator("#add-result")
    expect(result).to_have_attribute("data-kind", "error")
    expect(result).to_contain_text("config store unavailable")
    assert a.api("GET", "/backends")["backends"] == []
    assert a.api("GET", "/status")["store"]["available"] is False
    screenshot(page, "cluster-store-unavailable.png")

    etcd.start()
    expect(banner).to_be_hidden()
    expect(chip).to_have_attribute("data-state", "ok")
    expect(page.locator("#nodes")).to_have_class("nodes")
    expect(nodes).to_have_count(2)
    add_backend(page, 9)
    expect(result).to_contain_text("Added b1 (127.0.0.1:9)")

    link_b.click()
    expect(page).to_have_url(f"http://127.0.0.1:{b.admin}/")
    expect(page.locator("#node-name")).to_have_text("b")
    expect(page.locator('#cards article.card[data-id="b1"]')).to_be_visible()
    expect(page.locator('#nodes li[data-node="b"] .here')).to_have_text("this view")
    expect(nodes).to_have_count(2)

    a.stop()
    expect(nodes).to_have_count(1)
    expect(page.locator("#nodes-note")).to_have_text("1 live node")


def test_single_node_shows_whether_changes_survive_a_restart(page, lbproxy, tmp_path):
    """
    Without a cluster there is no node name or node list; the store kind is
    shown: memory is flagged as not durable, the file store names its file.
    """
    memory = lbproxy()
    page.goto(memory.url)
    chip = page.locator("#store-chip")
    expect(chip).to_have_text("store: memory, not durable")
    expect(chip).to_have_attribute("data-state", "warn")
    expect(page.locator("#cluster-title")).to_have_text("Config store")
    expect(page.locator("#store-facts .durability")).to_contain_text("lost when lbproxy restarts")
    expect(page.locator("#node-chip")).to_be_hidden()
    expect(page.locator("#nodes-wrap")).to_be_hidden()
    expect(page.locator("#store-banner")).to_be_hidden()

    state = tmp_path / "state"
    durable = lbproxy("--state-dir", str(state), "--backend", f"127.0.0.1:{free_port()}")
    path = durable.api("GET", "/status")["store"]["path"]
    assert path.startswith(str(state))
    page.goto(durable.url)
    expect(chip).to_have_text("store: file")
    expect(chip).to_have_attribute("data-state", "ok")
    expect(page.locator("#store-facts .path dd")).to_have_text(path)
    expect(page.locator("#store-facts .durability")).to_contain_text("survive a restart")
    expect(page.locator("#store-banner")).to_be_hidden()
