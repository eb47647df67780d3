"""
Simulated users: each comes online, opens connections through lbproxy at
its own rate while online, and goes offline again after a while.  The
population keeps about C{count} users online; which ones changes all the
time.

Everything runs on the reactor (timers and non-blocking connections, no
threads) and every rate is bounded: a user makes at most L{MAX_RATE}
requests a second with at most L{MAX_INFLIGHT} in flight, and the
population holds at most L{MAX_USERS} online.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, Callable

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol

MAX_USERS = 500
MAX_RATE = 2.0
MIN_RATE = 0.3
MAX_INFLIGHT = 3
#: Seconds a request may take before the user gives up on it.
REQUEST_TIMEOUT = 10.0
#: How many users L{UserPopulation.to_json} lists one by one.
LISTED = 240


class SimUser:
    """
    One simulated user.

    @ivar status: the outcome of the user's last request: C{"idle"} (none
        yet), C{"waiting"}, C{"ok"} or C{"error"}.
    @ivar backend: the backend that answered the last request.
    """

    __slots__ = (
        "id", "rate", "online", "status", "backend", "ok", "errors",
        "inflight", "since", "_session", "_next",
    )

    def __init__(self, user_id: str, rate: float) -> None:
        self.id = user_id
        self.rate = rate
        self.online = False
        self.status = "idle"
        self.backend: str | None = None
        self.ok = 0
        self.errors = 0
        self.inflight = 0
        self.since = 0.0
        self._session: Any = None
        self._next: Any = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "online": self.online,
            "status": self.status,
            "backend": self.backend,
            "rate": round(self.rate, 2),
            "ok": self.ok,
            "errors": self.errors,
            "since": self.since,
        }


class _Request(Protocol):
    """
    One request from a user: send a GET, read the answer until the backend
    closes, note which backend it came from.

    It failed the way lbproxy counts a failure: no answer at all (lbproxy
    closes a client whose backend it could not reach without a byte) or
    the connection reset.  Any answer closed cleanly is answered, whether
    or not it names its backend: a plain server added through the UI
    answers without the demo's C{X-Backend} header and is no failure.
    """

    def __init__(self, done: Callable[[bool, str | None], None], user_id: str) -> None:
        self._done = done
        self._user_id = user_id
        self._data = b""
        self._finished = False

    def connectionMade(self) -> None:
        self.transport.write(
            b"GET /?user=%s HTTP/1.0\r\nHost: lbproxy-demo\r\n\r\n" % self._user_id.encode()
        )

    def dataReceived(self, data: bytes) -> None:
        if len(self._data) < 4096:
            self._data += data

    def connectionLost(self, reason: Any) -> None:
        clean = reason.check(ConnectionDone) is not None
        self.finish(bool(self._data) and clean, _backend_of(self._data))

    def finish(self, ok: bool, backend: str | None) -> None:
        if not self._finished:
            self._finished = True
            self._done(ok, backend)


def _backend_of(answer: bytes) -> str | None:
    """
    The backend an answer names in its C{X-Backend} header (the demo
    backends do), or None.
    """
    head, _, _ = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/1."):
        return None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-backend":
            return value.strip().decode("ascii", "replace") or None
    return None


class _RequestFactory(ClientFactory):
    noisy = False

    def __init__(self, done: Callable[[bool, str | None], None], user_id: str) -> None:
        self._done = done
        self._user_id = user_id
        self.protocol_instance: _Request | None = None

    def buildProtocol(self, addr: Any) -> Protocol:
        self.protocol_instance = _Request(self._done, self._user_id)
        return self.protocol_instance

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self._done(False, None)


class UserPopulation:
    """
    @ivar count: how many users should be online.
    @ivar users: every user seen so far, by id (offline ones come back).
    @ivar went_online: users that came online so far.
    @ivar went_offline: users that went offline so far.
    @ivar answered: requests answered (see L{_Request} for what failed).
    @ivar served: answered requests by the backend name they carried
        (answers that name none count in C{answered} only).
    """

    def __init__(
        self,
        host: str,
        port: int,
        count: int = 20,
        reactor: Any = None,
        rng: random.Random | None = None,
        session: tuple[float, float] = (3.0, 14.0),
        pause: tuple[float, float] = (0.3, 2.5),
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.host = host
        self.port = port
        self.count = _check_count(count)
        self.rng = rng or random.Random()
        self.session = session
        self.pause = pause
        self.on_change = on_change or (lambda: None)
        self.users: dict[str, SimUser] = {}
        self.online: set[str] = set()
        self.went_online = 0
        self.went_offline = 0
        self.requests = 0
        self.answered = 0
        self.failed = 0
        self.served: dict[str, int] = {}
        #: the latest comings and goings: C{(time, user id, "online" or "offline")}.
        self.recent: deque[tuple[float, str, str]] = deque(maxlen=12)
        self.running = False
        self._timers: set[Any] = set()
        self._connectors: set[Any] = set()

    # Control -------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        self._fill(stagger=1.0)

    def stop(self) -> None:
        """
        Take everyone offline and cancel every timer and connection.
        """
        self.running = False
        for timer in tuple(self._timers):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for uid in tuple(self.online):
            self._offline(self.users[uid], replace=False)
        for connector in tuple(self._connectors):
            connector.disconnect()
        self._connectors.clear()

    def set_count(self, count: int) -> None:
        """
        Aim for C{count} users online: bring more online (spread over a
        second) or send some offline now.

        @raise ValueError: if C{count} is not an integer from 0 to
            L{MAX_USERS}.
        """
        self.count = _check_count(count)
        excess = len(self.online) - self.count
        if excess > 0:
            for uid in self.rng.sample(sorted(self.online), excess):
                self._offline(self.users[uid], replace=False)
        elif self.running:
            self._fill(stagger=1.0)
        self.on_change()

    # Users coming and going ----------------------------------------------

    def _later(self, delay: float, f: Callable[..., Any], *args: Any) -> Any:
        def fire() -> None:
            self._timers.discard(timer)
            f(*args)

        timer = self.reactor.callLater(delay, fire)
        self._timers.add(timer)
        return timer

    def _fill(self, stagger: float = 0.0) -> None:
        missing = self.count - len(self.online)
        if missing <= 0 or not self.running:
            return
        offline = [u for u in self.users.values() if not u.online]
        self.rng.shuffle(offline)
        for _ in range(missing):
            # Keep about a third more users than the count, so some are
            # always offline and the ones who come back vary.
            if offline and len(self.users) >= self.count * 3 // 2 + 1:
                user = offline.pop()
            else:
                user = self._new_user()
            self._online(user, self.rng.uniform(0, stagger) if stagger else 0.0)

    def _new_user(self) -> SimUser:
        user = SimUser(f"u{len(self.users) + 1:03d}", self.rng.uniform(MIN_RATE, MAX_RATE))
        self.users[user.id] = user
        return user

    def _online(self, user: SimUser, delay: float) -> None:
        user.online = True
        self.online.add(user.id)
        user.since = self.reactor.seconds()
        user.status = "idle"
        self.went_online += 1
        self.recent.append((user.since, user.id, "online"))
        user._session = self._later(self.rng.uniform(*self.session), self._session_over, user)
        user._next = self._later(delay, self._request, user)
        self.on_change()

    def _session_over(self, user: SimUser) -> None:
        user._session = None
        self._offline(user, replace=True)

    def _offline(self, user: SimUser, replace: bool) -> None:
        if not user.online:
            return
        for timer in (user._session, user._next):
            if timer is not None and timer.active():
                timer.cancel()
                self._timers.discard(timer)
        user._session = user._next = None
        user.online = False
        user.since = self.reactor.seconds()
        self.online.discard(user.id)
        self.went_offline += 1
        self.recent.append((user.since, user.id, "offline"))
        if replace and self.running:
            self._later(self.rng.uniform(*self.pause), self._fill)
        self.on_change()

    # Requests --------------------------------------------------------------

    def _request(self, user: SimUser) -> None:
        user._next = None
        if not user.online or not self.running:
            return
        if user.inflight < MAX_INFLIGHT:
            self._send(user)
        user._next = self._later(self.rng.expovariate(user.rate), self._request, user)

    def _send(self, user: SimUser) -> None:
        user.inflight += 1
        user.status = "waiting"
        self.requests += 1
        holder: dict[str, Any] = {}

        def done(ok: bool, backend: str | None) -> None:
            connector = holder.pop("connector", None)
            if connector is None:
                return
            self._connectors.discard(connector)
            timer = holder.pop("timer", None)
            if timer is not None and timer.active():
                timer.cancel()
                self._timers.discard(timer)
            user.inflight -= 1
            if not ok or holder.get("timed_out"):
                user.errors += 1
                user.status = "error"
                self.failed += 1
            else:
                user.ok += 1
                user.status = "ok"
                user.backend = backend
                self.answered += 1
                if backend is not None:
                    self.served[backend] = self.served.get(backend, 0) + 1

        def give_up() -> None:
            holder["timed_out"] = True
            connector.disconnect()

        factory = _RequestFactory(done, user.id)
        connector = self.reactor.connectTCP(
            self.host, self.port, factory, timeout=REQUEST_TIMEOUT,
            bindAddress=self._source(user),
        )
        holder["connector"] = connector
        self._connectors.add(connector)
        holder["timer"] = self._later(REQUEST_TIMEOUT, give_up)

    def _source(self, user: SimUser) -> tuple[str, int] | None:
        """
        On IPv4 loopback each user gets an address of its own
        (127.0.0.2, 127.0.0.3, ...: all of 127/8 is local), so lbproxy sees
        distinct clients and source hashing has something to hash.
        """
        if not self.host.startswith("127."):
            return None
        n = int(user.id[1:])
        return (f"127.0.{n // 250}.{n % 250 + 2}", 0)

    # Views -----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        listed = sorted(self.users.values(), key=lambda u: (not u.online, u.id))[:LISTED]
        return {
            "count": self.count,
            "max": MAX_USERS,
            "online": len(self.online),
            "known": len(self.users),
            "went_online": self.went_online,
            "went_offline": self.went_offline,
            "requests": self.requests,
            "answered": self.answered,
            "failed": self.failed,
            "served": dict(self.served),
            "recent": [{"time": t, "user": u, "event": e} for t, u, e in self.recent],
            "users": [u.to_json() for u in sorted(listed, key=lambda u: u.id)],
        }


def _check_count(count: Any) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_USERS:
        raise ValueError(f"count must be an integer from 0 to {MAX_USERS}, not {count!r}")
    return count
