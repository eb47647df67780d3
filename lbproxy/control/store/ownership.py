"""
One process owns a state directory: a POSIX record lock on C{config.lock}
held for the life of the process.

The kernel drops the lock when the process ends, however it ends, so a
crash never leaves the directory locked; the file names the owner's pid so
the refusal of a second lbproxy can say who holds it.  A takeover releases
it for the new process to claim.
"""

from __future__ import annotations

import errno
import fcntl
import os

from lbproxy.control.store.durable import describe
from lbproxy.model.errors import StoreError


class DirectoryLock:
    """
    The lock on C{path} that makes this process the owner of C{directory}.

    @ivar fd: the locked file while held, else C{None}.
    """

    def __init__(self, directory: str, path: str) -> None:
        self.directory = directory
        self.path = path
        self.fd: int | None = None

    def claim(self) -> None:
        """
        Make this process the owner of the state directory until it exits
        (blocking: for startup).  The lock is a POSIX record lock on
        C{config.lock}, which the kernel drops when the process ends, however
        it ends; the file names the owner's pid.

        @raise StoreError: if another process owns the directory.
        """
        if self.fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open {self.path}: {describe(e)}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise StoreError(
                    f"the state directory {self.directory} is in use by another lbproxy "
                    f"process (pid {owner}, which holds {self.path}); one process "
                    f"owns a state directory"
                ) from None
            raise StoreError(f"cannot lock {self.path}: {describe(e)}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """
        Give the directory up (closing the file drops the record lock).
        """
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
