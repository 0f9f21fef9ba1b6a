"""The fake libnvidia-ml.so.1 as pynvml (nvidia-ml-py), an independent NVML client, sees it.

Cross-process behaviour (shared MIG state, events) is checked with child Python processes that
load the fake and pynvml themselves. Waits are on conditions with generous limits; no test
sleeps to synchronise.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import re
import time

import pynvml
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GiB = 1024**3
MiB = 1024**2


def nvml_code(exc: pytest.ExceptionInfo[pynvml.NVMLError]) -> int:
    return int(exc.value.value)


def addr(handle: object) -> int | None:
    """The address behind an opaque NVML handle (handles are pointers)."""
    return ctypes.cast(handle, ctypes.c_void_p).value


def handles() -> list[object]:
    return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]


# --- devices -------------------------------------------------------------------------------


def test_dgx_h100_devices_names_uuids_memory_and_pci(kit):
    with kit.nvml_on("dgx-h100"):
        assert pynvml.nvmlSystemGetDriverVersion() == "570.124.06"
        assert pynvml.nvmlSystemGetNVMLVersion() == "12.570.124.06"
        assert pynvml.nvmlSystemGetCudaDriverVersion_v2() == 12080
        hs = handles()
        assert len(hs) == 8
        uuids = [pynvml.nvmlDeviceGetUUID(h) for h in hs]
        assert len(set(uuids)) == 8
        assert all(u.startswith("GPU-") for u in uuids)
        buses = [
            "00000000:1B:00.0",
            "00000000:43:00.0",
            "00000000:52:00.0",
            "00000000:61:00.0",
            "00000000:9D:00.0",
            "00000000:C3:00.0",
            "00000000:D1:00.0",
            "00000000:DF:00.0",
        ]
        for i, h in enumerate(hs):
            assert pynvml.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
            assert pynvml.nvmlDeviceGetMinorNumber(h) == i
            assert pynvml.nvmlDeviceGetIndex(h) == i
            pci = pynvml.nvmlDeviceGetPciInfo(h)
            assert pci.busId == buses[i]
            assert pci.pciDeviceId == 0x233010DE
            assert addr(pynvml.nvmlDeviceGetHandleByUUID(uuids[i])) == addr(h)
            assert addr(pynvml.nvmlDeviceGetHandleByPciBusId(buses[i])) == addr(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            assert mem.total == 81559 * MiB
            assert mem.free + mem.used == mem.total
            mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            assert mem2.total == mem.total
            assert pynvml.nvmlDeviceGetCudaComputeCapability(h) == (9, 0)
            assert pynvml.nvmlDeviceGetArchitecture(h) == pynvml.NVML_DEVICE_ARCH_HOPPER
            assert pynvml.nvmlDeviceGetPersistenceMode(h) == pynvml.NVML_FEATURE_ENABLED
        # The legacy bus id form finds the same GPU.
        assert addr(pynvml.nvmlDeviceGetHandleByPciBusId("0000:43:00.0")) == addr(hs[1])
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
        assert nvml_code(e) == pynvml.NVML_ERROR_NOT_FOUND
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceGetHandleByIndex(8)
        assert nvml_code(e) == pynvml.NVML_ERROR_INVALID_ARGUMENT


def test_telemetry_defaults_and_versioned_calls(kit):
    with kit.nvml_on("dgx-h100"):
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 34
        assert pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU) == 34
        assert pynvml.nvmlDeviceGetPowerUsage(h) == 70_000
        assert pynvml.nvmlDeviceGetPowerManagementLimit(h) == 700_000
        assert pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == 700_000
        assert pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM) == 1980
        assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM) == 2619
        util = pynvml.nvmlDeviceGetUtilizationRates(h)
        assert (util.gpu, util.memory) == (0, 0)
        assert pynvml.nvmlDeviceGetEncoderUtilization(h)[0] == 0
        assert (
            pynvml.nvmlDeviceGetTotalEccErrors(
                h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
            )
            == 0
        )
        assert pynvml.nvmlDeviceGetPcieReplayCounter(h) == 0
        assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 0
        assert pynvml.nvmlDeviceGetComputeRunningProcesses(h) == []
        events = pynvml.nvmlDeviceGetSupportedEventTypes(h)
        assert events & pynvml.nvmlEventTypeXidCriticalError
        assert events & pynvml.nvmlEventMigConfigChange


# --- topology ------------------------------------------------------------------------------


def test_topology_levels_from_pairs_and_numa(kit):
    spec = kit.write_spec(kit.MIXED_PCIE)
    with kit.nvml_on(spec):
        h = handles()
        level = pynvml.nvmlDeviceGetTopologyCommonAncestor
        assert level(h[0], h[1]) == pynvml.NVML_TOPOLOGY_SINGLE
        assert level(h[1], h[0]) == pynvml.NVML_TOPOLOGY_SINGLE
        assert level(h[2], h[3]) == pynvml.NVML_TOPOLOGY_HOSTBRIDGE
        assert level(h[0], h[2]) == pynvml.NVML_TOPOLOGY_SYSTEM
        assert level(h[1], h[3]) == pynvml.NVML_TOPOLOGY_SYSTEM
        near = pynvml.nvmlDeviceGetTopologyNearestGpus(h[0], pynvml.NVML_TOPOLOGY_SINGLE)
        assert [addr(n) for n in near] == [addr(h[1])]
        assert [pynvml.nvmlDeviceGetName(x) for x in h] == [
            "NVIDIA L4",
            "NVIDIA L4",
            "NVIDIA A30",
            "NVIDIA A30",
        ]
        # Affinity follows the spec's NUMA nodes.
        assert list(pynvml.nvmlDeviceGetCpuAffinity(h[0], 1)) == [0xFFFF]
        assert list(pynvml.nvmlDeviceGetCpuAffinity(h[3], 1)) == [0xFFFF0000]
        assert list(
            pynvml.nvmlDeviceGetCpuAffinityWithinScope(h[3], 1, pynvml.NVML_AFFINITY_SCOPE_SOCKET)
        ) == [0xFFFF0000]
        assert list(
            pynvml.nvmlDeviceGetMemoryAffinity(h[2], 1, pynvml.NVML_AFFINITY_SCOPE_NODE)
        ) == [0b10]
        # Like a real driver on a PCIe node: GPUs are not NUMA nodes themselves.
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceGetNumaNodeId(h[0])
        assert nvml_code(e) == pynvml.NVML_ERROR_NOT_SUPPORTED
        # L4s have no NVLink at all.
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceGetNvLinkState(h[0], 0)
        assert nvml_code(e) == pynvml.NVML_ERROR_NOT_SUPPORTED


def test_nvlinks_to_nvswitches(kit):
    with kit.nvml_on("dgx-h100"):
        h = pynvml.nvmlDeviceGetHandleByIndex(5)
        switch_buses = set()
        for link in range(18):
            assert pynvml.nvmlDeviceGetNvLinkState(h, link) == pynvml.NVML_FEATURE_ENABLED
            kind = pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(h, link)
            assert kind == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
            switch_buses.add(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId)
            assert pynvml.nvmlDeviceGetNvLinkVersion(h, link) == pynvml.NVML_NVLINK_VERSION_4_0
        assert len(switch_buses) == 4
        # Clients loop to NVML_NVLINK_MAX_LINKS (18 in NVML 12, 36 in 13) and stop at errors.
        for link in (18, 35):
            with pytest.raises(pynvml.NVMLError) as e:
                pynvml.nvmlDeviceGetNvLinkState(h, link)
            assert nvml_code(e) == pynvml.NVML_ERROR_INVALID_ARGUMENT


def test_direct_nvlinks_between_gpus(kit):
    spec = kit.write_spec(kit.VOLTA_MESH)
    with kit.nvml_on(spec):
        h = handles()
        peers = []
        for link in range(6):
            if pynvml.nvmlDeviceGetNvLinkState(h[0], link):
                kind = pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(h[0], link)
                assert kind == pynvml.NVML_NVLINK_DEVICE_TYPE_GPU
                peers.append(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(h[0], link).busId)
            else:
                with pytest.raises(pynvml.NVMLError) as e:
                    pynvml.nvmlDeviceGetNvLinkRemotePciInfo(h[0], link)
                assert nvml_code(e) == pynvml.NVML_ERROR_NOT_SUPPORTED
        assert peers == ["00000000:07:00.0", "00000000:07:00.0", "00000000:85:00.0"]
        assert pynvml.nvmlDeviceGetTopologyCommonAncestor(h[2], h[3]) == (
            pynvml.NVML_TOPOLOGY_MULTIPLE
        )
        assert pynvml.nvmlDeviceGetNvLinkVersion(h[0], 0) == pynvml.NVML_NVLINK_VERSION_2_0


# --- MIG -----------------------------------------------------------------------------------


def gi_profiles(h: object) -> dict[str, object]:
    """Every GPU instance profile, found the way clients do: loop the enum until an error."""
    found = {}
    refusals = {}
    for profile in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT + 1):
        try:
            info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, profile)
        except pynvml.NVMLError as e:
            refusals[profile] = e.value
            continue
        found[info.name] = info
    # Enums the model lacks are NOT_SUPPORTED; past NVML's range, INVALID_ARGUMENT.
    count = pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT
    assert refusals.pop(count) == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert set(refusals.values()) == {pynvml.NVML_ERROR_NOT_SUPPORTED}
    return found


def placements(h: object, profile_id: int) -> list[tuple[int, int]]:
    count = ctypes.c_uint(0)
    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(h, profile_id, None, ctypes.byref(count))
    array = (pynvml.c_nvmlGpuInstancePlacement_t * count.value)()
    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(h, profile_id, array, ctypes.byref(count))
    return [(p.start, p.size) for p in array[: count.value]]


def gpu_instances(h: object, profile_id: int) -> list[object]:
    count = ctypes.c_uint(0)
    array = (pynvml.c_nvmlGpuInstance_t * 7)()
    pynvml.nvmlDeviceGetGpuInstances(h, profile_id, array, ctypes.byref(count))
    return list(array[: count.value])


def test_mig_profiles_and_placements(kit):
    with kit.nvml_on("dgx-h100"):
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        profiles = gi_profiles(h)
        assert sorted(profiles) == sorted(
            f"MIG {n}"
            for n in [
                "1g.10gb",
                "1g.10gb+me",
                "1g.20gb",
                "2g.20gb",
                "3g.40gb",
                "4g.40gb",
                "7g.80gb",
            ]
        )
        p3 = profiles["MIG 3g.40gb"]
        assert (p3.id, p3.sliceCount, p3.instanceCount, p3.memorySizeMB) == (9, 3, 2, 40448)
        assert p3.multiprocessorCount == 60
        # The non-V (v1 struct) call that nvml-wrapper makes agrees.
        v1 = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, 0x2, version=1)
        assert (v1.id, v1.sliceCount, v1.memorySizeMB) == (9, 3, 40448)
        assert placements(h, 9) == [(0, 4), (4, 4)]
        assert placements(h, 15) == [(0, 2), (2, 2), (4, 2), (6, 2)]
        assert placements(h, 19) == [(i, 1) for i in range(7)]
        assert placements(h, 0) == [(0, 8)]
        assert pynvml.nvmlDeviceGetMigMode(h) == [0, 0]


def test_gpu_and_compute_instances_create_destroy_and_overlap(kit):
    with kit.nvml_on("dgx-h100"):
        h = pynvml.nvmlDeviceGetHandleByIndex(2)
        # MIG mode off: no instances.
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceCreateGpuInstance(h, 9)
        assert nvml_code(e) == pynvml.NVML_ERROR_NOT_SUPPORTED
        assert pynvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_ENABLE) == 0
        assert pynvml.nvmlDeviceGetMigMode(h) == [1, 1]
        assert pynvml.nvmlDeviceGetMaxMigDeviceCount(h) == 7

        at4 = pynvml.c_nvmlGpuInstancePlacement_t(4, 4)
        gi = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(h, 9, ctypes.byref(at4))
        info = pynvml.nvmlGpuInstanceGetInfo(gi)
        assert (info.id, info.profileId, info.placement.start, info.placement.size) == (2, 9, 4, 4)
        # 2g.20gb at memory slice 4 overlaps it.
        at4_2g = pynvml.c_nvmlGpuInstancePlacement_t(4, 2)
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(h, 14, ctypes.byref(at4_2g))
        assert nvml_code(e) == pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES
        # A start that is no placement at all is a bad argument.
        at1 = pynvml.c_nvmlGpuInstancePlacement_t(1, 2)
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(h, 14, ctypes.byref(at1))
        assert nvml_code(e) == pynvml.NVML_ERROR_INVALID_ARGUMENT
        assert pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 9) == 1
        assert pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 0) == 0
        assert pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 19) == 4

        # Compute instances: 1c.3g then the rest.
        ci_info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
            gi,
            pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE,
            pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
        )
        assert (ci_info.sliceCount, ci_info.instanceCount, ci_info.name) == (1, 3, "MIG 1c.3g.40gb")
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi,
                pynvml.NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE,
                pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
            )
        assert nvml_code(e) == pynvml.NVML_ERROR_NOT_SUPPORTED
        ci = pynvml.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id)
        cinfo = pynvml.nvmlComputeInstanceGetInfo(ci)
        assert (cinfo.id, cinfo.placement.start, cinfo.placement.size) == (0, 0, 1)
        assert pynvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, ci_info.id) == 2

        # The MIG device it makes.
        mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)
        assert pynvml.nvmlDeviceIsMigDeviceHandle(mig).value == 1
        assert pynvml.nvmlDeviceGetName(mig) == "NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb"
        mig_uuid = pynvml.nvmlDeviceGetUUID(mig)
        assert mig_uuid.startswith("MIG-")
        assert addr(pynvml.nvmlDeviceGetHandleByUUID(mig_uuid)) == addr(mig)
        assert pynvml.nvmlDeviceGetMemoryInfo(mig).total == 40448 * MiB
        assert pynvml.nvmlDeviceGetGpuInstanceId(mig) == 2
        assert pynvml.nvmlDeviceGetComputeInstanceId(mig) == 0
        assert addr(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)) == addr(h)
        assert pynvml.nvmlDeviceGetMinorNumber(mig) == 2
        attrs = pynvml.nvmlDeviceGetAttributes(mig)
        assert (attrs.gpuInstanceSliceCount, attrs.computeInstanceSliceCount) == (3, 1)
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, 1)
        assert nvml_code(e) == pynvml.NVML_ERROR_NOT_FOUND
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceGetUtilizationRates(h)
        assert nvml_code(e) == pynvml.NVML_ERROR_NOT_SUPPORTED

        # Destroy in the wrong order, then the right one; MIG mode off again.
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlGpuInstanceDestroy(gi)
        assert nvml_code(e) == pynvml.NVML_ERROR_IN_USE
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_DISABLE)
        assert nvml_code(e) == pynvml.NVML_ERROR_IN_USE
        pynvml.nvmlComputeInstanceDestroy(ci)
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceGetName(mig)
        assert nvml_code(e) == pynvml.NVML_ERROR_INVALID_ARGUMENT
        pynvml.nvmlGpuInstanceDestroy(gi)
        assert gpu_instances(h, 9) == []
        pynvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_DISABLE)
        assert pynvml.nvmlDeviceGetMigMode(h) == [0, 0]


def test_mig_devices_from_the_spec(kit):
    spec = kit.write_spec(kit.A100_MIG)
    with kit.nvml_on(spec):
        h0, h1 = handles()
        assert pynvml.nvmlDeviceGetMigMode(h0) == [1, 1]
        assert pynvml.nvmlDeviceGetMigMode(h1) == [0, 0]
        migs = [pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h0, i) for i in range(2)]
        assert [pynvml.nvmlDeviceGetName(m) for m in migs] == [
            "NVIDIA A100-SXM4-40GB MIG 3g.20gb",
            "NVIDIA A100-SXM4-40GB MIG 1g.5gb",
        ]
        assert [pynvml.nvmlDeviceGetGpuInstanceId(m) for m in migs] == [2, 7]
        assert len(gpu_instances(h0, 9)) == 1
        gi = pynvml.nvmlDeviceGetGpuInstanceById(h0, 7)
        assert pynvml.nvmlGpuInstanceGetInfo(gi).placement.start == 0
        # NVSwitch node, A100: NVLink 3 to switches.
        assert pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(h1, 11) == (
            pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
        )
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceGetNvLinkState(h1, 12)
        assert nvml_code(e) == pynvml.NVML_ERROR_INVALID_ARGUMENT


def test_two_processes_share_mig_state(kit):
    spec = kit.write_spec(kit.A100_MIG)
    with kit.nvml_on(spec) as sim:
        h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
        pynvml.nvmlDeviceSetMigMode(h1, pynvml.NVML_DEVICE_MIG_ENABLE)
        out = kit.run_child(
            """
            h = pynvml.nvmlDeviceGetHandleByIndex(1)
            assert pynvml.nvmlDeviceGetMigMode(h) == [1, 1]
            gi = pynvml.nvmlDeviceCreateGpuInstance(h, 14)
            print(pynvml.nvmlGpuInstanceGetInfo(gi).id)
            """,
            sim.env,
        )
        gi_id = int(out.strip())
        seen = gpu_instances(h1, 14)
        assert len(seen) == 1
        assert pynvml.nvmlGpuInstanceGetInfo(seen[0]).id == gi_id
        # And back: the parent destroys it, a child sees none.
        pynvml.nvmlGpuInstanceDestroy(seen[0])
        out = kit.run_child(
            """
            import ctypes
            h = pynvml.nvmlDeviceGetHandleByIndex(1)
            count = ctypes.c_uint(0)
            arr = (pynvml.c_nvmlGpuInstance_t * 3)()
            pynvml.nvmlDeviceGetGpuInstances(h, 14, arr, ctypes.byref(count))
            print(count.value)
            """,
            sim.env,
        )
        assert out.strip() == "0"


# --- events, lost GPUs, injected faults -----------------------------------------------------


def test_xid_injected_from_outside_reaches_a_waiting_process(kit):
    with kit.nvml_on("dgx-h100") as sim:
        # An XID before registration is never delivered.
        sim.control.inject_xid(3, 13)
        proc = kit.child(
            """
            h = pynvml.nvmlDeviceGetHandleByIndex(3)
            es = pynvml.nvmlEventSetCreate()
            pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
            print("ready", flush=True)
            data = pynvml.nvmlEventSetWait(es, 60000)
            print(data.eventType, data.eventData, data.gpuInstanceId, data.computeInstanceId)
            print(pynvml.nvmlDeviceGetIndex(data.device))
            pynvml.nvmlEventSetFree(es)
            """,
            sim.env,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            sim.control.inject_xid(3, 48)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        lines = out.split()
        assert lines[:4] == ["8", "48", str(0xFFFFFFFF), str(0xFFFFFFFF)]
        assert lines[4] == "3"


def test_events_in_process_and_mig_attribution(kit):
    spec = kit.write_spec(kit.A100_MIG)
    with kit.nvml_on(spec) as sim:
        h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
        es = pynvml.nvmlEventSetCreate()
        try:
            pynvml.nvmlDeviceRegisterEvents(
                h0, pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventMigConfigChange, es
            )
            with pytest.raises(pynvml.NVMLError) as e:
                pynvml.nvmlEventSetWait(es, 0)
            assert nvml_code(e) == pynvml.NVML_ERROR_TIMEOUT
            sim.control.inject_xid(0, 94, gpu_instance=2, compute_instance=0)
            data = pynvml.nvmlEventSetWait(es, 30000)
            assert (data.eventData, data.gpuInstanceId, data.computeInstanceId) == (94, 2, 0)
            # A MIG change made through NVML is announced too.
            gi = pynvml.nvmlDeviceCreateGpuInstance(h0, 19)
            data = pynvml.nvmlEventSetWait(es, 30000)
            assert data.eventType == pynvml.nvmlEventMigConfigChange
            assert data.gpuInstanceId == pynvml.nvmlGpuInstanceGetInfo(gi).id
        finally:
            pynvml.nvmlEventSetFree(es)


def test_fall_off_bus_makes_calls_lost_until_restored(kit):
    with kit.nvml_on("dgx-h100") as sim:
        h2 = pynvml.nvmlDeviceGetHandleByIndex(2)
        es = pynvml.nvmlEventSetCreate()
        try:
            pynvml.nvmlDeviceRegisterEvents(h2, pynvml.nvmlEventTypeXidCriticalError, es)
            sim.control.fall_off_bus(2)
            for call in (
                pynvml.nvmlDeviceGetPowerUsage,
                pynvml.nvmlDeviceGetUUID,
                pynvml.nvmlDeviceGetMemoryInfo,
            ):
                with pytest.raises(pynvml.NVMLError) as e:
                    call(h2)
                assert nvml_code(e) == pynvml.NVML_ERROR_GPU_IS_LOST
            with pytest.raises(pynvml.NVMLError) as e:
                pynvml.nvmlDeviceGetHandleByIndex(2)
            assert nvml_code(e) == pynvml.NVML_ERROR_GPU_IS_LOST
            assert pynvml.nvmlDeviceGetCount() == 8
            assert pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(1)) > 0
            data = pynvml.nvmlEventSetWait(es, 30000)
            assert data.eventData == 79
            sim.control.restore_gpu(2)
            assert pynvml.nvmlDeviceGetPowerUsage(h2) > 0
        finally:
            pynvml.nvmlEventSetFree(es)


def test_injected_error_codes(kit):
    with kit.nvml_on("dgx-h100") as sim:
        h0, h1 = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
        sim.control.fail("nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_UNKNOWN, gpu=1, times=2)
        for _ in range(2):
            with pytest.raises(pynvml.NVMLError) as e:
                pynvml.nvmlDeviceGetPowerUsage(h1)
            assert nvml_code(e) == pynvml.NVML_ERROR_UNKNOWN
            assert pynvml.nvmlDeviceGetPowerUsage(h0) == 70_000
        assert pynvml.nvmlDeviceGetPowerUsage(h1) == 70_000
        # Without a version suffix a fault covers every version of the call.
        sim.control.fail("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_NO_PERMISSION)
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceGetMemoryInfo(h0, version=pynvml.nvmlMemory_v2)
        assert nvml_code(e) == pynvml.NVML_ERROR_NO_PERMISSION
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlDeviceGetMemoryInfo(h0)
        assert nvml_code(e) == pynvml.NVML_ERROR_NO_PERMISSION
        sim.control.clear_faults()
        assert pynvml.nvmlDeviceGetMemoryInfo(h0).total > 0
        # A failing init, as on a node whose driver is gone.
        sim.control.fail("nvmlInitWithFlags", pynvml.NVML_ERROR_DRIVER_NOT_LOADED, times=1)
        with pytest.raises(pynvml.NVMLError) as e:
            pynvml.nvmlInit()
        assert nvml_code(e) == pynvml.NVML_ERROR_DRIVER_NOT_LOADED
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()


def test_injected_delay_slows_only_the_chosen_call(kit):
    with kit.nvml_on("dgx-h100") as sim:
        h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
        sim.control.delay("nvmlDeviceGetTemperature", 0.3, gpu=0)
        start = time.monotonic()
        assert pynvml.nvmlDeviceGetTemperatureV(h0, pynvml.NVML_TEMPERATURE_GPU) == 34
        assert time.monotonic() - start >= 0.3
        sim.control.clear_faults()
        assert sim.control.state()["delays"] == []


def test_metrics_processes_and_field_values(kit):
    with kit.nvml_on("dgx-h100") as sim:
        h = pynvml.nvmlDeviceGetHandleByIndex(4)
        c = sim.control
        c.set_metric(4, "gpu_utilization", 87)
        c.set_metric(4, "memory_utilization", 40)
        c.set_metric(4, "temperature", 71)
        c.set_metric(4, "power_mw", 512_000)
        c.set_metric(4, "energy_mj", 123_456_789)
        c.set_metric(4, "sm_clock_mhz", 1755)
        c.set_metric(4, "pcie_replay_counter", 3)
        c.set_metric(4, "ecc_uncorrected_volatile", 2)
        c.set_processes(
            4,
            [
                {"pid": 1001, "used_memory_mib": 4096, "name": "train.py"},
                {"pid": 1002, "used_memory_mib": 1024},
            ],
        )
        util = pynvml.nvmlDeviceGetUtilizationRates(h)
        assert (util.gpu, util.memory) == (87, 40)
        assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 71
        assert pynvml.nvmlDeviceGetPowerUsage(h) == 512_000
        assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 123_456_789
        assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == 1755
        assert pynvml.nvmlDeviceGetPcieReplayCounter(h) == 3
        assert (
            pynvml.nvmlDeviceGetTotalEccErrors(
                h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
            )
            == 2
        )
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        assert [(p.pid, p.usedGpuMemory) for p in procs] == [(1001, 4096 * MiB), (1002, 1024 * MiB)]
        assert pynvml.nvmlSystemGetProcessName(1001) == "train.py"
        assert pynvml.nvmlDeviceGetMemoryInfo(h).used == 5120 * MiB

        fields = [
            pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
            pynvml.NVML_FI_DEV_POWER_INSTANT,
            pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER,
            pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL,
            (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 2),
            pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT,
            pynvml.NVML_FI_DEV_MEMORY_TEMP,
        ]
        c.set_field(4, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 999, scope=2)
        values = pynvml.nvmlDeviceGetFieldValues(h, fields)
        assert all(v.nvmlReturn == pynvml.NVML_SUCCESS for v in values)
        assert values[0].value.ullVal == 123_456_789
        assert values[1].value.uiVal == 512_000
        assert values[2].value.uiVal == 3
        assert values[3].value.ullVal == 2
        assert values[4].value.ullVal == 999
        assert values[5].value.uiVal == 18
        assert values[6].value.uiVal == 38
        assert all(v.timestamp > 0 for v in values)


def test_field_ids_251_to_273_follow_the_driver_version(kit, write_spec):
    # Driver 570: NVML 12 numbering, 251 is the SW thermal slowdown counter.
    with kit.nvml_on("dgx-h100") as sim:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        sim.control.set_field(0, 251, 11)
        v = pynvml.nvmlDeviceGetFieldValues(h, [251, 256, 274])
        assert (v[0].nvmlReturn, v[0].value.ullVal) == (pynvml.NVML_SUCCESS, 11)
        assert v[1].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED  # power smoothing
        assert v[2].nvmlReturn == pynvml.NVML_ERROR_INVALID_ARGUMENT  # past NVML 12's range
    # Driver 580.82: NVML 13 numbering, the same counter is 269 (pynvml 13's constant).
    spec = write_spec(kit.A100_MIG)
    with kit.nvml_on(spec) as sim:
        h = pynvml.nvmlDeviceGetHandleByIndex(1)
        assert pynvml.nvmlSystemGetNVMLVersion() == "13.580.82.07"
        sim.control.set_field(1, pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN, 22)
        assert pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN == 269
        v = pynvml.nvmlDeviceGetFieldValues(h, [269, 251, 274])
        assert (v[0].nvmlReturn, v[0].value.ullVal) == (pynvml.NVML_SUCCESS, 22)
        assert v[1].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED  # PWR_SMOOTHING_ENABLED
        assert v[2].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED  # exists in 13, not simulated
        state = sim.control.state()
        assert "251" in state["gpus"][1]["fields"]  # stored in NVML 12 (canonical) numbering


# --- specs, state, control interface ---------------------------------------------------------


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (("model: L4", "model: L5"), 'gpus[0].model: unknown GPU model "L5"'),
        (("gpus: [0, 1], level", "gpus: [0, 4], level"), "pcie[0].gpus: GPU 4 does not exist"),
        (
            (
                'numa_node: 1}\n  - {model: A30, pci_bus_id: "00000000:CA',
                'numa_node: 7}\n  - {model: A30, pci_bus_id: "00000000:CA',
            ),
            "NUMA node 7 is not in numa_nodes",
        ),
        (("version: v1", "version: v1\nname: [oops"), "malformed node spec YAML"),
    ],
)
def test_bad_specs_are_refused_with_a_message(kit, mutation, message):
    spec = kit.write_spec(kit.MIXED_PCIE.replace(*mutation))
    with pytest.raises(kit.sim.SpecError) as e, kit.sim.simulated(spec):
        pytest.fail("a bad spec must not open a simulation")
    assert message in str(e.value)
    assert str(spec) in str(e.value)
    assert kit.sim.ENV_SPEC not in os.environ or os.environ[kit.sim.ENV_SPEC] != str(spec)


def test_overlapping_mig_placements_and_missing_link_targets_are_refused(kit):
    overlap = kit.A100_MIG.replace("{profile: 1g.5gb, start: 0}", "{profile: 2g.10gb, start: 4}")
    with pytest.raises(kit.sim.SpecError, match=re.escape("overlaps 3g.20gb at memory slices 4-7")):
        kit.sim.validate_spec(kit.write_spec(overlap, "overlap"))
    link = kit.VOLTA_MESH.replace("{gpus: [2, 3], links: 2}", "{gpus: [2, 9], links: 2}")
    with pytest.raises(kit.sim.SpecError, match=r"nvlinks\[3\]\.gpus: GPU 9 does not exist"):
        kit.sim.validate_spec(kit.write_spec(link, "link"))


def test_a_bad_spec_fails_init_and_loads_nothing(kit, tmp_path, monkeypatch):
    spec = kit.write_spec(kit.MIXED_PCIE.replace("model: A30", "model: A31"))
    state = tmp_path / "state.json"
    lib = kit.sim._library(kit.sim.fake_library_path())
    monkeypatch.setenv(kit.sim.ENV_SPEC, str(spec))
    monkeypatch.setenv(kit.sim.ENV_STATE, str(state))
    with pytest.raises(pynvml.NVMLError) as e:
        pynvml.nvmlInit()
    assert nvml_code(e) == pynvml.NVML_ERROR_UNKNOWN
    message = kit.sim._last_error(lib)
    assert 'gpus[2].model: unknown GPU model "A31"' in message
    with pytest.raises(pynvml.NVMLError) as e:
        pynvml.nvmlDeviceGetCount()
    assert nvml_code(e) == pynvml.NVML_ERROR_UNINITIALIZED
    assert not state.exists()


def test_without_a_spec_the_driver_is_not_loaded(kit, monkeypatch):
    kit.sim._library(kit.sim.fake_library_path())
    monkeypatch.delenv(kit.sim.ENV_SPEC, raising=False)
    with pytest.raises(pynvml.NVMLError) as e:
        pynvml.nvmlInit()
    assert nvml_code(e) == pynvml.NVML_ERROR_DRIVER_NOT_LOADED


def test_one_process_simulates_several_nodes_in_turn(kit):
    with kit.nvml_on("dgx-h100"):
        assert pynvml.nvmlDeviceGetCount() == 8
    with kit.nvml_on(kit.write_spec(kit.MIXED_PCIE)):
        assert pynvml.nvmlDeviceGetCount() == 4


def test_reset_returns_to_the_spec(kit):
    spec = kit.write_spec(kit.A100_MIG)
    with kit.nvml_on(spec) as sim:
        h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
        pynvml.nvmlDeviceCreateGpuInstance(h0, 19)
        sim.control.set_metric(0, "temperature", 90)
        sim.control.fall_off_bus(1)
        assert len(sim.control.state()["gpus"][0]["gpu_instances"]) == 3
        sim.control.reset()
        state = sim.control.state()
        assert [gi["id"] for gi in state["gpus"][0]["gpu_instances"]] == [2, 7]
        assert state["gpus"][0]["metrics"]["temperature"] == 34
        assert state["gpus"][1]["lost"] is False
        assert pynvml.nvmlDeviceGetTemperature(h0, pynvml.NVML_TEMPERATURE_GPU) == 34


def test_control_errors_are_typed(kit):
    with kit.sim.simulated("dgx-h100") as sim:
        c = sim.control
        with pytest.raises(kit.sim.FakeNvmlError, match="GPU 8 does not exist"):
            c.fall_off_bus(8)
        with pytest.raises(kit.sim.FakeNvmlError, match="not an NVML function the fake exports"):
            c.fail("nvmlDeviceGetWarpSpeed", 3)
        with pytest.raises(kit.sim.FakeNvmlError, match="unknown metric"):
            c.set_metric(0, "fan_speed", 3)
        with pytest.raises(kit.sim.FakeNvmlError, match="not an NVML error code"):
            c.fail("nvmlDeviceGetName", 0)
        with pytest.raises(kit.sim.FakeNvmlError, match="unknown variant"):
            c.command({"command": "explode"})


def test_simulated_sets_and_restores_the_environment(kit, monkeypatch):
    monkeypatch.setenv(kit.sim.ENV_NVML_LIB, "/previous/libnvidia-ml.so.1")
    monkeypatch.delenv(kit.sim.ENV_STATE, raising=False)
    with kit.sim.simulated("dgx-h100") as sim:
        assert os.environ[kit.sim.ENV_NVML_LIB] == str(sim.library_path)
        assert os.environ[kit.sim.ENV_SPEC] == str(sim.spec_path)
        assert os.environ[kit.sim.ENV_STATE] == str(sim.state_path)
        assert sim.env[kit.sim.ENV_STATE] == str(sim.state_path)
        assert sim.state_path.is_file()
        state_file = sim.state_path
    assert os.environ[kit.sim.ENV_NVML_LIB] == "/previous/libnvidia-ml.so.1"
    assert kit.sim.ENV_STATE not in os.environ
    assert not state_file.exists()


def test_a_given_state_file_is_shared_and_kept(kit, tmp_path):
    state = tmp_path / "shared.json"
    with kit.sim.simulated("dgx-h100", state_path=state) as sim:
        sim.control.set_metric(0, "temperature", 55)
    with kit.nvml_on("dgx-h100", state_path=state):
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 55
    assert state.is_file()


def test_default_state_path_depends_on_the_spec(kit, write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    a = kit.sim.default_state_path(write_spec(kit.MIXED_PCIE, "a"))
    b = kit.sim.default_state_path(write_spec(kit.MIXED_PCIE, "b"))
    assert a != b
    assert a.parent == tmp_path
    assert a.name.startswith("gpulet-fakenvml-")
    assert a.suffix == ".json"
    control = kit.sim.FakeNvml(write_spec(kit.MIXED_PCIE, "a"))
    assert control.state_path == a
    control.set_metric(0, "temperature", 40)
    assert a.is_file()


def test_shipped_specs_and_spec_paths(kit, tmp_path):
    assert "dgx-h100" in kit.sim.shipped_specs()
    assert kit.sim.spec_path("dgx-h100").name == "dgx-h100.yaml"
    own = tmp_path / "own.yaml"
    own.write_text(kit.MIXED_PCIE, encoding="utf-8")
    assert kit.sim.spec_path(own) == own.resolve()
    assert kit.sim.spec_path(str(own)) == own.resolve()
    with pytest.raises(kit.sim.SpecError, match="no node spec 'dgx-z9'"):
        kit.sim.spec_path("dgx-z9")


def test_library_path_override_must_exist(kit, monkeypatch, tmp_path):
    real = kit.sim.fake_library_path()
    assert real.is_file()
    monkeypatch.setenv(kit.sim.ENV_FAKE_LIBRARY, str(tmp_path / "missing.so"))
    with pytest.raises(kit.sim.FakeLibraryNotFoundError, match="cargo build -p fakenvml"):
        kit.sim.fake_library_path()


def test_soname_lets_a_later_dlopen_find_the_fake(kit):
    # In a fresh process: load the fake by path, then ask for the driver's name.
    with kit.sim.simulated("dgx-h100") as sim:
        out = kit.run_child(
            """
            by_name = ctypes.CDLL("libnvidia-ml.so.1")
            by_path = ctypes.CDLL(os.environ["GPULET_NVML_LIB"])
            same = ctypes.cast(by_name.nvmlInit_v2, ctypes.c_void_p).value == ctypes.cast(
                by_path.nvmlInit_v2, ctypes.c_void_p
            ).value
            print(same, hasattr(by_name, "gpuletFakeControl"), pynvml.nvmlDeviceGetCount())
            """,
            sim.env,
        )
    assert out.split() == ["True", "True", "8"]


def test_every_listed_call_is_exported(kit):
    lib = kit.sim._library(kit.sim.fake_library_path())
    source = pathlib.Path(__file__).resolve().parents[2] / "rust/fakenvml/src/ffi/mod.rs"
    listed = [
        line.strip().strip('",')
        for line in source.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith('"nvml')
    ]
    assert len(listed) > 90
    for name in [*listed, "nvmlErrorString", "gpuletFakeControl", "gpuletFakeLastError"]:
        assert hasattr(lib, name), name


# --- MIG against an independent model of the H100 tables --------------------------------------

# H100 80GB (docs/mig-catalog.md; `nvidia-smi mig -lgipp` on an H100): profile id -> (memory
# slices, compute slices, max instances, placements).
H100_GEOMETRY = {
    19: (1, 1, 7, range(7)),
    20: (1, 1, 1, range(7)),
    15: (2, 1, 4, (0, 2, 4, 6)),
    14: (2, 2, 3, (0, 2, 4)),
    9: (4, 3, 2, (0, 4)),
    5: (4, 4, 1, (0,)),
    0: (8, 7, 1, (0,)),
}


def model_fits(layout: list[tuple[int, int]], profile: int, start: int) -> bool:
    size, slices, most, _ = H100_GEOMETRY[profile]
    taken = {s for p, st in layout for s in range(st, st + H100_GEOMETRY[p][0])}
    if taken & set(range(start, start + size)):
        return False
    if sum(1 for p, _ in layout if p == profile) >= most or len(layout) >= 7:
        return False
    return sum(H100_GEOMETRY[p][1] for p, _ in layout) + slices <= 7


operations = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.sampled_from(sorted(H100_GEOMETRY)), st.integers(0, 6)),
        st.tuples(st.just("destroy"), st.integers(0, 6), st.just(0)),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations)
def test_mig_creation_agrees_with_an_independent_model(kit, ops):
    with kit.nvml_on("dgx-h100"):
        h = pynvml.nvmlDeviceGetHandleByIndex(6)
        pynvml.nvmlDeviceSetMigMode(h, pynvml.NVML_DEVICE_MIG_ENABLE)
        layout: list[tuple[int, int]] = []
        live: list[object] = []
        for op, a, b in ops:
            if op == "create":
                placements_of = list(H100_GEOMETRY[a][3])
                start = placements_of[b % len(placements_of)]
                place = pynvml.c_nvmlGpuInstancePlacement_t(start, H100_GEOMETRY[a][0])
                expected = model_fits(layout, a, start)
                code, gi = pynvml.NVML_SUCCESS, None
                try:
                    gi = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(h, a, ctypes.byref(place))
                except pynvml.NVMLError as e:
                    code = e.value
                if not expected:
                    assert code == pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, (a, start, layout)
                    continue
                assert code == pynvml.NVML_SUCCESS, f"{a}@{start} refused next to {layout}"
                layout.append((a, start))
                live.append(gi)
            elif live:
                k = a % len(live)
                pynvml.nvmlGpuInstanceDestroy(live.pop(k))
                layout.pop(k)
        listed = sorted(
            (
                pynvml.nvmlGpuInstanceGetInfo(gi).profileId,
                pynvml.nvmlGpuInstanceGetInfo(gi).placement.start,
            )
            for p in H100_GEOMETRY
            for gi in gpu_instances(h, p)
        )
        assert listed == sorted(layout)
        for p in H100_GEOMETRY:
            remaining = pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, p)
            greedy, trial = 0, list(layout)
            for start in H100_GEOMETRY[p][3]:
                if model_fits(trial, p, start):
                    trial.append((p, start))
                    greedy += 1
            assert remaining == greedy, (p, layout)
