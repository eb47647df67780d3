"""
JSON Schema 2020-12 (the dialect of L{lbproxy.model.schema}) translated to
OpenAPI 3.0's, so C{openapi.json} documents the very schemas the API
validates with.
"""

from __future__ import annotations

from typing import Any

_STANDARD_FORMATS = {"int32", "int64", "float", "double", "byte", "binary", "date", "date-time", "password"}


def oas30(schema: Any) -> Any:
    """
    A JSON Schema 2020-12 of L{lbproxy.model.schema} in OpenAPI 3.0's
    dialect: C{null} in C{type} or C{enum} becomes C{nullable}, numeric
    C{exclusiveMinimum} the boolean form, a list of types C{anyOf}, and our
    own formats and C{x-errors} are left out (a generator would not know
    them; the descriptions say what they check).
    """
    if isinstance(schema, list):
        return [oas30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "x-errors" or (key == "format" and value not in _STANDARD_FORMATS):
            continue
        if key in ("properties", "$defs"):
            out[key] = {k: oas30(v) for k, v in value.items()}
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = oas30(value)
    types = schema.get("type")
    if isinstance(types, list):
        rest = [t for t in types if t != "null"]
        if len(rest) < len(types):
            out["nullable"] = True
        if len(rest) == 1:
            out["type"] = rest[0]
        else:
            del out["type"]
            out["anyOf"] = [{"type": t} for t in rest]
    enum = schema.get("enum")
    if enum is not None and "type" not in out:
        kinds = {type(v) for v in enum if v is not None}
        if kinds == {str}:
            out["type"] = "string"
        if None in enum:
            out["nullable"] = True
    return out
