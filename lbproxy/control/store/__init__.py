"""
Config stores: where the config document is made durable.

L{open_store} holds the rule for combining the command line with a stored
config: C{--backend}/C{--strategy} seed an empty store (they are the config
until the first change, which stores them with that change); once the store
holds a config, it wins and those flags are ignored with a warning.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from twisted.logger import Logger

from lbproxy.model.config import Config
from lbproxy.model.service import Document, as_document
from lbproxy.interfaces import IConfigStore

log = Logger()


def open_store(
    state_dir: str | None, seed: Config | Document, seed_flags: Sequence[str] = (), reactor: Any = None,
    keep: int = 100,
) -> tuple[IConfigStore, Document]:
    """
    Open the config store and choose the initial config (blocking: call
    before the reactor runs).

    @param state_dir: the C{--state-dir}, or C{None} to keep the config in
        memory only.
    @param seed: the config built from the command line.
    @param seed_flags: the config flags the operator gave (for example
        C{["--backend", "--strategy"]}), named in the warning when a stored
        config overrides them.
    @param keep: versions of history the store keeps (C{--history}).
    @return: C{(store, config)}.
    @raise lbproxy.model.errors.StoreError: if another process owns the
        state directory, or if the store holds a config but neither its file
        nor the previous version is usable.
    """
    seed = as_document(seed)
    if state_dir is None:
        from lbproxy.control.store.memory import MemoryStore

        log.warn(
            "no --state-dir: the config lives in memory only, and changes made "
            "through the API will not survive a restart"
        )
        return MemoryStore(seed, keep=keep, clock=reactor), seed

    from lbproxy.control.store.file import FileStore

    store = FileStore(state_dir, reactor=reactor, keep=keep)
    store.claim()
    stored = store.read()
    if stored is None:
        log.info(
            "config store {path} is empty: starting from the command line; the "
            "first change stores it",
            path=store.path,
        )
        store.start = replace(seed, version=0)
        return store, store.start
    if seed_flags:
        log.warn(
            "{flags} ignored: the config store {path} holds config version "
            "{version}, which wins over the command line (move the state "
            "directory's files away to start from the command line again)",
            flags=", ".join(seed_flags), path=store.path, version=stored.version,
        )
    log.info("config version {version} loaded from {path}", version=stored.version, path=store.loaded_from)
    return store, listen_as_seeded(stored, seed)


def listen_as_seeded(stored: Document, seed: Document) -> Document:
    """
    A service stored with no listen endpoints (the one pool of a store
    written by the first release, migrated as C{default}) listens where
    the command line's service of that name does (C{--listen}).
    """
    services = []
    for s in stored.services:
        seeded = seed.service(s.name)
        if not s.listen and seeded is not None and seeded.listen:
            s = replace(s, listen=seeded.listen)
        services.append(s)
    return Document(stored.version, tuple(services))
