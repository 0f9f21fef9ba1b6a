"""Preferred allocation, scores and replica selection through the Python API."""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulet import Topology, alloc
from gpulet.errors import InfeasibleError, InvalidArgumentError

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

LEVELS = ["board", "single-switch", "multi-switch", "host-bridge", "same-cpu", "cross-cpu"]
PCIE_POINTS = dict(zip(LEVELS, [60, 50, 40, 30, 20, 10], strict=True))


def board_pcie(gpus: int) -> dict[tuple[int, int], str]:
    pcie = {}
    for a, b in itertools.combinations(range(gpus), 2):
        if a // 2 == b // 2:
            pcie[(a, b)] = "single-switch"
        elif a // 4 == b // 4:
            pcie[(a, b)] = "host-bridge"
    return pcie


def dgx1v() -> Topology:
    return Topology(8, nvlinks=DGX1V_LINKS, pcie=board_pcie(8), numa=[0] * 4 + [1] * 4)


def two_boards() -> Topology:
    links = dict(DGX1V_LINKS)
    links.update({(a + 8, b + 8): n for (a, b), n in DGX1V_LINKS.items()})
    return Topology(16, nvlinks=links, pcie=board_pcie(16), numa=[g // 4 for g in range(16)])


def successive(topo: Topology, size: int) -> list[list[int]]:
    available = list(range(topo.gpu_count))
    out = []
    while len(available) >= size:
        got = alloc.preferred(topo, available, size=size)
        available = [g for g in available if g not in got]
        out.append(got)
    return out


def test_dgx1_volta_pairs_and_quads() -> None:
    topo = dgx1v()
    assert successive(topo, 2) == [[0, 3], [1, 2], [4, 7], [5, 6]]
    assert successive(topo, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_required_and_order_independence() -> None:
    topo = dgx1v()
    assert alloc.preferred(topo, range(8), [3], size=2) == [0, 3]
    assert alloc.preferred(topo, [7, 6, 5, 4], [5], size=2) == [5, 6]
    assert alloc.preferred(topo, (g for g in [4, 2, 7]), size=1) == [2]
    assert alloc.preferred(topo, range(8), size=8) == list(range(8))


def test_scores() -> None:
    topo = dgx1v()
    assert alloc.score(topo, [0, 3]) == 230
    assert alloc.score(topo, [0, 5]) == 10
    assert alloc.score(topo, []) == 0
    # NVSwitch: every pair counts 18 links; PCIe decides.
    sw = Topology(4, pcie={(0, 1): "single-switch"}, numa=[0, 0, 1, 1], nvswitch=True)
    assert alloc.score(sw, [0, 1]) == 1850
    assert alloc.preferred(sw, range(4), [2], size=2) == [2, 3]
    with pytest.raises(InvalidArgumentError, match="GPU 8"):
        alloc.score(topo, [0, 8])
    with pytest.raises(InvalidArgumentError, match="twice"):
        alloc.score(topo, [1, 1])


@pytest.mark.parametrize(
    ("available", "required", "size", "needle"),
    [
        (range(8), (), 0, "at least 1"),
        (range(8), (), 9, "more than the 8 available"),
        ([0, 1], [3], 2, "required GPU 3"),
        (range(8), [0, 1, 2], 2, "3 GPUs are required"),
        (range(9), (), 2, "GPU 8"),
        ([-1, 0], (), 1, "GPU -1"),
    ],
)
def test_impossible_requests(
    available: list[int], required: list[int], size: int, needle: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        alloc.preferred(dgx1v(), available, required, size=size)


def test_policies() -> None:
    topo = dgx1v()
    assert alloc.preferred(topo, [7, 1, 4, 6], [6], size=3, policy="simple") == [1, 4, 6]
    with pytest.raises(InvalidArgumentError, match="best-effort"):
        alloc.preferred(topo, range(8), size=2, policy="greedy")  # type: ignore[arg-type]


def test_sixteen_gpus_prepared_and_concurrent() -> None:
    topo = two_boards()
    alloc.prepare(topo, [2, 4])
    alloc.prepare(topo)
    # Each board is a DGX-1V: pairs and quads stay within boards.
    assert successive(topo, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert successive(topo, 8) == [list(range(8)), list(range(8, 16))]
    expected = alloc.preferred(topo, range(16), [9], size=3)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: alloc.preferred(topo, range(16), [9], size=3), range(64)))
    assert all(a == expected for a in answers)


# ---- an independent reference: upstream's answer by its defining order ----


def pair_score(topo: Topology, a: int, b: int) -> int:
    links = topo.nvlinks(a, b)
    if topo.nvswitch:
        links = max(links, 18)
    return PCIE_POINTS[topo.pcie(a, b)] + 100 * links


def reference(topo: Topology, available: list[int], required: list[int], size: int) -> list[int]:
    """go-gpuallocator best-effort, by brute force over every partition of the padded list."""
    avail = sorted(set(available))
    req = set(required)
    if size == 1:
        return [min(req)] if req else [avail[0]]
    pad = -len(avail) % size
    # Padding slots are positions after every GPU; a set with padding holds all of it.
    slots = avail + [math.inf] * pad

    def set_score(s: tuple[float, ...]) -> int:
        reals = [int(g) for g in s if g != math.inf]
        return sum(pair_score(topo, a, b) for a, b in itertools.combinations(reals, 2))

    def partitions(rest: list[float]) -> list[list[tuple[float, ...]]]:
        if not rest:
            return [[]]
        out: list[list[tuple[float, ...]]] = []
        for others in itertools.combinations(rest[1:], size - 1):
            block = (rest[0], *others)
            if 0 < block.count(math.inf) < pad:
                continue
            remaining = (
                [g for g in rest if g not in block]
                if math.inf not in block
                else [g for g in rest if g not in block and g != math.inf]
            )
            out.extend([block, *p] for p in partitions(remaining))
        return out

    best = None
    for p in partitions(slots):
        if not any(req <= set(b) and math.inf not in b for b in p):
            continue
        key = (-sum(set_score(b) for b in p), p)
        if best is None or key < best:
            best = key
    assert best is not None
    sets = [b for b in best[1] if req <= set(b) and math.inf not in b]
    chosen = min(sets, key=lambda b: (-set_score(b), b))
    return sorted(int(g) for g in chosen)


@st.composite
def requests(draw: st.DrawFn) -> tuple[Topology, list[int], list[int], int]:
    n = draw(st.integers(2, 7))
    pairs = list(itertools.combinations(range(n), 2))
    links = {p: draw(st.integers(0, 2)) for p in pairs}
    pcie = {p: draw(st.sampled_from(LEVELS)) for p in pairs}
    nvswitch = draw(st.booleans())
    topo = Topology(n, nvlinks={p: c for p, c in links.items() if c}, pcie=pcie, nvswitch=nvswitch)
    available = draw(st.lists(st.integers(0, n - 1), min_size=1, unique=True))
    size = draw(st.integers(1, len(available)))
    required = draw(st.lists(st.sampled_from(available), max_size=min(size, 3), unique=True))
    return topo, available, required, size


@settings(derandomize=True, max_examples=150, deadline=None)
@given(requests())
def test_preferred_equals_reference(req: tuple[Topology, list[int], list[int], int]) -> None:
    topo, available, required, size = req
    got = alloc.preferred(topo, available, required, size=size)
    assert got == reference(topo, available, required, size)


# ---- replicas ----


def replica_ids(gpus: list[str], n: int) -> list[str]:
    return [f"{g}::{i}" for g in gpus for i in range(n)]


def test_select_replicas_policies() -> None:
    avail = replica_ids(["GPU-a", "GPU-b"], 4)
    assert alloc.select_replicas(avail, 4) == ["GPU-a::0", "GPU-b::0", "GPU-a::1", "GPU-b::1"]
    assert alloc.select_replicas(avail, 3, policy="packed", allocated={"GPU-b": 1}) == [
        "GPU-b::0",
        "GPU-b::1",
        "GPU-b::2",
    ]
    assert alloc.select_replicas(avail, 2, policy="spread", allocated={"GPU-a": 3}) == [
        "GPU-b::0",
        "GPU-a::0",
    ]
    assert alloc.select_replicas(avail, 2, ["GPU-a::3"], strict=True) == ["GPU-a::3", "GPU-b::0"]
    with pytest.raises(InfeasibleError, match="strict"):
        alloc.select_replicas(avail, 3, strict=True)
    with pytest.raises(InvalidArgumentError, match="not among the available"):
        alloc.select_replicas(avail, 2, ["GPU-z::0"])
    with pytest.raises(InvalidArgumentError, match="distributed"):
        alloc.select_replicas(avail, 2, policy="random")  # type: ignore[arg-type]
    # MIG devices map to their parent GPU.
    migs = ["MIG-1", "MIG-2", "MIG-3"]
    parents = {"MIG-1": "GPU-a", "MIG-2": "GPU-a", "MIG-3": "GPU-b"}
    assert alloc.select_replicas(migs, 2, strict=True, parents=parents) == ["MIG-1", "MIG-3"]


def test_select_replicas_follows_the_ledger() -> None:
    ledger = alloc.Ledger()
    for g in ["GPU-a", "GPU-b", "GPU-c"]:
        ledger.register_gpu(g, replicas=4)
    owner = alloc.ContainerOwner("ns", "busy", "c")
    ledger.allocate(owner, ["GPU-a::0", "GPU-a::1", "GPU-c::0"])
    counts = alloc.replicas_allocated(ledger)
    assert counts == {"GPU-a": 2, "GPU-b": 0, "GPU-c": 1}
    free = [d for d in ledger.free_devices("device-plugin") if isinstance(d, str) and "::" in d]
    got = alloc.select_replicas(free, 3, allocated=counts)
    # b (0 held) first; then b and c tie at 1 and c, not yet picked from, wins; then b.
    assert got == ["GPU-b::0", "GPU-c::1", "GPU-b::1"]
    ledger.allocate(alloc.ContainerOwner("ns", "next", "c"), got)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(
    gpus=st.integers(1, 5),
    per_gpu=st.integers(1, 4),
    size=st.integers(1, 8),
    policy=st.sampled_from(["distributed", "packed", "spread"]),
    strict=st.booleans(),
)
def test_select_replicas_properties(
    gpus: int, per_gpu: int, size: int, policy: alloc.ReplicaPolicy, strict: bool
) -> None:
    avail = replica_ids([f"GPU-{i}" for i in range(gpus)], per_gpu)
    possible = gpus if strict else len(avail)
    if size > possible:
        with pytest.raises(InfeasibleError):
            alloc.select_replicas(avail, size, policy=policy, strict=strict)
        return
    got = alloc.select_replicas(avail, size, policy=policy, strict=strict)
    assert len(got) == size == len(set(got))
    assert set(got) <= set(avail)
    assert got == alloc.select_replicas(list(reversed(avail)), size, policy=policy, strict=strict)
    per = [sum(1 for g in got if g.startswith(f"GPU-{i}::")) for i in range(gpus)]
    if strict:
        assert max(per) == 1
    if policy in ("distributed", "spread"):
        assert max(per) - min(per) <= 1
    if policy == "packed":
        # Fills GPUs one at a time.
        assert sum(1 for p in per if 0 < p < per_gpu) <= 1 or strict
