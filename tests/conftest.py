"""
Shared fixtures.  Unit tests use fake reactors; tests marked
C{integration} use real sockets on 127.0.0.1 through pytest-twisted's
reactor.
"""

from __future__ import annotations

import pytest

from lbproxy.plugins import strategy_factories


@pytest.fixture(scope="session")
def factories():
    """Every strategy plugin, discovered once."""
    return strategy_factories()
