"""Which resources the device plugin advertises, and which devices each one lists.

:func:`build_resources` turns a discovered node and a loaded config into an :class:`ResourceSet`:
the resources to serve (one kubelet device-plugin server each) and, per resource, the devices
the kubelet sees. It follows NVIDIA's device plugin (``internal/rm/device_map.go``):

- ``migStrategy: none``: every GPU, MIG mode or not, is one ``nvidia.com/gpu``.
- ``single``: GPUs with MIG mode on are split: each MIG device is one ``nvidia.com/gpu``. Every
  GPU must have the same MIG mode and every MIG device the same profile (compute-instance size
  included: ``1c.2g.20gb`` is not ``2g.20gb``).
- ``mixed``: GPUs without MIG stay ``nvidia.com/gpu``; each MIG device is
  ``nvidia.com/mig-<profile>``, ``+`` written as ``.`` (``mig-1g.10gb.me``). Only MIG devices
  whose compute instance fills its GPU instance (C == G) have such a name; one of a GPU instance
  split into smaller compute instances (NVIDIA's profile ``<C>c.<G>g.<mem>gb``) is left out, with
  a note saying so (NVIDIA's plugin fails instead: the profile matches no resource pattern).
- ``sharing`` (time-slicing or MPS): each selected device of a named resource becomes
  ``replicas`` devices ``<UUID>::<n>``, advertised under the resource's (re)name; the rest stay
  as they were. ``gpulet.gpuReplicas`` changes the count per device (1: not shared).
- ``resources.gpus`` / ``resources.mig`` (custom names), ``rename`` and ``devices`` subsets are
  present in the config only when gpulet's section opted in (the config package drops them
  otherwise, as NVIDIA does).

Before anything is built, the config is checked against the node: a per-GPU key
(``gpulet.gpuReplicas``, ``gpulet.dra.devices``, a sharing entry's ``devices``) naming a device the
node lacks, or a resource that would list more than ``MAX_DEVICES_PER_RESOURCE`` devices (its
ListAndWatch message must fit the kubelet's 4 MiB), is a :class:`gpulet.config.ConfigError`
naming the field.

Device IDs on the wire are UUIDs (GPU or MIG) or replicas of them, whatever
``deviceIDStrategy`` says; that strategy only changes what the container is told.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from gpulet import _core, alloc
from gpulet._core import Gpu, MigDevice, Node
from gpulet.config import (
    MAX_DEVICES_PER_RESOURCE,
    RESOURCE_NAME_PREFIX,
    Config,
    DeviceSelector,
    ReplicatedResource,
    Resource,
    SharingStrategy,
    validate_for_node,
)
from gpulet.config._node import describe_indices, missing_device, node_error
from gpulet.errors import GpuletError
from gpulet.inventory import PhysicalDevice, device_plugin_gpus, physical_gpu, physical_mig

__all__ = [
    "DEFAULT_GPU_RESOURCE",
    "GpuRegistration",
    "PluginDevice",
    "ResourceError",
    "ResourceSet",
    "ResourceSpec",
    "build_resources",
    "mig_resource_name",
]

DEFAULT_GPU_RESOURCE = f"{RESOURCE_NAME_PREFIX}/gpu"
#: The kubelet refuses longer device IDs.
MAX_DEVICE_ID_LENGTH = 63


class ResourceError(GpuletError, ValueError):
    """The node and the config cannot be advertised together (for example ``migStrategy:
    single`` on a node with two MIG profiles). The message says what to change."""


def mig_resource_name(profile: str) -> str:
    """NVIDIA's resource name of a MIG profile: ``1g.10gb+me`` -> ``nvidia.com/mig-1g.10gb.me``
    (computed by the core, as ``gpulet.mig.Profile.resource_name`` is)."""
    return _core.mig_resource_name(profile)


@dataclass(frozen=True)
class PluginDevice:
    """One device as one resource advertises it."""

    #: The ID on the wire: a UUID, or ``<UUID>::<n>`` for replica ``n``.
    id: str
    resource: str
    physical: PhysicalDevice
    #: Replica number, or ``None`` when the device is not shared.
    replica: int | None = None
    #: How many replicas the physical device is shared into (0: not shared).
    replicas: int = 0

    @property
    def shared(self) -> bool:
        return self.replica is not None

    def ledger_key(self, placeable: bool = True) -> alloc.Device:
        """The ledger's name of this device: the GPU UUID, the replica ``<UUID>::<n>``, the MIG
        slice ``(GPU UUID, profile id, start)``, the replica of a MIG slice ``(GPU UUID, profile
        id, start, n)``, or ``(GPU UUID, ID)`` for a MIG device whose slice the ledger cannot
        place (no placement from NVML, a compute instance smaller than its GPU instance, or
        ``placeable`` false: a GPU whose model, and so its slices, the ledger does not know)."""
        p = self.physical
        if p.is_mig:
            s = p.mig_slice
            if s is None or not placeable:
                return (p.gpu_uuid, self.id)
            if self.replica is not None:
                return (s[0], s[1], s[2], self.replica)
            return s
        if self.replica is not None:
            return alloc.replica_id(p.uuid, self.replica)
        return p.uuid


@dataclass(frozen=True)
class ResourceSpec:
    """One extended resource and the devices it advertises (in a stable order)."""

    name: str
    devices: tuple[PluginDevice, ...]
    sharing: SharingStrategy = "none"
    fail_requests_greater_than_one: bool = False

    @property
    def short_name(self) -> str:
        """The name without its domain: ``gpu``, ``mig-1g.10gb``."""
        return self.name.split("/", 1)[1]

    @property
    def socket_name(self) -> str:
        """The file name of this resource's socket in the device-plugins directory."""
        return f"gpulet-{self.short_name}.sock"

    @property
    def whole_gpus(self) -> bool:
        """Every device is an unshared whole GPU (GetPreferredAllocation uses the topology)."""
        return all(not d.shared and not d.physical.is_mig for d in self.devices)

    @cached_property
    def by_id(self) -> dict[str, PluginDevice]:
        return {d.id: d for d in self.devices}


@dataclass(frozen=True)
class GpuRegistration:
    """How a GPU is registered in the ledger."""

    uuid: str
    index: int
    replicas: int
    model: str | None
    serves: str | None


@dataclass(frozen=True)
class ResourceSet:
    """Every resource the device plugin serves on this node, and the ledger's GPUs."""

    resources: tuple[ResourceSpec, ...]
    gpus: tuple[GpuRegistration, ...] = ()
    #: Indices of the GPUs the device plugin serves.
    served: tuple[int, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    def resource(self, name: str) -> ResourceSpec:
        for r in self.resources:
            if r.name == name:
                return r
        raise KeyError(name)

    @cached_property
    def by_id(self) -> dict[str, PluginDevice]:
        return {d.id: d for r in self.resources for d in r.devices}

    def counts(self) -> dict[str, int]:
        """Devices per resource name."""
        return {r.name: len(r.devices) for r in self.resources}


# --- building ------------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """NVIDIA's resource pattern: ``*`` matches anything, everything else itself."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def _match(resources: Sequence[Resource], value: str) -> str | None:
    for r in resources:
        if _pattern(r.pattern).fullmatch(value):
            return r.name
    return None


def _split(m: MigDevice) -> bool:
    """The MIG device's compute instance is smaller than its GPU instance (C < G). Unknown
    slice counts (NVML refused for lack of privileges) count as not split."""
    c, g = m.compute_slices, m.gpu_instance_slices
    return c is not None and g is not None and c != g


def _nvidia_profile(m: MigDevice) -> str | None:
    """NVIDIA's name of the MIG device's profile (go-nvlib ``MigProfileInfo.String``): the GPU
    instance's, ``<C>c.`` before it when the compute instance is smaller (``1c.2g.20gb``)."""
    if m.profile_name is None:
        return None
    if _split(m):
        return f"{m.compute_slices}c.{m.profile_name}"
    return m.profile_name


def _left_out(g: Gpu, m: MigDevice, profile: str, why: str) -> str:
    return (
        f"MIG device {m.uuid} ({profile}) on GPU {g.index} is not advertised: its compute "
        f"instance spans {m.compute_slices} of its GPU instance's {m.gpu_instance_slices} "
        f"compute slices (C != G), and {why}"
    )


def _base_devices(
    gpus: Sequence[Gpu], config: Config, notes: list[str]
) -> dict[str, list[PhysicalDevice]]:
    """Devices per resource name before sharing, in NVML order; a note in ``notes`` for each
    MIG device left out."""
    strategy = config.flags.mig_strategy
    gpu_names = list(config.resources.gpus) or [Resource("*", DEFAULT_GPU_RESOURCE)]
    out: dict[str, list[PhysicalDevice]] = {}

    if strategy == "single":
        modes = {g.mig_enabled for g in gpus}
        if len(modes) > 1:
            on = ", ".join(str(g.index) for g in gpus if g.mig_enabled)
            off = ", ".join(str(g.index) for g in gpus if not g.mig_enabled)
            raise ResourceError(
                "migStrategy single needs every GPU in the same MIG mode, but MIG is enabled on "
                f"GPU {on} and disabled on GPU {off}; use migStrategy mixed, or set every GPU's "
                "MIG mode alike"
            )
        profiles = sorted({_nvidia_profile(m) or "?" for g in gpus for m in g.mig_devices})
        if len(profiles) > 1:
            raise ResourceError(
                "migStrategy single needs one MIG profile on the whole node, but the node has "
                f"{', '.join(profiles)}; use migStrategy mixed, or make every MIG device alike"
            )

    for g in gpus:
        split = strategy != "none" and g.mig_enabled
        if not split:
            name = _match(gpu_names, g.name)
            if name is None:
                raise ResourceError(
                    f"GPU {g.index} ({g.name}) matches no pattern in resources.gpus "
                    f"({', '.join(r.pattern for r in gpu_names)}); add a pattern for it"
                )
            out.setdefault(name, []).append(physical_gpu(g))
            continue
        for m in g.mig_devices:
            profile = _nvidia_profile(m)
            if profile is None:
                raise ResourceError(
                    f"MIG device {m.uuid} on GPU {g.index} has no profile NVML could name; "
                    "it cannot be advertised under a MIG resource"
                )
            if config.resources.mig:
                name = _match(config.resources.mig, profile)
                if name is None and _split(m):
                    notes.append(_left_out(g, m, profile, "no pattern in resources.mig matches it"))
                    continue
                if name is None:
                    raise ResourceError(
                        f"MIG device {m.uuid} ({profile}) on GPU {g.index} matches no pattern "
                        f"in resources.mig "
                        f"({', '.join(r.pattern for r in config.resources.mig)}); add one"
                    )
            elif strategy == "single":
                name = DEFAULT_GPU_RESOURCE
            elif _split(m):
                notes.append(
                    _left_out(g, m, profile, "migStrategy mixed names only MIG devices with C == G")
                )
                continue
            else:
                name = mig_resource_name(profile)
            out.setdefault(name, []).append(physical_mig(g, m))
    return out


def _pick(selector: DeviceSelector, devices: Sequence[PhysicalDevice]) -> set[str]:
    """UUIDs of the devices a sharing entry selects (NVIDIA's getIDsOfDevicesToReplicate)."""
    if selector.kind == "all":
        return {d.uuid for d in devices}
    if selector.kind == "count":
        return {d.uuid for d in devices[: selector.count]}
    return {d.uuid for d in devices if d.index in selector.refs or d.uuid in selector.refs}


def _replica_override(config: Config, d: PhysicalDevice) -> int | None:
    """The gpulet.gpuReplicas count for a device: its own ref first, then its GPU's."""
    own = {d.index, d.uuid}
    parent = {str(d.gpu_index), d.gpu_uuid}
    for keys in (own, parent):
        for entry in config.gpulet.gpu_replicas:
            if keys & set(entry.devices.refs):
                return entry.replicas
    return None


def _model(g: Gpu) -> str | None:
    """The catalog name the ledger knows the GPU by (needed for MIG slices)."""
    if not g.mig_capable:
        return None
    try:
        alloc.Ledger().register_gpu("probe", model=g.name)
    except GpuletError:
        return None
    return g.name


def _entry_paths(config: Config) -> list[str]:
    """The file's path of each entry of the sharing strategy in use, in the order of
    ``config.sharing.active.resources`` (entries the config package ignored are skipped)."""
    active = config.sharing.active
    if active is None:
        return []
    section = "sharing.mps" if config.sharing.strategy == "mps" else "sharing.timeSlicing"
    entry = re.compile(rf"{re.escape(section)}\.resources\[(\d+)\]")
    dropped = {int(m.group(1)) for p in config.ignored if (m := entry.fullmatch(p)) is not None}
    kept = (i for i in range(len(active.resources) + len(dropped)) if i not in dropped)
    return [f"{section}.resources[{i}]" for i, _ in zip(kept, active.resources, strict=False)]


def _device_text(devices: Sequence[PhysicalDevice]) -> str:
    if all(not d.is_mig for d in devices):
        return f"GPUs {describe_indices(d.gpu_index for d in devices)}"
    return ", ".join(d.index for d in devices)


def _check_selector(
    node: Node,
    config: Config,
    e: ReplicatedResource,
    path: str,
    devices: Sequence[PhysicalDevice],
) -> None:
    """A sharing entry's ``devices`` must name devices of its resource on this node (NVIDIA's
    plugin fails on such a config too; it only reads ``devices`` with gpulet's opt-in)."""
    selector = e.devices
    if selector.kind == "count" and selector.count > len(devices):
        raise node_error(
            config,
            f"{path}.devices",
            f"asks for the first {selector.count} devices of {e.name}, but this node has "
            f"{len(devices)} ({_device_text(devices)})",
        )
    for j, ref in enumerate(selector.refs):
        if any(ref in (d.index, d.uuid) for d in devices):
            continue
        problem = missing_device(node, ref)
        if problem is None:
            problem = (
                f"{ref} is not a device of {e.name} on this node (its devices: "
                f"{_device_text(devices)})"
            )
            if config.gpulet.dra.enabled and any(
                ref in (str(g.index), g.uuid) and g not in device_plugin_gpus(node, config)
                for g in node.gpus
            ):
                problem += "; gpulet.dra.devices gives it to DRA"
        raise node_error(config, f"{path}.devices[{j}]", problem)


def _check_size(
    config: Config, name: str, path: str, entry: ReplicatedResource, plan: list[int]
) -> None:
    """One resource's device list, ``plan`` (a count per physical device: 1 when unshared),
    must fit in one ListAndWatch message (:data:`~gpulet.config.MAX_DEVICES_PER_RESOURCE`)."""
    total = sum(plan)
    if total <= MAX_DEVICES_PER_RESOURCE:
        return
    shared = sum(1 for n in plan if n > 1)
    unshared = len(plan) - shared
    most = (MAX_DEVICES_PER_RESOURCE - unshared) // max(shared, 1)
    per_gpu = " (with gpulet.gpuReplicas)" if config.gpulet.gpu_replicas else ""
    raise node_error(
        config,
        f"{path}.replicas",
        f"{entry.replicas} replicas{per_gpu} make {total} {name} devices on this node, above "
        f"the {MAX_DEVICES_PER_RESOURCE} one resource may advertise (the kubelet takes a "
        f"resource's device list in one message of at most 4 MiB); use at most {most} replicas "
        "per device",
    )


def _unused_replica_refs(config: Config, used: set[str]) -> list[str]:
    notes = []
    for i, entry in enumerate(config.gpulet.gpu_replicas):
        for j, ref in enumerate(entry.devices.refs):
            if ref not in used:
                notes.append(
                    f"gpulet.gpuReplicas[{i}].devices[{j}]: {ref} is not a shared device on "
                    "this node (sharing does not select it, or it is advertised as part of "
                    "another device, or DRA serves it); its count is not used"
                )
    return notes


def build_resources(node: Node, config: Config) -> ResourceSet:
    """The resources and devices to advertise for ``node`` under ``config``.

    Checks the config against the node first (:func:`gpulet.config.validate_for_node`, then
    each sharing entry's devices against its resource, and each resource's device count).

    Raises:
        ConfigError: a per-GPU key names a device the node does not have, or a resource would
            advertise more than :data:`~gpulet.config.MAX_DEVICES_PER_RESOURCE` devices.
        ResourceError: the node and the config cannot be advertised together.
    """
    validate_for_node(config, node)
    gpus = device_plugin_gpus(node, config)
    notes: list[str] = []
    base = _base_devices(gpus, config, notes)
    sharing = config.sharing
    active = sharing.active
    strategy = sharing.strategy

    plugin: dict[str, list[PluginDevice]] = {}
    shared_resources: dict[str, tuple[SharingStrategy, bool]] = {}
    gpu_replicas: dict[str, int] = {}
    used_refs: set[str] = set()

    entries = list(active.resources) if active is not None else []
    paths = _entry_paths(config)
    if config.gpulet.gpu_replicas and active is None:
        notes.append("gpulet.gpuReplicas is set but sharing is not: nothing is shared")
    for name, devices in base.items():
        own = [(e, p) for e, p in zip(entries, paths, strict=True) if e.name == name]
        if not own:
            plugin.setdefault(name, []).extend(PluginDevice(d.uuid, name, d) for d in devices)
            continue
        for e, path in own:
            _check_selector(node, config, e, path, devices)
        assigned: dict[str, int] = {}
        for i, (e, _) in enumerate(own):
            for uuid in _pick(e.devices, devices):
                assigned.setdefault(uuid, i)
        # What each device becomes, before any replica is made: (device, count, target).
        layout: list[tuple[PhysicalDevice, int, str, int | None]] = []
        for d in devices:
            entry_index = assigned.get(d.uuid)
            count = 1
            target = name
            if entry_index is not None:
                e = own[entry_index][0]
                used_refs.update((d.index, d.uuid, str(d.gpu_index), d.gpu_uuid))
                override = _replica_override(config, d)
                count = e.replicas if override is None else override
                target = (e.rename or e.name) if count > 1 else name
            layout.append((d, count, target, entry_index))
        for target in {t for _, _, t, _ in layout}:
            plan = [c for _, c, t, _ in layout if t == target]
            plan += [1] * len(plugin.get(target, ()))
            culprit = next(
                (i for _, c, t, i in layout if t == target and c > 1 and i is not None), None
            )
            if culprit is not None:
                e, path = own[culprit]
                _check_size(config, target, path, e, plan)
        for d, count, target, _ in layout:
            if count <= 1:
                plugin.setdefault(name, []).append(PluginDevice(d.uuid, name, d))
                continue
            if strategy == "mps" and d.is_mig:
                raise ResourceError(
                    f"MPS cannot share MIG device {d.uuid} (GPU {d.gpu_index}); NVIDIA's MPS "
                    "support excludes MIG: share the MIG devices by time-slicing, or disable MIG"
                )
            shared_resources[target] = (
                strategy,
                active.fail_requests_greater_than_one if active is not None else False,
            )
            if not d.is_mig:
                gpu_replicas[d.uuid] = count
            for n in range(count):
                rid = alloc.replica_id(d.uuid, n)
                if len(rid) > MAX_DEVICE_ID_LENGTH:
                    raise ResourceError(
                        f"replica ID {rid!r} is longer than the {MAX_DEVICE_ID_LENGTH} characters "
                        "the kubelet accepts; lower the replica count"
                    )
                plugin.setdefault(target, []).append(
                    PluginDevice(rid, target, d, replica=n, replicas=count)
                )
    for e in entries:
        if e.name not in base:
            notes.append(f"sharing names {e.name}, which this node does not advertise")
    if active is not None:
        notes.extend(_unused_replica_refs(config, used_refs))

    resources = []
    for name in sorted(plugin):
        sharing_kind, fail_gt1 = shared_resources.get(name, ("none", False))
        resources.append(
            ResourceSpec(
                name=name,
                devices=tuple(plugin[name]),
                sharing=sharing_kind,
                fail_requests_greater_than_one=fail_gt1,
            )
        )

    dra = config.gpulet.dra
    served = {g.index for g in gpus}
    registrations = []
    for g in node.gpus:
        serves = ("device-plugin" if dra.enabled else None) if g.index in served else "dra"
        registrations.append(
            GpuRegistration(
                uuid=g.uuid,
                index=g.index,
                replicas=gpu_replicas.get(g.uuid, 0),
                model=_model(g),
                serves=serves,
            )
        )
    return ResourceSet(
        resources=tuple(resources),
        gpus=tuple(registrations),
        served=tuple(sorted(served)),
        notes=tuple(notes),
    )
