"""NVIDIA mig-parted v1 config files: parse, write, validate against the catalog, plan."""

from __future__ import annotations

import errno
import os
import pathlib
import stat
from collections import Counter
from dataclasses import dataclass

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulet import mig
from gpulet.errors import InfeasibleError, InvalidArgumentError, MigLayoutError, UnknownModelError
from gpulet.mig import (
    Layout,
    MigPartedConfig,
    MigPartedEntry,
    MigPartedError,
    format_mig_parted,
    mig_parted_config,
    mig_parted_plans,
    parse_mig_parted,
    read_mig_parted,
    validate_mig_parted,
    write_mig_parted,
)

# A config in the shape of NVIDIA mig-parted's README and examples/config.yaml.
EXAMPLE = """
version: v1
mig-configs:
  all-disabled: [{devices: all, mig-enabled: false}]
  all-enabled:  [{devices: all, mig-enabled: true, mig-devices: {}}]
  all-1g.5gb:   [{devices: all, mig-enabled: true, mig-devices: {"1g.5gb": 7}}]
  all-balanced:
    - {device-filter: ["0x20B010DE"], devices: all, mig-enabled: true,
       mig-devices: {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}}
  custom-config:
    - {devices: [0,1,2,3], mig-enabled: false}
    - {devices: [4], mig-enabled: true, mig-devices: {"1g.5gb": 7}}
"""

A100_40 = "A100-SXM4-40GB"
H100 = "H100-80GB"


def test_parse_the_reference_example() -> None:
    c = parse_mig_parted(EXAMPLE)
    assert c.version == "v1"
    assert list(c.configs) == [
        "all-disabled",
        "all-enabled",
        "all-1g.5gb",
        "all-balanced",
        "custom-config",
    ]
    assert c.configs["all-disabled"] == (MigPartedEntry("all", False),)
    assert c.configs["all-enabled"] == (MigPartedEntry("all", True, {}),)
    balanced = c.configs["all-balanced"][0]
    assert balanced.device_filter == ("0x20B010DE",)
    assert balanced.filter_ids() == (0x20B010DE,)
    assert dict(balanced.mig_devices) == {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
    assert balanced.requests() == ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]
    custom = c.configs["custom-config"]
    assert custom[0].devices == (0, 1, 2, 3)
    assert custom[1].devices == (4,)
    assert custom[1].matches(4, 0x20B010DE)
    assert not custom[1].matches(3, 0x20B010DE)
    assert not balanced.matches(0, 0x233010DE)


def test_round_trip_through_text_and_file(tmp_path: pathlib.Path) -> None:
    c = parse_mig_parted(EXAMPLE)
    text = format_mig_parted(c)
    assert parse_mig_parted(text) == c
    doc = yaml.safe_load(text)
    assert list(doc["mig-configs"]["all-balanced"][0]) == [
        "device-filter",
        "devices",
        "mig-enabled",
        "mig-devices",
    ]
    assert "mig-devices" not in doc["mig-configs"]["all-disabled"][0]
    path = tmp_path / "config.yaml"
    write_mig_parted(c, path)
    assert read_mig_parted(path) == c
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    # A single-string device filter is written back as a string.
    one = parse_mig_parted(
        'version: v1\nmig-configs: {x: [{device-filter: "0x233010DE", devices: all, '
        'mig-enabled: true, mig-devices: {"3g.40gb": 2}}]}'
    )
    assert one.configs["x"][0].device_filter == "0x233010DE"
    assert parse_mig_parted(format_mig_parted(one)) == one


def test_writing_is_atomic_and_durable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = parse_mig_parted(EXAMPLE)
    path = tmp_path / "config.yaml"
    path.write_text("old", encoding="utf-8")
    synced: list[bool] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    write_mig_parted(c, path)
    # The file, then the directory that holds the rename.
    assert synced == [False, True]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_mig_parted(path) == c

    def no_space(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        write_mig_parted(mig_parted_config("x", [None]), path)
    monkeypatch.undo()
    assert read_mig_parted(path) == c
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        ("mig-configs: {a: [{devices: all, mig-enabled: false}]}", "version", "must be 'v1'"),
        ("version: v2\nmig-configs: {}", "version", "must be 'v1', got 'v2'"),
        ("version: v1\nextra: 1", "extra", "unexpected field"),
        ("version: v1\nmig-configs: {}", "mig-configs", "one at least"),
        ("version: v1\nmig-configs: {a: []}", "mig-configs.a", "one at least"),
        (
            "version: v1\nmig-configs: {a: [{mig-enabled: false}]}",
            "mig-configs.a[0].devices",
            "missing required field",
        ),
        (
            "version: v1\nmig-configs: {a: [{devices: some, mig-enabled: false}]}",
            "mig-configs.a[0].devices",
            'must be "all" or a list of GPU indices',
        ),
        (
            "version: v1\nmig-configs: {a: [{devices: [-1], mig-enabled: false}]}",
            "mig-configs.a[0].devices",
            "list of GPU indices",
        ),
        (
            "version: v1\nmig-configs: {a: [{devices: all, mig-enabled: yes please}]}",
            "mig-configs.a[0].mig-enabled",
            "must be true or false",
        ),
        (
            "version: v1\nmig-configs: {a: [{devices: all, mig-enabled: false, colour: red}]}",
            "mig-configs.a[0].colour",
            "unexpected field",
        ),
        (
            "version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true}]}",
            "mig-configs.a[0].mig-devices",
            "missing required field when mig-enabled is true",
        ),
        (
            "version: v1\nmig-configs: {a: [{devices: all, mig-enabled: false, "
            "mig-devices: {1g.5gb: 1}}]}",
            "mig-configs.a[0].mig-devices",
            "while mig-enabled is false",
        ),
        (
            "version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true, "
            "mig-devices: {1g.5gb: -1}}]}",
            'mig-configs.a[0].mig-devices["1g.5gb"]',
            "0 or more, got -1",
        ),
        (
            "version: v1\nmig-configs: {a: [{device-filter: 0x20B0, devices: all, "
            "mig-enabled: false}]}",
            "mig-configs.a[0].device-filter",
            '"0xDDDDVVVV"',
        ),
    ],
)
def test_parse_errors_name_the_field(text: str, path: str, problem: str) -> None:
    with pytest.raises(MigPartedError) as e:
        parse_mig_parted(text)
    assert e.value.path == path
    assert problem in e.value.problem
    assert str(e.value).startswith(path)
    if path.startswith("mig-configs.a["):
        assert (e.value.config, e.value.entry) == ("a", 0)


def test_parse_rejects_non_yaml_and_non_mappings() -> None:
    with pytest.raises(MigPartedError, match="not valid YAML"):
        parse_mig_parted("version: [v1")
    with pytest.raises(MigPartedError, match="is a mapping"):
        parse_mig_parted("- 1\n- 2")
    assert isinstance(MigPartedError("x", "y"), ValueError)


def test_validate_against_the_catalog() -> None:
    validate_mig_parted(parse_mig_parted(EXAMPLE))
    validate_mig_parted(parse_mig_parted(EXAMPLE), A100_40)
    # all-1g.5gb names an A100-40GB profile only; an H100 node has no entry it fits.
    with pytest.raises(MigPartedError) as e:
        validate_mig_parted(parse_mig_parted(EXAMPLE), H100)
    assert e.value.path == 'mig-configs.all-1g.5gb[0].mig-devices["1g.5gb"]'
    assert "H100-80GB has no MIG profile '1g.5gb'" in str(e.value)

    too_many = parse_mig_parted(
        "version: v1\nmig-configs:\n  big:\n"
        '    - {device-filter: "0x20B010DE", devices: all, mig-enabled: true,'
        ' mig-devices: {"3g.20gb": 3}}\n'
    )
    with pytest.raises(MigPartedError) as e:
        validate_mig_parted(too_many)
    assert e.value.path == "mig-configs.big[0].mig-devices"
    assert (e.value.config, e.value.entry) == ("big", 0)
    assert "does not fit one A100-SXM4-40GB" in str(e.value)
    assert isinstance(e.value.__cause__, InfeasibleError)

    unknown = parse_mig_parted(
        "version: v1\nmig-configs: {u: [{devices: all, mig-enabled: true, "
        'mig-devices: {"5g.1tb": 1}}]}'
    )
    with pytest.raises(MigPartedError, match=r"no MIG model in the catalog has all of 5g\.1tb"):
        validate_mig_parted(unknown)

    nowhere = parse_mig_parted(
        "version: v1\nmig-configs: {n: [{devices: all, mig-enabled: true, "
        'mig-devices: {"7g.80gb": 2}}]}'
    )
    with pytest.raises(MigPartedError, match="fits no GPU model that has these profiles"):
        validate_mig_parted(nowhere)

    # PCI ids the catalog does not know are left unchecked.
    validate_mig_parted(
        parse_mig_parted(
            'version: v1\nmig-configs: {p: [{device-filter: "0x20F110DE", devices: all, '
            'mig-enabled: true, mig-devices: {"9g.9gb": 9}}]}'
        )
    )
    with pytest.raises(InvalidArgumentError, match="does not support MIG"):
        validate_mig_parted(parse_mig_parted(EXAMPLE), "T4")
    with pytest.raises(UnknownModelError):
        validate_mig_parted(parse_mig_parted(EXAMPLE), "no-such-gpu")


def test_plans_per_gpu() -> None:
    c = parse_mig_parted(EXAMPLE)
    node = [A100_40] * 8
    custom = mig_parted_plans(c, "custom-config", node)
    assert sorted(custom) == [0, 1, 2, 3, 4]
    assert all(custom[i] is None for i in range(4))
    four = custom[4]
    assert four is not None
    assert four.counts() == {"1g.5gb": 7}
    balanced = mig_parted_plans(c, "all-balanced", node)
    assert sorted(balanced) == list(range(8))
    for x in balanced.values():
        assert x is not None
        mig.validate(A100_40, x)
        assert x.counts() == {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
    # The device filter leaves an H100 node alone.
    assert mig_parted_plans(c, "all-balanced", [H100] * 2) == {}
    assert mig_parted_plans(c, "all-enabled", [H100]) == {0: Layout()}
    with pytest.raises(MigPartedError, match="no such config; the file has all-disabled"):
        mig_parted_plans(c, "nope", node)


def test_later_entries_override_and_errors_name_the_entry() -> None:
    c = parse_mig_parted(
        "version: v1\nmig-configs:\n  mixed:\n"
        "    - {devices: all, mig-enabled: false}\n"
        '    - {devices: [1], mig-enabled: true, mig-devices: {"3g.40gb": 2}}\n'
    )
    out = mig_parted_plans(c, "mixed", [H100, H100, "T4"])
    assert out[0] is None
    assert out[2] is None
    assert out[1] == Layout([("3g.40gb", 0), ("3g.40gb", 4)])
    with pytest.raises(MigPartedError) as e:
        mig_parted_plans(c, "mixed", [H100, "T4"])
    assert e.value.path == "mig-configs.mixed[1].mig-enabled"
    assert "GPU 1 (T4-16GB) does not support MIG" in str(e.value)
    bad = parse_mig_parted(
        "version: v1\nmig-configs: {b: [{devices: all, mig-enabled: true, "
        'mig-devices: {"1g.5gb": 1}}]}'
    )
    with pytest.raises(MigPartedError) as e:
        mig_parted_plans(bad, "b", [H100])
    assert e.value.path == "mig-configs.b[0].mig-devices"
    assert isinstance(e.value.__cause__, MigLayoutError)


@dataclass(frozen=True)
class FakeGpu:
    """Stands in for a discovered gpulet.Gpu (what mig-parted matches on)."""

    name: str
    pci_device_id: int


def test_plans_for_discovered_gpus() -> None:
    c = parse_mig_parted(EXAMPLE)
    gpus = [FakeGpu("NVIDIA A100-SXM4-40GB", 0x20B010DE), FakeGpu("Unknown GPU", 0x12345678)]
    out = mig_parted_plans(c, "all-disabled", gpus)
    assert out == {0: None, 1: None}
    with pytest.raises(MigPartedError, match=r"is not in gpulet's catalog"):
        mig_parted_plans(c, "all-enabled", gpus)
    balanced = mig_parted_plans(c, "all-balanced", gpus)
    assert sorted(balanced) == [0]


def test_config_from_layouts_round_trips() -> None:
    planned = [
        mig.plan(H100, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]),
        mig.plan(H100, ["7g.80gb"]),
        mig.plan(H100, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]),
        None,
    ]
    c = mig_parted_config("custom", planned)
    assert [e.devices for e in c.configs["custom"]] == [(0, 2), (1,), (3,)]
    again = parse_mig_parted(format_mig_parted(c))
    assert again == c
    out = mig_parted_plans(again, "custom", [H100] * 4)
    for i, x in enumerate(planned):
        got = out[i]
        if x is None:
            assert got is None
        else:
            assert got is not None
            assert Counter(got.counts()) == Counter(x.counts())
    same = mig_parted_config("all", [mig.plan(H100, ["7g.80gb"])] * 3, [H100] * 3)
    assert same.configs["all"] == (MigPartedEntry("all", True, {"7g.80gb": 1}, "0x233010DE"),)
    validate_mig_parted(same)
    with pytest.raises(InvalidArgumentError, match="1 models for 2 layouts"):
        mig_parted_config("x", [None, None], [H100])


PROFILE_NAMES = st.sampled_from(["1g.10gb", "1g.10gb+me", "2g.20gb", "3g.40gb", "7g.80gb"])
ENTRIES = st.builds(
    lambda devices, enabled, devs, filt: MigPartedEntry(
        devices, enabled, devs if enabled else {}, filt
    ),
    st.one_of(st.just("all"), st.lists(st.integers(0, 15), min_size=1, max_size=4).map(tuple)),
    st.booleans(),
    st.dictionaries(PROFILE_NAMES, st.integers(0, 7), max_size=3),
    st.one_of(
        st.none(),
        st.just("0x233010DE"),
        st.lists(st.sampled_from(["0x233010DE", "0x20B010DE"]), min_size=1, max_size=2).map(tuple),
    ),
)
CONFIGS = st.builds(
    MigPartedConfig,
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9.\-]{0,12}", fullmatch=True),
        st.lists(ENTRIES, min_size=1, max_size=3).map(tuple),
        min_size=1,
        max_size=4,
    ),
)


@settings(derandomize=True, max_examples=100, deadline=None, database=None)
@given(config=CONFIGS)
def test_any_config_round_trips(config: MigPartedConfig) -> None:
    assert parse_mig_parted(format_mig_parted(config)) == config
