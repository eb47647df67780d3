"""
Changes to a config: pure functions from one L{Config} to the next version.

The controller calls them under its lock and makes the result durable
before applying it; each either returns the new config or raises
L{ConfigError} (bad input) or C{KeyError} (no such backend), so a refused
change leaves nothing half-applied.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lbproxy.model.address import address_key
from lbproxy.model.config import Backend, Config, StrategyChoice
from lbproxy.model.errors import ConfigError
from lbproxy.model.parse import parse_backend, parse_settings, same_address_note
from lbproxy.model.schema import BACKEND_PATCH
from lbproxy.model.validation import validate


def next_backend_id(config: Config) -> str:
    used = {b.id for b in config.backends}
    n = len(config.backends) + 1
    while f"b{n}" in used:
        n += 1
    return f"b{n}"


def add_backend(config: Config, body: Any) -> tuple[Config, Backend]:
    backend = parse_backend(body, "backend", backend_id=next_backend_id(config))
    if config.backend(backend.id):
        raise ConfigError(f"backend id {backend.id!r} already exists")
    key = address_key(backend.host, backend.port)
    for b in config.backends:
        if address_key(b.host, b.port) == key:
            raise ConfigError(f"backend {backend.address} already exists as {b.id!r}{same_address_note(backend, b)}")
    return replace(config, version=config.version + 1, backends=config.backends + (backend,)), backend


def update_backend(config: Config, backend_id: str, body: Any) -> tuple[Config, Backend]:
    old = config.backend(backend_id)
    if old is None:
        raise KeyError(backend_id)
    validate(body, BACKEND_PATCH, "body")
    merged = old.to_json()
    merged.update(body)
    new = parse_backend(merged, "backend")
    return replace(
        config,
        version=config.version + 1,
        backends=tuple(new if b.id == backend_id else b for b in config.backends),
    ), new


def remove_backend(config: Config, backend_id: str) -> Config:
    if config.backend(backend_id) is None:
        raise KeyError(backend_id)
    return replace(
        config,
        version=config.version + 1,
        backends=tuple(b for b in config.backends if b.id != backend_id),
    )


def set_strategy(config: Config, choice: StrategyChoice) -> Config:
    return replace(config, version=config.version + 1, strategy=choice)


def replace_config(config: Config, new: Config) -> Config:
    """
    Adopt an imported document as the next version of C{config}.
    """
    return replace(new, version=config.version + 1)



def update_settings(config: Config, body: Any) -> Config:
    """
    Change the pool-wide settings (health check, outlier ejection, slow
    start, drain timeout); fields not in C{body} keep their value.
    """
    return replace(config, version=config.version + 1, **parse_settings(body, "body"))
