"""
How the worker pool stops: the service's stop (C{SIGTERM} to every worker,
C{SIGKILL} after C{stop_timeout}), the graceful drain and the forced close
of a stop with a grace (L{lbproxy.control.lifecycle.IDrainable}), and the
signals the parent passes on (C{SIGUSR1}: reopen the access log).

A mixin of L{lbproxy.control.workers.WorkerPool}, whose state it uses:
C{_live()}, C{_close_sockets()}, C{_failed()}, C{tls}, C{reactor}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.logger import Logger

from lbproxy.control.worker_protocol import Drain, Force

log = Logger(namespace="lbproxy.control.workers")


class WorkerStopping:
    """
    The stopping half of L{lbproxy.control.workers.WorkerPool}.
    """

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.tls.stop()
        for unfollow in self._unfollow.values():
            unfollow()
        self._unfollow = {}
        waits = []
        for worker in self._live():
            waits.append(worker.ended)
            try:
                worker.transport.signalProcess("TERM")
            except Exception:
                pass
        done = defer.DeferredList(waits)
        killer = self.reactor.callLater(self.stop_timeout, self._kill_all)
        done.addBoth(lambda r: killer.cancel() if killer.active() else None)
        done.addBoth(lambda _: self._close_sockets())
        return done

    def signal_workers(self, signum: int) -> None:
        """
        Send every live worker the signal C{signum} (C{SIGUSR1}: reopen
        the access log, L{lbproxy.accesslog.log.ForwardReopen}).
        """
        for worker in self._live():
            try:
                worker.transport.signalProcess(signum)
            except error.ProcessExitedAlready:
                pass

    def _kill_all(self) -> None:
        for worker in self._live():
            log.warn("worker {index} ignored SIGTERM; killing it", index=worker.index)
            try:
                worker.transport.signalProcess("KILL")
            except Exception:
                pass

    # Graceful stop (lbproxy.control.lifecycle.IDrainable) ------------------------

    def drain(self, grace: float, spread: float) -> defer.Deferred:
        """
        Every worker stops accepting and drains; fires with the sums of
        C{(finished, cut)} once every worker has exited.
        """
        self.draining = True
        live = self._live()
        answers = []
        for worker in live:
            d = worker.call(Drain, grace=grace, spread=spread)
            d.addCallback(lambda a: (a["finished"], a["cut"]))
            d.addErrback(lambda f, w=worker: (self._failed(f, w, "drain"), (0, 0))[1])
            answers.append(d)

        def summed(results: list) -> defer.Deferred:
            total = (sum(r[0] for r in results), sum(r[1] for r in results))
            return defer.DeferredList([w.ended for w in live]).addCallback(lambda _: total)

        # Our copies go too: once the workers close theirs, nothing listens
        # and new clients are refused at once (they would wait, unaccepted,
        # in a queue no one reads).  After a takeover the new process holds
        # the sockets.
        self._close_sockets()
        return defer.gatherResults(answers).addCallback(summed)

    def force(self) -> None:
        for worker in self._live():
            worker.call(Force).addErrback(lambda f: None)
