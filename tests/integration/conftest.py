"""
Fixtures the relay tests over real sockets share.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.integration import installed
from tests.integration import lifecycle_harness as lh
from tests.integration import relay_harness as h


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """The project built into a wheel (once per run: it takes a while)."""
    return installed.build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def venv(wheel, tmp_path_factory):
    """A fresh virtualenv with only the wheel installed."""
    return installed.install(wheel, tmp_path_factory.mktemp("installed") / "venv")


@pytest.fixture(params=sorted(h.ENGINES))
def engine(request):
    """Each relay engine in turn."""
    return request.param


@pytest.fixture
def cleanup():
    """Stop listeners and the balancer's ticker after the test."""
    stops = []
    yield stops.append
    for stop in reversed(stops):
        pytest_twisted.blockon(task.deferLater(reactor, 0, lambda: None))
        result = stop()
        if result is not None and hasattr(result, "addCallback"):
            pytest_twisted.blockon(result)


@pytest.fixture
def echo():
    """A real echo server, stopped after the test."""
    server = lh.EchoServer()
    yield server
    server.stop()


@pytest.fixture
def proxies():
    """The lbproxy children a test starts; any still running is killed after it."""
    started: list[lh.Proxy] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(5)
