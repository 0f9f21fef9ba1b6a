"""One agent per kubelet root: an exclusive lock on a file in the kubelet root.

Two agents serving the same kubelet root (a DaemonSet rolled out with surge, or a second
``gpulet run`` by hand) would fight over the same socket paths: each start removes the other's
socket, each kubelet restart registers both, and the kubelet talks to whichever registered
last. So an agent takes an exclusive ``flock`` on ``<kubelet-root>/plugins/gpulet/agent.lock``
before it serves anything, and holds it for its whole life; the kernel drops it when the
process exits, however it exits (``kill -9`` included), so a lock is never left stale.

The lock lives under ``plugins/`` rather than ``device-plugins/`` because a starting kubelet
cleans the device-plugins directory. The file holds the holder's pid and host name, for the
message a second agent gives while it waits.

A lock file removed while held (an operator cleaning the directory) would let a second agent
lock a new file at the same path; :meth:`AgentLock.still_held` tells, and the agent checks it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import socket

from gpulet.errors import GpuletError

__all__ = ["AgentLock", "LockError", "lock_path"]


class LockError(GpuletError):
    """The agent lock could not be taken (not because another agent holds it)."""


def lock_path(kubelet_root: str | os.PathLike[str]) -> pathlib.Path:
    """Where the agent lock of a kubelet root is."""
    return pathlib.Path(kubelet_root) / "plugins" / "gpulet" / "agent.lock"


class AgentLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (see the module docs)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """Who holds the lock, as its file says (best effort; ``"unknown"`` when unreadable)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return "unknown"
        return text[:200] or "unknown"

    def try_acquire(self) -> bool:
        """Take the lock if free (true), or leave it to its holder (false).

        Raises :class:`LockError` when the lock file cannot be created or opened.
        """
        if self._fd is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise LockError(
                f"cannot open the agent lock {self.path}: {e.strerror or e}; the kubelet root "
                "must be writable by gpulet"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise LockError(f"cannot lock {self.path}: {e.strerror or e}") from None
        st = os.fstat(fd)
        self._fd, self._identity = fd, (st.st_dev, st.st_ino)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        return True

    def still_held(self) -> bool:
        """The lock is held and its file is still the one at the path."""
        if self._identity is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def release(self) -> None:
        fd, self._fd = self._fd, None
        self._identity = None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
