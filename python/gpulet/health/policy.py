"""Classification: what an event, a lost GPU, a failed event wait or a hung probe means for a
device's health under the configured policy (:class:`gpulet.config.HealthPolicy`).

Functions of the event and the policy only: no state, no thread, no NVML call. The data they
read (the XID table, NVIDIA's ignore list) is :mod:`gpulet.health.catalog`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Protocol

from gpulet.config import HealthPolicy
from gpulet.health.catalog import (
    DEFAULT_XID_CLASS,
    NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS,
    XID_CATALOG,
    XID_FALLEN_OFF_BUS,
    HealthClass,
    describe_xid,
)

__all__ = [
    "PROBE_TIMEOUT_CLASS",
    "SEVERITY",
    "EventLike",
    "classify_event",
    "classify_xid",
    "lost_class",
    "marks_lost",
    "wait_failure_class",
]

#: How bad each class is: a device already unhealthy takes a new event's class (and reason)
#: only when it is worse.
SEVERITY: Final[Mapping[HealthClass, int]] = MappingProxyType(
    {"ignore": 0, "recoverable": 1, "reset-required": 2, "permanent": 3}
)

#: What a probe still running after ``probe_timeout`` counts as, under every preset: the GPU
#: comes back once its probes pass again.
PROBE_TIMEOUT_CLASS: Final[HealthClass] = "recoverable"

#: The XID a double-bit ECC event counts as under ``xid-catalog``.
_XID_DBE: Final = 48


def _unhealthy_class(policy: HealthPolicy) -> HealthClass:
    """The class the preset gives an XID it does not ignore, when it has no table entry."""
    return "permanent" if policy.preset == "nvidia-device-plugin" else DEFAULT_XID_CLASS


def _preset_class(xid: int, policy: HealthPolicy) -> HealthClass:
    if policy.preset == "nvidia-device-plugin":
        return "ignore" if xid in NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS else "permanent"
    info = XID_CATALOG.get(xid)
    return info.health_class if info is not None else DEFAULT_XID_CLASS


def classify_xid(xid: int, policy: HealthPolicy | None = None) -> HealthClass:
    """The class of ``xid`` under ``policy`` (default: the default policy, ``xid-catalog``).

    ``disabled`` ignores everything. An XID in ``critical_xids`` (or every XID, with ``"all"``)
    always marks the device unhealthy: with the preset's class, or, where the preset ignores
    it, ``recoverable`` (``xid-catalog``) / ``permanent`` (``nvidia-device-plugin``). Otherwise
    an XID in ``ignored_xids`` is ignored, and the preset decides the rest.
    """
    p = policy if policy is not None else HealthPolicy()
    if p.disabled:
        return "ignore"
    base = _preset_class(xid, p)
    if p.critical_xids == "all" or xid in p.critical_xids:
        return _unhealthy_class(p) if base == "ignore" else base
    if xid in p.ignored_xids:
        return "ignore"
    return base


class EventLike(Protocol):
    """What the monitor reads from an event (:class:`gpulet._core.Event` is one)."""

    @property
    def kind(self) -> str: ...
    @property
    def gpu(self) -> int | None: ...
    @property
    def uuid(self) -> str | None: ...
    @property
    def data(self) -> int: ...
    @property
    def gpu_instance_id(self) -> int | None: ...
    @property
    def compute_instance_id(self) -> int | None: ...
    @property
    def detail(self) -> str | None: ...


def classify_event(event: EventLike, policy: HealthPolicy | None = None) -> tuple[HealthClass, str]:
    """The class of ``event`` under ``policy`` and the reason to report.

    XIDs go through :func:`classify_xid`. A double-bit ECC event counts as XID 48 under
    ``xid-catalog`` and is skipped under ``nvidia-device-plugin`` (NVIDIA's plugin acts on XID
    events only); single-bit ECC and MIG configuration changes never change health. A GPU lost
    (``NVML_ERROR_GPU_IS_LOST``) is ``reset-required`` (``permanent`` under
    ``nvidia-device-plugin``) unless health checks are disabled.
    """
    p = policy if policy is not None else HealthPolicy()
    kind = event.kind
    if kind == "xid":
        xid = event.data
        return classify_xid(xid, p), f"XID {xid} ({describe_xid(xid)})"
    if kind == "double-bit-ecc":
        if p.preset == "nvidia-device-plugin":
            return "ignore", "double-bit ECC error"
        return classify_xid(_XID_DBE, p), "double-bit ECC error"
    if kind == "gpu-lost":
        if p.disabled:
            return "ignore", "GPU lost"
        detail = f": {event.detail}" if event.detail else ""
        return lost_class(p), f"GPU fell off the bus{detail}"
    return "ignore", kind


def marks_lost(event: EventLike) -> bool:
    """Whether ``event`` says the GPU is gone (NVML lost it, or XID 79): once it answers
    again, that counts as a reset."""
    return event.kind == "gpu-lost" or (event.kind == "xid" and event.data == XID_FALLEN_OFF_BUS)


def lost_class(policy: HealthPolicy) -> HealthClass:
    """What a GPU lost (``NVML_ERROR_GPU_IS_LOST``, from an event or a probe) counts as."""
    return "permanent" if policy.preset == "nvidia-device-plugin" else "reset-required"


def wait_failure_class(policy: HealthPolicy) -> HealthClass:
    """What every device counts as once NVML event waits keep failing (the monitor is blind):
    the class the preset gives an XID it does not ignore and has no table entry for."""
    return _unhealthy_class(policy)
