"""gpulet: one GPU agent for Kubernetes nodes, and a topology-aware GPU/MIG allocation library.

    import gpulet
    node = gpulet.discover()            # NVML: the real one, or the library GPULET_NVML_LIB names
    with gpulet.simulated("dgx-h100"):  # or a simulated node, driven by a shipped node spec
        node = gpulet.discover()

``gpulet.mig`` and ``gpulet.alloc`` are imported on use (``from gpulet import alloc, mig``).
"""

from __future__ import annotations

from gpulet import errors
from gpulet._core import (
    Gpu,
    MigDevice,
    MigProfileInfo,
    Node,
    Topology,
    __version__,
    discover,
    mig_profiles,
)
from gpulet.sim import simulated

__all__ = [
    "Gpu",
    "MigDevice",
    "MigProfileInfo",
    "Node",
    "Topology",
    "__version__",
    "discover",
    "errors",
    "mig_profiles",
    "simulated",
]
