"""
The listening sockets of C{--workers}: per listener of the document, one
socket per worker slot, made and held by the parent.

Why the parent makes them, rather than each worker binding its own with
C{SO_REUSEPORT}: port 0 becomes one concrete port for all the slots, a
port in use refuses the change (or the start) before anything is stored,
the parent's copy keeps each socket and its accept queue alive across a
worker's restart, and a takeover hands every one of them over
(L{listening_fds}) without closing a socket that has a queue.  The sockets
reach the workers over their AMP channel as file descriptors
(C{amp.Descriptor}, C{SCM_RIGHTS} on the Unix socketpair), at a worker's
start and whenever a change adds a listener: one mechanism for both.

L{WorkerSockets} is the worker pool's stand-in for the
L{lbproxy.control.listeners.ListenerManager} in the config controller:
L{prepare} binds what a change adds before it is made durable, L{commit}
keeps it and closes what the change removed.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from lbproxy.model.errors import ConfigError
from lbproxy.model.service import Document, endpoint_of, listen_key, sharing

_IN_USE = os.strerror(errno.EADDRINUSE)


class SocketsPending:
    """
    Sockets bound for a change, not yet in force.
    """

    def __init__(self) -> None:
        self.sockets: dict[str, list[socket.socket]] = {}

    def abort(self) -> None:
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets.clear()


class WorkerSockets:
    """
    @ivar sockets: listener key -> its listening socket of each slot.
    @ivar handed: sockets handed over by the process this one takes over
        from, by key: used instead of binding.
    """

    def __init__(self, count: int, backlog: int, reactor: Any = None) -> None:
        self.count = count
        self.backlog = backlog
        self.reactor = reactor
        self.sockets: dict[str, list[socket.socket]] = {}
        self.handed: dict[str, list[socket.socket]] = {}

    def check(self, document: Document) -> None:
        """
        Refuse listen descriptions the workers cannot share.

        @raise ConfigError: naming the service and the endpoint.
        """
        from lbproxy.listening.endpoints import parse_endpoint

        for s in document.services:
            for description in s.listen:
                try:
                    endpoint = parse_endpoint(description, self.reactor)
                except ValueError as e:
                    raise ConfigError(f"service {s.name!r}: listen {description!r}: {e}") from None
                if not endpoint.tcp:
                    raise ConfigError(
                        f"service {s.name!r}: listen {description!r}: --workers listen on tcp: and "
                        f"tcp6: endpoints only (SO_REUSEPORT)"
                    )

    def prepare(self, document: Document, pending: SocketsPending | None = None) -> SocketsPending:
        """
        Make the slots' sockets of every listener of C{document} that has none.

        @raise lbproxy.control.listeners.ListenRefused: if one cannot be
            bound; none that this call made stays open.
        """
        from lbproxy.control.listeners import ListenRefused

        self.check(document)
        pending = pending if pending is not None else SocketsPending()
        made: list[str] = []
        try:
            for key, services in sharing(document).items():
                if key in self.sockets or key in pending.sockets:
                    continue
                try:
                    pending.sockets[key] = self._make(key)
                except OSError as e:
                    reason = e.strerror or str(e)
                    status = 409 if reason == _IN_USE else 400
                    raise ListenRefused(services[0].name, endpoint_of(key), reason, status) from None
                made.append(key)
        except BaseException:
            for key in made:
                for sock in pending.sockets.pop(key):
                    sock.close()
            raise
        return pending

    def _make(self, key: str) -> list[socket.socket]:
        """
        The slots' sockets of one listener: handed over, or bound here
        (the first on the description's port, the others on the port it got).

        @raise OSError: if they cannot be bound.
        """
        from lbproxy.listening.endpoints import listening_socket, parse_endpoint

        handed = self.handed.pop(key, None)
        if handed is not None:
            if len(handed) == self.count:
                return handed
            for sock in handed:
                sock.close()
            raise OSError(0, f"the process taken over had {len(handed)} workers: take over with "
                             f"--workers {len(handed)}")
        endpoint = parse_endpoint(endpoint_of(key), self.reactor)
        backlog = endpoint.backlog or self.backlog
        first = listening_socket(endpoint.host, endpoint.port, backlog, reuse_port=True)
        socks = [first]
        try:
            port = first.getsockname()[1]
            for _ in range(self.count - 1):
                socks.append(listening_socket(endpoint.host, port, backlog, reuse_port=True))
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return socks

    def commit(self, pending: SocketsPending, document: Document) -> None:
        """
        Keep the sockets of C{document}'s listeners, close the others.
        """
        wanted = sharing(document)
        for key, socks in pending.sockets.items():
            if key in wanted:
                self.sockets[key] = socks
            else:
                for sock in socks:
                    sock.close()
        pending.sockets = {}
        for key in tuple(self.sockets):
            if key not in wanted:
                for sock in self.sockets.pop(key):
                    sock.close()

    def close(self) -> None:
        for socks in (*self.sockets.values(), *self.handed.values()):
            for sock in socks:
                sock.close()
        self.sockets = {}
        self.handed = {}

    def adopt(self, handover: Any, main_key: str | None) -> None:
        """
        Take the sockets handed over as C{worker:KEY} (and, from a release
        whose workers relayed one listener, plain C{worker} for C{main_key}).
        """
        for name in tuple(handover.sockets):
            if name.startswith("worker:"):
                self.handed[name[len("worker:"):]] = handover.take_all(name)
            elif name == "worker" and main_key is not None:
                self.handed[main_key] = handover.take_all(name)

    def listening_fds(self) -> list[tuple[str, int]]:
        """
        Every slot's socket of every listener, named C{worker:KEY}, in slot
        order (L{lbproxy.control.takeover}).
        """
        return [(f"worker:{key}", sock.fileno()) for key, socks in self.sockets.items() for sock in socks]

    def address(self, key: str) -> tuple[str, int] | None:
        socks = self.sockets.get(key)
        if not socks:
            return None
        host, port = socks[0].getsockname()[:2]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return host, port

    def addresses(self, document: Document, service: str) -> list[tuple[str, int]]:
        """
        Where a service's clients connect, one per listener.
        """
        found = document.service(service)
        out = []
        for description in found.listen if found else ():
            where = self.address(listen_key(description, service))
            if where is not None:
                out.append(where)
        return out
