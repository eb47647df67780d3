"""
Restart and upgrade without refusing a connection: a new lbproxy takes the
listening sockets of the running one over its control socket.

The running process listens on C{--control-socket} (a UNIX socket,
C{STATE_DIR/control.sock} by default with C{--state-dir}).  A process
started with the same flags plus C{--takeover}, before it builds anything:

 1. connects and sends C{{"op": "takeover"}};
 2. the old process stops its control listener (which removes the path),
    releases the state directory's lock (its config becomes read-only:
    changes are refused until it exits) and sends a duplicate of every
    listening socket (SCM_RIGHTS: the proxy's, the admin's, each worker's)
    with one line naming them; it keeps accepting meanwhile;
 3. the new process claims the lock, builds its tree on those sockets
    (L{Handover.take}) instead of binding, starts accepting (its workers
    too), then sends C{{"op": "drain"}};
 4. the old process stops accepting (it closes only its own copies: the
    kernel keeps each socket, and the connections queued on it, while the
    new process holds it) and drains (L{lbproxy.control.lifecycle}): it
    exits when its last connection ends or at the end of its grace period.

No listening socket is closed while the new process needs it, so no
connection is refused or reset; a connection waits in the accept queue at
worst.  Without a process on the control socket, C{--takeover} just starts.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

log = Logger()

#: Seconds the new process waits for the old one's answer.
TIMEOUT = 15.0


class TakeoverError(Exception):
    """
    The running process could not hand over (the message says why).
    """


class Handover:
    """
    What the new process got from the old one: listening sockets by name
    and the connection to tell it to drain.
    """

    def __init__(self, conn: socket.socket, sockets: dict[str, list[socket.socket]], pid: int) -> None:
        self.conn = conn
        self.sockets = sockets
        self.pid = pid

    def take(self, name: str) -> socket.socket | None:
        """
        The next socket handed over as C{name} (C{None} if none is left).
        """
        left = self.sockets.get(name)
        return left.pop(0) if left else None

    def take_all(self, name: str) -> list[socket.socket]:
        return self.sockets.pop(name, [])

    def drain_old(self) -> None:
        """
        Tell the old process to stop accepting and drain (once this one
        accepts on every socket).  A few bytes on a local socket: it does
        not block.
        """
        try:
            self.conn.setblocking(False)
            self.conn.send(b'{"op": "drain"}\n')
        except OSError as e:
            log.error("could not tell pid {pid} to drain: {e}", pid=self.pid, e=e)
        log.info("took over from pid {pid}; it drains now", pid=self.pid)
        for left in self.sockets.values():
            for sock in left:
                log.warn("a socket handed over was not used: {sock}", sock=sock)
                sock.close()


def request(path: str, timeout: float = TIMEOUT) -> Handover | None:
    """
    Take over from the process on the control socket C{path} (blocking:
    before the reactor runs).

    @return: the L{Handover}, or C{None} if no process listens there.
    @raise TakeoverError: if one answers but does not hand over.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    except OSError as e:
        conn.close()
        raise TakeoverError(f"cannot connect to {path}: {e.strerror or e}") from None
    try:
        conn.sendall(b'{"op": "takeover"}\n')
        data, fds = b"", []
        while b"\n" not in data:
            chunk, got, _, _ = socket.recv_fds(conn, 65536, 64)
            fds.extend(got)
            if not chunk:
                raise TakeoverError(f"the process on {path} closed the control socket")
            data += chunk
    except (OSError, TakeoverError) as e:
        conn.close()
        for fd in fds:
            os.close(fd)
        raise TakeoverError(str(e)) from None
    answer = json.loads(data.split(b"\n", 1)[0])
    if "error" in answer:
        conn.close()
        for fd in fds:
            os.close(fd)
        raise TakeoverError(f"the process on {path} refused: {answer['error']}")
    names = answer["listeners"]
    if len(names) != len(fds):
        raise TakeoverError(f"expected {len(names)} sockets, got {len(fds)}")
    sockets: dict[str, list[socket.socket]] = {}
    for name, fd in zip(names, fds):
        sockets.setdefault(name, []).append(socket.socket(fileno=fd))
    return Handover(conn, sockets, answer["pid"])


class _Control(LineOnlyReceiver):
    delimiter = b"\n"

    def __init__(self, server: "ControlServer") -> None:
        self.server = server
        self.taking_over = False

    def connectionLost(self, reason: Any) -> None:
        if self.taking_over:
            self.server.abandoned()

    def lineReceived(self, line: bytes) -> None:
        try:
            op = json.loads(line).get("op")
        except (ValueError, AttributeError):
            op = None
        if op == "takeover":
            self.taking_over = self.server.hand_over(self)
        elif op == "drain":
            self.taking_over = False
            self.server.drain()
        elif op == "status":
            self.sendLine(json.dumps({"pid": os.getpid(), **self.server.lifecycle.status()}).encode())
        else:
            self.sendLine(b'{"error": "unknown op"}')

    def send_sockets(self, named: list[tuple[str, int]]) -> None:
        for _, fd in named:
            self.transport.sendFileDescriptor(fd)
        answer = {"pid": os.getpid(), "listeners": [name for name, _ in named]}
        self.sendLine(json.dumps(answer).encode())


class ControlServer(Service):
    """
    The running process's end of the control socket.

    @param sockets: the listening sockets to hand over, C{[(name, fd)]}.
    @param release: releases what only one process may hold (the state
        directory's lock).
    @param stop_accepting: what else stops accepting at the drain (the
        admin listener; the proxy is the lifecycle's).
    """

    def __init__(
        self, path: str, lifecycle: Any, sockets: Callable[[], list[tuple[str, int]]],
        release: Callable[[], Any] = lambda: None, stop_accepting: tuple = (), reactor: Any = None,
        reclaim: Callable[[], Any] = lambda: None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.path = path
        self.lifecycle = lifecycle
        self.sockets = sockets
        self.release = release
        self.reclaim = reclaim
        self.stop_accepting = stop_accepting
        self.reactor = reactor
        self.port: Any = None
        self.handed = False

    def startService(self) -> None:
        _clear_stale(self.path)
        self.port = self.reactor.listenUNIX(self.path, Factory.forProtocol(lambda: _Control(self)), mode=0o600)
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        return self._stop_listening()

    def _stop_listening(self) -> defer.Deferred:
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)

    def hand_over(self, control: _Control) -> bool:
        """
        Send the sockets (once).

        @return: whether a handover started.
        """
        if self.handed or self.lifecycle.state != "running":
            control.sendLine(b'{"error": "already handing over or stopping"}')
            return False
        self.handed = True
        log.info("a new lbproxy takes over: handing over the listening sockets")
        named = self.sockets()

        def send(_: Any) -> None:
            # The path is gone (the new process binds it next); the lock too.
            self.release()
            control.send_sockets(named)

        self._stop_listening().addCallback(send).addErrback(
            lambda f: log.failure("handover failed", f))
        return True

    def abandoned(self) -> None:
        """
        The new process went away before asking us to drain: take the lock
        back and listen on the control socket again; we never stopped
        accepting.
        """
        if not self.handed or not self.running:
            return
        log.warn("the new lbproxy went away before taking over: going on as before")
        self.handed = False
        try:
            self.reclaim()
            _clear_stale(self.path)
            self.port = self.reactor.listenUNIX(self.path, Factory.forProtocol(lambda: _Control(self)), mode=0o600)
        except Exception:
            log.failure("could not take the state directory or the control socket back")

    def drain(self) -> None:
        for stop in self.stop_accepting:
            stop()
        self.lifecycle.begin()


class DrainOld(Service):
    """
    Once this process accepts on every listener (C{ready()}): write the
    PID file, and tell the process it took over from (if any) to drain.
    """

    interval = 0.05

    def __init__(self, handover: Handover | None, ready: Callable[[], bool], reactor: Any,
                 pid_file: str | None = None) -> None:
        self.handover = handover
        self.ready = ready
        self.reactor = reactor
        self.pid_file = pid_file
        self._loop: Any = None

    def startService(self) -> None:
        super().startService()
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self._check)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def _check(self) -> None:
        if self.ready():
            self._loop.stop()
            # systemd (Type=forking, PIDFile=) follows a new main PID if
            # the PID file names it before the old main process exits.
            if self.pid_file:
                write_pid_file(self.pid_file)
            if self.handover is not None:
                self.handover.drain_old()

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.pid_file:
            remove_pid_file(self.pid_file)
        return super().stopService()


def write_pid_file(path: str) -> None:
    """
    Write this process's pid to C{path} atomically (a reader sees the
    old pid or the new one, never a partial file).
    """
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(temp, path)


def remove_pid_file(path: str) -> None:
    """
    Remove C{path} if it still names this process (not if a process that
    took over rewrote it).
    """
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


def _clear_stale(path: str) -> None:
    """
    Remove a control socket left by a process that is gone.

    @raise TakeoverError: if a process still answers on it.
    """
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise TakeoverError(f"another lbproxy runs on {path}: start with --takeover to replace it")
