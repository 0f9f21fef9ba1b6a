"""The health engine: XID policy and a per-device health state machine that recovers.

NVML events (XID critical errors, ECC errors, GPUs falling off the bus) come through the core's
:class:`gpulet._core.EventWatcher`; each one is classified by the configured policy
(:class:`gpulet.config.HealthPolicy`) into a :data:`HealthClass`:

``ignore``
    The GPU stays healthy (the application's fault, or informational).
``recoverable``
    Unhealthy until the GPU passes its re-probe (:func:`gpulet._core.probe`) continuously for
    ``recovery_period``; a failing probe, or another such event, starts the period again.
``reset-required``
    Unhealthy until the GPU has been reset: either the monitor saw it gone
    (``NVML_ERROR_GPU_IS_LOST``, or XID 79) and then answer again, or an operator called
    :meth:`HealthMonitor.mark_reset`. After the reset it recovers as ``recoverable`` does.
``permanent``
    Unhealthy until gpulet restarts or an operator calls :meth:`HealthMonitor.mark_reset` (what
    NVIDIA's device plugin does with every XID it does not ignore; used by the
    ``nvidia-device-plugin`` preset).

Three layers, each importing only the ones before it:

:mod:`gpulet.health.catalog`
    NVIDIA's XID catalog as data (:data:`XID_CATALOG`, :func:`describe_xid`) and the XIDs
    NVIDIA's device plugin ignores.
:mod:`gpulet.health.policy`
    Classification (:func:`classify_xid`, :func:`classify_event`): what an event, a lost GPU
    or a failed event wait means under the policy.
:mod:`gpulet.health.monitor`
    :class:`HealthMonitor`, the state of every GPU and MIG device and the threads that wait for
    events and re-probe the GPUs.

See docs/health.md.
"""

from __future__ import annotations

from gpulet.health.catalog import (
    DEFAULT_XID_CLASS,
    GPU_IS_LOST,
    HEALTH_CLASSES,
    NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS,
    XID_CATALOG,
    XID_UNKNOWN,
    HealthClass,
    XidInfo,
    describe_xid,
)
from gpulet.health.monitor import (
    DeviceHealth,
    GpuRef,
    HealthChange,
    HealthMonitor,
    MigRef,
    OnChange,
    Probe,
    WatcherLike,
    gpus_from_node,
)
from gpulet.health.policy import EventLike, classify_event, classify_xid

__all__ = [
    "DEFAULT_XID_CLASS",
    "GPU_IS_LOST",
    "HEALTH_CLASSES",
    "NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS",
    "XID_CATALOG",
    "XID_UNKNOWN",
    "DeviceHealth",
    "EventLike",
    "GpuRef",
    "HealthChange",
    "HealthClass",
    "HealthMonitor",
    "MigRef",
    "OnChange",
    "Probe",
    "WatcherLike",
    "XidInfo",
    "classify_event",
    "classify_xid",
    "describe_xid",
    "gpus_from_node",
]
