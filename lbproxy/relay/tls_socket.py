"""
One relayed socket speaking TLS, for the fast engine (L{lbproxy.relay.fast_tls}):
the few socket methods the engine's L{lbproxy.relay.fast_relay.Relay}
calls, over the standard library's C{_ssl} object on the raw non-blocking
descriptor, with OpenSSL's wants raised as C{BlockingIOError} like a
plain non-blocking socket's, so the one relay moves TLS bytes unchanged.
"""

from __future__ import annotations

import socket
import ssl
from _socket import socket as _RawSocket
from typing import Any

_NONBLOCK_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
_ENDED = (ssl.SSLZeroReturnError, ssl.SSLEOFError)
#: The largest plaintext of one TLS record: a read leaves OpenSSL's
#: buffer empty when it has room for one (no epoll event would say so).
RECORD = 16384


class _Socket(_RawSocket):
    """
    The engine's raw socket type, but one C{_ssl} can refer to (weakly).
    """

    __slots__ = ("__weakref__",)


def _referable(sock: Any) -> _Socket:
    """
    C{sock} (non-blocking) as a L{_Socket}: the same descriptor, and a
    zero timeout, without which C{_ssl} would wait in C{poll()} for what
    it wants.
    """
    return _Socket(sock.family, _NONBLOCK_STREAM, 0, sock.detach())


class TLSSocket:
    """
    A relayed socket speaking TLS: the few socket methods L{Relay} calls,
    over the C{_ssl} object, with OpenSSL's wants as C{BlockingIOError}
    (the C{recv}/C{send} flags are the plain sockets' business).

    @ivar drain: read until OpenSSL wants more (or the buffer is full),
        as an edge-triggered socket (the backend) must be read; else
        (the level-triggered client) only whole records, so that nothing
        stays decrypted inside OpenSSL, where no epoll event would say so.
    """

    __slots__ = ("raw", "tls", "drain")

    def __init__(self, raw: Any, tls: Any, drain: bool = False) -> None:
        self.raw = raw
        self.tls = tls
        self.drain = drain

    def fileno(self) -> int:
        return self.raw.fileno()

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """
        Read records (OpenSSL gives one per call, and C{buffer} has room
        for several); C{0} at the peer's end of stream (a close_notify, or a
        FIN without one).  Not draining, reading goes on while records come
        full (bulk) and room is left for a whole one: after a short record
        the kernel rarely has more, and if it does its level-triggered
        event comes again, where one more read would cost an exception to
        learn it is empty.  Draining, it goes on until OpenSSL wants more;
        a record cut by the buffer's end fills it, and a full read is read
        on at once by the relay.
        """
        read = self.tls.read
        size = len(buffer)
        try:
            total = n = read(size, buffer)
        except _WANT:
            raise BlockingIOError from None
        except _ENDED:
            return 0
        drain = self.drain
        if n and (total < size if drain else n == RECORD and size - total >= RECORD):
            view = memoryview(buffer)
            while True:
                try:
                    n = read(size - total, view[total:])
                except _ENDED:
                    n = 0
                except (ssl.SSLError, OSError):
                    break
                if not n:
                    self._ended()
                    break
                total += n
                if not (total < size if drain else n == RECORD and size - total >= RECORD):
                    break
        return total

    def _ended(self) -> None:
        """
        The peer's end (a close_notify reads as C{0}, a FIN without one
        raises) came behind the bytes just read: the kernel holds
        nothing more, so no epoll event would tell the relay (a peer may
        keep its TCP stream open, waiting for our close_notify).  Shutting
        our reading side makes the socket readable, and the next read says
        the end.
        """
        try:
            self.raw.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return self.tls.write(data)
        except _WANT:
            # OpenSSL wants the same bytes again: the relay keeps them all.
            raise BlockingIOError from None

    def shutdown(self, how: int) -> None:
        try:
            self.tls.shutdown()
        except (ssl.SSLError, OSError):
            # The close_notify is out; OpenSSL wants the peer's, later.
            pass
        self.raw.shutdown(how)

    def setblocking(self, flag: bool) -> None:
        """
        A socket's call, kept for any caller: this side is non-blocking
        already and must stay so (C{_ssl} waits in C{poll()} otherwise).
        A L{lbproxy.relay.fast_tls.TLSRelay} never asks, since its client
        flows start with no flags.
        """

    def setsockopt(self, *args: Any) -> None:
        self.raw.setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        return self.raw.getsockopt(*args)

    def getsockname(self) -> Any:
        return self.raw.getsockname()

    def close(self) -> None:
        self.raw.close()
