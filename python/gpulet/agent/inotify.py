"""A small Linux inotify binding (libc through ctypes) and an asyncio directory watcher.

The agent must notice a restarted kubelet (its ``kubelet.sock`` created anew) and its own
sockets removed, at once and without polling. ``inotify(7)`` gives exactly that: the kernel
queues an event per change in a watched directory, and the event loop wakes on the descriptor.

    async with DirWatcher(path) as watcher:
        async for event in watcher:        # DirEvent(name="kubelet.sock", mask=IN_CREATE)
            ...
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from gpulet.errors import GpuletError

__all__ = [
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_IGNORED",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_MOVE_SELF",
    "IN_Q_OVERFLOW",
    "DirEvent",
    "DirWatcher",
    "Inotify",
    "InotifyError",
]

IN_ATTRIB: Final = 0x00000004
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
_IN_NONBLOCK: Final = os.O_NONBLOCK
_IN_CLOEXEC: Final = os.O_CLOEXEC

#: What the directory watcher asks for: entries appearing, disappearing, and the directory itself
#: going away.
DEFAULT_MASK: Final = (
    IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
)

_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_SIZE: Final = 64 * 1024


class InotifyError(GpuletError, OSError):
    """An inotify call failed (``errno`` and the path, when there is one, are set)."""


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c") or "libc.so.6"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.inotify_init1.argtypes = [ctypes.c_int]
    lib.inotify_init1.restype = ctypes.c_int
    lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    lib.inotify_add_watch.restype = ctypes.c_int
    lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.inotify_rm_watch.restype = ctypes.c_int
    return lib


_LIBC: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc()
    return _LIBC


@dataclass(frozen=True)
class RawEvent:
    """One event as the kernel wrote it."""

    wd: int
    mask: int
    cookie: int
    name: str


class Inotify:
    """One inotify instance (a non-blocking, close-on-exec descriptor)."""

    def __init__(self) -> None:
        fd = _lib().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise InotifyError(err, f"inotify_init1 failed: {os.strerror(err)}")
        self.fd: int = fd

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        """Watch ``path`` for the events in ``mask``; returns the watch descriptor."""
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(os.fspath(path)), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise InotifyError(
                err, f"inotify_add_watch({os.fspath(path)}) failed: {os.strerror(err)}"
            )
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Stop a watch (a watch the kernel already dropped is not an error)."""
        if _lib().inotify_rm_watch(self.fd, wd) < 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL:
                raise InotifyError(err, f"inotify_rm_watch failed: {os.strerror(err)}")

    def read(self) -> list[RawEvent]:
        """Every event queued now (empty when none)."""
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return []
        events: list[RawEvent] = []
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            raw = data[offset : offset + length]
            offset += length
            name = os.fsdecode(raw.split(b"\0", 1)[0])
            events.append(RawEvent(wd, mask, cookie, name))
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class DirEvent:
    """A change in the watched directory: ``name`` is the entry ('' for the directory itself)."""

    name: str
    mask: int

    @property
    def created(self) -> bool:
        """The entry appeared (created, or moved in)."""
        return bool(self.mask & (IN_CREATE | IN_MOVED_TO))

    @property
    def removed(self) -> bool:
        """The entry disappeared (deleted, or moved away)."""
        return bool(self.mask & (IN_DELETE | IN_MOVED_FROM))

    @property
    def directory_gone(self) -> bool:
        """The watched directory itself was removed or moved (the watch is over)."""
        return bool(self.mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))

    @property
    def overflow(self) -> bool:
        """The kernel dropped events: the watcher must look at the directory afresh."""
        return bool(self.mask & IN_Q_OVERFLOW)


class DirWatcher:
    """Watch one directory from an asyncio loop; iterate to get :class:`DirEvent` s.

    The watch is in place when :meth:`start` (or ``async with``) returns, so a caller that
    starts the watch, then looks at the directory, misses nothing. When the directory goes
    away, one event with ``directory_gone`` arrives and the watcher waits for it to come back
    (the caller re-arms with :meth:`rearm`).
    """

    def __init__(self, path: str | os.PathLike[str], mask: int = DEFAULT_MASK) -> None:
        self.path = os.fspath(path)
        self._mask = mask | IN_ONLYDIR
        self._inotify: Inotify | None = None
        self._wd: int | None = None
        self._queue: asyncio.Queue[DirEvent] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._inotify = Inotify()
        self._wd = self._inotify.add_watch(self.path, self._mask)
        self._loop.add_reader(self._inotify.fd, self._on_readable)

    def rearm(self) -> None:
        """Watch the directory again (after it was removed and made anew)."""
        if self._inotify is None:
            raise RuntimeError("the watcher is not started")
        if self._wd is not None:
            self._inotify.rm_watch(self._wd)
        self._wd = self._inotify.add_watch(self.path, self._mask)

    def _on_readable(self) -> None:
        if self._inotify is None:
            return
        for raw in self._inotify.read():
            if raw.wd != self._wd and not raw.mask & IN_Q_OVERFLOW:
                continue
            self._queue.put_nowait(DirEvent(raw.name, raw.mask))

    async def get(self) -> DirEvent:
        """The next event."""
        return await self._queue.get()

    def get_nowait(self) -> DirEvent | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        if self._inotify is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
            self._wd = None

    async def __aenter__(self) -> DirWatcher:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[DirEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[DirEvent]:
        while True:
            yield await self.get()
