"""The gpulet agent: one process per GPU node.

- :class:`AgentState` (``gpulet.agent.state``): the one object that decides who holds which
  device; the device plugin's servicers translate into calls on it.
- :class:`Agent` and :class:`AgentOptions` (``gpulet.agent.agent``): the process: NVML, CDI,
  the device-plugin servers, registration with the kubelet, PodResources reconciliation.
- ``gpulet.agent.inotify``: the kubelet-directory watcher.

``Agent`` and ``AgentOptions`` are imported on first use (they pull in gRPC).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpulet.agent.state import (
    AgentState,
    AllocationError,
    Assignment,
    ContainerDevices,
    DeviceStatus,
    ReconcileReport,
)

if TYPE_CHECKING:
    from gpulet.agent.agent import Agent, AgentOptions

__all__ = [
    "Agent",
    "AgentOptions",
    "AgentState",
    "AllocationError",
    "Assignment",
    "ContainerDevices",
    "DeviceStatus",
    "ReconcileReport",
]


def __getattr__(name: str) -> Any:
    if name in ("Agent", "AgentOptions"):
        from gpulet.agent import agent

        return getattr(agent, name)
    raise AttributeError(f"module 'gpulet.agent' has no attribute {name!r}")
