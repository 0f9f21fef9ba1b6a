"""gpulet.Topology: construction, defaults, accessors and refusals."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from gpulet import Topology
from gpulet.errors import GpuletError, TopologyError

LEVELS = ["board", "single-switch", "multi-switch", "host-bridge", "same-cpu", "cross-cpu"]


def dgx1() -> Topology:
    return Topology(
        gpu_count=8,
        nvlinks={(0, 3): 2, (0, 1): 1},
        pcie={(0, 1): "single-switch"},
        numa=[0, 0, 0, 0, 1, 1, 1, 1],
        nvswitch=False,
    )


def test_a_hand_written_topology_builds() -> None:
    t = dgx1()
    assert t.gpu_count == 8
    assert t.nvlinks(0, 3) == 2
    assert t.nvlinks(3, 0) == 2
    assert t.nvlinks(0, 1) == 1
    assert t.nvlinks(1, 2) == 0
    assert t.nvlinks(2, 2) == 0
    assert t.numa == [0, 0, 0, 0, 1, 1, 1, 1]
    assert t.nvswitch is False
    assert t.nvlink_pairs() == {(0, 1): 1, (0, 3): 2}


def test_pcie_defaults_follow_numa() -> None:
    t = dgx1()
    assert t.pcie(0, 1) == "single-switch"
    assert t.pcie(1, 0) == "single-switch"
    assert t.pcie(0, 2) == "same-cpu"
    assert t.pcie(0, 4) == "cross-cpu"
    assert t.pcie(5, 7) == "same-cpu"
    pairs = t.pcie_pairs()
    assert len(pairs) == 8 * 7 // 2
    assert all(a < b for a, b in pairs)
    assert pairs[(3, 4)] == "cross-cpu"


def test_without_numa_every_unlisted_pair_is_same_cpu() -> None:
    t = Topology(4)
    assert t.numa is None
    assert set(t.pcie_pairs().values()) == {"same-cpu"}
    assert t.nvlink_pairs() == {}


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_name_is_accepted(level: str) -> None:
    assert Topology(2, pcie={(1, 0): level}).pcie(0, 1) == level


def test_nvswitch_flag() -> None:
    t = Topology(8, numa=[0] * 4 + [1] * 4, nvswitch=True)
    assert t.nvswitch is True
    assert t.nvlink_pairs() == {}


def test_a_pair_given_both_ways_with_one_value_is_fine() -> None:
    t = Topology(4, nvlinks={(0, 3): 2, (3, 0): 2}, pcie={(1, 2): "board", (2, 1): "board"})
    assert t.nvlinks(0, 3) == 2
    assert t.pcie(2, 1) == "board"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"nvlinks": {(0, 3): 2, (3, 0): 1}}, ["(3, 0)", "given twice", "2 and 1"]),
        ({"pcie": {(0, 1): "board", (1, 0): "cross-cpu"}}, ["given twice"]),
        ({"pcie": {(0, 1): "near"}}, ['"near"', "single-switch", "cross-cpu"]),
        ({"pcie": {(0, 1): 3}}, ["level 3", "level name"]),
        ({"nvlinks": {(0, 4): 1}}, ["(0, 4)", "outside 0..4"]),
        ({"nvlinks": {(-1, 2): 1}}, ["(-1, 2)", "outside 0..4"]),
        ({"pcie": {(7, 1): "board"}}, ["(7, 1)", "outside 0..4"]),
        ({"nvlinks": {(2, 2): 1}}, ["(2, 2)", "itself"]),
        ({"nvlinks": {(0, 1): -1}}, ["link count -1"]),
        ({"nvlinks": {"0-1": 1}}, ["'0-1'", "pair of GPU indices"]),
        ({"nvlinks": [(0, 1)]}, ["nvlinks must be a mapping"]),
        ({"numa": [0, 0, 1]}, ["numa lists 3 GPUs", "gpu_count is 4"]),
    ],
)
def test_bad_topologies_are_refused_with_the_field_named(
    kwargs: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(TopologyError) as info:
        Topology(4, **kwargs)
    message = str(info.value)
    for w in words:
        assert w in message, message
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, GpuletError)


def test_negative_gpu_count_is_refused() -> None:
    with pytest.raises(TopologyError, match="gpu_count must be 0 or more"):
        Topology(-1)


def test_accessors_refuse_gpus_outside_the_topology() -> None:
    t = Topology(2)
    with pytest.raises(TopologyError, match=r"GPU 2 is outside 0\.\.2"):
        t.nvlinks(0, 2)
    with pytest.raises(TopologyError, match="GPU -1 is outside"):
        t.pcie(-1, 0)
    with pytest.raises(TopologyError, match="no PCIe path to itself"):
        t.pcie(1, 1)


def test_equality_hash_repr_and_pickle() -> None:
    t = dgx1()
    assert t == dgx1()
    assert hash(t) == hash(dgx1())
    assert t != Topology(8)
    assert t != "not a topology"
    assert len({t, dgx1(), Topology(8)}) == 2
    assert eval(repr(t), {"Topology": Topology}) == t
    assert repr(Topology(2, nvswitch=True)) == (
        "Topology(gpu_count=2, nvlinks={}, pcie={}, numa=None, nvswitch=True)"
    )
    assert pickle.loads(pickle.dumps(t)) == t


def test_topology_is_immutable() -> None:
    t = dgx1()
    with pytest.raises(AttributeError):
        t.nvswitch = True  # type: ignore[misc]


def test_empty_topology() -> None:
    t = Topology(0)
    assert t.gpu_count == 0
    assert t.pcie_pairs() == {}
