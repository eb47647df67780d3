"""
The file store's on-disk format: checksummed JSON envelopes.

C{config.json} is C{{"format": 1, "checksum": "sha256:...", "config":
{...}}} and C{history.json} C{{"format", "checksum", "entries": [...]}};
the checksum covers the canonical JSON of the body, so a torn or edited
file is recognised rather than half-believed.  Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lbproxy.control.store.history import Entry
from lbproxy.model.config import Config
from lbproxy.model.errors import ConfigError
from lbproxy.model.service import as_document, parse_document

FORMAT = 1


class CorruptFile(Exception):
    """
    A store file cannot be used; the message says why, in an operator's
    words.
    """


def canonical(body: Any) -> bytes:
    """
    The bytes the checksum covers: sorted keys, no spaces, UTF-8.
    """
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def checksum(body: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def encode(config: Config) -> bytes:
    """
    The file contents that store C{config}.
    """
    body = as_document(config).to_json()
    envelope = {"format": FORMAT, "checksum": checksum(body), "config": body}
    return json.dumps(envelope, indent=1, ensure_ascii=False).encode() + b"\n"


def decode(data: bytes) -> Config:
    """
    Parse and verify the contents of a store file.

    @raise CorruptFile: if it is empty, truncated, not JSON, of an unknown
        format, fails its checksum or holds an invalid config.
    """
    if not data.strip():
        raise CorruptFile("is empty")
    try:
        envelope = json.loads(data)
    except ValueError as e:
        raise CorruptFile(f"is not valid JSON (truncated or damaged): {e}") from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise CorruptFile(f"is not a lbproxy config store file of format {FORMAT}")
    body = envelope.get("config")
    if envelope.get("checksum") != checksum(body):
        raise CorruptFile("fails its checksum: it was damaged or edited by hand")
    try:
        return parse_document(body)
    except ConfigError as e:
        raise CorruptFile(f"holds an invalid config: {e}") from None


def encode_history(entries: list[Entry]) -> bytes:
    """
    The contents of C{history.json} holding C{entries}.
    """
    body = [e.to_json() for e in entries]
    return json.dumps({"format": FORMAT, "checksum": checksum(body), "entries": body},
                      ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode_history(data: bytes) -> list[Entry]:
    """
    Parse and verify the contents of C{history.json}.

    @raise ValueError: if it is not JSON, of another format, or fails its
        checksum.
    """
    envelope = json.loads(data)
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise ValueError(f"not a history file of format {FORMAT}")
    body = envelope.get("entries")
    if envelope.get("checksum") != checksum(body) or not isinstance(body, list):
        raise ValueError("fails its checksum")
    return [Entry.from_json(e) for e in body]
