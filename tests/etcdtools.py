"""
Real etcd servers for the tests: one member or a three-member cluster on
127.0.0.1, data in a temporary directory, ports chosen by the OS.

Members can be killed and started again on the same data directory and
ports, which is how the tests take etcd away from running lbproxy nodes.
Everything waits on Deferreds with a bounded deadline; nothing sleeps.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, protocol, task

ETCD = "/usr/bin/etcd"


def free_port() -> int:
    """
    A port the OS says is free now (etcd needs its ports on the command
    line, and again after a restart).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process(protocol.ProcessProtocol):
    def __init__(self, log: Any) -> None:
        self.log = log
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.log.write(data)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.log.close()
        self.ended.callback(None)


class EtcdMember:
    """
    One etcd process.

    @ivar url: its client URL.
    """

    def __init__(self, name: str, base: Path, cluster: "EtcdCluster") -> None:
        self.name = name
        self.data_dir = base / f"{name}.data"
        self.log_path = base / f"{name}.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.cluster = cluster
        self.process: Any = None
        self.protocol: _Process | None = None

    def argv(self) -> list[str]:
        return [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.cluster.initial_cluster(),
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster.token,
        ]

    def start(self, reactor: Any) -> None:
        if not os.path.exists(ETCD):
            raise RuntimeError(f"{ETCD} is missing: install Debian's etcd-server package")
        self.protocol = _Process(open(self.log_path, "ab"))
        # A clean environment: etcd reads ETCD_* variables as flags.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self.process = reactor.spawnProcess(self.protocol, ETCD, self.argv(), env=env)

    @property
    def running(self) -> bool:
        return self.protocol is not None and not self.protocol.ended.called

    def kill(self) -> defer.Deferred:
        """
        SIGKILL the member (no clean shutdown) and wait until it is gone.
        """
        if not self.running:
            return defer.succeed(None)
        self.process.signalProcess("KILL")
        return self.protocol.ended

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class EtcdCluster:
    """
    C{size} etcd members on loopback forming one cluster.
    """

    def __init__(self, base: Path, size: int = 3, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.token = f"lbproxy-test-{os.getpid()}-{id(self)}"
        base.mkdir(parents=True, exist_ok=True)
        self.members = [EtcdMember(f"m{i + 1}", base, self) for i in range(size)]

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @defer.inlineCallbacks
    def start(self, deadline: float = 30.0) -> Any:
        """
        Start every member and wait until the cluster serves a linearizable
        read (so it has a leader).
        """
        for m in self.members:
            m.start(self.reactor)
        yield self.wait_ready(deadline)

    @defer.inlineCallbacks
    def wait_ready(self, deadline: float = 30.0) -> Any:
        """
        Poll C{/v3/kv/range} on every member until each answers (quorum and
        a leader), failing after C{deadline} seconds.
        """
        give_up = self.reactor.seconds() + deadline
        pending = list(self.members)
        while pending:
            m = pending[0]
            if not m.running:
                raise RuntimeError(f"etcd member {m.name} exited:\n{m.log_tail()}")
            try:
                d = treq.post(m.url + "/v3/kv/range", json={"key": "AA=="}, persistent=False)
                d.addTimeout(1.0, self.reactor)
                response = yield d
                body = yield response.json()
                if response.code == 200 and "header" in body:
                    pending.pop(0)
                    continue
            except Exception:
                pass
            if self.reactor.seconds() > give_up:
                raise RuntimeError(
                    f"etcd member {m.name} not ready after {deadline}s:\n{m.log_tail()}"
                )
            yield task.deferLater(self.reactor, 0.05, lambda: None)

    def kill(self) -> defer.Deferred:
        """
        Kill every member at once.
        """
        return defer.gatherResults([m.kill() for m in self.members])

    @defer.inlineCallbacks
    def restart(self, deadline: float = 30.0) -> Any:
        """
        Start the killed members again on their data directories and ports.
        """
        for m in self.members:
            if not m.running:
                m.start(self.reactor)
        yield self.wait_ready(deadline)
