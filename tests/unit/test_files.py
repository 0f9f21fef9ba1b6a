"""gpulet.files: the one atomic write (temp file, fsync, mode, rename, directory fsync)."""

from __future__ import annotations

import errno
import os
import pathlib
import stat

import pytest

from gpulet import files


def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what each os.fsync call synced: "dir", or the file's name."""
    calls: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        st = os.fstat(fd)
        calls.append("dir" if stat.S_ISDIR(st.st_mode) else os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return calls


def test_writes_the_bytes_with_the_mode_and_syncs_file_then_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fsync_calls(monkeypatch)
    target = tmp_path / "state.json"
    assert files.write_atomic(target, b'{"a": 1}\n') == target
    assert target.read_bytes() == b'{"a": 1}\n'
    assert stat.S_IMODE(target.stat().st_mode) == files.FILE_MODE == 0o644
    assert os.listdir(tmp_path) == ["state.json"]
    # The temporary file was synced before the rename, the directory after it.
    assert len(calls) == 2
    synced = pathlib.Path(calls[0])
    assert synced.parent == tmp_path.resolve()
    assert synced.name.startswith(".state.json.")
    assert synced.name.endswith(".tmp")
    assert calls[1] == "dir"

    calls.clear()
    files.write_atomic(str(target), bytearray(b"secret"), 0o600)
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert calls[-1] == "dir"


def test_the_file_is_replaced_by_rename(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "f"
    files.write_atomic(target, b"one")
    inode = target.stat().st_ino
    files.write_atomic(target, memoryview(b"two"))
    assert target.read_bytes() == b"two"
    assert target.stat().st_ino != inode


def test_the_mode_holds_whatever_the_umask(tmp_path: pathlib.Path) -> None:
    old = os.umask(0o077)
    try:
        target = files.write_atomic(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_short_writes_are_continued(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.write

    def two_bytes_at_a_time(fd: int, data: bytes) -> int:
        return real(fd, bytes(data)[:2])

    monkeypatch.setattr(os, "write", two_bytes_at_a_time)
    target = files.write_atomic(tmp_path / "f", b"abcdefg")
    assert target.read_bytes() == b"abcdefg"


def _no_space(*args: object) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("call", ["write", "fsync", "fchmod", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    target = tmp_path / "f"
    files.write_atomic(target, b"old")
    monkeypatch.setattr(os, call, _no_space)
    with pytest.raises(OSError, match="No space left") as info:
        files.write_atomic(target, b"new, much longer than the old")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_an_interrupt_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    files.write_atomic(target, b"old")

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("bad", ["text", None, 3])
def test_only_bytes_are_written(tmp_path: pathlib.Path, bad: object) -> None:
    with pytest.raises(TypeError, match="data: write_atomic writes bytes"):
        files.write_atomic(tmp_path / "f", bad)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_missing_directories_get_the_mode_exactly(tmp_path: pathlib.Path) -> None:
    old = os.umask(0)
    try:
        target = files.write_atomic(tmp_path / "a" / "b" / "f", b"x", dir_mode=0o750)
        files.make_dirs(tmp_path / "c" / "d")
    finally:
        os.umask(old)
    for d, mode in [
        (target.parent, 0o750),
        (target.parent.parent, 0o750),
        (tmp_path / "c", files.DIR_MODE),
        (tmp_path / "c" / "d", files.DIR_MODE),
    ]:
        assert stat.S_IMODE(d.stat().st_mode) == mode, d
    # An existing directory keeps its mode.
    (tmp_path / "c").chmod(0o700)
    files.write_atomic(tmp_path / "c" / "d" / "g", b"y")
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700


def test_a_directory_that_cannot_be_synced_is_left(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fsync

    def no_dir_sync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", no_dir_sync)
    target = files.write_atomic(tmp_path / "f", b"x")
    assert target.read_bytes() == b"x"
    files.fsync_dir(tmp_path / "missing")  # no error either


def test_remove_durably(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = files.write_atomic(tmp_path / "f", b"x")
    calls = fsync_calls(monkeypatch)
    assert files.remove_durably(target)
    assert calls == ["dir"]
    assert not files.remove_durably(target)
    assert os.listdir(tmp_path) == []
