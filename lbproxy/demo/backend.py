"""
A demo backend: a tiny HTTP/1.0 server with a name and a response delay
that can be switched offline (its listening port closes and its open
connections are cut, as if the process died) and online again on the same
port.

Run on its own as C{python -m lbproxy.demo.backend --name alpha --port 0};
it prints C{listening on PORT} once it accepts connections.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.protocol import Factory, Protocol

#: The largest request head a demo backend reads before answering 400.
MAX_REQUEST = 8192


class DemoRequest(Protocol):
    """
    One connection: read a request head, answer after the backend's delay
    (at once for C{/health}), close.
    """

    def __init__(self, backend: "DemoBackend") -> None:
        self.backend = backend
        self._buffer = b""
        self._answered = False
        self._timer: Any = None

    def connectionMade(self) -> None:
        self.backend.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            end = self._buffer.find(b"\n\n")
        if end < 0:
            if len(self._buffer) > MAX_REQUEST:
                self._answer(400, b"request head too long\n", 0)
            return
        line = self._buffer.split(b"\n", 1)[0].strip()
        parts = line.split()
        path = parts[1] if len(parts) >= 2 else b"/"
        if path.startswith(b"/health"):
            self._answer(200, b"ok\n", 0)
        else:
            self.backend.requests += 1
            body = f"hello from {self.backend.name}\n".encode()
            self._answer(200, body, self.backend.delay)

    def _answer(self, status: int, body: bytes, delay: float) -> None:
        self._answered = True
        reason = {200: b"OK", 400: b"Bad Request"}[status]
        head = (
            b"HTTP/1.0 %d %s\r\nServer: lbproxy-demo\r\nX-Backend: %s\r\n"
            b"Content-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, reason, self.backend.name.encode(), len(body))
        )
        if delay > 0:
            self._timer = self.backend.reactor.callLater(delay, self._send, head + body)
        else:
            self._send(head + body)

    def _send(self, data: bytes) -> None:
        self._timer = None
        self.transport.write(data)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.backend.connections.discard(self)


class _DemoFactory(Factory):
    noisy = False

    def __init__(self, backend: "DemoBackend") -> None:
        self.backend = backend

    def buildProtocol(self, addr: Any) -> Protocol:
        return DemoRequest(self.backend)


class DemoBackend:
    """
    @ivar name: shown in every answer (C{X-Backend} header and body).
    @ivar port: the TCP port, fixed after the first L{go_online} so the
        backend comes back where lbproxy expects it.
    @ivar delay: seconds before answering a request.
    @ivar requests: requests answered (or being answered) so far.
    """

    def __init__(
        self, name: str, port: int = 0, delay: float = 0.0,
        interface: str = "127.0.0.1", reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.name = name
        self.port = port
        self.delay = delay
        self.interface = interface
        self.requests = 0
        self.connections: set[DemoRequest] = set()
        self._listener: Any = None

    @property
    def online(self) -> bool:
        return self._listener is not None

    def go_online(self) -> None:
        """
        Open the listener (on the same port as before, if any).

        @raise twisted.internet.error.CannotListenError: if the port is taken.
        """
        if self._listener is not None:
            return
        self._listener = self.reactor.listenTCP(
            self.port, _DemoFactory(self), interface=self.interface
        )
        self.port = self._listener.getHost().port

    def go_offline(self) -> Any:
        """
        Close the listener and cut every open connection, like a crash.

        @return: a Deferred that fires once the port is closed.
        """
        from twisted.internet import defer

        listener, self._listener = self._listener, None
        for conn in tuple(self.connections):
            conn.transport.abortConnection()
        if listener is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listener.stopListening)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.interface,
            "port": self.port,
            "online": self.online,
            "delay": self.delay,
            "requests": self.requests,
            "active": len(self.connections),
        }


def main(argv: list[str] | None = None) -> int:
    """
    Run one demo backend in its own process (tests stop and restart it).
    """
    import argparse

    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description="A demo backend for lbproxy.")
    parser.add_argument("--name", default="demo")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    backend = DemoBackend(args.name, args.port, args.delay, reactor=reactor)
    try:
        backend.go_online()
    except Exception as e:
        print(f"cannot listen on port {args.port}: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"listening on {backend.port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
