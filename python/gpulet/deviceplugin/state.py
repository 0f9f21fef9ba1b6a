"""The device plugin's state: the one object that decides what the device plugin hands out.

The device plugin's servicers translate kubelet messages into calls here; this object checks
them against the inventory, the devices' health and the ledger (the Rust core's bookkeeping of
who holds which GPU, MIG slice and replica), records the outcome, and tells ListAndWatch
streams when anything they list changed. Every other path (DRA, telemetry) reads the same
ledger, so a GPU is never handed out twice.

The kubelet's Allocate names no pod. An allocation is first held by a *pending* owner
(``gpulet-pending/allocate-<n>/<resource>``); reconciling with the kubelet's PodResources List
moves it to the container the kubelet reports (attribution) and releases what the kubelet no
longer reports (release). The kubelet is the authority on device-plugin devices: when it
assigns a device this object still records for another device-plugin owner, the old owner is
gone and is released. A device held through DRA is refused.

Every method is thread-safe (one re-entrant lock); none blocks on I/O. ``set_health`` may be
called from any thread.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from gpulet import alloc
from gpulet._core import Node, Topology
from gpulet.alloc import ContainerOwner, Ledger
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

#: Namespace of the owner that holds an allocation until PodResources names its container.
PENDING_NAMESPACE = "gpulet-pending"
#: Namespace of the owner that holds a shared MIG slice for all of its replicas.
SHARED_NAMESPACE = "gpulet-shared"

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


@dataclass
class _Holding:
    owner: ContainerOwner
    ids: frozenset[str]
    #: Ledger devices the owner holds itself (shared MIG slices are held by a shared owner).
    keys: tuple[alloc.Device, ...]
    seq: int
    pending: bool


@dataclass
class _Saved:
    ledger: bytes
    holdings: dict[ContainerOwner, _Holding]
    holder: dict[str, _Holding]
    shared: dict[alloc.MigSlice, ContainerOwner]


class DevicePluginState:
    """The device plugin's allocations, over the node inventory and the ledger.

    Args:
        node: the node inventory (health and the device plugin / DRA split live there, shared
            with every other path), or a discovered node to make one from.
        config: the loaded config.
        resources: what the device plugin advertises
            (:func:`gpulet.deviceplugin.build_resources`).
        ledger: the ledger to record in (a new one when ``None``); the resources' GPUs are
            registered in it.
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
        for reg in resources.gpus:
            self.ledger.register_gpu(
                reg.uuid, replicas=reg.replicas, model=reg.model, serves=reg.serves
            )
        self._lock = threading.RLock()
        self._holdings: dict[ContainerOwner, _Holding] = {}
        self._holder: dict[str, _Holding] = {}
        self._shared: dict[alloc.MigSlice, ContainerOwner] = {}
        self._seq = 0
        self._gpu_index = {g.uuid: g.index for g in self.node.gpus}
        self._totals: dict[str, dict[str, int]] = {}
        self._last_disagreement: tuple[tuple[str, tuple[int, int]], ...] | None = None
        #: Called when the kubelet's view of devices in use differs from the records (the
        #: agent reconciles with PodResources soon after).
        self.on_stale: Callable[[], None] | None = None

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
        try:
            return self.resources.resource(resource)
        except KeyError:
            raise AllocationError(
                "invalid-argument", f"this agent does not serve resource {resource}"
            ) from None

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
        When the records disagree (they went stale, or the kubelet knows of an assignment not
        reconciled yet), that is logged and a PodResources reconciliation is asked for.
        """
        offered = collections.Counter(
            spec.by_id[i].physical.gpu_uuid for i in {*available, *required}
        )
        totals = self._per_gpu_totals(spec)
        kubelet = {g: n - offered.get(g, 0) for g, n in totals.items()}
        recorded = self._held_per_gpu(spec)
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

    def _held_per_gpu(self, spec: ResourceSpec) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for i in self._holder:
                d = spec.by_id.get(i)
                if d is not None:
                    g = d.physical.gpu_uuid
                    counts[g] = counts.get(g, 0) + 1
        return counts

    # --- allocation --------------------------------------------------------------------

    def check(self, resource: str, ids: Sequence[str]) -> list[PluginDevice]:
        """Validate one container's request without recording it."""
        spec = self._spec(resource)
        if not ids:
            raise AllocationError("invalid-argument", f"the request for {resource} names no device")
        twice = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
        if twice:
            raise AllocationError(
                "invalid-argument",
                f"the request for {resource} names {', '.join(twice)} more than once",
            )
        self._unknown(spec, ids)
        devices = [spec.by_id[i] for i in ids]
        if (
            spec.fail_requests_greater_than_one
            and len(devices) > 1
            and any(d.shared for d in devices)
        ):
            raise AllocationError(
                "invalid-argument",
                f"maximum request size for shared resources is 1; found {len(devices)} "
                f"(sharing.{'mps' if spec.sharing == 'mps' else 'timeSlicing'}"
                ".failRequestsGreaterThanOne)",
            )
        for d in devices:
            healthy, reason = self.health_of(d)
            if not healthy:
                raise AllocationError(
                    "failed-precondition", f"device {d.id} is unhealthy: {reason}"
                )
        return devices

    def allocate(
        self, resource: str, requests: Sequence[Sequence[str]]
    ) -> list[list[PluginDevice]]:
        """Record what the kubelet assigned to each container of one Allocate call.

        All or nothing: on any refusal (:class:`AllocationError`) nothing is recorded. A repeat
        (every device already held by one pending owner, as when the kubelet calls again for
        the same devices) records nothing new.
        """
        checked = [self.check(resource, ids) for ids in requests]
        with self._lock:
            saved: _Saved | None = None
            try:
                for devices in checked:
                    if self._is_repeat(devices):
                        continue
                    if saved is None:
                        saved = self._save()
                    self._seq += 1
                    owner = ContainerOwner(PENDING_NAMESPACE, f"allocate-{self._seq}", resource)
                    self._assign(owner, devices, pending=True)
                self._collect_shared()
            except AllocationError:
                if saved is not None:
                    self._restore(saved)
                raise
            except GpuletError as e:
                if saved is not None:
                    self._restore(saved)
                raise _refusal(e) from None
        return checked

    def _is_repeat(self, devices: Sequence[PluginDevice]) -> bool:
        # Only a pending owner's devices repeat (init container devices reused): devices of a
        # container PodResources named were reassigned by the kubelet, its old owner is gone.
        holders = {id(self._holder.get(d.id)) for d in devices}
        first = self._holder.get(devices[0].id)
        return len(holders) == 1 and first is not None and first.pending

    def _assign(
        self, owner: ContainerOwner, devices: Sequence[PluginDevice], *, pending: bool
    ) -> None:
        """Hold ``devices`` for ``owner``, releasing other device-plugin owners of them.
        Raises ledger errors; the caller restores on failure."""
        ids = frozenset(d.id for d in devices)
        for h in {id(h): h for i in ids if (h := self._holder.get(i)) is not None}.values():
            log.info(
                "the kubelet assigned %s, held by %s; releasing %s",
                ", ".join(sorted(ids & h.ids)),
                h.owner,
                h.owner,
            )
            self._release(h)
        keys: list[alloc.Device] = []
        for d in devices:
            key = d.ledger_key
            if key is None:
                continue
            if d.physical.is_mig and d.shared:
                assert isinstance(key, tuple)
                self._hold_shared(key, d)
            else:
                keys.append(key)
        if keys:
            self.ledger.allocate(owner, keys)
        h = _Holding(owner, ids, tuple(keys), self._seq, pending)
        self._holdings[owner] = h
        for i in ids:
            self._holder[i] = h

    def _hold_shared(self, key: alloc.MigSlice, d: PluginDevice) -> None:
        if key in self._shared:
            return
        owner = ContainerOwner(SHARED_NAMESPACE, d.physical.uuid, "replicas")
        self.ledger.allocate(owner, [key])
        self._shared[key] = owner

    def _collect_shared(self) -> None:
        """Release shared MIG slices none of whose replicas is held any more."""
        needed: set[alloc.MigSlice] = set()
        by_id = self.resources.by_id
        for i in self._holder:
            d = by_id.get(i)
            if d is not None and d.physical.is_mig and d.shared and d.physical.mig_slice:
                needed.add(d.physical.mig_slice)
        for key, owner in list(self._shared.items()):
            if key not in needed:
                self.ledger.release(owner)
                del self._shared[key]

    def _release(self, h: _Holding) -> None:
        if h.keys:
            self.ledger.release(h.owner)
        self._holdings.pop(h.owner, None)
        for i in h.ids:
            if self._holder.get(i) is h:
                del self._holder[i]

    def detach(self) -> None:
        """Release everything this state holds in the ledger and unregister its GPUs (before a
        new state with a new config takes over the same ledger; PodResources then attributes
        the kubelet's assignments to the new state)."""
        with self._lock:
            for h in list(self._holdings.values()):
                self._release(h)
            for owner in set(self._shared.values()):
                self.ledger.release(owner)
            self._shared.clear()
            for reg in self.resources.gpus:
                self.ledger.unregister_gpu(reg.uuid)
            self._changed()

    def _save(self) -> _Saved:
        return _Saved(
            self.ledger.snapshot(), dict(self._holdings), dict(self._holder), dict(self._shared)
        )

    def _restore(self, saved: _Saved) -> None:
        self.ledger.restore(saved.ledger)
        self._holdings = saved.holdings
        self._holder = saved.holder
        self._shared = saved.shared

    # --- attribution -------------------------------------------------------------------

    def mark(self) -> int:
        """A point in the allocation sequence; pass it to :meth:`reconcile` for a PodResources
        List started now (allocations after the mark are not judged by that list)."""
        with self._lock:
            return self._seq

    def reconcile(self, listed: Iterable[ContainerDevices], mark: int) -> ReconcileReport:
        """Attribute and release by the kubelet's PodResources List, started at ``mark``.

        Devices the list gives a container move to that container; pending allocations made
        before ``mark`` that the list does not name are released (their container is gone, or
        was an init container), and so are containers no longer listed.
        """
        by_id = self.resources.by_id
        unknown: set[str] = set()
        desired: dict[ContainerOwner, set[str]] = {}
        served = {r.name for r in self.resources.resources}
        for c in listed:
            if c.resource not in served:
                continue
            owner = ContainerOwner(c.namespace, c.pod, c.container)
            for i in c.ids:
                if i in by_id:
                    desired.setdefault(owner, set()).add(i)
                else:
                    unknown.add(i)
        released = attributed = 0
        conflicts: list[str] = []
        with self._lock:
            kept_ids: set[str] = set()
            for h in list(self._holdings.values()):
                if h.pending:
                    if h.seq > mark:
                        kept_ids |= h.ids
                        continue
                    self._release(h)
                    if not any(h.ids & ids for ids in desired.values()):
                        released += 1
                elif desired.get(h.owner) != set(h.ids):
                    self._release(h)
                    if h.owner not in desired:
                        released += 1
            for owner, ids in sorted(desired.items(), key=lambda kv: str(kv[0])):
                ids = ids - kept_ids
                if not ids:
                    continue
                if owner in self._holdings:
                    continue
                devices = [by_id[i] for i in sorted(ids)]
                saved = self._save()
                try:
                    self._assign(owner, devices, pending=False)
                    attributed += 1
                except GpuletError as e:
                    self._restore(saved)
                    conflicts.append(f"{owner}: {e}")
                    log.warning("cannot attribute %s to %s: %s", sorted(ids), owner, e)
            self._collect_shared()
        return ReconcileReport(attributed, released, tuple(sorted(unknown)), tuple(conflicts))

    def assignments(self) -> list[Assignment]:
        """Every device-plugin owner and the IDs it holds."""
        with self._lock:
            return [
                Assignment(h.owner, tuple(sorted(h.ids)), h.pending)
                for h in sorted(self._holdings.values(), key=lambda h: h.seq)
            ]

    def holder(self, device_id: str) -> ContainerOwner | None:
        """The device-plugin owner of an advertised ID (``None``: free)."""
        with self._lock:
            h = self._holder.get(device_id)
            return h.owner if h is not None else None


def _refusal(e: GpuletError) -> AllocationError:
    """A ledger refusal as a gRPC-ready error."""
    if isinstance(e, ConflictError):
        return AllocationError("failed-precondition", str(e))
    return AllocationError("invalid-argument", str(e))
