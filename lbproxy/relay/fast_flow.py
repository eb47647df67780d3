"""
The byte relay of the fast engine: one L{_Flow} per direction and the
L{FlowIO} half of a L{lbproxy.relay.fast_relay.Relay} that moves bytes.

A read is sent on at once and only the unsent remainder is buffered.
Backpressure: while one direction has unsent bytes its source is not read
(at most one buffer per direction).  Half-close: after a side's EOF and
once its bytes are flushed the other side gets C{shutdown(SHUT_WR)}.  A
direction whose reads fill the buffer switches to C{splice(2)} through a
pipe, so bulk bytes never enter Python.  A side with no file descriptor to
splice from (an C{ssl.SSLSocket} handshaken elsewhere) never switches: see
L{_Flow.can_splice}.
"""

from __future__ import annotations

import os
import select
import socket
from typing import Any

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

#: The backend socket's one registration (see L{FlowIO}).
BACKEND_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | select.EPOLLET

_HAVE_SPLICE = hasattr(os, "splice")
if _HAVE_SPLICE:
    _SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


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
    @ivar rflags: the C{recv} flags of C{src}; C{sflags}: the C{send}
        flags of C{dst}.  C{MSG_DONTWAIT} for an accepted client socket,
        which is left blocking (making it non-blocking is a syscall per
        connection) until the connection outlives its connect deadline;
        0 for a socket that is non-blocking itself (then the call passes
        no flags at all: parsing the two extra arguments measured about
        250 instructions a call), and for an C{ssl.SSLSocket}, which takes
        no flags.
    @ivar can_splice: whether bulk may switch to C{splice(2)}: not where
        either socket is an C{ssl.SSLSocket} (its bytes are not the fd's).
    """

    __slots__ = ("src", "dst", "pending", "inpipe", "pipe", "eof", "shut", "count", "rflags",
                 "sflags", "can_splice")

    def __init__(self, src: socket.socket, dst: socket.socket, rflags: int, sflags: int,
                 can_splice: bool = _HAVE_SPLICE) -> None:
        self.src = src
        self.dst = dst
        self.pending: bytes | None = None
        self.inpipe = 0
        self.pipe: tuple[int, int] | None = None
        self.eof = False
        self.shut = False
        self.count = 0
        self.rflags = rflags
        self.sflags = sflags
        self.can_splice = can_splice

    def close_pipe(self) -> None:
        pipe = self.pipe
        if pipe is not None:
            self.pipe = None
            os.close(pipe[0])
            os.close(pipe[1])



class FlowIO:
    """
    The byte-moving methods of a relay (a mixin of
    L{lbproxy.relay.fast_relay.Relay}, which supplies C{engine},
    C{session}, the sockets, their fds and masks, C{up}/C{down},
    C{bmissed} and C{_finish}).

    The client socket is level-triggered and its C{cmask} is what epoll
    watches.  The backend socket is edge-triggered, registered once for
    everything (L{BACKEND_EVENTS}): its C{bmask} is only what the relay
    wants now, so pausing and resuming it, or its EOF, costs no
    C{epoll_ctl}.  An edge is not repeated, so the relay reads a backend
    until it knows it is drained (a short read), remembers in C{bmissed}
    the read events that came while it was paused, and reads at once when
    it resumes.
    """

    __slots__ = ()

    def _set_client(self, mask: int) -> None:
        if mask != self.cmask:
            self.cmask = _set_mask(self.engine.epoll, self.cfd, self.cmask, mask)

    # on_client and on_backend are the handlers of every keep-alive event:
    # each moves what its source has at once (the one Python call per event;
    # a shared _read measured as two).  _after_send takes the rest.

    def on_client(self, ev: int) -> None:
        if ev & EPOLLOUT:
            if self._flush(self.down, True):
                return
        if ev & (_READ | _BAD) and self.cmask & EPOLLIN:
            flow = self.up
            if flow.pipe is not None:
                self._splice(flow, True, ev)
                return
            engine = self.engine
            try:
                if flow.rflags:
                    n = flow.src.recv_into(engine.buffer, 0, flow.rflags)
                else:
                    n = flow.src.recv_into(engine.buffer)
            except BlockingIOError:
                return
            except OSError:
                self._client_error()
                return
            if not n:
                self._eof(flow, True)
                return
            flow.count += n
            try:
                if flow.sflags:
                    sent = flow.dst.send(engine.view[:n], flow.sflags)
                else:
                    sent = flow.dst.send(engine.view[:n])
            except BlockingIOError:
                sent = 0
            except OSError:
                self._backend_error()
                return
            if sent < n or n == BUFFER_SIZE or ev & EPOLLRDHUP:
                self._after_send(flow, n, sent, True, ev)
        elif ev & EPOLLERR:
            self._client_error()
        elif ev & EPOLLHUP:
            self.engine.epoll.unregister(self.cfd)
            self.cmask |= _PARKED

    def on_backend(self, ev: int) -> None:
        if ev & EPOLLOUT and self.bmask & EPOLLOUT:
            if self._flush(self.up, False):
                return
        if ev & (_READ | _BAD):
            if not self.bmask & EPOLLIN:
                if ev & EPOLLERR:
                    self._backend_error()
                else:
                    self.bmissed |= ev & (_READ | _BAD)
                return
            flow = self.down
            if flow.pipe is not None:
                self._splice(flow, False, ev)
                return
            engine = self.engine
            try:
                if flow.rflags:
                    n = flow.src.recv_into(engine.buffer, 0, flow.rflags)
                else:
                    n = flow.src.recv_into(engine.buffer)
            except BlockingIOError:
                return
            except OSError:
                self._backend_error()
                return
            if not n:
                self._eof(flow, False)
                return
            flow.count += n
            if self.first_byte_pending:
                self.first_byte_pending = False
                self.session.first_response()
            elif flow.sflags:
                # A second read from the backend: likely a long-lived
                # connection (keep-alive), where the flags cost more than
                # the one ioctl that makes them unneeded.
                self.client_nonblocking()
            try:
                if flow.sflags:
                    sent = flow.dst.send(engine.view[:n], flow.sflags)
                else:
                    sent = flow.dst.send(engine.view[:n])
            except BlockingIOError:
                sent = 0
            except OSError:
                self._client_error()
                return
            if sent < n or n == BUFFER_SIZE or ev & EPOLLRDHUP:
                self._after_send(flow, n, sent, False, ev)

    def client_nonblocking(self) -> None:
        """
        Make the client socket non-blocking, so that its reads and writes
        need no C{MSG_DONTWAIT} argument from now on (see L{_Flow}).
        """
        self.client_sock.setblocking(False)
        self.up.rflags = self.down.sflags = 0

    def _resume_backend(self) -> None:
        """
        Read the backend again after a pause: what it sent meanwhile
        raised no new edge.
        """
        self.bmask |= _READ
        ev = EPOLLIN | self.bmissed
        self.bmissed = 0
        self.on_backend(ev)

    def _after_send(self, flow: _Flow, n: int, sent: int, from_client: bool, ev: int) -> None:
        """
        The uncommon ends of a read: keep what the destination did not
        take and stop reading until it has; a full buffer switches the
        direction to splice (and, from the edge-triggered backend, reads
        on at once); a FIN that came with the bytes is passed on.
        """
        if sent < n:
            flow.pending = self.engine.view[sent:n].tobytes()
            self._wait_writable(flow, from_client)
        elif n == BUFFER_SIZE:
            if flow.can_splice:
                self._start_splice(flow)
            if not from_client:
                if flow.pipe is not None:
                    self._splice(flow, False, ev)
                else:
                    self.on_backend(ev & ~EPOLLOUT)
        else:
            self._eof(flow, from_client)

    def _wait_writable(self, flow: _Flow, from_client: bool) -> None:
        if from_client:
            self._set_client(self.cmask & ~_READ)
            self.bmask |= EPOLLOUT
        else:
            # Paused with bytes perhaps still queued: read on resume.
            self.bmask &= ~_READ
            self.bmissed |= EPOLLIN
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
                sent = flow.dst.send(data, flow.sflags)
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
            self.bmask &= ~EPOLLOUT
        if flow.eof:
            return self._shut(flow, to_client)
        if to_client:
            self._resume_backend()
            return self.finished
        self._set_client(self.cmask | _READ)
        return False

    def _start_splice(self, flow: _Flow) -> None:
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        try:
            import fcntl

            size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except (OSError, AttributeError):
            try:
                size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
            except (OSError, AttributeError, NameError):
                size = 4096
        # splice(2) has no MSG_DONTWAIT: its socket side blocks unless the
        # socket itself is non-blocking (one ioctl, for bulk flows only).
        self.client_sock.setblocking(False)
        flow.pipe = (r, w, min(size, PIPE_SIZE))
        self.engine.splices += 1

    def _splice(self, flow: _Flow, from_client: bool, ev: int) -> None:
        """
        Move what the source has through the pipe.  From the client (level
        triggered) one pipe-full per event; from the backend (edge
        triggered) until a short splice says it is drained, and on to its
        EOF if the edge said a FIN came.
        """
        r, w, size = flow.pipe
        src, dst = flow.src.fileno(), flow.dst.fileno()
        while True:
            try:
                n = os.splice(src, w, size, flags=_SPLICE_FLAGS)
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
                sent = os.splice(r, dst, n, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._error(not from_client)
                return
            if sent < n:
                flow.inpipe = n - sent
                self._wait_writable(flow, from_client)
                return
            if from_client or (n < size and not ev & EPOLLRDHUP):
                return

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
            self.bmask &= ~_READ

    def _shut(self, flow: _Flow, to_client: bool) -> bool:
        """
        Half-close C{flow}'s destination; the relay ends once both
        directions are shut.

        @return: C{True} if the relay ended.
        """
        flow.shut = True
        if flow.pipe is not None:
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
