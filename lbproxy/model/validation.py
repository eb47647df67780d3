"""
Checking a JSON value against a schema of L{lbproxy.model.schema}, with
messages an operator can act on.

L{validate} runs JSON Schema 2020-12 with lbproxy's formats (C{host},
C{status-range}, C{cidr}) and only finite numbers, and turns the most
relevant failure into one L{ConfigError} naming the field
(C{body.backends[2].port must be at most 65535, not 70000}) or the
schema's own C{x-errors} message.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match

from lbproxy.model.address import canonical_host
from lbproxy.model.errors import ConfigError


_STATUS = re.compile(r"\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?")


def status_range(value: Any) -> tuple[int, int]:
    """
    Parse an HTTP status or range, C{200} or C{"200-399"}.

    @raise ValueError: naming what is wrong.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("must be a status like '200' or a range like '200-399'")
    m = _STATUS.fullmatch(value)
    if not m:
        raise ValueError(f"{value!r} is not a status like '200' or a range like '200-399'")
    low = int(m.group(1))
    high = int(m.group(2) or low)
    if not (100 <= low <= high <= 599):
        raise ValueError(f"{value!r} must lie within 100-599, low to high")
    return (low, high)


FORMATS = FormatChecker(formats=())
FORMATS.checks("host", raises=ValueError)(lambda v: not isinstance(v, str) or bool(canonical_host(v)))
FORMATS.checks("status-range", raises=ValueError)(lambda v: bool(status_range(v)))


def _cidr(value: Any) -> bool:
    import ipaddress

    if isinstance(value, str):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"must be a network like '10.0.0.0/8' or an address, not {value!r}") from None
    return True


FORMATS.checks("cidr", raises=ValueError)(_cidr)


def _finite(checker: Any, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


_Validator = jsonschema.validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("number", _finite),
)
_validators: dict[int, tuple[dict[str, Any], Any]] = {}

_KINDS = {
    "integer": "an integer", "number": "a number", "string": "a string",
    "object": "a JSON object", "array": "a list", "boolean": "true or false", "null": "null",
}


def _where(what: str, path: Any) -> str:
    for p in path:
        what += f"[{p}]" if isinstance(p, int) else f".{p}"
    return what


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(e: jsonschema.ValidationError, what: str) -> str:
    where = _where(what, e.absolute_path)
    kind, limit, value, schema = e.validator, e.validator_value, e.instance, e.schema
    custom = schema.get("x-errors", {}).get(kind)
    if custom:
        return f"{where} {custom.format(value=value)}"
    if kind == "type":
        types = [limit] if isinstance(limit, str) else list(limit)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "number" in types:
            return f"{where} must be a finite number"
        return f"{where} must be {' or '.join(_KINDS[t] for t in types)}, not {_shown(value)}"
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": "at least", "exclusiveMinimum": "greater than",
                 "maximum": "at most", "exclusiveMaximum": "less than"}[kind]
        return f"{where} must be {words} {limit}, not {value}"
    if kind == "enum":
        names = [v for v in limit if v is not None]
        if None in limit:
            choices = "null, " + ", ".join(map(repr, names[:-1])) + f" or {names[-1]!r}"
        else:
            choices = "one of " + ", ".join(map(str, names))
        return f"{where} must be {choices}, not {_shown(value)}"
    if kind == "required":
        missing = [k for k in limit if k not in value]
        if len(missing) == 2 and len(limit) == 2:
            return f"{where} needs both {missing[0]!r} and {missing[1]!r}"
        return f"{where} needs " + " and ".join(map(repr, missing))
    if kind == "additionalProperties":
        known = schema.get("properties", {})
        extra = sorted(k for k in value if k not in known)
        return (f"{where}: unknown field(s) {', '.join(map(repr, extra))}; "
                f"the fields are {', '.join(known)}")
    if kind == "minLength" and limit == 1:
        return f"{where} must not be empty"
    if kind == "maxLength":
        return f"{where} must be at most {limit} characters long"
    if kind == "maxItems":
        return f"{where} must have at most {limit} entries"
    if kind == "format" and e.cause is not None:
        return f"{where} {e.cause}"
    return f"{where}: {e.message}"


def validate(instance: Any, schema: dict[str, Any], what: str) -> Any:
    """
    Check C{instance} against C{schema}.

    @param what: how the message names C{instance} (C{"body"},
        C{"config.backends[2]"}); the failing field's path follows it.
    @return: C{instance}.
    @raise ConfigError: naming the field and what is wrong with it.
    """
    cached = _validators.get(id(schema))
    if cached is None or cached[0] is not schema:
        cached = _validators[id(schema)] = (schema, _Validator(schema, format_checker=FORMATS))
    validator = cached[1]
    error = best_match(validator.iter_errors(instance))
    if error is not None:
        raise ConfigError(_message(error, what))
    return instance
