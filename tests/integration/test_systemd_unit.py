"""
The shipped systemd unit, C{contrib/lbproxy.service}: systemd's own
checker accepts it, and its command lines start, reload and stop lbproxy
the way a C{Type=forking} unit with C{PIDFile=} needs.

This machine's PID 1 is not systemd, so the unit is not run by systemd
itself: the second test runs the unit's own C{ExecStart}/C{ExecReload}
lines (read from the file, C{$LBPROXY_FLAGS} split as systemd splits an
unbraced variable) and does what systemd does around them: wait for the
start command to return, read C{PIDFile=}, send C{KillSignal} to that
process.  Only the paths (under a temporary directory), the ports (free
ones on 127.0.0.1) and a backend are changed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration import lifecycle_harness as lh
from tests.integration.installed import CLEAN_ENV, REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

UNIT = REPO / "contrib" / "lbproxy.service"


def service_section(text: str) -> dict[str, str]:
    """The C{[Service]} section's settings (the last of a repeated key)."""
    settings: dict[str, str] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def command(line: str, flags: list[str]) -> list[str]:
    """An C{Exec*=} line as systemd runs it: C{$LBPROXY_FLAGS} becomes its words."""
    words: list[str] = []
    for word in shlex.split(line):
        words.extend(flags if word == "$LBPROXY_FLAGS" else [word])
    return words


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for systemd: ask /proc.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _echoes(sock: socket.socket, data: bytes) -> bool:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            return False
        got += chunk
    return got == data


def test_systemd_analyze_verify_accepts_the_unit(venv, tmp_path):
    """
    C{systemd-analyze verify} finds nothing to say about the unit (no
    unknown or misspelt directive, no command that is not executable)
    once its C{/usr/bin/twistd} is the installed wheel's.
    """
    assert shutil.which("systemd-analyze"), "needs systemd-analyze (python3 dev.py test installs systemd)"
    unit = tmp_path / "lbproxy.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/twistd", str(venv / "bin" / "twistd")))
    checked = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
    # What it says of the unit names it ("lbproxy.service: ...", "PATH:LINE: ..."); other lines
    # would be about this machine (no systemd as PID 1), not the unit.
    about_the_unit = [line for line in (checked.stdout + checked.stderr).splitlines() if "lbproxy.service" in line]
    assert checked.returncode == 0 and about_the_unit == [], checked


def test_the_units_commands_start_reload_and_stop(venv, tmp_path):
    """
    With the installed wheel's twistd: C{ExecStart} returns once the
    daemon serves and C{PIDFile=} names it; C{ExecReload} returns with the
    PID file naming a new process, which serves, while a connection opened
    before the reload keeps relaying through the old one until its client
    ends it, and then the old one exits by itself (systemd follows the PID
    file to the new main process); C{KillSignal} to the main process stops
    it within C{TimeoutStopSec} and removes the PID file.
    """
    settings = service_section(UNIT.read_text())
    assert settings["Type"] == "forking" and settings["KillSignal"] == "SIGTERM"
    stop_timeout = float(settings["TimeoutStopSec"])
    env_name, _, quoted = settings["Environment"].partition("=")
    assert env_name == "LBPROXY_FLAGS"
    flags_text = shlex.split(quoted)[0]

    listen, admin = lh.free_port(), lh.free_port()
    root = tmp_path / "root"
    moved = {"/run/lbproxy": root / "run", "/var/lib/lbproxy": root / "state", "/var/log/lbproxy": root / "log"}
    for path in moved.values():
        path.mkdir(parents=True)  # RuntimeDirectory=, StateDirectory=, LogsDirectory=

    def local(text: str) -> str:
        for old, new in moved.items():
            text = text.replace(old, str(new))
        return text.replace("/usr/bin/twistd", str(venv / "bin" / "twistd"))

    flags_text = re.sub(r"--listen tcp:8080\b", f"--listen tcp:{listen}:interface=127.0.0.1", flags_text)
    flags_text = flags_text.replace("--admin tcp:8081:", f"--admin tcp:{admin}:")
    assert str(listen) in flags_text and str(admin) in flags_text, flags_text
    backend = lh.EchoServer()
    flags = shlex.split(local(flags_text)) + ["--backend", f"127.0.0.1:{backend.port}"]
    pid_file = Path(local(settings["PIDFile"]))
    start = command(local(settings["ExecStart"]), flags)
    reload_ = command(local(settings["ExecReload"]), flags)
    pids: list[int] = []
    try:
        started = subprocess.run(start, capture_output=True, text=True, timeout=60, env=CLEAN_ENV, cwd=root)
        assert started.returncode == 0, started
        first = int(lh.until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "the PID file"))
        pids.append(first)
        assert _alive(first)
        held = socket.create_connection(("127.0.0.1", listen), timeout=10)
        assert _echoes(held, b"before the reload\n")

        reloaded = subprocess.run(reload_, capture_output=True, text=True, timeout=60, env=CLEAN_ENV, cwd=root)
        assert reloaded.returncode == 0, reloaded
        second = int(pid_file.read_text().strip())
        pids.append(second)
        assert second != first and _alive(second)
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as fresh:
            assert _echoes(fresh, b"after the reload\n")
        assert _alive(first), "the old process left before its client's connection ended"
        assert _echoes(held, b"still through the old process\n")
        held.close()
        lh.until(lambda: not _alive(first), 30, "the old process exits once its connection ended")

        os.kill(second, signal.SIGTERM)
        lh.until(lambda: not _alive(second), stop_timeout, "the main process stops on KillSignal")
        assert not pid_file.exists()
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        backend.stop()
