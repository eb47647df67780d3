"""
The fast relay engine (Linux): the listener, backend connects and the byte
relay on one private C{epoll} object that the reactor drives as one reader.

Why: Twisted's transports defer every write to the next reactor pass and
wrap every socket event in logging context; C{listenTCP}/C{connectTCP}
set each connection up through several calls and C{callLater}s.  Here a
read is sent on at once and only the unsent remainder is buffered, a whole
batch of socket events costs the reactor one C{doRead}, and connection
setup is one C{accept}, one C{socket} and one C{connect_ex}.  The reactor
stays in charge: there is no second loop and no thread.

The policy is L{lbproxy.relay.twisted_engine}'s, because it is not here: every
accepted connection has a L{ConnectionSession} that decides (admission,
routing with retries that exclude tried backends, connect timeout, PROXY
protocol header, reset attribution, access record outcomes); a L{Relay}
reports to it and does what it answers.  Backpressure: while one direction has unsent bytes its source
is not read (at most one buffer per direction).  Half-close: after a
side's EOF and once its bytes are flushed the other side gets
C{shutdown(SHUT_WR)}.  A direction whose reads fill the buffer switches
to C{splice(2)} through a pipe, so bulk bytes never enter Python.
"""

from __future__ import annotations

import errno
import gc
import ipaddress
import os
import select
import socket

# The C socket type that socket.socket wraps: relayed sockets are made of
# it directly, which skips the Python-level __init__ and close() frames of
# socket.socket (four calls per socket, two sockets per connection) that
# nothing here uses (no makefile(), no enums).
from _socket import socket as _RawSocket
from collections import deque
from typing import Any, Callable

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.endpoints import listening_socket  # noqa: F401  (moved there; imported from here too)
from lbproxy.interfaces import IEngineConnection
from lbproxy.policy.pool import Candidate
from lbproxy.relay.route import as_route
from lbproxy.relay.session import ConnectionSession, ReadFirst, Wait, route_options
from lbproxy.relay.sockopts import apply

log = Logger()

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
_READ = EPOLLIN | EPOLLRDHUP
_BAD = EPOLLERR | EPOLLHUP
#: Mask bit (never given to epoll) of a socket taken out of the epoll set:
#: a hung-up socket reports EPOLLHUP whatever its mask, which would spin a
#: level-triggered loop while the relay has nothing to do with it.
_PARKED = 1 << 30

#: Bytes read per C{recv_into}; a read that fills it switches the
#: direction to splice.  256 KiB measured better than 64 KiB for bulk.
BUFFER_SIZE = 256 * 1024
#: Capacity asked for each splice pipe.
PIPE_SIZE = 256 * 1024
#: Accepts per wakeup, so a connection storm cannot starve the relay.
ACCEPT_BATCH = 64

_HAVE_SPLICE = hasattr(os, "splice")
if _HAVE_SPLICE:
    _SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
#: SO_LINGER on, zero seconds: close() sends RST.
_RESET = __import__("struct").pack("ii", 1, 0)
_NONBLOCK_STREAM = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)
_HAVE_SOCK_NONBLOCK = hasattr(socket, "SOCK_NONBLOCK")


def available() -> bool:
    """
    @return: whether this platform can run the fast engine.
    """
    return hasattr(select, "epoll")


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


def _set_mask(epoll: Any, fd: int, old: int, new: int) -> int:
    """
    Change a socket's epoll interest, putting a parked socket back into
    the set once it has something to wait for.

    @return: the mask now in force.
    """
    if old & _PARKED:
        new |= _PARKED
        if new & (EPOLLIN | EPOLLOUT):
            new &= ~_PARKED
            epoll.register(fd, new)
        return new
    epoll.modify(fd, new)
    return new


class _Flow:
    """
    One direction of a relay: bytes read from C{src}, sent to C{dst}.

    @ivar pending: bytes read but not yet sent (at most one buffer).
    @ivar inpipe: bytes spliced into the pipe but not yet out of it.
    @ivar eof: the source sent its FIN and everything was read.
    @ivar shut: the destination got C{shutdown(SHUT_WR)}.
    """

    __slots__ = ("src", "dst", "pending", "inpipe", "pipe", "eof", "shut", "count")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.pending: bytes | None = None
        self.inpipe = 0
        self.pipe: tuple[int, int] | None = None
        self.eof = False
        self.shut = False
        self.count = 0

    def close_pipe(self) -> None:
        pipe = self.pipe
        if pipe is not None:
            self.pipe = None
            os.close(pipe[0])
            os.close(pipe[1])


@implementer(IEngineConnection)
class Relay:
    """
    One client connection and, once connected, its backend connection;
    its L{ConnectionSession} decides, the relay does the I/O.

    @ivar up: the client-to-backend L{_Flow}.
    @ivar down: the backend-to-client L{_Flow}.
    @ivar finished: both sockets are closed (or being closed).
    """

    __slots__ = (
        "engine", "session", "client_sock", "backend_sock", "cfd", "bfd", "cmask", "bmask",
        "up", "down", "first_byte_pending", "idle_mark", "idle_since", "finished", "deadline",
        "reading", "timer",
    )

    def __init__(self, engine: "FastRelay", sock: socket.socket, session: ConnectionSession) -> None:
        self.engine = engine
        self.session = session
        self.client_sock = sock
        self.cfd = sock.fileno()
        self.backend_sock: socket.socket | None = None
        self.bfd = -1
        self.cmask = 0
        self.bmask = 0
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
            data = self.client_sock.recv(self.reading.limit)
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
        engine.epoll.register(fd, EPOLLOUT)
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
        TCP keepalive now.  Deferred this far because the four
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
        self._connected()

    def _connect_failed(self, reason: str) -> None:
        candidate = self.session.connect_failed(reason)
        if candidate is None:
            self._finish()
        elif candidate.__class__ is Wait:
            self.wait(candidate)
        else:
            self.connect(candidate)

    def _connected(self) -> None:
        engine = self.engine
        if not self.session.wants_keepalive(engine.options):
            self._release_deadline()
        csock, bsock = self.client_sock, self.backend_sock
        self.up = up = _Flow(csock, bsock)
        self.down = _Flow(bsock, csock)
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
            self._set_backend(_READ)
            self.cmask = _READ
            engine.epoll.register(self.cfd, _READ)
            # The client has usually sent its first bytes while we
            # connected: relay them now rather than after another poll.
            self._read(up, 0, True)
        else:
            self._set_backend(_READ | EPOLLOUT)
            self.cmask = 0
            engine.epoll.register(self.cfd, 0)

    # The relay ---------------------------------------------------------------

    def _set_client(self, mask: int) -> None:
        if mask != self.cmask:
            self.cmask = _set_mask(self.engine.epoll, self.cfd, self.cmask, mask)

    def _set_backend(self, mask: int) -> None:
        if mask != self.bmask:
            self.bmask = _set_mask(self.engine.epoll, self.bfd, self.bmask, mask)

    def on_client(self, ev: int) -> None:
        if ev & EPOLLOUT:
            if self._flush(self.down, True):
                return
        if ev & (_READ | _BAD) and self.cmask & EPOLLIN:
            self._read(self.up, ev, True)
        elif ev & EPOLLERR:
            self._client_error()
        elif ev & EPOLLHUP:
            self.engine.epoll.unregister(self.cfd)
            self.cmask |= _PARKED

    def on_backend(self, ev: int) -> None:
        if ev & EPOLLOUT:
            if self._flush(self.up, False):
                return
        if ev & (_READ | _BAD) and self.bmask & EPOLLIN:
            self._read(self.down, ev, False)
        elif ev & EPOLLERR:
            self._backend_error()
        elif ev & EPOLLHUP:
            self.engine.epoll.unregister(self.bfd)
            self.bmask |= _PARKED

    def _read(self, flow: _Flow, ev: int, from_client: bool) -> None:
        """
        Move what the source has to the destination now; keep only what the
        destination did not take, and stop reading until it has.
        """
        if flow.pipe is not None:
            self._splice(flow, from_client)
            return
        engine = self.engine
        try:
            n = flow.src.recv_into(engine.buffer)
        except BlockingIOError:
            return
        except OSError:
            self._error(from_client)
            return
        if not n:
            self._eof(flow, from_client)
            return
        flow.count += n
        if not from_client and self.first_byte_pending:
            self.first_byte_pending = False
            self.session.first_response()
        try:
            sent = flow.dst.send(engine.view[:n])
        except BlockingIOError:
            sent = 0
        except OSError:
            self._error(not from_client)
            return
        if sent < n:
            flow.pending = engine.view[sent:n].tobytes()
            self._wait_writable(flow, from_client)
        elif n == BUFFER_SIZE:
            if _HAVE_SPLICE:
                self._start_splice(flow)
        elif ev & EPOLLRDHUP:
            self._eof(flow, from_client)

    def _wait_writable(self, flow: _Flow, from_client: bool) -> None:
        if from_client:
            self._set_client(self.cmask & ~_READ)
            self._set_backend(self.bmask | EPOLLOUT)
        else:
            self._set_backend(self.bmask & ~_READ)
            self._set_client(self.cmask | EPOLLOUT)

    def _flush(self, flow: _Flow, to_client: bool) -> bool:
        """
        Send what is pending on C{flow}; once it is all out, read its
        source again (or pass its EOF on).

        @return: C{True} if the relay ended.
        """
        if flow.pipe is not None and flow.inpipe:
            try:
                sent = os.splice(flow.pipe[0], flow.dst.fileno(), flow.inpipe, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return False
            except OSError:
                self._error(to_client)
                return True
            flow.inpipe -= sent
            if flow.inpipe:
                return False
        elif flow.pending is not None:
            data = flow.pending
            try:
                sent = flow.dst.send(data)
            except BlockingIOError:
                return False
            except OSError:
                self._error(to_client)
                return True
            if sent < len(data):
                flow.pending = data[sent:]
                return False
            flow.pending = None
        else:
            return False
        if to_client:
            self._set_client(self.cmask & ~EPOLLOUT)
        else:
            self._set_backend(self.bmask & ~EPOLLOUT)
        if flow.eof:
            return self._shut(flow, to_client)
        if to_client:
            self._set_backend(self.bmask | _READ)
        else:
            self._set_client(self.cmask | _READ)
        return False

    def _start_splice(self, flow: _Flow) -> None:
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        try:
            import fcntl

            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except (OSError, AttributeError):
            pass
        flow.pipe = (r, w)
        self.engine.splices += 1

    def _splice(self, flow: _Flow, from_client: bool) -> None:
        r, w = flow.pipe
        try:
            n = os.splice(flow.src.fileno(), w, PIPE_SIZE, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self._error(from_client)
            return
        if not n:
            self._eof(flow, from_client)
            return
        flow.count += n
        try:
            sent = os.splice(r, flow.dst.fileno(), n, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._error(not from_client)
            return
        if sent < n:
            flow.inpipe = n - sent
            self._wait_writable(flow, from_client)

    def _eof(self, flow: _Flow, from_client: bool) -> None:
        """
        The source of C{flow} sent its FIN: stop reading it, and half-close
        the destination once the pending bytes are out.
        """
        flow.eof = True
        # Pass the EOF on first: if that ends the relay, the sockets are
        # closed and changing their epoll interest would be a wasted call.
        if flow.pending is None and not flow.inpipe and self._shut(flow, not from_client):
            return
        if from_client:
            self._set_client(self.cmask & ~_READ)
        else:
            self._set_backend(self.bmask & ~_READ)

    def _shut(self, flow: _Flow, to_client: bool) -> bool:
        """
        Half-close C{flow}'s destination; the relay ends once both
        directions are shut.

        @return: C{True} if the relay ended.
        """
        flow.shut = True
        flow.close_pipe()
        other = self.up if to_client else self.down
        if other.shut:
            self._finish()
            return True
        try:
            flow.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self._error(to_client)
            return True
        return False

    def _error(self, client_side: bool) -> None:
        if client_side:
            self._client_error()
        else:
            self._backend_error()

    def _client_error(self) -> None:
        self.session.client_reset()
        self._finish()

    def _backend_error(self, reason: str = "connection reset by backend") -> None:
        if not self.finished:
            self.session.backend_reset(reason)
        self._finish()

    def _finish(self) -> None:
        """
        Close both sockets and report the connection to the balancer, once.
        """
        if self.finished:
            return
        self.finished = True
        self._release_deadline()
        engine = self.engine
        handlers = engine.handlers
        handlers.pop(self.cfd, None)
        engine.close(self.client_sock)
        if self.backend_sock is not None:
            handlers.pop(self.bfd, None)
            engine.close(self.backend_sock)
        up, down = self.up, self.down
        if up is None:
            self.session.ended(0, 0)
        else:
            up.close_pipe()
            down.close_pipe()
            self.session.ended(up.count, down.count)


@implementer(IReadDescriptor)
class FastRelay:
    """
    The engine: a listening socket and every relayed socket on one
    C{epoll} object, which the reactor watches as a single reader.

    @ivar route: the L{lbproxy.interfaces.IListenerRoute} each accepted
        connection gets (read per connection: the service table swaps it).
    @ivar epoll: the private C{select.epoll}.
    @ivar handlers: fd -> callable taking the epoll event mask.
    @ivar timeouts: pending connect deadlines, oldest first (the timeout is
        one setting, so appending keeps them sorted).
    """

    #: Batches of events handled per reactor wakeup.
    max_polls = 8
    #: A listener with TLS (terminated here, or to its backends): called
    #: with C{(engine, socket, client address)} per accepted socket instead
    #: of the plain path (L{lbproxy.relay.fast_tls.FastTLS}).
    tls: Any = None

    def __init__(
        self,
        route: Any,
        listener: socket.socket,
        reactor: Any = None,
        sweep_interval: float = 0.05,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.route = route = as_route(route)
        self.reactor = reactor
        self.listener = listener
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.timeouts: deque = deque()
        self.buffer = bytearray(BUFFER_SIZE)
        self.view = memoryview(self.buffer)
        self.now = reactor.seconds
        self._closing: list[socket.socket] | None = None
        self._sweep_interval = sweep_interval
        self._sweeper: Any = None
        self._resolver: Any = None
        self.listening = False
        self.stopped = False
        self._accept_paused = False
        #: directions switched to splice(2), for tests and curiosity.
        self.splices = 0
        #: setsockopt triples of every backend socket (TCP keepalive),
        #: set once a connection outlives its connect deadline.
        self.options = route_options(route)
        listener.setblocking(False)
        if listener.family in (socket.AF_INET, socket.AF_INET6):
            # Accepted sockets inherit these (Linux copies the listener's
            # options), which saves syscalls per connection.
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            apply(listener, self.options)
            if route.routes_by_sni and hasattr(socket, "TCP_DEFER_ACCEPT"):
                # A TLS client speaks first: wake us only once it has.
                # Never on an ordinary listener (servers may speak first).
                listener.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, int(route.sni_timeout))
                )

    # IReadDescriptor ------------------------------------------------------

    def fileno(self) -> int:
        return self.epoll.fileno()

    def logPrefix(self) -> str:
        return "FastRelay"

    def connectionLost(self, reason: Any) -> None:
        self.stop()

    def doRead(self) -> None:
        """
        Dispatch every ready socket event, then poll again (up to
        C{max_polls} batches) while events keep coming: answers that
        arrived meanwhile are handled without another pass through the
        reactor.  Sockets closed while dispatching a batch are closed after
        it, so a new socket cannot reuse an fd that still has an event in
        the batch.
        """
        handlers = self.handlers
        poll = self.epoll.poll
        closing: list[socket.socket] = []
        self._closing = closing
        try:
            for _ in range(self.max_polls):
                events = poll(0)
                if not events:
                    break
                for fd, ev in events:
                    handler = handlers.get(fd)
                    if handler is not None:
                        try:
                            handler(ev)
                        except Exception:
                            log.failure("relay event handler failed")
                            owner = getattr(handler, "__self__", None)
                            if isinstance(owner, Relay):
                                owner.abort("internal-error")
                if closing:
                    for sock in closing:
                        sock.close()
                    closing.clear()
        finally:
            self._closing = None
            for sock in closing:
                sock.close()

    # Lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """
        Start accepting clients.
        """
        from twisted.internet.task import LoopingCall

        # What exists at startup lives as long as the process: keep the
        # cyclic collector from walking it again and again (full
        # collections over Twisted's objects showed as p99 latency).
        gc.freeze()
        self.epoll.register(self.listener.fileno(), EPOLLIN)
        self.handlers[self.listener.fileno()] = self._accept
        self.listening = True
        self.reactor.addReader(self)
        self._sweeper = LoopingCall(self.sweep_timeouts)
        self._sweeper.clock = self.reactor
        self._sweeper.start(self._sweep_interval, now=False)

    def stop_listening(self) -> None:
        """
        Stop accepting; connections in flight go on.
        """
        if self.listening:
            self.listening = False
            fd = self.listener.fileno()
            self.handlers.pop(fd, None)
            self.epoll.unregister(fd)
            self.listener.close()

    def stop(self) -> None:
        """
        Stop accepting and close every connection.
        """
        if self.stopped:
            return
        self.stop_listening()
        for handler in tuple(self.handlers.values()):
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, Relay):
                owner.abort("shutdown")
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self.reactor.removeReader(self)
        self.stopped = True
        self.epoll.close()

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    # The accept loop ----------------------------------------------------------

    def _accept(self, ev: int) -> None:
        # The raw accept (socket.socket's own building block): the public
        # socket.accept() converts family and type to enums for every
        # connection.  Measured: +1.4 us per accept in a loop, and 6 % fewer
        # one-shot connections per CPU-second through the engine (wrk,
        # Connection: close), so it stays.
        accept = self.listener._accept
        family = int(self.listener.family)
        make = _RawSocket
        stream = socket.SOCK_STREAM
        clock = self.reactor
        tls = self.tls
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.pause_accepting(e)
                return
            sock = make(family, stream, 0, fd)
            if tls is not None:
                tls(self, sock, addr[:2])
                continue
            # An IPv4 address is already (host, port): [:2] returns it as is.
            session = ConnectionSession(self.route, clock, addr[:2])
            candidate = session.accepted()
            if candidate is None:
                sock.close()
                continue
            sock.setblocking(False)
            if candidate.__class__ is ReadFirst:
                Relay(self, sock, session).read_first(candidate)
            elif candidate.__class__ is Wait:
                Relay(self, sock, session).wait(candidate)
            else:
                Relay(self, sock, session).connect(candidate)

    #: Seconds to stop accepting after running out of file descriptors.
    accept_pause = 0.1

    def pause_accepting(self, error: OSError) -> None:
        """
        Out of fds (or memory): a pending connection stays in the backlog
        and the level-triggered listener stays readable, so stop watching
        it for a moment instead of spinning (or accepting clients that
        cannot get a backend socket).
        """
        if self._accept_paused or not self.listening:
            return
        self._accept_paused = True
        log.error("out of resources ({error}); pausing accepts for {pause}s", error=error, pause=self.accept_pause)
        fd = self.listener.fileno()
        self.epoll.modify(fd, 0)

        def resume() -> None:
            self._accept_paused = False
            if self.listening:
                self.epoll.modify(fd, EPOLLIN)

        self.reactor.callLater(self.accept_pause, resume)

    # Helpers for relays ---------------------------------------------------------

    def close(self, sock: socket.socket) -> None:
        closing = self._closing
        if closing is None:
            sock.close()
        else:
            closing.append(sock)

    def sweep_timeouts(self) -> None:
        """
        Fail the connect attempts whose deadline passed (and give the
        connected ones their keepalive, L{Relay.deadline_passed}).
        """
        timeouts = self.timeouts
        now = self.now()
        while timeouts and timeouts[0][0] <= now:
            _, relay, sock = timeouts.popleft()
            if relay is not None:
                relay.deadline_passed(sock)

    def resolve(self, host: str, port: int, resolver: Any = None) -> Any:
        """
        The address of a backend host name, from a
        L{lbproxy.health.resolver.Resolver}: at once from its last good
        lookup; only a name never resolved waits, for one bounded lookup.

        @param resolver: the connection's service's (default: the route's
            default service's, else the engine's own).
        @return: a Deferred firing with C{(family, sockaddr)}.
        """
        if resolver is None:
            resolver = getattr(self.route.default(), "resolver", None)
        if resolver is None:
            if self._resolver is None:
                from lbproxy.health.resolver import Resolver

                self._resolver = Resolver(self.reactor)
            resolver = self._resolver
        return resolver.resolve(host, port)
