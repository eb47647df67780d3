"""
Graceful stop and takeover, wired into the service tree by
L{lbproxy.startup.assembly.assemble}.

What SIGTERM drains (the worker pool, or this process's listeners over
every service's connections: L{graceful_stop}), which listening sockets a
new process started with C{--takeover} gets over the control socket, and
when the old one may go (L{wire_takeover}).  The mechanisms themselves are
L{lbproxy.control.lifecycle} and L{lbproxy.control.takeover}.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

log = Logger()


def graceful_stop(spec: Any, proxy: Any, table: Any, reactor: Any) -> Any:
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


def request_takeover(spec: Any) -> Any:
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


def wire_takeover(spec: Any, handover: Any, top: Any, proxy: Any, admin_listener: Any,
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
