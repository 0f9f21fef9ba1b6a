"""The core's errors arrive as gpulet.errors classes, with their fields."""

from __future__ import annotations

import pickle

import pytest

import gpulet
from gpulet import _core, errors
from gpulet.errors import (
    ConflictError,
    GpuletError,
    InfeasibleError,
    InvalidArgumentError,
    MigLayoutError,
    NvmlError,
    NvmlLibraryNotFound,
    SnapshotError,
    TopologyError,
    UnknownModelError,
)

MAPPING = [
    ("LibraryNotFound", NvmlLibraryNotFound),
    ("Nvml", NvmlError),
    ("Topology", TopologyError),
    ("UnknownModel", UnknownModelError),
    ("MigLayout", MigLayoutError),
    ("Infeasible", InfeasibleError),
    ("InvalidArgument", InvalidArgumentError),
    ("Conflict", ConflictError),
    ("Snapshot", SnapshotError),
]


@pytest.mark.parametrize(("variant", "cls"), MAPPING)
def test_each_core_variant_maps_to_its_class(variant: str, cls: type[Exception]) -> None:
    e = _core._core_error(variant)
    assert type(e) is cls
    assert isinstance(e, GpuletError)
    assert str(e)
    assert "\n" not in str(e)


def test_nvml_errors_carry_call_gpu_and_code() -> None:
    e = _core._core_error("Nvml")
    assert isinstance(e, NvmlError)
    assert (e.call, e.gpu, e.code) == ("nvmlDeviceGetUUID", 3, 15)
    assert str(e) == "nvmlDeviceGetUUID on GPU 3 failed: device fell off the bus (NVML error 15)"


def test_library_not_found_is_an_nvml_error_with_the_path() -> None:
    e = _core._core_error("LibraryNotFound")
    assert isinstance(e, NvmlLibraryNotFound)
    assert isinstance(e, NvmlError)
    assert e.path == "/nonexistent/libnvidia-ml.so.1"
    assert (e.call, e.gpu, e.code) == ("dlopen", None, 12)
    assert "GPULET_NVML_LIB" in str(e)


BAD_INPUT: list[type[Exception]] = [
    TopologyError,
    UnknownModelError,
    MigLayoutError,
    InvalidArgumentError,
    SnapshotError,
    errors.SpecError,
]
NOT_BAD_INPUT: list[type[Exception]] = [InfeasibleError, ConflictError, NvmlError]


@pytest.mark.parametrize("cls", BAD_INPUT)
def test_bad_input_errors_are_value_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, ValueError)


@pytest.mark.parametrize("cls", NOT_BAD_INPUT)
def test_other_errors_are_not_value_errors(cls: type[Exception]) -> None:
    assert not issubclass(cls, ValueError)


def test_spec_error_is_the_simulators_class() -> None:
    from gpulet import sim

    assert errors.SpecError is sim.SpecError


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match='unknown CoreError variant "Nope"'):
        _core._core_error("Nope")


def test_errors_pickle_with_their_fields() -> None:
    e = NvmlError("x failed", call="nvmlDeviceGetName", gpu=1, code=3)
    again = pickle.loads(pickle.dumps(e))
    assert (str(again), again.call, again.gpu, again.code) == (
        "x failed",
        "nvmlDeviceGetName",
        1,
        3,
    )
    lnf = NvmlLibraryNotFound("gone", path="/x.so")
    again_lnf = pickle.loads(pickle.dumps(lnf))
    assert (str(again_lnf), again_lnf.path) == ("gone", "/x.so")


def test_a_missing_library_raises_library_not_found() -> None:
    with pytest.raises(NvmlLibraryNotFound) as info:
        gpulet.discover("/nonexistent/libnvidia-ml.so.1")
    message = str(info.value)
    assert message.startswith(
        "NVML library not found: /nonexistent/libnvidia-ml.so.1 could not be loaded"
    )
    assert message.count("/nonexistent/libnvidia-ml.so.1") == 1
    assert info.value.path == "/nonexistent/libnvidia-ml.so.1"
