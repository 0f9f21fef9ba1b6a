"""MIG devices whose compute instance is smaller than its GPU instance (C < G).

A 2g GPU instance split into two 1-slice compute instances gives two MIG devices of NVIDIA's
profile ``1c.2g.10gb``. Discovery reports each one's compute-instance and GPU-instance slice
counts (pynvml, reading the fake independently, agrees), and ``migStrategy: mixed`` leaves them
out, as NVIDIA names only C == G devices ``nvidia.com/mig-<profile>``. The split is made by
pynvml in a child process (the fake's specs only make full-size compute instances); the fake's
state file carries it to this process's discovery.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

import gpulet
from gpulet import config
from gpulet._core import Node
from gpulet.deviceplugin import ResourceError, build_resources
from gpulet.inventory import MigInfo, PhysicalDevice

pytestmark = pytest.mark.usefixtures("fake_library")

SPEC = """\
version: v1
name: split-ci
numa_nodes: [{id: 0, cpus: "0-7"}]
gpus:
  - model: A100-SXM4-40GB
    pci_bus_id: "00000000:01:00.0"
    numa_node: 0
    mig_enabled: true
    mig_devices: [{profile: 2g.10gb, start: 0}, {profile: 3g.20gb, start: 4}]
"""

#: Run in a child with the fake loaded first: split the 2g GPU instance into two 1-slice compute
#: instances, then print {MIG UUID: [C, G]} as pynvml reads them.
CHILD = """
import ctypes, json, os, sys
ctypes.CDLL(os.environ["GPULET_NVML_LIB"], mode=ctypes.RTLD_GLOBAL)
import pynvml as n

def gi_slices(h, profile_id):
    for e in range(n.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            p = n.nvmlDeviceGetGpuInstanceProfileInfo(h, e)
        except n.NVMLError:
            continue
        if p.id == profile_id:
            return p.sliceCount
    raise AssertionError(profile_id)

def ci_slices(gi, profile_id):
    for e in range(n.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
        try:
            p = n.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, e, n.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
        except n.NVMLError:
            continue
        if p.id == profile_id:
            return p.sliceCount
    raise AssertionError(profile_id)

def migs(h):
    out = []
    for i in range(n.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            m = n.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
        except n.NVMLError_NotFound:
            continue
        gi = n.nvmlDeviceGetGpuInstanceById(h, n.nvmlDeviceGetGpuInstanceId(m))
        ci = n.nvmlGpuInstanceGetComputeInstanceById(gi, n.nvmlDeviceGetComputeInstanceId(m))
        out.append((m, gi, ci))
    return out

n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(0)
split = sys.argv[1] == "split"
for m, gi, ci in migs(h):
    if split and gi_slices(h, n.nvmlGpuInstanceGetInfo(gi).profileId) == 2:
        n.nvmlComputeInstanceDestroy(ci)
        one = n.nvmlGpuInstanceGetComputeInstanceProfileInfo(
            gi, n.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE,
            n.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
        n.nvmlGpuInstanceCreateComputeInstance(gi, one.id)
        n.nvmlGpuInstanceCreateComputeInstance(gi, one.id)
seen = {}
for m, gi, ci in migs(h):
    c = ci_slices(gi, n.nvmlComputeInstanceGetInfo(ci).profileId)
    g = gi_slices(h, n.nvmlGpuInstanceGetInfo(gi).profileId)
    seen[n.nvmlDeviceGetUUID(m)] = [c, g]
n.nvmlShutdown()
print(json.dumps(seen))
"""


def pynvml_view(env: dict[str, str], action: str) -> dict[str, list[int]]:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, action],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    seen: dict[str, list[int]] = json.loads(r.stdout)
    return seen


@pytest.fixture(scope="module")
def split_node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Node, Node, dict[str, Any]]:
    """(node before the split, node after it, pynvml's {UUID: [C, G]} after it)."""
    path = tmp_path_factory.mktemp("spec") / "split-ci.yaml"
    path.write_text(SPEC, encoding="utf-8")
    with gpulet.simulated(path) as s:
        before = gpulet.discover()
        assert pynvml_view(s.env, "read") == {
            m.uuid: [m.compute_slices, m.gpu_instance_slices] for m in before.gpus[0].mig_devices
        }
        seen = pynvml_view(s.env, "split")
        after = gpulet.discover()
    return before, after, seen


def inventory(node: Node, **doc: Any) -> Any:
    return build_resources(node, config.parse({"version": "v1", **doc}))


def test_full_size_compute_instances_fill_their_gpu_instance(
    split_node: tuple[Node, Node, dict[str, Any]],
) -> None:
    before, _, _ = split_node
    got = sorted(
        (m.profile_name, m.compute_slices, m.gpu_instance_slices)
        for m in before.gpus[0].mig_devices
    )
    assert got == [("2g.10gb", 2, 2), ("3g.20gb", 3, 3)]


def test_discovery_reports_a_split_gpu_instance_as_pynvml_does(
    split_node: tuple[Node, Node, dict[str, Any]],
) -> None:
    _, after, seen = split_node
    migs = after.gpus[0].mig_devices
    got = sorted((m.profile_name, m.compute_slices, m.gpu_instance_slices) for m in migs)
    assert got == [("2g.10gb", 1, 2), ("2g.10gb", 1, 2), ("3g.20gb", 3, 3)]
    assert {m.uuid: [m.compute_slices, m.gpu_instance_slices] for m in migs} == seen
    split = [m for m in migs if m.profile_name == "2g.10gb"]
    assert len({m.gpu_instance_id for m in split}) == 1
    assert len({m.compute_instance_id for m in split}) == 2


def test_mixed_leaves_out_split_mig_devices_and_says_why(
    split_node: tuple[Node, Node, dict[str, Any]],
) -> None:
    before, after, _ = split_node
    assert inventory(before, flags={"migStrategy": "mixed"}).counts() == {
        "nvidia.com/mig-2g.10gb": 1,
        "nvidia.com/mig-3g.20gb": 1,
    }
    inv = inventory(after, flags={"migStrategy": "mixed"})
    assert inv.counts() == {"nvidia.com/mig-3g.20gb": 1}
    full = next(m for m in after.gpus[0].mig_devices if m.profile_name == "3g.20gb")
    assert [d.id for d in inv.resource("nvidia.com/mig-3g.20gb").devices] == [full.uuid]
    split = [m.uuid for m in after.gpus[0].mig_devices if m.profile_name == "2g.10gb"]
    assert len(inv.notes) == 2
    for uuid, note in zip(split, inv.notes, strict=True):
        assert uuid in note
        assert "(1c.2g.10gb)" in note
        assert "C != G" in note


def test_single_counts_the_compute_instance_size_as_part_of_the_profile(
    split_node: tuple[Node, Node, dict[str, Any]],
) -> None:
    _, after, _ = split_node
    with pytest.raises(ResourceError, match=r"1c\.2g\.10gb, 3g\.20gb"):
        inventory(after, flags={"migStrategy": "single"})


def test_the_ledger_names_no_compute_instance_smaller_than_its_gpu_instance() -> None:
    def device(c: int | None, g: int | None) -> PhysicalDevice:
        mig = MigInfo(0, 1, 0, 14, "2g.10gb", 0, 2, 10 << 30, c, g)
        return PhysicalDevice("MIG-x", "0:0", 0, "GPU-p", 0, None, "A100", mig)

    assert device(2, 2).mig_slice == ("GPU-p", 14, 0)
    assert device(None, None).mig_slice == ("GPU-p", 14, 0)
    assert device(1, 2).mig_slice is None
