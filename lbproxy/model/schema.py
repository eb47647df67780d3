"""
The JSON Schemas of the config document and of each API body, in one place.

They validate API bodies, imported and stored documents and the command
line (through L{lbproxy.model.validation.validate} and the parsers of
L{lbproxy.model.parse}), and
L{lbproxy.web.openapi} turns them into the components of C{openapi.json},
so what is documented is what is enforced.  Written in JSON Schema 2020-12;
C{x-errors} gives a field's message for a keyword where the generic one
would not help.  The few rules a schema cannot say (a timeout not longer
than its interval, no address twice) are checked by the parsers.
"""

from __future__ import annotations

from typing import Any

BACKEND_STATES = ("up", "draining", "disabled")
PROXY_PROTOCOLS = (None, "v1", "v2")
CHECK_TYPES = ("tcp", "http", "send-expect")

#: Upper bound of every duration in seconds except the check interval.
DAY = 86400


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """
    C{schema}, also allowing C{null}.
    """
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


HEALTH_CHECK: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "An active check: every interval seconds, rise passes in a row mark a "
                   "backend up and fall failures mark it down.",
    "properties": {
        "type": {"enum": list(CHECK_TYPES)},
        "interval": {"type": "number", "minimum": 0.1, "maximum": 3600,
                     "description": "Seconds between two checks of a backend."},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600,
                    "description": "Seconds a check may take; not longer than the interval."},
        "rise": {"type": "integer", "minimum": 1, "maximum": 100},
        "fall": {"type": "integer", "minimum": 1, "maximum": 100},
        "path": {"type": "string", "pattern": "^/[^ \\r\\n\\t#]*$", "maxLength": 2048,
                 "description": "HTTP check: the path to GET.",
                 "x-errors": {k: "must be an absolute HTTP path like '/health', not {value!r}"
                              for k in ("pattern", "maxLength")}},
        "status": {"type": ["string", "integer"], "format": "status-range",
                   "description": "HTTP check: a status or range, '200-399'."},
        "send": {"type": "string", "maxLength": 4096, "description": "send-expect: what to send."},
        "expect": {"type": "string", "maxLength": 4096,
                   "description": "send-expect: what must appear in the answer (not empty)."},
    },
}

OUTLIER: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Passive health: eject a backend after consecutive failures of real traffic.",
    "properties": {
        "consecutive_failures": {"type": "integer", "minimum": 1, "maximum": 1000},
        "base_ejection": {"type": "number", "exclusiveMinimum": 0, "maximum": DAY},
        "max_ejection": {"type": "number", "exclusiveMinimum": 0, "maximum": DAY,
                         "description": "Not shorter than base_ejection."},
        "max_ejection_percent": {"type": "integer", "minimum": 0, "maximum": 100},
    },
}

#: Paths of PEM files lbproxy reads (certificates, keys, CA bundles).
PEM_PATH: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 4096}

#: TLS on a backend: lbproxy speaks TLS to it (L{lbproxy.relay.tls}).
BACKEND_TLS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Connect to the backend over TLS, verifying it against a CA bundle and a "
                   "server name unless verify is false.",
    "properties": {
        "verify": {"type": "boolean", "description": "Verify the backend's certificate (default true)."},
        "ca": {**PEM_PATH, "description": "PEM CA bundle the backend's chain must lead to "
                                          "(default: the system's trust store)."},
        "server_name": {"type": "string", "minLength": 1, "maxLength": 253,
                        "description": "Name sent as SNI and verified (default: the backend's host)."},
    },
}

#: TLS on a service: every listener of the service terminates TLS.
SERVICE_TLS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["certificates"],
    "description": "Terminate TLS on every listener of the service.",
    "properties": {
        "certificates": {
            "type": "array", "minItems": 1, "maxItems": 100,
            "description": "Certificate chains chosen by SNI (exact, then wildcard, then the first).",
            "items": {"type": "object", "additionalProperties": False, "required": ["cert", "key"],
                      "properties": {"cert": PEM_PATH, "key": PEM_PATH}},
        },
        "min_version": {"enum": ["1.2", "1.3"], "description": "Oldest TLS version offered (default 1.2)."},
        "ciphers": {"type": "string", "minLength": 1, "maxLength": 2048,
                    "description": "OpenSSL cipher list for TLS 1.2 (default: ECDHE with AES-GCM or ChaCha20)."},
        "alpn": {"type": "array", "maxItems": 16, "uniqueItems": True,
                 "items": {"type": "string", "minLength": 1, "maxLength": 255},
                 "description": "ALPN protocols offered, in order of preference."},
        "client_ca": {**PEM_PATH, "description": "PEM CA bundle client certificates must lead to "
                                                 "(mTLS: a client without one is refused)."},
    },
}

BACKEND_FIELDS: dict[str, Any] = {
    "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
           "x-errors": {"pattern": "must be 1-64 letters, digits, '.', '_' or '-', not {value!r}"}},
    "host": {"type": "string", "minLength": 1, "maxLength": 253, "format": "host",
             "description": "An IP address (stored in canonical form) or a host name."},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "weight": {"type": "integer", "minimum": 0, "maximum": 1000,
               "description": "Share of new connections; 0 sends none."},
    "state": {"enum": list(BACKEND_STATES)},
    "proxy_protocol": {"enum": list(PROXY_PROTOCOLS)},
    "max_connections": nullable({"type": "integer", "minimum": 1, "maximum": 10_000_000}),
    "health_check": nullable(HEALTH_CHECK),
    "tls": nullable(BACKEND_TLS),
}

#: A backend of a config document.
BACKEND: dict[str, Any] = {
    "type": "object",
    "required": ["id", "host", "port"],
    "additionalProperties": False,
    "properties": BACKEND_FIELDS,
}

#: A backend to add through the API; it gets an id if it has none.
NEW_BACKEND: dict[str, Any] = {**BACKEND, "required": ["host", "port"]}

PATCH_FIELDS = ("weight", "state", "proxy_protocol", "max_connections", "health_check", "tls")

BACKEND_PATCH: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {k: BACKEND_FIELDS[k] for k in PATCH_FIELDS},
    "x-errors": {"minProperties": "must change at least one of " + ", ".join(sorted(PATCH_FIELDS))},
}

STRATEGY: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200,
                 "description": "A name from GET /api/v1/strategies."},
        "options": {"type": ["object", "null"],
                    "description": "Options valid against the strategy's options_schema."},
    },
}

SETTINGS_FIELDS: dict[str, Any] = {
    "health_check": nullable(HEALTH_CHECK),
    "outlier": nullable(OUTLIER),
    "slow_start": {"type": "number", "minimum": 0, "maximum": DAY,
                   "description": "Seconds over which a new or recovered backend ramps to full weight."},
    "drain_timeout": nullable({"type": "number", "exclusiveMinimum": 0, "maximum": DAY,
                               "description": "Seconds after which a draining backend's connections close."}),
    "on_marked_down": {"enum": ["none", "shutdown"],
                       "description": "shutdown: close a backend's connections when health marks it down."},
    "sni_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600,
                    "description": "Seconds a shared listener waits for a whole TLS ClientHello."},
    "connect_timeout": nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 3600,
                                 "description": "Seconds a backend connect may take; null: the command line's."}),
    "retries": nullable({"type": "integer", "minimum": 0, "maximum": 100,
                         "description": "Other backends tried after a failed connect; null: the command line's."}),
    "idle_timeout": nullable({"type": "number", "minimum": 0, "maximum": 7 * DAY,
                              "description": "Seconds without a byte either way before a connection closes "
                                             "(0: never); null: the command line's."}),
    "max_connections": nullable({"type": "integer", "minimum": 1, "maximum": 10_000_000,
                                 "description": "Client connections the service takes at once; "
                                                "null: the command line's."}),
    "tcp_keepalive": {
        "anyOf": [
            {"type": "array", "minItems": 3, "maxItems": 3,
             "items": {"type": "integer", "minimum": 1, "maximum": 32767}},
            {"const": "off"},
            {"type": "null"},
        ],
        "description": "TCP keepalive of the service's new connections, both sides: "
                       "[IDLE, INTERVAL, COUNT] (seconds, seconds, probes) or \"off\"; "
                       "null: the command line's --tcp-keepalive.",
    },
}

SETTINGS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": SETTINGS_FIELDS,
}

SERVICE_NAME: dict[str, Any] = {
    "type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,62}$",
    "x-errors": {"pattern": "must be 1-63 lower-case letters, digits, '.', '_' or '-' "
                            "starting with a letter or digit, not {value!r}"},
}

SERVER_NAME: dict[str, Any] = {
    "type": "string", "maxLength": 253,
    "pattern": "^(\\*\\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    "x-errors": {"pattern": "must be a lower-case server name like 'db.example.com' or "
                            "'*.example.com', not {value!r}"},
}

#: What makes a pool a service: its name, where it listens, how a shared
#: listener tells it apart.
SERVICE_FIELDS: dict[str, Any] = {
    "name": SERVICE_NAME,
    "listen": {"type": "array", "maxItems": 64, "uniqueItems": True,
               "items": {"type": "string", "minLength": 1, "maxLength": 512},
               "description": "Listen endpoints, as --listen takes them (tcp:5432:interface=127.0.0.1)."},
    "sni": {"type": "array", "maxItems": 1000, "uniqueItems": True, "items": SERVER_NAME,
            "description": "TLS server names that select this service on a shared listen endpoint."},
    "sni_default": {"type": "boolean",
                    "description": "The service of a shared endpoint for connections no name selects."},
    "accept_proxy": {"type": "array", "maxItems": 1000, "uniqueItems": True,
                     "items": {"type": "string", "minLength": 1, "maxLength": 64, "format": "cidr"},
                     "description": "Source networks whose connections start with a PROXY protocol header."},
    "tls": nullable(SERVICE_TLS),
}

_CIDRS: dict[str, Any] = {
    "type": "array", "maxItems": 10000, "uniqueItems": True,
    "items": {"type": "string", "minLength": 1, "maxLength": 64, "format": "cidr"},
}

#: Traffic control of a service (L{lbproxy.policy.limits}): who may connect,
#: how often and how many at once per client, and the queue at maxconn.
CLIENT_LIMITS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Limits per client address, or per prefix of prefix_v4/prefix_v6 bits.",
    "properties": {
        "max_connections": nullable({"type": "integer", "minimum": 1, "maximum": 10_000_000,
                                     "description": "Connections open at once per client; null: no limit."}),
        "rate": nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000,
                          "description": "New connections per second per client (token bucket); null: no limit."}),
        "burst": nullable({"type": "integer", "minimum": 1, "maximum": 10_000_000,
                           "description": "Bucket size: connections a client may open at once; "
                                          "null: the rate's, at least 1."}),
        "prefix_v4": {"type": "integer", "minimum": 1, "maximum": 32,
                      "description": "IPv4 clients are counted per /prefix_v4 (32: per address)."},
        "prefix_v6": {"type": "integer", "minimum": 1, "maximum": 128,
                      "description": "IPv6 clients are counted per /prefix_v6 (128: per address)."},
    },
}

TRAFFIC_FIELDS: dict[str, Any] = {
    "allow": {**_CIDRS, "description": "If not empty, only clients in these networks are served."},
    "deny": {**_CIDRS, "description": "Clients in these networks are refused (before allow)."},
    "client_limits": nullable(CLIENT_LIMITS),
    "max_queue": {"type": "integer", "minimum": 0, "maximum": 1_000_000,
                  "description": "Clients that wait when every backend is at its max_connections "
                                 "(0: refuse them at once)."},
    "queue_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600,
                      "description": "Seconds a client may wait in the queue before it is closed."},
}
SERVICE_FIELDS.update(TRAFFIC_FIELDS)

POOL_FIELDS: dict[str, Any] = {
    "backends": {"type": "array", "items": BACKEND, "maxItems": 10000},
    "strategy": STRATEGY,
    **SETTINGS_FIELDS,
}

#: The one-pool document of the first release, and the body of PUT /api/v1/config.
CONFIG: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"version": {"type": "integer", "minimum": 0}, **POOL_FIELDS, **SERVICE_FIELDS},
}

#: A service of the document.
SERVICE: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {**SERVICE_FIELDS, **POOL_FIELDS},
}

#: A service to add through the API: its backends get ids if they have none.
NEW_SERVICE: dict[str, Any] = {
    **SERVICE,
    "required": ["name", "listen"],
    "properties": {
        **SERVICE["properties"],
        "listen": {**SERVICE_FIELDS["listen"], "minItems": 1},
        "backends": {"type": "array", "items": NEW_BACKEND, "maxItems": 10000},
    },
}

#: The body of PATCH /api/v1/services/{name}: any field but the name.
SERVICE_PATCH: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {k: v for k, v in NEW_SERVICE["properties"].items() if k != "name"},
    "x-errors": {"minProperties": "must change at least one field"},
}

#: The config document: named services.
DOCUMENT: dict[str, Any] = {
    "type": "object",
    "required": ["services"],
    "additionalProperties": False,
    "properties": {
        "version": {"type": "integer", "minimum": 0},
        "services": {"type": "array", "items": SERVICE, "maxItems": 1000},
    },
}
