"""NvmlProbe: NotReady with a reason and capped backoff, or exit on failOnInitError."""

from __future__ import annotations

from typing import Any

import pytest

from gpulet.errors import NvmlError, NvmlLibraryNotFound
from gpulet.readiness import NvmlProbe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FlakyDiscover:
    """Fails with the given errors in turn, then returns a node-like object."""

    def __init__(self, errors: list[Exception], node: Any) -> None:
        self.errors = list(errors)
        self.node = node
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.node


class FakeNode:
    gpus = (object(), object())


def missing() -> NvmlLibraryNotFound:
    return NvmlLibraryNotFound("NVML library not found: libnvidia-ml.so.1 could not be loaded")


def test_not_ready_with_reason_then_ready_after_backoff() -> None:
    clock = Clock()
    discover = FlakyDiscover([missing(), missing()], FakeNode())
    probe = NvmlProbe(discover, clock=clock, initial_backoff=1.0, max_backoff=4.0)

    assert probe.poll() is None
    r = probe.readiness
    assert not r.ready
    assert "libnvidia-ml.so.1" in r.reason
    assert r.since == 100.0
    # Not due yet: no second attempt.
    assert probe.poll() is None
    assert discover.calls == 1
    assert probe.seconds_until_retry() == pytest.approx(1.0)

    clock.now += 1.0
    assert probe.poll() is None
    assert discover.calls == 2
    assert probe.readiness.since == 100.0  # same reason keeps its start time
    assert probe.seconds_until_retry() == pytest.approx(2.0)  # backoff doubled

    clock.now += 2.0
    node = probe.poll()
    assert node is discover.node
    assert probe.readiness.ready
    assert "2 GPU(s)" in probe.readiness.reason
    assert probe.poll() is node  # cached, no more discovery
    assert discover.calls == 3


def test_backoff_is_capped() -> None:
    clock = Clock()
    errs: list[Exception] = [missing() for _ in range(6)]
    probe = NvmlProbe(FlakyDiscover(errs, FakeNode()), clock=clock, max_backoff=4.0)
    waits = []
    for _ in range(5):
        probe.poll()
        waits.append(probe.seconds_until_retry())
        clock.now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_new_reason_restarts_since() -> None:
    clock = Clock()
    lost = NvmlError("nvmlDeviceGetCount_v2 failed: GPU is lost (NVML error 15)")
    probe = NvmlProbe(FlakyDiscover([missing(), lost], FakeNode()), clock=clock)
    probe.poll()
    clock.now += 1.0
    probe.poll()
    assert probe.readiness.since == 101.0
    assert "GPU is lost" in probe.readiness.reason


def test_fail_on_init_error_raises() -> None:
    probe = NvmlProbe(FlakyDiscover([missing()], FakeNode()), fail_on_init_error=True)
    with pytest.raises(NvmlLibraryNotFound):
        probe.poll()


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_bad_backoff_is_refused(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="initial_backoff"):
        NvmlProbe(FakeNode, initial_backoff=initial, max_backoff=cap)  # type: ignore[arg-type]
