"""
Bind every listener of the service tree before any service starts.

L{LBProxyService} is the root of the tree: a port that is taken (or an
address not on this host) stops the start with one line naming it, before
anything logs that it listens, and nothing stays bound.  L{PortHold} takes
part in that for the worker pool, whose sockets the workers bind later.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceCollection, MultiService, Service

from lbproxy.listening.listener_services import ListenError, Listener
from lbproxy.model.errors import ConfigError


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
        self._reporting_bind_errors(lambda: [listener.bind() for listener in listeners_of(self)])

    def _reporting_bind_errors(self, start: Any) -> None:
        try:
            start()
        except ListenError as e:
            self._unbind()
            raise SystemExit(f"lbproxy: {e}") from None
        except ConfigError as e:
            # The stored config names a TLS file that is gone or broken.
            self._unbind()
            raise SystemExit(f"lbproxy: cannot start: {e}") from None
        except OSError as e:
            # The worker pool binds its own sockets.
            self._unbind()
            raise SystemExit(f"lbproxy: cannot listen on {self.listen}: {e.strerror or e}") from None

    def _unbind(self) -> None:
        for listener in listeners_of(self):
            if not listener.running:
                listener.stopService()


def listeners_of(service: Any) -> list[Any]:
    from lbproxy.control.listeners import ListenersService

    found = []
    if isinstance(service, (Listener, ListenersService)):
        found.append(service)
    if IServiceCollection.providedBy(service):
        for child in service:
            found.extend(listeners_of(child))
    return found


class PortHold(Listener):
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
