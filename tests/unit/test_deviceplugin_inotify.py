"""The inotify binding and the asyncio directory watcher the agent uses on device-plugins/."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket

import pytest

from gpulet.agent.inotify import (
    IN_CREATE,
    IN_DELETE,
    DirEvent,
    DirWatcher,
    Inotify,
    InotifyError,
)


def test_raw_events_for_create_and_delete(tmp_path: pathlib.Path) -> None:
    with Inotify() as ino:
        wd = ino.add_watch(tmp_path, IN_CREATE | IN_DELETE)
        assert ino.read() == []
        (tmp_path / "kubelet.sock").touch()
        (tmp_path / "kubelet.sock").unlink()
        events = ino.read()
        assert [(e.wd, e.mask & (IN_CREATE | IN_DELETE), e.name) for e in events] == [
            (wd, IN_CREATE, "kubelet.sock"),
            (wd, IN_DELETE, "kubelet.sock"),
        ]
        ino.rm_watch(wd)
        ino.rm_watch(wd)  # a watch already gone is not an error


def test_watching_a_missing_directory_fails(tmp_path: pathlib.Path) -> None:
    with Inotify() as ino, pytest.raises(InotifyError, match="inotify_add_watch"):
        ino.add_watch(tmp_path / "missing", IN_CREATE)


def test_dir_watcher_sees_sockets_come_and_go(tmp_path: pathlib.Path) -> None:
    async def scenario() -> list[DirEvent]:
        async with DirWatcher(tmp_path) as watcher:
            s = socket.socket(socket.AF_UNIX)
            s.bind(os.fspath(tmp_path / "kubelet.sock"))
            s.close()
            os.rename(tmp_path / "kubelet.sock", tmp_path / "moved.sock")
            os.unlink(tmp_path / "moved.sock")
            return [await asyncio.wait_for(watcher.get(), timeout=30) for _ in range(4)]

    events = asyncio.run(scenario())
    assert [(e.name, e.created, e.removed) for e in events] == [
        ("kubelet.sock", True, False),
        ("kubelet.sock", False, True),
        ("moved.sock", True, False),
        ("moved.sock", False, True),
    ]


def test_dir_watcher_reports_the_directory_gone_and_rearms(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "device-plugins"
    directory.mkdir()

    async def scenario() -> tuple[bool, DirEvent]:
        async with DirWatcher(directory) as watcher:
            directory.rmdir()
            gone = False
            while not gone:
                event = await asyncio.wait_for(watcher.get(), timeout=30)
                gone = event.directory_gone
            directory.mkdir()
            watcher.rearm()
            (directory / "kubelet.sock").touch()
            while True:
                event = await asyncio.wait_for(watcher.get(), timeout=30)
                if event.name == "kubelet.sock":
                    return gone, event

    gone, event = asyncio.run(scenario())
    assert gone
    assert event.created
