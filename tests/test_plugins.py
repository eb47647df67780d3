"""
Strategy plugin discovery and building, including a third party's plugin
dropped into a C{twisted/plugins/} directory on C{sys.path}.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from lbproxy.model.changes import set_strategy
from lbproxy.model.config import Backend, Config, StrategyChoice, freeze
from lbproxy.model.errors import ConfigError
from lbproxy.policy.balancer import Balancer
from lbproxy.policy.plugins import build_strategy, strategy_factories

EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "lbproxy_lowest_port.py"


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A directory with a C{twisted/plugins/} subdirectory put on sys.path
    (and taken off again, with the modules it loaded)."""
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    import twisted.plugins

    # syspath_prepend extends the package's own __path__ list in place, so
    # that list is put back as it was too (else this directory stays on it
    # and its plugins shadow the next test's of the same name).
    original, saved = twisted.plugins.__path__, list(twisted.plugins.__path__)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(twisted.plugins, "__path__", list(twisted.plugins.__path__) + [str(plugins)])
    before = set(sys.modules)
    yield plugins
    original[:] = saved
    for name in set(sys.modules) - before:
        if name.startswith("twisted.plugins."):
            del sys.modules[name]


def config(*ports, strategy="round-robin"):
    return Config(
        version=1,
        backends=tuple(Backend(f"b{i}", "127.0.0.1", p) for i, p in enumerate(ports)),
        strategy=StrategyChoice(strategy),
    )


def test_third_party_plugin_is_found_and_selected(plugin_dir):
    """The documented example plugin, copied into a plugins directory on
    sys.path, is discovered by name and drives routing once selected."""
    shutil.copy(EXAMPLE, plugin_dir / "lbproxy_lowest_port.py")
    factories = strategy_factories()
    assert "lowest-port" in factories
    balancer = Balancer(config(9003, 9001, 9002), factories, reactor=Clock())
    balancer.apply(set_strategy(balancer.config, StrategyChoice("lowest-port", freeze({"max_active": 5}))))
    assert balancer.strategy.name == "lowest-port"
    assert {balancer.route(("192.0.2.1", 1)).port for _ in range(5)} == {9001}


def test_broken_plugin_module_does_not_hide_others(plugin_dir):
    """A plugin module that fails to import, or binds an object missing
    the interface's attributes, is skipped; the built-ins still load."""
    (plugin_dir / "lbproxy_broken.py").write_text("raise RuntimeError('boom')\n")
    (plugin_dir / "lbproxy_incomplete.py").write_text(
        "from twisted.plugin import IPlugin\n"
        "from zope.interface import implementer\n"
        "from lbproxy.interfaces import IStrategyFactory\n"
        "@implementer(IPlugin, IStrategyFactory)\n"
        "class Half:\n"
        "    name = 'half'\n"
        "half = Half()\n"
    )
    factories = strategy_factories()
    assert "half" not in factories
    assert "round-robin" in factories


def test_duplicate_name_keeps_the_first(plugin_dir):
    """A plugin reusing a built-in's name does not replace it."""
    (plugin_dir / "lbproxy_dup.py").write_text(
        "from lbproxy.policy.strategies.builtin import StrategyFactory, RoundRobin\n"
        "dup = StrategyFactory('zz-dup', 'first', RoundRobin)\n"
        "dup2 = StrategyFactory('zz-dup', 'second', RoundRobin)\n"
    )
    factories = strategy_factories()
    assert factories["zz-dup"].description in ("first", "second")
    assert sum(1 for f in factories.values() if f.name == "zz-dup") == 1


def test_unknown_strategy_and_bad_options_are_refused(factories):
    """An unknown name or options outside the schema is a ConfigError that
    names the problem."""
    with pytest.raises(ConfigError, match="unknown strategy 'nope'.*round-robin"):
        build_strategy(StrategyChoice("nope"), factories)
    with pytest.raises(ConfigError, match="source-hash.*points"):
        build_strategy(StrategyChoice("source-hash", freeze({"points": 0})), factories)
    with pytest.raises(ConfigError, match="Additional properties"):
        build_strategy(StrategyChoice("round-robin", freeze({"x": 1})), factories)


def test_failing_strategy_falls_back_to_round_robin(factories):
    """A strategy that raises, or returns something that is not a
    candidate, does not lose the client: round-robin picks instead, and the
    error is counted."""
    from zope.interface import implementer

    from lbproxy.interfaces import IStrategy

    @implementer(IStrategy)
    class Bad:
        name = "bad"

        def __init__(self):
            self.calls = 0

        def choose(self, candidates, client):
            self.calls += 1
            if self.calls % 2:
                raise RuntimeError("kaput")
            return "not a candidate"

    balancer = Balancer(config(1, 2), factories, reactor=Clock())
    balancer.strategy = Bad()
    chosen = [balancer.route(("192.0.2.1", 1)).id for _ in range(4)]
    assert chosen == ["b0", "b1", "b0", "b1"]
    assert balancer.totals.strategy_errors == 4


def test_plugin_on_pythonpath_selectable_from_command_line(tmp_path):
    """In a fresh process whose PYTHONPATH holds a directory with
    C{twisted/plugins/lbproxy_lowest_port.py}, C{--strategy lowest-port}
    is accepted by the command line and builds the plugin's strategy."""
    import os
    import subprocess

    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    shutil.copy(EXAMPLE, plugins / "lbproxy_lowest_port.py")
    repo = Path(__file__).parent.parent
    code = (
        "from lbproxy.startup.tap import Options\n"
        "o = Options()\n"
        "o.parseOptions(['--strategy', 'lowest-port', '--strategy-options', '{\"max_active\": 3}',"
        " '--backend', '127.0.0.1:9001'])\n"
        "from lbproxy.policy.plugins import strategy_factories\n"
        "print(o.spec.seed.strategy.name, strategy_factories()['lowest-port'].build({'max_active': 3}).max_active)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{repo}")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["lowest-port", "3"]


def test_uses_weights_defaults_to_true(plugin_dir):
    """A third-party factory without C{uses_weights} (the documented
    example without that line) counts as weight-aware; the built-ins that
    ignore weights say so, and the strategies API passes it on."""
    from lbproxy.policy.plugins import uses_weights
    from tests.webtools import Admin

    source = EXAMPLE.read_text()
    assert "    uses_weights = False\n" in source
    (plugin_dir / "lbproxy_lowest_port.py").write_text(source.replace("    uses_weights = False\n", ""))
    factories = strategy_factories()
    assert not hasattr(factories["lowest-port"], "uses_weights")
    assert uses_weights(factories["lowest-port"]) is True
    assert uses_weights(factories["first-available"]) is False
    listed = Admin(factories).get("/api/v1/strategies").json["strategies"]
    flags = {s["name"]: s["uses_weights"] for s in listed}
    assert flags["lowest-port"] is True and flags["round-robin"] is True
    assert flags["first-available"] is False and flags["round-robin-unweighted"] is False
