"""The kubelet device-plugin API (v1beta1), served by the agent.

- ``resources``: which resources and devices to advertise (MIG strategies, sharing, renames).
- ``responses``: what an Allocate response tells the runtime (device-list strategies).
- ``servicer``, ``server``: the gRPC service of one resource and its unix-socket server.
- ``registration``: ``Register`` with the kubelet.
- ``podresources``: the PodResources client used for attribution and release.

Only the first two are imported here; the rest need the agent's state (``gpulet.agent``).
"""

from __future__ import annotations

from gpulet.deviceplugin.resources import (
    DEFAULT_GPU_RESOURCE,
    Inventory,
    PhysicalDevice,
    PluginDevice,
    ResourceError,
    ResourceSpec,
    build_inventory,
    mig_resource_name,
)
from gpulet.deviceplugin.responses import ResponseSettings, container_response

__all__ = [
    "DEFAULT_GPU_RESOURCE",
    "Inventory",
    "PhysicalDevice",
    "PluginDevice",
    "ResourceError",
    "ResourceSpec",
    "ResponseSettings",
    "build_inventory",
    "container_response",
    "mig_resource_name",
]
