"""Fixtures shared by every test tier.

The simulated node tests need the fake NVML: ``gpulet.sim.fake_library_path()`` finds it
(``GPULET_FAKE_NVML_PATH``, the copy the wheel ships, or ``target/{release,debug}`` of a
checkout). When it is missing, those tests fail with the sentence that says how to build it;
they are never skipped.
"""

from __future__ import annotations

import pathlib

import pytest

from gpulet import sim

#: Variables that point NVML at a library or a simulated node.
NVML_ENV = (sim.ENV_NVML_LIB, sim.ENV_SPEC, sim.ENV_STATE)


@pytest.fixture(scope="session")
def fake_library() -> pathlib.Path:
    """The fake libnvidia-ml.so.1 (fails the test, with how to build it, when it is missing)."""
    try:
        return sim.fake_library_path()
    except sim.FakeLibraryNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def no_nvml_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that sets NVML's environment itself starts without any of it."""
    for name in NVML_ENV:
        monkeypatch.delenv(name, raising=False)
