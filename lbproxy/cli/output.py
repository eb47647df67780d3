"""
How the CLI prints: aligned text tables for people, JSON for scripts.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: Any = None) -> None:
    """Columns padded to their widest cell; C{None} shows as C{-}."""
    out = out or sys.stdout
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers)] + cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


def pairs(items: Iterable[tuple[str, Any]], out: Any = None) -> None:
    """C{key: value} lines, keys aligned."""
    out = out or sys.stdout
    items = [(k, _cell(v)) for k, v in items]
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        out.write(f"{key + ':':<{width + 1}} {value}\n")


def as_json(value: Any, out: Any = None) -> None:
    out = out or sys.stdout
    out.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def when(seconds: float | None) -> str:
    """A UNIX time as UTC, to the second."""
    if seconds is None:
        return "-"
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
