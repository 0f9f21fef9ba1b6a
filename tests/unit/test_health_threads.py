"""The health monitor's threads against NVML calls that hang: fake probes and fake watchers that
block on a ``threading.Event`` the test sets only at its end.

Nothing here sleeps to let time pass, and nothing asserts how long anything took: every wait is
for a condition, with a generous limit, and "stop() returned" is checked while the hung call is
demonstrably still hung.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from gpulet._core import Event
from gpulet.config import HealthPolicy
from gpulet.errors import NvmlError
from gpulet.health import GPU_IS_LOST, GpuRef, HealthChange, HealthMonitor, MigRef

LIMIT = 30.0  # seconds: a generous bound for things that take milliseconds
CATALOG = HealthPolicy()
GPUS = [
    GpuRef(0, "GPU-0"),
    GpuRef(1, "GPU-1", (MigRef("MIG-1a", 1, 0),)),
    GpuRef(2, "GPU-2"),
]


# ---- helpers -------------------------------------------------------------------------------


class Waitable:
    """State other threads change, with a condition a test can wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_until(self, what: str, check: Callable[[], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(check, timeout=LIMIT), f"{what} within {LIMIT} s"


class Probes(Waitable):
    """A probe: passes, fails with an NVML code, or hangs (until released) for chosen GPUs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[int, int] = {}
        self.hung: set[int] = set()  # GPUs whose next probe hangs
        self.inside: set[int] = set()  # GPUs whose probe is hanging now
        self.failing: dict[int, int] = {}
        self.release = threading.Event()

    def __call__(self, gpu: int) -> None:
        with self._cond:
            self.calls[gpu] = self.calls.get(gpu, 0) + 1
            hang = gpu in self.hung
            if hang:
                self.hung.discard(gpu)
                self.inside.add(gpu)
            self._cond.notify_all()
        if hang:
            self.release.wait()
            with self._cond:
                self.inside.discard(gpu)
                self._cond.notify_all()
        code = self.failing.get(gpu)
        if code is not None:
            raise NvmlError(f"probe of GPU {gpu} failed", "nvmlDeviceGetUUID", gpu, code)

    def count(self, gpu: int) -> int:
        with self._cond:
            return self.calls.get(gpu, 0)

    def wait_calls(self, gpu: int, n: int) -> None:
        self.wait_until(f"{n} probes of GPU {gpu}", lambda: self.calls.get(gpu, 0) >= n)

    def wait_inside(self, gpu: int) -> None:
        self.wait_until(f"a hanging probe of GPU {gpu}", lambda: gpu in self.inside)


class Changes(Waitable):
    """on_change, recording the transitions."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[HealthChange] = []

    def __call__(self, device: str, healthy: bool, reason: str) -> None:
        with self._cond:
            self.changes.append(HealthChange(device, healthy, reason))
            self._cond.notify_all()

    def find(self, device: str, healthy: bool) -> HealthChange | None:
        with self._cond:
            return next(
                (c for c in self.changes if c.device_id == device and c.healthy == healthy), None
            )

    def wait_for(self, device: str, healthy: bool) -> HealthChange:
        state = "healthy" if healthy else "unhealthy"
        self.wait_until(f"{device} {state}", lambda: self.find(device, healthy) is not None)
        change = self.find(device, healthy)
        assert change is not None
        return change


class QueueWatcher:
    """A watcher whose wait blocks on a queue, as NVML's blocks on the driver."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.closed = threading.Event()

    def wait(self, timeout_ms: int) -> Sequence[Event]:
        try:
            return [self.events.get(timeout=timeout_ms / 1000)]
        except queue.Empty:
            return []

    def close(self) -> None:
        self.closed.set()

    def registrations(self) -> Sequence[Any]:
        return []


class HungWatcher(QueueWatcher):
    """A watcher whose wait never returns until released (nvmlEventSetWait stuck)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release
        self.waiting = threading.Event()

    def wait(self, timeout_ms: int) -> Sequence[Event]:
        self.waiting.set()
        self.release.wait()
        return []


class ManualClock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def xid(gpu: int, n: int) -> Event:
    return Event("xid", gpu=gpu, uuid=f"GPU-{gpu}", data=n)


def stop_bounded(m: HealthMonitor) -> None:
    """Stop ``m`` from another thread; fail (instead of hanging the suite) if it does not
    return within LIMIT."""
    t = threading.Thread(target=m.stop, name="test-stop", daemon=True)
    t.start()
    t.join(LIMIT)
    assert not t.is_alive(), f"stop() has not returned within {LIMIT} s"


def thread_alive(name: str) -> bool:
    return any(t.name == name and t.is_alive() for t in threading.enumerate())


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test: lets every hung fake call return."""
    event = threading.Event()
    yield event
    event.set()


def monitor(probes: Probes, changes: Changes, **kwargs: Any) -> HealthMonitor:
    kwargs.setdefault("watcher", QueueWatcher)
    kwargs.setdefault("wait_timeout", 0.05)
    kwargs.setdefault("probe_interval", 0.0)
    kwargs.setdefault("recovery_period", 0.0)
    kwargs.setdefault("probe_timeout", 0.2)
    return HealthMonitor(CATALOG, GPUS, probe=probes, on_change=changes, **kwargs)


# ---- a hung probe ----------------------------------------------------------------------------


def test_a_hung_probe_holds_back_neither_events_nor_other_gpus(release: threading.Event) -> None:
    probes, changes, watcher = Probes(), Changes(), QueueWatcher()
    probes.release = release
    probes.hung.add(1)
    m = monitor(probes, changes, watcher=lambda: watcher)
    m.start()
    try:
        probes.wait_inside(1)
        before = probes.count(2)
        watcher.events.put(xid(0, 48))
        down = changes.wait_for("GPU-0", healthy=False)
        assert down.reason == "XID 48 (Double Bit ECC Error)"
        probes.wait_calls(2, before + 3)  # the other GPUs go on being probed
        probes.wait_calls(0, 3)
        assert probes.count(1) == 1  # never a second probe while the first has not returned
        assert 1 in probes.inside
    finally:
        stop_bounded(m)
    # stop() returned while the probe is still hung; the worker is left behind.
    assert 1 in probes.inside
    assert thread_alive("gpulet-health-probe-1")
    assert watcher.closed.is_set()


def test_a_probe_past_probe_timeout_fails_its_gpu_by_the_monitors_clock(
    release: threading.Event,
) -> None:
    probes, changes, clock = Probes(), Changes(), ManualClock()
    probes.release = release
    probes.hung.add(1)
    m = monitor(probes, changes, clock=clock, probe_timeout=5.0)
    m.start()
    try:
        probes.wait_inside(1)
        for _ in range(4):
            clock.advance(1.0)
            # Two more probes of each other GPU: every probe they started earlier has returned.
            probes.wait_calls(0, probes.count(0) + 2)
            probes.wait_calls(2, probes.count(2) + 2)
        # 4 s on the monitor's clock: not overdue yet, however long the wall clock took.
        assert all(s["healthy"] for s in m.snapshot().values())
        clock.advance(1.0)
        down = changes.wait_for("GPU-1", healthy=False)
        assert down.reason == "NVML probe of GPU 1 has not returned after 5s"
        changes.wait_for("MIG-1a", healthy=False)
        s = m.status("GPU-1")
        assert (s.health_class, s.since, s.awaiting_reset) == ("recoverable", 5.0, False)
        assert m.status("GPU-0").healthy
        assert m.status("GPU-2").healthy
    finally:
        stop_bounded(m)


def test_a_hung_probe_that_returns_passing_recovers_by_the_usual_rules(
    release: threading.Event,
) -> None:
    probes, changes = Probes(), Changes()
    probes.release = release
    probes.hung.add(1)
    m = monitor(probes, changes)
    m.start()
    try:
        changes.wait_for("GPU-1", healthy=False)
        release.set()  # the probe returns, passing; recovery_period 0: healthy at once
        up = changes.wait_for("GPU-1", healthy=True)
        assert up.reason == "recovered from NVML probe of GPU 1 has not returned after 0.2s"
        changes.wait_for("MIG-1a", healthy=True)
        probes.wait_calls(1, 3)  # probed again once the first probe returned
    finally:
        stop_bounded(m)


def test_a_hung_probe_returning_a_failure_keeps_the_gpu_down(release: threading.Event) -> None:
    probes, changes = Probes(), Changes()
    probes.release = release
    probes.hung.add(1)
    probes.failing[1] = 999
    m = monitor(probes, changes)
    m.start()
    try:
        changes.wait_for("GPU-1", healthy=False)
        release.set()
        probes.wait_calls(1, 3)
        assert not m.status("GPU-1").healthy
        del probes.failing[1]
        changes.wait_for("GPU-1", healthy=True)
    finally:
        stop_bounded(m)


def test_a_restart_does_not_probe_a_gpu_whose_probe_still_hangs(release: threading.Event) -> None:
    probes, changes = Probes(), Changes()
    probes.release = release
    probes.hung.add(1)
    m = monitor(probes, changes)
    m.start()
    probes.wait_inside(1)
    stop_bounded(m)
    m.start()
    try:
        probes.wait_calls(2, probes.count(2) + 3)
        assert probes.count(1) == 1
        release.set()  # the old probe returns (its result is dropped): GPU 1 is probed again
        probes.wait_calls(1, 2)
    finally:
        stop_bounded(m)


# ---- a hung event wait -----------------------------------------------------------------------


def test_a_hung_event_wait_does_not_stop_the_probes(release: threading.Event) -> None:
    probes, changes = Probes(), Changes()
    watcher = HungWatcher(release)
    m = monitor(probes, changes, watcher=lambda: watcher)
    m.start()
    try:
        assert watcher.waiting.wait(LIMIT)
        probes.failing[2] = GPU_IS_LOST
        down = changes.wait_for("GPU-2", healthy=False)
        assert down.reason.startswith("GPU fell off the bus")
    finally:
        stop_bounded(m)
    # stop() returned while the wait still hangs, and closed the watcher without waiting.
    assert not release.is_set()
    assert thread_alive("gpulet-health-events")
    assert watcher.closed.is_set()


def test_stop_warns_once_naming_the_threads_left_in_nvml(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    probes, changes = Probes(), Changes()
    probes.release = release
    probes.hung.add(0)
    watcher = HungWatcher(release)
    m = monitor(probes, changes, watcher=lambda: watcher, stop_timeout=0.1)
    m.start()
    probes.wait_inside(0)
    assert watcher.waiting.wait(LIMIT)
    with caplog.at_level(logging.WARNING, logger="gpulet.health"):
        stop_bounded(m)
    left = [r.getMessage() for r in caplog.records if "leaving behind" in r.getMessage()]
    assert len(left) == 1
    assert "gpulet-health-events" in left[0]
    assert "gpulet-health-probe-0" in left[0]
    assert "gpulet-health-probe-2" not in left[0]  # idle workers stop


# ---- start and stop while NVML hangs ---------------------------------------------------------


def test_start_and_stop_return_while_the_watcher_is_being_made(release: threading.Event) -> None:
    probes, changes = Probes(), Changes()
    late = QueueWatcher()
    made = threading.Event()

    def slow_watcher() -> QueueWatcher:
        release.wait()  # nvmlEventSetCreate / registration stuck
        made.set()
        return late

    m = monitor(probes, changes, watcher=slow_watcher, start_timeout=0.1)
    starter = threading.Thread(target=m.start, daemon=True)
    starter.start()
    starter.join(LIMIT)
    assert not starter.is_alive(), "start() did not return"
    probes.wait_calls(0, 2)  # probes run without a watcher
    stop_bounded(m)
    assert not made.is_set()
    release.set()  # the watcher comes after all: the event thread closes it on its way out
    assert late.closed.wait(LIMIT)


def test_probes_and_events_without_hangs_still_work() -> None:
    probes, changes, watcher = Probes(), Changes(), QueueWatcher()
    with monitor(probes, changes, watcher=lambda: watcher) as m:
        watcher.events.put(xid(2, 144))  # recoverable
        changes.wait_for("GPU-2", healthy=False)
        changes.wait_for("GPU-2", healthy=True)
        assert m.status("GPU-2").healthy
    assert watcher.closed.is_set()
    assert not thread_alive("gpulet-health-events")


def test_new_bad_arguments() -> None:
    with pytest.raises(ValueError, match="probe_timeout"):
        HealthMonitor(CATALOG, GPUS, probe_timeout=0)
    with pytest.raises(ValueError, match="stop_timeout"):
        HealthMonitor(CATALOG, GPUS, stop_timeout=-1)
    with pytest.raises(ValueError, match="start_timeout"):
        HealthMonitor(CATALOG, GPUS, start_timeout=0)
    m = HealthMonitor(CATALOG, GPUS, wait_timeout=2.0)
    assert (m.probe_timeout, m.stop_timeout, m.start_timeout) == (5.0, 3.0, 10.0)


def test_on_change_calls_never_overlap_and_keep_the_order_of_the_transitions() -> None:
    probes = Probes()
    calls: list[tuple[str, bool]] = []
    inside = [0]
    overlapped = threading.Event()
    entered, go = threading.Event(), threading.Event()

    def on_change(device: str, healthy: bool, reason: str) -> None:
        inside[0] += 1
        if inside[0] > 1:
            overlapped.set()
        calls.append((device, healthy))
        if (device, healthy) == ("GPU-0", False):
            entered.set()
            go.wait(LIMIT)
        inside[0] -= 1

    m = HealthMonitor(CATALOG, GPUS, probe=probes, on_change=on_change, recovery_period=0.0)
    down = threading.Thread(target=m.handle, args=(xid(0, 144), 0.0), daemon=True)
    down.start()
    assert entered.wait(LIMIT)  # on_change is busy with GPU-0 going down
    up = threading.Thread(target=m.step, args=(1.0,), daemon=True)
    up.start()  # the probe passes: GPU-0 recovers while the first call still runs
    deadline = threading.Event()
    for _ in range(int(LIMIT / 0.01)):
        if m.status("GPU-0").healthy or deadline.wait(0.01):
            break
    assert m.status("GPU-0").healthy
    go.set()
    down.join(LIMIT)
    up.join(LIMIT)
    assert not down.is_alive()
    assert not up.is_alive()
    assert not overlapped.is_set()
    assert calls == [("GPU-0", False), ("GPU-0", True)]


def test_an_on_change_that_makes_a_transition_gets_it_after_the_ones_before() -> None:
    calls: list[tuple[str, bool]] = []
    m: HealthMonitor | None = None

    def on_change(device: str, healthy: bool, reason: str) -> None:
        calls.append((device, healthy))
        if device == "GPU-1" and m is not None:
            m.handle(xid(2, 48), 1.0)  # while GPU-1's MIG device waits for its call

    m = HealthMonitor(CATALOG, GPUS, probe=Probes(), on_change=on_change)
    m.handle(xid(1, 48), 0.0)
    assert calls == [("GPU-1", False), ("MIG-1a", False), ("GPU-2", False)]
