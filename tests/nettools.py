"""
Network namespaces for the failover test and benchmark: a private L2
segment that lbproxy nodes, keepalived and clients share, made and torn
down by the test itself (root only).

The layout (one per run; every name carries a random tag, so runs of
several people on one machine never meet):

    root namespace      lbf<tag>m  10.A.B.1    etcd, the backends, the test
         |  veth
    lbf-<tag>-<pid>-hub br0 (a bridge; nothing else runs here)
         |  veth, one per host
    lbf-<tag>-<pid>-n1  eth0       10.A.B.11   lbproxy + keepalived (n2 .12, n3 .13)
    lbf-<tag>-<pid>-cl  eth0       10.A.B.100  the load client (virtual address .200)

The bridge lives in a namespace of its own, so no bridge, route or
global setting of the root namespace changes; the root namespace gets one veth
end with an address in the run's own /24 (chosen not to overlap any
route there), which lets etcd and the backends run as ordinary
processes and the test reach every node's admin API.  Deleting the hub
namespace destroys every veth at once.

The load client and the backend servers are L{tests.netload}.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "lbf-"


class NetError(RuntimeError):
    """A command that builds the topology failed."""


def sh(*argv: str, check: bool = True, timeout: float = 10.0) -> str:
    """
    Run a short command (C{ip}, C{ss}) and return its output.

    @raise NetError: naming the command and its stderr, if it fails.
    """
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def missing_requirements() -> list[str]:
    """
    What this machine lacks for the namespace tests (empty when it can
    run them): root, C{ip}, C{keepalived}, C{etcd}.
    """
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (network namespaces need CAP_NET_ADMIN)")
    for tool, package in (("ip", "iproute2"), ("ss", "iproute2"), ("keepalived", "keepalived"),
                          ("etcd", "etcd-server")):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            problems.append(f"{tool} missing (Debian package {package})")
    return problems


def until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    """
    Poll C{predicate} until it returns something true, and return that.

    @raise TimeoutError: naming C{what} after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(step)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespaces() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]


def kill_namespace(ns: str) -> None:
    """SIGKILL every process in C{ns}, then delete it."""
    for pid in sh("ip", "netns", "pids", ns, check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    sh("ip", "netns", "del", ns, check=False)


def sweep_stale() -> list[str]:
    """
    Delete the namespaces of earlier runs whose test process is gone (a
    run killed too hard for its finalizers); runs still alive are left
    alone.  Returns the names deleted.
    """
    swept = []
    for ns in namespaces():
        parts = ns.split("-")
        if ns.startswith(PREFIX) and len(parts) == 4 and parts[2].isdigit() and not _pid_alive(int(parts[2])):
            kill_namespace(ns)
            swept.append(ns)
    return swept


class Host:
    """
    One namespace on the segment, with C{eth0} at C{addr}.
    """

    def __init__(self, topology: "Topology", name: str, addr: str) -> None:
        self.topology = topology
        self.name = name
        self.ns = topology.ns_name(name)
        self.addr = addr

    def argv(self, *argv: str) -> list[str]:
        """C{argv} run inside this namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def ip(self, *args: str, check: bool = True) -> str:
        return sh("ip", "-n", self.ns, *args, check=check)

    def sysctl(self, key: str, value: str) -> None:
        """Set one of this namespace's own sysctls (C{net.*} keys are per namespace)."""
        path = "/proc/sys/" + key.replace(".", "/")
        sh(*self.argv("sh", "-c", f'echo {value} > "$0"', path))

    def addresses(self, dev: str = "eth0") -> set[str]:
        """The IPv4 addresses on this host's C{dev} now."""
        out = self.ip("-o", "-4", "addr", "show", "dev", dev)
        return {line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3}

    def has(self, addr: str, dev: str = "eth0") -> bool:
        return addr in self.addresses(dev)

    def listening(self, addr: str, port: int) -> bool:
        """Whether a TCP socket of this namespace listens on C{addr:port}."""
        out = sh(*self.argv("ss", "-H", "-l", "-t", "-n"))
        return any(line.split()[3] in (f"{addr}:{port}", f"0.0.0.0:{port}", f"*:{port}")
                   for line in out.splitlines() if len(line.split()) > 3)

    def tcp_states(self, port: int) -> dict[str, int]:
        """
        How many of this namespace's TCP sockets with local port C{port}
        (listeners aside) are in each state, by C{ss}'s names
        (C{ESTAB}, C{FIN-WAIT-2}, C{CLOSE-WAIT}, ...).
        """
        states: dict[str, int] = {}
        for line in sh(*self.argv("ss", "-H", "-t", "-a", "-n")).splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[0] != "LISTEN" and fields[3].rsplit(":", 1)[-1] == str(port):
                states[fields[0]] = states.get(fields[0], 0) + 1
        return states

    def link(self, up: bool) -> None:
        """Plug or pull this host's cable (its C{eth0})."""
        self.ip("link", "set", "eth0", "up" if up else "down")

    def pids(self) -> list[int]:
        return [int(p) for p in sh("ip", "netns", "pids", self.ns, check=False).split()]


class Topology:
    """
    The run's segment: the hub namespace with its bridge, the root
    namespace's veth into it, and the hosts added with L{add}.

    @ivar mgmt: the root namespace's address on the segment.
    """

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.owner = os.getpid()
        self.hub = self.ns_name("hub")
        self.mgmt_if = f"lbf{self.tag}m"
        self.net = self._free_subnet()
        self.mgmt = str(self.net.network_address + 1)
        self.hosts: dict[str, Host] = {}
        self.created: list[str] = []

    def ns_name(self, name: str) -> str:
        return f"{PREFIX}{self.tag}-{self.owner}-{name}"

    def address(self, last: int) -> str:
        return str(self.net.network_address + last)

    def _free_subnet(self) -> ipaddress.IPv4Network:
        taken = []
        for line in sh("ip", "-o", "-4", "route", "show", "table", "all").splitlines() + \
                sh("ip", "-o", "-4", "addr", "show").splitlines():
            for word in line.split():
                try:
                    taken.append(ipaddress.ip_network(word, strict=False))
                except ValueError:
                    continue
        taken = [n for n in taken if n.prefixlen > 0 and n.version == 4]
        rng = random.Random(self.tag)
        for _ in range(100):
            net = ipaddress.IPv4Network(f"10.{rng.randrange(64, 250)}.{rng.randrange(0, 256)}.0/24")
            if not any(net.overlaps(t) for t in taken):
                return net
        raise NetError("no free 10.x.y.0/24 in the root namespace's routes")

    def create(self) -> None:
        """Make the hub, its bridge and the root namespace's veth into it."""
        sweep_stale()
        sh("ip", "netns", "add", self.hub)
        self.created.append(self.hub)
        sh("ip", "-n", self.hub, "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        sh("ip", "link", "add", self.mgmt_if, "type", "veth", "peer", "name", "m0", "netns", self.hub)
        try:
            Path(f"/proc/sys/net/ipv6/conf/{self.mgmt_if}/disable_ipv6").write_text("1")
        except OSError:
            pass
        sh("ip", "-n", self.hub, "link", "set", "m0", "master", "br0", "up")
        sh("ip", "addr", "add", f"{self.mgmt}/{self.net.prefixlen}", "dev", self.mgmt_if)
        sh("ip", "link", "set", self.mgmt_if, "up")

    def add(self, name: str, last: int) -> Host:
        """A new namespace C{name} plugged into the bridge at C{.last}."""
        host = Host(self, name, self.address(last))
        sh("ip", "netns", "add", host.ns)
        self.created.append(host.ns)
        host.ip("link", "set", "lo", "up")
        port = f"p{last}"
        sh("ip", "-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        sh("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
        host.ip("addr", "add", f"{host.addr}/{self.net.prefixlen}", "dev", "eth0")
        host.link(True)
        self.hosts[name] = host
        return host

    def destroy(self) -> None:
        """
        Kill every process in the run's namespaces, delete them and the
        root namespace's veth; safe to call on a half-made topology.
        """
        for ns in reversed(self.created):
            kill_namespace(ns)
        sh("ip", "link", "del", self.mgmt_if, check=False)
        self.created.clear()

    def leftovers(self) -> list[str]:
        """Namespaces and links of this run that still exist (none after L{destroy})."""
        found = [ns for ns in namespaces() if ns.startswith(f"{PREFIX}{self.tag}-")]
        if sh("ip", "link", "show", self.mgmt_if, check=False).strip():
            found.append(self.mgmt_if)
        return found


class Process:
    """
    A child process with its output in a log file; L{stop} is idempotent.
    """

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 pass_fds: tuple[int, ...] = (), stdin: Any = subprocess.DEVNULL) -> None:
        self.argv = argv
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=stdin,
                                          env=env, pass_fds=pass_fds, cwd=ROOT, start_new_session=True)
        self.pid = self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.running:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.argv[:6]} did not exit within {timeout} s:\n{self.tail()}") from None

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        self.send(sig)
        return self.wait(timeout)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def clean_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": str(ROOT), **extra}


def http(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 2.0) -> tuple[int, Any]:
    """
    One JSON request with urllib: C{(status, decoded body)}; an HTTP
    error status is returned, not raised.
    """
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Etcd:
    """
    A three-member etcd cluster on one address of the root namespace
    (ports chosen by the OS), each member's data and log under C{base}.
    """

    def __init__(self, base: Path, host: str, size: int = 3) -> None:
        self.base = base
        self.host = host
        base.mkdir(parents=True, exist_ok=True)
        self.members = [(f"m{i + 1}", self._port(), self._port()) for i in range(size)]
        self.endpoints = [f"http://{host}:{client}" for _, client, _ in self.members]
        self.processes: list[Process] = []

    def _port(self) -> int:
        with socket.socket() as s:
            s.bind((self.host, 0))
            return s.getsockname()[1]

    def start(self, timeout: float = 30.0) -> None:
        cluster = ",".join(f"{name}=http://{self.host}:{peer}" for name, _, peer in self.members)
        for name, client, peer in self.members:
            self.processes.append(Process([
                "/usr/bin/etcd", "--name", name, "--data-dir", str(self.base / f"{name}.data"),
                "--listen-client-urls", f"http://{self.host}:{client}",
                "--advertise-client-urls", f"http://{self.host}:{client}",
                "--listen-peer-urls", f"http://{self.host}:{peer}",
                "--initial-advertise-peer-urls", f"http://{self.host}:{peer}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"lbf-{self.host}",
            ], self.base / f"{name}.log", env=clean_env()))
        for url, process in zip(self.endpoints, self.processes):
            until(lambda: self._ready(url, process), timeout, f"etcd {url} ready", step=0.05)

    def _ready(self, url: str, process: Process) -> bool:
        if not process.running:
            raise NetError(f"etcd {url} exited:\n{process.tail()}")
        try:
            code, body = http("POST", url + "/v3/kv/range", {"key": "AA=="}, timeout=1.0)
        except OSError:
            return False
        return code == 200 and "header" in (body or {})

    def stop(self) -> None:
        for p in self.processes:
            p.stop()


class Backends:
    """
    Backend servers in one child process of the root namespace, on
    sockets this process binds first (so they accept from the moment
    they exist).  Each answers a line with C{"<relaying node's address>
    <port>\\n"}, which tells the client which node relayed it.
    """

    def __init__(self, host: str, count: int, log: Path) -> None:
        self.sockets = []
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            s.listen(1024)
            self.sockets.append(s)
        self.addresses = [s.getsockname() for s in self.sockets]
        fds = tuple(s.fileno() for s in self.sockets)
        self.process = Process([sys.executable, "-m", "tests.netload", "backend", *map(str, fds)],
                               log, env=clean_env(), pass_fds=fds)
        for s in self.sockets:
            s.close()

    def stop(self) -> None:
        self.process.stop()
