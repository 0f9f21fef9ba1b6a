"""The core's errors arrive as gpulet.errors classes, with their fields.

Each class is reached through a real call that fails, so the mapping (rust/gpulet-py/src/errors.rs)
is tested as users meet it; the extension carries no hook for tests.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path

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

ERRORS_RS = Path(__file__).resolve().parents[2] / "rust" / "gpulet-py" / "src" / "errors.rs"
MISSING_LIBRARY = "/nonexistent/libnvidia-ml.so.1"


def missing_library() -> None:
    gpulet.discover(MISSING_LIBRARY)


def uuid_fails_on_gpu_3() -> None:
    with gpulet.simulated("dgx-h100") as s:
        s.control.fail("nvmlDeviceGetUUID", 15, gpu=3)
        gpulet.discover()


def nvlink_to_a_gpu_that_does_not_exist() -> None:
    _core.Topology(2, nvlinks={(0, 9): 1})


def unknown_model() -> None:
    _core.mig_model_profiles("H100-81GB")


def overlapping_mig_layout() -> None:
    _core.mig_validate("H100-80GB", [("3g.40gb", 0), ("2g.20gb", 2)])


def two_full_gpu_instances_on_one_gpu() -> None:
    _core.mig_plan("H100-80GB", ["7g.80gb", "7g.80gb"])


def zero_gpus_asked_for() -> None:
    _core.preferred(_core.Topology(2), [0, 1], size=0)


def gpu_held_by_another_container() -> None:
    ledger = _core.Ledger()
    ledger.register_gpu("GPU-0")
    ledger.allocate(_core.ContainerOwner("default", "a", "main"), ["GPU-0"])
    ledger.allocate(_core.ContainerOwner("default", "b", "main"), ["GPU-0"])


def snapshot_of_garbage() -> None:
    _core.Ledger.from_snapshot(b"not a snapshot")


# (class, a call that fails with it, the start of its message)
MAPPING: list[tuple[type[GpuletError], Callable[[], None], str]] = [
    (NvmlLibraryNotFound, missing_library, f"NVML library not found: {MISSING_LIBRARY}"),
    (NvmlError, uuid_fails_on_gpu_3, "nvmlDeviceGetUUID on GPU 3 failed: "),
    (TopologyError, nvlink_to_a_gpu_that_does_not_exist, "invalid topology: nvlink pair (0, 9)"),
    (UnknownModelError, unknown_model, 'unknown GPU model "H100-81GB"; known models: '),
    (MigLayoutError, overlapping_mig_layout, "invalid MIG layout: 3g.40gb@0 overlaps 2g.20gb@2"),
    (InfeasibleError, two_full_gpu_instances_on_one_gpu, "does not fit: cannot place 7g.80gb"),
    (InvalidArgumentError, zero_gpus_asked_for, "invalid argument: size must be at least 1"),
    (ConflictError, gpu_held_by_another_container, "conflict: GPU-0 is held by container"),
    (SnapshotError, snapshot_of_garbage, "invalid snapshot: not a gpulet ledger snapshot"),
]


@pytest.mark.usefixtures("fake_library")
@pytest.mark.parametrize(
    ("cls", "call", "prefix"), MAPPING, ids=[cls.__name__ for cls, _, _ in MAPPING]
)
def test_each_core_error_arrives_as_its_class(
    cls: type[GpuletError], call: Callable[[], None], prefix: str
) -> None:
    with pytest.raises(GpuletError) as info:
        call()
    e = info.value
    assert type(e) is cls
    assert str(e).startswith(prefix)
    assert "\n" not in str(e)


def test_every_class_the_extension_maps_to_is_reached() -> None:
    mapped = set(re.findall(r'class\("(\w+)"\)', ERRORS_RS.read_text(encoding="utf-8")))
    assert mapped == {cls.__name__ for cls, _, _ in MAPPING}


def test_the_extension_carries_no_test_hook() -> None:
    assert not hasattr(_core, "_core_error")


@pytest.mark.usefixtures("fake_library")
def test_nvml_errors_carry_call_gpu_and_code() -> None:
    with pytest.raises(NvmlError) as info:
        uuid_fails_on_gpu_3()
    e = info.value
    assert (e.call, e.gpu, e.code) == ("nvmlDeviceGetUUID", 3, 15)
    assert str(e).endswith(" (NVML error 15)")


def test_library_not_found_is_an_nvml_error_with_the_path() -> None:
    with pytest.raises(NvmlLibraryNotFound) as info:
        missing_library()
    e = info.value
    assert isinstance(e, NvmlError)
    assert e.path == MISSING_LIBRARY
    assert (e.call, e.gpu, e.code) == ("dlopen", None, 12)
    assert "GPULET_NVML_LIB" in str(e)
    assert str(e).startswith(f"NVML library not found: {MISSING_LIBRARY} could not be loaded")
    assert str(e).count(MISSING_LIBRARY) == 1


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
