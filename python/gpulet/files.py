"""Files that readers must never see half-written: one atomic write for every path that needs it.

:func:`write_atomic` writes the new bytes to a temporary file in the target's directory,
flushes and fsyncs it, sets its mode, renames it over the target and fsyncs the directory, so a
reader finds the old file or the new one, and a crash (power loss included) leaves one of the
two. On any error the temporary file is removed and the old file stays as it was. Directories
it has to create get :data:`DIR_MODE` (or the mode given) exactly, whatever the umask.

Used for CDI specs (``gpulet.cdi``), mig-parted configs (``gpulet.mig``) and checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from typing import Final

__all__ = ["DIR_MODE", "FILE_MODE", "fsync_dir", "make_dirs", "remove_durably", "write_atomic"]

#: Mode of the directories gpulet creates: others may read them, only the owner writes.
DIR_MODE: Final = 0o755
#: Mode of the files :func:`write_atomic` writes unless told otherwise: world-readable.
FILE_MODE: Final = 0o644


def make_dirs(path: str | os.PathLike[str], mode: int = DIR_MODE) -> None:
    """Create ``path`` and its missing parents with ``mode`` exactly, whatever the umask (an
    inherited umask of 000 would otherwise leave them world-writable). Existing directories
    keep their modes."""
    missing: list[pathlib.Path] = []
    p = pathlib.Path(path)
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync the directory ``path``, so that a rename or unlink in it survives a crash. Best
    effort: a directory that cannot be opened or synced (some filesystems refuse) is left."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview,
    mode: int = FILE_MODE,
    *,
    dir_mode: int = DIR_MODE,
) -> pathlib.Path:
    """Replace ``path`` with ``data`` atomically and durably; returns the path.

    Missing parent directories are created with ``dir_mode``. The bytes go to a temporary file
    (``.<name>.<random>.tmp``) in the same directory, which is written in full (short writes
    continued), fsynced, given ``mode`` and renamed over ``path``; then the directory is
    fsynced. On any error (``BaseException`` included) the temporary file is removed and
    ``path`` is left as it was.
    """
    target = pathlib.Path(path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: write_atomic writes bytes, got {type(data).__name__}")
    parent = target.parent
    make_dirs(parent, dir_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)
    return target


def remove_durably(path: str | os.PathLike[str]) -> bool:
    """Remove ``path`` and fsync its directory; returns whether it existed."""
    p = pathlib.Path(path)
    try:
        os.unlink(p)
    except FileNotFoundError:
        return False
    fsync_dir(p.parent)
    return True
