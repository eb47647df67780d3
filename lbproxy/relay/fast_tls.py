"""
The fast engine's TLS: listeners that terminate it and backends reached
over it, with the standard library's C{ssl} on the engine's non-blocking
sockets, driven by its epoll events.

Why the standard library here (the Twisted engine keeps pyOpenSSL): its
C{_ssl} object does a handshake step, a read or a write in one call into
OpenSSL, with no Python frames per record.  The engine's L{Relay} stays
the one relay: a TLS side is a L{lbproxy.relay.tls_socket.TLSSocket},
whose C{recv_into}/C{send} raise C{BlockingIOError} where OpenSSL wants
to read or write, as a plain non-blocking socket would.  C{splice} is off
for a relay with a TLS side (its bytes must go through OpenSSL).

The C{_ssl} object runs over memory BIOs (C{SSLContext._wrap_bio}: the
public C{wrap_bio} builds a Python C{SSLObject} around it, frames per
call), and the L{TLSSocket} moves the ciphertext between them and the
raw socket; a handshake is stepped the same way
(L{TLSSocket.handshake}).  Why not over the socket itself (two copies
fewer): see Half-close below.

A client is admitted and routed once its handshake is done (as on the
Twisted engine): strategies and the access log see the verified client
certificate's subject, the server name and the ALPN protocol
(L{lbproxy.relay.twisted_tls.TLSClient}); a client that fails its
handshake never costs a backend connection.  A handshake must finish
within the route's C{sni_timeout}.

Half-close: a TLS client's close_notify (or FIN) is the end of its
stream, and the backend gets a half-close as from a plain client; what
it answers still reaches the client, then lbproxy's close_notify (the
last direction to end sends its TLS destination one before the close,
L{TLSRelay._shut}).  A TLS side half-closed by lbproxy (the backend
ended first, or a backend over TLS when the client ended first) gets a
close_notify and a TCP FIN, and what it still sends is relayed.  Over
the socket this lost data: the standard library's C{shutdown} reads the
socket right after sending the close_notify (two C{SSL_shutdown} calls),
and OpenSSL discards the application data that read finds.  Over BIOs
that read finds only what lbproxy put in the incoming BIO, and
L{TLSSocket.shutdown} decrypts that first, holding it for the next read.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from cryptography import x509

from lbproxy.relay.fast_flow import _BAD, EPOLLIN, EPOLLRDHUP, FlowIO
from lbproxy.relay.fast_relay import Relay
from lbproxy.relay.session import ConnectionSession, ReadFirst, Wait, handshake_admitted
from lbproxy.relay.tls_socket import TLSSocket


class TLSRelay(Relay):
    """
    A L{Relay} one side of which (or both) speaks TLS: no splice; the
    client's end is what its read says (not C{EPOLLRDHUP}: records may
    still be in the kernel); a backend over TLS counts as connected once
    its handshake is done and its certificate verified.  A TLS side that
    lbproxy closes (L{close}, an end before the relay started) gets its
    close_notify first when nothing is left to send it, as on the Twisted
    engine.
    """

    __slots__ = ("clients", "backend_tls", "handshake")

    #: The client is a L{TLSSocket}, non-blocking from the start.
    client_flags = 0

    def __init__(self, engine: Any, sock: Any, session: ConnectionSession, clients: dict) -> None:
        super().__init__(engine, sock, session)
        self.clients = clients
        self.backend_tls: Any = None
        self.handshake: Any = None

    def _start_splice(self, flow: Any) -> None:
        pass

    def on_client(self, ev: int) -> None:
        FlowIO.on_client(self, ev & ~EPOLLRDHUP)

    def _shut(self, flow: Any, to_client: bool) -> bool:
        # A TLS destination gets its close_notify before its FIN, also from
        # the last direction to end (which closes the relay without a
        # half-close: a plain socket's close sends the FIN), or its peer
        # could not tell the end from a truncation.  A socket too full to
        # take the whole close_notify gets the rest once writable (an
        # empty pending send, then here again), and only then its FIN.
        if flow.dst.__class__ is not TLSSocket:
            return FlowIO._shut(self, flow, to_client)
        last = (self.up if to_client else self.down).shut
        try:
            flow.dst.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            flow.pending = b""
            self._wait_writable(flow, not to_client)
            return False
        except OSError:
            if not last:
                self._error(to_client)
                return True
        flow.shut = True
        if last:
            self._finish()
            return True
        return False

    def close(self, why: str) -> None:
        # lbproxy's own close of a relay (idle timeout, a drain's cut): each
        # TLS side still open, with nothing left to send it, gets its
        # close_notify first, as the Twisted engine's loseConnection sends
        # (before the relay started: see _finish).
        if not self.finished and self.up is not None:
            for sock, flow in ((self.client_sock, self.down), (self.backend_sock, self.up)):
                if sock.__class__ is TLSSocket and not flow.shut and flow.pending is None:
                    sock.notify_close()
        Relay.close(self, why)

    def _finish(self) -> None:
        # An end before any byte was relayed (every backend failed, the
        # queue timed out): the TLS client gets a clean end too.  (To a
        # client that reset, or one aborted, the send fails or is dropped.)
        if self.up is None and not self.finished and self.client_sock.__class__ is TLSSocket:
            self.client_sock.notify_close()
        Relay._finish(self)

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
        self.handshake = TLSSocket(self.backend_sock, ctx, False, name, drain=True)
        self.engine.handlers[self.bfd] = self._on_backend_handshake
        self._on_backend_handshake(ev)

    def _on_backend_handshake(self, ev: int) -> None:
        # The backend socket is edge-triggered for reads and writes alike:
        # a step reads it until drained, and what OpenSSL wants comes as
        # the next event.
        try:
            if self.handshake.handshake():
                return
        except (ssl.SSLError, OSError) as e:
            # Refused or unverified: a failed connect, tried elsewhere.
            self.handshake = None
            self._drop_backend()
            self._connect_failed(f"tls: {getattr(e, 'reason', None) or e}")
            return
        wrapped = self.handshake
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

    __slots__ = ("engine", "raw", "fd", "sock", "tls", "session", "clients", "name", "timer", "mask", "limit",
                 "__weakref__")

    def __init__(self, engine: Any, raw: Any, client: tuple, certificates: Any, clients: dict,
                 limit: Any = None) -> None:
        self.engine = engine
        #: the L{lbproxy.policy.limits.ProcessLimit} this handshake counts
        #: against while it is in progress (its C{begin_handshake} said yes).
        self.limit = limit
        self.raw = raw
        self.fd = raw.fileno()
        self.clients = clients
        self.name: str | None = None
        self.session = ConnectionSession(engine.route, engine.reactor, client)
        # The certificates in force now: a reload changes the next handshakes
        # only.  The SNI callback is given this handshake (its name, its tls).
        self.sock = TLSSocket(raw, certificates.fast, True, None, owner=self)
        self.tls = self.sock.tls
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
            want = self.sock.handshake()
        except (ssl.SSLError, OSError):
            self._fail("tls-handshake-failed")
            return
        if want:
            self._want(want)
        else:
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
        limit = self.limit
        if limit is not None:
            self.limit = None
            limit.end_handshake()
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
            # Refused (denied, no backend, full): a clean TLS end.
            self.sock.notify_close()
            self.engine.close(self.raw)
            return
        # Records that came behind the handshake wait in the TLS socket's
        # BIO: the relay reads its client once connected (Relay._connected).
        relay = TLSRelay(self.engine, self.sock, session, self.clients)
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
            (C{--max-connections}): each handshake asks it first
            (C{begin_handshake}), as on the Twisted engine.
        """
        self.server = server
        self.clients = clients
        self.limit = limit

    def __call__(self, engine: Any, sock: Any, client: tuple) -> None:
        sock.setblocking(False)
        server = self.server
        if server is not None:
            limit = self.limit
            if not handshake_admitted(engine.route, limit):
                sock.close()
                return
            try:
                handshake = ServerHandshake(engine, sock, client, server.certificates, self.clients, limit)
            except BaseException:
                if limit is not None:
                    limit.end_handshake()
                raise
            handshake.start()
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
