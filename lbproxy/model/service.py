"""
The config document of many services, and its migration from one pool.

A L{Document} holds named services; each is a L{Config} (a pool with its
strategy and settings) that also says where it listens (C{listen}), how a
listener it shares with others tells it apart (C{sni}) and whom it trusts
to send a PROXY header (C{accept_proxy}).  Every service carries the
document's version, so the ETag of a service's routes is the document's.

The first release stored one pool, C{{"version", "backends", "strategy",
...}}: L{parse_document} reads it as a document of one service named
C{default}.  Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from lbproxy.model.config import Config
from lbproxy.model.errors import ConfigError
from lbproxy.model.parse import build_pool, check_unique
from lbproxy.model.schema import DOCUMENT, NEW_SERVICE, SERVICE, SERVICE_PATCH
from lbproxy.model.validation import validate

DEFAULT = "default"


@dataclass(frozen=True)
class Document:
    """
    The whole durable configuration, at one version: services by name.
    """

    version: int = 0
    services: tuple[Config, ...] = ()

    def __post_init__(self) -> None:
        if any(s.version != self.version for s in self.services):
            stamped = tuple(replace(s, version=self.version) for s in self.services)
            object.__setattr__(self, "services", stamped)

    def service(self, name: str) -> Config | None:
        for s in self.services:
            if s.name == name:
                return s
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services)

    def main(self) -> Config | None:
        """
        The service today's top-level routes and flags mean: C{default},
        else the only one.
        """
        found = self.service(DEFAULT)
        if found is None and len(self.services) == 1:
            found = self.services[0]
        return found

    def with_service(self, service: Config) -> "Document":
        """
        The next version, with C{service} added or replacing its namesake.
        """
        if self.service(service.name) is None:
            services = self.services + (service,)
        else:
            services = tuple(service if s.name == service.name else s for s in self.services)
        return Document(self.version + 1, services)

    def without(self, name: str) -> "Document":
        if self.service(name) is None:
            raise KeyError(name)
        return Document(self.version + 1, tuple(s for s in self.services if s.name != name))

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "services": [service_json(s) for s in self.services]}


def service_json(service: Config) -> dict[str, Any]:
    """
    A service as the document and C{/api/v1/services} show it.
    """
    body = service.to_json()
    del body["version"]
    return body


def service_fields(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    """
    The L{Config} fields of a service's own settings, from an object valid
    against a schema with L{lbproxy.model.schema.SERVICE_FIELDS}.
    """
    out: dict[str, Any] = {}
    for key in ("name", "sni_default"):
        if key in obj:
            out[key] = obj[key]
    if "listen" in obj:
        out["listen"] = tuple(obj["listen"])
    if "sni" in obj:
        out["sni"] = tuple(name.lower() for name in obj["sni"])
    if "accept_proxy" in obj:
        out["accept_proxy"] = tuple(
            str(ipaddress.ip_network(cidr, strict=False)) for cidr in obj["accept_proxy"]
        )
    for key in ("allow", "deny"):
        if key in obj:
            out[key] = tuple(str(ipaddress.ip_network(cidr, strict=False)) for cidr in obj[key])
    if obj.get("client_limits") is not None:
        from lbproxy.model.config import ClientLimits

        c = obj["client_limits"]
        d = ClientLimits()
        out["client_limits"] = ClientLimits(
            c.get("max_connections"), None if c.get("rate") is None else float(c["rate"]),
            c.get("burst"), int(c.get("prefix_v4", d.prefix_v4)), int(c.get("prefix_v6", d.prefix_v6)),
        )
    if "max_queue" in obj:
        out["max_queue"] = int(obj["max_queue"])
    if "queue_timeout" in obj:
        out["queue_timeout"] = float(obj["queue_timeout"])
    if "tls" in obj:
        from lbproxy.model.parse import parse_service_tls

        out["tls"] = parse_service_tls(obj["tls"])
        if out["tls"] is not None and obj.get("accept_proxy"):
            raise ConfigError(f"{what}: a service with tls cannot also accept_proxy (not supported yet)")
    if out.get("sni_default") and not obj.get("sni"):
        raise ConfigError(f"{what}.sni_default needs the service's sni names")
    return out


def check_document(document: Document) -> Document:
    """
    The rules across services: names are unique, and services that share
    a listen endpoint each give C{sni} names (no name twice), at most one
    is the C{sni_default}, and they agree on C{accept_proxy}.

    @return: C{document}.
    @raise ConfigError: naming the services and the endpoint.
    """
    seen: set[str] = set()
    for s in document.services:
        if s.name in seen:
            raise ConfigError(f"service {s.name!r} is defined twice")
        seen.add(s.name)
    for endpoint, services in sharing(document).items():
        if len(services) < 2:
            continue
        names = ", ".join(repr(s.name) for s in services)
        if any(s.tls is not None for s in services):
            raise ConfigError(
                f"services {names} share the listen endpoint {endpoint}: a service with tls "
                f"needs a listen endpoint of its own"
            )
        for s in services:
            if not s.sni:
                raise ConfigError(
                    f"service {s.name!r} shares the listen endpoint {endpoint} with other "
                    f"services ({names}): each of them needs sni names"
                )
        defaults = [s.name for s in services if s.sni_default]
        if len(defaults) > 1:
            raise ConfigError(
                f"services {', '.join(map(repr, defaults))} on {endpoint}: at most one may be "
                f"the sni_default"
            )
        if len({frozenset(s.accept_proxy) for s in services}) > 1:
            raise ConfigError(
                f"services {names} share the listen endpoint {endpoint} and must agree on accept_proxy"
            )
        owner: dict[str, str] = {}
        for s in services:
            for server_name in s.sni:
                if server_name in owner:
                    raise ConfigError(
                        f"sni name {server_name!r} on {endpoint} is given by both "
                        f"{owner[server_name]!r} and {s.name!r}"
                    )
                owner[server_name] = s.name
    return document


_ANY_PORT = re.compile(r"^tcp6?:(0|port=0)(:|$)")


def listen_key(description: str, service: str) -> str:
    """
    The key of a listener: its description, except that C{tcp:0...} (any
    free port) is one listener per service, never shared.
    """
    return f"{description} ({service})" if _ANY_PORT.match(description) else description


def endpoint_of(key: str) -> str:
    """
    The description of a L{listen_key}.
    """
    return key.split(" (", 1)[0]


def sharing(document: Document) -> dict[str, list[Config]]:
    """
    Listener key (L{listen_key}) -> the services listening on it, in
    document order.
    """
    out: dict[str, list[Config]] = {}
    for s in document.services:
        for endpoint in s.listen:
            out.setdefault(listen_key(endpoint, s.name), []).append(s)
    return out


def parse_service(value: Any, what: str = "service", version: int = 0) -> Config:
    obj = validate(value, SERVICE, what)
    return build_pool(obj, f"{what}", version)


def parse_document(value: Any, what: str = "config") -> Document:
    """
    Parse and validate a stored or imported document: the services form,
    or the one-pool form of the first release (a service named C{default}).
    """
    if isinstance(value, Mapping) and "services" in value:
        obj = validate(value, DOCUMENT, what)
        version = int(obj.get("version", 0))
        services = tuple(
            parse_service(s, f"{what}.services[{i}]", version) for i, s in enumerate(obj["services"])
        )
        return check_document(Document(version, services))
    from lbproxy.model.parse import parse_config

    legacy = parse_config(value, what)
    return check_document(Document(legacy.version, (legacy,)))


def as_document(value: Config | Document) -> Document:
    """
    A document, from a document or one pool (the C{default} service).
    """
    if isinstance(value, Document):
        return value
    return Document(value.version, (value,))


# Changes: pure functions from one document to the next -----------------------


def _with_ids(obj: Mapping[str, Any]) -> dict[str, Any]:
    """
    C{obj} with an id (C{b1}, C{b2}, ... not taken) for each backend that has none.
    """
    obj = dict(obj)
    given = {b["id"] for b in obj.get("backends", ()) if "id" in b}
    backends, n = [], 0
    for b in obj.get("backends", ()):
        b = dict(b)
        if "id" not in b:
            n += 1
            while f"b{n}" in given:
                n += 1
            b["id"] = f"b{n}"
        backends.append(b)
    obj["backends"] = backends
    return obj


def add_service(document: Document, body: Any, what: str = "body") -> tuple[Document, Config]:
    """
    POST /api/v1/services: a new service; its backends get ids C{b1}, ...
    """
    obj = validate(body, NEW_SERVICE, what)
    if document.service(obj["name"]) is not None:
        raise ConfigError(f"service {obj['name']!r} already exists")
    service = build_pool(_with_ids(obj), what, document.version + 1)
    check_unique(service.backends)
    new = check_document(document.with_service(service))
    return new, new.service(service.name)


def update_service(document: Document, name: str, body: Any, whole: bool) -> tuple[Document, Config]:
    """
    PUT (C{whole}) or PATCH a service; its name cannot change.
    """
    old = document.service(name)
    if old is None:
        raise KeyError(name)
    if whole:
        obj = dict(validate(body, _REPLACEMENT, "body"))
        if obj.get("name", name) != name:
            raise ConfigError(f"body.name {obj['name']!r} must be the service's name {name!r}")
        obj = _with_ids({**obj, "name": name})
    else:
        validate(body, SERVICE_PATCH, "body")
        obj = service_json(old)
        obj.update(body)
    service = parse_service(obj, "body", document.version + 1)
    new = check_document(document.with_service(service))
    return new, new.service(name)


#: The body of PUT /api/v1/services/{name}: a whole service, its name optional.
_REPLACEMENT = {**NEW_SERVICE, "required": ["listen"]}


class Applied(NamedTuple):
    """
    What L{apply_services} did, by service name, in the order given.
    """

    created: tuple[str, ...]
    replaced: tuple[str, ...]
    unchanged: tuple[str, ...]

    def summary(self) -> str:
        """The history's one line, naming the services."""
        parts = [f"{what} {', '.join(names)}" for what, names in
                 (("created", self.created), ("replaced", self.replaced)) if names]
        return "applied: " + "; ".join(parts) if parts else "applied: nothing changed"


def apply_services(document: Document, body: Any, what: str = "body") -> tuple[Document, Applied]:
    """
    PATCH /api/v1/services (C{lbproxyctl apply}): C{{"services": [...]}},
    each a whole service that replaces its namesake or is added; services
    not named are left alone.  One version for all, checked whole: any
    refusal (a bad service, a rule across services) changes nothing.
    """
    obj = validate(body, SERVICE_BATCH, what)
    version = document.version + 1
    services = list(document.services)
    index = {s.name: i for i, s in enumerate(services)}
    created: list[str] = []
    replaced: list[str] = []
    unchanged: list[str] = []
    for i, item in enumerate(obj["services"]):
        where = f"{what}.services[{i}]"
        name = item["name"]
        if name in created or name in replaced or name in unchanged:
            raise ConfigError(f"{where}: service {name!r} is named twice")
        service = build_pool(_with_ids(item), where, version)
        check_unique(service.backends)
        if name not in index:
            services.append(service)
            created.append(name)
            continue
        if service_json(services[index[name]]) == service_json(service):
            unchanged.append(name)
            continue
        services[index[name]] = service
        replaced.append(name)
    new = check_document(Document(version, tuple(services)))
    return new, Applied(tuple(created), tuple(replaced), tuple(unchanged))


#: The body of PATCH /api/v1/services: whole services, by name.
SERVICE_BATCH = {
    "type": "object",
    "required": ["services"],
    "additionalProperties": False,
    "properties": {"services": {"type": "array", "minItems": 1, "maxItems": 100, "items": NEW_SERVICE}},
}


def remove_service(document: Document, name: str) -> Document:
    return document.without(name)


def change_service(
    name: str, mutate: Callable[[Config], "tuple[Config, Any]"]
) -> Callable[[Document], "tuple[Document, Any]"]:
    """
    Lift a change of one pool (L{lbproxy.model.changes.add_backend}, ...)
    to a change of the document: the pool's version bump becomes the
    document's.

    @raise KeyError: C{(name,)} if there is no such service.
    """

    def lifted(document: Document) -> tuple[Document, Any]:
        service = document.service(name)
        if service is None:
            raise KeyError(name)
        new, result = mutate(service)
        # The name and where it listens are the service's identity: a pool
        # change (PUT /config of a one-pool document) keeps them.
        new = replace(new, name=service.name, listen=new.listen or service.listen)
        doc = check_document(document.with_service(new))
        return doc, result

    return lifted


def iter_backends(document: Document) -> Iterator[Any]:
    for s in document.services:
        yield from s.backends
