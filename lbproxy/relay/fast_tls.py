"""
The fast engine's TLS: listeners that terminate it and backends reached
over it, with the standard library's C{ssl} on the engine's non-blocking
sockets, driven by its epoll events.

Why the standard library here (the Twisted engine keeps pyOpenSSL): its
C{_ssl} socket object reads and writes the file descriptor in C, so a
relayed chunk costs one call into OpenSSL, where a memory BIO costs a
copy in and a copy out through Python for every record.  The engine's
L{Relay} stays the one relay: a TLS side is a L{TLSSocket}, whose
C{recv_into}/C{send} raise C{BlockingIOError} where OpenSSL wants to read
or write, as a plain non-blocking socket would.  C{splice} is off for a
relay with a TLS side (its bytes must go through OpenSSL).

The C{_ssl} object is made with C{SSLContext._wrap_socket} on the raw
socket: the public C{wrap_socket} builds a Python C{SSLSocket} around it
(five more system calls and as many Python frames per connection, and
three frames per read), which measured as a tenth of a full handshake's
cost here.

A client is admitted and routed once its handshake is done (as on the
Twisted engine): strategies and the access log see the verified client
certificate's subject, the server name and the ALPN protocol
(L{lbproxy.relay.twisted_tls.TLSClient}); a client that fails its
handshake never costs a backend connection.  A handshake must finish
within the route's C{sni_timeout}.

Half-close: when one side ends, a TLS side gets a close_notify and a
TCP FIN; OpenSSL may discard what that side sends after it (the Twisted
engine closes such a side altogether).
"""

from __future__ import annotations

import socket
import ssl
from _socket import socket as _RawSocket
from typing import Any

from cryptography import x509

from lbproxy.relay.fast_flow import _BAD, EPOLLIN, EPOLLOUT, EPOLLRDHUP, FlowIO
from lbproxy.relay.fast_relay import Relay
from lbproxy.relay.session import ConnectionSession, ReadFirst, Wait

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

    def setblocking(self, flag: bool) -> None:
        """
        Nothing to do: the raw socket under OpenSSL is non-blocking from
        the start (the relay calls this on a plain client socket, which
        starts blocking and reads with C{MSG_DONTWAIT}).
        """

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
            total = read(size, buffer)
        except _WANT:
            raise BlockingIOError from None
        except _ENDED:
            return 0
        n = total
        if self.drain:
            if n and total < size:
                view = memoryview(buffer)
                while n and total < size:
                    try:
                        n = read(size - total, view[total:])
                    except _ENDED:
                        self._ended()
                        break
                    except (ssl.SSLError, OSError):
                        break
                    total += n
                if not n:
                    self._ended()
        elif n == RECORD:
            view = memoryview(buffer)
            while n == RECORD and size - total >= RECORD:
                try:
                    n = read(size - total, view[total:])
                except _ENDED:
                    self._ended()
                    break
                except (ssl.SSLError, OSError):
                    break
                total += n
            if not n:
                self._ended()
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
        The relay makes a long-lived client non-blocking: this side is
        already, and must stay so (C{_ssl} waits in C{poll()} otherwise).
        """

    def setsockopt(self, *args: Any) -> None:
        self.raw.setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        return self.raw.getsockopt(*args)

    def getsockname(self) -> Any:
        return self.raw.getsockname()

    def close(self) -> None:
        self.raw.close()


class TLSRelay(Relay):
    """
    A L{Relay} one side of which (or both) speaks TLS: no splice; the
    client's end is what its read says (not C{EPOLLRDHUP}: records may
    still be in the kernel); a backend over TLS counts as connected once
    its handshake is done and its certificate verified.
    """

    __slots__ = ("clients", "backend_tls", "handshake")

    def __init__(self, engine: Any, sock: Any, session: ConnectionSession, clients: dict) -> None:
        super().__init__(engine, sock, session)
        self.clients = clients
        self.backend_tls: Any = None
        self.handshake: Any = None

    def _start_splice(self, flow: Any) -> None:
        pass

    def on_client(self, ev: int) -> None:
        FlowIO.on_client(self, ev & ~EPOLLRDHUP)

    def connect(self, candidate: Any) -> None:
        tls = candidate.backend.tls
        self.backend_tls = None if tls is None else (tls, candidate.host)
        Relay.connect(self, candidate)

    def _on_connect(self, ev: int) -> None:
        if self.backend_tls is None or ev & _BAD:
            Relay._on_connect(self, ev)
            return
        tls, host = self.backend_tls
        found = self.clients.get((tls, host))
        if found is None:
            from lbproxy.relay.tlsreload import fast_client

            found = self.clients[(tls, host)] = fast_client(tls, host)
        ctx, name = found
        raw = self.backend_sock = _referable(self.backend_sock)
        self._follow_deadline(raw)
        self.handshake = ctx._wrap_socket(raw, False, name, owner=None, session=None)
        self.engine.handlers[self.bfd] = self._on_backend_handshake
        self._on_backend_handshake(ev)

    def _on_backend_handshake(self, ev: int) -> None:
        # The backend socket is edge-triggered for reads and writes alike:
        # what OpenSSL wants comes as the next event.
        try:
            self.handshake.do_handshake()
        except _WANT:
            return
        except (ssl.SSLError, OSError) as e:
            # Refused or unverified: a failed connect, tried elsewhere.
            self.handshake = None
            self._drop_backend()
            self._connect_failed(f"tls: {getattr(e, 'reason', None) or e}")
            return
        wrapped = TLSSocket(self.backend_sock, self.handshake, drain=True)
        self.handshake = None
        self.backend_sock = wrapped
        self._follow_deadline(wrapped)
        # What the backend sent after its handshake raised no edge of its own.
        self._connected(ev | EPOLLIN)

    def _follow_deadline(self, sock: Any) -> None:
        # The connect deadline names the backend socket it is for: a
        # backend that never finishes its handshake fails at it too.
        deadline = self.deadline
        if deadline is not None:
            deadline[2] = sock


class ServerHandshake:
    """
    A client of a TLS listener until its handshake is done: then its
    session hears C{accepted} and a L{TLSRelay} takes it over.
    """

    __slots__ = ("engine", "raw", "fd", "tls", "session", "clients", "name", "timer", "mask", "hook",
                 "__weakref__")

    def __init__(self, engine: Any, raw: Any, client: tuple, certificates: Any, clients: dict,
                 hook: Any = None) -> None:
        self.engine = engine
        #: the L{FastTLS} counting this handshake while it is in progress.
        self.hook = hook
        self.raw = raw = _referable(raw)
        self.fd = raw.fileno()
        self.clients = clients
        self.name: str | None = None
        self.session = ConnectionSession(engine.route, engine.reactor, client)
        # The certificates in force now: a reload changes the next handshakes only.
        self.tls = certificates.fast._wrap_socket(raw, True, None, owner=self, session=None)
        self.mask = 0
        self.timer: Any = None

    def start(self) -> None:
        engine = self.engine
        engine.handlers[self.fd] = self.step
        timeout = getattr(engine.route, "sni_timeout", 0.0) or 5.0
        self.timer = engine.reactor.callLater(timeout, self._timed_out)
        self.step(0)

    def step(self, ev: int) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._want(EPOLLIN)
            return
        except ssl.SSLWantWriteError:
            self._want(EPOLLOUT)
            return
        except (ssl.SSLError, OSError):
            self._fail("tls-handshake-failed")
            return
        self._done()

    def _want(self, mask: int) -> None:
        if mask != self.mask:
            epoll = self.engine.epoll
            if self.mask:
                epoll.modify(self.fd, mask)
            else:
                epoll.register(self.fd, mask)
            self.mask = mask

    def _forget(self) -> None:
        hook = self.hook
        if hook is not None:
            self.hook = None
            hook.handshaking -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        engine = self.engine
        engine.handlers.pop(self.fd, None)
        if self.mask:
            self.mask = 0
            if not engine.stopped:
                engine.epoll.unregister(self.fd)

    def _timed_out(self) -> None:
        self.timer = None
        self._fail("tls-timeout")

    def abort(self, why: str) -> None:
        """
        Close the client now (the engine stops, or this handshake's
        handler failed), as a L{Relay} is aborted.
        """
        if self.session.finished:
            return
        self._fail(why)

    def _fail(self, why: str) -> None:
        self._forget()
        self.session.closing(why)
        self.engine.close(self.raw)
        self.session.ended(0, 0)

    def _done(self) -> None:
        from lbproxy.relay.twisted_tls import TLSClient

        self._forget()
        tls = self.tls
        session = self.session
        der = tls.getpeercert(True)
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else None
        session.client = TLSClient(session.client, subject, self.name, tls.selected_alpn_protocol())
        answer = session.accepted()
        if answer is None:
            self.engine.close(self.raw)
            return
        relay = TLSRelay(self.engine, TLSSocket(self.raw, tls), session, self.clients)
        if answer.__class__ is ReadFirst:
            # Routing by the first bytes means nothing inside TLS.
            relay.close("tls-no-route")
        elif answer.__class__ is Wait:
            relay.wait(answer)
        else:
            relay.connect(answer)


class FastTLS:
    """
    The hook a fast engine's listener calls per accepted socket when TLS
    is involved (L{lbproxy.relay.fast_engine.FastRelay.tls}): it
    terminates TLS when C{server} (an L{lbproxy.relay.tls.ServerTLS}) is
    set, and reaches backends over TLS with the store's client contexts.
    """

    def __init__(self, server: Any, clients: dict, limit: Any = None) -> None:
        """
        @param limit: the process's L{lbproxy.policy.limits.ProcessLimit}
            (C{--max-connections}): handshakes in progress count against
            it with the connections admitted, so clients that never finish
            theirs cannot hold more sockets than it allows.
        """
        self.server = server
        self.clients = clients
        self.limit = limit
        #: handshakes in progress through this hook.
        self.handshaking = 0

    def __call__(self, engine: Any, sock: Any, client: tuple) -> None:
        sock.setblocking(False)
        server = self.server
        if server is not None:
            limit = self.limit
            if limit is not None and limit.active + self.handshaking >= limit.limit:
                engine.route.refused("rejected")
                sock.close()
                return
            self.handshaking += 1
            ServerHandshake(engine, sock, client, server.certificates, self.clients, self).start()
            return
        session = ConnectionSession(engine.route, engine.reactor, client)
        answer = session.accepted()
        if answer is None:
            sock.close()
            return
        relay = TLSRelay(engine, sock, session, self.clients)
        if answer.__class__ is ReadFirst:
            relay.read_first(answer)
        elif answer.__class__ is Wait:
            relay.wait(answer)
        else:
            relay.connect(answer)


def install(engine: Any, hook: FastTLS | None) -> None:
    """
    Give a running fast engine its TLS hook (C{None}: plain from now on).
    A listener terminating TLS also gets C{TCP_DEFER_ACCEPT}: the client
    speaks first, so the accept comes with its ClientHello and the first
    handshake step does not wait for another epoll round.
    """
    engine.tls = hook
    listener = getattr(engine, "listener", None)
    if listener is None or not engine.listening or not hasattr(socket, "TCP_DEFER_ACCEPT"):
        return
    route = engine.route
    if hook is not None and hook.server is not None:
        seconds = max(1, int(getattr(route, "sni_timeout", 5.0) or 5.0))
    elif getattr(route, "routes_by_sni", False):
        return
    else:
        seconds = 0
    try:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, seconds)
    except OSError:
        pass
