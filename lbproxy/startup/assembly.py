"""
The service tree, assembled from a L{lbproxy.startup.spec.ProxySpec}.

L{assemble} builds every part explicitly and returns them in an
L{Assembly}: the top L{MultiService} for twistd, and the parts themselves
for whoever composes more on top (the demo) or looks inside (tests).
Nothing is hung on the top service for others to find.

The order of the tree is the order of start: balancer housekeeping, the
proxy listener (behind the cluster gate in cluster mode), the admin site,
health checks.  Every listener binds before any starts
(L{lbproxy.startup.binding.LBProxyService}); graceful stop and takeover are wired
by L{lbproxy.startup.takeover_wiring}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from lbproxy.startup.binding import LBProxyService, PortHold
from lbproxy.listening.endpoints import somaxconn
from lbproxy.listening.listener_services import FastRelayService, ListenerService
from lbproxy.health.checker import HealthCheckers
from lbproxy.model.config import Config
from lbproxy.model.errors import ConfigError
from lbproxy.startup.takeover_wiring import graceful_stop, request_takeover, wire_takeover

log = Logger()


@dataclass
class Assembly:
    """
    The parts of a running lbproxy.

    @ivar top: the root service (give it to twistd, or start it).
    @ivar proxy: the proxy listener's service (named C{proxy}).
    @ivar admin: the L{lbproxy.web.AdminApp}.
    @ivar admin_listener: the admin site's listener (named C{admin}).
    @ivar membership: cluster mode's L{lbproxy.control.cluster.Membership}.
    @ivar gate: cluster mode's L{lbproxy.control.cluster.LoadThenServe}.
    """

    spec: Any
    top: MultiService
    balancer: Any
    controller: Any
    store: Any
    proxy: Any
    admin: Any
    admin_listener: ListenerService
    membership: Any = None
    gate: Any = None
    lifecycle: Any = None
    table: Any = None
    listeners: Any = None


class _BalancerService(Service):
    """
    Runs the balancers' housekeeping (idle timeouts, slow start) while the
    application runs (a L{lbproxy.policy.services.ServiceTable} or one balancer).
    """

    def __init__(self, balancer: Any) -> None:
        self.balancer = balancer

    def startService(self) -> None:
        super().startService()
        self.balancer.start()

    def stopService(self) -> Any:
        self.balancer.stop()
        return super().stopService()


def assemble(spec: Any, reactor: Any = None) -> Assembly:
    """
    Build lbproxy's service tree from C{spec}; nothing starts until
    C{top} does.

    @raise SystemExit: if the config store cannot be used.
    """
    if reactor is None:
        from twisted.internet import reactor
    from lbproxy.control.controller import ConfigController, ControllerService
    from lbproxy.health.resolver import DNSLookup, Resolver
    from lbproxy.interfaces import IConfigObserver
    from lbproxy.policy.balancer import Balancer
    from lbproxy.policy.plugins import strategy_factories
    from lbproxy.web import admin_service

    from lbproxy.control.listeners import ListenerManager
    from lbproxy.model.service import iter_backends
    from lbproxy.policy.services import ServiceTable

    factories = strategy_factories()
    # --takeover: the running process hands its sockets (and lock) over first.
    handover = request_takeover(spec)
    seed = spec.seed_document
    if spec.etcd_endpoints:
        from lbproxy.control.store.etcd import EtcdStore

        store = EtcdStore(list(spec.etcd_endpoints), spec.store_prefix, reactor=reactor,
                          keep=getattr(spec, "history", 100))
        document = seed
    else:
        store, document = _open_store(spec, factories, reactor)
    servers = list(spec.dns_servers) if spec.dns_servers else None
    resolver = Resolver(reactor, DNSLookup(reactor, servers=servers), refresh=spec.dns_refresh)
    table = ServiceTable(document, factories, spec.settings, reactor=reactor, resolver=resolver)
    balancer = table.main() or next(iter(table.balancers.values()))
    resolver.track(b.host for b in iter_backends(document))
    manager = None
    if spec.workers <= 1:
        manager = ListenerManager(table, spec.engine, spec.backlog, reactor=reactor, settings=spec.settings)
    controller = ConfigController(table, store, manager, seed=seed)
    access = _access_log(spec, reactor)
    if access is not None:
        table.log_access_to(access.pending)
    controller.observe(resolver)
    top = LBProxyService(spec.listen.description)
    resolver.setServiceParent(top)
    if access is not None:
        access.setServiceParent(top)
    ControllerService(controller).setServiceParent(top)
    _BalancerService(table).setServiceParent(top)

    proxy = _proxy_service(spec, table, reactor, manager, controller)
    if spec.workers > 1:
        # The worker pool binds every listener's sockets before a change is stored.
        controller.listeners = proxy
    membership = gate = None
    if spec.etcd_endpoints:
        from lbproxy.control.cluster import LoadThenServe, Membership, admin_url

        # The proxy listens only once the config came from etcd.
        gate = LoadThenServe(controller, seed, reactor=reactor, seed_flags=spec.seed_flags)
        gate.setName("cluster")
        gate.setServiceParent(top)
        membership = Membership(store, spec.node, admin_url(spec.admin.description), reactor=reactor)
        membership.setServiceParent(gate)
        parent: MultiService = gate
    else:
        parent = top
    if spec.workers > 1:
        PortHold(spec.listen, spec.backlog, "worker pool's port").setServiceParent(parent)
    proxy.setServiceParent(parent)
    if getattr(proxy, "access_log", None) is not None:
        from lbproxy.accesslog.log import ForwardReopen

        ForwardReopen(proxy, reactor).setServiceParent(top)

    admin, services = admin_service(spec, controller, balancer, reactor)
    for service in services:
        service.setServiceParent(top)
    admin_listener = top.getServiceNamed("admin")
    if membership is not None:
        from lbproxy.control.cluster import mount_admin

        mount_admin(admin, membership, spec.admin.description, admin_listener)

    # The worker pool (--workers) follows every applied config and reports its workers.
    if IConfigObserver.providedBy(proxy):
        controller.observe(proxy)
        admin.add_status_provider(proxy.status)

    HealthCheckers(table, controller, reactor).setServiceParent(top)
    # Graceful stop: SIGTERM drains the relay (lbproxy.control.lifecycle).
    lifecycle = graceful_stop(spec, proxy, table, reactor)
    lifecycle.setServiceParent(top)
    admin.add_status_provider(lifecycle.status)
    # Restart and upgrade (lbproxy.control.takeover): adopt, serve the control socket, drain the old.
    wire_takeover(spec, handover, top, proxy, admin_listener, store, lifecycle, reactor)
    cap = somaxconn()
    if cap is not None and spec.backlog > cap:
        log.warn(
            "the proxy's backlog {backlog} is above net.core.somaxconn ({cap}): the kernel queues at most {cap}",
            backlog=spec.backlog, cap=cap,
        )
    return Assembly(
        spec=spec, top=top, balancer=balancer, controller=controller, store=store, proxy=proxy,
        admin=admin, admin_listener=admin_listener, membership=membership, gate=gate,
        lifecycle=lifecycle,
        table=table, listeners=manager,
    )


def _access_log(spec: Any, reactor: Any) -> Any:
    """
    The access log service (L{lbproxy.accesslog}), or C{None} for C{off}
    and for C{--workers} (each worker writes it; L{lbproxy.accesslog.log.ForwardReopen}).
    """
    from lbproxy.accesslog.log import AccessLog
    from lbproxy.accesslog.sinks import open_sink

    destination = getattr(spec, "access_log", "off")
    if not spec.settings.access_log or destination == "off":
        return None
    try:
        sink = open_sink(destination)
    except OSError as e:
        raise SystemExit(f"lbproxy: cannot start: --access-log {destination}: {e}") from None
    if spec.workers > 1:
        # The workers write it (OpenAccessLog); the parent forwards SIGUSR1.
        sink.close()
        return None
    service = AccessLog(sink, spec.access_log_format, clock=reactor)
    service.setName("access-log")
    return service


def _open_store(spec: Any, factories: Any, reactor: Any) -> tuple[Any, Config]:
    """
    Open the store and pick the initial config; a store that cannot be used
    stops twistd with a one-line reason, not a traceback.
    """
    from lbproxy.control.store import open_store
    from lbproxy.model.errors import StoreError
    from lbproxy.policy.plugins import build_strategy

    try:
        store, config = open_store(spec.state_dir, spec.seed_document, list(spec.seed_flags), reactor,
                                   keep=getattr(spec, "history", 100))
    except StoreError as e:
        raise SystemExit(f"lbproxy: cannot start: {e}") from None
    try:
        for service in config.services:
            build_strategy(service.strategy, factories)
    except ConfigError as e:
        raise SystemExit(
            f"lbproxy: cannot start: the stored config in {spec.state_dir} cannot be used: {e}"
        ) from None
    return store, config


def _proxy_service(spec: Any, table: Any, reactor: Any, manager: Any, controller: Any) -> Service:
    """
    The proxy listeners, named C{proxy}: the worker pool, or the listener
    manager's listeners on every service's endpoints (lbproxy/relay/).
    """
    if manager is not None:
        from lbproxy.control.listeners import ListenersService

        service = ListenersService(manager, lambda: controller.document)
        service.setName("proxy")
        return service
    balancer = table.main() or next(iter(table.balancers.values()))
    if spec.workers > 1:
        from lbproxy.control.workers import WorkerPool

        log_to = getattr(spec, "access_log", "off")
        service = WorkerPool({"workers": spec.workers, "engine": spec.engine, "backlog": spec.backlog,
                              "access_log": (log_to, spec.access_log_format)
                              if spec.settings.access_log and log_to != "off" else None},
                             table, reactor)
    elif spec.engine == "fast":
        service = FastRelayService(balancer, spec.listen, spec.backlog, reactor=reactor)
    else:
        from lbproxy.relay.twisted_engine import ProxyFactory

        service = ListenerService(
            spec.listen, ProxyFactory(balancer, reactor), spec.backlog, "proxy (twisted engine)", reactor
        )
    service.setName("proxy")
    return service
