"""
Fixtures the relay tests over real sockets share.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.integration import relay_harness as h


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
