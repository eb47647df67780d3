"""
What a user gets from C{pip install .}: a wheel with the twistd plugin,
the strategy plugins and the UI, that balances real traffic from a fresh
virtualenv, outside this checkout.
"""

from __future__ import annotations

import socket
import socketserver
import subprocess
import threading
import time
import zipfile

import pytest

from tests.integration.installed import CLEAN_ENV

# Building the wheel and installing it into a fresh virtualenv may take minutes.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_wheel_ships_plugins_and_ui(wheel):
    """The wheel holds the twistd and strategy plugin modules (without an
    C{__init__.py} or a C{dropin.cache}) and the UI's static files."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"twisted/plugins/lbproxy_tap.py", "twisted/plugins/lbproxy_demo.py",
            "twisted/plugins/lbproxy_strategies.py", "lbproxy/static/index.html"} <= names
    assert "twisted/plugins/__init__.py" not in names
    assert "twisted/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)
    assert not any(n.startswith("tests/") for n in names)


class _Named(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(self.server.name + b"\n")


def _backend(name):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Named)
    server.daemon_threads = True
    server.name = name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_installed_twistd_balances_real_traffic(venv, tmp_path):
    """In a fresh virtualenv with only the wheel installed, run from an
    empty directory, C{twistd -n lbproxy} splits connections over two
    backends."""
    listed = subprocess.run([str(venv / "bin" / "twistd"), "--help"], capture_output=True, text=True,
                            timeout=60, env=CLEAN_ENV, cwd=tmp_path)
    assert "lbproxy-demo" in listed.stdout and "lbproxy " in listed.stdout, listed.stdout
    a, b = _backend(b"alpha"), _backend(b"beta")
    listen, admin = _free_port(), _free_port()
    proc = subprocess.Popen(
        [str(venv / "bin" / "twistd"), "-n", "--pidfile=", "lbproxy",
         "--listen", f"tcp:{listen}:interface=127.0.0.1",
         "--admin", f"tcp:{admin}:interface=127.0.0.1",
         "--backend", f"127.0.0.1:{a.server_address[1]}",
         "--backend", f"127.0.0.1:{b.server_address[1]}"],
        cwd=tmp_path, env=CLEAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        names = []
        while len(names) < 6:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "proxy did not answer in time"
            try:
                with socket.create_connection(("127.0.0.1", listen), timeout=5) as s:
                    names.append(s.makefile("rb").readline().strip())
            except OSError:
                time.sleep(0.2)
        assert sorted(set(names)) == [b"alpha", b"beta"]
        assert names.count(b"alpha") == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        a.shutdown()
        b.shutdown()
