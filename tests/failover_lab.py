"""
The failover scenario, shared by C{tests/integration/test_failover.py}
(which asserts on its figures) and C{bench/failover.py} (which records
them in C{docs/_data/failover.json}).

Three lbproxy nodes in cluster mode (a three-member etcd in the root
namespace) share a virtual address through keepalived (VRRP,
C{advert_int 1}, C{nopreempt}, priorities n1 150, n2 100, n3 200); a
client namespace opens C{rate} new connections per second to the
virtual address; two backends in the root namespace answer with the
address of the node that relayed, so every connection says which node
served it.  The phases, in order:

 1. L{FailoverLab.failover}: three acknowledged changes through the
    master's (n1's) admin API, a fourth in flight, then the master dies:
    its cable pulled, then SIGKILL of lbproxy and keepalived (a machine
    that loses power; with the link up, the dead node's kernel would
    keep the address and answer ARP for it).
 2. L{FailoverLab.bring_back}: n1 boots again (address gone, link up,
    lbproxy then keepalived) and rejoins as a backup.
 3. L{FailoverLab.scale_up}: n3 joins.
 4. L{FailoverLab.scale_down}: the master (n2) leaves gracefully: it
    holds the virtual address on C{lo} (so clients that still send to
    it are served until the new master's gratuitous ARP), stops
    keepalived (SIGTERM: a priority-0 advertisement, so the next
    master takes over after its skew time, not three intervals), waits
    until clients reach the new master and its own connections end, then
    stops lbproxy (SIGTERM).

What no handover at L2 avoids: the clients move when they receive the
new master's gratuitous ARP, all of their connections at once.  A
connection whose handshake is under way at that instant sends its next
segment to the new master, which has no state for it and resets it;
connections whose request already went out finish (their answer comes
from the old node) but leave a half-closed socket there, which is why
the leaving node waits for the client's connections to end, not for its
own count to reach zero (those it then closes).  Only connection state
shared between the nodes (IPVS sync, a flow-hashing router) would avoid
it.

Every wait is for an acknowledgement (an address on an interface, a
keepalived state line, the admin API's answer, the client's records),
each with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.netload import LoadLog
from tests.nettools import Backends, Etcd, Host, Process, Topology, clean_env, http, until

#: The nodes' graceful-stop grace (s): shorter than a leaving node's stop
#: timeout, since a connection orphaned by the address's move (its client
#: reset by the new master) stays open on the old one until the grace ends.
GRACE = 5

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
PORT = 8080
ADMIN = 8081
TOKEN = "failover-test-token-0123456789"

KEEPALIVED_CONF = """\
global_defs {{
    router_id {name}
}}
vrrp_instance lbproxy {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id {vrid}
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
        {vip}/{prefix} dev eth0
    }}
}}
"""

_STATE = re.compile(rb"\(lbproxy\) Entering (\w+) STATE")


class Node:
    """
    One lbproxy node: its namespace, C{twistd -n lbproxy} in cluster mode
    listening on the virtual address (C{ip_nonlocal_bind}, so it binds
    before it holds the address), and its keepalived.
    """

    def __init__(self, lab: "FailoverLab", host: Host, priority: int) -> None:
        self.lab = lab
        self.host = host
        self.name = host.name
        self.priority = priority
        self.lbproxy: Process | None = None
        self.keepalived: Process | None = None
        self.starts = 0
        for key, value in (("net.ipv4.ip_nonlocal_bind", "1"), ("net.ipv4.conf.all.arp_ignore", "1"),
                           ("net.ipv4.conf.all.arp_announce", "2")):
            host.sysctl(key, value)

    def url(self, path: str) -> str:
        return f"http://{self.host.addr}:{ADMIN}/api/v1{path}"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 2.0) -> tuple[int, Any]:
        return http(method, self.url(path), body, token=TOKEN, timeout=timeout)

    def start(self) -> None:
        lab = self.lab
        self.starts += 1
        argv = self.host.argv(
            sys.executable, "-c", TWISTD, "-n", "--pidfile=", "lbproxy",
            "--store", "etcd:" + ",".join(lab.etcd.endpoints), "--store-prefix", lab.prefix,
            "--node-name", self.name, "--listen", f"tcp:{PORT}:interface={lab.vip}",
            "--admin", f"tcp:{ADMIN}:interface={self.host.addr}", "--admin-token-file", str(lab.token_file),
            "--no-access-log", "--grace", str(GRACE), *[a for h, p in lab.backends.addresses for a in ("--backend", f"{h}:{p}")],
        )
        self.lbproxy = Process(argv, lab.workdir / f"{self.name}.lbproxy.{self.starts}.log", env=clean_env())

    def status(self) -> dict[str, Any] | None:
        try:
            code, body = self.api("GET", "/status", timeout=1.0)
        except OSError:
            return None
        return body if code == 200 else None

    def _ready(self) -> bool:
        if not self.lbproxy.running:
            raise RuntimeError(f"{self.name}'s lbproxy exited:\n{self.lbproxy.tail()}")
        status = self.status()
        return bool(status and status.get("cluster", {}).get("registered")
                    and self.host.listening(self.lab.vip, PORT))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the admin API answers, the node is registered and it listens."""
        until(self._ready, timeout, f"{self.name} ready", step=0.05)

    def start_keepalived(self) -> None:
        lab = self.lab
        conf = lab.workdir / f"{self.name}.keepalived.conf"
        conf.write_text(KEEPALIVED_CONF.format(name=self.name, vrid=lab.vrid, priority=self.priority,
                                               vip=lab.vip, prefix=lab.topology.net.prefixlen))
        run = lab.workdir / f"{self.name}.{self.starts}"
        self.keepalived = Process(self.host.argv(
            "keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp", "-f", str(conf),
            "-p", f"{run}.keepalived.pid", "-r", f"{run}.vrrp.pid",
        ), lab.workdir / f"{self.name}.keepalived.{self.starts}.log")

    def vrrp_state(self) -> str | None:
        """The last state keepalived logged entering (C{BACKUP}, C{MASTER}, ...)."""
        if self.keepalived is None:
            return None
        states = _STATE.findall(self.keepalived.log.read_bytes())
        return states[-1].decode() if states else None

    def wait_state(self, state: str, timeout: float = 15.0) -> None:
        until(lambda: self.vrrp_state() == state, timeout, f"{self.name}'s keepalived {state}", step=0.02)

    def kill(self) -> None:
        """
        The machine loses power: the link down, then every process
        SIGKILLed.  The cable goes first because killing keepalived's
        parent first makes its VRRP child (C{PR_SET_PDEATHSIG}) send a
        priority-0 advertisement if it runs before its own SIGKILL: the
        backup then takes over after its skew time, as from a graceful
        stop, and the crash being tested never happens.
        """
        self.host.link(False)
        self._kill_listed()
        for p in (self.lbproxy, self.keepalived):
            if p is not None:
                p.wait(10)
        # Had keepalived's parent started a new VRRP child before its own
        # SIGKILL, it would live on (zombies are not listed).
        until(lambda: not self._kill_listed(), 10, f"every process of {self.name} gone")

    def _kill_listed(self) -> list[int]:
        """SIGKILL every process in the namespace; the pids that were listed."""
        pids = self.host.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def boot(self) -> None:
        """The machine comes back: no virtual address, link up."""
        self.host.ip("addr", "del", f"{self.lab.vip}/{self.lab.topology.net.prefixlen}", "dev", "eth0", check=False)
        self.host.link(True)

    def nodes(self) -> list[str]:
        code, body = self.api("GET", "/nodes")
        assert code == 200, body
        return [n["name"] for n in body["nodes"]]

    def config(self) -> dict[str, Any]:
        code, body = self.api("GET", "/config")
        assert code == 200, body
        return body


class FailoverLab:
    """
    The topology, etcd, backends, nodes and load of one run; the phases
    are methods returning their figures (seconds, counts).
    """

    def __init__(self, workdir: Path, rate: float = 200.0, timeout: float = 2.0) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.rate = rate
        self.timeout = timeout
        self.topology = Topology()
        self.prefix = f"/lbproxy/failover-{self.topology.tag}"
        self.vrid = 1 + int(self.topology.tag, 16) % 254
        self.vip = self.topology.address(200)
        self.nodes: dict[str, Node] = {}
        self.etcd: Etcd | None = None
        self.backends: Backends | None = None
        self.load: Process | None = None
        self.records: LoadLog | None = None
        self.token_file = workdir / "admin-token"

    @property
    def names(self) -> dict[str, str]:
        return {n.host.addr: n.name for n in self.nodes.values()}

    def master(self) -> Node:
        holders = [n for n in self.nodes.values() if n.host.has(self.vip)]
        assert len(holders) == 1, f"the virtual address is on {[n.name for n in holders]}"
        return holders[0]

    def setup(self) -> None:
        """Segment, etcd, backends; n1 and n2 serving with n1 the master; load running."""
        t = self.topology
        t.create()
        self.token_file.write_text(TOKEN + "\n")
        for name, last, priority in (("n1", 11, 150), ("n2", 12, 100), ("n3", 13, 200)):
            self.nodes[name] = Node(self, t.add(name, last), priority)
        client = t.add("cl", 100)
        self.etcd = Etcd(self.workdir / "etcd", t.mgmt)
        self.etcd.start()
        self.backends = Backends(t.mgmt, 2, self.workdir / "backends.log")
        n1, n2 = self.nodes["n1"], self.nodes["n2"]
        for n in (n1, n2):
            n.start()
        for n in (n1, n2):
            n.wait_ready()
        for n in (n1, n2):
            n.start_keepalived()
        until(lambda: n1.host.has(self.vip), 15, "n1 holds the virtual address")
        n2.wait_state("BACKUP")
        out = self.workdir / "load.txt"
        out.touch()
        self.records = LoadLog(out)
        self.load = Process(client.argv(sys.executable, "-m", "tests.netload", "load", self.vip, str(PORT),
                                        "--rate", str(self.rate), "--timeout", str(self.timeout),
                                        "--out", str(out)), self.workdir / "load.log", env=clean_env())
        until(lambda: len(self.records.successes(0, n1.host.addr)) >= 100, 15, "clients served through n1")

    def _settle(self, after: float, via: Node, what: str) -> float:
        """Until 100 more connections went through C{via}, then every attempt so far has ended."""
        until(lambda: len(self.records.successes(after, via.host.addr)) >= 100, 15, what)
        end = time.monotonic()
        until(lambda: self.records.complete(end), self.timeout + 5, "the client's attempts ended")
        return end

    def failover(self) -> dict[str, Any]:
        n1, n2 = self.nodes["n1"], self.nodes["n2"]
        assert self.master() is n1
        acked = []
        for k in range(3):
            code, body = n1.api("POST", "/backends", {"id": f"acked-{k}", "host": self.topology.mgmt,
                                                      "port": 9001 + k, "weight": 0})
            assert code == 201, body
            acked.append(body["id"])
        in_flight = threading.Thread(target=self._post_quietly, args=(n1, "in-flight"), daemon=True)
        in_flight.start()
        t_kill = time.monotonic()
        n1.kill()
        t_killed = time.monotonic()
        until(lambda: n2.host.has(self.vip), 15, "n2 takes the virtual address")
        t_vip = time.monotonic()
        first = until(lambda: self.records.successes(t_kill, n2.host.addr), 15, "a client served by n2")[0]
        last = self.records.last_success_before(t_kill)
        ids = {b["id"] for b in n2.config()["backends"]}
        until(lambda: "n1" not in n2.nodes(), 20, "n1 leaves the membership")
        t_gone = time.monotonic()
        end = self._settle(first[1], n2, "clients settle on n2")
        in_flight.join(5)
        return {
            "kill_s": round(t_killed - t_kill, 3),
            "vrrp_takeover_s": round(t_vip - t_kill, 3),
            "kill_to_first_success_s": round(first[1] - t_kill, 3),
            "gap_s": round(first[1] - last[1], 3),
            "acknowledged_changes": len(acked),
            "acknowledged_present": sum(1 for i in acked if i in ids),
            "in_flight_change_present": "in-flight" in ids,
            "dead_node_listed_s": round(t_gone - t_kill, 2),
            **self.records.summary(t_kill - 1.0, end, self.names),
            **self.records.around(t_kill - 1.0, end, t_kill, first[0]),
        }

    @staticmethod
    def _post_quietly(node: Node, backend_id: str) -> None:
        try:
            node.api("POST", "/backends", {"id": backend_id, "host": node.lab.topology.mgmt,
                                           "port": 9000, "weight": 0}, timeout=3.0)
        except OSError:
            pass

    def bring_back(self) -> dict[str, Any]:
        n1, n2 = self.nodes["n1"], self.nodes["n2"]
        t0 = time.monotonic()
        n1.boot()
        n1.start()
        n1.wait_ready()
        same = n1.config() == n2.config()
        n1.start_keepalived()
        n1.wait_state("BACKUP")
        t_back = time.monotonic()
        end = self._settle(t_back, self.master(), "clients after n1 rejoined")
        return {"rejoin_s": round(t_back - t0, 2), "same_config": same,
                "master_after": self.master().name, **self.records.summary(t0, end, self.names)}

    def scale_up(self) -> dict[str, Any]:
        n3 = self.nodes["n3"]
        master = self.master()
        t0 = time.monotonic()
        n3.start()
        n3.wait_ready()
        same = n3.config() == master.config()
        n3.start_keepalived()
        n3.wait_state("BACKUP")
        until(lambda: master.nodes() == ["n1", "n2", "n3"], 15, "three nodes listed")
        t_joined = time.monotonic()
        end = self._settle(t_joined, master, "clients after n3 joined")
        return {"join_s": round(t_joined - t0, 2), "same_config": same, "master_after": self.master().name,
                **self.records.summary(t0, end, self.names)}

    def scale_down(self, hold: bool = True) -> dict[str, Any]:
        leaving = self.master()
        t0 = time.monotonic()
        lo_vip = f"{self.vip}/32"
        if hold:
            leaving.host.ip("addr", "add", lo_vip, "dev", "lo")
        t_term = time.monotonic()
        leaving.keepalived.send(signal.SIGTERM)
        t_absent = self._until_moved(leaving, t_term)
        t_vip = time.monotonic()
        leaving.keepalived.wait(10)
        successor = self.master()
        first = until(lambda: self.records.successes(t_term, successor.host.addr), 15,
                      f"a client served by {successor.name}")[0]
        until(lambda: self.records.complete(first[0]), self.timeout + 5,
              f"the client's connections through {leaving.name} end")
        left_open = (leaving.status() or {}).get("active_connections")
        states = self._client_side_states(leaving)
        code = leaving.lbproxy.stop(signal.SIGTERM, timeout=15)
        if hold:
            leaving.host.ip("addr", "del", lo_vip, "dev", "lo")
        until(lambda: leaving.name not in successor.nodes(), 15, f"{leaving.name} leaves the membership")
        t_left = time.monotonic()
        end = self._settle(first[1], successor, f"clients settle on {successor.name}")
        return {"leaving": leaving.name, "successor": successor.name, "held_on_lo": hold,
                "vrrp_handover_s": round(t_vip - t_term, 3),
                "first_success_on_successor_s": round(first[1] - t_term, 3),
                "leave_s": round(t_left - t0, 2), "lbproxy_exit": code,
                "left_open_on_leaving_node": left_open,
                "client_side_states_on_leaving_node": states,
                **self.records.summary(t0, end, self.names),
                # The clients moved after the last poll that saw no other
                # holder began, and no later than the first success through
                # the successor or the poll that saw it (whichever is later).
                **self.records.around(t0, end, t_absent, first[0], max(t_vip, first[0]))}

    def _until_moved(self, leaving: Node, absent: float, timeout: float = 15.0) -> float:
        """
        Poll until a node other than C{leaving} holds the virtual address.

        @param absent: a time when no other node held it.
        @return: when the last poll that saw no other holder began (or
            C{absent}): the address was added (and the clients' move
            began) after it.
        """
        deadline = time.monotonic() + timeout
        while True:
            began = time.monotonic()
            if [n for n in self.nodes.values() if n is not leaving and n.host.has(self.vip)]:
                return absent
            absent = began
            if time.monotonic() > deadline:
                raise TimeoutError(f"another node takes the virtual address: not after {timeout} s")
            time.sleep(0.01)

    @staticmethod
    def _client_side_states(node: Node, settle: float = 3.0) -> dict[str, int]:
        """
        The TCP states of C{node}'s client-side sockets once no client
        FIN that reached it is still being acted on: C{CLOSE-WAIT} (a
        client closed and lbproxy has not yet) gets up to C{settle}
        seconds to clear; one left after that is a connection lbproxy
        leaked.  The orphans the move explains are C{ESTAB} (the
        client was reset) and C{FIN-WAIT-1}/C{FIN-WAIT-2} (lbproxy
        relayed the backend's close; the client's own went to the new
        master).
        """
        deadline = time.monotonic() + settle
        while True:
            states = node.host.tcp_states(PORT)
            if "CLOSE-WAIT" not in states or time.monotonic() > deadline:
                return states
            time.sleep(0.05)

    def teardown(self) -> list[str]:
        """Stop everything this run started; returns what is left (nothing, or a bug)."""
        if self.load is not None and self.load.running:
            self.load.send(signal.SIGTERM)
            try:
                self.load.wait(self.timeout + 5)
            except TimeoutError:
                pass
        self.topology.destroy()
        for p in [n.lbproxy for n in self.nodes.values()] + [n.keepalived for n in self.nodes.values()] + [self.load]:
            if p is not None:
                p.stop()
        if self.backends is not None:
            self.backends.stop()
        if self.etcd is not None:
            self.etcd.stop()
        return self.topology.leftovers()
