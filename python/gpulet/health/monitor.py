"""The health monitor: per-device health state, and the threads that feed it.

:class:`HealthMonitor` owns the state of every GPU and MIG device (by UUID) and the threads that
wait for events and re-probe the GPUs (one event thread, one probe scheduler, one probe worker
per GPU, so that an NVML call that hangs on one GPU holds back neither the events nor the other
GPUs' probes, and :meth:`HealthMonitor.stop` returns in bounded time whatever NVML does). Its
state machine is driven through :meth:`HealthMonitor.handle` and :meth:`HealthMonitor.step` with
an injectable clock, so tests need no thread and no sleep. What an event means is
:mod:`gpulet.health.policy`'s decision; this module applies it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, NamedTuple, Protocol, cast

from gpulet.config import HealthPolicy
from gpulet.errors import NvmlError
from gpulet.health.catalog import GPU_IS_LOST, HealthClass
from gpulet.health.policy import (
    PROBE_TIMEOUT_CLASS,
    SEVERITY,
    EventLike,
    classify_event,
    lost_class,
    marks_lost,
    wait_failure_class,
)

__all__ = [
    "DeviceHealth",
    "GpuRef",
    "HealthChange",
    "HealthMonitor",
    "MigRef",
    "OnChange",
    "Probe",
    "WatcherLike",
    "gpus_from_node",
]

log = logging.getLogger("gpulet.health")

# ---- inventory ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigRef:
    """A MIG device the monitor tracks."""

    uuid: str
    gpu_instance_id: int
    compute_instance_id: int


@dataclass(frozen=True)
class GpuRef:
    """A GPU the monitor tracks, with its MIG devices."""

    index: int
    uuid: str
    mig_devices: tuple[MigRef, ...] = ()


class _NodeLike(Protocol):
    @property
    def gpus(self) -> Sequence[Any]: ...


def gpus_from_node(node: _NodeLike) -> list[GpuRef]:
    """The inventory of a discovered node (:func:`gpulet.discover`)."""
    return [
        GpuRef(
            index=g.index,
            uuid=g.uuid,
            mig_devices=tuple(
                MigRef(m.uuid, m.gpu_instance_id, m.compute_instance_id) for m in g.mig_devices
            ),
        )
        for g in node.gpus
    ]


# ---- state ----------------------------------------------------------------------------------


class HealthChange(NamedTuple):
    """A device turning healthy or unhealthy."""

    device_id: str
    healthy: bool
    reason: str


@dataclass(frozen=True)
class DeviceHealth:
    """The health of one device (a GPU or a MIG device, by UUID)."""

    device_id: str
    #: NVML index of the (parent) GPU.
    gpu: int
    gpu_uuid: str
    #: Whether the device is a MIG device.
    mig: bool
    healthy: bool
    #: Why the device is unhealthy ("" when healthy).
    reason: str
    health_class: HealthClass | None
    #: Clock time the device went unhealthy (the monitor's clock).
    since: float | None
    #: The XID that made it unhealthy, if one did.
    xid: int | None
    #: Clock time of the first probe of the current passing run, while it recovers.
    recovering_since: float | None
    #: Whether recovery waits for a GPU reset (``reset-required`` not yet reset, ``permanent``).
    awaiting_reset: bool
    #: Whether NVML events are delivered for the device's GPU.
    monitored: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _State:
    device_id: str
    gpu: int
    gpu_uuid: str
    mig: MigRef | None
    healthy: bool = True
    reason: str = ""
    klass: HealthClass | None = None
    since: float | None = None
    xid: int | None = None
    #: Seen lost (GPU_IS_LOST, XID 79) since it went unhealthy: answering again is a reset.
    lost: bool = False
    #: Reset seen or marked: recovers as "recoverable" does.
    reset: bool = False
    ok_since: float | None = None

    def effective(self) -> HealthClass | None:
        if self.healthy:
            return None
        if self.reset:
            return "recoverable"
        return self.klass

    def status(self, monitored: bool) -> DeviceHealth:
        eff = self.effective()
        return DeviceHealth(
            device_id=self.device_id,
            gpu=self.gpu,
            gpu_uuid=self.gpu_uuid,
            mig=self.mig is not None,
            healthy=self.healthy,
            reason=self.reason,
            health_class=None if self.healthy else self.klass,
            since=self.since,
            xid=self.xid,
            recovering_since=self.ok_since,
            awaiting_reset=eff in ("reset-required", "permanent"),
            monitored=monitored,
        )

    def copy_health_from(self, other: _State) -> None:
        for f in ("healthy", "reason", "klass", "since", "xid", "lost", "reset", "ok_since"):
            setattr(self, f, getattr(other, f))


class _RegistrationLike(Protocol):
    @property
    def gpu(self) -> int: ...
    @property
    def status(self) -> str: ...


class WatcherLike(Protocol):
    """What the monitor needs from an event watcher (:class:`gpulet._core.EventWatcher`)."""

    def wait(self, timeout_ms: int, /) -> Sequence[EventLike]: ...
    def close(self) -> None: ...
    def registrations(self) -> Sequence[_RegistrationLike]: ...


Probe = Callable[[int], None]
OnChange = Callable[[str, bool, str], None]


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class HealthMonitor:
    """Health of every GPU and MIG device of a node, from NVML events and re-probes.

    ``gpus`` is the inventory (a discovered :class:`gpulet.Node` or :class:`GpuRef` items;
    :meth:`set_gpus` replaces it when MIG devices change). ``on_change(device_id, healthy,
    reason)`` is called on every transition, outside the monitor's lock, from whichever of the
    monitor's threads caused it; the calls never overlap and come in the order of the
    transitions. ``watcher`` makes the event watcher (default: ``gpulet._core.EventWatcher`` on
    ``library_path``; its ``close`` must not wait for an in-flight ``wait``), ``probe``
    re-probes a GPU by index (default: ``gpulet._core.probe``), ``clock`` gives monotonic
    seconds (the state machine's only source of time).

    Threads (all daemon threads), started by :meth:`start`:

    ``gpulet-health-events``
        Creates the watcher, then waits up to ``wait_timeout`` seconds at a time for events
        and handles them.
    ``gpulet-health-probes``
        The probe scheduler: every ``min(wait_timeout, probe_timeout)`` seconds it runs
        :meth:`step`, which hands a probe to each GPU's worker every ``probe_interval`` and
        marks overdue probes. It makes no NVML call.
    ``gpulet-health-probe-<index>``
        One per GPU, made on its first probe: runs that GPU's probes one at a time and applies
        each result when it returns. A GPU whose probe is still running gets no second one.

    A probe that has not returned ``probe_timeout`` seconds after it started counts as a failed
    probe: the GPU (and its MIG devices) turn unhealthy, ``recoverable``, with the reason "NVML
    probe of GPU n has not returned after Xs", and recover by the usual rules once probes pass
    again (the late probe, when it passes, is the first of the run).

    :meth:`start` returns once the watcher exists (events from then on are seen) or after
    ``start_timeout`` seconds, whichever is first. :meth:`stop` returns within about
    ``stop_timeout`` seconds (default ``wait_timeout + 1``) whatever NVML does: it joins the
    threads with that bound, closes the watcher without waiting for a wait in flight, and
    leaves any thread still inside NVML behind (one WARNING names them); such a thread exits,
    applying nothing, when its call returns.

    Without the threads, :meth:`handle`, :meth:`wait_failed`, :meth:`wait_ok` and :meth:`step`
    (which then probes inline) drive the same state machine, each with an explicit ``now``.

    Event-wait failures: the first ``wait_failure_threshold - 1`` consecutive failures are
    retried (logged only); at the threshold every device is marked unhealthy
    (``recoverable``, or ``permanent`` under ``nvidia-device-plugin``), nothing recovers while
    waits keep failing, and the thread makes a new watcher every ``probe_interval``. A
    threshold of 1 is NVIDIA's behaviour.
    """

    def __init__(
        self,
        policy: HealthPolicy,
        gpus: _NodeLike | Iterable[GpuRef],
        *,
        on_change: OnChange | None = None,
        watcher: Callable[[], WatcherLike] | None = None,
        probe: Probe | None = None,
        clock: Callable[[], float] = time.monotonic,
        recovery_period: float | timedelta | None = None,
        wait_timeout: float = 1.0,
        probe_interval: float = 5.0,
        wait_failure_threshold: int = 3,
        library_path: str | None = None,
        on_mig_change: Callable[[str], None] | None = None,
        probe_timeout: float = 5.0,
        stop_timeout: float | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        if wait_timeout <= 0:
            raise ValueError(f"wait_timeout must be more than 0 seconds, got {wait_timeout}")
        if probe_interval < 0:
            raise ValueError(f"probe_interval must be 0 or more seconds, got {probe_interval}")
        if probe_timeout <= 0:
            raise ValueError(f"probe_timeout must be more than 0 seconds, got {probe_timeout}")
        if stop_timeout is not None and stop_timeout <= 0:
            raise ValueError(f"stop_timeout must be more than 0 seconds, got {stop_timeout}")
        if start_timeout <= 0:
            raise ValueError(f"start_timeout must be more than 0 seconds, got {start_timeout}")
        if wait_failure_threshold < 1:
            raise ValueError(
                f"wait_failure_threshold must be 1 or more, got {wait_failure_threshold}"
            )
        self.policy: Final = policy
        self.recovery_period: Final = _seconds(
            policy.recovery_period if recovery_period is None else recovery_period
        )
        if self.recovery_period < 0:
            raise ValueError(f"recovery_period must not be negative, got {self.recovery_period}")
        self.wait_timeout: Final = float(wait_timeout)
        self.probe_interval: Final = float(probe_interval)
        self.wait_failure_threshold: Final = wait_failure_threshold
        self.probe_timeout: Final = float(probe_timeout)
        self.stop_timeout: Final = (
            self.wait_timeout + 1.0 if stop_timeout is None else float(stop_timeout)
        )
        self.start_timeout: Final = float(start_timeout)
        self.clock: Final = clock
        self._on_change = on_change
        self._on_mig_change = on_mig_change
        self._library_path = library_path
        self._watcher_factory = watcher if watcher is not None else self._default_watcher
        self._probe: Probe = probe if probe is not None else self._default_probe
        self._lock = threading.RLock()
        self._gpus: dict[int, GpuRef] = {}
        self._states: dict[str, _State] = {}
        self._unmonitored: set[int] = set()
        self._next_probe: float | None = None
        self._wait_failures = 0
        self._last_wait_error: str | None = None
        self._blind = False
        self._next_watcher_attempt: float | None = None
        #: Probes started and not yet returned, by GPU index.
        self._inflight: dict[int, _Flight] = {}
        #: Transitions not yet given to on_change, queued under _lock as they happen.
        self._pending: deque[HealthChange] = deque()
        self._emit_lock = threading.Lock()
        #: The threads of the current start() (None when stopped).
        self._run: _Run | None = None
        self.set_gpus(gpus)

    # ---- defaults -----------------------------------------------------------------------

    def _default_watcher(self) -> WatcherLike:
        from gpulet._core import EventWatcher

        return EventWatcher(self._library_path, sorted(self._gpus))

    def _default_probe(self, gpu: int) -> None:
        from gpulet._core import probe

        probe(gpu, self._library_path)

    # ---- inventory ----------------------------------------------------------------------

    def set_gpus(self, gpus: _NodeLike | Iterable[GpuRef]) -> None:
        """Replace the inventory. Devices that stay keep their state; a new MIG device on an
        unhealthy GPU starts with the GPU's state; devices that are gone are forgotten."""
        refs = gpus_from_node(cast(_NodeLike, gpus)) if hasattr(gpus, "gpus") else list(gpus)
        with self._lock:
            old = self._states
            states: dict[str, _State] = {}
            by_index: dict[int, GpuRef] = {}
            for g in refs:
                if g.index in by_index:
                    raise ValueError(f"GPU index {g.index} is listed twice")
                by_index[g.index] = g
                gpu_state = old.get(g.uuid) or _State(g.uuid, g.index, g.uuid, None)
                gpu_state.gpu = g.index
                states[g.uuid] = gpu_state
                for m in g.mig_devices:
                    st = old.get(m.uuid)
                    if st is None:
                        st = _State(m.uuid, g.index, g.uuid, m)
                        if not gpu_state.healthy:
                            st.copy_health_from(gpu_state)
                    st.mig = m
                    st.gpu = g.index
                    states[m.uuid] = st
            self._gpus = by_index
            self._states = states

    # ---- queries ------------------------------------------------------------------------

    def status(self, device_id: str) -> DeviceHealth:
        """The health of one device (GPU or MIG UUID); ``KeyError`` for an unknown one."""
        with self._lock:
            st = self._states.get(device_id)
            if st is None:
                raise KeyError(f"no device {device_id!r} in the health monitor's inventory")
            return st.status(st.gpu not in self._unmonitored)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every device's :class:`DeviceHealth`, as dictionaries keyed by device id."""
        with self._lock:
            return {
                d: st.status(st.gpu not in self._unmonitored).to_dict()
                for d, st in self._states.items()
            }

    @property
    def watching(self) -> bool:
        """Whether NVML event waits currently work (False after ``wait_failure_threshold``
        failures in a row, until a wait succeeds)."""
        with self._lock:
            return not self._blind

    @property
    def last_wait_error(self) -> str | None:
        with self._lock:
            return self._last_wait_error

    # ---- the state machine --------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    def _deliver(self) -> None:
        """Give the queued transitions to on_change, in order, one call at a time. Call it
        without holding _lock. Transitions are queued (``_pending``) under _lock as they are
        made, so two threads' transitions reach on_change in the order they happened. A thread
        that finds another delivering leaves its transitions to that one and returns."""
        while True:
            with self._lock:
                if not self._pending:
                    return
            if not self._emit_lock.acquire(blocking=False):
                return  # the thread delivering now delivers ours too (it re-checks below)
            try:
                while True:
                    with self._lock:
                        if not self._pending:
                            break
                        batch = list(self._pending)
                        self._pending.clear()
                    if self._on_change is None:
                        continue
                    for c in batch:
                        try:
                            self._on_change(c.device_id, c.healthy, c.reason)
                        except Exception:
                            log.exception("health on_change callback failed for %s", c.device_id)
            finally:
                self._emit_lock.release()
            # Something queued between the last check and the release is ours to deliver.

    def _mark(
        self,
        st: _State,
        klass: HealthClass,
        reason: str,
        now: float,
        *,
        xid: int | None = None,
        lost: bool = False,
        out: list[HealthChange],
    ) -> None:
        if klass == "ignore":
            return
        if st.healthy:
            st.healthy = False
            st.klass = klass
            st.reason = reason
            st.since = now
            st.xid = xid
            st.lost = lost
            st.reset = False
            st.ok_since = None
            out.append(HealthChange(st.device_id, False, reason))
            log.warning("%s is unhealthy (%s): %s", st.device_id, klass, reason)
            return
        eff = st.effective()
        if eff is None or SEVERITY[klass] > SEVERITY[eff]:
            st.klass = klass
            st.reason = reason
            st.xid = xid
            st.reset = False
        st.lost = st.lost or lost
        st.ok_since = None

    def _targets(self, event: EventLike) -> list[_State]:
        gpu_index = event.gpu
        if gpu_index is None and event.uuid is not None:
            gpu_index = next((g.index for g in self._gpus.values() if g.uuid == event.uuid), None)
        if gpu_index is None:
            # NVML named a device nobody can place: like NVIDIA, every device.
            return list(self._states.values())
        g = self._gpus.get(gpu_index)
        if g is None:
            return []
        whole = [self._states[g.uuid], *(self._states[m.uuid] for m in g.mig_devices)]
        gi, ci = event.gpu_instance_id, event.compute_instance_id
        if gi is None:
            return whole
        migs = [
            self._states[m.uuid]
            for m in g.mig_devices
            if m.gpu_instance_id == gi and (ci is None or m.compute_instance_id == ci)
        ]
        # An instance gpulet does not know (just created, say): the whole GPU, to be safe.
        return migs or whole

    def handle(self, event: EventLike, now: float | None = None) -> list[HealthChange]:
        """Apply one event; returns (and reports to ``on_change``) the transitions."""
        t = self._now(now)
        out: list[HealthChange] = []
        if event.kind == "mig-config-change":
            if self._on_mig_change is not None and event.uuid is not None:
                try:
                    self._on_mig_change(event.uuid)
                except Exception:
                    log.exception("health on_mig_change callback failed")
            return out
        klass, reason = classify_event(event, self.policy)
        if klass == "ignore":
            log.info("ignoring %s on GPU %s (%s)", reason, event.gpu, event.uuid)
            return out
        xid = event.data if event.kind == "xid" else None
        lost = marks_lost(event)
        with self._lock:
            for st in self._targets(event):
                self._mark(st, klass, reason, t, xid=xid, lost=lost, out=out)
            self._pending.extend(out)
        self._deliver()
        return out

    def wait_failed(
        self, error: BaseException | str, now: float | None = None
    ) -> list[HealthChange]:
        """Record a failed event wait (see the class docs for the retry policy)."""
        t = self._now(now)
        out: list[HealthChange] = []
        with self._lock:
            self._wait_failures += 1
            self._last_wait_error = str(error)
            log.warning("NVML event wait failed (%d in a row): %s", self._wait_failures, error)
            if self._wait_failures >= self.wait_failure_threshold and not self._blind:
                self._blind = True
                klass = wait_failure_class(self.policy)
                reason = f"NVML event wait failing: {error}"
                if not self.policy.disabled:
                    for st in self._states.values():
                        self._mark(st, klass, reason, t, out=out)
            self._pending.extend(out)
        self._deliver()
        return out

    def wait_ok(self, now: float | None = None) -> None:
        """Record a working event wait (events or a timeout): watching again."""
        del now
        with self._lock:
            if self._blind:
                log.info("NVML event waits work again")
            self._wait_failures = 0
            self._blind = False

    def mark_reset(self, device_id: str, now: float | None = None) -> list[HealthChange]:
        """An operator says the device was reset: a ``reset-required`` or ``permanent`` device
        now recovers like a ``recoverable`` one (healthy once its probes pass for the recovery
        period). A GPU's UUID covers its MIG devices too. ``KeyError`` for an unknown device."""
        del now
        with self._lock:
            st = self._states.get(device_id)
            if st is None:
                raise KeyError(f"no device {device_id!r} in the health monitor's inventory")
            targets = [st]
            if st.mig is None:
                g = self._gpus[st.gpu]
                targets += [self._states[m.uuid] for m in g.mig_devices]
            for s in targets:
                if not s.healthy:
                    s.reset = True
                    s.lost = False
                    s.ok_since = None
            # Probe at the next step, whatever the interval.
            self._next_probe = None
        log.info("%s marked as reset", device_id)
        return []

    def _call_probe(self, gpu: int) -> tuple[bool, NvmlError | None]:
        """Run one probe: (whether it came to a result, the NVML error if it failed). Any other
        exception (a bug, a GPU index NVML no longer has) is logged and applies nothing."""
        try:
            self._probe(gpu)
        except NvmlError as e:
            return True, e
        except Exception:
            log.exception("probe of GPU %d raised", gpu)
            return False, None
        return True, None

    def step(self, now: float | None = None) -> list[HealthChange]:
        """Start a probe of every GPU when one is due (every ``probe_interval``) and mark GPUs
        whose probe has been running for ``probe_timeout`` or more; returns the transitions.

        With the threads running (:meth:`start`), each GPU's probe runs on that GPU's worker and
        its result is applied when it returns; a GPU whose previous probe has not returned is
        not probed again. Without them, the probes run here, one GPU after another, and their
        results (recovery, GPUs found lost) are applied at ``now``.
        """
        return self._step(self._now(now), self._run)

    def _step(self, t: float, run: _Run | None) -> list[HealthChange]:
        if self.policy.disabled or (run is not None and run.stopping.is_set()):
            return []
        out: list[HealthChange] = []
        started: list[tuple[int, _Flight]] = []
        with self._lock:
            if self._next_probe is None or t >= self._next_probe:
                self._next_probe = t + self.probe_interval
                for i in sorted(self._gpus):
                    if i not in self._inflight:
                        flight = _Flight(i, t, run)
                        self._inflight[i] = flight
                        started.append((i, flight))
            self._mark_overdue(t, out)
            self._pending.extend(out)
        self._deliver()
        if run is not None:
            for i, flight in started:
                run.submit(self, i, flight)
            return out
        for i, flight in started:
            done, error = self._call_probe(i)
            out += self._probe_returned(flight, done, error, t)
        return out

    def _mark_overdue(self, now: float, out: list[HealthChange]) -> None:
        """Under _lock: a probe running for ``probe_timeout`` or more fails its GPU (once)."""
        for i, flight in self._inflight.items():
            if flight.overdue or now - flight.started < self.probe_timeout:
                continue
            flight.overdue = True
            reason = f"NVML probe of GPU {i} has not returned after {self.probe_timeout:g}s"
            log.warning("%s", reason)
            for st in self._states.values():
                if st.gpu == i:
                    self._mark(st, PROBE_TIMEOUT_CLASS, reason, now, out=out)

    def _forget(self, flight: _Flight) -> None:
        """A probe that was handed out but never started (its run stopped first)."""
        with self._lock:
            if self._inflight.get(flight.gpu) is flight:
                del self._inflight[flight.gpu]

    def _probe_returned(
        self, flight: _Flight, done: bool, error: NvmlError | None, now: float | None = None
    ) -> list[HealthChange]:
        """A probe came back: apply its result (unless the run it belongs to was stopped)."""
        t = self._now(now)
        out: list[HealthChange] = []
        with self._lock:
            if self._inflight.get(flight.gpu) is flight:
                del self._inflight[flight.gpu]
            if flight.run is not None and flight.run.stopping.is_set():
                return out
            if flight.overdue:
                log.warning(
                    "NVML probe of GPU %d returned after %.1fs (%s)",
                    flight.gpu,
                    t - flight.started,
                    "passed" if done and error is None else error or "no result",
                )
            if done:
                for st in self._states.values():
                    if st.gpu == flight.gpu:
                        self._apply_probe(st, error, t, out)
            self._pending.extend(out)
        self._deliver()
        return out

    def _apply_probe(
        self, st: _State, error: NvmlError | None, now: float, out: list[HealthChange]
    ) -> None:
        if error is not None:
            if error.code == GPU_IS_LOST:
                if st.healthy:
                    self._mark(
                        st, lost_class(self.policy), f"GPU fell off the bus: {error}", now,
                        lost=True, out=out,
                    )  # fmt: skip
                else:
                    st.lost = True
                    st.ok_since = None
            elif not st.healthy:
                st.ok_since = None
            else:
                log.info("probe of GPU %d failed: %s", st.gpu, error)
            return
        if st.healthy:
            return
        eff = st.effective()
        if eff == "reset-required" and st.lost:
            # It was gone and answers again: the GPU was reset (or re-attached).
            st.reset = True
            st.lost = False
            st.ok_since = None
            eff = "recoverable"
            log.info("%s answers again after being lost: counted as a reset", st.device_id)
        if eff != "recoverable" or self._blind:
            st.ok_since = None
            return
        if st.ok_since is None:
            st.ok_since = now
        if now - st.ok_since >= self.recovery_period:
            reason = st.reason
            st.healthy = True
            st.reason = ""
            st.klass = None
            st.since = None
            st.xid = None
            st.lost = False
            st.reset = False
            st.ok_since = None
            out.append(HealthChange(st.device_id, True, f"recovered from {reason}"))
            log.warning("%s is healthy again (was: %s)", st.device_id, reason)

    def update_registrations(self, registrations: Iterable[_RegistrationLike]) -> None:
        """Record which GPUs the watcher delivers events for (``monitored``)."""
        with self._lock:
            self._unmonitored = {r.gpu for r in registrations if r.status != "registered"}

    # ---- the thread ---------------------------------------------------------------------

    def _make_watcher(self, now: float) -> WatcherLike | None:
        with self._lock:
            if self._next_watcher_attempt is not None and now < self._next_watcher_attempt:
                return None
            self._next_watcher_attempt = now + self.probe_interval
        try:
            w = self._watcher_factory()
        except NvmlError as e:
            self.wait_failed(f"cannot create the NVML event watcher: {e}", now)
            return None
        self.update_registrations(w.registrations())
        return w

    def start(self) -> None:
        """Start the threads (no-op when health checks are disabled, or when already started).

        Returns once the event thread has made its first attempt at creating the watcher (events
        from then on are seen), or after ``start_timeout`` seconds if NVML is slow to answer
        (the event thread goes on trying; the probes already run).
        """
        if self.policy.disabled or self._run is not None:
            return
        with self._lock:
            self._next_watcher_attempt = None
        run = self._run = _Run()
        run.events = threading.Thread(
            target=self._events_loop, args=(run,), name="gpulet-health-events", daemon=True
        )
        run.scheduler = threading.Thread(
            target=self._probe_loop, args=(run,), name="gpulet-health-probes", daemon=True
        )
        run.events.start()
        run.scheduler.start()
        if not run.ready.wait(self.start_timeout):
            log.warning(
                "the NVML event watcher is not ready after %gs; health monitoring goes on "
                "without events until it is",
                self.start_timeout,
            )

    def stop(self) -> None:
        """Stop the threads and close the watcher; returns within about ``stop_timeout``
        seconds, leaving behind (with one WARNING) any thread that is still inside NVML."""
        run, self._run = self._run, None
        if run is None:
            return
        run.stopping.set()
        with self._lock:
            workers = list(run.workers.values())
        for w in workers:
            w.wake.set()
        deadline = time.monotonic() + self.stop_timeout
        threads = [t for t in (run.events, run.scheduler) if t is not None]
        threads += [w.thread for w in workers]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        # The event thread closes its watcher on the way out; if it is still inside NVML (a
        # wait, or making the watcher), close it from here: the close does not wait for it.
        watcher = run.watcher
        if watcher is not None and run.events is not None and run.events.is_alive():
            try:
                watcher.close()
            except Exception:
                log.exception("closing the NVML event watcher failed")
        stuck = [t.name for t in (run.events, run.scheduler) if t is not None and t.is_alive()]
        stuck += [w.thread.name for w in workers if w.busy and w.thread.is_alive()]
        if stuck:
            log.warning(
                "health monitor stopped; leaving behind threads still inside NVML after %gs: %s",
                self.stop_timeout,
                ", ".join(stuck),
            )

    def __enter__(self) -> HealthMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # The event thread.

    def _events_loop(self, run: _Run) -> None:
        timeout_ms = max(1, round(self.wait_timeout * 1000))
        try:
            while not run.stopping.is_set():
                try:
                    self._event_round(run, timeout_ms)
                except Exception:
                    log.exception("health monitor event round failed")
                    run.stopping.wait(self.wait_timeout)
        finally:
            run.ready.set()
            watcher, run.watcher = run.watcher, None
            if watcher is not None:
                try:
                    watcher.close()
                except Exception:
                    log.exception("closing the NVML event watcher failed")

    def _event_round(self, run: _Run, timeout_ms: int) -> None:
        watcher = run.watcher
        if watcher is None:
            try:
                watcher = run.watcher = self._make_watcher(self.clock())
            finally:
                run.ready.set()
        if watcher is None or run.stopping.is_set():
            run.stopping.wait(self.wait_timeout)
            return
        try:
            events = watcher.wait(timeout_ms)
        except NvmlError as e:
            if run.stopping.is_set():
                return
            now = self.clock()
            self.wait_failed(e, now)
            if self._wait_failures >= self.wait_failure_threshold:
                # Start afresh with a new event set (at most every probe_interval).
                fresh = self._make_watcher(now)
                if fresh is not None and fresh is not watcher:
                    run.watcher = fresh
                    watcher.close()
            # A failing wait may return at once: do not spin.
            run.stopping.wait(min(self.wait_timeout, 1.0))
            return
        if run.stopping.is_set():
            return  # stopped while waiting: report nothing more
        now = self.clock()
        self.wait_ok(now)
        for event in events:
            self.handle(event, now)
        self.update_registrations(watcher.registrations())

    # The probe scheduler and the per-GPU workers.

    def _probe_loop(self, run: _Run) -> None:
        tick = min(self.wait_timeout, self.probe_timeout)
        while not run.stopping.is_set():
            try:
                self._step(self.clock(), run)
            except Exception:
                log.exception("health monitor probe round failed")
            run.stopping.wait(tick)


@dataclass(eq=False)
class _Flight:
    """A probe of one GPU that has started and not yet returned."""

    gpu: int
    #: Clock time it started.
    started: float
    #: The run whose worker makes it (None: made inline by step()).
    run: _Run | None
    #: Past probe_timeout, and the GPU marked for it.
    overdue: bool = False


class _Worker:
    """The thread that probes one GPU, one probe at a time."""

    def __init__(self, monitor: HealthMonitor, run: _Run, gpu: int) -> None:
        self.gpu = gpu
        self.wake = threading.Event()
        self.flight: _Flight | None = None
        #: Inside the probe (a thread stop() may leave behind).
        self.busy = False
        self.thread = threading.Thread(
            target=self._loop,
            args=(monitor, run),
            name=f"gpulet-health-probe-{gpu}",
            daemon=True,
        )

    def _loop(self, monitor: HealthMonitor, run: _Run) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            flight, self.flight = self.flight, None
            if run.stopping.is_set():
                if flight is not None:
                    monitor._forget(flight)
                return
            if flight is None:
                continue
            self.busy = True
            try:
                done, error = monitor._call_probe(self.gpu)
            finally:
                self.busy = False
            try:
                monitor._probe_returned(flight, done, error)
            except Exception:
                log.exception("applying the probe of GPU %d failed", self.gpu)


class _Run:
    """The threads and watcher of one start() .. stop()."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        #: Set once the event thread's first attempt at a watcher is over.
        self.ready = threading.Event()
        self.events: threading.Thread | None = None
        self.scheduler: threading.Thread | None = None
        self.watcher: WatcherLike | None = None
        #: Probe workers by GPU index (guarded by the monitor's lock).
        self.workers: dict[int, _Worker] = {}

    def submit(self, monitor: HealthMonitor, gpu: int, flight: _Flight) -> None:
        """Hand ``flight`` to GPU ``gpu``'s worker (made on first use)."""
        with monitor._lock:
            if self.stopping.is_set():
                monitor._forget(flight)
                return
            worker = self.workers.get(gpu)
            if worker is None:
                # Started under the lock, so stop() never sees a worker it cannot join.
                worker = self.workers[gpu] = _Worker(monitor, self, gpu)
                worker.thread.start()
            worker.flight = flight
            worker.wake.set()
