"""
Graceful stop: stop accepting, let open connections finish for a grace
period, then close what is left spread over a window, then exit 0.

One place for every engine and for C{--workers}: the L{Lifecycle} service
holds the state (C{running}, C{stopping}), answers SIGTERM and SIGINT, and
asks an L{IDrainable} to drain.  L{LocalDrain} drains an engine in this
process over two callables (stop accepting; the open connections) and the
balancer's count of admitted connections; the worker pool drains its
workers with the AMP command C{Drain}, each worker with its own
L{LocalDrain}.

Why our own signal handlers: twistd's re-raise the signal once the reactor
stops (the exit status is then "killed by SIGTERM"); a graceful stop asked
for by SIGTERM is a success, so lbproxy stops the reactor itself and twistd
exits 0.  A second signal stops at once (every connection reset).
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Interface, implementer

log = Logger()

#: Seconds between a connection's FIN (C{close}) and its reset (C{abort})
#: if it is still open.
ABORT_AFTER = 5.0
#: Seconds between two looks at the count of open connections.
POLL = 0.1


class IDrainable(Interface):
    """
    What relays connections, as a graceful stop sees it.
    """

    def drain(grace, spread):
        """
        Stop accepting at once, let connections finish for C{grace}
        seconds, then close what is left spread over C{spread} seconds
        (FIN, then a reset L{ABORT_AFTER} later).

        @return: a Deferred firing with C{(finished, cut)} once no
            connection is left.
        """

    def force():
        """
        Reset every open connection now; the pending L{drain} fires soon.
        """


@implementer(IDrainable)
class LocalDrain:
    """
    Drain one engine of this process.

    @param stop_accepting: stops taking connections (closes only this
        process's own copy of the listening socket).
    @param connections: the open connections (C{close(why)}, C{abort(why)}).
    @param active: how many connections are admitted (connecting included).
    """

    def __init__(
        self, clock: Any, stop_accepting: Callable[[], Any],
        connections: Callable[[], Iterable[Any]], active: Callable[[], int],
        abort_after: float = ABORT_AFTER, is_open: Callable[[Any], bool] | None = None,
    ) -> None:
        self.clock = clock
        self.is_open = is_open if is_open is not None else (lambda conn: conn in set(self.connections()))
        self.stop_accepting = stop_accepting
        self.connections = connections
        self.active = active
        self.abort_after = abort_after
        self.cut: set[Any] = set()
        self._done: defer.Deferred | None = None
        self._started = 0
        self._timers: list[Any] = []
        self._poll: Any = None

    @classmethod
    def of_balancer(cls, clock: Any, stop_accepting: Callable[[], Any], balancer: Any, **kw: Any) -> "LocalDrain":
        """
        A drain over a balancer's connections (C{Balancer.connections}).
        """
        def connections() -> list[Any]:
            return [c for group in tuple(balancer.connections.values()) for c in tuple(group)]

        def is_open(conn: Any) -> bool:
            return any(conn in group for group in balancer.connections.values())

        return cls(clock, stop_accepting, connections, lambda: balancer.totals.active, is_open=is_open, **kw)

    def drain(self, grace: float, spread: float) -> defer.Deferred:
        if self._done is not None:
            return self._done
        self._done = defer.Deferred()
        self.stop_accepting()
        self._started = self.active()
        from twisted.internet.task import LoopingCall

        self._poll = LoopingCall(self._check)
        self._poll.clock = self.clock
        self._poll.start(POLL, now=True)
        if self._done is not None and not self._done.called:
            self._timers.append(self.clock.callLater(grace, self._cut, spread))
        return self._done

    def _cut(self, spread: float) -> None:
        left = list(self.connections())
        if not left:
            return
        step = spread / len(left)
        for i, conn in enumerate(left):
            self._timers.append(self.clock.callLater(i * step, self._close, conn))
        self._timers.append(self.clock.callLater(spread + self.abort_after, self.force))

    def _close(self, conn: Any) -> None:
        if self.is_open(conn):
            self.cut.add(conn)
            conn.close("shutdown")
            self._timers.append(self.clock.callLater(self.abort_after, self._abort, conn))

    def _abort(self, conn: Any) -> None:
        if self.is_open(conn):
            conn.abort("shutdown")

    def force(self) -> None:
        for conn in list(self.connections()):
            self.cut.add(conn)
            conn.abort("shutdown")
        self._finish()

    def _check(self) -> None:
        if self.active() <= 0:
            self._finish()

    def _finish(self) -> None:
        done, self._done = self._done, None
        if done is None or done.called:
            return
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        cut = len(self.cut)
        self._done = done  # a later drain() answers the same
        done.callback((max(self._started - cut, 0), cut))


class Lifecycle(Service):
    """
    The process's state and its graceful stop.

    @ivar state: C{running}, then C{stopping} from the first SIGTERM.
    @param drainable: the L{IDrainable} of this process's relay.
    @param stop: what ends the process once drained (C{reactor.stop}).
    @param events: the balancer's event bus: a C{lifecycle} event tells
        the UI.
    """

    def __init__(
        self, drainable: Any, reactor: Any, grace: float = 30.0, spread: float = 5.0,
        events: Any = None, stop: Callable[[], Any] | None = None, install_signals: bool = True,
    ) -> None:
        self.drainable = drainable
        self.reactor = reactor
        self.grace = grace
        self.spread = spread
        self.events = events
        self._stop = stop if stop is not None else reactor.stop
        self.install_signals = install_signals
        self.state = "running"
        self.since: float | None = None
        self.result: tuple[int, int] | None = None
        self.stopped: defer.Deferred = defer.Deferred()
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        if self.install_signals:
            # After the reactor's own handlers (installed during startup).
            self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if not self.running:
            return
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._signalled)

    def stopService(self) -> Any:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
        return super().stopService()

    def _signalled(self, number: int, frame: Any = None) -> None:
        self.reactor.callFromThread(self.signalled, signal.Signals(number).name)

    def signalled(self, name: str = "SIGTERM") -> None:
        """
        The first signal starts a graceful stop, the next stops at once.
        """
        if self.state == "running":
            log.info("{name}: stopping gracefully (grace {grace}s, spread {spread}s); "
                     "{name} again stops at once", name=name, grace=self.grace, spread=self.spread)
            self.begin()
        else:
            log.warn("{name} while stopping: closing every connection now", name=name)
            self.drainable.force()

    def begin(self, grace: float | None = None, spread: float | None = None) -> defer.Deferred:
        """
        Start the graceful stop (once).

        @return: L{stopped}, fired with C{(finished, cut)}.
        """
        if self.state != "running":
            return self.stopped
        self.state = "stopping"
        self.since = self.reactor.seconds()
        grace = self.grace if grace is None else grace
        spread = self.spread if spread is None else spread
        self._publish({"state": "stopping", "grace": grace, "spread": spread, "since": self.since})
        d = defer.maybeDeferred(self.drainable.drain, grace, spread)
        d.addCallback(self._drained)
        d.addErrback(self._failed)
        return self.stopped

    def _drained(self, result: tuple[int, int]) -> None:
        finished, cut = result
        self.result = (finished, cut)
        log.info("stopped: {finished} connections finished, {cut} were cut", finished=finished, cut=cut)
        self._publish({"state": "stopped", "finished": finished, "cut": cut})
        self.stopped.callback(self.result)
        self._end()

    def _failed(self, failure: Any) -> None:
        log.failure("graceful stop failed; stopping now", failure)
        self._end()

    def _end(self) -> None:
        try:
            self._stop()
        except Exception:  # the reactor is stopping already
            pass

    def _publish(self, data: dict) -> None:
        if self.events is not None:
            self.events.publish("lifecycle", data)

    def status(self) -> dict[str, Any]:
        """
        For C{GET /api/v1/status}: C{state} and, while stopping, since when.
        """
        body: dict[str, Any] = {"state": self.state}
        if self.state != "running":
            body["stopping_since"] = self.since
            body["grace"] = self.grace
        return body
