"""
One relayed socket speaking TLS, for the fast engine (L{lbproxy.relay.fast_tls}):
the few socket methods the engine's L{lbproxy.relay.fast_relay.Relay}
calls, over the standard library's C{_ssl} object on two memory BIOs,
with the ciphertext moved between them and the raw non-blocking socket
here, and OpenSSL's wants raised as C{BlockingIOError} like a plain
non-blocking socket's, so the one relay moves TLS bytes unchanged.

Why memory BIOs: over the socket itself, the standard library's
C{shutdown} reads the socket right after sending the close_notify (its
second C{SSL_shutdown}), and OpenSSL discards the application data that
read finds: a peer still sending when lbproxy half-closed it lost what
waited in the socket.  Over BIOs the incoming BIO holds only what was put
there, and L{TLSSocket.shutdown} decrypts that first (L{TLSSocket.held});
C{SSL_read} still returns application data after our close_notify.  It
costs two more copies of each byte (into and out of a BIO); the socket
is read once per relayed chunk (OpenSSL over the socket read each record
in two calls) and written about once per record, as before.
"""

from __future__ import annotations

import socket
import ssl
from ssl import MemoryBIO, SSLWantReadError
from typing import Any

from lbproxy.relay.fast_flow import BUFFER_SIZE, EPOLLIN, EPOLLOUT

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
_ENDED = (ssl.SSLZeroReturnError, ssl.SSLEOFError)
#: The largest plaintext of one TLS record.
RECORD = 16384
#: The most ciphertext a handshake step takes from the socket at once:
#: records that came behind the handshake stay in the incoming BIO and
#: must fit one relay buffer, decrypted, at the first read.
HANDSHAKE_READ = 64 * 1024
#: Ciphertext per raw C{send}: about one TLS 1.3 record, as OpenSSL
#: writes over a socket.  One C{send} of a whole chunk measured a fifth
#: more CPU per MiB relayed on loopback (the kernel transmits a large
#: write at once, in the sender's time; small ones are corked and sent on
#: the peer's acknowledgements).
SLICE = RECORD + 22

# Ciphertext from the socket on its way into a BIO (one engine per thread:
# a call uses it from its recv to its BIO write, with nothing between).
_SCRATCH = bytearray(BUFFER_SIZE)
_SCRATCH_VIEW = memoryview(_SCRATCH)


class TLSSocket:
    """
    A relayed socket speaking TLS: the few socket methods L{Relay} calls,
    over the C{_ssl} object on memory BIOs, with OpenSSL's wants as
    C{BlockingIOError} (the C{recv}/C{send} flags are the plain sockets'
    business).  Nothing stays inside it where the relay, back in epoll,
    would not come for it: see L{recv_into} and L{send}.

    @ivar drain: read until the socket is drained (or the buffer is full),
        as an edge-triggered socket (the backend) must be read; else (the
        level-triggered client) one socket read per call, of no more than
        the buffer can take decrypted, so that no whole record stays in
        the incoming BIO, where no epoll event would say so.
    @ivar out: ciphertext the socket did not take yet; it goes first.
    @ivar owed: plaintext bytes already encrypted into C{out} that the
        last L{send} said it did not take (so the relay waits for
        C{EPOLLOUT}); the relay offers them again, and they are skipped.
    @ivar held: plaintext decrypted at L{shutdown}; L{recv_into} returns it first.
    @ivar ready: whole records may wait in the incoming BIO (behind a
        handshake, or a read that filled its buffer): decrypt them before
        reading the socket.
    @ivar ended: the peer's end (close_notify, or a FIN) was read.
    @ivar closing: the TCP half-close L{shutdown} was asked for once its
        close_notify is all sent (C{None}: not asked).
    """

    __slots__ = ("raw", "tls", "incoming", "outgoing", "drain", "out", "owed", "held", "ready", "ended",
                 "closing")

    def __init__(self, raw: Any, context: ssl.SSLContext, server_side: bool,
                 server_hostname: str | None = None, owner: Any = None, drain: bool = False) -> None:
        """
        @param raw: the non-blocking socket.
        @param owner: what C{context}'s SNI callback is given.
        """
        self.raw = raw
        self.incoming = incoming = MemoryBIO()
        self.outgoing = outgoing = MemoryBIO()
        self.tls = context._wrap_bio(incoming, outgoing, server_side, server_hostname, owner=owner, session=None)
        self.drain = drain
        self.out: Any = None
        self.owed = 0
        self.held: bytes | None = None
        self.ready = False
        self.ended = False
        self.closing: int | None = None

    def fileno(self) -> int:
        return self.raw.fileno()

    # The handshake ---------------------------------------------------------

    def handshake(self) -> int:
        """
        Step the handshake as far as the socket allows: read until
        OpenSSL is done or the socket is drained (so an edge-triggered
        socket is read enough too), send what OpenSSL wrote after each step
        (TLS 1.3 session tickets after the server's last).

        @return: C{0} once done and sent, else the epoll event it waits for.
        @raise ssl.SSLError: refused or unverified; C{OSError}: the socket failed.
        """
        if self.out is not None and not self._send_out():
            return EPOLLOUT
        do_handshake = self.tls.do_handshake
        while True:
            try:
                do_handshake()
            except SSLWantReadError:
                if self.outgoing.pending and not self._transmit(self.outgoing.read()):
                    return EPOLLOUT
                if not self._feed(HANDSHAKE_READ):
                    return EPOLLIN
                continue
            except ssl.SSLError:
                self._alert()
                raise
            if self.outgoing.pending and not self._transmit(self.outgoing.read()):
                return EPOLLOUT
            self.ready = self.incoming.pending > 0
            return 0

    def _alert(self) -> None:
        """
        Send the alert OpenSSL wrote as the handshake failed (the peer
        learns why, as it did over the socket), if the socket takes it.
        """
        data = self.outgoing.read()
        if data and self.out is None:
            try:
                self.raw.send(data)
            except OSError:
                pass

    def _feed(self, limit: int) -> bool:
        """
        Move up to C{limit} bytes from the socket into the incoming BIO (a
        FIN as its end).

        @return: whether the socket had anything (C{False}: would block).
        """
        try:
            n = self.raw.recv_into(_SCRATCH, limit)
        except BlockingIOError:
            return False
        if n:
            self.incoming.write(_SCRATCH_VIEW[:n])
        else:
            self.incoming.write_eof()
        return True

    def _transmit(self, data: Any) -> bool:
        """
        Send C{data} (nothing is in C{out}); what the socket does not take
        is kept in C{out}.

        @return: whether it all went.
        """
        try:
            n = self.raw.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            self.out = memoryview(data)[n:]
            return False
        return True

    def _send_out(self) -> bool:
        """
        @return: whether C{out} is all sent now.
        """
        out = self.out
        try:
            n = self.raw.send(out)
        except BlockingIOError:
            return False
        if n < len(out):
            self.out = out[n:]
            return False
        self.out = None
        return True

    # Reading ------------------------------------------------------------------

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """
        Read what the peer sent: the held plaintext first, whole records
        waiting in the incoming BIO, then the socket; C{0} at the peer's
        end of stream (a close_notify, or a FIN without one).

        Not draining (the level-triggered client): one socket read, of at
        most what leaves room for every record it completes, so everything
        decrypted fits the buffer and nothing whole stays behind (the
        kernel's remainder raises its level-triggered event again).
        Draining (the edge-triggered backend): socket reads until a short
        one says it is drained, or the buffer is full; a full buffer is
        read on at once by the relay, which finds the rest in the BIO.
        """
        size = len(buffer)
        view = memoryview(buffer)
        total = 0
        held = self.held
        if held is not None:
            total = min(len(held), size)
            view[:total] = held[:total]
            self.held = held[total:] or None
            if total == size:
                return total
        if self.ended:
            if total:
                self._signal_end()
            return total
        read = self.tls.read
        incoming = self.incoming
        drain = self.drain
        while True:
            if self.ready:
                self.ready = False
                got = limit = 0
            else:
                limit = size - total - incoming.pending
                if not drain:
                    limit -= RECORD
                    if limit <= 0:
                        if total:
                            break
                        limit = size
                elif limit < RECORD:
                    limit = RECORD
                if limit > BUFFER_SIZE:
                    limit = BUFFER_SIZE
                try:
                    got = self.raw.recv_into(_SCRATCH, limit)
                except BlockingIOError:
                    break
                if got:
                    incoming.write(_SCRATCH_VIEW[:got])
                else:
                    incoming.write_eof()
            while True:
                try:
                    n = read(size - total, view[total:])
                except SSLWantReadError:
                    break
                except _ENDED:
                    n = 0
                if not n:
                    # A close_notify reads as 0 (or raises, once ours is out).
                    self.ended = True
                    if total:
                        self._signal_end()
                    return total
                total += n
                if total == size:
                    self.ready = True
                    if self.outgoing.pending:
                        self._answer()
                    return total
            if not drain or got < limit:
                break
        if self.outgoing.pending:
            self._answer()
        if total:
            return total
        raise BlockingIOError

    def _signal_end(self) -> None:
        """
        The peer's end came behind the bytes just returned: the kernel
        holds nothing more, so no epoll event would tell the relay (a peer
        may keep its TCP stream open, waiting for our close_notify).
        Shutting our reading side makes the socket readable, and the next
        read says the end.
        """
        try:
            self.raw.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def _answer(self) -> None:
        """
        Send what OpenSSL wrote while reading (a TLS 1.3 key update's
        answer); what the socket does not take goes before the next send.
        """
        data = self.outgoing.read()
        if self.out is not None:
            self.out = bytes(self.out) + data
            return
        try:
            self._transmit(data)
        except OSError:
            pass  # the socket's error comes with the next call

    # Writing ------------------------------------------------------------------

    def send(self, data: Any, flags: int = 0) -> int:
        """
        Encrypt and send C{data}: all of it is taken if the socket takes
        all its ciphertext.  Else the ciphertext left is kept (C{out}) and
        the count returned is one byte short, so that the relay waits for
        C{EPOLLOUT} and offers that byte again (C{owed}, skipped then);
        while C{out} is not all sent, C{BlockingIOError}.  At most one
        chunk's ciphertext is ever kept.
        """
        if self.out is not None:
            if not self._send_out():
                raise BlockingIOError
            if self.closing is not None:
                return len(data)  # the close_notify is out: nothing more is written
        owed = self.owed
        if owed:
            n = len(data)
            if n <= owed:
                self.owed = owed - n
                return n
            self.owed = 0
            data = memoryview(data)[owed:]
        try:
            n = self.tls.write(data)
        except _WANT:
            # A renegotiation: OpenSSL wants the same bytes again.
            self.owed = owed
            raise BlockingIOError from None
        cipher = self.outgoing.read()
        size = len(cipher)
        if size <= SLICE:
            try:
                sent = self.raw.send(cipher)
            except BlockingIOError:
                sent = 0
        else:
            sent = 0
            view = memoryview(cipher)
            send = self.raw.send
            while sent < size:
                try:
                    k = send(view[sent:sent + SLICE])
                except BlockingIOError:
                    break
                sent += k
                if k < SLICE:
                    break
        if sent < size:
            self.out = memoryview(cipher)[sent:]
            self.owed = 1
            return owed + n - 1
        return owed + n

    def shutdown(self, how: int) -> None:
        """
        Send the close_notify, then the TCP half-close.  What the peer
        sent and is already in the incoming BIO is decrypted first and
        held for L{recv_into}: the standard library's C{shutdown} reads
        on after the close_notify, and OpenSSL discards the application
        data such a read finds; it finds nothing now, and reading later
        (C{SSL_read}) still gets everything.

        @raise BlockingIOError: the socket did not take the whole
            close_notify (its buffer was full): the rest is kept in
            C{out} and nothing is half-closed yet.  Once the socket is
            writable, L{send} sends the rest and a second call half-closes;
            a FIN before it, the peer would read as a truncation.
        """
        if self.closing is None:
            self.closing = how
            self._hold()
            try:
                self.tls.shutdown()
            except (ssl.SSLError, OSError):
                pass  # the close_notify is written; OpenSSL wants the peer's, later
            data = self.outgoing.read()
            if self.out is not None:
                data = bytes(self.out) + data
                self.out = None
            try:
                if data and not self._transmit(data):
                    raise BlockingIOError
            except BlockingIOError:
                raise
            except OSError:
                pass  # a broken connection: the half-close below says so, or the next read
        elif self.out is not None and not self._send_out():
            raise BlockingIOError
        self.raw.shutdown(how)

    def notify_close(self) -> None:
        """
        Send the close_notify before a close (not a half-close) that
        lbproxy decides (an idle timeout, a graceful stop's cut), if
        nothing encrypted is still waiting to go: then the peer can tell
        the end from a truncation.  With ciphertext still waiting, no
        close_notify: the close cuts the stream, and the peer must see it
        cut.
        """
        if self.out is not None or self.owed or self.closing is not None:
            return
        try:
            self.tls.shutdown()
        except (ssl.SSLError, OSError):
            pass  # the close_notify is written; OpenSSL wants the peer's, which no one waits for
        data = self.outgoing.read()
        if data:
            try:
                self.raw.send(data)
            except OSError:
                pass

    def _hold(self) -> None:
        if self.ended:
            return
        read = self.tls.read
        parts = [self.held] if self.held is not None else []
        while True:
            try:
                part = read(BUFFER_SIZE)
            except SSLWantReadError:
                break
            except _ENDED:
                part = b""
            except (ssl.SSLError, OSError):
                break  # a broken stream: the next read says so
            if not part:
                self.ended = True
                break
            parts.append(part)
        if parts:
            self.held = b"".join(parts) or None
            self.ready = False

    # The rest of a socket's calls ---------------------------------------------

    def setblocking(self, flag: bool) -> None:
        """
        A socket's call, kept for any caller: this side is non-blocking
        already and must stay so.  A L{lbproxy.relay.fast_tls.TLSRelay}
        never asks, since its client flows start with no flags.
        """

    def setsockopt(self, *args: Any) -> None:
        self.raw.setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        return self.raw.getsockopt(*args)

    def getsockname(self) -> Any:
        return self.raw.getsockname()

    def close(self) -> None:
        self.raw.close()
