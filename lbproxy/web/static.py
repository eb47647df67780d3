"""
Where the web UI's files are, and how they are served.

An installed wheel has them in the C{lbproxy.static} package directory
(pyproject maps the checkout's C{static/} there); a source checkout has them
in C{<repo>/static}.
"""

from __future__ import annotations

from pathlib import Path

from twisted.web.pages import notFound
from twisted.web.resource import IResource
from twisted.web.static import File

import lbproxy


def static_dir() -> Path:
    """
    The directory of the web UI: C{lbproxy/static} when installed, else the
    checkout's C{static/}.  It may not exist (a checkout without the UI).
    """
    package = Path(lbproxy.__file__).resolve().parent
    installed = package / "static"
    if installed.is_dir():
        return installed
    return package.parent / "static"


class UIFiles(File):
    """
    Static files without directory listings (a listing would show whatever
    else lies in the directory) and with headers that keep the UI from being
    framed by another site or sniffed as another type.
    """

    def getChild(self, path, request):  # type: ignore[no-untyped-def]
        # A NUL (from %00) is no file name; the OS would refuse it with an
        # exception rather than an answer.
        if b"\x00" in path:
            return notFound("No such page.")
        return super().getChild(path, request)

    def directoryListing(self) -> IResource:
        return notFound("No such page.")

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(b"Content-Security-Policy", b"frame-ancestors 'none'")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"Cache-Control", b"no-cache")
        return super().render_GET(request)
