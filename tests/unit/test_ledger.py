"""The ledger through the Python API: rules, snapshots, random operations, threads."""

from __future__ import annotations

import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulet import alloc
from gpulet.alloc import ClaimOwner, ContainerOwner, Device, Ledger, Owner
from gpulet.errors import (
    ConflictError,
    InvalidArgumentError,
    SnapshotError,
    UnknownModelError,
)

A100 = "A100-SXM4-40GB"
# A100-SXM4-40GB GPU-instance profile id -> memory slices (the placement size).
A100_SPANS = {19: 1, 20: 1, 15: 2, 14: 2, 9: 4, 5: 4, 0: 8}


def node() -> Ledger:
    ledger = Ledger()
    ledger.register_gpu("GPU-0")
    ledger.register_gpu("GPU-1", replicas=4)
    ledger.register_gpu("GPU-2", model=A100)
    return ledger


def pod(name: str) -> ContainerOwner:
    return ContainerOwner("default", name, "main")


def test_allocate_release_idempotent() -> None:
    ledger = node()
    a = pod("a")
    ledger.allocate(a, ["GPU-0"])
    ledger.allocate(a, ["GPU-0"])
    assert ledger.devices_of(a) == ["GPU-0"]
    assert ledger.holder_of("GPU-0") == a
    with pytest.raises(ConflictError, match="already holds"):
        ledger.allocate(a, ["GPU-2"])
    with pytest.raises(ConflictError, match="GPU-0 is held by container default/a/main"):
        ledger.allocate(pod("b"), ["GPU-0"])
    assert ledger.release(a) == ["GPU-0"]
    assert ledger.release(a) == []
    assert ledger.holder_of("GPU-0") is None


def test_owners() -> None:
    a = ContainerOwner("ns", "p", "c", pod_uid="uid-1")
    assert (a.namespace, a.pod, a.container, a.pod_uid, a.path) == (
        "ns",
        "p",
        "c",
        "uid-1",
        "device-plugin",
    )
    assert a == ContainerOwner("ns", "p", "c", "uid-1")
    assert a != ContainerOwner("ns", "p", "c")
    assert len({a, ContainerOwner("ns", "p", "c", "uid-1")}) == 1
    c = ClaimOwner("claim-uid")
    assert (c.uid, c.path) == ("claim-uid", "dra")
    assert str(c) == "claim claim-uid via dra"
    assert "ClaimOwner" in repr(c)
    with pytest.raises(InvalidArgumentError, match="path"):
        ClaimOwner("x", path="kubelet")
    with pytest.raises(InvalidArgumentError, match="empty"):
        ContainerOwner("", "p", "c")
    with pytest.raises(TypeError, match="ContainerOwner or a ClaimOwner"):
        node().allocate("pod-a", ["GPU-0"])  # type: ignore[arg-type]


def test_whole_gpu_replicas_and_mig_slices() -> None:
    ledger = node()
    ledger.allocate(pod("a"), ["GPU-1::0"])
    ledger.allocate(pod("b"), ["GPU-1::1", "GPU-1::2"])
    with pytest.raises(ConflictError, match=r"GPU-1::0 is held by container default/a/main"):
        ledger.allocate(pod("c"), ["GPU-1"])
    with pytest.raises(ConflictError, match="device-plugin path"):
        ledger.allocate(ClaimOwner("x"), ["GPU-1::3"])
    ledger.allocate(ClaimOwner("x"), [("GPU-2", 19, 0)])
    ledger.allocate(ClaimOwner("y"), [("GPU-2", 19, 1)])
    with pytest.raises(ConflictError, match="split into MIG slices"):
        ledger.allocate(ClaimOwner("z"), ["GPU-2"])
    with pytest.raises(ConflictError, match="overlaps"):
        ledger.allocate(ClaimOwner("z"), [("GPU-2", 9, 0)])
    ledger.allocate(ClaimOwner("z"), [("GPU-2", 9, 4)])
    assert ledger.holder_of(("GPU-2", 9, 4)) == ClaimOwner("z")
    u = ledger.utilisation()
    assert (u.gpus, u.gpus_free, u.gpus_shared, u.gpus_held_whole) == (3, 1, 2, 0)
    assert (u.replicas, u.replicas_held, u.mig_slices_held) == (4, 3, 3)
    assert (u.owners, u.owners_device_plugin, u.owners_dra) == (5, 2, 3)
    usage = {g.uuid: g for g in ledger.usage()}
    assert usage["GPU-1"].held_path == "device-plugin"
    assert usage["GPU-2"].model == A100
    assert usage["GPU-2"].mig_slices_held == 3
    ledger.allocate(ClaimOwner("w"), ["GPU-0"])
    assert ledger.usage()[0].whole == ClaimOwner("w")


@pytest.mark.parametrize(
    ("devices", "needle"),
    [
        (["GPU-9"], "not registered"),
        (["GPU-1::4"], "GPU-1::0 to GPU-1::3"),
        (["GPU-0::0"], "not shared"),
        (["GPU-1::x"], "replica number"),
        ([("GPU-0", 19, 0)], "without its model"),
        ([("GPU-2", 99, 0)], "no MIG profile id 99"),
        ([("GPU-2", 9, 2)], "cannot start"),
        (["GPU-1", "GPU-1::0"], "whole and also"),
        ([("GPU-2", 9, 0), ("GPU-2", 19, 3)], "overlap"),
        ([], "names no device"),
    ],
)
def test_refusals_change_nothing(devices: list[Device], needle: str) -> None:
    ledger = node()
    ledger.allocate(pod("a"), ["GPU-1::2"])
    before = ledger.snapshot()
    with pytest.raises(InvalidArgumentError, match=needle):
        ledger.allocate(pod("b"), devices)
    assert ledger.snapshot() == before


def test_failed_allocate_is_all_or_nothing() -> None:
    ledger = node()
    ledger.allocate(pod("a"), ["GPU-1::2"])
    before = ledger.snapshot()
    with pytest.raises(ConflictError):
        ledger.allocate(pod("b"), ["GPU-0", "GPU-1::2"])
    assert ledger.snapshot() == before
    assert ledger.holder_of("GPU-0") is None


def test_bad_device_types() -> None:
    with pytest.raises(TypeError, match="not one string"):
        node().allocate(pod("a"), "GPU-0")
    with pytest.raises(TypeError, match="a device is"):
        node().allocate(pod("a"), [3])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match="not registered"):
        node().holder_of("GPU-7")


def test_registration() -> None:
    ledger = Ledger()
    ledger.register_gpu("GPU-0", replicas=2, serves="dra")
    with pytest.raises(ConflictError, match="served by the dra path"):
        ledger.allocate(pod("a"), ["GPU-0::0"])
    assert ledger.free_devices("device-plugin") == []
    ledger.allocate(ClaimOwner("c"), ["GPU-0::0"])
    assert ledger.free_devices("dra") == ["GPU-0::1"]
    ledger.register_gpu("GPU-0", replicas=2, serves="dra")
    with pytest.raises(ConflictError, match="release them"):
        ledger.register_gpu("GPU-0", replicas=4)
    with pytest.raises(ConflictError):
        ledger.unregister_gpu("GPU-0")
    ledger.release(ClaimOwner("c"))
    ledger.register_gpu("GPU-0", replicas=4)
    ledger.unregister_gpu("GPU-0")
    with pytest.raises(InvalidArgumentError):
        ledger.unregister_gpu("GPU-0")
    with pytest.raises(UnknownModelError):
        ledger.register_gpu("GPU-1", model="Z100")
    with pytest.raises(InvalidArgumentError):
        ledger.register_gpu("GPU-1", replicas=-1)
    with pytest.raises(InvalidArgumentError):
        ledger.register_gpu("GPU-1::0")


def test_free_devices_can_all_be_taken() -> None:
    ledger = node()
    ledger.allocate(ClaimOwner("x"), [("GPU-2", 19, 0)])
    free = ledger.free_devices()
    assert "GPU-0" in free
    assert "GPU-1::3" in free
    assert ("GPU-2", 9, 4) in free
    assert ("GPU-2", 9, 0) not in free
    for i, d in enumerate(free):
        owner = ClaimOwner(f"probe-{i}")
        ledger.allocate(owner, [d])
        ledger.release(owner)


def test_snapshot_round_trip_and_refusals() -> None:
    ledger = node()
    ledger.allocate(pod("a"), ["GPU-1::0", "GPU-1::3"])
    ledger.allocate(ContainerOwner("ns", "p", "c", "uid-1"), ["GPU-0"])
    ledger.allocate(ClaimOwner("x"), [("GPU-2", 14, 0), ("GPU-2", 14, 2)])
    data = ledger.snapshot()
    envelope = json.loads(data)
    assert (envelope["schema"], envelope["version"]) == ("gpulet.ledger", 2)
    back = Ledger.from_snapshot(data)
    assert back.snapshot() == data
    assert back.holdings() == ledger.holdings()
    fresh = Ledger()
    fresh.restore(data)
    assert fresh.snapshot() == data
    text = data.decode()
    for bad in [
        data[: len(data) // 2],
        text.replace('"version":2', '"version":3').encode(),
        text.replace('"index":3', '"index":0').encode(),
        b"{}",
        b"",
    ]:
        with pytest.raises(SnapshotError):
            fresh.restore(bad)
        assert fresh.snapshot() == data


# ---- invariants, random operations, threads ----


def check_invariants(ledger: Ledger) -> None:
    holdings = ledger.holdings()
    held: dict[Device, Owner] = {}
    for owner, devices in holdings:
        for d in devices:
            assert d not in held, f"{d} held twice"
            held[d] = owner
            assert ledger.holder_of(d) == owner
    by_gpu: dict[str, list[tuple[Device, Owner]]] = {}
    for d, o in held.items():
        parent = d[0] if isinstance(d, tuple) else d.split("::")[0]
        by_gpu.setdefault(parent, []).append((d, o))
    shared_slices = {d[:3] for d in held if isinstance(d, tuple) and len(d) == 4}
    for gpu, items in by_gpu.items():
        owners = {o for _, o in items}
        assert len({o.path for o in owners}) == 1, f"{gpu} held through two paths"
        kinds = {
            ("mig" if isinstance(d, tuple) else "replica" if "::" in d else "gpu") for d, _ in items
        }
        if "gpu" in kinds or kinds == {"replica", "mig"}:
            assert len(owners) == 1, f"{gpu}: {items}"
        # Slices: those held, and those held for their replicas (once, by the shared owner).
        slices: list[tuple[int, int, Owner | str]] = [
            (d[2], d[2] + A100_SPANS[d[1]], o)
            for d, o in items
            if isinstance(d, tuple) and len(d) == 3
        ]
        slices += [
            (s[2], s[2] + A100_SPANS[s[1]], f"shared {s}") for s in shared_slices if s[0] == gpu
        ]
        for i, (a0, a1, oa) in enumerate(slices):
            for b0, b1, ob in slices[i + 1 :]:
                assert a1 <= b0 or b1 <= a0 or oa == ob, f"{gpu}: overlapping slices"
    for s in shared_slices:
        holder = ledger.holder_of(s)
        assert isinstance(holder, ContainerOwner)
        assert holder.namespace == alloc.SHARED_NAMESPACE
    u = ledger.utilisation()
    assert u.owners == len(holdings)
    assert u.replicas_held == sum(1 for d in held if isinstance(d, str) and "::" in d)
    assert u.mig_slices_held == sum(1 for d in held if isinstance(d, tuple) and len(d) == 3) + len(
        shared_slices
    )
    assert u.mig_replicas_held == sum(1 for d in held if isinstance(d, tuple) and len(d) == 4)
    assert u.gpus_held_whole == sum(1 for d in held if isinstance(d, str) and "::" not in d)
    assert u.gpus == u.gpus_free + u.gpus_shared + u.gpus_held_whole
    assert u.replicas_held == sum(g.replicas_held for g in ledger.usage())


def random_ledger() -> Ledger:
    ledger = Ledger()
    for g in range(4):
        ledger.register_gpu(
            f"GPU-{g}",
            replicas=3 if g % 2 else 0,
            model=A100 if g >= 2 else None,
            mig_replicas={(9, 4): 3, (19, 0): 2} if g >= 2 else None,
        )
    return ledger


devices_st = st.one_of(
    st.builds(lambda g: f"GPU-{g}", st.integers(0, 3)),
    st.builds(lambda g, i: f"GPU-{g}::{i}", st.integers(0, 3), st.integers(0, 3)),
    st.builds(
        lambda g, ps: (f"GPU-{g}", ps[0], ps[1]),
        st.integers(0, 3),
        st.sampled_from([(0, 0), (5, 0), (9, 0), (9, 4), (14, 2), (19, 5), (19, 6), (15, 6)]),
    ),
    st.builds(
        lambda g, ps, i: (f"GPU-{g}", ps[0], ps[1], i),
        st.integers(0, 3),
        st.sampled_from([(9, 4), (19, 0), (9, 0)]),
        st.integers(0, 2),
    ),
    st.builds(lambda g, i: (f"GPU-{g}", i), st.integers(0, 3), st.sampled_from(["MIG-a", "MIG-b"])),
)


def owner_of(i: int) -> Owner:
    return ContainerOwner("ns", f"pod-{i}", "c") if i % 2 == 0 else ClaimOwner(f"claim-{i}")


Op = tuple[str, int, list[Device]]
no_devices: list[Device] = []

ops_st: st.SearchStrategy[list[Op]] = st.lists(
    st.one_of(
        st.tuples(
            st.just("allocate"), st.integers(0, 5), st.lists(devices_st, min_size=1, max_size=3)
        ),
        st.tuples(st.just("release"), st.integers(0, 5), st.just(no_devices)),
        st.tuples(st.just("restore"), st.just(0), st.just(no_devices)),
    ),
    max_size=40,
)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(ops_st)
def test_random_operations_keep_invariants(ops: list[Op]) -> None:
    ledger = random_ledger()
    for kind, i, devices in ops:
        before = ledger.snapshot()
        owner = owner_of(i)
        if kind == "allocate":
            try:
                ledger.allocate(owner, devices)
            except (ConflictError, InvalidArgumentError):
                assert ledger.snapshot() == before
            else:
                assert Counter(ledger.devices_of(owner)) == Counter(set(devices))
                after = ledger.snapshot()
                ledger.allocate(owner, list(reversed(devices)))
                assert ledger.snapshot() == after
        elif kind == "release":
            held = ledger.devices_of(owner)
            assert ledger.release(owner) == held
            after = ledger.snapshot()
            assert ledger.release(owner) == []
            assert ledger.snapshot() == after
        else:
            copy = Ledger.from_snapshot(before)
            assert copy.holdings() == ledger.holdings()
            ledger.restore(before)
            assert ledger.snapshot() == before
        check_invariants(ledger)


def test_concurrent_callers_from_threads() -> None:
    ledger = Ledger()
    gpus = [f"GPU-{g}" for g in range(8)]
    for g in gpus:
        ledger.register_gpu(g, replicas=8)
    devices: list[Device] = [*gpus, *(f"{g}::{i}" for g in gpus for i in range(8))]

    def worker(t: int) -> dict[Owner, list[Device]]:
        rng = random.Random(t)
        mine: dict[Owner, list[Device]] = {}
        owners: list[Owner] = [ContainerOwner("ns", f"t{t}-pod-{i}", "c") for i in range(10)]
        for _ in range(2000):
            owner = rng.choice(owners)
            if owner in mine and rng.random() < 0.5:
                assert sorted(ledger.release(owner), key=str) == sorted(mine.pop(owner), key=str)
                continue
            want = rng.sample(devices, rng.randint(1, 2))
            try:
                ledger.allocate(owner, want)
            except (ConflictError, InvalidArgumentError):
                continue
            if owner in mine:
                assert set(mine[owner]) == set(want)
            mine[owner] = want
        return mine

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    expected = {o: sorted(set(d), key=str) for r in results for o, d in r.items()}
    actual = {o: sorted(d, key=str) for o, d in ledger.holdings()}
    assert actual == expected
    check_invariants(ledger)
    u = ledger.utilisation()
    assert u.owners == len(expected)
    assert u.replicas_held + u.gpus_held_whole == sum(len(d) for d in expected.values())
    # Everything released: the node is free again.
    for o in expected:
        ledger.release(o)
    assert ledger.utilisation().gpus_free == 8
    assert alloc.replicas_allocated(ledger) == dict.fromkeys(gpus, 0)


# ---- replicas of MIG slices, MIG devices without a placement ----


def shared_mig_node() -> Ledger:
    """GPU-0 and GPU-1 of :func:`node`, and an A100 whose 3g.20gb at 4 is shared as 3."""
    ledger = node()
    ledger.register_gpu("GPU-2", model=A100, mig_replicas={(9, 4): 3})
    return ledger


def test_mig_replicas_hold_their_slice_for_all_of_them() -> None:
    ledger = shared_mig_node()
    ledger.allocate(pod("a"), [("GPU-2", 9, 4, 0)])
    ledger.allocate(pod("b"), [("GPU-2", 9, 4, 1), ("GPU-2", 9, 4, 2)])
    assert ledger.holder_of(("GPU-2", 9, 4, 1)) == pod("b")
    assert ledger.devices_of(pod("b")) == [("GPU-2", 9, 4, 1), ("GPU-2", 9, 4, 2)]
    shared = ledger.holder_of(("GPU-2", 9, 4))
    assert shared == ContainerOwner(alloc.SHARED_NAMESPACE, "GPU-2", "mig-9-4")
    with pytest.raises(ConflictError, match=r"shared as replicas \(replica 0 of MIG slice"):
        ledger.allocate(ClaimOwner("x"), [("GPU-2", 9, 4)])
    with pytest.raises(ConflictError, match="is held by container default/b/main"):
        ledger.allocate(pod("c"), [("GPU-2", 9, 4, 1)])
    with pytest.raises(InvalidArgumentError, match="reserved"):
        ledger.allocate(shared, ["GPU-0"])
    assert ledger.release(shared) == []
    usage = {u.uuid: u for u in ledger.usage()}["GPU-2"]
    assert (usage.mig_slices_held, usage.mig_replicas, usage.mig_replicas_held) == (1, 3, 3)
    assert ledger.utilisation().mig_replicas_held == 3
    assert alloc.replicas_allocated(ledger) == {"GPU-1": 0, "GPU-2": 3}
    ledger.release(pod("b"))
    assert ledger.holder_of(("GPU-2", 9, 4)) == shared
    assert [d for d in ledger.free_devices() if len(d) == 4] == [
        ("GPU-2", 9, 4, 1),
        ("GPU-2", 9, 4, 2),
    ]
    ledger.release(pod("a"))
    assert ledger.holder_of(("GPU-2", 9, 4)) is None
    check_invariants(ledger)


@pytest.mark.parametrize(
    ("mig_replicas", "error", "needle"),
    [
        ({(9, 2): 2}, InvalidArgumentError, "cannot start"),
        ({(9, 4): 0}, InvalidArgumentError, "1 to 4096"),
        ({(9, 4): -1}, InvalidArgumentError, "out of range"),
        ({9: 2}, TypeError, r"maps \(profile id, start\)"),
    ],
)
def test_mig_replicas_registration_refusals(
    mig_replicas: dict[object, int], error: type[Exception], needle: str
) -> None:
    ledger = Ledger()
    with pytest.raises(error, match=needle):
        ledger.register_gpu("GPU-0", model=A100, mig_replicas=mig_replicas)  # type: ignore[arg-type]
    assert ledger.usage() == []


@pytest.mark.parametrize(
    ("devices", "needle"),
    [
        ([("GPU-2", 9, 4, 3)], "has replicas 0 to 2"),
        ([("GPU-2", 9, 0, 0)], "is not shared"),
        ([("GPU-2", 9, 4), ("GPU-2", 9, 4, 0)], "and its replica 0"),
        ([("GPU-1", "MIG-x"), "GPU-1::0"], "not both"),
        ([("GPU-1", "")], "device-plugin ID"),
        ([("GPU-2", 9, 4, -1)], "out of range"),
    ],
)
def test_mig_replica_refusals_change_nothing(devices: list[Device], needle: str) -> None:
    ledger = shared_mig_node()
    ledger.allocate(pod("a"), [("GPU-2", 9, 4, 1)])
    before = ledger.snapshot()
    with pytest.raises(InvalidArgumentError, match=needle):
        ledger.allocate(pod("b"), devices)
    assert ledger.snapshot() == before


def test_mig_devices_without_a_placement() -> None:
    ledger = node()
    ledger.allocate(pod("a"), [("GPU-2", "MIG-a")])
    ledger.allocate(pod("b"), [("GPU-2", "MIG-b::0"), ("GPU-2", 19, 0)])
    assert ledger.holder_of(("GPU-2", "MIG-a")) == pod("a")
    assert ledger.holder_of(("GPU-2", "MIG-c")) is None
    with pytest.raises(ConflictError, match="MIG device MIG-a of GPU-2 is held by"):
        ledger.allocate(pod("c"), [("GPU-2", "MIG-a")])
    with pytest.raises(ConflictError, match="split into MIG slices"):
        ledger.allocate(pod("c"), ["GPU-2"])
    check_invariants(ledger)


# ---- the device plugin's pending allocations, attribution and release ----

GPU_RESOURCE = "nvidia.com/gpu"


def whole_gpus(n: int = 6) -> Ledger:
    ledger = Ledger()
    for g in range(n):
        ledger.register_gpu(f"GPU-{g}")
    return ledger


def pending(seq: int, resource: str = GPU_RESOURCE) -> ContainerOwner:
    return ContainerOwner(alloc.PENDING_NAMESPACE, f"allocate-{seq}", resource)


def test_allocate_pending_repeats_and_reassignment() -> None:
    ledger = whole_gpus()
    assert ledger.mark() == 0
    assert ledger.allocate_pending(GPU_RESOURCE, [["GPU-0", "GPU-1"], ["GPU-2"]]) == []
    assert ledger.holder_of("GPU-0") == pending(1)
    assert ledger.holder_of("GPU-2") == pending(2)
    assert ledger.mark() == 2
    before = ledger.snapshot()
    assert ledger.allocate_pending(GPU_RESOURCE, [["GPU-1"], ("GPU-0", "GPU-1")]) == []
    assert ledger.snapshot() == before
    # GPU-1 given to another container: the old pending owner is gone.
    released = ledger.allocate_pending(GPU_RESOURCE, [["GPU-1", "GPU-3"]])
    assert released == [(pending(1), ["GPU-0", "GPU-1"])]
    allocations = ledger.allocations("device-plugin")
    assert [(a.owner, a.devices, a.seq, a.pending) for a in allocations] == [
        (pending(2), ["GPU-2"], 2, True),
        (pending(3), ["GPU-1", "GPU-3"], 3, True),
    ]
    assert "pending=True" in repr(allocations[0])


def test_allocate_pending_is_all_or_nothing() -> None:
    ledger = whole_gpus()
    ledger.allocate(ClaimOwner("c"), ["GPU-0"])
    ledger.allocate_pending(GPU_RESOURCE, [["GPU-1"]])
    before = (ledger.snapshot(), ledger.mark())
    with pytest.raises(ConflictError, match="GPU-0 is held by claim c via dra"):
        ledger.allocate_pending(GPU_RESOURCE, [["GPU-1", "GPU-2"], ["GPU-0"]])
    with pytest.raises(InvalidArgumentError, match="not registered"):
        ledger.allocate_pending(GPU_RESOURCE, [["GPU-3"], ["GPU-9"]])
    with pytest.raises(InvalidArgumentError, match="names no device"):
        ledger.allocate_pending(GPU_RESOURCE, [["GPU-3"], []])
    with pytest.raises(TypeError, match="one per container"):
        ledger.allocate_pending(GPU_RESOURCE, "GPU-3")
    with pytest.raises(TypeError, match="not one string"):
        ledger.allocate_pending(GPU_RESOURCE, ["GPU-3"])
    assert (ledger.snapshot(), ledger.mark()) == before


def test_reconcile_through_the_bindings() -> None:
    ledger = whole_gpus()
    ledger.allocate(ClaimOwner("claim-9"), ["GPU-5"])
    ledger.allocate_pending(GPU_RESOURCE, [["GPU-0", "GPU-1"], ["GPU-2"]])
    mark = ledger.mark()
    ledger.allocate_pending(GPU_RESOURCE, [["GPU-3"]])
    train, other = ContainerOwner("ns", "train", "main"), ContainerOwner("ns", "x", "main")
    r = ledger.reconcile([(train, ("GPU-1", "GPU-0")), (other, ["GPU-5"])], mark)
    assert r.attributed == [(train, ["GPU-0", "GPU-1"])]
    assert r.released == [(pending(3), ["GPU-2"])]
    assert r.reassigned == []
    [(owner, devices, message)] = r.conflicts
    assert (owner, devices) == (other, ["GPU-5"])
    assert "claim claim-9" in message
    assert "attributed=1" in repr(r)
    assert ledger.holder_of("GPU-3") == pending(4)  # asked for after the mark: kept
    assert ledger.held_per_gpu(["GPU-0", "GPU-3", "GPU-4", "GPU-5"], "device-plugin") == {
        "GPU-0": 1,
        "GPU-3": 1,
    }
    assert ledger.held_per_gpu(["GPU-5"]) == {"GPU-5": 1}
    with pytest.raises(InvalidArgumentError, match="device-plugin containers only"):
        ledger.reconcile([(ClaimOwner("x"), ["GPU-4"])], ledger.mark())
    with pytest.raises(InvalidArgumentError, match="mark"):
        ledger.reconcile([], -1)
    with pytest.raises(TypeError, match=r"tuple \(owner, devices\)"):
        ledger.reconcile([train], ledger.mark())  # type: ignore[list-item]
    assert ledger.release_path("device-plugin") == [
        (pending(4), ["GPU-3"]),
        (train, ["GPU-0", "GPU-1"]),
    ]
    assert [a.owner for a in ledger.allocations()] == [ClaimOwner("claim-9")]


def test_snapshot_of_version_1_loads() -> None:
    v1 = {
        "schema": "gpulet.ledger",
        "version": 1,
        "body": {
            "gpus": [{"uuid": "GPU-0", "replicas": 2, "model": None, "serves": None}],
            "holdings": [
                {
                    "owner": {"kind": "claim", "path": "dra", "uid": "c1"},
                    "devices": [{"kind": "replica", "uuid": "GPU-0", "index": 1}],
                }
            ],
        },
    }
    ledger = Ledger.from_snapshot(json.dumps(v1).encode())
    [a] = ledger.allocations()
    assert (a.owner, a.devices, a.seq, a.pending) == (ClaimOwner("c1"), ["GPU-0::1"], 1, False)
    assert json.loads(ledger.snapshot())["version"] == 2
    v1["body"]["holdings"][0]["owner"] = {  # type: ignore[index]
        "kind": "container",
        "path": "dra",
        "namespace": "gpulet-shared",
        "pod": "MIG-x",
        "container": "replicas",
        "pod_uid": None,
    }
    with pytest.raises(SnapshotError, match="did not record who holds each replica"):
        Ledger.from_snapshot(json.dumps(v1).encode())
