"""
C{If-Match} as RFC 9110 section 13.1.1 defines it, for changes of the config.

The field is C{*} or a comma-separated list of entity-tags
(C{"12"}, C{W/"12"}, C{"12", "13"}; empty list elements are ignored, and
several field lines are one list).  It is compared strongly: a weak tag
never matches, and C{"12"} matches only the config whose ETag is C{"12"}.
A malformed field is refused with 400; a well-formed one that names no
current version is a false precondition, 412 (L{IfMatch.expected}).  A bare
version without quotes (C{If-Match: 12}) is not an entity-tag, but the first
release accepted it, so it still means C{"12"}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lbproxy.web.errors import ApiError

__all__ = ["IfMatch", "if_match"]

_OWS = b" \t"
#: One entity-tag at the start of the rest of the field: weakness and opaque-tag.
_ETAG = re.compile(rb'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')
_VERSION = re.compile(rb"0|[1-9][0-9]{0,17}")
_BARE = re.compile(rb"[0-9]{1,18}")
_MALFORMED = ('If-Match must be * or a list of entity-tags, like "12" (the ETag of a read); '
              "not {value!r}")


@dataclass(frozen=True)
class IfMatch:
    """
    A parsed C{If-Match}.

    @ivar given: whether the request had the field at all.
    @ivar any: the field was C{*}: any current config matches.
    @ivar versions: the config versions its strong tags name.
    @ivar text: the field as received, for messages.
    """

    given: bool = False
    any: bool = False
    versions: tuple[int, ...] = ()
    text: str = ""

    def expected(self, current: int) -> int | None:
        """
        The version a change must still find when its turn comes, for
        L{lbproxy.control.controller.ConfigController.change}.

        @param current: the config version in force now.
        @return: C{None} when anything goes (no field, C{*}); C{current} if
            a tag names it; else the highest version named (a change queued
            ahead may yet make it current, or the controller refuses).
        @raise ApiError: 412 when no tag can ever match (only weak tags or
            tags that are not versions of this config).
        """
        if not self.given or self.any:
            return None
        if current in self.versions:
            return current
        if self.versions:
            return max(self.versions)
        raise ApiError(
            412, f"If-Match {self.text} names no version of this config (weak tags never match "
            f'If-Match); the current version is {current}, ETag "{current}"; nothing changed',
            current_version=current,
        )


def if_match(request: Any) -> IfMatch:
    """
    Parse the request's C{If-Match} field lines as one list.

    @raise ApiError: 400 for a malformed field.
    """
    lines = request.requestHeaders.getRawHeaders(b"if-match")
    if lines is None:
        return IfMatch()
    value = b", ".join(lines)
    text = value.decode("latin-1")
    stripped = value.strip(_OWS)
    if stripped == b"*":
        return IfMatch(given=True, any=True, text=text)
    if _BARE.fullmatch(stripped):
        return IfMatch(given=True, versions=(int(stripped),), text=text)
    versions: list[int] = []
    tags = 0
    pos, end = 0, len(value)
    while True:
        while pos < end and value[pos] in b" \t,":
            pos += 1
        if pos == end:
            break
        m = _ETAG.match(value, pos)
        if m is None:
            raise ApiError(400, _MALFORMED.format(value=text))
        tags += 1
        weak, opaque = m.groups()
        if not weak and _VERSION.fullmatch(opaque):
            versions.append(int(opaque))
        pos = m.end()
        while pos < end and value[pos] in _OWS:
            pos += 1
        if pos < end and value[pos] != ord(","):
            raise ApiError(400, _MALFORMED.format(value=text))
    if not tags:
        raise ApiError(400, _MALFORMED.format(value=text))
    return IfMatch(given=True, versions=tuple(versions), text=text)
