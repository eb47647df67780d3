"""
The certificates in force on every TLS listener, and their reload.

L{TLSStore} follows the document through the listener manager: L{check}
builds every service's contexts before a change is stored (so a bad
certificate or a key that does not match refuses the change, nothing
stored), L{commit} puts them in force on the listeners' L{ServerTLS}, for
new handshakes only.  Every C{interval} seconds it also compares the
files' mtime, inode and size (one C{stat} each, on the reactor), and
reads the ones that changed again in a thread, with a timeout; a failure
keeps the certificates in force and is logged (without any key).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task, threads
from twisted.logger import Logger

from lbproxy.model.tls import BackendTLS, ServiceTLS
from lbproxy.relay.tls import Certificates, ServerTLS, TLSConfigError, build, client_creator, files_of, signature

log = Logger()


def fast_client(config: BackendTLS, host: str) -> tuple:
    """
    The fast engine's context and server name for a backend over TLS.

    @raise TLSConfigError: the CA bundle cannot be read.
    """
    import ssl

    from lbproxy.relay.ssl_contexts import client_context

    if config.verify and config.ca:
        # The same checks (and messages) as the Twisted engine's creator.
        client_creator(config, host)
    try:
        return client_context(config, host)
    except (ssl.SSLError, OSError) as e:
        raise TLSConfigError(f"ca {config.ca!r}: {e}") from None


def needs_tls(services: list) -> bool:
    """
    Whether a listener of these services needs a TLS-capable engine: one
    terminates TLS, or one of their backends is reached over it.
    """
    return any(s.tls is not None or any(b.tls is not None for b in s.backends) for s in services)


class TLSStore:
    """
    @ivar servers: listener key -> its L{ServerTLS}.
    @ivar clients: C{(BackendTLS, host)} -> the connection creator, read by
        the Twisted engine when it connects to a backend over TLS.
    @ivar services: listener key -> the service whose certificates it serves.
    @ivar fast_clients: C{(BackendTLS, host)} -> C{(ssl.SSLContext, server
        name)}, the same for the fast engine (L{fast_client}).
    """

    def __init__(self, reactor: Any, interval: float = 5.0, read_timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.interval = interval
        self.read_timeout = read_timeout
        self.servers: dict[str, ServerTLS] = {}
        self.services: dict[str, str] = {}
        self.clients: dict[tuple[BackendTLS, str], Any] = {}
        self.fast_clients: dict[tuple[BackendTLS, str], tuple] = {}
        self._built: dict[tuple, Certificates] = {}
        self._checked: dict[tuple, Any] = {}
        self._loop: Any = None
        self._reading: set[str] = set()

    # The change path ----------------------------------------------------------

    def certificates(self, config: ServiceTLS, name: str) -> tuple[Certificates, tuple]:
        files = signature(files_of(config))
        key = (config, name, files)
        found = self._built.get(key)
        if found is None:
            try:
                found = build(config, name)
            except TLSConfigError as e:
                raise TLSConfigError(f"service {name!r}: tls: {e}") from None
            self._built = {key: found}  | {k: v for k, v in self._built.items() if k[1] != name}
        return found, files

    def check(self, document: Any) -> None:
        """
        Build every context C{document} needs (files read now, bounded).

        @raise TLSConfigError: naming the service and the file.
        """
        for s in document.services:
            # Certificates in force whose config is unchanged are the
            # poll's business: a file broken on disk must not refuse an
            # unrelated change.
            if s.tls is not None and not self._in_force(s.name, s.tls):
                self.certificates(s.tls, s.name)
            for b in s.backends:
                if b.tls is not None and (b.tls, b.host) not in self.clients:
                    try:
                        # Kept for commit, which must not fail after the change is stored.
                        self._checked[(b.tls, b.host)] = (client_creator(b.tls, b.host),
                                                          fast_client(b.tls, b.host))
                    except TLSConfigError as e:
                        raise TLSConfigError(f"service {s.name!r}: backend {b.id!r}: tls: {e}") from None

    def _in_force(self, name: str, config: ServiceTLS) -> bool:
        return any(
            self.services.get(key) == name and server.config == config for key, server in self.servers.items()
        )

    def commit(self, wanted: dict[str, list]) -> None:
        """
        Put the certificates of the document in force (C{wanted}: listener
        key -> its services, L{lbproxy.model.service.sharing}).
        """
        for key, services in wanted.items():
            service = services[0]
            if service.tls is None:
                self.servers.pop(key, None)
                self.services.pop(key, None)
                continue
            server = self.servers.get(key)
            if server is not None and server.config == service.tls:
                self.services[key] = service.name
                continue
            certificates, files = self.certificates(service.tls, service.name)
            if server is None:
                # tls turned on where the endpoint listens already (the fast
                # engine reads it per connection), or a worker pool's parent.
                self.servers[key] = ServerTLS(service.tls, certificates, files)
            elif server.certificates is not certificates:
                server.replace(service.tls, certificates, files)
                log.info("tls: service {service} serves new certificates on {key}", service=service.name, key=key)
            self.services[key] = service.name
        for key in tuple(self.servers):
            if key not in wanted:
                del self.servers[key]
                self.services.pop(key, None)
        clients = {}
        fast = {}
        for services in wanted.values():
            for s in services:
                for b in s.backends:
                    if b.tls is not None:
                        key = (b.tls, b.host)
                        if key in self.clients:
                            clients[key] = self.clients[key]
                            fast[key] = self.fast_clients.get(key) or fast_client(b.tls, b.host)
                        else:
                            clients[key], fast[key] = (self._checked.get(key)
                                                       or (client_creator(b.tls, b.host), fast_client(b.tls, b.host)))
        self._checked.clear()
        # Updated in place: the engines hold these dicts.
        self.clients.clear()
        self.clients.update(clients)
        self.fast_clients.clear()
        self.fast_clients.update(fast)

    def info(self, service: str) -> list[dict]:
        """
        The certificates a service serves now (nothing secret).
        """
        for key, name in self.services.items():
            if name == service and key in self.servers:
                return [dict(i) for i in self.servers[key].certificates.info]
        return []

    def expiries(self) -> list[tuple[str, str, float]]:
        """
        C{(service, first name, not_after)} of every certificate in force.
        """
        seen: set = set()
        out = []
        for key, name in self.services.items():
            server = self.servers.get(key)
            if server is None or name in seen:
                continue
            seen.add(name)
            for i in server.certificates.info:
                out.append((name, (i["names"] or [i["subject"]])[0], i["not_after"]))
        return out

    # Files changed on disk ----------------------------------------------------

    def start(self) -> None:
        if self._loop is None and self.interval > 0:
            self._loop = task.LoopingCall(self.poll)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def poll(self) -> Any:
        """
        Read again, off the reactor, the certificates whose files changed.

        @return: a Deferred firing once those reads are done.
        """
        from twisted.internet import defer

        pending = []
        for key, server in tuple(self.servers.items()):
            if key in self._reading:
                continue
            files = signature(files_of(server.config))
            if files == server.files:
                continue
            self._reading.add(key)
            name = self.services.get(key, "")
            d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), build, server.config, name)
            d.addTimeout(self.read_timeout, self.reactor)
            d.addCallbacks(self._reread, self._failed, (key, server, files), None, (key, server, files))
            d.addBoth(self._done, key)
            pending.append(d)
        return defer.gatherResults(pending, consumeErrors=True) if pending else defer.succeed(None)

    def _reread(self, certificates: Certificates, key: str, server: ServerTLS, files: tuple) -> None:
        if self.servers.get(key) is server:
            server.replace(server.config, certificates, files)
            log.info("tls: certificate files of {key} changed: new handshakes get the new ones", key=key)

    def _failed(self, failure: Any, key: str, server: ServerTLS, files: tuple) -> None:
        # Not read again until the files change once more.
        server.files = files
        log.error("tls: certificate files of {key} changed but cannot be used, the old ones stay: {why}",
                  key=key, why=failure.getErrorMessage())

    def _done(self, result: Any, key: str) -> None:
        self._reading.discard(key)
