"""What an Allocate response tells the container runtime, per NVIDIA's device-list strategies.

:func:`container_response` builds one ``ContainerAllocateResponse`` the way NVIDIA's device
plugin does (``internal/plugin/server.go getAllocateResponse``), in its order:

1. CDI strategies: ``cdi-annotations`` adds the annotation
   ``<cdiAnnotationPrefix>nvidia-device-plugin_<response id>`` = the devices' CDI names,
   comma-separated; ``cdi-cri`` fills ``cdi_devices`` with the same names.
2. MPS: ``CUDA_MPS_PIPE_DIRECTORY`` and the pipe and shm mounts.
3. Only when some strategy is not a CDI one: ``envvar`` sets ``NVIDIA_VISIBLE_DEVICES`` to the
   device IDs (and ``NVIDIA_IMEX_CHANNELS``); ``volume-mounts`` sets it to
   ``/var/run/nvidia-container-devices`` and mounts ``/dev/null`` at one path per device there;
   ``passDeviceSpecs`` adds a ``DeviceSpec`` (``rw``) per device node; ``gdrcopyEnabled``,
   ``gdsEnabled`` and ``mofedEnabled`` set their variables.

The IDs the container sees follow ``deviceIDStrategy``: GPU/MIG UUIDs (``uuid``) or NVIDIA's
indices (``3``, ``3:1``; ``index``), one per physical device, in request order (replicas of
one GPU name it once).
"""

from __future__ import annotations

import os
import pathlib
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpulet import cdi
from gpulet._proto.deviceplugin.v1beta1 import api_pb2
from gpulet.config import Config, DeviceIDStrategy, DeviceListStrategy
from gpulet.deviceplugin.resources import PluginDevice
from gpulet.inventory import PhysicalDevice

__all__ = [
    "ANNOTATION_PLUGIN",
    "MPS_CONTAINER_ROOT",
    "VISIBLE_DEVICES_ENV",
    "VOLUME_MOUNTS_HOST_PATH",
    "VOLUME_MOUNTS_ROOT",
    "ResponseSettings",
    "container_ids",
    "container_response",
    "device_specs",
]

VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"
VOLUME_MOUNTS_ROOT = "/var/run/nvidia-container-devices"
VOLUME_MOUNTS_HOST_PATH = "/dev/null"
MPS_CONTAINER_ROOT = "/mps"
ANNOTATION_PLUGIN = "nvidia-device-plugin"
_CDI_STRATEGIES = frozenset({"cdi-annotations", "cdi-cri"})


@dataclass(frozen=True)
class ResponseSettings:
    """The config values an Allocate response depends on."""

    strategies: tuple[DeviceListStrategy, ...] = ("envvar",)
    id_strategy: DeviceIDStrategy = "uuid"
    pass_device_specs: bool = False
    cdi_annotation_prefix: str = "cdi.k8s.io/"
    dev_root: str = "/"
    mps_root: str | None = None
    gdrcopy: bool = False
    gds: bool = False
    mofed: bool = False
    imex_channel_ids: tuple[int, ...] = ()
    #: Capability minors of MIG devices (``cdi.read_mig_minors``).
    mig_minors: Mapping[str, int] | None = None

    @classmethod
    def from_config(
        cls, config: Config, mig_minors: Mapping[str, int] | None = None
    ) -> ResponseSettings:
        f = config.flags
        return cls(
            strategies=f.plugin.device_list_strategy,
            id_strategy=f.plugin.device_id_strategy,
            pass_device_specs=f.plugin.pass_device_specs,
            cdi_annotation_prefix=f.plugin.cdi_annotation_prefix,
            dev_root=f.nvidia_dev_root,
            mps_root=f.mps_root,
            gdrcopy=f.gdrcopy_enabled,
            gds=f.gds_enabled,
            mofed=f.mofed_enabled,
            imex_channel_ids=config.imex.channel_ids,
            mig_minors=mig_minors,
        )


def _unique_physical(devices: Sequence[PluginDevice]) -> list[PhysicalDevice]:
    seen: dict[str, PhysicalDevice] = {}
    for d in devices:
        seen.setdefault(d.physical.uuid, d.physical)
    return list(seen.values())


def container_ids(devices: Sequence[PluginDevice], strategy: DeviceIDStrategy) -> list[str]:
    """The IDs the container is told, per ``deviceIDStrategy``."""
    physical = _unique_physical(devices)
    return [p.uuid if strategy == "uuid" else p.index for p in physical]


def device_specs(
    devices: Sequence[PluginDevice],
    dev_root: str = "/",
    mig_minors: Mapping[str, int] | None = None,
) -> list[api_pb2.DeviceSpec]:
    """``passDeviceSpecs``: the control nodes that exist under ``dev_root``, then each
    device's nodes, ``rw``, host paths under ``dev_root``."""
    root = pathlib.Path(dev_root)
    paths: list[str] = [p for p in cdi.CONTROL_DEVICES if (root / p.lstrip("/")).exists()]
    for p in _unique_physical(devices):
        instance = (p.mig.gpu_instance_id, p.mig.compute_instance_id) if p.mig is not None else None
        for path in cdi.device_paths(p.minor, instance, mig_minors):
            if path not in paths:
                paths.append(path)
    return [
        api_pb2.DeviceSpec(
            container_path=path,
            host_path=os.fspath(root / path.lstrip("/")),
            permissions="rw",
        )
        for path in paths
    ]


def container_response(
    devices: Sequence[PluginDevice],
    settings: ResponseSettings,
    *,
    resource: str,
    mps: bool = False,
    response_id: str | None = None,
) -> api_pb2.ContainerAllocateResponse:
    """The response for one container given ``devices`` of ``resource``.

    ``mps``: the devices are MPS replicas. ``response_id`` names the CDI annotation (a fresh
    UUID by default, as NVIDIA's plugin does).
    """
    ids = container_ids(devices, settings.id_strategy)
    r = api_pb2.ContainerAllocateResponse()
    strategies = set(settings.strategies)

    if strategies & _CDI_STRATEGIES:
        names = [cdi.device_name(i) for i in ids]
        if "cdi-annotations" in strategies:
            key = f"{ANNOTATION_PLUGIN}_{response_id or uuidlib.uuid4()}".replace("/", "_")
            r.annotations[settings.cdi_annotation_prefix + key] = ",".join(names)
        if "cdi-cri" in strategies:
            r.cdi_devices.extend(api_pb2.CDIDevice(name=n) for n in names)

    if mps and settings.mps_root:
        pipe = f"{resource}/pipe"
        r.envs["CUDA_MPS_PIPE_DIRECTORY"] = f"{MPS_CONTAINER_ROOT}/{pipe}"
        r.mounts.append(
            api_pb2.Mount(
                container_path=f"{MPS_CONTAINER_ROOT}/{pipe}",
                host_path=os.path.join(settings.mps_root, pipe),
            )
        )
        r.mounts.append(
            api_pb2.Mount(
                container_path="/dev/shm",
                host_path=os.path.join(settings.mps_root, "shm"),
            )
        )

    if strategies <= _CDI_STRATEGIES:
        return r

    if "envvar" in strategies:
        r.envs[VISIBLE_DEVICES_ENV] = ",".join(ids)
        if settings.imex_channel_ids:
            r.envs["NVIDIA_IMEX_CHANNELS"] = ",".join(str(c) for c in settings.imex_channel_ids)
    if "volume-mounts" in strategies:
        r.envs[VISIBLE_DEVICES_ENV] = VOLUME_MOUNTS_ROOT
        r.mounts.extend(
            api_pb2.Mount(
                container_path=f"{VOLUME_MOUNTS_ROOT}/{i}", host_path=VOLUME_MOUNTS_HOST_PATH
            )
            for i in ids
        )
    if settings.pass_device_specs:
        r.devices.extend(device_specs(devices, settings.dev_root, settings.mig_minors))
    if settings.gdrcopy:
        r.envs["NVIDIA_GDRCOPY"] = "enabled"
    if settings.gds:
        r.envs["NVIDIA_GDS"] = "enabled"
    if settings.mofed:
        r.envs["NVIDIA_MOFED"] = "enabled"
    return r
