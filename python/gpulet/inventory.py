"""What the node has and who may serve it: the layer every protocol server reads.

:class:`NodeInventory` is built once per discovered node. It owns three things that the device
plugin, the DRA driver and telemetry must agree on, so that none of them keeps its own copy:

- the physical devices: every GPU and MIG device (:class:`PhysicalDevice`), found by any of
  the names NVIDIA's tools use (GPU or MIG UUID, ``"3"``, ``"3:1"``);
- the split between the two paths: which GPUs the device plugin serves and which DRA serves
  (``gpulet.dra.devices``; a GPU is never served by both, and the ledger refuses a device held
  by the other path);
- the health of every physical device: a GPU's health covers its MIG devices and their
  replicas. Every change wakes the :meth:`NodeInventory.watch` waiters (ListAndWatch streams,
  later DRA's ResourceSlice publisher and health stream).

Who holds what is not here: that is the ledger's (``gpulet.alloc.Ledger``, the Rust core). What
the device plugin advertises of this node (resource names, replicas) is
``gpulet.deviceplugin.resources``.

Every method is thread-safe; health may be set from any thread (the health monitor's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from gpulet import alloc
from gpulet._core import Gpu, MigDevice, Node, Topology
from gpulet.config import Config, DeviceSelector

__all__ = [
    "MigInfo",
    "NodeInventory",
    "PhysicalDevice",
    "Watch",
    "device_plugin_gpus",
    "dra_gpus",
    "physical_gpu",
    "physical_mig",
]

log = logging.getLogger("gpulet.inventory")


@dataclass(frozen=True)
class MigInfo:
    """What the agent needs of one MIG device."""

    index: int
    gpu_instance_id: int
    compute_instance_id: int
    profile_id: int | None
    profile: str | None
    placement_start: int | None
    placement_size: int | None
    memory_bytes: int
    #: Compute slices of the compute instance (C) and of its GPU instance (G); ``None`` when
    #: NVML refused the instance queries for lack of privileges.
    compute_slices: int | None = None
    gpu_instance_slices: int | None = None


@dataclass(frozen=True)
class PhysicalDevice:
    """A whole GPU or one MIG device: the thing a container is given."""

    #: GPU UUID or MIG UUID.
    uuid: str
    #: NVIDIA's index form: ``"3"`` for a GPU, ``"3:1"`` for MIG device 1 of GPU 3.
    index: str
    gpu_index: int
    gpu_uuid: str
    #: The GPU's device node minor (``/dev/nvidia<minor>``).
    minor: int
    numa_node: int | None
    product: str
    mig: MigInfo | None = None

    @property
    def is_mig(self) -> bool:
        return self.mig is not None

    @property
    def mig_slice(self) -> alloc.MigSlice | None:
        """The ledger's name of a MIG device: (parent UUID, profile id, placement start).
        ``None`` for a compute instance smaller than its GPU instance: the ledger names whole
        GPU instances, and the GPU instance's other compute instances would share the name."""
        m = self.mig
        if m is None or m.profile_id is None or m.placement_start is None:
            return None
        c, g = m.compute_slices, m.gpu_instance_slices
        if c is not None and g is not None and c != g:
            return None
        return (self.gpu_uuid, m.profile_id, m.placement_start)


def physical_gpu(g: Gpu) -> PhysicalDevice:
    """The physical device of a whole GPU."""
    return PhysicalDevice(
        uuid=g.uuid,
        index=str(g.index),
        gpu_index=g.index,
        gpu_uuid=g.uuid,
        minor=g.minor,
        numa_node=g.numa_node,
        product=g.name,
    )


def physical_mig(g: Gpu, m: MigDevice) -> PhysicalDevice:
    """The physical device of one MIG device of ``g``."""
    return PhysicalDevice(
        uuid=m.uuid,
        index=f"{g.index}:{m.index}",
        gpu_index=g.index,
        gpu_uuid=g.uuid,
        minor=g.minor,
        numa_node=g.numa_node,
        product=g.name,
        mig=MigInfo(
            index=m.index,
            gpu_instance_id=m.gpu_instance_id,
            compute_instance_id=m.compute_instance_id,
            profile_id=m.profile_id,
            profile=m.profile_name,
            placement_start=m.placement_start,
            placement_size=m.placement_size,
            memory_bytes=m.memory_bytes,
            compute_slices=m.compute_slices,
            gpu_instance_slices=m.gpu_instance_slices,
        ),
    )


def _selected(selector: DeviceSelector, index: int, uuid: str) -> bool:
    if selector.all:
        return True
    if selector.kind == "count":
        return index < selector.count
    return str(index) in selector.refs or uuid in selector.refs


def dra_gpus(node: Node, config: Config) -> list[Gpu]:
    """The GPUs the DRA driver serves (none unless ``gpulet.dra.enabled``)."""
    dra = config.gpulet.dra
    if not dra.enabled:
        return []
    return [g for g in node.gpus if _selected(dra.devices, g.index, g.uuid)]


def device_plugin_gpus(node: Node, config: Config) -> list[Gpu]:
    """The GPUs the device plugin serves: all, less those DRA serves when both run."""
    if not config.gpulet.device_plugin.enabled:
        return []
    taken = {g.uuid for g in dra_gpus(node, config)}
    return [g for g in node.gpus if g.uuid not in taken]


class Watch:
    """Wakes a coroutine when the inventory changes (coalescing bursts of changes)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def notify(self) -> None:
        # A closed loop has nobody waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()
        self._event.clear()


class NodeInventory:
    """The node's physical devices, the device plugin / DRA split and per-device health.

    Args:
        node: the discovered node (its topology is kept and never rebuilt).
        config: the loaded config (for the split).
    """

    def __init__(self, node: Node, config: Config) -> None:
        self.node = node
        self.topology: Topology = node.topology
        self.device_plugin = tuple(g.index for g in device_plugin_gpus(node, config))
        self.dra = tuple(g.index for g in dra_gpus(node, config))
        self._lock = threading.RLock()
        self._watches: set[Watch] = set()
        self._unhealthy: dict[str, str] = {}
        #: Bumped on every change (a cheap "anything new?" for pollers).
        self.generation = 0
        self.devices: dict[str, PhysicalDevice] = {}
        # Every physical device (GPU or MIG UUID) by each of its names.
        self._names: dict[str, str] = {}
        for g in node.gpus:
            for p in (physical_gpu(g), *(physical_mig(g, m) for m in g.mig_devices)):
                self.devices[p.uuid] = p
                self._names[p.uuid] = p.uuid
                self._names[p.index] = p.uuid

    def resplit(self, config: Config) -> None:
        """Take the device plugin / DRA split of a new config (a SIGHUP reload)."""
        with self._lock:
            self.device_plugin = tuple(g.index for g in device_plugin_gpus(self.node, config))
            self.dra = tuple(g.index for g in dra_gpus(self.node, config))

    def physical(self, name: str) -> PhysicalDevice | None:
        """A GPU or MIG device by UUID or index form (``"3"``, ``"3:1"``); a replica ID
        (``<UUID>::<n>``) names its physical device."""
        uuid = self._names.get(name.split(alloc.REPLICA_SEPARATOR, 1)[0])
        return None if uuid is None else self.devices[uuid]

    # --- change notification -----------------------------------------------------------

    @contextlib.contextmanager
    def watch(self) -> Iterator[Watch]:
        """A :class:`Watch` woken on every change of health (use in a loop)."""
        w = Watch(asyncio.get_running_loop())
        with self._lock:
            self._watches.add(w)
        try:
            yield w
        finally:
            with self._lock:
                self._watches.discard(w)

    def changed(self) -> None:
        """Wake every watcher (also for changes the inventory does not see itself, such as a
        new device list after a reload)."""
        with self._lock:
            self.generation += 1
            watches = list(self._watches)
        for w in watches:
            w.notify()

    # --- health ------------------------------------------------------------------------

    def set_health(self, device_id: str, healthy: bool, reason: str = "") -> bool:
        """Mark a device healthy or unhealthy.

        ``device_id`` is a GPU or MIG UUID, an NVML index (``"3"``, ``"3:1"``) or an advertised
        ID (``<UUID>::<n>``). A GPU's health covers its MIG devices and replicas. Returns whether
        anything changed (an unknown device changes nothing and is logged).
        """
        p = self.physical(device_id)
        if p is None:
            log.warning("health report for unknown device %s ignored", device_id)
            return False
        uuid = p.uuid
        with self._lock:
            before = self._unhealthy.get(uuid)
            if healthy:
                if before is None:
                    return False
                del self._unhealthy[uuid]
                log.info("device %s is healthy again%s", uuid, f": {reason}" if reason else "")
            else:
                why = reason or "unhealthy"
                if before == why:
                    return False
                self._unhealthy[uuid] = why
                log.warning("device %s is unhealthy: %s", uuid, why)
        self.changed()
        return True

    def health_of(self, device: PhysicalDevice) -> tuple[bool, str]:
        """(healthy, reason) of a physical device: its own and its GPU's health."""
        with self._lock:
            for uuid in (device.uuid, device.gpu_uuid):
                reason = self._unhealthy.get(uuid)
                if reason is not None:
                    return False, reason
        return True, ""

    def unhealthy(self) -> dict[str, str]:
        """Unhealthy physical devices (GPU or MIG UUID) and why."""
        with self._lock:
            return dict(self._unhealthy)
