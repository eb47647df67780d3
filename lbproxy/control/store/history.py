"""
Config history: the last N versions of the document, who made each and a
one-line summary, kept by the store beside the document itself.

Nothing here knows the document's shape: an entry holds the JSON document
as the store wrote it, L{diff} compares any two JSON values structurally
and L{summarize} describes a diff in one line when the change did not say
what it did.  History is never rewritten: a rollback is a new version whose
document equals an old one.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable, NamedTuple

from zope.interface import Attribute, Interface

#: Versions kept unless C{--history} says otherwise.
DEFAULT_KEEP = 100
_MISSING = object()


class Change(NamedTuple):
    """
    What a change says of itself: who made it and what it did.
    """

    #: the token's label, C{ui}, C{cli}, C{file}, a node name, ...
    by: str
    #: one line, e.g. C{added backend b4 127.0.0.1:9004}; C{""}: compute it
    #: from the diff.  Given to the controller, it may also be a function of
    #: the mutation's result (a new backend's id), called once it is known.
    summary: Any = ""


class Entry(NamedTuple):
    """
    One version in the history.
    """

    version: int
    time: float
    by: str
    summary: str
    document: Any
    #: the L{diff} against the document before, made when it was stored
    #: (so the oldest kept entry still has one); C{None} for the first.
    changes: list | None = None

    def meta(self) -> dict[str, Any]:
        """
        The entry as C{GET /api/v1/history} lists it (no document).
        """
        return {"version": self.version, "time": self.time, "by": self.by, "summary": self.summary}

    def to_json(self) -> dict[str, Any]:
        return dict(self.meta(), document=self.document, changes=self.changes)

    @classmethod
    def from_json(cls, value: Any) -> "Entry":
        """
        @raise ValueError: if C{value} is not an entry.
        """
        if not isinstance(value, dict):
            raise ValueError("a history entry must be an object")
        try:
            version, time = value["version"], value["time"]
            by, summary, document = value["by"], value["summary"], value["document"]
        except KeyError as e:
            raise ValueError(f"a history entry needs {e.args[0]!r}") from None
        if type(version) is not int or not isinstance(time, (int, float)):
            raise ValueError("a history entry's version and time must be numbers")
        if not isinstance(by, str) or not isinstance(summary, str):
            raise ValueError("a history entry's by and summary must be strings")
        changes = value.get("changes")
        if changes is not None and not isinstance(changes, list):
            raise ValueError("a history entry's changes must be a list")
        return cls(version, float(time), by, summary, document, changes)


class IConfigHistory(Interface):
    """
    A config store that keeps the last L{keep} versions, each entry stored
    by C{save} with the document, durably and together.

    C{IConfigStore.save(config, expected_version)} keeps its signature (so
    every store and test double stays one); the controller says who made
    the version it is about to save with L{describe} first, inside its
    lock, so the two cannot interleave with another change.
    """

    keep = Attribute("How many versions are kept (the oldest go first).")

    def describe(version, change):
        """
        The next C{save} of C{version} was made by C{change} (a L{Change}
        or C{None}: unknown); forgotten after that save.
        """

    def history():
        """
        @return: a Deferred firing with the L{Entry}s, newest first.
        """

    def entry(version):
        """
        @return: a Deferred firing with the L{Entry} of C{version} and the
            one before it (C{(entry, previous)}; either may be C{None}).
        """


def diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """
    The structural difference of two JSON values: a list of C{{"path",
    "old", "new"}}, paths like C{/backends/2/weight} (JSON Pointer).  Lists
    of objects with an C{id} are matched by id (C{/backends/b4}), and lists
    of objects with a C{name} by name (C{/services/web/strategy}), so
    removing the first backend or service is one change, not one per
    member; other lists by index.  An added or removed member has C{old} or C{new} absent
    (C{None} in the list).
    """
    out: list[dict[str, Any]] = []
    _diff(old, new, path, out)
    return out


def _by_id(items: list) -> dict[str, Any] | None:
    for field in ("id", "name"):
        ids = [i.get(field) if isinstance(i, dict) else None for i in items]
        if items and all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids):
            return dict(zip(ids, items))
    return None


def _pointer(part: Any) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _diff(old: Any, new: Any, path: str, out: list) -> None:
    if old is _MISSING or new is _MISSING:
        out.append({"path": path or "/", "old": None if old is _MISSING else old,
                    "new": None if new is _MISSING else new})
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            if k == "version" and not path:
                continue
            a, b = old.get(k, _MISSING), new.get(k, _MISSING)
            if a != b:
                _diff(a, b, f"{path}/{_pointer(k)}", out)
        return
    if isinstance(old, list) and isinstance(new, list):
        a, b = _by_id(old), _by_id(new)
        if a is not None and (b is not None or not new):
            b = b or {}
            for k in list(a) + [k for k in b if k not in a]:
                x, y = a.get(k, _MISSING), b.get(k, _MISSING)
                if x != y:
                    _diff(x, y, f"{path}/{_pointer(k)}", out)
            return
        if b is not None and not old:
            for k, y in b.items():
                _diff(_MISSING, y, f"{path}/{_pointer(k)}", out)
            return
        for i in range(max(len(old), len(new))):
            x = old[i] if i < len(old) else _MISSING
            y = new[i] if i < len(new) else _MISSING
            if x != y:
                _diff(x, y, f"{path}/{i}", out)
        return
    if old != new:
        out.append({"path": path or "/", "old": old, "new": new})


def _short(value: Any) -> str:
    if isinstance(value, dict):
        if "id" in value and "host" in value and "port" in value:
            return f"{value['id']} {value['host']}:{value['port']}"
        if "id" in value:
            return str(value["id"])
        return "{...}"
    if isinstance(value, list):
        return "[...]"
    return "null" if value is None else str(value)


def summarize(changes: list[dict[str, Any]], limit: int = 120) -> str:
    """
    One line for a diff, for a change that did not describe itself:
    C{"/strategy/name round-robin -> least-connections"}, C{"added
    /backends/b4 127.0.0.1:9004"}, and C{"; N more"} past three.
    """
    if not changes:
        return "no change"
    parts = []
    for c in changes[:3]:
        path = c["path"]
        if c["old"] is None and c["new"] is not None:
            parts.append(f"added {path} {_short(c['new'])}".rstrip())
        elif c["new"] is None and c["old"] is not None:
            parts.append(f"removed {path}")
        else:
            parts.append(f"{path} {_short(c['old'])} -> {_short(c['new'])}")
    line = "; ".join(parts)
    if len(changes) > 3:
        line += f"; {len(changes) - 3} more"
    return line if len(line) <= limit else line[: limit - 3] + "..."


class Ring:
    """
    The last C{keep} entries in memory, oldest first: what the file and
    memory stores serve history from, so reading it costs no I/O.
    """

    def __init__(self, keep: int = DEFAULT_KEEP, entries: Iterable[Entry] = ()) -> None:
        if keep < 1:
            raise ValueError("history must keep at least one version")
        self.keep = keep
        self._entries: deque[Entry] = deque(sorted(entries, key=lambda e: e.version)[-keep:], maxlen=keep)

    def add(self, entry: Entry) -> None:
        while self._entries and self._entries[-1].version >= entry.version:
            self._entries.pop()
        self._entries.append(entry)

    def with_entry(self, entry: Entry) -> list[Entry]:
        """
        @return: the entries (oldest first) as they would be after L{add}.
        """
        ring = Ring(self.keep, self._entries)
        ring.add(entry)
        return list(ring._entries)

    def newest_first(self) -> list[Entry]:
        return list(reversed(self._entries))

    def find(self, version: int) -> tuple[Entry | None, Entry | None]:
        before = None
        for e in self._entries:
            if e.version == version:
                return e, before
            before = e
        return None, None

    def __len__(self) -> int:
        return len(self._entries)


class Notes:
    """
    The L{Change} given to L{IConfigHistory.describe} until the save of
    that version takes it.
    """

    def __init__(self) -> None:
        self._described: tuple[int, Change | None] | None = None

    def describe(self, version: int, change: Change | None) -> None:
        self._described = (version, change)

    def pop_note(self, version: int) -> Change | None:
        pending, self._described = self._described, None
        return pending[1] if pending is not None and pending[0] == version else None


#: Who and what the config a process started from is recorded as, so a
#: rollback to the state before the first change is possible.
START = Change("start", "config at start")


def start_entry(document: Any, version: int, time: float) -> Entry:
    """
    The entry of the document the store started from (the seed or the
    loaded config) when it had no history yet.
    """
    return Entry(version, time, START.by, START.summary, document, None)


def make_entry(document: Any, version: int, time: float, change: Change | None, previous: Any) -> Entry:
    """
    The entry a store writes for a new version: the change's own words,
    or a summary computed from the diff against C{previous} (the document
    before, C{None} for the first).
    """
    by = change.by if change is not None and change.by else "unknown"
    summary = change.summary if change is not None and change.summary else ""
    changes = None if previous is None else diff(previous, document)
    if not summary:
        summary = "first version" if changes is None else summarize(changes)
    return Entry(version, time, by, summary, document, changes)
