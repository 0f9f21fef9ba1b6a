"""Allocation and ledger benchmarks called from Python (pytest-benchmark).

Full run (numbers in benches/RESULTS.md):
    pytest benches/test_bench_alloc.py --benchmark-only --benchmark-columns=median,mean,ops,rounds
Smoke run (the test command): ``pytest benches/ --benchmark-disable`` runs each bench once.

The ledger benches time one allocate + release pair per call, so pytest-benchmark's OPS column
is pairs per second (calls per second are twice that). The device-plugin state benches time one
``DevicePluginState.allocate`` (one container, as the kubelet's Allocate) on a simulated DGX H100:
a repeat (the devices already held by a pending owner: recorded nothing new), and a new
allocation that takes devices from the previous pending owner (released: the kubelet's
reassignment path), as when pods come and go. The Rust-side comparison of preferred
allocation against go-gpuallocator's enumeration is the criterion bench
``rust/gpulet-core/benches/alloc.rs``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

import gpulet
from gpulet import Topology, alloc, config
from gpulet.alloc import ClaimOwner, ContainerOwner, Device, Ledger, Owner
from gpulet.deviceplugin import build_resources
from gpulet.deviceplugin.state import DevicePluginState

Benchmark = Any  # pytest-benchmark's fixture has no public type

DGX1V_LINKS = {
    (0, 1): 1,
    (0, 2): 1,
    (0, 3): 2,
    (0, 4): 2,
    (1, 2): 2,
    (1, 3): 1,
    (1, 5): 2,
    (2, 3): 2,
    (2, 6): 1,
    (3, 7): 1,
    (4, 5): 1,
    (4, 6): 1,
    (4, 7): 2,
    (5, 6): 2,
    (5, 7): 1,
    (6, 7): 2,
}


def board_pcie(gpus: int) -> dict[tuple[int, int], str]:
    pcie = {}
    for a, b in itertools.combinations(range(gpus), 2):
        if a // 2 == b // 2:
            pcie[(a, b)] = "single-switch"
        elif a // 4 == b // 4:
            pcie[(a, b)] = "host-bridge"
    return pcie


def topology(gpus: int) -> Topology:
    """DGX-1V (8 GPUs) or two DGX-1V boards (16 GPUs)."""
    links = {(a + o, b + o): n for o in range(0, gpus, 8) for (a, b), n in DGX1V_LINKS.items()}
    return Topology(gpus, nvlinks=links, pcie=board_pcie(gpus), numa=[g // 4 for g in range(gpus)])


def node(gpus: int = 8, replicas: int = 8) -> Ledger:
    ledger = Ledger()
    for g in range(gpus):
        ledger.register_gpu(f"GPU-{g}", replicas=replicas)
    return ledger


def cycling(pairs: list[tuple[Owner, list[Device]]], ledger: Ledger) -> Callable[[], None]:
    """One allocate + release per call, walking through `pairs`."""
    it = itertools.cycle(pairs)
    allocate, release = ledger.allocate, ledger.release

    def op() -> None:
        owner, devices = next(it)
        allocate(owner, devices)
        release(owner)

    return op


def test_ledger_allocate_release_replica(benchmark: Benchmark) -> None:
    ledger = node()
    pairs: list[tuple[Owner, list[Device]]] = [
        (ContainerOwner("default", f"pod-{i}", "main"), [f"GPU-{i % 8}::{i // 8}"])
        for i in range(64)
    ]
    benchmark(cycling(pairs, ledger))
    assert ledger.utilisation().owners == 0


def test_ledger_allocate_release_whole_gpus(benchmark: Benchmark) -> None:
    ledger = node(replicas=0)
    pairs: list[tuple[Owner, list[Device]]] = [
        (ClaimOwner(f"claim-{i}"), [f"GPU-{i % 8}", f"GPU-{(i + 1) % 8}"]) for i in range(64)
    ]
    benchmark(cycling(pairs, ledger))
    assert ledger.utilisation().gpus_free == 8


def test_ledger_snapshot_restore(benchmark: Benchmark) -> None:
    ledger = node()
    for i in range(64):
        ledger.allocate(ContainerOwner("default", f"pod-{i}", "main"), [f"GPU-{i % 8}::{i // 8}"])
    copy = Ledger()

    def op() -> None:
        copy.restore(ledger.snapshot())

    benchmark(op)
    assert copy.holdings() == ledger.holdings()


@pytest.mark.parametrize(("gpus", "size"), [(8, 2), (8, 4), (16, 3), (16, 8)])
def test_preferred(benchmark: Benchmark, gpus: int, size: int) -> None:
    topo = topology(gpus)
    alloc.prepare(topo, [size])
    available = list(range(gpus))
    got = benchmark(alloc.preferred, topo, available, [gpus // 2 + 1], size=size)
    assert len(got) == size
    assert gpus // 2 + 1 in got


@pytest.fixture(scope="module")
def dgx_h100_state() -> DevicePluginState:
    cfg = config.parse({"version": "v1"})
    with gpulet.simulated("dgx-h100"):
        node = gpulet.discover()
    return DevicePluginState(node, cfg, build_resources(node, cfg))


@pytest.mark.parametrize("path", ["repeat", "reassign"])
def test_state_allocate(benchmark: Benchmark, dgx_h100_state: DevicePluginState, path: str) -> None:
    s = dgx_h100_state
    ids = [d.device.id for d in s.list_devices("nvidia.com/gpu")]
    if path == "repeat":
        s.allocate("nvidia.com/gpu", [ids[:2]])
        requests = [[ids[:2]], [ids[1:2]]]
    else:
        # [a, b], [b, c], [c, d], ...: each call shares one device with the previous one, so
        # it is a new pending owner that releases the previous one.
        requests = [[[ids[i], ids[(i + 1) % 8]]] for i in range(8)]
    it = itertools.cycle(requests)
    allocate = s.allocate

    def op() -> None:
        allocate("nvidia.com/gpu", next(it))

    benchmark(op)
    assert len(s.assignments()) == 1
