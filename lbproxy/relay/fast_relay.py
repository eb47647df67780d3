"""
One relayed connection of the fast engine: a L{Relay} is the client
socket and, once connected, its backend socket.  Its L{ConnectionSession}
decides (admission, routing with retries that exclude tried backends,
connect timeout, PROXY header, reset attribution, access record
outcomes); the relay reports to it and does what it answers.  Setup is
one C{socket} and one C{connect_ex}; the bytes move in L{FlowIO}.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

# The C socket type that socket.socket wraps: relayed sockets are made of
# it directly, which skips the Python-level __init__ and close() frames of
# socket.socket (four calls per socket, two sockets per connection) that
# nothing here uses (no makefile(), no enums).
from _socket import socket as _RawSocket
from typing import Any

from zope.interface import implementer

from lbproxy.interfaces import IEngineConnection
from lbproxy.policy.pool import Candidate
from lbproxy.relay.fast_flow import _BAD, _READ, BACKEND_EVENTS, EPOLLIN, EPOLLOUT, FlowIO, _Flow
from lbproxy.relay.session import ConnectionSession, ReadFirst, Wait
from lbproxy.relay.sockopts import apply

#: SO_LINGER on, zero seconds: close() sends RST.
_RESET = __import__("struct").pack("ii", 1, 0)
_NONBLOCK_STREAM = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)
_HAVE_SOCK_NONBLOCK = hasattr(socket, "SOCK_NONBLOCK")
#: The flag of every recv/send on an accepted client socket, which stays
#: in blocking mode (see L{lbproxy.relay.fast_flow._Flow}).
_DONTWAIT = socket.MSG_DONTWAIT


_families: dict[str, int | None] = {}


def _family(host: str) -> int | None:
    """
    @return: the address family of an IP literal, C{None} for a host name
        (memoised: parsing an address per connect showed in profiles).
    """
    try:
        return _families[host]
    except KeyError:
        pass
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        family = None
    else:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
    if len(_families) < 4096:
        _families[host] = family
    return family


def _error_text(code: int) -> str:
    return os.strerror(code) if code else "connection failed"


@implementer(IEngineConnection)
class Relay(FlowIO):
    """
    One client connection and, once connected, its backend connection;
    its L{ConnectionSession} decides, the relay does the I/O.

    @ivar up: the client-to-backend L{_Flow}.
    @ivar down: the backend-to-client L{_Flow}.
    @ivar finished: both sockets are closed (or being closed).
    """

    __slots__ = (
        "engine", "session", "client_sock", "backend_sock", "cfd", "bfd", "cmask", "bmask", "bmissed",
        "up", "down", "first_byte_pending", "idle_mark", "idle_since", "finished", "deadline",
        "reading", "timer",
    )

    #: The C{recv}/C{send} flags of the client side: an accepted socket
    #: stays blocking and says C{MSG_DONTWAIT} until it proves long-lived
    #: (L{FlowIO.client_nonblocking}).
    client_flags = _DONTWAIT

    def __init__(self, engine: "FastRelay", sock: socket.socket, session: ConnectionSession) -> None:
        self.engine = engine
        self.session = session
        self.client_sock = sock
        self.cfd = sock.fileno()
        self.backend_sock: socket.socket | None = None
        self.bfd = -1
        self.cmask = 0
        self.bmask = 0
        self.bmissed = 0
        self.up: _Flow | None = None
        self.down: _Flow | None = None
        self.first_byte_pending = False
        self.idle_mark = 0
        self.idle_since = 0.0
        self.finished = False
        self.deadline: list | None = None
        self.reading: ReadFirst | None = None
        self.timer: Any = None

    # IRelayedConnection ----------------------------------------------------

    @property
    def bytes_up(self) -> int:
        return self.up.count if self.up is not None else 0

    @property
    def bytes_down(self) -> int:
        return self.down.count if self.down is not None else 0

    def abort(self, why: str) -> None:
        self.session.closing(why)
        if not self.finished:
            for sock in (self.client_sock, self.backend_sock):
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                    except OSError:
                        pass
        self._finish()

    def close(self, why: str) -> None:
        self.session.closing(why)
        self._finish()

    def local_address(self) -> tuple[str, int]:
        local = self.client_sock.getsockname()
        return (local[0], local[1])

    # The first bytes, for a route that needs them ---------------------------

    def read_first(self, answer: ReadFirst) -> None:
        """
        Read the client's first bytes for the session (SNI, a PROXY
        header) until it decides, within its deadline.
        """
        engine = self.engine
        self.reading = answer
        engine.handlers[self.cfd] = self._on_first
        engine.epoll.register(self.cfd, _READ)
        self.cmask = _READ
        self.timer = engine.reactor.callLater(
            max(0.0, answer.deadline - engine.now()), self._first_timed_out
        )

    def _on_first(self, ev: int) -> None:
        try:
            data = self.client_sock.recv(self.reading.limit, _DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self.session.client_reset()
            self._first(None)
            return
        self._first(self.session.client_bytes(data))

    def _first_timed_out(self) -> None:
        self.timer = None
        if not self.finished:
            self._first(self.session.read_timed_out())

    def _first(self, answer: Any) -> None:
        if answer.__class__ is ReadFirst:
            self.reading = answer
            return
        self.reading = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if answer is None:
            self._finish()
            return
        # _connected registers the client again once the backend is up.
        self.engine.handlers.pop(self.cfd, None)
        self.engine.epoll.unregister(self.cfd)
        self.cmask = 0
        if answer.__class__ is Wait:
            self.wait(answer)
        else:
            self.connect(answer)

    # Waiting in the service's queue (every backend at its max_connections) ---

    def wait(self, answer: Wait) -> None:
        """
        Keep the client unread until the session says which backend (or to
        close it).  Its socket is in the epoll set with no interest, so a
        reset is still seen (and L{FastRelay.stop} finds the relay).
        """
        engine = self.engine
        engine.handlers[self.cfd] = self._on_wait
        engine.epoll.register(self.cfd, 0)
        answer.notify = self._waited

    def _on_wait(self, ev: int) -> None:
        self.session.client_reset()
        self._finish()

    def _waited(self, candidate: Candidate | None) -> None:
        if self.finished:
            return
        engine = self.engine
        engine.handlers.pop(self.cfd, None)
        engine.epoll.unregister(self.cfd)
        if candidate is None:
            self._finish()
        else:
            self.connect(candidate)

    # Connecting -------------------------------------------------------------

    def connect(self, candidate: Candidate) -> None:
        """
        Connect to the backend the session chose.
        """
        try:
            family = _families[candidate.host]
        except KeyError:
            family = _family(candidate.host)
        if family is None:
            self.engine.resolve(candidate.host, candidate.port, self.session.resolver).addCallbacks(
                self._resolved, self._unresolved
            )
            return
        self._connect_to(family, (candidate.host, candidate.port))

    def _resolved(self, found: tuple) -> None:
        if self.engine.stopped:
            self.abort("shutdown")
        elif not self.finished:
            self.session.connecting()
            self._connect_to(found[0], found[1])

    def _unresolved(self, failure: Any) -> None:
        if not self.finished:
            self._connect_failed(failure.getErrorMessage())

    def _connect_to(self, family: int, address: tuple) -> None:
        engine = self.engine
        try:
            sock = _RawSocket(family, _NONBLOCK_STREAM)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Our shortage, not the backend's fault: no failure against it.
                self.session.closing("no-resources")
                self._finish()
                engine.pause_accepting(e)
            else:
                self._connect_failed(_error_text(e.errno))
            return
        if not _HAVE_SOCK_NONBLOCK:
            sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(address)
        if err and err != errno.EINPROGRESS:
            sock.close()
            self._connect_failed(_error_text(err))
            return
        self.backend_sock = sock
        self.bfd = fd = sock.fileno()
        engine.epoll.register(fd, BACKEND_EVENTS)
        self.bmask = EPOLLOUT
        engine.handlers[fd] = self._on_connect
        # A list, so a relay that ends (or connects, with keepalive off)
        # can drop its references at once instead of keeping the relay
        # alive until the deadline.
        self.deadline = deadline = [engine.now() + self.session.connect_timeout, self, sock]
        engine.timeouts.append(deadline)

    def _release_deadline(self) -> None:
        deadline = self.deadline
        if deadline is not None:
            deadline[1] = deadline[2] = None
            self.deadline = None

    def deadline_passed(self, sock: socket.socket) -> None:
        """
        The connect deadline came: a connect still in progress failed; a
        relay that connected and still lives gets its backend socket's
        TCP keepalive now (and its client socket becomes non-blocking, see
        L{lbproxy.relay.fast_flow._Flow}).  Deferred this far because the four
        C{setsockopt} calls cost about a tenth of a one-shot connection
        (measured), while a connection shorter than the connect timeout
        ends long before a keepalive probe could be sent.
        """
        if sock is not self.backend_sock or self.finished:
            return
        if self.up is None:
            self._drop_backend()
            self._connect_failed("connect timed out")
        else:
            self.deadline = None
            if self.up.rflags:
                self.client_nonblocking()
            options, client = self.session.socket_options(self.engine.options)
            apply(sock, options)
            if client is not None:
                apply(self.client_sock, client)

    def _drop_backend(self) -> None:
        self._release_deadline()
        sock = self.backend_sock
        self.engine.handlers.pop(self.bfd, None)
        self.backend_sock = None
        self.bfd = -1
        self.bmask = 0
        self.engine.close(sock)

    def _on_connect(self, ev: int) -> None:
        if ev & _BAD:
            code = self.backend_sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self._drop_backend()
            self._connect_failed(_error_text(code))
            return
        self._connected(ev)

    def _connect_failed(self, reason: str) -> None:
        candidate = self.session.connect_failed(reason)
        if candidate is None:
            self._finish()
        elif candidate.__class__ is Wait:
            self.wait(candidate)
        else:
            self.connect(candidate)

    def _connected(self, ev: int) -> None:
        """
        The backend accepted: relay.  Its socket stays registered as it is
        (edge-triggered, for everything), so this costs only the client's
        registration; bytes the backend sent already raised their edge
        with the connect's, so they are read now.
        """
        engine = self.engine
        csock, bsock = self.client_sock, self.backend_sock
        flags = self.client_flags
        self.up = up = _Flow(csock, bsock, flags, 0)
        self.down = _Flow(bsock, csock, 0, flags)
        data = self.session.connected(self)
        self.first_byte_pending = True
        if data is not None:
            try:
                sent = bsock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._backend_error()
                return
            if sent < len(data):
                up.pending = data[sent:]
        handlers = engine.handlers
        handlers[self.bfd] = self.on_backend
        handlers[self.cfd] = self.on_client
        if up.pending is None:
            self.bmask = _READ
            self.cmask = _READ
            engine.epoll.register(self.cfd, _READ)
            # The client has usually sent its first bytes while we
            # connected: relay them now rather than after another poll.
            self.on_client(EPOLLIN)
        else:
            self.bmask = _READ | EPOLLOUT
            self.cmask = 0
            engine.epoll.register(self.cfd, 0)
        if ev & _READ and not self.finished:
            self.on_backend(ev & ~EPOLLOUT)

    # The relay ---------------------------------------------------------------

    def _finish(self) -> None:
        """
        Close both sockets and report the connection's end to the session, once.
        """
        if self.finished:
            return
        self.finished = True
        deadline = self.deadline
        if deadline is not None:
            deadline[1] = deadline[2] = None
            self.deadline = None
        engine = self.engine
        handlers = engine.handlers
        # engine.close, inline: the end of every connection.
        closing = engine.closing
        handlers.pop(self.cfd, None)
        if closing is None:
            self.client_sock.close()
        else:
            closing.append(self.client_sock)
        if self.backend_sock is not None:
            handlers.pop(self.bfd, None)
            if closing is None:
                self.backend_sock.close()
            else:
                closing.append(self.backend_sock)
        up = self.up
        if up is None:
            self.session.ended(0, 0)
        else:
            down = self.down
            if up.pipe is not None:
                up.close_pipe()
            if down.pipe is not None:
                down.close_pipe()
            self.session.ended(up.count, down.count)
