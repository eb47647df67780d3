"""
The service tree, assembled from a L{lbproxy.tap.ProxySpec}.

L{assemble} builds every part explicitly and returns them in an
L{Assembly}: the top L{MultiService} for twistd, and the parts themselves
for whoever composes more on top (the demo) or looks inside (tests).
Nothing is hung on the top service for others to find.

The order of the tree is the order of start: balancer housekeeping, the
proxy listener (behind the cluster gate in cluster mode), the admin site,
health checks.  Every listener binds before any starts (L{LBProxyService}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.logger import Logger

from lbproxy.endpoints import FastRelayService, ListenerService, ListenError, _Listener, somaxconn
from lbproxy.model.config import Config, ConfigError

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


class LBProxyService(MultiService):
    """
    The root of lbproxy's service tree.  Every listener below it is bound
    before any child starts, so a port that is taken (or an address not on
    this host) stops twistd with one line naming it, a non-zero exit and
    no traceback, before anything logs that it listens.

    @param listen: the proxy's endpoint description, named when the worker
        pool (which binds its own sockets) cannot bind.
    """

    def __init__(self, listen: str = "?") -> None:
        super().__init__()
        self.listen = listen

    def privilegedStartService(self) -> None:
        self._reporting_bind_errors(super().privilegedStartService)

    def startService(self) -> None:
        def bind_all_then_start() -> None:
            self.bind()
            MultiService.startService(self)

        self._reporting_bind_errors(bind_all_then_start)

    def bind(self) -> None:
        """
        Bind every listener of the tree now, or none.

        @raise SystemExit: naming the first that cannot bind.
        """
        self._reporting_bind_errors(lambda: [listener.bind() for listener in _listeners(self)])

    def _reporting_bind_errors(self, start: Any) -> None:
        try:
            start()
        except ListenError as e:
            self._unbind()
            raise SystemExit(f"lbproxy: {e}") from None
        except OSError as e:
            # The worker pool binds its own sockets.
            self._unbind()
            raise SystemExit(f"lbproxy: cannot listen on {self.listen}: {e.strerror or e}") from None

    def _unbind(self) -> None:
        for listener in _listeners(self):
            if not listener.running:
                listener.stopService()


def _listeners(service: Any) -> list[Any]:
    from lbproxy.control.listeners import ListenersService

    found = []
    if isinstance(service, (_Listener, ListenersService)):
        found.append(service)
    if IServiceCollection.providedBy(service):
        for child in service:
            found.extend(_listeners(child))
    return found


class _HealthCheckers(Service):
    """
    One L{lbproxy.health.checker.HealthChecker} per service, following the
    document: a new service's checks start, a removed one's stop.

    @ivar checkers: service name -> its checker.
    """

    name = "health"

    def __init__(self, table: Any, controller: Any, reactor: Any) -> None:
        self.table = table
        self.controller = controller
        self.reactor = reactor
        self.checkers: dict[str, Any] = {}
        self._unobserve: Any = None

    def startService(self) -> None:
        super().startService()
        self._unobserve = self.controller.observe(self)
        self.applied(None, self.table.document)

    def stopService(self) -> Any:
        if self._unobserve is not None:
            self._unobserve()
        for checker in self.checkers.values():
            checker.stopService()
        self.checkers.clear()
        return super().stopService()

    def applied(self, old: Any, new: Any) -> None:
        from lbproxy.health.checker import HealthChecker

        for name, checker in tuple(self.checkers.items()):
            if checker.balancer is not self.table.balancer(name):
                checker.stopService()
                del self.checkers[name]
        for name, balancer in self.table.balancers.items():
            checker = self.checkers.get(name)
            if checker is None:
                checker = self.checkers[name] = HealthChecker(balancer, self.reactor)
                checker.startService()
            else:
                checker.reconcile()


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
    handover = _request_takeover(spec)
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
        gate = LoadThenServe(controller, seed, reactor=reactor)
        gate.setName("cluster")
        gate.setServiceParent(top)
        membership = Membership(store, spec.node, admin_url(spec.admin.description), reactor=reactor)
        membership.setServiceParent(gate)
        parent: MultiService = gate
    else:
        parent = top
    if spec.workers > 1:
        _PortHold(spec.listen, spec.backlog, "worker pool's port").setServiceParent(parent)
    proxy.setServiceParent(parent)

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

    from lbproxy.health.checker import HealthChecker

    _HealthCheckers(table, controller, reactor).setServiceParent(top)
    # Graceful stop: SIGTERM drains the relay (lbproxy.control.lifecycle).
    lifecycle = _lifecycle(spec, proxy, table, reactor)
    lifecycle.setServiceParent(top)
    admin.add_status_provider(lifecycle.status)
    # Restart and upgrade (lbproxy.control.takeover): adopt, serve the control socket, drain the old.
    _wire_takeover(spec, handover, top, proxy, admin_listener, store, lifecycle, reactor)
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


def _lifecycle(spec: Any, proxy: Any, table: Any, reactor: Any) -> Any:
    """
    The graceful stop of C{proxy}: the worker pool drains its workers,
    the listeners of this process drain over every service's connections.
    """
    from lbproxy.control.lifecycle import Lifecycle, LocalDrain

    if hasattr(proxy, "drain"):
        drainable = proxy
    else:
        def balancers() -> tuple:
            return table.all()

        def connections() -> list[Any]:
            return [c for b in balancers() for group in tuple(b.connections.values()) for c in tuple(group)]

        def is_open(conn: Any) -> bool:
            return any(conn in group for b in balancers() for group in b.connections.values())

        drainable = LocalDrain(
            reactor, proxy.stop_accepting, connections,
            lambda: sum(b.totals.active for b in balancers()), is_open=is_open,
        )
    return Lifecycle(drainable, reactor, spec.grace, spread=spec.grace_spread, events=table.events)


def control_socket(spec: Any) -> str | None:
    """
    C{--control-socket}, else C{STATE_DIR/control.sock} with C{--state-dir}.
    """
    import os

    if spec.control_socket:
        return spec.control_socket
    return os.path.join(spec.state_dir, "control.sock") if spec.state_dir else None


def _request_takeover(spec: Any) -> Any:
    from lbproxy.control.takeover import TakeoverError, request

    path = control_socket(spec)
    if not spec.takeover:
        return None
    if path is None:
        raise SystemExit("lbproxy: --takeover needs --control-socket or --state-dir")
    try:
        handover = request(path)
    except TakeoverError as e:
        raise SystemExit(f"lbproxy: cannot take over: {e}") from None
    if handover is None:
        log.info("--takeover: no lbproxy on {path}; starting afresh", path=path)
    else:
        log.info("--takeover: pid {pid} handed over {names}", pid=handover.pid,
                 names=", ".join(f"{k} x{len(v)}" for k, v in handover.sockets.items()))
    return handover


def _wire_takeover(spec: Any, handover: Any, top: Any, proxy: Any, admin_listener: Any,
                   store: Any, lifecycle: Any, reactor: Any) -> None:
    from lbproxy.control.takeover import ControlServer, DrainOld

    workers = hasattr(proxy, "listening_fds") and not hasattr(proxy, "adopt_all")
    if handover is not None:
        if workers:
            proxy.adopt_workers(handover)
        elif hasattr(proxy, "adopt_all"):
            proxy.adopt_all(handover)
        else:
            sock = handover.take("proxy")
            if sock is not None:
                proxy.adopt(sock)
        sock = handover.take("admin")
        if sock is not None:
            admin_listener.adopt(sock)
    path = control_socket(spec)
    if path is not None:
        def sockets() -> list[tuple[str, int]]:
            named = proxy.listening_fds() if hasattr(proxy, "listening_fds") else [("proxy", proxy.listening_fd())]
            named.append(("admin", admin_listener.listening_fd()))
            return [(name, fd) for name, fd in named if fd is not None]

        ControlServer(path, lifecycle, sockets, release=getattr(store, "release", lambda: None),
                      reclaim=getattr(store, "claim", lambda: None),
                      stop_accepting=(admin_listener.stop_accepting,), reactor=reactor).setServiceParent(top)
    if handover is not None or spec.pid_file:
        if workers:
            ready = lambda: proxy.ready.called  # noqa: E731
        elif hasattr(proxy, "adopt_all"):
            ready = proxy.ready
        else:
            ready = lambda: proxy.listening_fd() is not None  # noqa: E731
        DrainOld(handover, ready, reactor, spec.pid_file).setServiceParent(top)


def _access_log(spec: Any, reactor: Any) -> Any:
    """
    The access log service (L{lbproxy.accesslog}), or C{None} for C{off}
    and for C{--workers} (each worker logs its own connections).
    """
    from lbproxy.accesslog import AccessLog, open_sink

    destination = getattr(spec, "access_log", "off")
    if not spec.settings.access_log or destination == "off" or spec.workers > 1:
        return None
    try:
        sink = open_sink(destination)
    except OSError as e:
        raise SystemExit(f"lbproxy: cannot start: --access-log {destination}: {e}") from None
    service = AccessLog(sink, spec.access_log_format, clock=reactor)
    service.setName("access-log")
    return service


def _open_store(spec: Any, factories: Any, reactor: Any) -> tuple[Any, Config]:
    """
    Open the store and pick the initial config; a store that cannot be used
    stops twistd with a one-line reason, not a traceback.
    """
    from lbproxy.control.store import open_store
    from lbproxy.model.config import StoreError
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


class _PortHold(_Listener):
    """
    Binds the worker pool's port with every other listener (with
    C{SO_REUSEPORT}, as the pool's own sockets), so a taken port stops the
    start before anything listens; lets go once started, just before the
    pool binds.
    """

    def _reuse_port(self) -> bool:
        return True

    def startService(self) -> None:
        Service.startService(self)
        if self._bound is not None:
            self._bound.close()
            self._bound = None

    def address(self) -> tuple[str, int] | None:
        return None


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

        service = WorkerPool({"workers": spec.workers, "engine": spec.engine, "backlog": spec.backlog},
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
