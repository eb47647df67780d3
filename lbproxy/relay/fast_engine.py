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
from __future__ import annotations

import errno
import gc
import select
import socket
from _socket import socket as _RawSocket
from collections import deque
from typing import Any, Callable

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.listening.endpoints import listening_socket  # noqa: F401  (moved there; imported from here too)
from lbproxy.relay.fast_flow import BUFFER_SIZE, EPOLLIN
from lbproxy.relay.fast_relay import Relay
from lbproxy.relay.route import as_route
from lbproxy.relay.session import ConnectionSession, ReadFirst, Wait, route_options
from lbproxy.relay.sockopts import apply

__all__ = ["FastRelay", "Relay", "available", "listening_socket"]

log = Logger()

#: Accepts per wakeup, so a connection storm cannot starve the relay.
ACCEPT_BATCH = 64
def available() -> bool:
    """
    @return: whether this platform can run the fast engine.
    """
    return hasattr(select, "epoll")


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
        self.closing: list[socket.socket] | None = None
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
        self.closing = closing
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
                            # A Relay, or a TLS client still handshaking.
                            abort = getattr(getattr(handler, "__self__", None), "abort", None)
                            if abort is not None:
                                abort("internal-error")
                if closing:
                    for sock in closing:
                        sock.close()
                    closing.clear()
        finally:
            self.closing = None
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
            abort = getattr(getattr(handler, "__self__", None), "abort", None)
            if abort is not None:
                abort("shutdown")
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
            # Left in blocking mode: every recv/send on it says
            # MSG_DONTWAIT, which saves an ioctl per connection.
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
        closing = self.closing
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
