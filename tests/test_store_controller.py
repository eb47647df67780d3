"""
The config change path of L{lbproxy.control.controller.ConfigController} over the file
store: validate, make durable, then apply.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from lbproxy.control.controller import ConfigController
from lbproxy.control.store.file import FileStore
from lbproxy.model import changes
from lbproxy.model.config import Backend, Config, StrategyChoice
from lbproxy.model.errors import ConfigError, VersionConflict
from lbproxy.policy.balancer import Balancer

START = Config(version=0, backends=(Backend("b1", "127.0.0.1", 9001), Backend("b2", "127.0.0.1", 9002)))


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


@pytest.fixture
def setup(tmp_path, factories):
    clock = Clock()
    store = FileStore(str(tmp_path), reactor=clock, run=defer.maybeDeferred)
    balancer = Balancer(START, factories, reactor=clock)
    controller = ConfigController(balancer, store)
    yield controller, balancer, store, clock
    controller.stop()


def test_unrelated_change_keeps_strategy_rotation(setup):
    """
    A change that leaves the strategy choice alone keeps the running
    strategy object, so round-robin continues where it was instead of
    starting over at the first backend.
    """
    controller, balancer, store, clock = setup
    before = balancer.strategy
    first = balancer.route(("10.0.0.1", 1000)).id
    result_of(controller.change(lambda c: changes.update_backend(c, "b1", {"max_connections": 10})))
    assert balancer.strategy is before
    assert balancer.route(("10.0.0.1", 1001)).id != first


def test_strategy_change_builds_new_strategy(setup):
    """Switching the strategy swaps in a new strategy object once stored."""
    controller, balancer, store, clock = setup
    result_of(controller.change(lambda c: (changes.set_strategy(c, StrategyChoice("random")), None)))
    assert balancer.strategy.name == "random"
    assert store.read().main().strategy.name == "random"


def test_invalid_strategy_refused_before_storing(setup):
    """An unknown strategy is refused with ConfigError and nothing is stored or applied."""
    controller, balancer, store, clock = setup
    with pytest.raises(ConfigError):
        result_of(controller.change(lambda c: (changes.set_strategy(c, StrategyChoice("nope")), None)))
    assert store.read() is None
    assert balancer.config == START


def test_stale_if_match_refused_before_storing(setup):
    """A change based on an old version is refused with VersionConflict before any write."""
    controller, balancer, store, clock = setup
    result_of(controller.change(lambda c: changes.update_backend(c, "b1", {"weight": 3})))
    with pytest.raises(VersionConflict):
        result_of(controller.change(lambda c: changes.update_backend(c, "b1", {"weight": 4}), expected_version=0))
    assert store.read().version == 1 and balancer.config.version == 1
