"""
The file store's write sequence, the one place that makes bytes durable.

A write goes to a temporary file in the same directory, is written whole,
C{fsync}'d, renamed over the target with C{os.replace}, and the directory
is C{fsync}'d, so after a crash the target holds either the old or the new
contents, never a mix.  The C{os} functions are injected, so tests can
watch their order and inject faults.
"""

from __future__ import annotations

import errno
import os
from typing import Any


def describe(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e} [{name}]" if name else str(e.strerror or e)


class DurableFiles:
    """
    Durable writes in one directory, through C{os_module}.
    """

    def __init__(self, directory: str, os_module: Any = os) -> None:
        self.directory = directory
        self._os = os_module

    def keep_previous(self, path: str, temp: str, previous: str) -> None:
        """
        Make the current (good) C{path} the previous version: a hard link
        renamed over C{previous}, so C{path} itself never disappears.
        Where hard links are not supported, a copy.
        """
        o = self._os
        try:
            o.unlink(temp)
        except FileNotFoundError:
            pass
        try:
            o.link(path, temp)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            with open(path, "rb") as f:
                self.write(previous, temp, f.read())
            return
        o.replace(temp, previous)

    def write(self, path: str, temp: str, data: bytes) -> None:
        """
        Make C{data} the contents of C{path} durably: C{temp} written and
        fsync'd, renamed over C{path}, then the directory fsync'd.  On
        failure C{temp} is removed and C{path} is untouched.
        """
        o = self._os
        fd = o.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[o.write(fd, view):]
            o.fsync(fd)
        except BaseException:
            o.close(fd)
            try:
                o.unlink(temp)
            except OSError:
                pass
            raise
        o.close(fd)
        o.replace(temp, path)
        dfd = o.open(self.directory, os.O_RDONLY)
        try:
            o.fsync(dfd)
        finally:
            o.close(dfd)
