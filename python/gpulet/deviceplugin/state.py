"""The device plugin's state: the one object that decides what the device plugin hands out.

The device plugin's servicers translate kubelet messages into calls here; this object checks
them against the inventory and the devices' health, maps advertised device IDs to the ledger's
devices and back, and has the ledger (the Rust core's record of who holds which GPU, MIG slice
and replica) decide and record. It keeps no copy of who holds what: every other path (DRA,
telemetry) reads the same ledger, so a GPU is never handed out twice.

The kubelet's Allocate names no pod. An allocation is first held by a *pending* owner
(``gpulet-pending/allocate-<n>/<resource>``); reconciling with the kubelet's PodResources List
moves it to the container the kubelet reports (attribution) and releases what the kubelet no
longer reports (release). The kubelet is the authority on device-plugin devices: when it
assigns a device the ledger records for another device-plugin owner, the old owner is gone and
is released. A device held through DRA is refused. These rules are the ledger's
(``Ledger.allocate_pending`` and ``Ledger.reconcile``); a shared MIG device's replicas are ledger
devices too, and the ledger holds their MIG slice while any of them is held.

Every method is thread-safe (the ledger locks); none blocks on I/O. ``set_health`` may be called
from any thread.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from gpulet import alloc
from gpulet._core import Node, Topology
from gpulet.alloc import PENDING_NAMESPACE, SHARED_NAMESPACE, ContainerOwner, Ledger
from gpulet.config import Config
from gpulet.deviceplugin.resources import PluginDevice, ResourceSet, ResourceSpec
from gpulet.errors import ConflictError, GpuletError, InfeasibleError, InvalidArgumentError
from gpulet.inventory import NodeInventory, Watch

__all__ = [
    "PENDING_NAMESPACE",
    "SHARED_NAMESPACE",
    "AllocationError",
    "Assignment",
    "ContainerDevices",
    "DevicePluginState",
    "DeviceStatus",
    "ReconcileReport",
    "Watch",
]

log = logging.getLogger("gpulet.agent")

#: The path the device plugin holds devices through.
PATH = "device-plugin"

ErrorCode = Literal["invalid-argument", "failed-precondition"]


class AllocationError(GpuletError):
    """A request the state refuses; ``code`` says which gRPC status it becomes."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code


@dataclass(frozen=True)
class DeviceStatus:
    """One advertised device and its health."""

    device: PluginDevice
    healthy: bool
    reason: str = ""


@dataclass(frozen=True)
class ContainerDevices:
    """What the kubelet's PodResources List says one container holds of one resource."""

    namespace: str
    pod: str
    container: str
    resource: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Assignment:
    """Devices one owner holds through the device plugin."""

    owner: ContainerOwner
    ids: tuple[str, ...]
    pending: bool


@dataclass(frozen=True)
class ReconcileReport:
    """What one reconciliation with PodResources changed."""

    attributed: int = 0
    released: int = 0
    unknown_ids: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()


def _mig_replica_counts(resources: ResourceSet) -> dict[str, dict[tuple[int, int], int]]:
    """Per GPU UUID, the MIG slices shared as replicas: (profile id, start) -> replicas."""
    out: dict[str, dict[tuple[int, int], int]] = {}
    for r in resources.resources:
        for d in r.devices:
            s = d.physical.mig_slice
            if d.shared and s is not None:
                out.setdefault(s[0], {})[(s[1], s[2])] = d.replicas
    return out


class DevicePluginState:
    """The device plugin's allocations, over the node inventory and the ledger.

    Args:
        node: the node inventory (health and the device plugin / DRA split live there, shared
            with every other path), or a discovered node to make one from.
        config: the loaded config.
        resources: what the device plugin advertises
            (:func:`gpulet.deviceplugin.build_resources`).
        ledger: the ledger to record in (a new one when ``None``); the resources' GPUs are
            registered in it, with their MIG slices shared as replicas.
    """

    def __init__(
        self,
        node: NodeInventory | Node,
        config: Config,
        resources: ResourceSet,
        ledger: Ledger | None = None,
    ) -> None:
        self.node_inventory = (
            node if isinstance(node, NodeInventory) else NodeInventory(node, config)
        )
        self.node = self.node_inventory.node
        self.config = config
        self.resources = resources
        self.topology: Topology = self.node_inventory.topology
        self.ledger = ledger if ledger is not None else Ledger()
        placeable = self._register()
        self._specs = {r.name: r for r in resources.resources}
        #: Advertised ID -> the ledger's device, and back (one to one).
        self._keys: dict[str, alloc.Device] = {
            d.id: d.ledger_key(d.physical.gpu_uuid in placeable) for d in resources.by_id.values()
        }
        self._ids: dict[alloc.Device, str] = {k: i for i, k in self._keys.items()}
        #: Per resource, the ledger's devices it advertises.
        self._resource_keys = {
            r.name: [self._keys[d.id] for d in r.devices] for r in resources.resources
        }
        self._totals: dict[str, dict[str, int]] = {}
        self._last_disagreement: tuple[tuple[str, tuple[int, int]], ...] | None = None
        #: Called when the kubelet's view of devices in use differs from the records (the
        #: agent reconciles with PodResources soon after).
        self.on_stale: Callable[[], None] | None = None

    def _register(self) -> set[str]:
        """Register the resources' GPUs in the ledger; returns the UUIDs of those whose MIG
        slices the ledger can name (the model is known and, where slices are shared as
        replicas, the ledger accepts their placements)."""
        counts = _mig_replica_counts(self.resources)
        placeable = set()
        for reg in self.resources.gpus:
            mig_replicas = counts.get(reg.uuid) if reg.model is not None else None
            try:
                self.ledger.register_gpu(
                    reg.uuid,
                    replicas=reg.replicas,
                    model=reg.model,
                    serves=reg.serves,
                    mig_replicas=mig_replicas,
                )
            except InvalidArgumentError as e:
                if not mig_replicas:
                    raise
                log.warning(
                    "GPU %s: the ledger cannot place its shared MIG devices (%s); they are held "
                    "by their IDs",
                    reg.uuid,
                    e,
                )
                self.ledger.register_gpu(
                    reg.uuid, replicas=reg.replicas, model=reg.model, serves=reg.serves
                )
                continue
            if reg.model is not None:
                placeable.add(reg.uuid)
        return placeable

    # --- change notification and health (the node inventory's) -------------------------

    def watch(self) -> contextlib.AbstractContextManager[Watch]:
        """A :class:`gpulet.inventory.Watch` woken on every change of health (use in a loop)."""
        return self.node_inventory.watch()

    @property
    def generation(self) -> int:
        return self.node_inventory.generation

    def _changed(self) -> None:
        self.node_inventory.changed()

    def set_health(self, device_id: str, healthy: bool, reason: str = "") -> bool:
        """Mark a device healthy or unhealthy (in the node inventory); ListAndWatch streams send
        the new list. See :meth:`gpulet.inventory.NodeInventory.set_health`."""
        return self.node_inventory.set_health(device_id, healthy, reason)

    def health_of(self, device: PluginDevice) -> tuple[bool, str]:
        """(healthy, reason) of an advertised device: its own and its GPU's health."""
        return self.node_inventory.health_of(device.physical)

    def unhealthy(self) -> dict[str, str]:
        """Unhealthy physical devices (GPU or MIG UUID) and why."""
        return self.node_inventory.unhealthy()

    def list_devices(self, resource: str) -> list[DeviceStatus]:
        """The devices ``resource`` advertises, with their health, in a stable order."""
        spec = self.resources.resource(resource)
        out = []
        for d in spec.devices:
            healthy, reason = self.health_of(d)
            out.append(DeviceStatus(d, healthy, reason))
        return out

    # --- preferred allocation ----------------------------------------------------------

    def _spec(self, resource: str) -> ResourceSpec:
        spec = self._specs.get(resource)
        if spec is None:
            raise AllocationError(
                "invalid-argument", f"this agent does not serve resource {resource}"
            )
        return spec

    def _unknown(self, spec: ResourceSpec, ids: Iterable[str]) -> None:
        unknown = sorted({i for i in ids if i not in spec.by_id})
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise AllocationError(
                "invalid-argument",
                f"unknown device ID(s) for {spec.name}: {shown}; the plugin advertises "
                f"{len(spec.devices)} device(s) for it (ListAndWatch)",
            )

    def preferred(
        self,
        resource: str,
        available: Sequence[str],
        required: Sequence[str],
        size: int,
    ) -> list[str]:
        """The devices to prefer for one container (advisory, changes nothing).

        Whole GPUs come from the topology-aware allocator (``gpulet.alloc.preferred``, the
        node's topology prepared once); replicas and MIG devices from
        ``gpulet.alloc.select_replicas`` with the configured policy and the replicas already
        held per physical GPU.
        """
        spec = self._spec(resource)
        self._unknown(spec, [*available, *required])
        if size <= 0:
            raise AllocationError("invalid-argument", f"allocation size must be >= 1, got {size}")
        try:
            if spec.whole_gpus:
                index = {i: spec.by_id[i].physical.gpu_index for i in (*available, *required)}
                back = {v: k for k, v in index.items()}
                chosen = alloc.preferred(
                    self.topology,
                    [index[i] for i in available],
                    [index[i] for i in required],
                    size=size,
                )
                return [back[g] for g in chosen]
            parents = {i: spec.by_id[i].physical.gpu_uuid for i in (*available, *required)}
            return alloc.select_replicas(
                available,
                size,
                required,
                policy=self.config.flags.plugin.shared_devices_allocation_policy,
                allocated=self._in_use_per_gpu(spec, available, required),
                parents=parents,
            )
        except (InvalidArgumentError, InfeasibleError) as e:
            raise AllocationError("invalid-argument", str(e)) from None

    def _per_gpu_totals(self, spec: ResourceSpec) -> dict[str, int]:
        """How many devices ``spec`` advertises on each physical GPU (cached per resource)."""
        totals = self._totals.get(spec.name)
        if totals is None:
            totals = dict(collections.Counter(d.physical.gpu_uuid for d in spec.devices))
            self._totals[spec.name] = totals
        return totals

    def _in_use_per_gpu(
        self, spec: ResourceSpec, available: Sequence[str], required: Sequence[str]
    ) -> dict[str, int]:
        """Devices in use on each GPU, as the kubelet sees it.

        The kubelet is the source of truth, as for NVIDIA's plugin: a device it does not offer
        (neither in ``available`` nor in ``required``) is in use, whatever the records say.
        When the records (the ledger's device-plugin owners of the resource's devices)
        disagree (they went stale, or the kubelet knows of an assignment not reconciled yet),
        that is logged and a PodResources reconciliation is asked for.
        """
        offered = collections.Counter(
            spec.by_id[i].physical.gpu_uuid for i in {*available, *required}
        )
        totals = self._per_gpu_totals(spec)
        kubelet = {g: n - offered.get(g, 0) for g, n in totals.items()}
        recorded = self.ledger.held_per_gpu(self._resource_keys[spec.name], PATH)
        differ = {
            g: (recorded.get(g, 0), n)
            for g, n in kubelet.items()
            if recorded.get(g, 0) != n and g in offered
        }
        if differ:
            key = tuple(sorted(differ.items()))
            if key != self._last_disagreement:
                self._last_disagreement = key
                shown = ", ".join(
                    f"{g}: {r} recorded, {k} per the kubelet" for g, (r, k) in key[:4]
                )
                more = f" (and {len(key) - 4} more GPUs)" if len(key) > 4 else ""
                log.info(
                    "%s: the kubelet's view of devices in use differs from the records (%s%s); "
                    "using the kubelet's and reconciling",
                    spec.name,
                    shown,
                    more,
                )
            if self.on_stale is not None:
                self.on_stale()
        else:
            self._last_disagreement = None
        return kubelet

    # --- allocation --------------------------------------------------------------------

    def check(self, resource: str, ids: Sequence[str]) -> list[PluginDevice]:
        """Validate one container's request without recording it."""
        spec = self._spec(resource)
        if not ids:
            raise AllocationError("invalid-argument", f"the request for {resource} names no device")
        by_id = spec.by_id
        devices = [by_id.get(i) for i in ids]
        if None in devices or len(set(ids)) != len(ids):
            # Say what is wrong, in this order: repeated IDs, then unknown ones.
            twice = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
            if twice:
                raise AllocationError(
                    "invalid-argument",
                    f"the request for {resource} names {', '.join(twice)} more than once",
                )
            self._unknown(spec, ids)
        checked = [d for d in devices if d is not None]
        if (
            spec.fail_requests_greater_than_one
            and len(checked) > 1
            and any(d.shared for d in checked)
        ):
            raise AllocationError(
                "invalid-argument",
                f"maximum request size for shared resources is 1; found {len(checked)} "
                f"(sharing.{'mps' if spec.sharing == 'mps' else 'timeSlicing'}"
                ".failRequestsGreaterThanOne)",
            )
        if self.node_inventory.unhealthy():
            for d in checked:
                healthy, reason = self.health_of(d)
                if not healthy:
                    raise AllocationError(
                        "failed-precondition", f"device {d.id} is unhealthy: {reason}"
                    )
        return checked

    def allocate(
        self, resource: str, requests: Sequence[Sequence[str]]
    ) -> list[list[PluginDevice]]:
        """Record what the kubelet assigned to each container of one Allocate call.

        All or nothing: on any refusal (:class:`AllocationError`) nothing is recorded. A repeat
        (every device already held by one pending owner, as when the kubelet calls again for
        the same devices) records nothing new. One call of the ledger
        (``Ledger.allocate_pending``) decides and records.
        """
        checked = [self.check(resource, ids) for ids in requests]
        keys = self._keys
        try:
            released = self.ledger.allocate_pending(
                resource, [[keys[d.id] for d in devices] for devices in checked]
            )
        except GpuletError as e:
            raise _refusal(e) from None
        if released:
            requested = {d.id for devices in checked for d in devices}
            for owner, devices in released:
                self._log_reassigned(owner, devices, requested)
        return checked

    def _log_reassigned(
        self, owner: alloc.Owner, devices: Sequence[alloc.Device], requested: set[str]
    ) -> None:
        taken = [i for i in self._ids_of(devices) if i in requested]
        log.info(
            "the kubelet assigned %s, held by %s; releasing %s",
            ", ".join(taken),
            owner,
            owner,
        )

    def _ids_of(self, devices: Iterable[alloc.Device]) -> list[str]:
        """The advertised IDs of ledger devices, sorted (devices this state does not advertise
        are named as the ledger names them)."""
        return sorted(self._ids.get(k, str(k)) for k in devices)

    def detach(self) -> None:
        """Release everything the device plugin holds in the ledger and unregister this state's
        GPUs (before a new state with a new config takes over the same ledger; PodResources
        then attributes the kubelet's assignments to the new state)."""
        self.ledger.release_path(PATH)
        for reg in self.resources.gpus:
            self.ledger.unregister_gpu(reg.uuid)
        self._changed()

    # --- attribution -------------------------------------------------------------------

    def mark(self) -> int:
        """A point in the allocation sequence; pass it to :meth:`reconcile` for a PodResources
        List started now (allocations after the mark are not judged by that list)."""
        return self.ledger.mark()

    def reconcile(self, listed: Iterable[ContainerDevices], mark: int) -> ReconcileReport:
        """Attribute and release by the kubelet's PodResources List, started at ``mark``.

        Devices the list gives a container move to that container; pending allocations made
        before ``mark`` that the list does not name are released (their container is gone, or
        was an init container), and so are containers no longer listed. The ledger does it
        (``Ledger.reconcile``); this maps the list's IDs to the ledger's devices.
        """
        keys = self._keys
        unknown: set[str] = set()
        desired: dict[ContainerOwner, list[alloc.Device]] = {}
        served = self._specs
        for c in listed:
            if c.resource not in served:
                continue
            owner = ContainerOwner(c.namespace, c.pod, c.container)
            for i in c.ids:
                k = keys.get(i)
                if k is not None:
                    desired.setdefault(owner, []).append(k)
                else:
                    unknown.add(i)
        r = self.ledger.reconcile(desired.items(), mark)
        if r.reassigned:
            given = {self._ids.get(k, str(k)) for _, ds in r.attributed for k in ds}
            for gone, devices in r.reassigned:
                self._log_reassigned(gone, devices, given)
        conflicts = []
        for listed_owner, devices, message in r.conflicts:
            conflicts.append(f"{listed_owner}: {message}")
            log.warning(
                "cannot attribute %s to %s: %s", self._ids_of(devices), listed_owner, message
            )
        return ReconcileReport(
            len(r.attributed), len(r.released), tuple(sorted(unknown)), tuple(conflicts)
        )

    def assignments(self) -> list[Assignment]:
        """Every device-plugin owner and the IDs it holds, in the order of the allocation
        sequence."""
        out = []
        for a in self.ledger.allocations(PATH):
            if isinstance(a.owner, ContainerOwner):
                out.append(Assignment(a.owner, tuple(self._ids_of(a.devices)), a.pending))
        return out

    def holder(self, device_id: str) -> ContainerOwner | None:
        """The device-plugin owner of an advertised ID (``None``: free, held through DRA, or
        not an ID this state advertises)."""
        key = self._keys.get(device_id)
        if key is None:
            return None
        try:
            owner = self.ledger.holder_of(key)
        except GpuletError:
            return None  # its GPU is no longer registered (detached)
        if isinstance(owner, ContainerOwner) and owner.path == PATH:
            return owner
        return None


def _refusal(e: GpuletError) -> AllocationError:
    """A ledger refusal as a gRPC-ready error."""
    if isinstance(e, ConflictError):
        return AllocationError("failed-precondition", str(e))
    return AllocationError("invalid-argument", str(e))
