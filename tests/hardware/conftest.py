"""The hardware tier: real NVIDIA driver, read-only.

These tests load the system's libnvidia-ml.so.1 (never the fake: GPULET_NVML_LIB and the fake's
variables are cleared for them) and only read. Nothing here changes MIG mode, clocks, power
limits or any other setting of the GPU. Where no NVIDIA driver answers, every test is skipped
with the reason.

Run this tier in its own pytest process (scripts/test does): once a real libnvidia-ml.so.1 is
loaded, a later load of the library by name in the same process finds it, not the fake.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

import gpulet

_FAKE_VARS = ("GPULET_NVML_LIB", "GPULET_FAKE_NVML_SPEC", "GPULET_FAKE_NVML_STATE")


def _without_fake() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _FAKE_VARS}


def _probe() -> str:
    """Why no real driver answers ("" when one does), asked in a child process so that
    collecting this directory never loads a real libnvidia-ml.so.1 into the test process."""
    code = "import gpulet; gpulet.discover('libnvidia-ml.so.1')"
    r = subprocess.run(
        [sys.executable, "-c", code], env=_without_fake(), capture_output=True, text=True
    )
    if r.returncode == 0:
        return ""
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {r.returncode}"


_REASON = _probe()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.hardware)
            if _REASON:
                item.add_marker(
                    pytest.mark.skip(reason=f"no NVIDIA driver answers on this machine: {_REASON}")
                )


@pytest.fixture(scope="session")
def real_node() -> Iterator[gpulet.Node]:
    saved = {k: os.environ.pop(k) for k in _FAKE_VARS if k in os.environ}
    try:
        yield gpulet.discover("libnvidia-ml.so.1")
    finally:
        os.environ.update(saved)
