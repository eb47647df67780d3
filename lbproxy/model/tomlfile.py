"""
Services from a TOML file (C{--config FILE}).

TOML because it is in the standard library (C{tomllib}, Python 3.11), so
reading it adds no dependency; unlike JSON it allows comments, which a file
an operator keeps by hand needs.  Each service is a table named after it::

    [services.postgres]
    listen = ["tcp:5432"]
    strategy = "least-connections"     # or { name = "...", options = {...} }
    backends = [{ host = "10.0.0.11", port = 5432 }]

Everything else is what C{POST /api/v1/services} takes.
"""

from __future__ import annotations

import tomllib
from typing import Any

from lbproxy.model.errors import ConfigError
from lbproxy.model.service import Document, add_service


def load_services(path: str) -> Document:
    """
    Read and check the file: a document at version 1.

    @raise ConfigError: one line naming the file, the service and the field.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text (byte {e.start})") from None
    extra = sorted(k for k in data if k != "services")
    if extra:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(map(repr, extra))}; services go in [services.NAME]")
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        raise ConfigError(f"{path}: no services: add a [services.NAME] table")
    document = Document()
    for name, body in services.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: services.{name} must be a table")
        body = {"name": name, **body}
        if isinstance(body.get("strategy"), str):
            body["strategy"] = {"name": body["strategy"]}
        try:
            document, _ = add_service(document, body, f"service {name!r}")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return Document(1, document.services)


def strategies_known(document: Document, factories: Any, path: str) -> None:
    """
    @raise ConfigError: if a service names a strategy no plugin provides.
    """
    from lbproxy.policy.plugins import build_strategy

    for service in document.services:
        try:
            build_strategy(service.strategy, factories)
        except ConfigError as e:
            raise ConfigError(f"{path}: service {service.name!r}: strategy: {e}") from None
