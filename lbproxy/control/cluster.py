"""
Cluster mode: several lbproxy nodes sharing one config in etcd.

Three pieces, each small:

  - L{LoadThenServe} starts the proxy listener only once the config store
    has answered, retrying with backoff meanwhile, so a node never proxies
    with an empty pool because etcd was late;
  - L{Membership} registers this node under an etcd lease and keeps it
    alive, so the live nodes are the keys that have not expired;
  - L{NodesAPI} answers C{GET /api/v1/nodes} (mounted as an admin API
    extension) with the live nodes as this node sees them.

Health state is not shared: each node checks backends itself, and its UI
says which node's view it shows.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from klein import Klein
from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lbproxy.control.store.etcd import EtcdStore
from lbproxy.control.store.etcd_client import unb64
from lbproxy.control.store.history import START, IConfigHistory
from lbproxy.model.config import Config
from lbproxy.model.errors import StoreError, VersionConflict

log = Logger()


class LoadThenServe(MultiService):
    """
    Loads the config from the store, then starts its child services (the
    proxy listener, membership).

    An empty store is seeded with the command line's config
    (create-if-absent: when several nodes start at once, one seed wins and
    the others adopt it).  The loaded config replaces the balancer's at
    once, before any client is accepted, through the controller
    (L{ConfigController.install}), so its observers (health checks, the
    feed, workers) follow it like any other change.

    @ivar ready: a Deferred firing with the config once children started.
    @ivar attempts: how many loads were tried.
    @ivar seed_flags: the config flags the operator gave (C{--backend}, ...),
        named in a warning when the cluster's stored config wins over them.
    """

    def __init__(
        self,
        controller: Any,
        seed: Config,
        reactor: Any = None,
        max_backoff: float = 2.0,
        seed_flags: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.seed_flags = tuple(seed_flags)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.controller = controller
        self.store = controller.store
        self.balancer = controller.balancer
        self.seed = seed
        self.max_backoff = max_backoff
        self.ready: defer.Deferred = defer.Deferred()
        self.attempts = 0
        self._retry: Any = None
        self._loading: defer.Deferred | None = None

    def startService(self) -> None:
        # Children wait for the first load; only this service is running.
        Service.startService(self)
        self._attempt()

    def stopService(self) -> Any:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._loading is not None:
            self._loading.cancel()
        if self.ready.called:
            return super().stopService()
        Service.stopService(self)
        return None

    @defer.inlineCallbacks
    def _load(self) -> Any:
        config = yield self.store.load()
        if config is None:
            try:
                if IConfigHistory.providedBy(self.store):
                    self.store.describe(self.seed.version, START)
                yield self.store.save(self.seed, 0)
                log.info(
                    "config store was empty: stored the command line's config (version {version})",
                    version=self.seed.version,
                )
                config = self.seed
            except VersionConflict:
                config = yield self.store.load()
        return config

    def _attempt(self) -> None:
        self.attempts += 1
        d = self._loading = self._load()
        d.addCallbacks(self._loaded, self._failed)
        d.addErrback(lambda f: None if f.check(defer.CancelledError) else log.failure("startup failed", f))

    def _failed(self, reason: Any) -> None:
        self._loading = None
        if reason.check(defer.CancelledError):
            return
        delay = backoffPolicy(0.1, self.max_backoff, 2.0, jitter=lambda: 0.0)(self.attempts)
        error = reason.getErrorMessage() if reason.check(StoreError) else repr(reason.value)
        log.warn(
            "waiting for the config store before proxying (attempt {n}): {error}; retrying in {delay:.1f}s",
            n=self.attempts, error=error, delay=delay,
        )
        if self.running:
            self._retry = self._reactor.callLater(delay, self._attempt)

    def _loaded(self, config: Config | None) -> Any:
        self._loading = None
        if not self.running:
            return None
        if config is None:
            self._serve()
            return None
        if config is not self.seed and self.seed_flags:
            log.warn(
                "{flags} ignored: the cluster's config in {store} holds version {version}, which wins "
                "over the command line (every node with this --store and --store-prefix shares it)",
                flags=", ".join(self.seed_flags), store=getattr(self.store, "config_key", "the store"),
                version=config.version,
            )
            self.seed_flags = ()
        d = self.controller.install(config)
        d.addCallbacks(lambda _: self._serve(), self._unusable, errbackArgs=(config,))
        return d

    def _unusable(self, reason: Any, config: Config) -> None:
        # For example a strategy plugin this node does not have.
        log.error(
            "the stored config version {version} cannot be used here: {error}; "
            "not proxying, retrying in {delay}s",
            version=config.version, error=reason.getErrorMessage(), delay=self.max_backoff,
        )
        if self.running:
            self._retry = self._reactor.callLater(self.max_backoff, self._attempt)

    def _serve(self) -> None:
        if not self.running:
            return
        log.info(
            "config version {version} loaded from the store: starting the listener",
            version=self.balancer.config.version,
        )
        for service in self:
            service.startService()
        self.ready.callback(self.balancer.config)


class Membership(Service):
    """
    Keeps this node's key C{PREFIX/nodes/NAME} alive under an etcd lease.

    The key holds C{{"name", "admin_url", "since"}} (C{admin_url} may be a
    callable, asked at registration); it disappears when the
    node stops (the lease is revoked) or dies (the lease expires after
    C{ttl} seconds without a keepalive).

    @ivar lease: the current lease id, or C{None} while unregistered.
    """

    def __init__(
        self,
        store: EtcdStore,
        name: str,
        admin_url: str | Callable[[], str | None] | None = None,
        ttl: int = 10,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.store = store
        self.name = name
        self.admin_url = admin_url
        self.ttl = ttl
        self.lease: str | None = None
        self.since: float | None = None
        self._ticker: LoopingCall | None = None
        self._busy = False

    @property
    def key(self) -> str:
        return self.store.key(f"nodes/{self.name}")

    def startService(self) -> None:
        super().startService()
        self.since = self._reactor.seconds()
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = self._reactor
        self._ticker.start(self.ttl / 3.0, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        lease, self.lease = self.lease, None
        if lease is None:
            return None
        d = self.store.etcd.revoke(lease)
        d.addErrback(lambda f: log.warn("could not revoke lease: {e}", e=f.getErrorMessage()))
        d.addCallback(lambda _: None)
        return d

    def tick(self) -> defer.Deferred:
        """
        Register if unregistered, else renew the lease; one at a time.
        """
        if self._busy:
            return defer.succeed(None)
        self._busy = True
        d = self._keepalive() if self.lease else self._register()

        def done(result: Any) -> None:
            self._busy = False

        d.addErrback(lambda f: f.trap(StoreError))
        d.addBoth(done)
        return d

    @defer.inlineCallbacks
    def _register(self) -> Any:
        lease = yield self.store.etcd.grant(self.ttl)
        url = self.admin_url() if callable(self.admin_url) else self.admin_url
        value = json.dumps({"name": self.name, "admin_url": url, "since": self.since})
        yield self.store.etcd.put(self.key, value, lease)
        self.lease = lease
        log.info("registered node {name} in the cluster (lease {lease})", name=self.name, lease=lease)

    @defer.inlineCallbacks
    def _keepalive(self) -> Any:
        ttl = yield self.store.etcd.keepalive(self.lease)
        if not ttl:
            log.warn("lease {lease} of node {name} expired: registering again", lease=self.lease, name=self.name)
            self.lease = None
            yield self._register()

    @defer.inlineCallbacks
    def nodes(self) -> Any:
        """
        @return: a Deferred firing with the live nodes, sorted by name, each
            C{{"name", "admin_url", "since", "self"}}.
        """
        data = yield self.store.etcd.range(self.store.key("nodes/"), prefix=True)
        nodes = []
        for kv in data.get("kvs") or []:
            try:
                node = json.loads(unb64(kv.get("value", "")))
                name = str(node["name"])
            except (ValueError, KeyError, TypeError):
                continue
            nodes.append({
                "name": name,
                "admin_url": node.get("admin_url"),
                "since": node.get("since"),
                "self": name == self.name,
            })
        return sorted(nodes, key=lambda n: n["name"])

    def status(self) -> dict[str, Any]:
        """
        This node's part of C{GET /api/v1/status}.
        """
        return {"cluster": {"node": self.name, "registered": self.lease is not None, "since": self.since}}


class NodesAPI:
    """
    C{GET /api/v1/nodes}: the live nodes, as this node sees them.  Mount it
    with C{AdminApp.add_extension("nodes", NodesAPI(membership))}.
    """

    app = Klein()

    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    def resource(self) -> Any:
        return self.app.resource()

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """
        This extension's route for the admin app's C{openapi.json}.
        """
        obj = {"application/json": {"schema": {"type": "object"}}}
        return {"": {"get": {
            "summary": "The live lbproxy nodes of this cluster, as this node sees them.",
            "responses": {
                "200": {"description": "{node, nodes: [{name, admin_url, since, self}], store}", "content": obj},
                "503": {"description": "The config store (etcd) is unavailable.", "content": obj},
            },
        }}}

    @app.route("/", methods=["GET"], strict_slashes=False)
    async def nodes(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        store = self.membership.store
        try:
            nodes = await self.membership.nodes()
        except StoreError as e:
            request.setResponseCode(503)
            return json.dumps({"error": str(e), "node": self.membership.name, "store": store.status()}).encode()
        return json.dumps({"node": self.membership.name, "nodes": nodes, "store": store.status()}).encode()


def admin_url(endpoint: str, reactor: Any = None) -> str | None:
    """
    The URL other nodes show for this node's admin UI, from the C{--admin}
    endpoint description (C{None} if it is not TCP).
    """
    import socket

    from lbproxy.listening.endpoints import parse_endpoint

    try:
        ep = parse_endpoint(endpoint, reactor)
    except ValueError:
        return None
    if not ep.tcp:
        return None
    host, port = ep.host, ep.port
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def listening_admin_url(endpoint: str, service: Any) -> Callable[[], str | None]:
    """
    The admin URL as a callable: for C{--admin tcp:0} the port is known only
    once the admin service listens.
    """

    def url() -> str | None:
        static = admin_url(endpoint)
        where = service.address()
        if static and static.endswith(":0") and where is not None:
            return f"{static.rsplit(':', 1)[0]}:{where[1]}"
        return static

    return url


def mount_admin(admin: Any, membership: Membership, endpoint: str, service: Any) -> None:
    """
    Show the cluster in the admin API: C{GET /api/v1/nodes}, this node's
    name and registration in C{/api/v1/status}, and the admin URL other
    nodes list for this one.
    """
    membership.admin_url = listening_admin_url(endpoint, service)
    admin.add_extension("nodes", NodesAPI(membership))
    admin.add_status_provider(membership.status)


def default_node_name(admin: str) -> str:
    """
    A node name unique per host and admin port (C{HOST-PORT}).
    """
    import re
    import socket

    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:50] or "node"
    url = admin_url(admin)
    port = url.rsplit(":", 1)[1] if url else "0"
    return f"{host}-{port}"


__all__ = ["LoadThenServe", "Membership", "NodesAPI", "admin_url", "default_node_name", "mount_admin"]
