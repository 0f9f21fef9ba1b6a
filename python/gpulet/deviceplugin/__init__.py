"""The kubelet device-plugin API (v1beta1), served by the agent.

- ``resources``: which resources and devices to advertise (MIG strategies, sharing, renames).
- ``state``: the device plugin's decisions: Allocate validation and recording in the ledger,
  preferred allocation, attribution and release from PodResources.
- ``responses``: what an Allocate response tells the runtime (device-list strategies).
- ``servicer``, ``server``: the gRPC service of one resource and its unix-socket server.
- ``transport``, ``transport_native``, ``transport_aio``: the rules shared by the server's two
  transports, and each transport.
- ``registration``: ``Register`` with the kubelet.
- ``podresources``: the PodResources client used for attribution and release.

It reads the node inventory (``gpulet.inventory``) and the ledger (``gpulet.alloc``) and never
imports the agent, nor the DRA driver: the agent wires them together. Only ``resources`` and
``responses`` are imported here (no gRPC).
"""

from __future__ import annotations

from gpulet.deviceplugin.resources import (
    DEFAULT_GPU_RESOURCE,
    PluginDevice,
    ResourceError,
    ResourceSet,
    ResourceSpec,
    build_resources,
    mig_resource_name,
)
from gpulet.deviceplugin.responses import ResponseSettings, container_response

__all__ = [
    "DEFAULT_GPU_RESOURCE",
    "PluginDevice",
    "ResourceError",
    "ResourceSet",
    "ResourceSpec",
    "ResponseSettings",
    "build_resources",
    "container_response",
    "mig_resource_name",
]
