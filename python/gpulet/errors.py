"""gpulet's exceptions.

Every exception gpulet raises derives from :class:`GpuletError`, so one ``except GpuletError``
catches them all. Every error the Rust core raises is an instance of one of the classes below
(the mapping lives in one place, ``rust/gpulet-py/src/errors.rs``); the other modules define their
own subclasses (``gpulet.sim.FakeNvmlError``, ``gpulet.config.ConfigError``, ...). Each message
says what was wrong and what would be right. The classes that describe bad input also derive from
:class:`ValueError`, so code that already catches ``ValueError`` keeps working.

This module imports nothing from gpulet, so that every other module can import it.
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "GpuletError",
    "InfeasibleError",
    "InvalidArgumentError",
    "MigLayoutError",
    "NvmlError",
    "NvmlLibraryNotFound",
    "SnapshotError",
    "SpecError",
    "TopologyError",
    "UnknownModelError",
]


class GpuletError(Exception):
    """Base class of every error gpulet raises."""


class NvmlError(GpuletError):
    """An NVML call failed.

    Attributes:
        call: the NVML function that failed, e.g. ``"nvmlDeviceGetUUID"``.
        gpu: the NVML index of the GPU the call was about, or ``None`` for a node-wide call.
        code: NVML's return code (``nvmlReturn_t``), e.g. 15 for ``NVML_ERROR_GPU_IS_LOST``.
    """

    call: str
    gpu: int | None
    code: int

    def __init__(self, message: str, call: str = "", gpu: int | None = None, code: int = 0) -> None:
        super().__init__(message)
        self.call = call
        self.gpu = gpu
        self.code = code


class NvmlLibraryNotFound(NvmlError):
    """libnvidia-ml.so.1 (or the library named by ``GPULET_NVML_LIB``) could not be loaded.

    ``path`` is the library that was tried; ``call`` is ``"dlopen"`` and ``code`` is
    ``NVML_ERROR_LIBRARY_NOT_FOUND`` (12).
    """

    path: str

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message, call="dlopen", gpu=None, code=12)
        self.path = path


class TopologyError(GpuletError, ValueError):
    """A topology is inconsistent: a pair out of range, a level that does not exist, or a
    pair given twice with two values."""


class UnknownModelError(GpuletError, ValueError):
    """A GPU model name, product name or PCI device id that the catalog does not know."""


class MigLayoutError(GpuletError, ValueError):
    """A MIG layout or profile request that cannot exist on the GPU model."""


class InfeasibleError(GpuletError):
    """A request that no placement or allocation can satisfy."""


class InvalidArgumentError(GpuletError, ValueError):
    """An argument outside its domain."""


class ConflictError(GpuletError):
    """The ledger refused an operation: the device is held elsewhere, or over-allocated."""


class SnapshotError(GpuletError, ValueError):
    """A ledger snapshot could not be decoded (bad schema version, corrupt data)."""


class SpecError(GpuletError, ValueError):
    """A node spec that cannot be simulated: missing, malformed, or inconsistent (an unknown
    model, overlapping MIG placements, a link to a GPU that does not exist, ...). The message is
    the fake NVML's own, naming the file, the field and the value. Raised by :mod:`gpulet.sim`."""
