"""The agent's state object: allocation, refusals, attribution, health, preferred allocation."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
from typing import Any

import pytest

import gpulet
from gpulet import alloc, config
from gpulet._core import Node
from gpulet.alloc import ClaimOwner, ContainerOwner
from gpulet.deviceplugin import build_resources
from gpulet.deviceplugin.state import (
    PENDING_NAMESPACE,
    SHARED_NAMESPACE,
    AllocationError,
    Assignment,
    ContainerDevices,
    DevicePluginState,
)

pytestmark = pytest.mark.usefixtures("fake_library")

GPU = "nvidia.com/gpu"


def discover(spec: str) -> Node:
    with gpulet.simulated(spec):
        return gpulet.discover()


@pytest.fixture(scope="module")
def dgx_h100(fake_library: pathlib.Path) -> Node:
    return discover("dgx-h100")


@pytest.fixture(scope="module")
def dgx1(fake_library: pathlib.Path) -> Node:
    return discover("dgx1-volta")


@pytest.fixture(scope="module")
def hgx_h200(fake_library: pathlib.Path) -> Node:
    return discover("hgx-h200")


def make(node: Node, **doc: Any) -> DevicePluginState:
    cfg = config.parse({"version": "v1", **doc})
    return DevicePluginState(node, cfg, build_resources(node, cfg))


def ids(state: DevicePluginState, resource: str = GPU) -> list[str]:
    return [s.device.id for s in state.list_devices(resource)]


def refused(
    state: DevicePluginState, code: str, needle: str, resource: str, *requests: list[str]
) -> None:
    before = (state.ledger.snapshot(), state.assignments())
    with pytest.raises(AllocationError, match=needle) as info:
        state.allocate(resource, list(requests))
    assert info.value.code == code
    assert (state.ledger.snapshot(), state.assignments()) == before


def test_allocate_records_a_pending_owner_and_repeats_are_no_ops(dgx_h100: Node) -> None:
    s = make(dgx_h100)
    a, b = ids(s)[:2]
    granted = s.allocate(GPU, [[a, b]])
    assert [d.id for d in granted[0]] == [a, b]
    owner = s.holder(a)
    assert owner is not None
    assert owner.namespace == PENDING_NAMESPACE
    assert s.ledger.holder_of(a) == owner
    snapshot = s.ledger.snapshot()
    s.allocate(GPU, [[a, b]])  # the kubelet calls again for the same devices
    s.allocate(GPU, [[b]])  # or for some of them (init container devices reused)
    assert s.ledger.snapshot() == snapshot
    assert len(s.assignments()) == 1


def test_bad_requests_change_nothing(dgx_h100: Node) -> None:
    s = make(dgx_h100)
    a, b, c = ids(s)[:3]
    s.allocate(GPU, [[c]])
    refused(s, "invalid-argument", "unknown device", GPU, [a, "GPU-nope"])
    refused(s, "invalid-argument", "more than once", GPU, [a, a])
    refused(s, "invalid-argument", "names no device", GPU, [])
    refused(s, "invalid-argument", "does not serve", "nvidia.com/mig-1g.10gb", [a])
    s.set_health(b, False, "XID 79")
    refused(s, "failed-precondition", "unhealthy: XID 79", GPU, [a, b])
    # All or nothing over the containers of one call.
    refused(s, "failed-precondition", "unhealthy", GPU, [a], [b])


def test_a_device_held_by_dra_is_refused(dgx_h100: Node) -> None:
    s = make(dgx_h100)
    a, b = ids(s)[:2]
    s.ledger.allocate(ClaimOwner("claim-1"), [a])
    refused(s, "failed-precondition", "claim claim-1", GPU, [b, a])
    assert s.holder(b) is None


def test_fail_requests_greater_than_one(dgx_h100: Node) -> None:
    ts = {"failRequestsGreaterThanOne": True, "resources": [{"name": GPU, "replicas": 2}]}
    s = make(dgx_h100, sharing={"timeSlicing": ts})
    r0, r1 = ids(s)[:2]
    refused(s, "invalid-argument", "maximum request size for shared resources is 1", GPU, [r0, r1])
    s.allocate(GPU, [[r0]])
    assert s.ledger.holder_of(r0) == s.holder(r0)
    assert alloc.replicas_allocated(s.ledger)[dgx_h100.gpus[0].uuid] == 1


def test_the_kubelet_reassigning_a_device_releases_the_old_owner(dgx_h100: Node) -> None:
    s = make(dgx_h100)
    a, b, c = ids(s)[:3]
    s.allocate(GPU, [[a, b]])
    first = s.holder(a)
    s.allocate(GPU, [[b, c]])
    second = s.holder(b)
    assert second != first
    assert s.holder(a) is None
    assert s.ledger.holder_of(a) is None
    assert s.ledger.devices_of(second) == sorted([b, c])  # type: ignore[arg-type]


def test_reconcile_attributes_and_releases(dgx_h100: Node) -> None:
    s = make(dgx_h100)
    a, b, c = ids(s)[:3]
    s.allocate(GPU, [[a, b]])
    s.allocate(GPU, [[c]])  # a container PodResources will not list (an init container)
    mark = s.mark()
    report = s.reconcile([ContainerDevices("ns", "train", "main", GPU, (a, b))], mark)
    assert (report.attributed, report.released) == (1, 1)
    owner = ContainerOwner("ns", "train", "main")
    assert s.holder(a) == owner
    assert s.ledger.holder_of(b) == owner
    assert s.holder(c) is None
    # Unchanged list: nothing moves.
    assert (
        s.reconcile([ContainerDevices("ns", "train", "main", GPU, (a, b))], s.mark()).attributed
        == 0
    )
    # The pod is gone.
    report = s.reconcile([], s.mark())
    assert report.released == 1
    assert s.assignments() == []
    assert s.ledger.utilisation().gpus_held_whole == 0


def test_reconcile_keeps_allocations_newer_than_its_list(dgx_h100: Node) -> None:
    s = make(dgx_h100)
    a = ids(s)[0]
    mark = s.mark()
    s.allocate(GPU, [[a]])  # after the List was asked for
    s.reconcile([], mark)
    assert s.holder(a) is not None


def test_reconcile_ignores_other_resources_and_reports_unknown_ids(dgx_h100: Node) -> None:
    s = make(dgx_h100)
    a = ids(s)[0]
    report = s.reconcile(
        [
            ContainerDevices("ns", "p", "c", GPU, (a, "GPU-gone")),
            ContainerDevices("ns", "p", "c", "example.com/nic", ("eth0",)),
        ],
        s.mark(),
    )
    assert report.unknown_ids == ("GPU-gone",)
    assert s.holder(a) == ContainerOwner("ns", "p", "c")


def test_reconcile_conflicting_with_dra_is_reported(dgx_h100: Node) -> None:
    s = make(dgx_h100)
    a = ids(s)[0]
    s.ledger.allocate(ClaimOwner("claim-9"), [a])
    report = s.reconcile([ContainerDevices("ns", "p", "c", GPU, (a,))], s.mark())
    assert report.attributed == 0
    assert "claim-9" in report.conflicts[0]


def test_mig_replicas_hold_their_slice_once(hgx_h200: Node) -> None:
    mig = "nvidia.com/mig-3g.71gb"
    s = make(
        hgx_h200,
        flags={"migStrategy": "mixed"},
        sharing={"timeSlicing": {"resources": [{"name": mig, "replicas": 3}]}},
    )
    r0, r1, _ = ids(s, mig)
    key = (hgx_h200.gpus[7].uuid, 9, 4)
    s.allocate(mig, [[r0]])
    s.allocate(mig, [[r1]])
    holder = s.ledger.holder_of(key)
    assert isinstance(holder, ContainerOwner)
    assert holder.namespace == SHARED_NAMESPACE
    with pytest.raises(gpulet.errors.ConflictError):
        s.ledger.allocate(ClaimOwner("c"), [key])
    s.reconcile([ContainerDevices("ns", "p", "c", mig, (r1,))], s.mark())
    assert s.ledger.holder_of(key) == holder
    s.reconcile([], s.mark())
    assert s.ledger.holder_of(key) is None


def test_mig_devices_in_the_ledger(hgx_h200: Node) -> None:
    s = make(hgx_h200, flags={"migStrategy": "mixed"})
    mig = "nvidia.com/mig-2g.35gb"
    (m,) = ids(s, mig)
    s.allocate(mig, [[m]])
    assert s.ledger.holder_of((hgx_h200.gpus[7].uuid, 14, 0)) == s.holder(m)


def test_health_of_a_gpu_covers_its_replicas_and_mig_devices(hgx_h200: Node) -> None:
    s = make(
        hgx_h200,
        flags={"migStrategy": "mixed"},
        sharing={"timeSlicing": {"resources": [{"name": "nvidia.com/mig-3g.71gb", "replicas": 2}]}},
    )
    parent = hgx_h200.gpus[7]
    assert s.set_health(parent.uuid, False, "XID 48")
    assert not s.set_health(parent.uuid, False, "XID 48")
    statuses = s.list_devices("nvidia.com/mig-3g.71gb") + s.list_devices("nvidia.com/mig-2g.35gb")
    assert [(st.healthy, st.reason) for st in statuses] == [(False, "XID 48")] * 3
    assert all(st.healthy for st in s.list_devices(GPU))
    assert s.set_health("7", True)
    assert all(st.healthy for st in s.list_devices("nvidia.com/mig-3g.71gb"))
    assert s.set_health(parent.mig_devices[1].uuid + "::0", False, "XID 94")
    assert s.unhealthy() == {parent.mig_devices[1].uuid: "XID 94"}
    assert not s.set_health("GPU-unknown", False, "x")


def test_preferred_whole_gpus_is_the_allocator_answer(dgx1: Node) -> None:
    s = make(dgx1)
    all_ids = ids(s)
    uuid_of = {g.index: g.uuid for g in dgx1.gpus}
    for available, required, size in [
        (range(8), [], 2),
        (range(8), [3], 2),
        (range(8), [], 4),
        ([0, 1, 2, 4, 5, 6], [5], 3),
        (range(8), [1, 6], 4),
    ]:
        expected = alloc.preferred(dgx1.topology, available, required, size=size)
        got = s.preferred(
            GPU, [uuid_of[i] for i in available], [uuid_of[i] for i in required], size
        )
        assert got == [uuid_of[i] for i in expected]
    with pytest.raises(AllocationError, match="unknown") as info:
        s.preferred(GPU, ["GPU-x"], [], 1)
    assert info.value.code == "invalid-argument"
    with pytest.raises(AllocationError):
        s.preferred(GPU, all_ids[:2], [], 3)


def test_preferred_replicas_spread_over_gpus(dgx_h100: Node) -> None:
    s = make(dgx_h100, sharing={"timeSlicing": {"resources": [{"name": GPU, "replicas": 4}]}})
    available = ids(s)
    s.allocate(GPU, [[available[0]]])  # one replica of GPU 0 is held
    got = s.preferred(GPU, available[1:], [], 3)
    gpus = {s.resources.by_id[i].physical.gpu_index for i in got}
    assert len(gpus) == 3
    assert 0 not in gpus
    packed = make(
        dgx_h100,
        flags={"plugin": {"sharedDevicesAllocationPolicy": "packed"}},
        sharing={"timeSlicing": {"resources": [{"name": GPU, "replicas": 4}]}},
    )
    got = packed.preferred(GPU, available, [], 3)
    assert len({packed.resources.by_id[i].physical.gpu_index for i in got}) == 1


def test_watch_wakes_on_health_changes(dgx_h100: Node) -> None:
    s = make(dgx_h100)

    async def scenario() -> int:
        with s.watch() as w:
            loop = asyncio.get_running_loop()
            generation = s.generation
            await loop.run_in_executor(None, s.set_health, dgx_h100.gpus[2].uuid, False, "x")
            await asyncio.wait_for(w.wait(), timeout=30)
            return s.generation - generation

    assert asyncio.run(scenario()) == 1


def test_allocate_of_an_attributed_owners_devices_is_a_new_pending_owner(dgx_h100: Node) -> None:
    # Pod X held a and is gone; the kubelet gives a to pod Y. That Allocate is no repeat: it
    # must be recorded (and survive a List asked for before it), not left to X.
    s = make(dgx_h100)
    a = ids(s)[0]
    s.allocate(GPU, [[a]])
    s.reconcile([ContainerDevices("ns", "x", "main", GPU, (a,))], s.mark())
    assert s.holder(a) == ContainerOwner("ns", "x", "main")
    mark = s.mark()
    s.allocate(GPU, [[a]])  # pod Y, after the List was asked for
    owner = s.holder(a)
    assert owner is not None
    assert owner.namespace == PENDING_NAMESPACE
    assert s.ledger.holder_of(a) == owner
    s.reconcile([], mark)  # the List: X gone, Y not yet listed
    assert s.holder(a) == owner
    assert s.ledger.holder_of(a) == owner


def _replicas(state: DevicePluginState) -> dict[int, list[str]]:
    by_gpu: dict[int, list[str]] = {}
    for i in ids(state):
        by_gpu.setdefault(state.resources.by_id[i].physical.gpu_index, []).append(i)
    return by_gpu


def test_preferred_replicas_count_what_the_kubelet_does_not_offer_as_in_use(dgx_h100: Node) -> None:
    # The records hold nothing (say they were lost), but the kubelet offers only one replica of
    # each of GPUs 0-3: their other replicas are in use. NVIDIA's plugin counts those as used;
    # so must gpulet, and prefer the idle GPUs 4-7.
    s = make(dgx_h100, sharing={"timeSlicing": {"resources": [{"name": GPU, "replicas": 4}]}})
    stale: list[int] = []
    s.on_stale = lambda: stale.append(1)
    by_gpu = _replicas(s)
    available = [r for g in range(4) for r in by_gpu[g][:1]]
    available += [r for g in range(4, 8) for r in by_gpu[g]]
    got = s.preferred(GPU, available, [], 4)
    assert {s.resources.by_id[i].physical.gpu_index for i in got} == {4, 5, 6, 7}
    assert stale, "a disagreement with the records asks for a reconciliation"


def test_preferred_replicas_trust_the_kubelet_over_stale_records(dgx_h100: Node) -> None:
    # The records say two replicas of GPU 0 are held, but the pod is gone: the kubelet offers
    # every replica. GPU 0 is as free as the others; under "packed" its replicas come first.
    s = make(
        dgx_h100,
        flags={"plugin": {"sharedDevicesAllocationPolicy": "packed"}},
        sharing={"timeSlicing": {"resources": [{"name": GPU, "replicas": 4}]}},
    )
    by_gpu = _replicas(s)
    # Ties go to the lowest UUID; hold two replicas on the GPU with the highest one.
    order = sorted(range(8), key=lambda g: dgx_h100.gpus[g].uuid)
    first, held = order[0], order[-1]
    s.allocate(GPU, [by_gpu[held][:2]])
    stale: list[int] = []
    s.on_stale = lambda: stale.append(1)
    got = s.preferred(GPU, ids(s), [], 2)
    # With the stale records, "packed" would fill the GPU with two held already; the kubelet
    # says nothing is in use, so the tie-break decides.
    assert {s.resources.by_id[i].physical.gpu_index for i in got} == {first}
    assert stale
    # When the views agree, nothing is asked for.
    stale.clear()
    s.preferred(GPU, [i for i in ids(s) if i not in by_gpu[held][:2]], [], 2)
    assert not stale


def test_the_ledger_is_the_only_record(dgx_h100: Node) -> None:
    # Everything the state answers comes from the ledger: put the ledger back as it was and
    # the state's answers follow (a copy kept beside the ledger would not).
    s = make(dgx_h100)
    a, b = ids(s)[:2]
    s.allocate(GPU, [[a], [b]])
    snapshot, assignments, mark = s.ledger.snapshot(), s.assignments(), s.mark()
    s.reconcile([], s.mark())
    assert s.assignments() == []
    s.ledger.restore(snapshot)
    assert s.assignments() == assignments
    assert s.mark() == mark
    assert s.holder(a) == assignments[0].owner
    # A repeat is judged by the restored ledger too.
    s.allocate(GPU, [[a]])
    assert s.ledger.snapshot() == snapshot
    # The ledger's allocations are the state's assignments.
    [first, second] = s.ledger.allocations("device-plugin")
    assert (first.devices, first.pending) == ([a], True)
    assert first.seq < second.seq


def test_mig_replicas_are_ledger_devices(hgx_h200: Node) -> None:
    mig = "nvidia.com/mig-3g.71gb"
    s = make(
        hgx_h200,
        flags={"migStrategy": "mixed"},
        sharing={"timeSlicing": {"resources": [{"name": mig, "replicas": 3}]}},
    )
    r0, r1, r2 = ids(s, mig)
    parent = hgx_h200.gpus[7].uuid
    s.allocate(mig, [[r0]])
    owner = s.holder(r0)
    assert owner is not None
    assert s.ledger.holder_of((parent, 9, 4, 0)) == owner
    assert s.ledger.holder_of((parent, 9, 4, 1)) is None
    assert s.ledger.devices_of(owner) == [(parent, 9, 4, 0)]
    assert alloc.replicas_allocated(s.ledger)[parent] == 1
    with pytest.raises(gpulet.errors.ConflictError, match="device-plugin path"):
        s.ledger.allocate(ClaimOwner("c"), [(parent, 9, 4, 2)])
    # Replica selection counts the ledger's replicas: when the kubelet offers all but the held
    # one, the views agree; when it offers all three, the records are stale.
    stale: list[int] = []
    s.on_stale = lambda: stale.append(1)
    assert len(s.preferred(mig, [r1, r2], [], 1)) == 1
    assert not stale
    s.preferred(mig, [r0, r1, r2], [], 1)
    assert stale


def test_mig_devices_without_a_placement_are_held_in_the_ledger(hgx_h200: Node) -> None:
    # NVML gave no placement for the 2g.35gb device: the ledger holds it by its ID.
    cfg = config.parse({"version": "v1", "flags": {"migStrategy": "mixed"}})
    resources = build_resources(hgx_h200, cfg)
    mig = "nvidia.com/mig-2g.35gb"
    spec = resources.resource(mig)
    (d,) = spec.devices
    assert d.physical.mig is not None
    unplaced = dataclasses.replace(
        d,
        physical=dataclasses.replace(
            d.physical, mig=dataclasses.replace(d.physical.mig, placement_start=None)
        ),
    )
    resources = dataclasses.replace(
        resources,
        resources=tuple(
            dataclasses.replace(r, devices=(unplaced,)) if r.name == mig else r
            for r in resources.resources
        ),
    )
    s = DevicePluginState(hgx_h200, cfg, resources)
    parent = hgx_h200.gpus[7].uuid
    s.allocate(mig, [[d.id]])
    owner = s.holder(d.id)
    assert owner is not None
    assert s.ledger.holder_of((parent, d.id)) == owner
    assert s.assignments() == [Assignment(owner, (d.id,), True)]
    # The GPU is split into MIG devices: DRA cannot take it, nor anything on it.
    with pytest.raises(gpulet.errors.ConflictError):
        s.ledger.allocate(ClaimOwner("c"), [parent])
    s.reconcile([ContainerDevices("ns", "p", "c", mig, (d.id,))], s.mark())
    assert s.ledger.holder_of((parent, d.id)) == ContainerOwner("ns", "p", "c")
    s.reconcile([], s.mark())
    assert s.ledger.holder_of((parent, d.id)) is None


def test_detach_releases_the_device_plugin_and_leaves_dra(dgx_h100: Node) -> None:
    s = make(dgx_h100)
    a = ids(s)[0]
    s.allocate(GPU, [[a]])
    s.detach()
    assert s.ledger.allocations() == []
    assert s.holder(a) is None
    again = DevicePluginState(dgx_h100, s.config, s.resources, s.ledger)
    again.allocate(GPU, [[a]])
    assert again.holder(a) is not None
