"""
Crash consistency of the config store: a real lbproxy process gets a stream
of admin API changes and is killed with SIGKILL at random moments, many
times over.  After every kill the stored file parses and its checksum holds,
every change the API acknowledged is in it, and the restarted process
serves exactly that config.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.integration.test_restart import Child, children, start, stored_body  # noqa: F401

pytestmark = pytest.mark.integration

ROUNDS = 25
STRATEGIES = ("round-robin", "random", "least-connections", "weighted-round-robin", "first-available")
# No admin write limit: this drives changes as fast as the store takes them.
SEED = ("--backend", "127.0.0.1:9001", "--admin-write-rate", "0")

State = dict[str, Any]  # {"backends": {port: (weight, state)}, "strategy": name}


def state_of(body: dict[str, Any]) -> State:
    """The parts of a config document the changes below touch (of its one service, if stored as services)."""
    if "services" in body:
        body = body["services"][0]
    return {
        "backends": {b["port"]: (b["weight"], b["state"]) for b in body["backends"]},
        "strategy": body["strategy"]["name"],
    }


def ids_of(body: dict[str, Any]) -> dict[int, str]:
    return {b["port"]: b["id"] for b in body["backends"]}


class Stream:
    """
    Sends one change at a time, picked at random, and keeps the model of
    what the API acknowledged plus the one change in flight when the
    process died.

    @ivar acked: the state after every acknowledged change.
    @ivar in_flight: the effect of the change sent but not answered.
    """

    def __init__(self, rng: random.Random, body: dict[str, Any], next_port: int) -> None:
        self.rng = rng
        self.acked = state_of(body)
        self.ids = ids_of(body)
        self.next_port = next_port
        self.in_flight: Callable[[State], None] | None = None
        self.sent = 0
        self.killed = False

    def _pick(self) -> tuple[str, str, Any, Callable[[State], None], Callable[[Any], None]]:
        rng, ports = self.rng, sorted(self.acked["backends"])
        kind = rng.choice(
            ("add", "add", "patch", "patch", "strategy", "delete", "import") if len(ports) > 2 else ("add",)
        )
        if kind == "add" and len(ports) < 40:
            port, weight = self.next_port, rng.randint(0, 9)
            self.next_port += 1

            def effect(s: State) -> None:
                s["backends"][port] = (weight, "up")

            def learn(view: Any) -> None:
                self.ids[port] = view["id"]

            return "POST", "/backends", {"host": "127.0.0.1", "port": port, "weight": weight}, effect, learn
        if kind == "strategy":
            name = rng.choice(STRATEGIES)
            return "PUT", "/strategy", {"name": name}, lambda s: s.update(strategy=name), lambda _: None
        if kind == "import":
            backends = {p: (rng.randint(0, 9), self.acked["backends"][p][1]) for p in ports}
            name = rng.choice(STRATEGIES)
            document = {
                "backends": [
                    {"id": self.ids[p], "host": "127.0.0.1", "port": p, "weight": w, "state": st}
                    for p, (w, st) in backends.items()
                ],
                "strategy": {"name": name},
            }

            def imported(s: State) -> None:
                s.update(backends=dict(backends), strategy=name)

            return "PUT", "/config", document, imported, lambda _: None
        port = rng.choice(ports)
        if kind == "delete" or kind == "add":
            return "DELETE", f"/backends/{self.ids[port]}", None, lambda s: s["backends"].pop(port), lambda _: None
        weight, state = rng.randint(0, 9), rng.choice(("up", "disabled", "draining"))

        def patched(s: State) -> None:
            s["backends"][port] = (weight, state)

        return "PATCH", f"/backends/{self.ids[port]}", {"weight": weight, "state": state}, patched, lambda _: None

    async def run(self, child: Child) -> None:
        """Send changes until the process is killed."""
        while True:
            method, path, body, effect, learn = self._pick()
            self.in_flight = effect
            try:
                code, answer = await child.call(method, path, body)
            except Exception:
                if self.killed:
                    return
                raise
            assert 200 <= code < 300, (method, path, body, code, answer)
            effect(self.acked)
            learn(answer)
            self.in_flight = None
            self.sent += 1

    def possible(self) -> list[State]:
        """The states the store may hold: acknowledged only, or plus the change in flight."""
        states = [self.acked]
        if self.in_flight is not None:
            more = {"backends": dict(self.acked["backends"]), "strategy": self.acked["strategy"]}
            self.in_flight(more)
            states.append(more)
        return states


@pytest_twisted.ensureDeferred
async def test_sigkill_never_loses_an_acknowledged_change(tmp_path, children):
    """
    25 rounds of: a stream of POST/PATCH/DELETE backends, PUT strategy and
    PUT config (import) changes, SIGKILL at a random moment, then checks: config.json (and
    config.json.prev) parse with a valid checksum, config.json holds every
    acknowledged change (and at most the one unacknowledged change in
    flight), and a restarted lbproxy serves exactly the stored config.
    """
    seed = int(os.environ.get("LBPROXY_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    state = tmp_path / "state"
    child = await start(state, *SEED)
    children.append(child)
    code, body = await child.call("GET", "/config")
    stream = Stream(rng, body, next_port=9002)
    acknowledged = in_flight_kept = 0
    for round_ in range(ROUNDS):
        where = f"seed {seed}, round {round_}"
        stream.killed = False
        running = defer.ensureDeferred(stream.run(child))
        await task.deferLater(reactor, rng.uniform(0.0, 0.3), lambda: None)
        stream.killed = True
        assert await child.stop("KILL") == (None, 9), where
        await running
        acknowledged += stream.sent
        stream.sent = 0

        possible = stream.possible()
        if (state / "config.json").exists():
            stored = stored_body(state / "config.json")
            if (state / "config.json.prev").exists():
                assert stored_body(state / "config.json.prev")["version"] <= stored["version"], where
        else:
            stored = body
        assert state_of(stored) in possible, f"{where}: stored {state_of(stored)}, acknowledged {possible[0]}"
        in_flight_kept += len(possible) == 2 and state_of(stored) == possible[1]

        child = await start(state, *SEED)
        children.append(child)
        code, body = await child.call("GET", "/config")
        assert code == 200
        if "services" in stored:  # GET /config is the stored document's one service
            stored = {"version": stored["version"], **stored["services"][0]}
        assert body == stored, where
        stream.acked = state_of(body)
        stream.ids = ids_of(body)
        stream.in_flight = None
    await child.stop("TERM")
    assert acknowledged > ROUNDS, "too few changes were acknowledged to prove anything"
    print(f"crash test: seed {seed}, {ROUNDS} kills, {acknowledged} changes acknowledged, "
          f"{in_flight_kept} unacknowledged in-flight changes found stored")
