"""
Who may read and who may change the pool through the admin API.

Four checks, for four threats:
  - the C{Host} must be a name this admin answers for (a literal address it
    is bound to, C{localhost}, or a C{--admin-host} name), so a page whose
    name was re-pointed at 127.0.0.1 (DNS rebinding) cannot use the
    operator's browser as a same-origin client;
  - a bearer token (when one is configured) so only operators change the
    pool, and optionally only they read it;
  - the C{Origin} (and C{Sec-Fetch-Site}) of a mutation must be this site
    under one of those names,
    so a page on another origin that the operator happens to visit cannot
    drive their browser against the admin API (CSRF);
  - C{POST}/C{PUT}/C{PATCH} must declare a JSON body, which a plain HTML
    form cannot send and which makes a browser ask (pre-flight) before any
    cross-origin request, a question this API never says yes to.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from typing import Any, Iterable
from urllib.parse import urlsplit

from lbproxy.web.errors import ApiError, is_json_type

SAFE_METHODS = frozenset({b"GET", b"HEAD"})
BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
#: The only path that takes the token as C{?access_token=} (RFC 6750 2.3):
#: EventSource cannot send headers, and query strings end up in logs.
EVENTS_PATH = b"/api/v1/events"

_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]@/\s]+))(?::[0-9]{0,5})?")


def host_name(value: str) -> str | None:
    """
    The host of a C{Host} header or URL authority (without port or IPv6
    brackets), lower case, or C{None} if it is not one.
    """
    m = _HOST.fullmatch(value.strip().lower())
    if m is None:
        return None
    return m.group("v6") or m.group("name")


def _same_ip(name: str, local: str) -> bool:
    try:
        a, b = ipaddress.ip_address(name), ipaddress.ip_address(local.split("%")[0])
    except ValueError:
        return False
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
    return (getattr(a, "ipv4_mapped", None) or a) == (getattr(b, "ipv4_mapped", None) or b)


class AdminPolicy:
    """
    The access rules of one admin site.

    @ivar token: the bearer token as bytes, or C{None} when none is
        configured (then anyone who can connect may change the pool, which
        is why the command line only allows it on loopback).
    @ivar open_reads: whether reads need no token.
    @ivar origins: extra origins (C{scheme://host:port}) allowed to mutate,
        for a UI served from elsewhere; the site's own origin always is.
    @ivar hosts: names besides C{localhost} and the literal address a
        connection arrived on that the admin answers for (C{--admin-host}).
    """

    def __init__(self, token: str | None = None, open_reads: bool = False, origins: Iterable[str] = (),
                 hosts: Iterable[str] = ()) -> None:
        self.token = token.encode("utf-8") if token else None
        self.open_reads = open_reads
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)
        self.hosts = frozenset(h.lower() for h in hosts)

    def host_allowed(self, name: str, local: Any) -> bool:
        """
        Whether the admin answers for host C{name} on a connection whose
        local address is C{local} (an L{IAddress}).
        """
        if name == "localhost" or name in self.hosts:
            return True
        bound = getattr(local, "host", None)
        return isinstance(bound, str) and _same_ip(name, bound)

    def check_host(self, request: Any) -> None:
        """
        Refuse a request without exactly one C{Host} header (HTTP/1.0 may
        have none) or for a host this admin does not answer for.

        @raise ApiError: 400 for a missing or repeated header, 421 for a
            foreign name.
        """
        values = request.requestHeaders.getRawHeaders(b"host") or []
        if len(values) > 1:
            raise ApiError(400, "a request must have exactly one Host header")
        if not values:
            if request.clientproto == b"HTTP/1.0":
                return
            raise ApiError(400, "an HTTP/1.1 request must have a Host header")
        text = values[0].decode("latin-1")
        name = host_name(text)
        if name is None or not self.host_allowed(name, request.getHost()):
            raise ApiError(
                421, f"this admin does not answer for host {text!r}; use its address, localhost, "
                "or a name given with --admin-host (this refuses DNS rebinding)",
            )

    def check(self, request: Any) -> None:
        """
        Refuse C{request} unless it may do what its method says.

        @raise ApiError: 401 without a valid token, 403 from a foreign
            origin, 415 for a body that is not declared JSON.
        """
        method = request.method
        if method in SAFE_METHODS:
            if not self.open_reads:
                self._check_token(request, allow_query=request.path == EVENTS_PATH)
            return
        self._check_token(request, allow_query=False)
        self._check_origin(request)
        if method in BODY_METHODS and not is_json_type(request.getHeader(b"content-type")):
            raise ApiError(415, "changes must send a JSON body with Content-Type: application/json")

    def _check_token(self, request: Any, allow_query: bool) -> None:
        if self.token is None:
            return
        given = None
        header = request.getHeader(b"authorization")
        if header:
            scheme, _, value = header.partition(b" ")
            if scheme.lower() == b"bearer":
                given = value.strip()
        elif allow_query:
            # request.args holds decoded names, so %61ccess_token is this too;
            # the access log redacts it by the same decoding.
            values = request.args.get(b"access_token")
            if values:
                given = values[0]
        if given is None:
            raise ApiError(
                401, "this admin API needs 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="lbproxy"'},
            )
        if not hmac.compare_digest(given, self.token):
            raise ApiError(
                401, "the bearer token is wrong",
                headers={"WWW-Authenticate": 'Bearer realm="lbproxy", error="invalid_token"'},
            )

    def _check_origin(self, request: Any) -> None:
        site = request.getHeader(b"sec-fetch-site")
        if site is not None and site.lower() not in (b"same-origin", b"none"):
            if not self._origin_allowed(request):
                raise ApiError(403, f"changes from a {site.decode('latin-1')} page are refused (CSRF protection)")
        origin = request.getHeader(b"origin")
        if origin is None:
            return
        if not self._origin_allowed(request):
            raise ApiError(
                403, f"changes from origin {origin.decode('latin-1')!r} are refused; "
                "only this site's own pages may change it (CSRF protection)",
            )

    def _origin_allowed(self, request: Any) -> bool:
        origin = request.getHeader(b"origin")
        if origin is None:
            return False
        text = origin.decode("latin-1").rstrip("/").lower()
        if text in self.origins:
            return True
        parts = urlsplit(text)
        host = request.getHeader(b"host")
        if parts.scheme not in ("http", "https") or host is None:
            return False
        name = host_name(parts.netloc)
        return (
            parts.netloc == host.decode("latin-1").lower()
            and name is not None
            and self.host_allowed(name, request.getHost())
        )


def read_token_file(path: str) -> str:
    """
    The admin token from C{path}: its first line, without surrounding
    whitespace.

    @raise ValueError: unreadable, empty, or not printable ASCII (a token
        goes in an HTTP header).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(4097)
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror or e}") from None
    lines = raw.strip().splitlines()
    token = lines[0].strip() if lines else b""
    if len(raw) > 4096:
        raise ValueError(f"{path!r} is too long for a token file")
    if len(token) < 16:
        raise ValueError(f"{path!r} must hold a token of at least 16 characters")
    if not all(33 <= c < 127 for c in token):
        raise ValueError(f"the token in {path!r} must be printable ASCII without spaces")
    return token.decode("ascii")


def loopback_only(description: str) -> bool:
    """
    Whether a server endpoint description listens on loopback (or a UNIX
    socket) only.  Anything not understood counts as reachable from
    elsewhere.
    """
    import ipaddress

    from lbproxy.listening.endpoints import parse_endpoint

    if description.startswith("unix:"):
        return True
    try:
        interface = parse_endpoint(description).interface
    except ValueError:
        return False
    if not interface:
        return False
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.split("%")[0]).is_loopback
    except ValueError:
        return False
