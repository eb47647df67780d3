"""
The shell commands the documentation shows work when pasted: the C{curl}
session of C{docs/api.rst} runs with bash against a real lbproxy (started
the ways a newcomer starts one), and the README's run command leaves
nothing untracked in the checkout.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser.procs import LBProxy, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DOCS_PORT = "127.0.0.1:8081"


def literal_blocks(path: Path) -> list[tuple[str, str]]:
    """
    The reST literal blocks (after a paragraph ending in C{::}) of a file,
    each as (the paragraph's last line, the block dedented).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::") and not lines[i].lstrip().startswith(".."):
            intro = lines[i]
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block = []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith((" ", "\t"))):
                block.append(lines[j])
                j += 1
            text = "\n".join(block).rstrip()
            indent = min(len(l) - len(l.lstrip()) for l in block if l.strip()) if text else 0
            out.append((intro, "\n".join(l[indent:] for l in text.splitlines())))
            i = j
        else:
            i += 1
    return out


def curl_blocks() -> tuple[str, str]:
    """The session block and the feed block of the API reference."""
    blocks = [b for _, b in literal_blocks(ROOT / "docs" / "api.rst") if "curl " in b]
    assert len(blocks) == 2, blocks
    session, feed = blocks
    assert DOCS_PORT in session and "curl -sN" in feed
    return session, feed


# Every curl of the documented session fails the script on an HTTP error
# (412, 404, ...) instead of printing the error body and going on.
STRICT = "set -euo pipefail\ncurl() { command curl --fail-with-body --max-time 10 \"$@\"; }\n"


def run_session(session: str, admin: int) -> subprocess.CompletedProcess:
    script = STRICT + session.replace(DOCS_PORT, f"127.0.0.1:{admin}")
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)


def read_until(proc: subprocess.Popen, pattern: str, deadline: float = 15.0) -> str:
    """What C{proc} printed, read until C{pattern} appears (or the deadline)."""
    seen = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + deadline
    try:
        while re.search(pattern, seen.decode(errors="replace")) is None:
            left = end - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                raise AssertionError(f"no {pattern!r} within {deadline}s in {seen!r}")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the command ended before {pattern!r}: {seen!r}")
            seen += chunk
    finally:
        sel.unregister(proc.stdout)
    return seen.decode(errors="replace")


@pytest.mark.parametrize("how", ["backends", "demo", "empty-state-dir"])
def test_api_curl_session_runs_as_documented(tmp_path, how):
    """
    The documented session, pasted into bash against a real lbproxy (with
    the port substituted), succeeds step by step on a command-line pool
    (config version 1, ids b1, b2), on the demo (three backends, so the new
    one is b4) and on an empty state directory (version 0): the POST adds
    the backend, the PATCH with the If-Match taken from its answer drains
    it, the PUT switches the strategy; and the feed command streams the
    changes.
    """
    args = {
        "backends": ["--backend", "127.0.0.1:9", "--backend", "127.0.0.1:10"],
        "demo": ["--demo", "--demo-users", "0"],
        "empty-state-dir": ["--state-dir", str(tmp_path / "state")],
    }[how]
    proxy = LBProxy(tmp_path, *args).start()
    try:
        before = proxy.api("GET", "/config")
        session, feed = curl_blocks()
        api_line = session.splitlines()[0]
        assert api_line.startswith("API=")
        watch = subprocess.Popen(
            ["bash", "-c", api_line.replace(DOCS_PORT, f"127.0.0.1:{proxy.admin}") + "\nexec " + feed],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            read_until(watch, r"event: snapshot")
            done = run_session(session, proxy.admin)
            assert done.returncode == 0, f"the session failed:\n{done.stdout}\n{done.stderr}"
            streamed = read_until(watch, r"event: config(.|\n)*event: config(.|\n)*event: config\n")
        finally:
            watch.kill()
            watch.wait(timeout=10)
            watch.stdout.close()

        added = [b for b in proxy.api("GET", "/backends")["backends"] if b["host"] == "10.0.0.13"]
        assert len(added) == 1, added
        new_id = added[0]["id"]
        assert added[0]["admin_state"] == "draining" and added[0]["weight"] == 2
        assert proxy.api("GET", "/strategy")["name"] == "power-of-two"
        assert proxy.api("GET", "/config")["version"] == before["version"] + 3
        assert new_id in done.stdout
        assert "event: config" in streamed
    finally:
        proxy.stop()


def test_stale_if_match_in_the_session_is_refused(tmp_path):
    """
    The prose after the session is true: sending the PATCH again with the
    version taken before it gets 412 (so the test above would have failed
    with the old hard-coded version on any pool whose version differs).
    """
    proxy = LBProxy(tmp_path, "--backend", "127.0.0.1:9").start()
    try:
        session, _ = curl_blocks()
        patch = next(i for i, l in enumerate(session.splitlines()) if "-X PATCH" in l)
        lines = session.splitlines()
        replay = "\n".join(lines[:patch + 2] + lines[patch:patch + 2])
        done = run_session(replay, proxy.admin)
        assert done.returncode != 0
        assert "412" in done.stderr or "config version" in done.stdout, (done.stdout, done.stderr)
    finally:
        proxy.stop()


def readme_run_command() -> str:
    for intro, block in literal_blocks(ROOT / "README.rst"):
        if "twistd" in block and "lbproxy" in block and "--state-dir" in block:
            return block
    raise AssertionError("README.rst shows no run command with --state-dir")


def test_readme_run_command_leaves_the_checkout_clean(tmp_path):
    """
    The README's run command, run from a directory (its ports and the
    path of twistd substituted), writes no C{twistd.pid} there, keeps its
    config in C{./state}; and both what it writes and twistd's defaults
    are ignored by git in the checkout.
    """
    command = readme_run_command()
    assert "--pidfile=" in command.split("lbproxy", 1)[0], command
    twistd = Path(sys.executable).parent / "twistd"
    assert twistd.exists(), twistd
    listen, admin = free_port(), free_port()
    command = (command.replace("\\\n", " ")
               .replace("PYTHONPATH=.", f"PYTHONPATH={ROOT}")
               .replace(".venv/bin/twistd", str(twistd))
               .replace("tcp:8080", f"tcp:{listen}:interface=127.0.0.1"))
    command += f" --admin tcp:{admin}:interface=127.0.0.1"
    proc = subprocess.Popen(["bash", "-c", command], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/v1/config", timeout=5) as r:
                    config = json.loads(r.read())
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > end:
                    raise
                try:
                    proc.wait(timeout=0.1)
                    raise AssertionError(f"the README command exited: {proc.stdout.read()!r}")
                except subprocess.TimeoutExpired:
                    pass
        assert [b["port"] for b in config["backends"]] == [9001, 9002]
        assert (tmp_path / "state").is_dir()
        assert not (tmp_path / "twistd.pid").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    assert not (tmp_path / "twistd.pid").exists()
    ignored = subprocess.run(["git", "check-ignore", "state/config.json", "twistd.pid", "twistd.log"],
                             cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["state/config.json", "twistd.pid", "twistd.log"], ignored
