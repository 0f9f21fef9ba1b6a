"""gpulet.mig: geometry, validation, layouts, planning and fragmentation from the catalog."""

from __future__ import annotations

import functools
import itertools
import pickle
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpulet
from gpulet import _core, config, mig
from gpulet.deviceplugin import mig_resource_name
from gpulet.errors import (
    InfeasibleError,
    InvalidArgumentError,
    MigLayoutError,
    UnknownModelError,
)
from gpulet.mig import Layout, Placement

H100 = "H100-80GB"
A100_40 = "A100-SXM4-40GB"
A100_BASE = ["1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]


def multiset(layout: Layout) -> tuple[str, ...]:
    return tuple(sorted(p.profile for p in layout))


# ---- profiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [H100, "H100", "NVIDIA H100 80GB HBM3", "0x2330", "0x233010DE"])
def test_profiles_by_every_model_name(name: str) -> None:
    ps = mig.profiles(name)
    assert [p.name for p in ps] == [
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
    ]
    me = ps[1]
    assert (me.profile_id, me.compute_slices, me.memory_slices, me.max_instances) == (20, 1, 1, 1)
    assert me.placements == [0, 1, 2, 3, 4, 5, 6]
    assert me.resource_name == "nvidia.com/mig-1g.10gb.me"
    assert me.model == H100
    assert ps[6].multiprocessors == 132
    assert ps[4].memory_mib > 0
    assert ps[4].copy_engines == 3
    assert ps[0] == mig.profiles(H100)[0]
    assert hash(ps[0]) == hash(mig.profiles(H100)[0])
    assert "Profile(" in repr(me)


def test_one_resource_name_rule_for_profiles_and_the_device_plugin() -> None:
    assert _core.RESOURCE_NAME_PREFIX == config.RESOURCE_NAME_PREFIX == "nvidia.com"
    assert _core.mig_resource_name("1g.10gb+me") == "nvidia.com/mig-1g.10gb.me"
    # Not only catalog profiles: whatever name NVML reports.
    assert _core.mig_resource_name("1g.12gb+gfx") == "nvidia.com/mig-1g.12gb.gfx"
    for model in _core.mig_models():
        for p in mig.profiles(model):
            assert p.resource_name == mig_resource_name(p.name) == _core.mig_resource_name(p.name)
            # The planner accepts the resource name back.
            mig.validate(model, [(p.resource_name, p.placements[0])])


PROFILE_FIELDS = [
    "name",
    "profile_id",
    "nvml_profile",
    "compute_slices",
    "memory_slices",
    "memory_mib",
    "multiprocessors",
    "copy_engines",
    "decoders",
    "encoders",
    "jpegs",
    "ofas",
    "max_instances",
    "placements",
]


@pytest.mark.usefixtures("fake_library")
@pytest.mark.parametrize(("spec", "model"), [("dgx-h100", H100), ("mixed-pcie", "A30")])
def test_the_catalog_and_nvml_report_one_profile_struct(spec: str, model: str) -> None:
    """``MigProfile`` (the catalog) and ``MigProfileInfo`` (NVML) are one core struct: the same
    attributes, and on the fake NVML (which serves the catalog) the same values."""
    with gpulet.simulated(spec):
        gpu = next(g for g in gpulet.discover().gpus if g.mig_capable)
        reported = gpulet.mig_profiles(gpu.index)
        assert gpulet.mig_profiles(gpu.index) == reported
    catalog = {p.name: p for p in mig.profiles(model)}
    # NVML lists profiles by enum value, the catalog in its own order.
    assert sorted(p.name for p in reported) == sorted(catalog)
    for info in reported:
        profile = catalog[info.name]
        for f in PROFILE_FIELDS:
            assert getattr(info, f) == getattr(profile, f), (profile.name, f)
        assert repr(info) == repr(profile).replace(
            f'Profile(model="{profile.model}", ', "MigProfileInfo("
        )
    public = {a for a in dir(_core.MigProfileInfo) if not a.startswith("_")}
    assert public == set(PROFILE_FIELDS)
    assert {a for a in dir(_core.MigProfile) if not a.startswith("_")} == public | {
        "model",
        "resource_name",
    }


def test_a30_geometry() -> None:
    ps = {p.name: p for p in mig.profiles("A30")}
    assert ps["4g.24gb"].placements == [0]
    assert ps["2g.12gb"].placements == [0, 2]


def test_unknown_and_non_mig_models() -> None:
    with pytest.raises(UnknownModelError, match=r"known models: .*H100-80GB"):
        mig.profiles("H100-81GB")
    with pytest.raises(InvalidArgumentError, match=r"T4-16GB \(Tesla T4\) does not support MIG"):
        mig.profiles("T4")
    with pytest.raises(UnknownModelError):
        mig.plan("nope", ["1g.10gb"])


# ---- layouts and validation -----------------------------------------------------------------


def test_layout_construction_and_protocols() -> None:
    a = Layout([("3g.40gb", 4), Placement("4g.40gb", 0)])
    b = Layout(["4g.40gb@0", "3g.40gb@4"])
    assert a == b
    assert hash(a) == hash(b)
    assert [(p.profile, p.start) for p in a] == [("4g.40gb", 0), ("3g.40gb", 4)]
    assert a.placements == list(a)
    assert len(a) == 2
    assert Placement("3g.40gb", 4) in a
    assert ("3g.40gb", 4) in a
    assert "9g@0" not in a
    assert a.counts() == {"3g.40gb": 1, "4g.40gb": 1}
    assert str(a) == "4g.40gb@0 + 3g.40gb@4"
    assert repr(a) == 'Layout([("4g.40gb", 0), ("3g.40gb", 4)])'
    assert str(Placement("1g.10gb", 3)) == "1g.10gb@3"
    assert repr(Placement("1g.10gb", 3)) == 'Placement("1g.10gb", 3)'
    assert pickle.loads(pickle.dumps(a)) == a
    assert pickle.loads(pickle.dumps(Placement("1g.10gb", 3))) == Placement("1g.10gb", 3)
    assert Layout() == Layout([])
    assert not Layout()
    assert Layout(a) == a


@pytest.mark.parametrize(
    "bad",
    ["3g.40gb@0", 5, [("3g.40gb",)], [3], [("3g.40gb", "x")]],
)
def test_layout_rejects_malformed_input(bad: object) -> None:
    with pytest.raises(TypeError):
        Layout(bad)  # type: ignore[arg-type]


def test_layout_rejects_bad_values() -> None:
    with pytest.raises(InvalidArgumentError, match="0 or more"):
        Placement("1g.10gb", -1)
    with pytest.raises(InvalidArgumentError, match=r'not of the form "<profile>@<start>"'):
        Layout(["3g.40gb"])


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ([("3g.40gb", 0), ("2g.20gb", 2)], "3g.40gb@0 overlaps 2g.20gb@2 on memory slices 2-3"),
        (
            [("1g.10gb", 7)],
            "1g.10gb cannot start at slice 7 on H100-80GB; placements are 0,1,2,3,4,5,6",
        ),
        (
            [("1g.10gb+me", 0), ("1g.10gb+me", 1)],
            "max 1 instance of 1g.10gb+me on H100-80GB; the layout has 2",
        ),
        ([("4g.40gb", 0), ("3g.40gb", 4), ("1g.10gb", 6)], "compute slices 8 > 7"),
        ([("2g.10gb", 0)], 'unknown MIG profile "2g.10gb" for H100-80GB; its profiles are'),
    ],
)
def test_validate_names_the_clash(layout: list[tuple[str, int]], message: str) -> None:
    with pytest.raises(MigLayoutError) as e:
        mig.validate(H100, layout)
    assert message in str(e.value)


def test_validate_accepts_valid_layouts_and_resource_spellings() -> None:
    mig.validate(H100, [])
    mig.validate(H100, [("4g.40gb", 0), ("3g.40gb", 4)])
    mig.validate(H100, [("1g.10gb.me", 0), ("nvidia.com/mig-2g.20gb", 2)])


def test_layout_counts_match_the_reference() -> None:
    """docs/mig-catalog.md, "Layout counts". Its 297 partial layouts and 37 multisets exclude
    the empty layout, which gpulet lists (first)."""
    all_ = mig.layouts(A100_40, A100_BASE)
    assert len(all_) == 298
    assert len(all_[0]) == 0
    assert len({multiset(x) for x in all_}) == 38
    maximal = mig.layouts(A100_40, A100_BASE, maximal=True)
    assert len(maximal) == 19
    assert len({multiset(x) for x in maximal}) == 14
    assert sum(mig.stranded(A100_40, x)[1] == 1 for x in maximal) == 3
    with_double = mig.layouts(A100_40, [*A100_BASE, "1g.10gb"], maximal=True)
    assert (len(with_double), len({multiset(x) for x in with_double})) == (78, 38)
    a30 = mig.layouts("A30", ["1g.6gb", "2g.12gb", "4g.24gb"], maximal=True)
    assert (len(a30), len({multiset(x) for x in a30})) == (5, 4)


def test_layouts_are_valid_distinct_and_maximal() -> None:
    all_ = mig.layouts(H100)
    assert len(set(all_)) == len(all_)
    for x in all_[:: max(1, len(all_) // 200)]:
        mig.validate(H100, x)
    for x in mig.layouts(H100, maximal=True):
        for p in mig.profiles(H100):
            for s in p.placements:
                with pytest.raises(MigLayoutError):
                    mig.validate(H100, [*x, (p.name, s)])
    with pytest.raises(MigLayoutError, match="unknown MIG profile"):
        mig.layouts(H100, ["1g.5gb"])
    with pytest.raises(TypeError):
        mig.layouts(H100, "1g.10gb")


# ---- fragmentation --------------------------------------------------------------------------


def test_fragmentation_examples() -> None:
    assert mig.fragmentation(H100, []) == 0.0
    assert mig.fragmentation(H100, [("4g.40gb", 0), ("3g.40gb", 4)]) == 0.0
    assert mig.fragmentation(H100, [("1g.10gb", s) for s in range(7)]) == 1 / 16
    assert mig.stranded(H100, [("1g.10gb", s) for s in range(7)]) == (1, 0)
    assert mig.fragmentation(H100, ["3g.40gb@0"]) == 1 / 14
    assert mig.fragmentation(H100, [("1g.20gb", s) for s in (0, 2, 4, 6)]) == 3 / 14
    with pytest.raises(MigLayoutError):
        mig.fragmentation(H100, [("3g.40gb", 0), ("3g.40gb", 2)])


# ---- planning -------------------------------------------------------------------------------


def test_plan_succeeds_where_first_fit_fails() -> None:
    requests = ["3g.20gb", "4g.20gb"]
    with pytest.raises(InfeasibleError, match=r"4g.20gb \(request 2 of 2\)"):
        _core.mig_first_fit(A100_40, requests)
    assert mig.plan(A100_40, requests) == Layout([("4g.20gb", 0), ("3g.20gb", 4)])


def test_plan_prefers_least_stranded_and_keeps_existing() -> None:
    assert mig.plan(H100, ["3g.40gb"]) == Layout([("3g.40gb", 4)])
    existing = Layout([("3g.40gb", 4)])
    out = mig.plan(H100, ["2g.20gb", "1g.10gb"], existing)
    assert ("3g.40gb", 4) in out
    assert len(out) == 3
    assert mig.fragmentation(H100, out) == 0.0
    assert mig.plan(H100, []) == Layout()


def test_plan_errors_are_typed_and_nothing_is_mutated() -> None:
    existing = Layout([("2g.20gb", 0)])
    before = list(existing)
    with pytest.raises(InfeasibleError) as e:
        mig.plan(H100, ["3g.40gb", "4g.40gb", "1g.10gb"], existing)
    msg = str(e.value)
    assert "free memory slices 2-7 and 5 compute slices are left" in msg
    assert "at most 2 of the 3 requests fit at once" in msg
    assert list(existing) == before
    with pytest.raises(MigLayoutError, match="unknown MIG profile"):
        mig.plan(H100, ["9g.99gb"])
    with pytest.raises(MigLayoutError, match="overlaps"):
        mig.plan(H100, ["1g.10gb"], [("3g.40gb", 0), ("2g.20gb", 2)])
    with pytest.raises(TypeError, match="not the string"):
        mig.plan(H100, "1g.10gb")


def test_plan_node_across_gpus() -> None:
    out = mig.plan_node(H100, ["1g.10gb", "1g.10gb"], gpus=8)
    assert len(out) == 8
    assert len(out[0]) == 2
    assert all(not x for x in out[1:])
    full = mig.plan_node(H100, ["4g.40gb"] * 8 + ["3g.40gb"] * 8, gpus=8)
    assert full == [Layout([("4g.40gb", 0), ("3g.40gb", 4)])] * 8
    with pytest.raises(InfeasibleError, match="57 compute slices"):
        mig.plan_node(H100, ["4g.40gb"] * 8 + ["3g.40gb"] * 8 + ["1g.10gb"], gpus=8)
    hard = ["3g.40gb", "3g.40gb", "4g.40gb", "4g.40gb"]
    with pytest.raises(InfeasibleError, match="first fit"):
        _core.mig_first_fit_node([H100, H100], hard)
    assert mig.plan_node([H100, H100], hard) == [Layout([("4g.40gb", 0), ("3g.40gb", 4)])] * 2


def test_plan_node_keeps_existing_and_mixes_models() -> None:
    existing: list[mig.LayoutLike | None] = [[("1g.10gb", 0)], None]
    out = mig.plan_node(H100, ["4g.40gb", "3g.40gb"], existing)
    assert ("1g.10gb", 0) in out[0]
    for x in out:
        mig.validate(H100, x)
    mixed = mig.plan_node([H100, A100_40], ["1g.5gb", "1g.10gb"])
    assert mixed[1].counts().get("1g.5gb") == 1


def test_plan_node_bad_inputs() -> None:
    with pytest.raises(InvalidArgumentError, match="give gpus=N"):
        mig.plan_node(H100, ["1g.10gb"])
    with pytest.raises(InvalidArgumentError, match="1 to 64 GPUs"):
        mig.plan_node([], ["1g.10gb"])
    with pytest.raises(InvalidArgumentError, match="2 layouts for 1 GPUs"):
        _core.mig_plan_node([H100], ["1g.10gb"], [None, None])
    with pytest.raises(MigLayoutError, match=r"^invalid MIG layout: GPU 1: 3g.20gb@0 overlaps"):
        mig.plan_node([H100, A100_40], ["1g.10gb"], [None, [("3g.20gb", 0), ("2g.10gb", 2)]])
    with pytest.raises(MigLayoutError, match=r"H100-80GB: 1g\.10gb"):
        mig.plan_node(H100, ["9g.1gb"], gpus=2)
    with pytest.raises(InvalidArgumentError, match="gpus=3 but 2 models"):
        mig.plan_node([H100, H100], ["1g.10gb"], gpus=3)


def test_plan_node_matches_plan_on_one_gpu() -> None:
    for requests in (["3g.40gb"], ["2g.20gb", "1g.10gb", "1g.20gb"], ["1g.10gb"] * 5):
        assert mig.plan_node(H100, requests, gpus=1) == [mig.plan(H100, requests)]


def test_planning_releases_the_gil_and_is_thread_safe() -> None:
    requests = ["1g.10gb"] * 10 + ["2g.20gb"] * 6 + ["3g.40gb"] * 4 + ["4g.40gb"] * 2
    expected = mig.plan_node(H100, requests, gpus=8)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: mig.plan_node(H100, requests, gpus=8), range(16)))
    assert all(r == expected for r in results)


# ---- properties -----------------------------------------------------------------------------

NAMES = [p.name for p in mig.profiles(H100)]


@functools.cache
def all_layouts(model: str) -> list[Layout]:
    return mig.layouts(model)


@functools.cache
def layouts_by_multiset(model: str) -> dict[tuple[str, ...], list[frozenset[Placement]]]:
    out: dict[tuple[str, ...], list[frozenset[Placement]]] = {}
    for x in all_layouts(model):
        out.setdefault(multiset(x), []).append(frozenset(x))
    return out


@functools.cache
def _fits(model: str, requests: tuple[str, ...], existing: Layout) -> bool:
    want = tuple(sorted(requests + multiset(existing)))
    base = set(existing)
    return any(base <= x for x in layouts_by_multiset(model).get(want, []))


def brute_force_fits(model: str, requests: Sequence[str], existing: Layout) -> bool:
    """Whether some valid layout (of all the model's layouts) holds ``existing`` plus exactly
    ``requests``."""
    return _fits(model, tuple(sorted(requests)), existing)


EXISTING = [
    Layout(),
    Layout([("1g.10gb", 0)]),
    Layout([("3g.40gb", 0)]),
    Layout([("2g.20gb", 2), ("1g.20gb", 6)]),
]


@settings(derandomize=True, max_examples=60, deadline=None, database=None)
@given(
    requests=st.lists(st.sampled_from(NAMES), max_size=5),
    existing=st.sampled_from(EXISTING),
)
def test_plan_is_valid_exact_and_pure(requests: list[str], existing: Layout) -> None:
    fits = brute_force_fits(H100, requests, existing)
    try:
        out = mig.plan(H100, requests, existing)
    except InfeasibleError:
        assert not fits
        return
    assert fits
    mig.validate(H100, out)
    assert set(existing) <= set(out)
    assert Counter(p.profile for p in out) == Counter(requests) + Counter(
        p.profile for p in existing
    )
    assert 0.0 <= mig.fragmentation(H100, out) <= 1.0


@settings(derandomize=True, max_examples=40, deadline=None, database=None)
@given(
    requests=st.lists(st.sampled_from(NAMES), max_size=5),
    existing=st.lists(st.sampled_from(EXISTING), min_size=2, max_size=3),
)
def test_plan_node_finds_a_fit_whenever_one_exists(
    requests: list[str], existing: list[Layout]
) -> None:
    gpus = len(existing)
    # Brute force: every assignment of requests to GPUs, each GPU then checked exhaustively.
    fits = any(
        all(
            brute_force_fits(H100, [r for r, g in zip(requests, a, strict=True) if g == i], ex)
            for i, ex in enumerate(existing)
        )
        for a in itertools.product(range(gpus), repeat=len(requests))
    )
    try:
        out = mig.plan_node(H100, requests, existing)
    except InfeasibleError:
        assert not fits
        return
    assert fits
    for ex, x in zip(existing, out, strict=True):
        mig.validate(H100, x)
        assert set(ex) <= set(x)
    added = Counter(p.profile for x in out for p in x) - Counter(
        p.profile for ex in existing for p in ex
    )
    assert added == Counter(requests)


@settings(derandomize=True, max_examples=80, deadline=None, database=None)
@given(index=st.integers(min_value=0, max_value=2318))
def test_fragmentation_is_a_fraction(index: int) -> None:
    x = all_layouts(A100_40)[index]
    f = mig.fragmentation(A100_40, x)
    assert 0.0 <= f <= 1.0
    sm, sc = mig.stranded(A100_40, x)
    assert f == (sm / 8 + sc / 7) / 2
