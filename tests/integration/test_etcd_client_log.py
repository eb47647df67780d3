"""
The etcd client's HTTP requests do not flood the operational log: a node
posts to etcd every few seconds (lease keepalives, reads), and each request
logged "Starting factory" and "Stopping factory" lines at info level.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import capturedLogs, formatEvent
from twisted.web.resource import Resource
from twisted.web.server import Site

from lbproxy.control.store.etcd_client import _default_http

pytestmark = pytest.mark.integration


class _Answer(Resource):
    isLeaf = True

    def render_POST(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return b"{}"


@pytest_twisted.ensureDeferred
async def test_etcd_requests_log_no_factory_lines():
    """Three posts through the etcd client's default HTTP client, to a real
    server on 127.0.0.1, are answered and log no C{Starting factory} or
    C{Stopping factory} line."""
    site = Site(_Answer())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        http = _default_http(reactor)
        url = f"http://127.0.0.1:{port.getHost().port}/v3/kv/range"
        with capturedLogs() as events:
            for _ in range(3):
                response = await http.post(url, json={"key": "eA=="})
                assert response.code == 200
                assert await response.json() == {}
        noisy = [formatEvent(e) for e in events if "factory" in formatEvent(e).lower()]
        assert noisy == []
    finally:
        await port.stopListening()
