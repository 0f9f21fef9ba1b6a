"""The health engine's policy and state machine, driven with a fake clock, fake probes and
synthetic events (no NVML, no thread, no sleep; one test runs the thread with a fake watcher)."""

from __future__ import annotations

import ast
import importlib.util
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest

from gpulet._core import Event
from gpulet.config import HealthPolicy
from gpulet.errors import InvalidArgumentError, NvmlError
from gpulet.health import (
    DEFAULT_XID_CLASS,
    GPU_IS_LOST,
    HEALTH_CLASSES,
    XID_CATALOG,
    GpuRef,
    HealthChange,
    HealthClass,
    HealthMonitor,
    MigRef,
    classify_event,
    classify_xid,
)

CATALOG = HealthPolicy()
NVIDIA = HealthPolicy(preset="nvidia-device-plugin")
PERIOD = 300.0

GPUS = [
    GpuRef(0, "GPU-0"),
    GpuRef(1, "GPU-1", (MigRef("MIG-1a", 1, 0), MigRef("MIG-1b", 2, 0), MigRef("MIG-1c", 2, 1))),
    GpuRef(2, "GPU-2"),
]
ALL_DEVICES = {"GPU-0", "GPU-1", "MIG-1a", "MIG-1b", "MIG-1c", "GPU-2"}


# ---- helpers -------------------------------------------------------------------------------


class FakeProbe:
    """Probes that pass unless a GPU is set to fail with an NVML code."""

    def __init__(self) -> None:
        self.failing: dict[int, int] = {}
        self.calls: list[int] = []

    def __call__(self, gpu: int) -> None:
        self.calls.append(gpu)
        code = self.failing.get(gpu)
        if code is not None:
            raise NvmlError(f"probe of GPU {gpu} failed", "nvmlDeviceGetUUID", gpu, code)


class NoClock:
    """Every call passes ``now``; reading the clock is a bug in the test."""

    def __call__(self) -> float:
        raise AssertionError("the monitor read its clock although the test gave `now`")


@dataclass
class Rig:
    monitor: HealthMonitor
    probe: FakeProbe
    changes: list[HealthChange] = field(default_factory=list)

    def healthy(self) -> set[str]:
        return {d for d, s in self.monitor.snapshot().items() if s["healthy"]}

    def unhealthy(self) -> set[str]:
        return ALL_DEVICES - self.healthy()


def rig(policy: HealthPolicy = CATALOG, **kwargs: Any) -> Rig:
    probe = FakeProbe()
    r = Rig(monitor=None, probe=probe)  # type: ignore[arg-type]
    kwargs.setdefault("recovery_period", PERIOD)
    kwargs.setdefault("probe_interval", 0.0)
    r.monitor = HealthMonitor(
        policy,
        GPUS,
        probe=probe,
        clock=NoClock(),
        on_change=lambda d, h, why: r.changes.append(HealthChange(d, h, why)),
        **kwargs,
    )
    return r


def xid(gpu: int | None, n: int, gi: int | None = None, ci: int | None = None) -> Event:
    uuid = None if gpu is None else f"GPU-{gpu}"
    return Event("xid", gpu=gpu, uuid=uuid, data=n, gpu_instance_id=gi, compute_instance_id=ci)


# ---- the policy ----------------------------------------------------------------------------

NOTABLE_XIDS = [13, 31, 32, 38, 43, 44, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95, 109]
NOTABLE_XIDS += [119, 120, 121, 140, 143, *range(144, 151), 154]


def test_the_catalog_table_covers_the_xids_that_matter() -> None:
    for n in NOTABLE_XIDS:
        info = XID_CATALOG[n]
        assert info.xid == n
        assert info.description
        assert info.mnemonic
        assert info.catalog_action
        assert info.health_class in HEALTH_CLASSES
        assert info.health_class != "permanent"  # the catalog always has a way back
    assert DEFAULT_XID_CLASS == "recoverable"


def _gpulet_imports(module: str) -> set[str]:
    """The gpulet modules ``module`` imports, read from its source."""
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            out.add(node.module)
    return {m for m in out if m.split(".")[0] == "gpulet"}


def test_the_health_layers_import_downwards_only() -> None:
    # catalog: data only; policy: reads the catalog; monitor: applies the policy (NVML only
    # through gpulet._core, imported on use).
    assert _gpulet_imports("gpulet.health.catalog") == {"gpulet.config"}
    assert _gpulet_imports("gpulet.health.policy") == {"gpulet.config", "gpulet.health.catalog"}
    assert _gpulet_imports("gpulet.health.monitor") == {
        "gpulet._core",
        "gpulet.config",
        "gpulet.errors",
        "gpulet.health.catalog",
        "gpulet.health.policy",
    }


def test_the_health_package_imports_without_grpc() -> None:
    code = (
        "import sys, gpulet.health; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (13, "ignore"),
        (31, "ignore"),
        (43, "ignore"),
        (45, "ignore"),
        (68, "ignore"),
        (94, "ignore"),  # RESTART_APP: NVIDIA's plugin marks it unhealthy
        (109, "reset-required"),  # RESET_GPU: NVIDIA's plugin ignores it
        (48, "reset-required"),
        (79, "reset-required"),
        (95, "reset-required"),
        (63, "ignore"),
        (92, "ignore"),
        (119, "reset-required"),
        (144, "recoverable"),
        (149, "reset-required"),
        (154, "ignore"),
        (999, "recoverable"),  # NVML's "unknown XID"
        (4242, "recoverable"),  # any other XID
    ],
)
def test_xid_catalog_preset(n: int, expected: HealthClass) -> None:
    assert classify_xid(n, CATALOG) == expected
    assert classify_xid(n) == expected  # the default policy is the catalog


@pytest.mark.parametrize("n", [13, 31, 43, 45, 68, 109])
def test_nvidia_preset_ignores_its_six(n: int) -> None:
    assert classify_xid(n, NVIDIA) == "ignore"


@pytest.mark.parametrize("n", [8, 48, 63, 79, 92, 94, 119, 144, 999, 4242])
def test_nvidia_preset_makes_every_other_xid_permanent(n: int) -> None:
    assert classify_xid(n, NVIDIA) == "permanent"


Preset = Literal["xid-catalog", "nvidia-device-plugin"]


@pytest.mark.parametrize(
    ("preset", "ignored", "critical", "n", "expected"),
    [
        # ignoredXIDs beat the preset
        ("xid-catalog", (48,), (), 48, "ignore"),
        ("nvidia-device-plugin", (48,), (), 48, "ignore"),
        ("xid-catalog", (144,), (), 144, "ignore"),
        ("xid-catalog", (48,), (), 109, "reset-required"),  # only the listed XIDs
        # criticalXIDs: the preset's class, or a default unhealthy class where it ignores
        ("xid-catalog", (), (94,), 94, "recoverable"),
        ("xid-catalog", (), (48,), 48, "reset-required"),
        ("xid-catalog", (), (144,), 144, "recoverable"),
        ("nvidia-device-plugin", (), (13,), 13, "permanent"),
        ("nvidia-device-plugin", (), (109,), 109, "permanent"),
        ("nvidia-device-plugin", (), (94,), 94, "permanent"),
        ("xid-catalog", (), "all", 13, "recoverable"),
        ("xid-catalog", (), "all", 109, "reset-required"),
        ("nvidia-device-plugin", (), "all", 43, "permanent"),
        # criticalXIDs beat ignoredXIDs (DP_ENABLE_HEALTHCHECKS beats DP_DISABLE_HEALTHCHECKS)
        ("xid-catalog", (48,), (48,), 48, "reset-required"),
        ("nvidia-device-plugin", (109,), (109,), 109, "permanent"),
    ],
)
def test_overrides(
    preset: Preset,
    ignored: tuple[int, ...],
    critical: tuple[int, ...] | Literal["all"],
    n: int,
    expected: HealthClass,
) -> None:
    policy = HealthPolicy(preset=preset, ignored_xids=ignored, critical_xids=critical)
    assert classify_xid(n, policy) == expected


@pytest.mark.parametrize("preset", ["xid-catalog", "nvidia-device-plugin"])
def test_disabled_ignores_everything(preset: Preset) -> None:
    policy = HealthPolicy(preset=preset, disabled=True, critical_xids="all")
    for n in (13, 48, 79, 109, 4242):
        assert classify_xid(n, policy) == "ignore"
    assert classify_event(Event("gpu-lost", gpu=0), policy)[0] == "ignore"
    assert classify_event(Event("double-bit-ecc", gpu=0), policy)[0] == "ignore"


def test_non_xid_events() -> None:
    dbe = Event("double-bit-ecc", gpu=0)
    assert classify_event(dbe, CATALOG)[0] == "reset-required"  # as XID 48
    assert classify_event(dbe, HealthPolicy(ignored_xids=(48,)))[0] == "ignore"
    assert classify_event(dbe, NVIDIA)[0] == "ignore"  # NVIDIA acts on XID events only
    kinds: tuple[Literal["single-bit-ecc", "mig-config-change", "other"], ...] = (
        "single-bit-ecc",
        "mig-config-change",
        "other",
    )
    for kind in kinds:
        for policy in (CATALOG, NVIDIA):
            assert classify_event(Event(kind, gpu=0), policy)[0] == "ignore"
    lost = Event("gpu-lost", gpu=0, detail="nvmlDeviceGetUUID on GPU 0 failed")
    cls, reason = classify_event(lost, CATALOG)
    assert cls == "reset-required"
    assert "nvmlDeviceGetUUID" in reason
    assert classify_event(lost, NVIDIA)[0] == "permanent"
    assert classify_event(xid(0, 48))[1] == "XID 48 (Double Bit ECC Error)"


# ---- recovery ------------------------------------------------------------------------------


def test_a_recoverable_xid_recovers_after_the_period_of_passing_probes() -> None:
    r = rig()
    m = r.monitor
    assert m.handle(xid(0, 144), now=0.0) == [
        HealthChange("GPU-0", False, "XID 144 (NVLink: SAW Error)")
    ]
    s = m.status("GPU-0")
    assert (s.healthy, s.health_class, s.since, s.xid, s.awaiting_reset) == (
        False,
        "recoverable",
        0.0,
        144,
        False,
    )
    assert m.step(now=0.0) == []
    assert m.status("GPU-0").recovering_since == 0.0
    assert m.step(now=PERIOD - 1) == []
    assert not m.status("GPU-0").healthy
    [change] = m.step(now=PERIOD)
    assert change.device_id == "GPU-0"
    assert change.healthy
    assert "XID 144" in change.reason
    s = m.status("GPU-0")
    assert (s.healthy, s.reason, s.health_class, s.since) == (True, "", None, None)
    assert [c.healthy for c in r.changes] == [False, True]
    assert r.unhealthy() == set()


def test_a_failing_probe_restarts_the_period() -> None:
    r = rig()
    m = r.monitor
    m.handle(xid(0, 4242), now=0.0)
    m.step(now=10.0)
    r.probe.failing[0] = 999
    m.step(now=100.0)
    assert m.status("GPU-0").recovering_since is None
    del r.probe.failing[0]
    m.step(now=150.0)
    assert m.status("GPU-0").recovering_since == 150.0
    assert m.step(now=150.0 + PERIOD - 0.5) == []
    assert not m.status("GPU-0").healthy
    assert [c.healthy for c in m.step(now=150.0 + PERIOD)] == [True]


def test_another_event_while_recovering_restarts_the_period() -> None:
    r = rig()
    m = r.monitor
    m.handle(xid(0, 144), now=0.0)
    m.step(now=0.0)
    m.handle(xid(0, 145), now=200.0)
    assert m.status("GPU-0").recovering_since is None
    assert m.status("GPU-0").since == 0.0  # unhealthy since the first event
    m.step(now=210.0)
    assert m.step(now=PERIOD + 1) == []
    assert m.step(now=210.0 + PERIOD)[0].healthy
    assert [c.healthy for c in r.changes] == [False, True]  # one transition each way


def test_a_zero_period_recovers_at_the_first_passing_probe() -> None:
    r = rig(recovery_period=0)
    r.monitor.handle(xid(2, 4242), now=5.0)
    assert r.monitor.step(now=5.0)[0] == HealthChange(
        "GPU-2", True, "recovered from XID 4242 (XID not in gpulet's catalog table)"
    )


def test_the_period_comes_from_the_policy() -> None:
    policy = HealthPolicy(recovery_period=timedelta(seconds=42))
    m = HealthMonitor(policy, GPUS, probe=FakeProbe(), clock=NoClock())
    assert m.recovery_period == 42.0
    assert HealthMonitor(CATALOG, GPUS, recovery_period=timedelta(minutes=1)).recovery_period == 60


def test_reset_required_stays_down_until_marked_reset() -> None:
    r = rig()
    m = r.monitor
    m.handle(xid(0, 48), now=0.0)
    for t in range(0, 20 * int(PERIOD), 60):
        assert m.step(now=float(t)) == []
    s = m.status("GPU-0")
    assert (s.healthy, s.health_class, s.awaiting_reset) == (False, "reset-required", True)
    assert s.recovering_since is None
    m.mark_reset("GPU-0")
    assert m.status("GPU-0").awaiting_reset is False
    m.step(now=10_000.0)
    assert m.step(now=10_000.0 + PERIOD)[0] == HealthChange(
        "GPU-0", True, "recovered from XID 48 (Double Bit ECC Error)"
    )


def test_a_failing_probe_after_a_reset_keeps_it_down() -> None:
    r = rig()
    m = r.monitor
    m.handle(xid(0, 95), now=0.0)
    m.mark_reset("GPU-0")
    r.probe.failing[0] = 999
    m.step(now=1.0)
    assert m.step(now=1.0 + 10 * PERIOD) == []
    del r.probe.failing[0]
    m.step(now=5000.0)
    assert m.step(now=5000.0 + PERIOD)[0].healthy


def test_falling_off_the_bus_marks_it_unhealthy_and_coming_back_is_a_reset() -> None:
    r = rig()
    m = r.monitor
    r.probe.failing[2] = GPU_IS_LOST
    [change] = m.step(now=0.0)
    assert change.device_id == "GPU-2"
    assert not change.healthy
    assert "fell off the bus" in change.reason
    s = m.status("GPU-2")
    assert (s.health_class, s.awaiting_reset) == ("reset-required", True)
    assert m.step(now=PERIOD * 3) == []  # still gone
    del r.probe.failing[2]
    m.step(now=1000.0)  # answers again: a reset
    s = m.status("GPU-2")
    assert (s.healthy, s.awaiting_reset, s.recovering_since) == (False, False, 1000.0)
    assert m.step(now=1000.0 + PERIOD)[0].healthy


def test_xid_79_counts_as_lost() -> None:
    r = rig()
    m = r.monitor
    m.handle(xid(0, 79), now=0.0)
    assert m.status("GPU-0").health_class == "reset-required"
    m.step(now=1.0)  # the GPU answers: it was reset (or never really went)
    assert m.step(now=1.0 + PERIOD)[0].healthy


def test_a_gpu_lost_event() -> None:
    r = rig()
    m = r.monitor
    lost = Event("gpu-lost", gpu=1, uuid="GPU-1", detail="nvmlDeviceGetUUID ... (NVML error 15)")
    m.handle(lost, now=0.0)
    assert r.unhealthy() == {"GPU-1", "MIG-1a", "MIG-1b", "MIG-1c"}
    m.step(now=1.0)
    assert {c.device_id for c in m.step(now=1.0 + PERIOD)} == {
        "GPU-1",
        "MIG-1a",
        "MIG-1b",
        "MIG-1c",
    }


def test_other_probe_failures_do_not_mark_a_healthy_gpu() -> None:
    r = rig()
    r.probe.failing[0] = 999
    assert r.monitor.step(now=0.0) == []
    assert r.unhealthy() == set()


def test_escalation_and_no_downgrade() -> None:
    r = rig()
    m = r.monitor
    m.handle(xid(0, 144), now=0.0)
    m.handle(xid(0, 48), now=1.0)
    s = m.status("GPU-0")
    assert (s.health_class, s.xid, s.since) == ("reset-required", 48, 0.0)
    m.handle(xid(0, 144), now=2.0)
    assert m.status("GPU-0").health_class == "reset-required"
    m.mark_reset("GPU-0")
    m.handle(xid(0, 64), now=3.0)  # a new reset-required XID after the reset: reset again
    assert m.status("GPU-0").awaiting_reset
    m.step(now=4.0)
    assert m.step(now=4.0 + PERIOD) == []


# ---- the NVIDIA preset ---------------------------------------------------------------------


def test_the_nvidia_preset_never_recovers() -> None:
    r = rig(NVIDIA, recovery_period=0)
    m = r.monitor
    m.handle(xid(0, 94), now=0.0)
    m.handle(xid(1, 109), now=0.0)  # ignored there
    assert r.unhealthy() == {"GPU-0"}
    assert m.status("GPU-0").health_class == "permanent"
    for t in range(100):
        assert m.step(now=float(t)) == []
    r.probe.failing[0] = GPU_IS_LOST  # lost and back: still no recovery
    m.step(now=200.0)
    del r.probe.failing[0]
    assert m.step(now=201.0) == []
    assert m.status("GPU-0").awaiting_reset
    m.mark_reset("GPU-0")  # an operator's word (NVIDIA's: restart the plugin)
    assert m.step(now=300.0)[0].healthy


def test_the_nvidia_preset_on_a_lost_gpu() -> None:
    r = rig(NVIDIA, recovery_period=0)
    r.probe.failing[2] = GPU_IS_LOST
    r.monitor.step(now=0.0)
    assert r.monitor.status("GPU-2").health_class == "permanent"
    del r.probe.failing[2]
    assert r.monitor.step(now=1.0) == []


# ---- MIG -----------------------------------------------------------------------------------


def test_a_mig_attributed_xid_marks_only_that_mig_device() -> None:
    r = rig()
    m = r.monitor
    m.handle(xid(1, 48, gi=2, ci=0), now=0.0)
    assert r.unhealthy() == {"MIG-1b"}
    s = m.status("MIG-1b")
    assert (s.mig, s.gpu, s.gpu_uuid) == (True, 1, "GPU-1")


def test_a_gpu_instance_without_compute_instance_marks_its_compute_instances() -> None:
    r = rig()
    r.monitor.handle(xid(1, 48, gi=2), now=0.0)
    assert r.unhealthy() == {"MIG-1b", "MIG-1c"}


def test_an_unknown_instance_marks_the_whole_gpu() -> None:
    r = rig()
    r.monitor.handle(xid(1, 48, gi=7, ci=0), now=0.0)
    assert r.unhealthy() == {"GPU-1", "MIG-1a", "MIG-1b", "MIG-1c"}


def test_a_gpu_xid_marks_the_gpu_and_all_its_mig_devices() -> None:
    r = rig()
    r.monitor.handle(xid(1, 48), now=0.0)
    assert r.unhealthy() == {"GPU-1", "MIG-1a", "MIG-1b", "MIG-1c"}
    r.monitor.mark_reset("GPU-1")  # covers its MIG devices
    r.monitor.step(now=1.0)
    assert {c.device_id for c in r.monitor.step(now=1.0 + PERIOD)} == {
        "GPU-1",
        "MIG-1a",
        "MIG-1b",
        "MIG-1c",
    }


def test_a_mig_device_recovers_on_its_own() -> None:
    r = rig()
    m = r.monitor
    m.handle(xid(1, 48, gi=1, ci=0), now=0.0)
    m.handle(xid(1, 144, gi=2, ci=1), now=0.0)
    m.step(now=0.0)
    assert [c.device_id for c in m.step(now=PERIOD)] == ["MIG-1c"]
    assert r.unhealthy() == {"MIG-1a"}
    m.mark_reset("MIG-1a")
    m.step(now=PERIOD + 1)
    assert [c.device_id for c in m.step(now=2 * PERIOD + 1)] == ["MIG-1a"]


def test_new_mig_devices_inherit_an_unhealthy_gpu() -> None:
    r = rig()
    m = r.monitor
    m.handle(xid(1, 48), now=0.0)
    gpus = [GPUS[0], GpuRef(1, "GPU-1", (MigRef("MIG-1a", 1, 0), MigRef("MIG-new", 3, 0))), GPUS[2]]
    m.set_gpus(gpus)
    snap = m.snapshot()
    assert set(snap) == {"GPU-0", "GPU-1", "MIG-1a", "MIG-new", "GPU-2"}
    assert not snap["MIG-new"]["healthy"]
    assert snap["MIG-new"]["health_class"] == "reset-required"
    m.set_gpus([GPUS[0]])
    assert set(m.snapshot()) == {"GPU-0"}
    with pytest.raises(KeyError):
        m.status("GPU-1")
    with pytest.raises(ValueError, match="listed twice"):
        m.set_gpus([GPUS[0], GpuRef(0, "GPU-x")])


# ---- events nobody can place, disabled checks ----------------------------------------------


def test_an_event_nobody_can_place_marks_every_device() -> None:
    r = rig()
    r.monitor.handle(xid(None, 48), now=0.0)
    assert r.unhealthy() == ALL_DEVICES


def test_an_event_by_uuid_only() -> None:
    r = rig()
    r.monitor.handle(Event("xid", uuid="GPU-2", data=48), now=0.0)
    assert r.unhealthy() == {"GPU-2"}


def test_an_event_for_a_gpu_outside_the_inventory_is_ignored() -> None:
    r = rig()
    assert r.monitor.handle(xid(7, 48), now=0.0) == []
    assert r.unhealthy() == set()


def test_ignored_events_change_nothing() -> None:
    r = rig()
    for n in (13, 31, 43, 45, 68, 94):
        assert r.monitor.handle(xid(0, n), now=0.0) == []
    assert r.monitor.handle(Event("single-bit-ecc", gpu=0), now=0.0) == []
    assert r.changes == []


def test_mig_config_changes_reach_their_callback() -> None:
    seen: list[str] = []
    m = HealthMonitor(CATALOG, GPUS, probe=FakeProbe(), clock=NoClock(), on_mig_change=seen.append)
    m.handle(Event("mig-config-change", gpu=1, uuid="GPU-1"), now=0.0)
    assert seen == ["GPU-1"]


def test_disabled_checks_do_nothing() -> None:
    r = rig(HealthPolicy(disabled=True, critical_xids="all"))
    r.probe.failing[0] = GPU_IS_LOST
    assert r.monitor.handle(xid(0, 48), now=0.0) == []
    assert r.monitor.step(now=0.0) == []
    assert r.monitor.wait_failed("boom", now=0.0) == []
    assert r.probe.calls == []
    assert r.unhealthy() == set()
    r.monitor.start()  # no thread, no watcher
    r.monitor.stop()


# ---- event-wait failures -------------------------------------------------------------------


def test_wait_failures_are_retried_before_marking_everything() -> None:
    r = rig(wait_failure_threshold=3)
    m = r.monitor
    assert m.wait_failed("Unknown Error", now=0.0) == []
    assert m.wait_failed("Unknown Error", now=1.0) == []
    assert m.watching
    changes = m.wait_failed("Unknown Error", now=2.0)
    assert {c.device_id for c in changes} == ALL_DEVICES
    assert not m.watching
    assert m.last_wait_error == "Unknown Error"
    s = m.status("GPU-0")
    assert (s.health_class, s.reason) == ("recoverable", "NVML event wait failing: Unknown Error")
    # Blind: passing probes do not bring anything back.
    m.step(now=3.0)
    assert m.step(now=3.0 + 10 * PERIOD) == []
    m.wait_ok(now=4000.0)
    assert m.watching
    m.step(now=4000.0)
    assert {c.device_id for c in m.step(now=4000.0 + PERIOD)} == ALL_DEVICES


def test_a_working_wait_resets_the_failure_count() -> None:
    r = rig(wait_failure_threshold=2)
    r.monitor.wait_failed("x", now=0.0)
    r.monitor.wait_ok(now=1.0)
    assert r.monitor.wait_failed("x", now=2.0) == []


def test_threshold_one_is_nvidias_behaviour() -> None:
    r = rig(NVIDIA, wait_failure_threshold=1)
    changes = r.monitor.wait_failed("Unknown Error", now=0.0)
    assert {c.device_id for c in changes} == ALL_DEVICES
    assert r.monitor.status("GPU-2").health_class == "permanent"
    r.monitor.wait_ok(now=1.0)
    r.monitor.step(now=1.0)
    assert r.monitor.step(now=1.0 + PERIOD) == []


# ---- bookkeeping ---------------------------------------------------------------------------


def test_probes_run_every_probe_interval() -> None:
    r = rig(probe_interval=5.0)
    m = r.monitor
    m.step(now=0.0)
    assert sorted(r.probe.calls) == [0, 1, 2]  # each GPU once, MIG devices through their GPU
    m.step(now=4.9)
    assert len(r.probe.calls) == 3
    m.step(now=5.0)
    assert len(r.probe.calls) == 6
    m.handle(xid(0, 48), now=6.0)
    m.mark_reset("GPU-0")  # probes at the next step, whatever the interval
    m.step(now=6.0)
    assert len(r.probe.calls) == 9


def test_snapshot_and_monitored() -> None:
    @dataclass
    class Reg:
        gpu: int
        status: str

    r = rig()
    r.monitor.update_registrations([Reg(0, "registered"), Reg(1, "not-supported"), Reg(2, "lost")])
    snap = r.monitor.snapshot()
    assert set(snap) == ALL_DEVICES
    assert snap["GPU-0"]["monitored"]
    assert not snap["MIG-1a"]["monitored"]
    assert not r.monitor.status("GPU-2").monitored
    assert set(snap["GPU-0"]) == {
        "device_id",
        "gpu",
        "gpu_uuid",
        "mig",
        "healthy",
        "reason",
        "health_class",
        "since",
        "xid",
        "recovering_since",
        "awaiting_reset",
        "monitored",
    }
    with pytest.raises(KeyError):
        r.monitor.mark_reset("GPU-nope")


def test_a_failing_callback_does_not_stop_the_engine() -> None:
    def boom(device: str, healthy: bool, reason: str) -> None:
        raise RuntimeError("callback bug")

    m = HealthMonitor(CATALOG, GPUS, probe=FakeProbe(), clock=NoClock(), on_change=boom)
    assert len(m.handle(xid(0, 48), now=0.0)) == 1
    assert not m.status("GPU-0").healthy


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="wait_timeout"):
        HealthMonitor(CATALOG, GPUS, wait_timeout=0)
    with pytest.raises(ValueError, match="probe_interval"):
        HealthMonitor(CATALOG, GPUS, probe_interval=-1)
    with pytest.raises(ValueError, match="wait_failure_threshold"):
        HealthMonitor(CATALOG, GPUS, wait_failure_threshold=0)
    with pytest.raises(ValueError, match="recovery_period"):
        HealthMonitor(CATALOG, GPUS, recovery_period=-1)


def test_events_from_python() -> None:
    e = Event("xid", gpu=3, uuid="GPU-3", data=48, gpu_instance_id=2, timestamp=12.5)
    assert (e.kind, e.gpu, e.uuid, e.data, e.xid) == ("xid", 3, "GPU-3", 48, 48)
    assert (e.gpu_instance_id, e.compute_instance_id, e.timestamp) == (2, None, 12.5)
    assert e.event_type == 0x8
    assert e == Event("xid", gpu=3, uuid="GPU-3", data=48, gpu_instance_id=2, timestamp=12.5)
    assert Event("double-bit-ecc").xid is None
    assert Event("gpu-lost").event_type == 0
    assert "kind='xid'" in repr(e) or 'kind="xid"' in repr(e)
    with pytest.raises(InvalidArgumentError, match="unknown event kind"):
        Event("boom")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="timestamp"):
        Event("xid", timestamp=-1.0)


# ---- the thread, with a fake watcher -------------------------------------------------------


class QueueWatcher:
    """A watcher whose wait blocks on a queue (as NVML's blocks on the driver)."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event | NvmlError] = queue.Queue()
        self.closed = False

    def wait(self, timeout_ms: int) -> Sequence[Event]:
        try:
            item = self.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            return []
        if isinstance(item, NvmlError):
            raise item
        return [item]

    def close(self) -> None:
        self.closed = True

    def registrations(self) -> Sequence[Any]:
        return []


def test_the_thread_reports_events_and_recovery() -> None:
    watcher = QueueWatcher()
    seen: dict[tuple[str, bool], threading.Event] = {
        ("GPU-0", False): threading.Event(),
        ("GPU-0", True): threading.Event(),
    }

    def on_change(device: str, healthy: bool, reason: str) -> None:
        if (device, healthy) in seen:
            seen[(device, healthy)].set()

    m = HealthMonitor(
        CATALOG,
        GPUS,
        watcher=lambda: watcher,
        probe=FakeProbe(),
        on_change=on_change,
        wait_timeout=0.05,
        probe_interval=0.0,
        recovery_period=0.0,
    )
    with m:
        watcher.events.put(xid(0, 144))
        assert seen[("GPU-0", False)].wait(30)
        assert seen[("GPU-0", True)].wait(30)
    assert watcher.closed


def test_the_thread_survives_wait_failures() -> None:
    watcher = QueueWatcher()
    unhealthy = threading.Event()
    m = HealthMonitor(
        CATALOG,
        GPUS,
        watcher=lambda: watcher,
        probe=FakeProbe(),
        on_change=lambda d, h, why: unhealthy.set() if not h else None,
        wait_timeout=0.05,
        wait_failure_threshold=1,
    )
    with m:
        watcher.events.put(NvmlError("wait failed", "nvmlEventSetWait_v2", None, 999))
        assert unhealthy.wait(30)
    assert "wait failed" in (m.last_wait_error or "")
