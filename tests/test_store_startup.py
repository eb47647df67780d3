"""
How lbproxy starts from its store: the rule combining C{--backend} and
C{--strategy} with a stored config, C{--state-dir} checks, and refusing to
start on an unusable store with a one-line reason.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent
from twisted.python import usage

import lbproxy.control.store as store_module
from lbproxy.model.config import Backend, Config, StrategyChoice
from lbproxy.control.store import open_store
from lbproxy.model.service import as_document
from lbproxy.control.store.envelope import checksum
from lbproxy.control.store.file import FileStore
from lbproxy.control.store.memory import MemoryStore
from lbproxy.startup.assembly import assemble
from lbproxy.startup.tap import Options

SEED = Config(version=1, backends=(Backend("b1", "127.0.0.1", 9001),), strategy=StrategyChoice("random"))
STORED = Config(
    version=7,
    backends=(Backend("b1", "127.0.0.1", 7001), Backend("b2", "127.0.0.1", 7002, weight=3)),
    strategy=StrategyChoice("least-connections"),
)


@pytest.fixture
def logged(monkeypatch):
    events = []
    monkeypatch.setattr(store_module, "log", Logger(observer=events.append))
    return events


def warnings(events):
    return [formatEvent(e) for e in events if e["log_level"].name == "warn"]


def store_config(directory, config):
    """Store C{config} in C{directory} as a running lbproxy would."""
    d = FileStore(str(directory), reactor=Clock(), run=defer.maybeDeferred).save(config, 0)
    failures = []
    d.addErrback(failures.append)
    assert not failures


def options(*args):
    o = Options()
    o.parseOptions(["--listen", "tcp:0", "--admin", "tcp:0:interface=127.0.0.1", *args])
    return o


def test_no_state_dir_is_memory_with_warning(logged):
    """Without --state-dir the store is in memory and the log warns that changes are lost on restart."""
    store, config = open_store(None, SEED)
    assert isinstance(store, MemoryStore)
    assert config.main() is SEED
    [warning] = warnings(logged)
    assert "will not survive a restart" in warning


def test_empty_store_is_seeded_from_command_line(tmp_path, logged):
    """An empty store starts from the command line's config, as version 0 (nothing stored yet)."""
    store, config = open_store(str(tmp_path), SEED, ["--backend"])
    assert isinstance(store, FileStore)
    assert config == as_document(replace(SEED, version=0))
    assert warnings(logged) == []
    assert [p.name for p in tmp_path.iterdir()] == ["config.lock"]  # the owner's lock, no config


def test_stored_config_wins_over_flags_with_warning(tmp_path, logged):
    """A non-empty store wins; the flags given are named in a warning."""
    store_config(tmp_path, STORED)
    store, config = open_store(str(tmp_path), SEED, ["--backend", "--strategy"])
    assert config == as_document(STORED)
    [warning] = warnings(logged)
    assert "--backend, --strategy ignored" in warning and str(tmp_path / "config.json") in warning


def test_stored_config_without_flags_no_warning(tmp_path, logged):
    """Starting from a stored config without config flags warns about nothing."""
    store_config(tmp_path, STORED)
    assert open_store(str(tmp_path), SEED, [])[1] == as_document(STORED)
    assert warnings(logged) == []


def test_make_service_seed_then_stored(tmp_path):
    """
    Through twistd's Options and the assembly: the first start uses
    --backend; once a config is stored, a start with other flags runs the
    stored pool and strategy.
    """
    first = assemble(options("--state-dir", str(tmp_path), "--backend", "127.0.0.1:9001").spec, MemoryReactorClock())
    assert [b.port for b in first.balancer.config.backends] == [9001]
    assert first.balancer.config.version == 0
    store_config(tmp_path, STORED)
    again = assemble(
        options("--state-dir", str(tmp_path), "--backend", "127.0.0.1:9555", "--strategy", "random").spec,
        MemoryReactorClock(),
    )
    # The stored pool listens where --listen says (it was stored with none).
    assert again.balancer.config == replace(STORED, listen=again.spec.seed.listen)
    assert again.balancer.strategy.name == "least-connections"
    assert isinstance(again.controller.store, FileStore)


def test_state_dir_is_created(tmp_path):
    """A missing --state-dir is created (private to the user) and made absolute."""
    target = tmp_path / "a" / "state"
    o = options("--state-dir", str(target))
    assert o.spec.state_dir == str(target)
    assert target.is_dir() and (target.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("make", [lambda p: str(p / "file"), lambda p: ""], ids=["file", "empty"])
def test_state_dir_unusable_is_usage_error(tmp_path, make):
    """A --state-dir that is a file, or empty, is a usage error naming the flag."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(usage.UsageError, match="--state-dir"):
        options("--state-dir", make(tmp_path))


def test_unusable_store_refuses_to_start(tmp_path):
    """
    If config.json and config.json.prev are both damaged, the assembly stops
    with a one-line SystemExit naming the file (twistd prints it, no
    traceback), instead of starting with some other config.
    """
    (tmp_path / "config.json").write_text('{"format": 1, "checksum": "sha256:00", "config": {}}')
    (tmp_path / "config.json.prev").write_text("")
    with pytest.raises(SystemExit) as e:
        assemble(options("--state-dir", str(tmp_path)).spec, MemoryReactorClock())
    message = str(e.value.code)
    assert "\n" not in message
    assert f"{tmp_path}/config.json fails its checksum" in message
    assert f"{tmp_path}/config.json.prev is empty" in message


def test_stored_unknown_strategy_refuses_to_start(tmp_path):
    """A stored config naming a strategy plugin that is not installed stops startup clearly."""
    body = replace(STORED, strategy=StrategyChoice("no-such-plugin")).to_json()
    (tmp_path / "config.json").write_text(
        json.dumps({"format": 1, "checksum": checksum(body), "config": body})
    )
    with pytest.raises(SystemExit) as e:
        assemble(options("--state-dir", str(tmp_path)).spec, MemoryReactorClock())
    assert "no-such-plugin" in str(e.value.code) and str(tmp_path) in str(e.value.code)


def test_a_fallback_start_says_it_loaded_the_previous_file(tmp_path, logged):
    """When config.json is damaged and config.json.prev is used, the start's
    "loaded from" line names config.json.prev (it named config.json, the
    file it had just refused)."""
    store_config(tmp_path, SEED)
    newer = FileStore(str(tmp_path), reactor=Clock(), run=defer.maybeDeferred)
    newer.read()
    newer.save(replace(STORED, version=2), 1)
    (tmp_path / "config.json").write_text("{damaged")
    store, config = open_store(str(tmp_path), SEED, [])
    assert config.main().version == 1
    [line] = [formatEvent(e) for e in logged if "loaded from" in formatEvent(e)]
    assert line == f"config version 1 loaded from {tmp_path / 'config.json.prev'}"
