"""
Where the access log goes (L{lbproxy.accesslog.log}): a file or standard
output (L{FileSink}) or the local syslog socket (L{SyslogSink}).  Each is
called by one writer at a time and may block (the writer thread's).
"""

from __future__ import annotations

import os
import select
import socket
import stat
import time as _time
from typing import Any

SYSLOG_PATH = "/dev/log"
#: local0.info
_SYSLOG_PRI = 16 * 8 + 6


class FileSink:
    """
    Appends to a file (C{-}: standard output), reopened on request.

    Each batch is one C{write} of whole lines with C{O_APPEND}, so worker
    processes appending to the same file never mix their lines.  A pipe
    or socket (C{-} under a supervisor) is only atomic up to C{PIPE_BUF}:
    there a batch goes in pieces of whole lines no larger than that.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._piece: int | None = None
        self.open()

    def open(self) -> None:
        if self.path == "-":
            self._fd = 1
        else:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        except OSError:
            regular = False
        self._piece = None if regular else select.PIPE_BUF

    def reopen(self) -> None:
        if self.path == "-":
            return
        old = self._fd
        self.open()
        if old is not None:
            os.close(old)

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        piece = self._piece
        if piece is None or len(data) <= piece:
            self._write(memoryview(data))
            return
        start, n = 0, len(data)
        while start < n:
            end = start + piece
            if end < n:
                cut = data.rfind(b"\n", start, end)
                if cut >= start:  # else one line longer than PIPE_BUF: as it is
                    end = cut + 1
            self._write(memoryview(data)[start:end])
            start = end

    def _write(self, view: memoryview) -> None:
        while view:
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        if self._fd is not None and self._fd != 1:
            os.close(self._fd)
        self._fd = None


class SyslogSink:
    """
    One datagram a line to the local syslog socket (RFC 3164 as the local
    daemon reads it), so a line is never split or merged.
    """

    def __init__(self, path: str = SYSLOG_PATH, tag: str = "lbproxy") -> None:
        self.path = path
        self.tag = f"{tag}[{os.getpid()}]: "
        self._sock: socket.socket | None = None
        self.open()

    def open(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.connect(self.path)

    def reopen(self) -> None:
        self.close()
        self.open()

    def write(self, text: str) -> None:
        head = f"<{_SYSLOG_PRI}>{_time.strftime('%b %d %H:%M:%S')} {self.tag}"
        for line in text.splitlines():
            try:
                self._sock.send((head + line).encode("utf-8", "replace"))
            except OSError:
                # The daemon restarted: connect again once, then give up the line.
                self.reopen()
                self._sock.send((head + line).encode("utf-8", "replace"))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None


def open_sink(destination: str) -> Any:
    """
    @return: the sink for C{--access-log} (blocking: opens the file or
        connects the socket), or C{None} for C{off}.
    @raise OSError: if it cannot be opened.
    """
    if destination == "off":
        return None
    if destination == "syslog":
        return SyslogSink()
    if destination.startswith("syslog:"):
        return SyslogSink(destination[len("syslog:"):])
    return FileSink(destination)
