"""Fixtures of the integration tier."""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def root() -> Iterator[pathlib.Path]:
    """A short kubelet root under /tmp (socket paths stay far below gRPC's 105 bytes)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="gpl-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
