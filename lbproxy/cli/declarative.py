"""
C{apply} and C{diff}: a C{--config} TOML file is the whole desired state
of the services it names (services it does not name are left alone).

The file is read and checked with the server's own model
(L{lbproxy.model.tomlfile}), so a bad file is refused before anything is
sent, and each service is normalized the way the server stores it: what
C{diff} compares is exactly what C{GET /api/v1/services} will show after
C{apply}.  A backend the file gives without an C{id} keeps the id of the
server's backend at the same address (so apply changes it in place rather
than replacing it), or gets a new id no other backend of the service has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: Fields of a service view that are runtime state, not config.
RUNTIME = ("listening", "active_connections", "version", "traffic", "tls_certificates")


class FileError(Exception):
    """The file cannot be read or is not a valid set of services."""


@dataclass
class Step:
    """
    What C{apply} does for one service of the file.

    @ivar action: C{create}, C{replace} or C{unchanged}; the first two
        go together as one C{PATCH /api/v1/services}.
    @ivar body: what is sent (its service of the batch).
    @ivar changes: the per-field differences, as L{Change}s.
    """

    name: str
    action: str
    body: dict[str, Any]
    changes: list["Change"] = field(default_factory=list)


@dataclass(frozen=True)
class Change:
    service: str
    backend: str | None
    field: str
    old: Any
    new: Any

    def line(self) -> str:
        where = self.service if self.backend is None else f"{self.service}, backend {self.backend}"
        if self.field == "":
            sign = "+" if self.old is None else "-"
            return f"{sign} {where}: {_show(self.new if self.old is None else self.old)}"
        return f"~ {where}, {self.field}: {_show(self.old)} -> {_show(self.new)}"

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "backend": self.backend, "field": self.field or None,
                "old": self.old, "new": self.new}


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def read_file(path: str) -> dict[str, dict[str, Any]]:
    """
    The services of the file as request bodies (name -> body), in file
    order, checked against the schema.

    @raise FileError: naming the file, the service and the field.
    """
    import tomllib

    from lbproxy.model.tomlfile import load_services

    try:
        load_services(path)
    except Exception as e:
        raise FileError(str(e)) from None
    with open(path, "rb") as f:
        data = tomllib.load(f)
    bodies = {}
    for name, body in data["services"].items():
        body = {"name": name, **body}
        if isinstance(body.get("strategy"), str):
            body["strategy"] = {"name": body["strategy"]}
        bodies[name] = body
    return bodies


def _address_key(host: str, port: int) -> tuple[str, int]:
    from lbproxy.model.address import address_key

    return address_key(host, port)


def with_ids(body: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """
    C{body} with an id for each backend: its own, else the current
    backend's at the same address, else the first C{bN} not taken.
    """
    existing = {}
    taken = set()
    for b in (current or {}).get("backends", ()):
        existing[_address_key(b["host"], b["port"])] = b["id"]
        taken.add(b["id"])
    given = {b["id"] for b in body.get("backends", ()) if "id" in b}
    used = set(given)
    backends = []
    for b in body.get("backends", ()):
        b = dict(b)
        if "id" not in b:
            match = existing.get(_address_key(b["host"], b["port"]))
            if match is not None and match not in used:
                b["id"] = match
                used.add(match)
        backends.append(b)
    n = 0
    for b in backends:
        if "id" not in b:
            n += 1
            while f"b{n}" in used or f"b{n}" in taken:
                n += 1
            b["id"] = f"b{n}"
            used.add(b["id"])
    return {**body, "backends": backends}


def normalized(body: dict[str, Any]) -> dict[str, Any]:
    """
    The service as the server stores it (every default filled in).

    @raise FileError: if the body is not a valid service.
    """
    from lbproxy.model.errors import ConfigError
    from lbproxy.model.service import Document, add_service, service_json

    try:
        _, service = add_service(Document(), body, f"service {body['name']!r}")
    except ConfigError as e:
        raise FileError(str(e)) from None
    return service_json(service)


def config_of(view: dict[str, Any]) -> dict[str, Any]:
    """A service view of the API without its runtime fields."""
    return {k: v for k, v in view.items() if k not in RUNTIME}


def plan(bodies: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[Step]:
    """
    One L{Step} per service of the file, against the server's services
    (name -> view).
    """
    steps = []
    for name, body in bodies.items():
        now = current.get(name)
        body = with_ids(body, now)
        want = normalized(body)
        if now is None:
            steps.append(Step(name, "create", body, created(want)))
            continue
        changes = compare(name, config_of(now), want)
        steps.append(Step(name, "replace" if changes else "unchanged", body, changes))
    return steps


def created(want: dict[str, Any]) -> list[Change]:
    name = want["name"]
    listen = ", ".join(want.get("listen", ()))
    out = [Change(name, None, "", None, f"new service, listen {listen}, strategy {want['strategy']['name']}")]
    for b in want.get("backends", ()):
        out.append(Change(name, b["id"], "", None, _backend_line(b)))
    return out


def _backend_line(b: dict[str, Any]) -> str:
    host = f"[{b['host']}]" if ":" in b["host"] else b["host"]
    return f"{host}:{b['port']} weight {b['weight']} {b['state']}"


def compare(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """
    The per-field differences of one service, backends matched by id;
    nested objects (C{health_check}, C{strategy}, ...) compared field by
    field, as C{health_check.interval}.
    """
    out: list[Change] = []
    for key in _keys(old, new):
        if key == "backends":
            continue
        out.extend(_fields(name, None, key, old.get(key), new.get(key)))
    olds = {b["id"]: b for b in old.get("backends", ())}
    news = {b["id"]: b for b in new.get("backends", ())}
    for bid in _keys(olds, news):
        if bid not in news:
            out.append(Change(name, bid, "", _backend_line(olds[bid]), None))
        elif bid not in olds:
            out.append(Change(name, bid, "", None, _backend_line(news[bid])))
        else:
            for key in _keys(olds[bid], news[bid]):
                out.extend(_fields(name, bid, key, olds[bid].get(key), news[bid].get(key)))
    return out


def _keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return list(a) + [k for k in b if k not in a]


def _fields(service: str, backend: str | None, path: str, old: Any, new: Any) -> list[Change]:
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in _keys(old, new):
            out.extend(_fields(service, backend, f"{path}.{key}", old.get(key), new.get(key)))
        return out
    return [Change(service, backend, path, old, new)]
