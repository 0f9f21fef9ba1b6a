"""Discovery and read-only MIG queries against a real driver, compared with gpulet's tables.

Run on any machine with an NVIDIA GPU: ``.venv/bin/pytest tests/hardware -v -s``. The printed
lines are the run's record of what the driver reported: keep them with the change the run checks
(a pull request, or a new row of docs/mig-catalog.md).
"""

from __future__ import annotations

import re

import gpulet
from gpulet import mig

UUID = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
BUS_ID = re.compile(r"^[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-7]$")


def test_discovery_is_complete_and_consistent(real_node: gpulet.Node) -> None:
    node = real_node
    print(
        f"\ndriver {node.driver_version}, CUDA {node.cuda_driver_version}, NVML {node.nvml_version}"
    )
    assert node.gpus, "a driver that answers reports at least one GPU"
    assert [g.index for g in node.gpus] == list(range(len(node.gpus)))
    assert len({g.uuid for g in node.gpus}) == len(node.gpus)
    assert len({g.minor for g in node.gpus}) == len(node.gpus)
    for g in node.gpus:
        print(
            f"GPU {g.index}: {g.name} {g.uuid} bus {g.pci_bus_id} minor {g.minor} "
            f"mem {g.memory_bytes >> 20} MiB cc {g.compute_capability} numa {g.numa_node} "
            f"mig {g.mig_enabled} ({len(g.mig_devices)} devices)"
        )
        assert UUID.match(g.uuid), g.uuid
        assert BUS_ID.match(g.pci_bus_id), g.pci_bus_id
        assert g.memory_bytes > 0
        assert g.compute_capability[0] >= 3
    topo = node.topology
    assert topo.gpu_count == len(node.gpus)
    for a in range(topo.gpu_count):
        for b in range(topo.gpu_count):
            if a != b:
                assert topo.pcie(a, b) == topo.pcie(b, a)
                assert topo.nvlinks(a, b) == topo.nvlinks(b, a)
    print(f"nvswitch {topo.nvswitch}, nvlink pairs {topo.nvlink_pairs()}")


def test_mig_tables_match_the_driver(real_node: gpulet.Node) -> None:
    """Every MIG profile and placement the driver reports equals gpulet's table for the model.

    Read-only: nvmlDeviceGetGpuInstanceProfileInfo(V) and ..PossiblePlacements_v2 only.
    """
    compared = 0
    for g in real_node.gpus:
        reported = gpulet.mig_profiles(g.index, "libnvidia-ml.so.1")
        if not reported:
            print(f"GPU {g.index} ({g.name}): no MIG profiles reported")
            continue
        table = {p.name: p for p in mig.profiles(g.name)}
        for r in reported:
            print(
                f"GPU {g.index} {r.name}: id {r.profile_id} slices {r.compute_slices}c/"
                f"{r.memory_slices}m {r.memory_mib} MiB x{r.max_instances} at {r.placements}"
            )
            assert r.name in table, f"{g.name}: driver reports {r.name}, table lacks it"
            t = table[r.name]
            assert (r.profile_id, r.compute_slices, r.memory_slices, r.max_instances) == (
                t.profile_id,
                t.compute_slices,
                t.memory_slices,
                t.max_instances,
            ), r.name
            assert list(r.placements) == list(t.placements), r.name
        compared += 1
    if compared == 0:
        print("no MIG-capable GPU on this machine; nothing to compare")
