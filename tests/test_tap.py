"""
The command line: bad flags are UsageErrors and start nothing; good ones
build the service tree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError

from lbproxy.tap import Options, makeService

REPO = Path(__file__).parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def parse(*args):
    o = Options()
    o.parseOptions(list(args))
    return o


@pytest.mark.parametrize("args, message", [
    (["--strategy", "nope"], "unknown strategy 'nope'"),
    (["--strategy", "random", "--strategy-options", "{"], "not valid JSON"),
    (["--strategy", "random", "--strategy-options", "[]"], "must be a JSON object"),
    (["--strategy", "random", "--strategy-options", '{"seed": "x"}'], "invalid options for strategy 'random'"),
    (["--backend", "nohost"], "must look like HOST:PORT"),
    (["--backend", "127.0.0.1:0"], "port must be at least 1"),
    (["--backend", "127.0.0.1:80", "--backend", "127.0.0.1:80"], "listed twice"),
    (["--listen", "tcp:notaport"], "--listen 'tcp:notaport' is not a valid endpoint"),
    (["--listen", "bogus:1"], "is not a valid endpoint"),
    (["--admin", "tcp:x"], "--admin 'tcp:x' is not a valid endpoint"),
    (["--retries", "-1"], "--retries must be at least 0"),
    (["--connect-timeout", "soon"], "--connect-timeout must be a number"),
    (["--max-connections", "0"], "--max-connections must be at least 1"),
])
def test_bad_flags_are_usage_errors(args, message):
    """Each malformed flag is refused with a message naming it."""
    with pytest.raises(UsageError, match=message):
        parse(*args)


def test_good_flags_seed_the_config():
    """Backends, weights and the strategy from the command line form
    version 1 of the config."""
    o = parse("--backend", "127.0.0.1:9001", "--backend", "127.0.0.1:9002,weight=3,proxy=v1",
              "--strategy", "weighted-round-robin", "--retries", "4", "--no-access-log")
    seed = o["seed"]
    assert [(b.id, b.port, b.weight, b.proxy_protocol) for b in seed.backends] == [
        ("b1", 9001, 1, None), ("b2", 9002, 3, "v1"),
    ]
    assert seed.strategy.name == "weighted-round-robin" and seed.version == 1
    assert o["settings"].retries == 4 and not o["settings"].access_log


def test_make_service_builds_a_multiservice():
    """makeService returns a MultiService holding the proxy listener."""
    o = parse("--listen", "tcp:0:interface=127.0.0.1", "--backend", "127.0.0.1:9001")
    top = makeService(o, reactor=MemoryReactorClock())
    assert IServiceCollection.providedBy(top)
    assert top.getServiceNamed("proxy") is not None


def test_twistd_refuses_bad_flags_and_starts_nothing():
    """twistd with a bad flag exits non-zero with the reason, and no
    traceback."""
    out = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "lbproxy", "--strategy", "nope"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode != 0
    assert "unknown strategy 'nope'" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_plugin_module_imports_nothing_of_the_app():
    """The twistd plugin file is a lazy ServiceMaker: listing plugins does
    not import lbproxy's modules (nor the reactor)."""
    code = (
        "import sys\n"
        "from twisted.application.service import IServiceMaker\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted import plugins\n"
        "names = [p.tapname for p in getPlugins(IServiceMaker, plugins)]\n"
        "assert 'lbproxy' in names, names\n"
        "print(sorted(m for m in sys.modules if m.startswith('lbproxy.') and m not in"
        " ('lbproxy.policy.strategies', 'lbproxy.policy.strategies.builtin', 'lbproxy.interfaces', 'lbproxy.policy.pool', 'lbproxy.model.config')))\n"
        "print('twisted.internet.reactor' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "False"]


@pytest.mark.parametrize("engine", ["twisted", "fast"])
@pytest.mark.parametrize("flag", ["--listen", "--admin"])
def test_taken_port_is_named_and_exit_is_non_zero(engine, flag):
    """A port already in use stops twistd with one line naming the address,
    a non-zero exit and no traceback, whichever listener it is."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    ports = {"--listen": free.getsockname()[1], "--admin": free.getsockname()[1]}
    ports[flag] = taken.getsockname()[1]
    free.close()
    try:
        out = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "lbproxy", "--engine", engine,
             "--listen", f"tcp:{ports['--listen']}:interface=127.0.0.1",
             "--admin", f"tcp:{ports['--admin']}:interface=127.0.0.1",
             "--backend", "127.0.0.1:9"],
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        )
    finally:
        taken.close()
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Traceback" not in text
    assert str(ports[flag]) in text
    assert "cannot listen" in text
