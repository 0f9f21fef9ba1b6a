"""NVML events, re-probes and the health monitor against the fake libnvidia-ml.so.1 (the real
NVML ABI), with faults injected through the fake's control interface.

Synchronisation is by blocking NVML waits and conditions with generous limits, never by
sleeping; no test asserts how long anything took.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import gpulet
from gpulet import sim
from gpulet._core import Event, EventWatcher, probe
from gpulet.config import HealthPolicy
from gpulet.errors import InvalidArgumentError, NvmlError
from gpulet.health import GPU_IS_LOST, HealthChange, HealthMonitor

pytestmark = pytest.mark.usefixtures("fake_library")

LIMIT = 30.0  # seconds: generous upper bounds for things that happen in milliseconds
XID, DBE, SBE, MIG_CHANGE = 0x8, 0x2, 0x1, 0x100
NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_UNKNOWN = 3, 999


@pytest.fixture
def h100() -> Iterator[sim.Simulation]:
    with gpulet.simulated("dgx-h100") as s:
        yield s


@pytest.fixture
def h200() -> Iterator[sim.Simulation]:
    with gpulet.simulated("hgx-h200") as s:
        yield s


def next_events(watcher: EventWatcher, match: Callable[[Event], bool]) -> list[Event]:
    """Wait (blocking in NVML) until an event matching ``match`` arrives; every event seen."""
    seen: list[Event] = []
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        seen += watcher.wait(500)
        if any(match(e) for e in seen):
            return seen
    raise AssertionError(f"no matching event within {LIMIT} s; saw {seen}")


# ---- the watcher ---------------------------------------------------------------------------


def test_every_gpu_is_registered(h100: sim.Simulation) -> None:
    node = gpulet.discover()
    with EventWatcher() as w:
        regs = w.registrations()
    assert [r.gpu for r in regs] == list(range(8))
    assert [r.uuid for r in regs] == [g.uuid for g in node.gpus]
    for r in regs:
        assert (r.status, r.mask, r.error) == ("registered", XID | DBE | SBE | MIG_CHANGE, None)
    assert w.closed


def test_a_gpu_without_mig_gets_no_mig_events() -> None:
    with gpulet.simulated("single-t4"), EventWatcher() as w:
        [reg] = w.registrations()
    assert (reg.status, reg.mask) == ("registered", XID | DBE | SBE)


def test_an_injected_xid_arrives_with_its_gpu(h100: sim.Simulation) -> None:
    node = gpulet.discover()
    with EventWatcher() as w:
        h100.control.inject_xid(3, 48)
        events = next_events(w, lambda e: e.kind == "xid")
    [e] = events
    assert (e.kind, e.event_type, e.gpu, e.uuid, e.data, e.xid) == (
        "xid",
        XID,
        3,
        node.gpus[3].uuid,
        48,
        48,
    )
    assert (e.gpu_instance_id, e.compute_instance_id) == (None, None)
    assert e.timestamp > 0


def test_the_watcher_can_watch_some_gpus(h100: sim.Simulation) -> None:
    with EventWatcher(gpus=[5, 2]) as w:
        assert [r.gpu for r in w.registrations()] == [5, 2]
        h100.control.inject_xid(0, 48)  # not watched
        h100.control.inject_xid(5, 31)
        events = next_events(w, lambda e: e.gpu == 5)
    assert [(e.gpu, e.data) for e in events] == [(5, 31)]
    with pytest.raises(InvalidArgumentError, match="gpu 8 does not exist"):
        EventWatcher(gpus=[8])


def test_a_mig_attributed_xid_carries_its_instances(h200: sim.Simulation) -> None:
    mig = gpulet.discover().gpus[7].mig_devices[0]
    with EventWatcher() as w:
        h200.control.inject_xid(7, 94, mig.gpu_instance_id, mig.compute_instance_id)
        [e] = next_events(w, lambda e: e.kind == "xid")
    assert (e.gpu, e.data, e.gpu_instance_id, e.compute_instance_id) == (
        7,
        94,
        mig.gpu_instance_id,
        mig.compute_instance_id,
    )


def test_ecc_and_mig_change_events(h100: sim.Simulation) -> None:
    with EventWatcher() as w:
        h100.control.inject_event(1, DBE)
        h100.control.inject_event(1, SBE)
        h100.control.inject_event(1, MIG_CHANGE)
        events = next_events(w, lambda e: e.kind == "mig-config-change")
    assert [e.kind for e in events] == ["double-bit-ecc", "single-bit-ecc", "mig-config-change"]
    assert {e.gpu for e in events} == {1}


def test_falling_off_the_bus(h100: sim.Simulation) -> None:
    with EventWatcher() as w:
        h100.control.fall_off_bus(2)
        [e] = next_events(w, lambda e: e.kind == "xid")
    assert (e.gpu, e.xid) == (2, 79)
    with pytest.raises(NvmlError) as info:
        probe(2)
    assert (info.value.code, info.value.gpu) == (GPU_IS_LOST, 2)
    probe(1)  # the others are fine
    h100.control.restore_gpu(2)
    probe(2)


def test_a_gpu_lost_at_start_is_an_event(h100: sim.Simulation) -> None:
    h100.control.fall_off_bus(1)
    with EventWatcher() as w:
        reg = w.registrations()[1]
        assert (reg.status, reg.mask) == ("lost", 0)
        assert "NVML error 15" in (reg.error or "")
        [e] = w.wait(int(LIMIT * 1000))  # queued: returned at once
        assert (e.kind, e.gpu, e.event_type) == ("gpu-lost", 1, 0)
        assert "NVML error 15" in (e.detail or "")
        h100.control.restore_gpu(1)
        again = w.rearm(1)
        assert (again.status, again.uuid) == ("registered", gpulet.discover().gpus[1].uuid)
        h100.control.inject_xid(1, 13)
        [e] = next_events(w, lambda e: e.kind == "xid")
        assert (e.gpu, e.xid) == (1, 13)


def test_registration_failures_are_reported_not_raised(h100: sim.Simulation) -> None:
    h100.control.fail("nvmlDeviceRegisterEvents", NVML_ERROR_NOT_SUPPORTED, gpu=1)
    h100.control.fail("nvmlDeviceRegisterEvents", NVML_ERROR_UNKNOWN, gpu=2)
    with EventWatcher() as w:
        regs = w.registrations()
        assert [r.status for r in regs[:4]] == [
            "registered",
            "not-supported",
            "failed",
            "registered",
        ]
        assert "nvmlDeviceRegisterEvents on GPU 2 failed" in (regs[2].error or "")
        h100.control.inject_xid(0, 13)
        [e] = next_events(w, lambda e: e.kind == "xid")
        assert e.gpu == 0
        h100.control.clear_faults()
        assert w.rearm(2).status == "registered"


def test_a_failed_wait_raises_and_the_next_works(h100: sim.Simulation) -> None:
    h100.control.fail("nvmlEventSetWait", NVML_ERROR_UNKNOWN, times=1)
    with EventWatcher() as w:
        with pytest.raises(NvmlError) as info:
            w.wait(1000)
        assert (info.value.call, info.value.code) == ("nvmlEventSetWait_v2", NVML_ERROR_UNKNOWN)
        assert w.wait(10) == []


def test_a_closed_watcher(h100: sim.Simulation) -> None:
    w = EventWatcher()
    assert not w.closed
    assert "registered=8" in repr(w)
    w.close()
    w.close()
    assert w.closed
    with pytest.raises(InvalidArgumentError, match="closed"):
        w.wait(10)
    with pytest.raises(InvalidArgumentError, match="closed"):
        w.rearm(0)


def test_probe(h100: sim.Simulation) -> None:
    probe(0)
    h100.control.fail("nvmlDeviceGetTemperature", NVML_ERROR_NOT_SUPPORTED, gpu=0)
    probe(0)  # a reading the GPU does not support is not a failure
    h100.control.fail("nvmlDeviceGetMemoryInfo", NVML_ERROR_UNKNOWN, gpu=0)
    with pytest.raises(NvmlError) as info:
        probe(0)
    assert info.value.call.startswith("nvmlDeviceGetMemoryInfo")
    assert info.value.code == NVML_ERROR_UNKNOWN
    probe(1)
    with pytest.raises(InvalidArgumentError, match="gpu 8 does not exist"):
        probe(8)


# ---- the monitor ---------------------------------------------------------------------------


class Recorder:
    """on_change that lets a test wait for a transition."""

    def __init__(self) -> None:
        self.changes: list[HealthChange] = []
        self._cond = threading.Condition()

    def __call__(self, device: str, healthy: bool, reason: str) -> None:
        with self._cond:
            self.changes.append(HealthChange(device, healthy, reason))
            self._cond.notify_all()

    def wait_for(self, device: str, healthy: bool, after: int = 0) -> int:
        """Index of the first change of ``device`` to ``healthy`` at or after ``after``."""

        def found() -> int | None:
            for i, c in enumerate(self.changes[after:], start=after):
                if c.device_id == device and c.healthy == healthy:
                    return i
            return None

        with self._cond:
            assert self._cond.wait_for(lambda: found() is not None, timeout=LIMIT), (
                f"{device} did not turn {'healthy' if healthy else 'unhealthy'}: {self.changes}"
            )
            index = found()
            assert index is not None
            return index


class CountingProbe:
    """gpulet._core.probe, counting probe rounds (of GPU 0) so a test can wait for some."""

    def __init__(self) -> None:
        self.rounds = 0
        self._cond = threading.Condition()

    def __call__(self, gpu: int) -> None:
        try:
            probe(gpu)
        finally:
            if gpu == 0:
                with self._cond:
                    self.rounds += 1
                    self._cond.notify_all()

    def wait_rounds(self, n: int) -> None:
        with self._cond:
            target = self.rounds + n
            assert self._cond.wait_for(lambda: self.rounds >= target, timeout=LIMIT)


def monitor(policy: HealthPolicy, recorder: Recorder, **kwargs: Any) -> HealthMonitor:
    kwargs.setdefault("recovery_period", 0.2)
    return HealthMonitor(
        policy,
        gpulet.discover(),
        on_change=recorder,
        wait_timeout=0.1,
        probe_interval=0.05,
        **kwargs,
    )


def test_the_monitor_reports_an_xid_and_recovers(h100: sim.Simulation) -> None:
    uuid = gpulet.discover().gpus[0].uuid
    rec = Recorder()
    with monitor(HealthPolicy(), rec) as m:
        assert all(s["monitored"] for s in m.snapshot().values())
        h100.control.inject_xid(0, 144)  # recoverable
        down = rec.wait_for(uuid, healthy=False)
        assert rec.changes[down].reason == "XID 144 (NVLink: SAW Error)"
        rec.wait_for(uuid, healthy=True, after=down)
        assert m.status(uuid).healthy
    assert [c.device_id for c in rec.changes] == [uuid, uuid]


def test_a_failing_probe_holds_recovery_back(h100: sim.Simulation) -> None:
    uuid = gpulet.discover().gpus[0].uuid
    rec, counting = Recorder(), CountingProbe()
    with monitor(HealthPolicy(), rec, probe=counting, recovery_period=0) as m:
        h100.control.fail("nvmlDeviceGetMemoryInfo", NVML_ERROR_UNKNOWN, gpu=0)
        h100.control.inject_xid(0, 4242)  # not in the table: recoverable
        down = rec.wait_for(uuid, healthy=False)
        counting.wait_rounds(3)
        assert not m.status(uuid).healthy  # a zero period, yet the probe fails
        h100.control.clear_faults()
        rec.wait_for(uuid, healthy=True, after=down)


def test_reset_required_waits_for_mark_reset(h100: sim.Simulation) -> None:
    uuid = gpulet.discover().gpus[0].uuid
    rec, counting = Recorder(), CountingProbe()
    with monitor(HealthPolicy(), rec, probe=counting, recovery_period=0) as m:
        h100.control.inject_xid(0, 48)
        down = rec.wait_for(uuid, healthy=False)
        counting.wait_rounds(3)  # probes pass, but nobody reset the GPU
        s = m.status(uuid)
        assert (s.healthy, s.health_class, s.awaiting_reset) == (False, "reset-required", True)
        m.mark_reset(uuid)
        rec.wait_for(uuid, healthy=True, after=down)


def test_fall_off_the_bus_and_back(h100: sim.Simulation) -> None:
    uuid = gpulet.discover().gpus[1].uuid
    rec = Recorder()
    with monitor(HealthPolicy(), rec) as m:
        h100.control.fall_off_bus(1)
        down = rec.wait_for(uuid, healthy=False)
        assert m.status(uuid).health_class == "reset-required"
        h100.control.restore_gpu(1)  # it answers again: counted as a reset
        rec.wait_for(uuid, healthy=True, after=down)


def test_restore_and_mark_reset(h100: sim.Simulation) -> None:
    uuid = gpulet.discover().gpus[1].uuid
    rec = Recorder()
    with monitor(HealthPolicy(), rec) as m:
        h100.control.fall_off_bus(1)
        down = rec.wait_for(uuid, healthy=False)
        h100.control.restore_gpu(1)
        m.mark_reset(uuid)
        rec.wait_for(uuid, healthy=True, after=down)


def test_the_nvidia_preset_never_recovers(h100: sim.Simulation) -> None:
    node = gpulet.discover()
    uuid = node.gpus[0].uuid
    rec, counting = Recorder(), CountingProbe()
    policy = HealthPolicy(preset="nvidia-device-plugin")
    with monitor(policy, rec, probe=counting, recovery_period=0) as m:
        h100.control.inject_xid(0, 109)  # ignored by NVIDIA's list
        h100.control.inject_xid(0, 94)
        rec.wait_for(uuid, healthy=False)
        h100.control.fall_off_bus(0)
        counting.wait_rounds(2)
        h100.control.restore_gpu(0)
        counting.wait_rounds(3)
        s = m.status(uuid)
        assert (s.healthy, s.health_class, s.xid) == (False, "permanent", 94)
    assert [(c.device_id, c.healthy) for c in rec.changes] == [(uuid, False)]


def test_a_mig_attributed_xid_marks_one_mig_device(h200: sim.Simulation) -> None:
    gpu = gpulet.discover().gpus[7]
    hit, other = gpu.mig_devices
    rec = Recorder()
    with monitor(HealthPolicy(), rec) as m:
        h200.control.inject_xid(7, 48, hit.gpu_instance_id, hit.compute_instance_id)
        rec.wait_for(hit.uuid, healthy=False)
        h200.control.inject_xid(6, 48)  # a sentinel: events arrive in order
        rec.wait_for(gpulet.discover().gpus[6].uuid, healthy=False)
        snap = m.snapshot()
        assert not snap[hit.uuid]["healthy"]
        assert snap[other.uuid]["healthy"]
        assert snap[gpu.uuid]["healthy"]
