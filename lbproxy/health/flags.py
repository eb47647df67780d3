"""
The command line's health flags (C{--check}, C{--check-interval}, ...,
C{--outlier-*}, C{--slow-start}, C{--drain-timeout}) read into the
pool-wide settings of a L{lbproxy.model.config.Config}.

They go through the same schema and parser as the API's settings
(L{lbproxy.model.parse.parse_settings}), and a refusal names the flag, not
the field.
"""

from __future__ import annotations

import codecs
from typing import Any


def decode_escapes(value: str, flag: str) -> str:
    """
    Turn backslash escapes of a command-line string (C{\\r\\n}, C{\\x00})
    into the characters they stand for.

    @raise ValueError: for a malformed escape, naming C{flag}.
    """
    try:
        return codecs.escape_decode(value.encode("utf-8"))[0].decode("utf-8")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{flag} {value!r} has a malformed escape: {e}") from None


#: Command-line flags of the pool-wide check, by
#: L{lbproxy.model.checks.HealthCheck} field.
CHECK_FLAGS = {
    "interval": "--check-interval",
    "timeout": "--check-timeout",
    "rise": "--rise",
    "fall": "--fall",
    "path": "--check-path",
    "status": "--check-status",
    "send": "--check-send",
    "expect": "--check-expect",
}
#: The flags only one check type reads, and that type.
_TYPED_FLAGS = {"path": "http", "status": "http", "send": "send-expect", "expect": "send-expect"}
OUTLIER_FLAGS = {
    "consecutive_failures": "--outlier-failures",
    "base_ejection": "--outlier-ejection",
    "max_ejection": "--outlier-max-ejection",
    "max_ejection_percent": "--outlier-max-percent",
}
_CASTS = {
    "interval": float, "timeout": float, "rise": int, "fall": int,
    "consecutive_failures": int, "base_ejection": float, "max_ejection": float,
    "max_ejection_percent": int, "slow_start": float, "drain_timeout": float,
}
#: What the messages of L{lbproxy.model.parse.parse_settings} call each
#: command-line value ("cli.health_check.interval"), and its flag.
_FLAG_NAMES = {
    **{f"cli.health_check.{name}": flag for name, flag in CHECK_FLAGS.items()},
    "cli.health_check.type": "--check",
    "cli.health_check": "--check",
    **{f"cli.outlier.{name}": flag for name, flag in OUTLIER_FLAGS.items()},
    "cli.outlier": "the outlier flags",
    "cli.slow_start": "--slow-start",
    "cli.drain_timeout": "--drain-timeout",
    "cli": "the command line",
}


def _flag_message(message: str) -> str:
    for name in sorted(_FLAG_NAMES, key=len, reverse=True):
        message = message.replace(name, _FLAG_NAMES[name])
    return message


def _cast(name: str, flag: str, value: str) -> Any:
    from twisted.python import usage

    caster = _CASTS.get(name)
    if caster is None:
        return value
    try:
        return caster(value)
    except ValueError:
        kind = "an integer" if caster is int else "a number"
        raise usage.UsageError(f"{flag} must be {kind}, not {value!r}") from None


def settings_from_options(options: Any) -> dict[str, Any]:
    """
    The pool-wide lifecycle settings of the command line, as
    L{lbproxy.model.config.Config} fields (C{health_check}, C{outlier},
    C{slow_start}, C{drain_timeout}),
    validated by the same schema and parser as the API.  Without C{--check}
    the pool gets L{lbproxy.model.checks.DEFAULT_HEALTH_CHECK} (tcp; the
    interval and rise/fall flags still apply to it); C{--check none} turns
    active checks off.

    @param options: the parsed C{Options} mapping.
    @raise twisted.python.usage.UsageError: for any invalid value, in one
        line naming its flag; nothing is applied then.
    """
    from twisted.python import usage

    from lbproxy.model.checks import DEFAULT_HEALTH_CHECK
    from lbproxy.model.errors import ConfigError
    from lbproxy.model.parse import parse_settings
    from lbproxy.model.schema import CHECK_TYPES

    def given(flags: dict[str, str]) -> dict[str, Any]:
        return {
            name: _cast(name, flag, options[flag[2:]])
            for name, flag in flags.items()
            if options.get(flag[2:]) is not None
        }

    check = given(CHECK_FLAGS)
    for name in ("send", "expect"):
        if name in check:
            try:
                check[name] = decode_escapes(check[name], CHECK_FLAGS[name])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
    kind = options.get("check")
    if kind == "none":
        if check:
            raise usage.UsageError(f"{CHECK_FLAGS[next(iter(check))]} makes no sense with --check none")
    elif kind is not None and kind not in CHECK_TYPES:
        raise usage.UsageError(f"--check must be one of {', '.join(CHECK_TYPES)} or none, not {kind!r}")
    else:
        # A flag only http or send-expect reads means the operator wanted
        # that check, not the one given (or the default tcp) ignoring it.
        for name, needs in _TYPED_FLAGS.items():
            if name in check and needs != (kind or DEFAULT_HEALTH_CHECK.type):
                why = f"the default check is {DEFAULT_HEALTH_CHECK.type}" if kind is None else f"not --check {kind}"
                raise usage.UsageError(f"{CHECK_FLAGS[name]} needs --check {needs} ({why})")
        kind = kind or DEFAULT_HEALTH_CHECK.type
    outlier = given(OUTLIER_FLAGS)
    lifecycle = given({"slow_start": "--slow-start", "drain_timeout": "--drain-timeout"})
    raw: dict[str, Any] = {
        "health_check": None if kind == "none" else {"type": kind, **check},
        "outlier": None if outlier.get("consecutive_failures") == 0 else outlier,
        "slow_start": 0.0,
        "drain_timeout": None,
        **lifecycle,
    }
    try:
        return parse_settings(raw, "cli")
    except ConfigError as e:
        raise usage.UsageError(_flag_message(str(e))) from None
