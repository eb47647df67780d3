"""
The control plane's one change signal: L{ConfigController.observe}.  Local
and adopted changes reach every observer in order, a refused change reaches
none, the cluster's startup load goes through it, and the controller stops
watching its store when the application stops.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.control.controller import ConfigController, ControllerService
from lbproxy.interfaces import IConfigObserver, IConfigStore
from lbproxy.model.changes import add_backend
from lbproxy.model.config import Backend, Config, StrategyChoice
from lbproxy.model.errors import StoreError
from lbproxy.policy.balancer import Balancer

START = Config(version=1, backends=(Backend("b1", "127.0.0.1", 9001),))


@implementer(IConfigStore)
class Store:
    """A store whose other writers are the test: L{push} is their change."""

    def __init__(self, config):
        self.config = config
        self.watchers = []
        self.fail = None

    def load(self):
        return defer.succeed(self.config)

    def save(self, config, expected_version):
        if self.fail is not None:
            return defer.fail(self.fail)
        self.config = config
        return defer.succeed(None)

    def watch(self, callback):
        self.watchers.append(callback)
        return lambda: self.watchers.remove(callback)

    def push(self, config):
        self.config = config
        for callback in tuple(self.watchers):
            callback(config)


@implementer(IConfigObserver)
class Recorder:
    def __init__(self):
        self.seen = []

    def applied(self, old, new):
        self.seen.append((old.version, new.version))


@pytest.fixture
def rig(factories):
    store = Store(START)
    balancer = Balancer(START, factories, reactor=Clock())
    controller = ConfigController(balancer, store)
    return controller, balancer, store


def add(port):
    return lambda c: add_backend(c, {"host": "127.0.0.1", "port": port})


def test_local_and_adopted_changes_reach_observers_in_order(rig):
    """Every applied version, made here or adopted from the store's watch,
    reaches each observer once, in order, as (old, new); an observer that
    raises is logged and does not stop the next one."""
    controller, balancer, store = rig
    verifyObject(IConfigStore, store)

    class Broken:
        def applied(self, old, new):
            raise RuntimeError("observer bug")

    controller.observe(Broken())
    first, second = Recorder(), Recorder()
    controller.observe(first)
    controller.observe(second)
    controller.change(add(9002))
    store.push(replace(balancer.config, version=5))
    controller.change(add(9003))
    assert first.seen == second.seen == [(1, 2), (2, 5), (5, 6)]
    assert balancer.config.version == 6


def test_refused_or_stale_changes_reach_no_observer(rig):
    """A change the store cannot make durable, and a watched version no
    newer than the one in force, tell nobody anything."""
    controller, balancer, store = rig
    seen = Recorder()
    controller.observe(seen)
    store.fail = StoreError("disk full")
    failures = []
    controller.change(add(9002)).addErrback(failures.append)
    assert failures and balancer.config is START
    store.push(replace(START, version=1, backends=()))
    assert seen.seen == [] and balancer.config is START


def test_unobserved_observer_hears_nothing_more(rig):
    """The callable observe returns stops the notifications."""
    controller, _, _ = rig
    seen = Recorder()
    stop = controller.observe(seen)
    controller.change(add(9002))
    stop()
    stop()
    controller.change(add(9003))
    assert seen.seen == [(1, 2)]


def test_install_puts_a_stored_config_in_force_and_tells_observers(rig):
    """install (the cluster's startup load) applies what the store holds
    even if it is not newer, tells the observers; the same config again
    changes nothing; one the balancer cannot use fails and changes nothing."""
    controller, balancer, _ = rig
    seen = Recorder()
    controller.observe(seen)
    other = replace(START, backends=(Backend("b9", "127.0.0.1", 9009),))
    controller.install(other)
    assert balancer.config is other and seen.seen == [(1, 1)]
    controller.install(other)
    assert seen.seen == [(1, 1)]
    failures = []
    controller.install(replace(other, version=2, strategy=StrategyChoice("no-such"))).addErrback(failures.append)
    assert failures and balancer.config is other and seen.seen == [(1, 1)]


def test_cluster_gate_installs_through_the_controller(factories):
    """The cluster's LoadThenServe puts the loaded config in force through
    the controller, so health checks and the feed follow it like any change."""
    from lbproxy.control.cluster import LoadThenServe

    stored = replace(START, version=7, backends=(Backend("b9", "127.0.0.1", 9009),))
    store = Store(stored)
    balancer = Balancer(START, factories, reactor=Clock())
    controller = ConfigController(balancer, store)
    seen = Recorder()
    controller.observe(seen)
    gate = LoadThenServe(controller, START, reactor=Clock())
    gate.startService()
    assert gate.ready.called and balancer.config == stored
    assert seen.seen == [(1, 7)]


def test_controller_service_stops_the_watch(rig):
    """Stopping the ControllerService stops the store watch: a change
    another process stores afterwards is not applied.  Stopping twice is
    harmless."""
    controller, balancer, store = rig
    service = ControllerService(controller)
    service.startService()
    store.push(replace(START, version=2))
    assert balancer.config.version == 2
    service.stopService()
    assert store.watchers == []
    store.push(replace(START, version=3))
    assert balancer.config.version == 2
    controller.stop()


def test_make_service_stops_the_controller_on_shutdown(tmp_path):
    """The assembly puts a ControllerService in the tree: once the
    application stops, the controller has stopped watching its store."""
    from lbproxy.startup.assembly import assemble
    from lbproxy.startup.tap import Options

    options = Options()
    options.parseOptions([
        "--backend", "127.0.0.1:9001", "--listen", "tcp:0", "--admin", "tcp:0:interface=127.0.0.1",
        "--state-dir", str(tmp_path),
    ])
    reactor = MemoryReactorClock()
    built = assemble(options.spec, reactor)
    top = built.top
    assert any(isinstance(s, ControllerService) and s.controller is built.controller for s in top)
    top.startService()
    assert built.controller._unwatch is not None
    top.stopService()
    assert built.controller._unwatch is None


def test_make_service_wires_the_observers():
    """In the tree the assembly builds, one change through the controller
    makes exactly one config event on the feed's bus and gives the new
    backend a health-check loop: both follow the controller, not each
    other."""
    from lbproxy.startup.assembly import assemble
    from lbproxy.startup.tap import Options

    options = Options()
    options.parseOptions([
        "--backend", "127.0.0.1:9001", "--listen", "tcp:0", "--admin", "tcp:0:interface=127.0.0.1",
        "--check", "tcp",
    ])
    reactor = MemoryReactorClock()
    built = assemble(options.spec, reactor)
    top = built.top
    top.startService()
    try:
        checker = top.getServiceNamed("health").checkers["default"]
        assert sorted(checker.loops) == ["b1"]
        built.controller.change(add(9002))
        configs = [e for e in built.balancer.events.since(0) if e.type == "config"]
        assert [e.data["version"] for e in configs] == [2]
        assert sorted(checker.loops) == ["b1", "b2"]
    finally:
        top.stopService()
