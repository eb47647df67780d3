"""
The admin's HTTP server: a L{twisted.web.server.Site} that decides from
the headers, before reading a body, and bounds what each client can hold.

  - C{Host} rules, the token, the origin, the JSON type and the size of a
    body are all checked when the headers are complete
    (L{twisted.web.http.Request.gotLength}, which the channel calls once,
    after the last header line); a refused request is answered at once and
    its connection closed, so a client announcing 1 GiB without a token
    sends none of it.
  - Bodies are kept in memory and cut at L{MAX_BODY}
    (L{twisted.web.http.Request.handleContentChunk}, which gets each piece
    of a fixed-length or chunked body); the stock request spools bodies
    over 100 kB to a temporary file.
  - At most C{max_connections} connections at once (more are closed as they
    are accepted, L{AdminSite.buildProtocol} returning C{None}), and each
    request must arrive whole within C{read_timeout} seconds of the
    connection or the previous response, or it gets C{408} and the
    connection is closed: slow clients cannot hold the process's file
    descriptors, which the relay needs.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web.http import HTTPChannel, parse_qs
from twisted.web.server import Request, Site

from lbproxy.web.errors import MAX_BODY, ApiError, dumps

log = Logger()

#: Concurrent admin connections (the event feed's streams count too).
MAX_CONNECTIONS = 256
#: Seconds a client has to send one whole request.
READ_TIMEOUT = 10.0


class AdminRequest(Request):
    """
    A request that is checked when its headers are in and whose body stays
    in memory, bounded.

    @ivar refusal: an L{ApiError} found from the headers of a request
        without a body, answered in L{process} instead of routing it.
    """

    refusal: ApiError | None = None
    request_line: bytes | None = None
    _received = 0

    def gotLength(self, length: int | None) -> None:
        # length is None for a chunked body, 0 for none.
        self.content = io.BytesIO()
        self._early_fields()
        try:
            self.channel.site.policy.check_host(self)
            _check_path(self.path)
            if length != 0:
                self.channel.site.policy.check(self)
                if length is not None and length > MAX_BODY:
                    raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
        except ApiError as e:
            if length == 0:
                self.refusal = e
            else:
                self._refuse_now(e)

    def handleContentChunk(self, data: bytes) -> None:
        if self.finished:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse_now(ApiError(413, f"the body is larger than {MAX_BODY} bytes"))
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.finished:
            return
        self.channel.request_read()
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self.refusal is None:
            super().process()
            return
        self.site = self.channel.site
        self._answer(self.refusal)
        self.finish()

    def connectionLost(self, reason: Any) -> None:
        channel = self.channel
        super().connectionLost(reason)
        # A response the client ended (an event feed, as a rule) gets its
        # access line now: only finish() writes one otherwise.
        if channel is not None and self.startedWriting and not self.finished:
            channel.factory.log(self)

    def _early_fields(self) -> None:
        """
        Method, path, query and version from the request line, which the
        stock request only learns once the body is in.
        """
        parts = (self.request_line or b"").split(b" ")
        if len(parts) != 3:
            return
        self.method, self.uri, self.clientproto = parts
        self.path, _, query = self.uri.partition(b"?")
        self.args = parse_qs(query, 1) if query else {}

    def _answer(self, error: ApiError) -> bytes:
        body = dumps(error.body())
        self.setResponseCode(error.code)
        for name, value in error.headers.items():
            self.setHeader(name.encode(), value.encode())
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Cache-Control", b"no-store")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        return body

    def _refuse_now(self, error: ApiError) -> None:
        """
        Answer before the body is read, and close: what the client still
        sends is never read.  (Not L{finish}: that would hand the channel,
        which is in the middle of parsing, back to the next request.)
        """
        # The channel would answer "100 Continue" after us otherwise.
        self.requestHeaders.removeHeader(b"expect")
        self.setHeader(b"Connection", b"close")
        self._answer(error)
        self.finished = 1
        self.channel.factory.log(self)
        self.channel.loseConnection()


def _check_path(path: bytes | None) -> None:
    # Klein would log a traceback for each such request; refuse it plainly.
    try:
        unquote_to_bytes(path or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the path is not valid UTF-8 once percent-decoded") from None


class AdminChannel(HTTPChannel):
    """
    An HTTP channel that remembers each request line (for the early
    checks), counts itself against the site's cap and enforces the read
    deadline.
    """

    _deadline: Any = None
    _aborting: Any = None
    _partial = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.open_connections += 1
        self._arm()

    def connectionLost(self, reason: Any) -> None:
        self.site.open_connections -= 1
        self._disarm()
        if self._aborting is not None and self._aborting.active():
            self._aborting.cancel()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        self._partial = True
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        count = len(self.requests)
        super().lineReceived(line)
        if len(self.requests) > count and self.requests[-1].request_line is None:
            self.requests[-1].request_line = line

    def request_read(self) -> None:
        """
        The current request arrived whole: no deadline while it is handled
        (an event feed stream may last for hours).
        """
        self._disarm()

    def requestDone(self, request: Any) -> None:
        # Armed first: the next pipelined request may be read at once.
        self._arm()
        super().requestDone(request)

    def _arm(self) -> None:
        self._disarm()
        self._partial = False
        timeout = self.site.read_timeout
        if timeout:
            self._deadline = self.callLater(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._partial:
            body = dumps({"error": f"the request did not arrive within {self.site.read_timeout:g} seconds"})
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.loseConnection()
        # A client that reads nothing would keep the socket open.
        self._aborting = self.callLater(self.site.read_timeout, self.transport.abortConnection)


class AdminSite(Site):
    """
    The site of an L{lbproxy.web.app.AdminApp}: its resource, its policy,
    access log lines with the token redacted, no traceback pages, and the
    limits above.

    @ivar open_connections: connections open now.
    """

    requestFactory = AdminRequest
    protocol = AdminChannel

    def __init__(self, app: Any, *, max_connections: int = MAX_CONNECTIONS,
                 read_timeout: float = READ_TIMEOUT, reactor: Any = None, **kwargs: Any) -> None:
        super().__init__(app.resource(), reactor=reactor, **kwargs)
        self.policy = app.policy
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.open_connections = 0
        self.refused_connections = 0
        self.displayTracebacks = False
        self.noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        if self.open_connections >= self.max_connections:
            self.refused_connections += 1
            if self.refused_connections in (1, 10, 100) or self.refused_connections % 1000 == 0:
                log.warn("admin: {n} connections refused so far: {max} are open (--admin-max-connections)",
                         n=self.refused_connections, max=self.max_connections)
            return None
        return super().buildProtocol(addr)
