"""gpulet.config bounds every number that sizes a list, a timer or a message, and refuses hostile
files (too large, too deep, alias bombs, bytes that are not UTF-8) with a ConfigError that names
the field or the file, before any work grows with the value."""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gpulet import config
from gpulet.config import (
    MAX_CONFIG_BYTES,
    MAX_DEVICE_COUNT,
    MAX_DURATION,
    MAX_MPS_REPLICAS,
    MAX_NESTING,
    MAX_REPLICAS,
    MAX_XID,
    MAX_YAML_NODES,
    ConfigError,
    load,
    parse,
    parse_go_duration,
)
from gpulet.errors import GpuletError

TS = "sharing.timeSlicing.resources[0].replicas"
MPS = "sharing.mps.resources[0].replicas"


def ts(replicas: object, **entry: Any) -> dict[str, Any]:
    return {
        "sharing": {"timeSlicing": {"resources": [{"name": "gpu", "replicas": replicas, **entry}]}}
    }


def mps(replicas: object) -> dict[str, Any]:
    return {
        "flags": {"mpsRoot": "/run/nvidia/mps"},
        "sharing": {"mps": {"resources": [{"name": "gpu", "replicas": replicas}]}},
    }


def gpu_replicas(replicas: object, sharing: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        **(sharing or ts(2)),
        "gpulet": {"gpuReplicas": [{"devices": [0], "replicas": replicas}]},
    }


def refused(doc: object) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse(doc)
    return e.value


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "config.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def refused_file(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load(path, env={})
    assert e.value.path == ""
    assert str(path) in str(e.value)
    return e.value


# --- the error class -----------------------------------------------------------------------


def test_config_error_is_a_gpulet_error_and_a_value_error() -> None:
    e = refused(ts(0))
    assert isinstance(e, GpuletError)
    assert isinstance(e, ValueError)
    copy = pickle.loads(pickle.dumps(e))
    assert (copy.path, copy.problem, copy.origin, str(copy)) == (
        e.path,
        e.problem,
        e.origin,
        str(e),
    )


# --- replicas ------------------------------------------------------------------------------


def test_time_slicing_replicas_limit() -> None:
    cfg = parse(ts(MAX_REPLICAS))
    assert cfg.sharing.time_slicing is not None
    assert cfg.sharing.time_slicing.resources[0].replicas == MAX_REPLICAS
    e = refused(ts(MAX_REPLICAS + 1))
    assert e.path == TS
    assert str(e).startswith(f"{TS}: {MAX_REPLICAS + 1} is above the limit of {MAX_REPLICAS}")


@pytest.mark.parametrize(
    "replicas",
    [1_000_000, 2**63, 2**63 - 1, 2**64, 10**5000],
    ids=["1e6", "2^63", "2^63-1", "2^64", "10^5000"],
)
def test_huge_replicas_are_refused_at_once(replicas: int) -> None:
    e = refused(ts(replicas))
    assert e.path == TS
    assert f"above the limit of {MAX_REPLICAS}" in str(e)
    assert len(str(e)) < 300


def test_a_number_too_long_to_print_is_described() -> None:
    assert "a number of about 5001 digits" in str(refused(ts(10**5000)))


@pytest.mark.parametrize(
    ("replicas", "message"),
    [
        (-1, "must be >= 2, got -1"),
        (-(2**63), "must be >= 2, got -9223372036854775808"),
        ("4", "must be a whole number, got '4' (a string)"),
        (2.5, "must be a whole number, got 2.5 (a number)"),
        (float("inf"), "must be a whole number, got inf (a number)"),
        (True, "must be a whole number, got true (a boolean)"),
        ([4], "must be a whole number, got a list"),
        ({"n": 4}, "must be a whole number, got a mapping"),
    ],
)
def test_replicas_must_be_a_whole_number_in_range(replicas: object, message: str) -> None:
    assert str(refused(ts(replicas))) == f"{TS}: {message}"


def test_mps_replicas_limit_is_the_mps_client_limit() -> None:
    assert MAX_MPS_REPLICAS == 48
    cfg = parse(mps(MAX_MPS_REPLICAS))
    assert cfg.sharing.strategy == "mps"
    e = refused(mps(MAX_MPS_REPLICAS + 1))
    assert e.path == MPS
    assert f"{MAX_MPS_REPLICAS + 1} is above the limit of {MAX_MPS_REPLICAS}" in str(e)
    assert "MPS" in str(e)
    assert refused(mps(2**63)).path == MPS


def test_gpu_replicas_limit() -> None:
    path = "gpulet.gpuReplicas[0].replicas"
    assert parse(gpu_replicas(MAX_REPLICAS)).gpulet.gpu_replicas[0].replicas == MAX_REPLICAS
    e = refused(gpu_replicas(MAX_REPLICAS + 1))
    assert str(e).startswith(f"{path}: {MAX_REPLICAS + 1} is above the limit of {MAX_REPLICAS}")
    assert refused(gpu_replicas(2**63)).path == path
    assert str(refused(gpu_replicas(-5))) == f"{path}: must be >= 1, got -5"
    assert str(refused(gpu_replicas("8"))) == f"{path}: must be a whole number, got '8' (a string)"
    # With MPS, a per-GPU count is bounded by the MPS client limit too.
    assert parse(gpu_replicas(MAX_MPS_REPLICAS, mps(2))).gpulet.gpu_replicas[0].replicas == 48
    e = refused(gpu_replicas(MAX_MPS_REPLICAS + 1, mps(2)))
    assert e.path == path
    assert f"above the limit of {MAX_MPS_REPLICAS} with sharing.mps" in str(e)


def test_device_count_limit() -> None:
    opt_in = {"gpulet": {"honorDeviceSubsets": True}}
    cfg = parse({**ts(2, devices=MAX_DEVICE_COUNT), **opt_in})
    assert cfg.sharing.time_slicing is not None
    assert cfg.sharing.time_slicing.resources[0].devices.count == MAX_DEVICE_COUNT
    for count in (MAX_DEVICE_COUNT + 1, 2**63):
        e = refused({**ts(2, devices=count), **opt_in})
        assert e.path == "sharing.timeSlicing.resources[0].devices"
        assert f"above the limit of {MAX_DEVICE_COUNT}" in str(e)


def test_a_long_device_list_is_checked_for_repeats_in_linear_time() -> None:
    # 20000 distinct refs: a quadratic "already listed?" scan took seconds here.
    refs = list(range(20000))
    cfg = parse({**ts(2, devices=refs), "gpulet": {"honorDeviceSubsets": True}})
    assert cfg.sharing.time_slicing is not None
    assert len(cfg.sharing.time_slicing.resources[0].devices.refs) == 20000
    e = refused({**ts(2, devices=[*refs, 7]), "gpulet": {"honorDeviceSubsets": True}})
    assert str(e) == "sharing.timeSlicing.resources[0].devices[20000]: '7' is listed twice"


# --- other numbers -------------------------------------------------------------------------


def test_xid_limits() -> None:
    health = parse({"gpulet": {"health": {"ignoredXIDs": [MAX_XID, 13, 13]}}}).gpulet.health
    assert health.ignored_xids == (13, MAX_XID)
    e = refused({"gpulet": {"health": {"criticalXIDs": [MAX_XID + 1]}}})
    assert e.path == "gpulet.health.criticalXIDs[0]"
    assert f"must be <= {MAX_XID}" in str(e)
    e = refused({"gpulet": {"health": {"ignoredXIDs": [10**5000]}}})
    assert "a number of about 5001 digits" in str(e)


def test_many_xids_are_deduplicated_in_linear_time() -> None:
    xids = list(range(1, 50001)) * 2
    health = parse({"gpulet": {"health": {"ignoredXIDs": xids}}}).gpulet.health
    assert len(health.ignored_xids) == 50000


def test_imex_channel_ids_with_huge_values() -> None:
    e = refused({"imex": {"channelIDs": [10**5000]}})
    assert e.path == "imex.channelIDs[0]"
    assert "a number of about 5001 digits" in str(e)
    e = refused({"imex": {"channelIDs": [0] * 1000}})
    assert str(e) == "imex.channelIDs: must be [] or [0], got 1000 IDs"


def test_metrics_port_with_a_huge_value() -> None:
    e = refused({"gpulet": {"metricsPort": 2**63}})
    assert str(e) == "gpulet.metricsPort: must be <= 65535, got 9223372036854775808"


RECOVERY = "gpulet.health.recoveryPeriod"


def recovery(value: object) -> dict[str, Any]:
    return {"gpulet": {"health": {"recoveryPeriod": value}}}


def test_duration_limit() -> None:
    assert timedelta(hours=8760) == MAX_DURATION
    assert parse(recovery("8760h")).gpulet.health.recovery_period == MAX_DURATION
    ns = MAX_DURATION // timedelta(microseconds=1) * 1000
    assert parse(recovery(ns)).gpulet.health.recovery_period == MAX_DURATION
    for value in ("8760h1s", "8761h", ns + 1000):
        e = refused(recovery(value))
        assert e.path == RECOVERY
        assert "above the limit of 8760h" in str(e)
    e = refused({"flags": {"gfd": {"sleepInterval": "9000h"}}})
    assert e.path == "flags.gfd.sleepInterval"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("99999999999h", "longer than Go's limit"),
        ("1" * 100_000 + "s", "100001 characters is too long"),
        (float("inf"), "inf ns is above the limit of 8760h"),
        (float("-inf"), "must not be negative, got -inf"),
        (float("nan"), "got NaN"),
        (2**63, "9223372036854775808 ns is above the limit"),
        (10**5000, "a number of about 5001 digits ns is above the limit"),
        (-1, "must not be negative, got -1"),
        ("-5s", "must not be negative, got '-5s'"),
        ([1], "must be a duration such as 60s or 1m30s, got a list"),
    ],
    ids=lambda v: v[:20] if isinstance(v, str) else type(v).__name__,
)
def test_bad_durations_are_config_errors(value: object, message: str) -> None:
    e = refused(recovery(value))
    assert e.path == RECOVERY
    assert message in str(e)


def test_parse_go_duration_refuses_what_go_refuses() -> None:
    assert parse_go_duration("2562047h") == timedelta(hours=2562047)
    with pytest.raises(ValueError, match="longer than Go's limit"):
        parse_go_duration("2562048h")


# --- values quoted in messages -------------------------------------------------------------


def test_long_text_is_cut_in_messages() -> None:
    e = refused({"flags": {"migStrategy": "x" * 1_000_000}})
    assert e.path == "flags.migStrategy"
    assert "(1000000 characters)" in str(e)
    assert len(str(e)) < 300
    e = refused({"version": "v" * 1_000_000})
    assert len(str(e)) < 300
    e = refused({"gpulet": {"k" * 1_000_000: 1}})
    assert e.path.startswith("gpulet.kkk")
    assert len(str(e)) < 600


def test_a_variable_with_a_huge_value_is_cut_in_the_message() -> None:
    with pytest.raises(ConfigError) as e:
        load(env={"GPULET_METRICS_PORT": "9" * 100_000})
    assert e.value.path == "gpulet.metricsPort"
    assert "(100000 characters) is not a whole number" in str(e.value)
    assert len(str(e.value)) < 300


# --- files ---------------------------------------------------------------------------------

VALID = (
    "version: v1\nsharing:\n  timeSlicing:\n    resources:\n"
    "    - name: nvidia.com/gpu\n      replicas: 4\n"
)


def test_a_file_at_the_size_limit_loads(tmp_path: Path) -> None:
    text = VALID + "#" * (MAX_CONFIG_BYTES - len(VALID) - 1) + "\n"
    assert len(text.encode()) == MAX_CONFIG_BYTES
    cfg = load(write(tmp_path, text), env={})
    assert cfg.sharing.strategy == "time-slicing"


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    text = VALID + "#" * (MAX_CONFIG_BYTES - len(VALID)) + "\n"
    e = refused_file(write(tmp_path, text))
    assert f"larger than {MAX_CONFIG_BYTES // 1024} KiB" in str(e)


def test_a_100_mb_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    with path.open("wb") as f:
        f.write(VALID.encode())
        f.truncate(100 * 1024 * 1024)  # sparse: 100 MB that take no disk
    assert "larger than 64 KiB" in str(refused_file(path))


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    e = refused_file(write(tmp_path, b"version: v1\nflags:\n  migStrategy: \xff\xfe\n"))
    assert "not UTF-8 text (line 3 has byte 0xff)" in str(e)


BILLION_LAUGHS = "lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]\n" for i in range(1, 9)
)


@pytest.mark.parametrize(
    "text",
    [
        BILLION_LAUGHS,
        # The same, inside a section gpulet reads.
        "gpulet:\n  gpuReplicas:\n"
        + "".join("  " + line + "\n" for line in BILLION_LAUGHS.splitlines()),
        # Merge keys multiply too: each level merges the level below nine times.
        "m0: &m0 {a: 1, b: 2}\n"
        + "".join(f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}\n" for i in range(1, 9)),
    ],
    ids=["billion-laughs", "in-a-section", "merge-keys"],
)
def test_alias_bombs_are_refused(tmp_path: Path, text: str) -> None:
    e = refused_file(write(tmp_path, text))
    assert f"more than {MAX_YAML_NODES} values once its aliases" in str(e)


def test_an_alias_inside_itself_is_refused(tmp_path: Path) -> None:
    e = refused_file(write(tmp_path, "flags: &a {plugin: *a}\n"))
    assert "refers to a node that contains it" in str(e)


def test_modest_aliases_still_load(tmp_path: Path) -> None:
    text = (
        "version: v1\nflags: {mpsRoot: /run/nvidia/mps}\n"
        "sharing:\n  mps:\n    resources:\n"
        "    - &share {name: nvidia.com/gpu, replicas: 4}\n"
        "gpulet:\n  gpuReplicas:\n  - {devices: &first [0, 1], replicas: 2}\n"
    )
    cfg = load(write(tmp_path, text), env={})
    assert cfg.sharing.strategy == "mps"
    assert cfg.gpulet.gpu_replicas[0].devices.refs == ("0", "1")


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 999, 5000])
def test_deep_nesting_is_refused(tmp_path: Path, depth: int) -> None:
    e = refused_file(write(tmp_path, "flags: " + "[" * depth + "]" * depth + "\n"))
    assert "nested more than" in str(e) or "maximum nesting depth" in str(e)


def test_deep_block_nesting_is_refused(tmp_path: Path) -> None:
    text = "".join("  " * i + f"k{i}:\n" for i in range(MAX_NESTING + 1))
    assert f"nested more than {MAX_NESTING} deep" in str(refused_file(write(tmp_path, text)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "a config file holds a mapping at the top"),
        ("flags: [migStrategy, mixed]\n", "flags: must be a mapping, got a list"),
        ("sharing:\n  timeSlicing: [1, 2]\n", "sharing.timeSlicing: must be a mapping, got a list"),
        ("gpulet: [1]\n", "gpulet: must be a mapping, got a list"),
        ("version: 2024-13-45\n", "line 1, column 10: '2024-13-45' cannot be read as a date"),
        (
            "gpulet:\n  metricsPort: " + "9" * 5000 + "\n",
            "line 2, column 16: '9999",
        ),
        ("version: !!python/object:os.system x\n", "could not determine a constructor"),
        ("version: [\n", "is not valid YAML"),
        ("version: v1\x00\n", "is not valid YAML"),
    ],
)
def test_malformed_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text), env={})
    assert message in str(e.value)
    assert len(str(e.value)) < 400


def test_every_limit_is_exported() -> None:
    for name in (
        "MAX_REPLICAS",
        "MAX_MPS_REPLICAS",
        "MAX_DEVICE_COUNT",
        "MAX_DEVICES_PER_RESOURCE",
        "MAX_XID",
        "MAX_DURATION",
        "MAX_CONFIG_BYTES",
        "MAX_NESTING",
        "MAX_YAML_NODES",
    ):
        assert name in config.__all__
