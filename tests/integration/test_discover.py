"""gpulet.discover() and gpulet.mig_profiles() against the fake NVML, for every shipped spec."""

from __future__ import annotations

import pathlib
import threading
from typing import Any

import pytest
import yaml

import gpulet
from gpulet import sim
from gpulet.cli import mig_capability
from gpulet.errors import InvalidArgumentError, NvmlError, NvmlLibraryNotFound

SPECS = sim.shipped_specs()

pytestmark = pytest.mark.usefixtures("fake_library")


def load_spec(name: str) -> dict[str, Any]:
    with sim.spec_path(name).open(encoding="utf-8") as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


def default_level(spec: dict[str, Any], a: int, b: int) -> str:
    gpus = spec["gpus"]
    return "same-cpu" if gpus[a]["numa_node"] == gpus[b]["numa_node"] else "cross-cpu"


def test_the_shipped_specs_are_all_here() -> None:
    assert {"dgx-h100", "dgx-a100", "dgx1-volta", "hgx-h200", "mixed-pcie", "single-t4"} <= set(
        SPECS
    )


@pytest.mark.parametrize("spec_name", SPECS)
def test_discover_reports_what_the_spec_says(spec_name: str) -> None:
    spec = load_spec(spec_name)
    with gpulet.simulated(spec_name):
        node = gpulet.discover()

    assert node.driver_version == spec["driver_version"]
    if "cuda_driver_version" in spec:
        assert node.cuda_driver_version == spec["cuda_driver_version"]
    if "nvml_version" in spec:
        assert node.nvml_version == spec["nvml_version"]

    assert len(node.gpus) == len(spec["gpus"])
    assert [g.index for g in node.gpus] == list(range(len(spec["gpus"])))
    assert len({g.uuid for g in node.gpus}) == len(node.gpus)
    for g, s in zip(node.gpus, spec["gpus"], strict=True):
        assert g.pci_bus_id.upper() == s["pci_bus_id"].upper()
        assert g.numa_node == s["numa_node"]
        assert g.minor == s.get("minor", g.index)
        if "uuid" in s:
            assert g.uuid == s["uuid"]
        assert g.uuid.startswith("GPU-")
        assert g.name
        assert g.memory_bytes > 0
        assert g.compute_capability[0] >= 7
        assert g.architecture != "unknown"
        assert g.pci_device_id & 0xFFFF == 0x10DE
        assert g.cpu_affinity, "the fake reports each GPU's NUMA node CPUs"
        assert g.mig_enabled == s.get("mig_enabled", False)
        if g.mig_enabled:
            assert g.mig_capable
        placed = sorted((m["profile"], m["start"]) for m in s.get("mig_devices", []))
        found = sorted((m.profile_name, m.placement_start) for m in g.mig_devices)
        assert found == placed

    topo = node.topology
    assert topo.gpu_count == len(spec["gpus"])
    assert topo.numa == [s["numa_node"] for s in spec["gpus"]]
    switches = spec.get("nvswitches", 0)
    assert topo.nvswitch == (switches > 0)
    expected_links = {tuple(sorted(e["gpus"])): e["links"] for e in spec.get("nvlinks", [])}
    assert topo.nvlink_pairs() == expected_links
    levels = {tuple(sorted(e["gpus"])): e["level"] for e in spec.get("pcie", [])}
    n = topo.gpu_count
    for a in range(n):
        for b in range(a + 1, n):
            assert topo.pcie(a, b) == levels.get((a, b), default_level(spec, a, b)), (a, b)
    for g in node.gpus:
        if switches:
            assert g.nvswitch_links == g.nvlinks > 0
        else:
            assert g.nvswitch_links == 0
            assert g.nvlinks == sum(c for pair, c in expected_links.items() if g.index in pair)


def test_dgx_h100_is_eight_gpus_on_nvswitches_over_two_numa_nodes() -> None:
    with gpulet.simulated("dgx-h100"):
        node = gpulet.discover()
        capability = mig_capability(node)
    topo = node.topology
    assert topo.gpu_count == 8
    assert topo.nvswitch is True
    assert topo.numa == [0, 0, 0, 0, 1, 1, 1, 1]
    assert topo.nvlink_pairs() == {}
    assert [g.nvswitch_links for g in node.gpus] == [18] * 8
    assert topo.pcie(0, 3) == "same-cpu"
    assert topo.pcie(3, 4) == "cross-cpu"
    assert {g.name for g in node.gpus} == {"NVIDIA H100 80GB HBM3"}
    assert {g.compute_capability for g in node.gpus} == {(9, 0)}
    assert all(g.mig_capable and not g.mig_enabled for g in node.gpus)
    assert list(capability) == ["NVIDIA H100 80GB HBM3"]
    assert len(capability["NVIDIA H100 80GB HBM3"]) == 7


def test_dgx1_volta_is_a_hybrid_cube_mesh() -> None:
    with gpulet.simulated("dgx1-volta"):
        node = gpulet.discover()
    topo = node.topology
    assert topo.nvswitch is False
    assert topo.nvlink_pairs() == {
        (0, 1): 1, (0, 2): 1, (0, 3): 2, (0, 4): 2,
        (1, 2): 2, (1, 3): 1, (1, 5): 2,
        (2, 3): 2, (2, 6): 1,
        (3, 7): 1,
        (4, 5): 1, (4, 6): 1, (4, 7): 2,
        (5, 6): 2, (5, 7): 1,
        (6, 7): 2,
    }  # fmt: skip
    assert [g.nvlinks for g in node.gpus] == [6] * 8
    assert topo.nvlinks(3, 0) == 2
    assert topo.nvlinks(0, 5) == 0
    assert topo.pcie(0, 1) == "single-switch"
    assert topo.pcie(0, 2) == "host-bridge"
    assert topo.pcie(0, 4) == "cross-cpu"
    assert all(not g.mig_capable for g in node.gpus)


def test_mig_devices_are_discovered() -> None:
    with gpulet.simulated("mixed-pcie"):
        node = gpulet.discover()
        profiles = {p.name: p for p in gpulet.mig_profiles(5)}
    l4, a30, a30_mig = node.gpus[0], node.gpus[4], node.gpus[5]
    assert (l4.mig_capable, l4.mig_enabled, l4.mig_devices) == (False, False, [])
    assert (a30.mig_capable, a30.mig_enabled, a30.mig_devices) == (True, False, [])
    assert a30_mig.mig_enabled
    assert a30_mig.mig_pending
    devices = sorted(a30_mig.mig_devices, key=lambda m: m.placement_start or 0)
    assert [(m.profile_name, m.placement_start, m.placement_size) for m in devices] == [
        ("2g.12gb", 0, 2),
        ("1g.6gb", 3, 1),
    ]
    for m in devices:
        assert m.uuid.startswith("MIG-")
        assert m.profile_name is not None
        p = profiles[m.profile_name]
        assert m.profile_id == p.profile_id
        assert m.memory_bytes == p.memory_mib * 2**20
    assert len({m.gpu_instance_id for m in devices}) == 2
    assert len({m.uuid for m in devices}) == 2
    assert sorted(m.index for m in devices) == [0, 1]


def test_mig_profiles_are_nvmls_names_ids_and_placements() -> None:
    with gpulet.simulated("dgx-h100"):
        profiles = {p.name: p for p in gpulet.mig_profiles(0)}
    assert set(profiles) == {
        "1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"
    }  # fmt: skip
    p = profiles["3g.40gb"]
    assert (p.profile_id, p.compute_slices, p.memory_slices, p.placements) == (9, 3, 4, [0, 4])
    assert profiles["1g.10gb"].placements == [0, 1, 2, 3, 4, 5, 6]
    assert profiles["1g.10gb"].max_instances == 7
    assert profiles["7g.80gb"].profile_id == 0
    assert profiles["1g.20gb"].memory_slices == 2


def test_mig_profiles_of_a_gpu_without_mig_is_empty() -> None:
    with gpulet.simulated("single-t4"):
        assert gpulet.mig_profiles(0) == []


def test_mig_profiles_of_a_gpu_that_does_not_exist() -> None:
    with (
        gpulet.simulated("single-t4"),
        pytest.raises(
            InvalidArgumentError, match=r"gpu 1 does not exist; this node has GPUs 0\.\.1"
        ),
    ):
        gpulet.mig_profiles(1)


def test_an_injected_nvml_error_names_the_call_and_the_gpu() -> None:
    with gpulet.simulated("dgx-h100") as s:
        s.control.fail("nvmlDeviceGetUUID", 15, gpu=3)
        with pytest.raises(NvmlError) as info:
            gpulet.discover()
    e = info.value
    assert (e.call, e.gpu, e.code) == ("nvmlDeviceGetUUID", 3, 15)
    assert str(e).startswith("nvmlDeviceGetUUID on GPU 3 failed:")
    assert "NVML error 15" in str(e)


def test_a_node_wide_error_names_no_gpu() -> None:
    with gpulet.simulated("single-t4") as s:
        s.control.fail("nvmlSystemGetDriverVersion", 999)
        with pytest.raises(NvmlError) as info:
            gpulet.discover()
    assert (info.value.call, info.value.gpu, info.value.code) == (
        "nvmlSystemGetDriverVersion",
        None,
        999,
    )


def test_a_failure_that_clears_lets_the_next_discovery_succeed() -> None:
    with gpulet.simulated("dgx-h100") as s:
        s.control.fail("nvmlDeviceGetCudaComputeCapability", 999, gpu=2, times=1)
        with pytest.raises(NvmlError) as info:
            gpulet.discover()
        assert (info.value.call, info.value.gpu) == ("nvmlDeviceGetCudaComputeCapability", 2)
        assert len(gpulet.discover().gpus) == 8


def test_a_failing_pair_query_names_both_gpus() -> None:
    with gpulet.simulated("dgx-h100") as s:
        s.control.fail("nvmlDeviceGetTopologyCommonAncestor", 999, gpu=5)
        with pytest.raises(NvmlError) as info:
            gpulet.discover()
    assert (info.value.call, info.value.gpu, info.value.code) == (
        "nvmlDeviceGetTopologyCommonAncestor",
        0,
        999,
    )
    assert "(asking about GPU 0 and GPU 5)" in str(info.value)


def test_a_gpu_off_the_bus_is_named() -> None:
    with gpulet.simulated("dgx-h100") as s:
        s.control.fall_off_bus(6)
        with pytest.raises(NvmlError) as info:
            gpulet.discover()
        assert (info.value.gpu, info.value.code) == (6, 15)
        s.control.restore_gpu(6)
        assert len(gpulet.discover().gpus) == 8


def test_a_failing_mig_query_names_the_call() -> None:
    with gpulet.simulated("mixed-pcie") as s:
        s.control.fail("nvmlDeviceGetGpuInstancePossiblePlacements", 999, gpu=4)
        with pytest.raises(NvmlError) as info:
            gpulet.mig_profiles(4)
    assert info.value.call == "nvmlDeviceGetGpuInstancePossiblePlacements_v2"
    assert info.value.gpu == 4


@pytest.mark.usefixtures("no_nvml_env")
def test_a_missing_library_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPULET_NVML_LIB", "/nonexistent/lib/libnvidia-ml.so.1")
    with pytest.raises(NvmlLibraryNotFound) as info:
        gpulet.discover()
    text = str(info.value)
    assert text.startswith("NVML library not found: /nonexistent/lib/libnvidia-ml.so.1 ")
    assert ". " not in text
    assert "\n" not in text
    assert info.value.path == "/nonexistent/lib/libnvidia-ml.so.1"
    with pytest.raises(NvmlLibraryNotFound):
        gpulet.mig_profiles(0)


def test_an_explicit_library_path_wins_over_the_environment(fake_library: pathlib.Path) -> None:
    with gpulet.simulated("single-t4") as s:
        assert len(gpulet.discover(str(fake_library)).gpus) == 1
        with pytest.raises(NvmlLibraryNotFound):
            gpulet.discover("/nonexistent/libnvidia-ml.so.1")
        assert s.library_path == fake_library


def test_a_bad_spec_fails_init_with_the_fakes_sentence(
    fake_library: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: v1\nname: bad\ndriver_version: '570.1'\n"
        "numa_nodes: [{id: 0, cpus: '0-3'}]\n"
        "gpus: [{model: H100-81GB, pci_bus_id: '00000000:01:00.0', numa_node: 0}]\n",
        encoding="utf-8",
    )
    monkeypatch.setenv(sim.ENV_NVML_LIB, str(fake_library))
    monkeypatch.setenv(sim.ENV_SPEC, str(bad))
    monkeypatch.setenv(sim.ENV_STATE, str(tmp_path / "state.json"))
    with pytest.raises(NvmlError) as info:
        gpulet.discover()
    assert info.value.call == "nvmlInit_v2"
    assert info.value.gpu is None
    assert "H100-81GB" in str(info.value)


def test_nodes_simulated_in_turn_are_each_seen() -> None:
    counts = []
    for spec in ("dgx-h100", "single-t4", "mixed-pcie"):
        with gpulet.simulated(spec):
            counts.append(len(gpulet.discover().gpus))
    assert counts == [8, 1, 6]


def test_discovery_is_repeatable_and_thread_safe() -> None:
    with gpulet.simulated("hgx-h200"):
        first = gpulet.discover()
        results: list[gpulet.Node] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                results.append(gpulet.discover())
            except BaseException as e:  # collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(results) == 4
    assert all(r == first for r in results)
    assert first.topology == results[0].topology
