"""pynvml (NVIDIA's nvidia-ml-py) reading the fake agrees with gpulet.discover().

pynvml is an independent NVML client: it calls the versioned symbols NVIDIA's own bindings
use, and reaches MIG state by other calls than gpulet does (GPU instances by id rather than by
profile). One test per shipped spec. pynvml runs in a child process (this file run as a
script) that loads the fake first, so that its ``dlopen("libnvidia-ml.so.1")`` gets the fake
even on a machine whose real driver this test process has already loaded.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import pynvml
import pytest

import gpulet
from gpulet import sim

SPECS = sim.shipped_specs()

pytestmark = pytest.mark.usefixtures("fake_library")

LEVELS = {
    pynvml.NVML_TOPOLOGY_INTERNAL: "board",
    pynvml.NVML_TOPOLOGY_SINGLE: "single-switch",
    pynvml.NVML_TOPOLOGY_MULTIPLE: "multi-switch",
    pynvml.NVML_TOPOLOGY_HOSTBRIDGE: "host-bridge",
    pynvml.NVML_TOPOLOGY_NODE: "same-cpu",
    pynvml.NVML_TOPOLOGY_SYSTEM: "cross-cpu",
}


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def code_of(e: pynvml.NVMLError) -> int:
    value: int = e.value
    return value


@dataclass
class Seen:
    """What pynvml reports about one GPU."""

    uuid: str
    name: str
    memory_bytes: int
    pci_bus_id: str
    minor: int
    compute_capability: tuple[int, int]
    mig_enabled: bool | None
    numa_node: int | None
    mig_devices: set[tuple[str, int, int, int, int, int, int]] = field(default_factory=set)
    profiles: dict[str, tuple[int, int, int, int, tuple[int, ...], int]] = field(
        default_factory=dict
    )
    links: dict[int, int] = field(default_factory=dict)
    switch_links: int = 0


def mig_profiles(h: Any) -> dict[str, tuple[int, int, int, int, tuple[int, ...], int]]:
    """name -> (id, compute slices, memory MiB, max instances, placement starts, size)."""
    out: dict[str, tuple[int, int, int, int, tuple[int, ...], int]] = {}
    for e in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, e)
        except pynvml.NVMLError as err:
            if code_of(err) == pynvml.NVML_ERROR_INVALID_ARGUMENT:
                break
            if code_of(err) == pynvml.NVML_ERROR_NOT_SUPPORTED:
                continue
            raise
        count = ctypes.c_uint(0)
        pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(h, info.id, None, ctypes.byref(count))
        placements = (pynvml.c_nvmlGpuInstancePlacement_t * count.value)()
        pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(
            h, info.id, placements, ctypes.byref(count)
        )
        starts = tuple(sorted(p.start for p in placements[: count.value]))
        sizes = {p.size for p in placements[: count.value]}
        assert len(sizes) <= 1
        name = text(info.name).removeprefix("MIG ")
        out[name] = (
            info.id,
            info.sliceCount,
            info.memorySizeMB,
            info.instanceCount,
            starts,
            sizes.pop() if sizes else 0,
        )
    return out


def observe() -> tuple[list[Seen], dict[tuple[int, int], str]]:
    n = pynvml.nvmlDeviceGetCount()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
    seen: list[Seen] = []
    for h in handles:
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(h)
            mig: bool | None = current == pynvml.NVML_DEVICE_MIG_ENABLE
        except pynvml.NVMLError_NotSupported:
            mig = None
        try:
            numa: int | None = pynvml.nvmlDeviceGetNumaNodeId(h)
        except pynvml.NVMLError_NotSupported:
            numa = None
        s = Seen(
            uuid=text(pynvml.nvmlDeviceGetUUID(h)),
            name=text(pynvml.nvmlDeviceGetName(h)),
            memory_bytes=pynvml.nvmlDeviceGetMemoryInfo(h).total,
            pci_bus_id=text(pynvml.nvmlDeviceGetPciInfo(h).busId),
            minor=pynvml.nvmlDeviceGetMinorNumber(h),
            compute_capability=tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h)),
            mig_enabled=mig,
            numa_node=numa,
        )
        if mig is not None:
            s.profiles = mig_profiles(h)
        if mig:
            for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                try:
                    m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
                except pynvml.NVMLError_NotFound:
                    continue
                gi_id = pynvml.nvmlDeviceGetGpuInstanceId(m)
                ci_id = pynvml.nvmlDeviceGetComputeInstanceId(m)
                gi = pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceGetGpuInstanceById(h, gi_id))
                s.mig_devices.add(
                    (
                        text(pynvml.nvmlDeviceGetUUID(m)),
                        gi_id,
                        ci_id,
                        gi.profileId,
                        gi.placement.start,
                        gi.placement.size,
                        pynvml.nvmlDeviceGetMemoryInfo(m).total,
                    )
                )
        seen.append(s)

    bus = {s.pci_bus_id.upper(): i for i, s in enumerate(seen)}
    for i, h in enumerate(handles):
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            try:
                active = pynvml.nvmlDeviceGetNvLinkState(h, link)
            except pynvml.NVMLError as err:
                if code_of(err) in (
                    pynvml.NVML_ERROR_INVALID_ARGUMENT,
                    pynvml.NVML_ERROR_NOT_SUPPORTED,
                ):
                    break
                raise
            if not active:
                continue
            kind = pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(h, link)
            if kind == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH:
                seen[i].switch_links += 1
                continue
            peer = bus[text(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId).upper()]
            seen[i].links[peer] = seen[i].links.get(peer, 0) + 1

    levels = {
        (a, b): LEVELS[pynvml.nvmlDeviceGetTopologyCommonAncestor(handles[a], handles[b])]
        for a in range(n)
        for b in range(a + 1, n)
    }
    return seen, levels


def to_json(seen: list[Seen], levels: dict[tuple[int, int], str]) -> str:
    gpus = []
    for s in seen:
        d = asdict(s)
        d["mig_devices"] = sorted(s.mig_devices)
        d["links"] = sorted(s.links.items())
        gpus.append(d)
    return json.dumps({"gpus": gpus, "levels": [[a, b, lvl] for (a, b), lvl in levels.items()]})


def from_json(text: str) -> tuple[list[Seen], dict[tuple[int, int], str]]:
    data = json.loads(text)
    seen = []
    for d in data["gpus"]:
        d["compute_capability"] = tuple(d["compute_capability"])
        d["mig_devices"] = {tuple(m) for m in d["mig_devices"]}
        d["profiles"] = {name: (*p[:4], tuple(p[4]), p[5]) for name, p in d["profiles"].items()}
        d["links"] = {peer: count for peer, count in d["links"]}
        seen.append(Seen(**d))
    levels = {(a, b): lvl for a, b, lvl in data["levels"]}
    return seen, levels


def observe_in_child(env: dict[str, str]) -> tuple[list[Seen], dict[tuple[int, int], str]]:
    """Run :func:`observe` with pynvml in a child process simulating the same node."""
    r = subprocess.run(
        [sys.executable, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return from_json(r.stdout)


def child_main() -> None:
    # Load the fake by its path before pynvml asks for "libnvidia-ml.so.1" by soname.
    ctypes.CDLL(os.environ[sim.ENV_NVML_LIB], mode=ctypes.RTLD_GLOBAL)
    pynvml.nvmlInit()
    try:
        seen, levels = observe()
    finally:
        pynvml.nvmlShutdown()
    sys.stdout.write(to_json(seen, levels))


@pytest.mark.parametrize("spec_name", SPECS)
def test_pynvml_and_gpulet_agree(spec_name: str) -> None:
    with gpulet.simulated(spec_name) as simulation:
        node = gpulet.discover()
        ours = {g.index: gpulet.mig_profiles(g.index) for g in node.gpus if g.mig_capable}
        seen, levels = observe_in_child(simulation.env)

    assert len(seen) == len(node.gpus) > 0
    for g, s in zip(node.gpus, seen, strict=True):
        assert g.uuid == s.uuid
        assert g.name == s.name
        assert g.memory_bytes == s.memory_bytes
        assert g.pci_bus_id == s.pci_bus_id
        assert g.minor == s.minor
        assert g.compute_capability == s.compute_capability
        assert g.mig_capable == (s.mig_enabled is not None)
        assert g.mig_enabled == bool(s.mig_enabled)
        if s.numa_node is not None:
            assert g.numa_node == s.numa_node
        assert {
            (
                m.uuid,
                m.gpu_instance_id,
                m.compute_instance_id,
                m.profile_id,
                m.placement_start,
                m.placement_size,
                m.memory_bytes,
            )
            for m in g.mig_devices
        } == s.mig_devices
        if g.mig_capable:
            assert {
                p.name: (
                    p.profile_id,
                    p.compute_slices,
                    p.memory_mib,
                    p.max_instances,
                    tuple(p.placements),
                    p.memory_slices,
                )
                for p in ours[g.index]
            } == s.profiles
            assert s.profiles, f"GPU {g.index}: a MIG-capable GPU reports profiles"
        assert g.nvswitch_links == s.switch_links
        assert g.nvlinks == s.switch_links + sum(s.links.values())

    topo = node.topology
    assert topo.pcie_pairs() == levels
    direct = {(a, b): count for a, s in enumerate(seen) for b, count in s.links.items() if a < b}
    assert topo.nvlink_pairs() == direct
    for a, s in enumerate(seen):
        for b, count in s.links.items():
            assert seen[b].links.get(a) == count, "links are seen from both ends"
    assert topo.nvswitch == any(s.switch_links for s in seen)


if __name__ == "__main__":
    child_main()
