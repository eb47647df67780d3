"""
Shared fixtures.  Unit tests use fake reactors; tests marked
C{integration} use real sockets on 127.0.0.1 through pytest-twisted's
reactor.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from lbproxy.policy.plugins import strategy_factories


@pytest.fixture(autouse=True)
def _process_limits_restored():
    """Every test leaves this process's open-files limit as it found it
    (a test that needs other limits sets them in a child process, or
    restores them)."""
    import resource

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield
    after = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert after == before, f"the test changed RLIMIT_NOFILE from {before} to {after}"


@pytest.fixture(scope="session")
def factories():
    """Every strategy plugin, discovered once."""
    return strategy_factories()


@pytest_twisted.async_yield_fixture()
async def etcd1(tmp_path):
    """A real one-member etcd on 127.0.0.1 (OS-chosen ports), killed after the test."""
    from tests.etcdtools import EtcdCluster

    cluster = EtcdCluster(tmp_path / "etcd", size=1)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.kill()


@pytest_twisted.async_yield_fixture()
async def etcd3(tmp_path):
    """A real three-member etcd cluster on 127.0.0.1, killed after the test."""
    from tests.etcdtools import EtcdCluster

    cluster = EtcdCluster(tmp_path / "etcd", size=3)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.kill()
