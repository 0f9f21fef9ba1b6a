"""gpulet.config: NVIDIA's device-plugin config v1 plus gpulet's own section.

NVIDIA's files load unchanged and mean what they mean to NVIDIA's plugin; every bad input is a
ConfigError naming the field; flags beat environment variables, which beat the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulet import config
from gpulet.config import (
    Config,
    ConfigError,
    DeviceSelector,
    ReplicatedResource,
    format_go_duration,
    load,
    parse,
    parse_go_duration,
)

DATA = Path(__file__).parent / "testdata" / "config"
UUID = "GPU-b1028956-cfa2-0990-bf4a-5da9abb51763"


def nvidia(name: str) -> str:
    return str(DATA / "nvidia" / name)


def ts(*resources: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"version": "v1", "sharing": {"timeSlicing": {"resources": list(resources), **extra}}}


# --- defaults ------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = load(env={})
    assert cfg == Config() == parse({}) == parse(None)
    f = cfg.flags
    assert f.mig_strategy == "none"
    assert f.fail_on_init_error is True
    assert f.mps_root is None
    assert f.nvidia_driver_root == "/"
    assert f.nvidia_dev_root == "/"
    assert (f.gdrcopy_enabled, f.gds_enabled, f.mofed_enabled) == (False, False, False)
    assert f.use_node_feature_api is None
    assert f.device_discovery_strategy == "auto"
    p = f.plugin
    assert p.pass_device_specs is False
    assert p.device_list_strategy == ("envvar",)
    assert p.device_id_strategy == "uuid"
    assert p.cdi_annotation_prefix == "cdi.k8s.io/"
    assert p.nvidia_ctk_path == "/usr/bin/nvidia-ctk"
    assert p.container_driver_root == "/driver-root"
    assert p.kubelet_socket is None
    assert p.cdi_feature_flags == ()
    assert p.shared_devices_allocation_policy == "distributed"
    g = f.gfd
    assert (g.oneshot, g.no_timestamp) == (False, False)
    assert g.sleep_interval == timedelta(seconds=60)
    assert g.output_file == "/etc/kubernetes/node-feature-discovery/features.d/gfd"
    assert g.machine_type_file == "/sys/class/dmi/id/product_name"
    assert cfg.resources.gpus == cfg.resources.mig == ()
    assert cfg.sharing.time_slicing is None
    assert cfg.sharing.mps is None
    assert cfg.sharing.strategy == "none"
    assert cfg.sharing.active is None
    assert cfg.imex.channel_ids == ()
    assert cfg.imex.required is False
    gp = cfg.gpulet
    assert (gp.honor_resource_naming, gp.honor_device_subsets, gp.strict) == (False, False, False)
    assert gp.kubelet_root == "/var/lib/kubelet"
    assert gp.node_name is None
    assert gp.metrics_port == 9401
    assert gp.gpu_replicas == ()
    assert gp.health.preset == "xid-catalog"
    assert gp.health.disabled is False
    assert gp.health.ignored_xids == ()
    assert gp.health.critical_xids == ()
    assert gp.health.recovery_period == timedelta(minutes=5)
    assert gp.device_plugin.enabled is True
    assert gp.dra.enabled is False
    assert gp.dra.devices.all
    assert cfg.kubelet_socket == "/var/lib/kubelet/device-plugins/kubelet.sock"
    assert cfg.warnings == ()
    assert cfg.ignored == ()


def test_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.flags = cfg.flags  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.flags.plugin.device_id_strategy = "index"  # type: ignore[misc]


def test_config_error_is_value_error() -> None:
    with pytest.raises(ValueError, match=r"^flags\.migStrategy: ") as exc:
        parse({"flags": {"migStrategy": "dynamic"}})
    err = exc.value
    assert isinstance(err, ConfigError)
    assert err.path == "flags.migStrategy"
    assert "none, single, mixed" in err.problem
    assert err.origin is None


# --- NVIDIA's files, unchanged -------------------------------------------------------------


def test_flags_basic() -> None:
    cfg = load(nvidia("flags-basic.yaml"), env={})
    assert cfg.flags.mig_strategy == "none"
    assert cfg.flags.plugin.device_list_strategy == ("envvar",)
    assert cfg.source == nvidia("flags-basic.yaml")
    assert cfg.warnings == ()


def test_time_slicing() -> None:
    cfg = load(nvidia("time-slicing.yaml"), env={})
    assert cfg.sharing.strategy == "time-slicing"
    ts_ = cfg.sharing.time_slicing
    assert ts_ is not None
    assert cfg.sharing.active is ts_
    assert ts_.rename_by_default is False
    assert ts_.fail_requests_greater_than_one is False
    assert ts_.resources == (ReplicatedResource("nvidia.com/gpu", 10),)


def test_time_slicing_renamed() -> None:
    cfg = load(nvidia("time-slicing-renamed.yaml"), env={})
    ts_ = cfg.sharing.time_slicing
    assert ts_ is not None
    assert ts_.rename_by_default
    assert ts_.fail_requests_greater_than_one
    assert ts_.resources[0].rename == "nvidia.com/gpu.shared"
    assert cfg.ignored == ()


def test_time_slicing_mig_mixed() -> None:
    cfg = load(nvidia("time-slicing-mig-mixed.yaml"), env={})
    assert cfg.flags.mig_strategy == "mixed"
    ts_ = cfg.sharing.time_slicing
    assert ts_ is not None
    assert [(r.name, r.replicas) for r in ts_.resources] == [
        ("nvidia.com/gpu", 2),
        ("nvidia.com/mig-1g.5gb", 2),
        ("nvidia.com/mig-2g.10gb", 2),
        ("nvidia.com/mig-3g.20gb", 3),
        ("nvidia.com/mig-7g.40gb", 7),
    ]


def test_mps_needs_the_root_from_the_chart() -> None:
    with pytest.raises(ConfigError, match=r"^flags\.mpsRoot: is required with sharing\.mps"):
        load(nvidia("mps.yaml"), env={})
    cfg = load(nvidia("mps.yaml"), env={"MPS_ROOT": "/run/nvidia/mps"})
    assert cfg.sharing.strategy == "mps"
    assert cfg.flags.mps_root == "/run/nvidia/mps"
    assert cfg.sharing.mps is not None
    assert cfg.sharing.mps.fail_requests_greater_than_one is True  # MPS default


def test_mps_always_fails_requests_greater_than_one() -> None:
    doc = {
        "flags": {"mpsRoot": "/run/nvidia/mps"},
        "sharing": {
            "mps": {
                "failRequestsGreaterThanOne": False,
                "resources": [{"name": "nvidia.com/gpu", "replicas": 4}],
            }
        },
    }
    cfg = parse(doc)
    assert cfg.sharing.mps is not None
    assert cfg.sharing.mps.fail_requests_greater_than_one is True
    assert cfg.ignored == ("sharing.mps.failRequestsGreaterThanOne",)


def test_mps_not_with_mixed_mig() -> None:
    doc = {
        "flags": {"migStrategy": "mixed", "mpsRoot": "/run/nvidia/mps"},
        "sharing": {"mps": {"resources": [{"name": "gpu", "replicas": 2}]}},
    }
    with pytest.raises(ConfigError, match=r"^sharing\.mps: MPS cannot be used with .*mixed"):
        parse(doc)


def test_mps_wins_over_time_slicing() -> None:
    doc = {
        "flags": {"mpsRoot": "/run/nvidia/mps"},
        "sharing": {
            "timeSlicing": {"resources": [{"name": "gpu", "replicas": 2}]},
            "mps": {"resources": [{"name": "gpu", "replicas": 3}]},
        },
    }
    cfg = parse(doc)
    assert cfg.sharing.strategy == "mps"
    assert cfg.sharing.active is cfg.sharing.mps
    assert "sharing.timeSlicing" in cfg.ignored


def test_gpu_operator_time_slicing() -> None:
    cfg = load(nvidia("gpu-operator-time-slicing.yaml"), env={})
    assert cfg.sharing.strategy == "time-slicing"
    assert cfg.warnings == ()


def test_what_nvidia_discards_is_discarded(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gpulet.config"):
        cfg = load(nvidia("subsets-and-renames.yaml"), env={})
    assert cfg.resources == config.Resources()
    ts_ = cfg.sharing.time_slicing
    assert ts_ is not None
    assert all(r.devices.all and r.rename is None for r in ts_.resources)
    assert cfg.ignored == (
        "resources.gpus",
        "resources.mig",
        "sharing.timeSlicing.resources[0].rename",
        "sharing.timeSlicing.resources[0].devices",
        "sharing.timeSlicing.resources[1].devices",
        "sharing.timeSlicing.resources[2].devices",
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "gpulet.honorResourceNaming: true" in logged
    assert "gpulet.honorDeviceSubsets: true" in logged
    assert "sharing.timeSlicing.resources[0].rename" in logged
    assert len(cfg.warnings) == len(caplog.records) == 6


def test_same_file_with_opt_in_keeps_everything() -> None:
    doc = yaml.safe_load(Path(nvidia("subsets-and-renames.yaml")).read_text())
    doc["gpulet"] = {"honorResourceNaming": True, "honorDeviceSubsets": True}
    cfg = parse(doc)
    assert cfg.ignored == ()
    assert [r.name for r in cfg.resources.gpus] == ["nvidia.com/a100", "nvidia.com/gpu"]
    assert cfg.resources.gpus[0].pattern == "A100-SXM4-40GB"
    assert cfg.resources.mig[0].name == "nvidia.com/mig-small"
    ts_ = cfg.sharing.time_slicing
    assert ts_ is not None
    r0, r1, r2 = ts_.resources
    assert r0.rename == "nvidia.com/gpu-shared"
    assert r0.devices == DeviceSelector.of("0", "1")
    assert r1.devices.refs == ("0:0", UUID, f"MIG-{UUID}/1/0")
    assert r2.devices == DeviceSelector.first(2)
    assert r2.devices.kind == "count"


def test_two_subsets_of_one_resource_without_opt_in() -> None:
    doc = ts(
        {"name": "gpu", "devices": [0, 1], "replicas": 4},
        {"name": "gpu", "devices": [2, 3], "replicas": 2},
    )
    cfg = parse(doc)
    ts_ = cfg.sharing.time_slicing
    assert ts_ is not None
    assert ts_.resources == (ReplicatedResource("nvidia.com/gpu", 4),)
    assert "sharing.timeSlicing.resources[1]" in cfg.ignored
    doc["gpulet"] = {"honorDeviceSubsets": True}
    ts_ = parse(doc).sharing.time_slicing
    assert ts_ is not None
    assert [(r.devices.refs, r.replicas) for r in ts_.resources] == [
        (("0", "1"), 4),
        (("2", "3"), 2),
    ]


def test_full_flags() -> None:
    cfg = load(nvidia("full-flags.yaml"), env={})
    f = cfg.flags
    assert f.mig_strategy == "single"
    assert f.fail_on_init_error is False
    assert f.mps_root == "/run/nvidia/mps"
    assert f.nvidia_driver_root == "/run/nvidia/driver"
    assert f.nvidia_dev_root == "/"
    assert (f.gdrcopy_enabled, f.gds_enabled, f.mofed_enabled) == (True, True, True)
    assert f.use_node_feature_api is False
    assert f.device_discovery_strategy == "nvml"
    p = f.plugin
    assert p.pass_device_specs is True
    assert p.device_list_strategy == ("cdi-cri", "envvar")
    assert p.device_id_strategy == "index"
    assert p.cdi_annotation_prefix == "nvidia.cdi.k8s.io/"
    assert p.nvidia_ctk_path == "/usr/local/nvidia/toolkit/nvidia-ctk"
    assert p.container_driver_root == "/host-driver"
    assert p.kubelet_socket == "/var/lib/kubelet/device-plugins/kubelet.sock"
    assert p.cdi_feature_flags == ("disable-multiple-csv-devices",)
    assert p.shared_devices_allocation_policy == "packed"
    g = f.gfd
    assert (g.oneshot, g.no_timestamp) == (True, True)
    assert g.sleep_interval == timedelta(seconds=90)
    assert cfg.imex.channel_ids == (0,)
    assert cfg.imex.required is True
    assert cfg.warnings == ()


def test_running_config_json() -> None:
    # What NVIDIA's plugin logs as its running config, saved as a .json file.
    cfg = load(nvidia("running-config.json"), env={})
    assert cfg.sharing.strategy == "none"
    assert cfg.flags.gfd.sleep_interval == timedelta(minutes=1)
    assert cfg.ignored == ("resources.gpus",)


def test_helm_config_map_entry() -> None:
    cfg = load(nvidia("helm-config-map-mig-mixed.yaml"), env={})
    assert cfg.flags.mig_strategy == "mixed"
    assert cfg.flags.nvidia_dev_root == "/run/nvidia/driver"  # follows the driver root
    assert cfg.flags.plugin.device_list_strategy == ("volume-mounts",)


def test_unknown_keys_and_case_as_nvidia_reads_them(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gpulet.config"):
        cfg = load(nvidia("unknown-keys.yaml"), env={})
    assert cfg.flags.mig_strategy == "mixed"  # MigStrategy
    assert cfg.flags.plugin.device_id_strategy == "index"  # deviceidstrategy
    text = "\n".join(cfg.warnings)
    assert "flags.MigStrategy: read as 'migStrategy'" in text
    assert "flags.resourceNamePrefix: unknown key" in text
    assert "sharing.timeSlicing.resources[0].comment: unknown key" in text
    assert "health: unknown key" in text
    assert len(caplog.records) == len(cfg.warnings) == 5


def test_strict_mode_rejects_unknown_nvidia_keys() -> None:
    doc = yaml.safe_load(Path(nvidia("unknown-keys.yaml")).read_text())
    doc["gpulet"] = {"strict": True}
    with pytest.raises(ConfigError, match=r"^health: unknown key 'health' \(known keys: version"):
        parse(doc)
    del doc["health"]
    with pytest.raises(ConfigError, match=r"^flags\.MigStrategy: write 'migStrategy'"):
        parse(doc)
    doc["flags"]["migStrategy"] = doc["flags"].pop("MigStrategy")
    with pytest.raises(ConfigError, match=r"^flags\.resourceNamePrefix: unknown key"):
        parse(doc)


def test_empty_file() -> None:
    assert load(nvidia("empty.yaml"), env={}) == Config()


NVIDIA_EXAMPLES = sorted(p for p in (DATA / "nvidia").iterdir() if p.suffix in (".yaml", ".json"))


@pytest.mark.parametrize("path", NVIDIA_EXAMPLES, ids=lambda p: p.name)
def test_every_nvidia_example_loads(path: Path) -> None:
    load(path, env={"MPS_ROOT": "/run/nvidia/mps"})


# --- gpulet's section ----------------------------------------------------------------------


def test_gpulet_opt_in_file() -> None:
    cfg = load(DATA / "gpulet" / "opt-in.yaml", env={})
    assert cfg.ignored == ()
    gp = cfg.gpulet
    assert gp.honor_resource_naming
    assert gp.honor_device_subsets
    assert gp.node_name == "gpu-node-1"
    assert gp.gpu_replicas == (config.GpuReplicas(DeviceSelector.of(UUID), 8),)
    assert gp.health.preset == "nvidia-device-plugin"
    assert gp.health.ignored_xids == (94,)
    assert gp.health.critical_xids == (109,)
    assert gp.health.recovery_period == timedelta(minutes=10)
    assert gp.dra.enabled
    assert gp.dra.driver_name == "gpu.example.com"
    assert gp.dra.devices.refs == ("6", "7")
    ts_ = cfg.sharing.time_slicing
    assert ts_ is not None
    assert [(r.name, r.rename, r.devices.refs, r.replicas) for r in ts_.resources] == [
        ("nvidia.com/gpu", "nvidia.com/gpu-shared", ("0", "1"), 4),
        ("nvidia.com/gpu", None, ("2", "3"), 2),
    ]


def test_dra_only() -> None:
    cfg = load(DATA / "gpulet" / "dra-only.yaml", env={})
    assert not cfg.gpulet.device_plugin.enabled
    assert cfg.gpulet.dra.enabled
    assert cfg.gpulet.dra.devices.all


def test_kubelet_socket_follows_kubelet_root() -> None:
    cfg = parse({"gpulet": {"kubeletRoot": "/tmp/sim/kubelet/"}})
    assert cfg.kubelet_socket == "/tmp/sim/kubelet/device-plugins/kubelet.sock"
    cfg = parse({"flags": {"plugin": {"kubeletSocket": "/x/kubelet.sock"}}})
    assert cfg.kubelet_socket == "/x/kubelet.sock"


def test_nvidia_device_plugin_xid_preset_constant() -> None:
    assert config.NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS == (13, 31, 43, 45, 68, 109)


def test_critical_all() -> None:
    cfg = parse({"gpulet": {"health": {"criticalXIDs": "all"}}})
    assert cfg.gpulet.health.critical_xids == "all"


# --- bad input: a ConfigError naming the field ---------------------------------------------

BAD: list[tuple[Any, str]] = [
    (["version", "v1"], "a config file holds a mapping at the top"),
    ({"version": "v2"}, "version: unsupported version 'v2'"),
    ({"flags": []}, "flags: must be a mapping, got a list"),
    ({"flags": {"migStrategy": "dynamic"}}, "flags.migStrategy: must be one of none, single"),
    ({"flags": {"failOnInitError": "true"}}, "flags.failOnInitError: must be true or false"),
    ({"flags": {"failOnInitError": 1}}, "flags.failOnInitError: must be true or false"),
    ({"flags": {"mpsRoot": "run/mps"}}, "flags.mpsRoot: must be an absolute path"),
    ({"flags": {"nvidiaDriverRoot": 5}}, "flags.nvidiaDriverRoot: must be a string"),
    ({"flags": {"nvidiaDevRoot": "dev"}}, "flags.nvidiaDevRoot: must be an absolute path"),
    ({"flags": {"gdsEnabled": "yes"}}, "flags.gdsEnabled: must be true or false"),
    ({"flags": {"gdrcopyEnabled": 0}}, "flags.gdrcopyEnabled: must be true or false"),
    ({"flags": {"mofedEnabled": None, "useNodeFeatureAPI": "no"}}, "flags.useNodeFeatureAPI:"),
    ({"flags": {"deviceDiscoveryStrategy": "vfio"}}, "flags.deviceDiscoveryStrategy: must be"),
    ({"flags": {"plugin": "x"}}, "flags.plugin: must be a mapping"),
    ({"flags": {"plugin": {"passDeviceSpecs": "false"}}}, "flags.plugin.passDeviceSpecs:"),
    (
        {"flags": {"plugin": {"deviceListStrategy": ["envvar", "cdi"]}}},
        "flags.plugin.deviceListStrategy[1]: must be one of envvar, volume-mounts, "
        "cdi-annotations, cdi-cri; got 'cdi'",
    ),
    ({"flags": {"plugin": {"deviceListStrategy": []}}}, "flags.plugin.deviceListStrategy: must"),
    ({"flags": {"plugin": {"deviceIDStrategy": "serial"}}}, "flags.plugin.deviceIDStrategy:"),
    ({"flags": {"plugin": {"cdiAnnotationPrefix": 3}}}, "flags.plugin.cdiAnnotationPrefix:"),
    ({"flags": {"plugin": {"nvidiaCTKPath": "nvidia-ctk"}}}, "flags.plugin.nvidiaCTKPath: must"),
    ({"flags": {"plugin": {"containerDriverRoot": ""}}}, "flags.plugin.containerDriverRoot:"),
    ({"flags": {"plugin": {"kubeletSocket": "k.sock"}}}, "flags.plugin.kubeletSocket: must"),
    ({"flags": {"plugin": {"cdiFeatureFlags": [1]}}}, "flags.plugin.cdiFeatureFlags[0]: must"),
    (
        {"flags": {"plugin": {"sharedDevicesAllocationPolicy": "spread"}}},
        "flags.plugin.sharedDevicesAllocationPolicy: must be one of distributed, packed",
    ),
    ({"flags": {"gfd": {"oneshot": "true"}}}, "flags.gfd.oneshot: must be true or false"),
    ({"flags": {"gfd": {"noTimestamp": 1}}}, "flags.gfd.noTimestamp:"),
    ({"flags": {"gfd": {"sleepInterval": "60"}}}, "flags.gfd.sleepInterval: invalid duration"),
    ({"flags": {"gfd": {"sleepInterval": "-5s"}}}, "flags.gfd.sleepInterval: must not be neg"),
    ({"flags": {"gfd": {"sleepInterval": True}}}, "flags.gfd.sleepInterval: must be a duration"),
    ({"flags": {"gfd": {"outputFile": []}}}, "flags.gfd.outputFile: must be a string"),
    ({"flags": {"gfd": {"machineTypeFile": 1}}}, "flags.gfd.machineTypeFile: must be a string"),
    ({"resources": {"gpus": {}}}, "resources.gpus: must be a list"),
    ({"resources": {"gpus": [{"name": "a100"}]}}, "resources.gpus[0].pattern: is required"),
    ({"resources": {"mig": [{"pattern": "*"}]}}, "resources.mig[0].name: is required"),
    ({"resources": {"gpus": [{"pattern": "", "name": "g"}]}}, "resources.gpus[0].pattern: must"),
    (
        {"resources": {"gpus": [{"pattern": "*", "name": "A100"}]}},
        "resources.gpus[0].name: 'A100' in 'nvidia.com/A100' is not a DNS subdomain",
    ),
    (
        {"resources": {"gpus": [{"pattern": "*", "name": "x" * 60}]}},
        "resources.gpus[0].name: fully qualified resource name",
    ),
    ({"sharing": {"timeSlicing": []}}, "sharing.timeSlicing: must be a mapping"),
    ({"sharing": {"timeSlicing": {"renameByDefault": True}}}, "sharing.timeSlicing.resources:"),
    (ts(), "sharing.timeSlicing.resources: must list at least one resource"),
    (ts({"replicas": 2}), "sharing.timeSlicing.resources[0].name: is required"),
    (ts({"name": "gpu"}), "sharing.timeSlicing.resources[0].replicas: is required"),
    (
        ts({"name": "gpu", "replicas": 0}),
        "sharing.timeSlicing.resources[0].replicas: must be >= 2, got 0",
    ),
    (
        ts({"name": "gpu", "replicas": 1}),
        "sharing.timeSlicing.resources[0].replicas: must be >= 2, got 1",
    ),
    (
        ts({"name": "gpu", "replicas": 2.0}),
        "sharing.timeSlicing.resources[0].replicas: must be a whole",
    ),
    (
        ts({"name": "gpu", "replicas": True}),
        "sharing.timeSlicing.resources[0].replicas: must be a whole",
    ),
    (ts({"name": "$gpu$", "replicas": 2}), "sharing.timeSlicing.resources[0].name: '$gpu$'"),
    (
        ts({"name": "gpu", "replicas": 2, "rename": "Bad"}),
        "sharing.timeSlicing.resources[0].rename:",
    ),
    (
        ts({"name": "gpu", "replicas": 2, "devices": "some"}),
        "sharing.timeSlicing.resources[0].devices: must be 'all'",
    ),
    (
        ts({"name": "gpu", "replicas": 2, "devices": 0}),
        "resources[0].devices: a count of devices must be > 0",
    ),
    (
        ts({"name": "gpu", "replicas": 2, "devices": [-1]}),
        "resources[0].devices[0]: -1 (a number) is not a GPU index",
    ),
    (
        ts({"name": "gpu", "replicas": 2, "devices": ["GPU-UUID"]}),
        "resources[0].devices[0]: 'GPU-UUID' (a string) is not",
    ),
    (
        ts({"name": "gpu", "replicas": 2, "devices": [0, "0"]}),
        "resources[0].devices[1]: '0' is listed twice",
    ),
    (ts({"name": "gpu", "replicas": 2, "devices": 2.5}), "resources[0].devices: must be 'all'"),
    (
        ts({"name": "gpu", "replicas": 2}, renameByDefault="yes"),
        "sharing.timeSlicing.renameByDefault:",
    ),
    (
        ts({"name": "gpu", "replicas": 2}, failRequestsGreaterThanOne=1),
        "sharing.timeSlicing.failRequestsGreaterThanOne:",
    ),
    (
        ts({"name": "gpu", "replicas": 2}, {"name": "nvidia.com/gpu", "replicas": 3}),
        "sharing.timeSlicing.resources[1].name: nvidia.com/gpu with the same devices is already "
        "shared by sharing.timeSlicing.resources[0]",
    ),
    (
        ts({"name": "x" * 50, "replicas": 2}, renameByDefault=True),
        "sharing.timeSlicing.resources[0].name: renameByDefault: fully qualified",
    ),
    (
        {"sharing": {"mps": {"resources": [{"name": "gpu", "replicas": 2}]}}},
        "flags.mpsRoot: is required with sharing.mps",
    ),
    ({"imex": {"channelIDs": [1]}}, "imex.channelIDs: must be [] or [0], got [1]"),
    ({"imex": {"channelIDs": [0, 0]}}, "imex.channelIDs: must be [] or [0], got [0, 0]"),
    ({"imex": {"channelIDs": ["0"]}}, "imex.channelIDs[0]: must be a whole number"),
    ({"imex": {"channelIDs": 0}}, "imex.channelIDs: must be a list"),
    ({"imex": {"required": "true"}}, "imex.required: must be true or false"),
    ({"gpulet": []}, "gpulet: must be a mapping"),
    ({"gpulet": {"kubeletroot": "/x"}}, "gpulet.kubeletroot: unknown key 'kubeletroot'"),
    ({"gpulet": {"honorResourceNames": True}}, "did you mean 'honorResourceNaming'?"),
    ({"gpulet": {"honorResourceNaming": "yes"}}, "gpulet.honorResourceNaming: must be true"),
    ({"gpulet": {"honorDeviceSubsets": 1}}, "gpulet.honorDeviceSubsets: must be true"),
    ({"gpulet": {"strict": "on"}}, "gpulet.strict: must be true or false"),
    ({"gpulet": {"kubeletRoot": "var/lib/kubelet"}}, "gpulet.kubeletRoot: must be an absolute"),
    ({"gpulet": {"nodeName": "Node_1"}}, "gpulet.nodeName: 'Node_1' is not a DNS subdomain"),
    ({"gpulet": {"metricsPort": 70000}}, "gpulet.metricsPort: must be <= 65535, got 70000"),
    ({"gpulet": {"metricsPort": -1}}, "gpulet.metricsPort: must be >= 0, got -1"),
    ({"gpulet": {"metricsPort": "9400"}}, "gpulet.metricsPort: must be a whole number"),
    ({"gpulet": {"health": {"preset": "nvidia"}}}, "gpulet.health.preset: must be one of xid-cat"),
    ({"gpulet": {"health": {"disabled": "no"}}}, "gpulet.health.disabled: must be true"),
    ({"gpulet": {"health": {"ignoredXIDs": [0]}}}, "gpulet.health.ignoredXIDs[0]: must be >= 1"),
    ({"gpulet": {"health": {"ignoredXIDs": "13"}}}, "gpulet.health.ignoredXIDs: must be a list"),
    ({"gpulet": {"health": {"criticalXIDs": "some"}}}, "gpulet.health.criticalXIDs: must be 'all'"),
    (
        {"gpulet": {"health": {"ignoredXIDs": [13, 94], "criticalXIDs": [94]}}},
        "gpulet.health.criticalXIDs: XIDs [94] are also in ignoredXIDs",
    ),
    ({"gpulet": {"health": {"recoveryPeriod": "5 min"}}}, "gpulet.health.recoveryPeriod: invalid"),
    ({"gpulet": {"health": {"xids": []}}}, "gpulet.health.xids: unknown key"),
    ({"gpulet": {"gpuReplicas": {}}}, "gpulet.gpuReplicas: must be a list"),
    (
        {"gpulet": {"gpuReplicas": [{"devices": [0]}]}},
        "gpulet.gpuReplicas[0].replicas: is required",
    ),
    ({"gpulet": {"gpuReplicas": [{"replicas": 2}]}}, "gpulet.gpuReplicas[0].devices: is required"),
    (
        {"gpulet": {"gpuReplicas": [{"devices": "all", "replicas": 2}]}},
        "gpulet.gpuReplicas[0].devices: must be a list of GPU indices, MIG indices",
    ),
    (
        {"gpulet": {"gpuReplicas": [{"devices": [], "replicas": 2}]}},
        "gpuReplicas[0].devices: selects no",
    ),
    (
        {"gpulet": {"gpuReplicas": [{"devices": [0], "replicas": 0}]}},
        "gpulet.gpuReplicas[0].replicas: must be >= 1",
    ),
    (
        {
            "gpulet": {
                "gpuReplicas": [{"devices": [0], "replicas": 2}, {"devices": [1, 0], "replicas": 3}]
            }
        },
        "gpulet.gpuReplicas[1].devices[1]: '0' already has a count in gpulet.gpuReplicas[0]",
    ),
    (
        {"gpulet": {"gpuReplicas": [{"devices": [0], "replicas": 2}]}},
        "gpulet.gpuReplicas: needs sharing.timeSlicing or sharing.mps",
    ),
    (
        {"gpulet": {"gpuReplicas": [{"devices": [0], "replicas": 2, "x": 1}]}},
        "gpulet.gpuReplicas[0].x: unknown",
    ),
    ({"gpulet": {"devicePlugin": {"enabled": "no"}}}, "gpulet.devicePlugin.enabled: must be true"),
    ({"gpulet": {"devicePlugin": {"gpus": [0]}}}, "gpulet.devicePlugin.gpus: unknown key"),
    (
        {"gpulet": {"dra": {"enabled": True}}},
        "gpulet.dra.devices: with gpulet.devicePlugin.enabled, list",
    ),
    ({"gpulet": {"dra": {"enabled": True, "devices": []}}}, "gpulet.dra.devices: selects no GPUs"),
    (
        {"gpulet": {"dra": {"devices": 2}}},
        "gpulet.dra.devices: must be 'all' or a list of GPU indices or UUIDs",
    ),
    ({"gpulet": {"dra": {"devices": ["0:1"]}}}, "gpulet.dra.devices[0]: '0:1': name a whole GPU"),
    (
        {"gpulet": {"dra": {"driverName": "GPU.example"}}},
        "gpulet.dra.driverName: 'GPU.example' is not",
    ),
    ({"flags": {"migStrategy": "none", "MIGSTRATEGY": "mixed"}}, "flags.MIGSTRATEGY: given twice"),
    ({"flags": {1: "x"}}, "flags: keys must be strings"),
]


@pytest.mark.parametrize(("document", "message"), BAD, ids=[m[:60] for _, m in BAD])
def test_bad_input(document: Any, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(document)
    text = str(exc.value)
    assert message in text
    path = message.split(":", 1)[0]
    if ":" in message and " " not in path:
        # The message leads with the field's path.
        assert text.startswith(exc.value.path + ": ")
        assert exc.value.path.endswith(path) or path.endswith(exc.value.path)


def test_error_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("version: v1\nflags:\n  migStrategy: many\n")
    with pytest.raises(ConfigError) as exc:
        load(f, env={})
    assert str(exc.value) == (
        f"flags.migStrategy: must be one of none, single, mixed; got 'many' (in {f})"
    )
    assert exc.value.origin == f"in {f}"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml", env={})


def test_invalid_yaml_says_where(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("version: v1\nflags:\n  migStrategy: [none\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d+, column \d+"):
        load(f, env={})


def test_top_level_list_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("- version: v1\n")
    with pytest.raises(ConfigError, match="a config file holds a mapping at the top"):
        load(f, env={})


# --- precedence: flags > environment > file > defaults -------------------------------------


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    f = tmp_path / "config.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "version": "v1",
                "flags": {
                    "migStrategy": "mixed",
                    "failOnInitError": True,
                    "plugin": {"deviceListStrategy": "volume-mounts"},
                },
                "gpulet": {"metricsPort": 9500},
            }
        )
    )
    return f


def test_file_only(mixed_file: Path) -> None:
    cfg = load(mixed_file, env={})
    assert cfg.flags.mig_strategy == "mixed"
    assert cfg.flags.plugin.device_list_strategy == ("volume-mounts",)
    assert cfg.gpulet.metrics_port == 9500


def test_env_beats_file(mixed_file: Path) -> None:
    env = {
        "MIG_STRATEGY": "single",
        "FAIL_ON_INIT_ERROR": "false",
        "DEVICE_LIST_STRATEGY": "envvar,cdi-annotations",
        "GPULET_METRICS_PORT": "9600",
    }
    cfg = load(mixed_file, env=env)
    assert cfg.flags.mig_strategy == "single"
    assert cfg.flags.fail_on_init_error is False
    assert cfg.flags.plugin.device_list_strategy == ("envvar", "cdi-annotations")
    assert cfg.gpulet.metrics_port == 9600


def test_flags_beat_env(mixed_file: Path) -> None:
    env = {"MIG_STRATEGY": "single", "FAIL_ON_INIT_ERROR": "false"}
    flags = {
        "mig-strategy": "none",
        "fail_on_init_error": True,
        "--metrics-port": "9700",
        "device-list-strategy": ["cdi-cri"],
    }
    cfg = load(mixed_file, env=env, flags=flags)
    assert cfg.flags.mig_strategy == "none"
    assert cfg.flags.fail_on_init_error is True
    assert cfg.gpulet.metrics_port == 9700
    assert cfg.flags.plugin.device_list_strategy == ("cdi-cri",)


def test_flag_none_means_not_given(mixed_file: Path) -> None:
    cfg = load(mixed_file, env={"MIG_STRATEGY": "single"}, flags={"mig-strategy": None})
    assert cfg.flags.mig_strategy == "single"


def test_empty_env_counts_as_unset(mixed_file: Path) -> None:
    cfg = load(mixed_file, env={"MIG_STRATEGY": "", "FAIL_ON_INIT_ERROR": ""})
    assert cfg.flags.mig_strategy == "mixed"


def test_override_replaces_a_key_spelled_in_another_case(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("flags:\n  MIGSTRATEGY: mixed\n")
    cfg = load(f, env={"MIG_STRATEGY": "single"})
    assert cfg.flags.mig_strategy == "single"


def test_config_file_from_env_and_flag(mixed_file: Path, tmp_path: Path) -> None:
    assert load(env={"CONFIG_FILE": str(mixed_file)}).flags.mig_strategy == "mixed"
    assert load(env={"GFD_CONFIG_FILE": str(mixed_file)}).flags.mig_strategy == "mixed"
    other = tmp_path / "other.yaml"
    other.write_text("flags: {migStrategy: single}\n")
    cfg = load(env={"CONFIG_FILE": str(other)}, flags={"config-file": str(mixed_file)})
    assert cfg.flags.mig_strategy == "mixed"
    assert cfg.source == str(mixed_file)
    # An explicit path wins over both.
    cfg = load(other, env={"CONFIG_FILE": str(mixed_file)}, flags={"config-file": str(mixed_file)})
    assert cfg.flags.mig_strategy == "single"


def test_env_aliases_first_wins() -> None:
    cfg = load(env={"NVIDIA_CDI_HOOK_PATH": "/a/hook", "NVIDIA_CTK_PATH": "/b/ctk"})
    assert cfg.flags.plugin.nvidia_ctk_path == "/a/hook"
    cfg = load(env={"NVIDIA_CTK_PATH": "/b/ctk"})
    assert cfg.flags.plugin.nvidia_ctk_path == "/b/ctk"
    cfg = load(env={"CONTAINER_DRIVER_ROOT": "/c"})
    assert cfg.flags.plugin.container_driver_root == "/c"
    cfg = load(env={"GFD_MIG_STRATEGY": "single"})
    assert cfg.flags.mig_strategy == "single"
    cfg = load(flags={"driver-root": "/run/nvidia/driver"})
    assert cfg.flags.nvidia_driver_root == "/run/nvidia/driver"


@pytest.mark.parametrize(
    ("env", "check"),
    [
        ({"MIG_STRATEGY": "mixed"}, lambda c: c.flags.mig_strategy == "mixed"),
        ({"FAIL_ON_INIT_ERROR": "0"}, lambda c: c.flags.fail_on_init_error is False),
        ({"MPS_ROOT": "/run/nvidia/mps"}, lambda c: c.flags.mps_root == "/run/nvidia/mps"),
        ({"NVIDIA_DRIVER_ROOT": "/drv"}, lambda c: c.flags.nvidia_dev_root == "/drv"),
        ({"NVIDIA_DEV_ROOT": "/dev-root"}, lambda c: c.flags.nvidia_dev_root == "/dev-root"),
        ({"GDRCOPY_ENABLED": "true"}, lambda c: c.flags.gdrcopy_enabled),
        ({"GDS_ENABLED": "T"}, lambda c: c.flags.gds_enabled),
        ({"MOFED_ENABLED": "1"}, lambda c: c.flags.mofed_enabled),
        ({"USE_NODE_FEATURE_API": "false"}, lambda c: c.flags.use_node_feature_api is False),
        (
            {"DEVICE_DISCOVERY_STRATEGY": "nvml"},
            lambda c: c.flags.device_discovery_strategy == "nvml",
        ),
        ({"PASS_DEVICE_SPECS": "True"}, lambda c: c.flags.plugin.pass_device_specs),
        ({"DEVICE_ID_STRATEGY": "index"}, lambda c: c.flags.plugin.device_id_strategy == "index"),
        ({"CDI_ANNOTATION_PREFIX": "x/"}, lambda c: c.flags.plugin.cdi_annotation_prefix == "x/"),
        ({"KUBELET_SOCKET": "/k.sock"}, lambda c: c.kubelet_socket == "/k.sock"),
        ({"CDI_FEATURE_FLAGS": "a, b"}, lambda c: c.flags.plugin.cdi_feature_flags == ("a", "b")),
        (
            {"SHARED_DEVICES_ALLOCATION_POLICY": "packed"},
            lambda c: c.flags.plugin.shared_devices_allocation_policy == "packed",
        ),
        ({"GFD_ONESHOT": "true"}, lambda c: c.flags.gfd.oneshot),
        ({"GFD_NO_TIMESTAMP": "true"}, lambda c: c.flags.gfd.no_timestamp),
        (
            {"GFD_SLEEP_INTERVAL": "2m"},
            lambda c: c.flags.gfd.sleep_interval == timedelta(minutes=2),
        ),
        ({"GFD_OUTPUT_FILE": "/o"}, lambda c: c.flags.gfd.output_file == "/o"),
        ({"GFD_MACHINE_TYPE_FILE": "/m"}, lambda c: c.flags.gfd.machine_type_file == "/m"),
        ({"IMEX_CHANNEL_IDS": "0"}, lambda c: c.imex.channel_ids == (0,)),
        ({"IMEX_REQUIRED": "true"}, lambda c: c.imex.required),
        (
            {"GPULET_KUBELET_ROOT": "/r"},
            lambda c: c.kubelet_socket == "/r/device-plugins/kubelet.sock",
        ),
        ({"NODE_NAME": "node-a"}, lambda c: c.gpulet.node_name == "node-a"),
    ],
    ids=lambda x: next(iter(x)) if isinstance(x, dict) else "",
)
def test_every_env_var(env: dict[str, str], check: Any) -> None:
    assert check(load(env=env))


def test_every_setting_has_a_flag_an_env_and_a_key() -> None:
    doc = load(nvidia("full-flags.yaml"), env={"NODE_NAME": "n1"}).to_dict()
    for s in config.SETTINGS:
        assert s.flags
        assert s.envs
        node: Any = doc
        for key in s.path:
            assert key in node, s.key
            node = node[key]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MIG_STRATEGY": "auto"},
            "flags.migStrategy: must be one of none, single, mixed; got 'auto' "
            "(environment variable MIG_STRATEGY)",
        ),
        (
            {"FAIL_ON_INIT_ERROR": "yes"},
            "flags.failOnInitError: 'yes' is not a boolean; use true or false "
            "(environment variable FAIL_ON_INIT_ERROR)",
        ),
        (
            {"DEVICE_LIST_STRATEGY": "envvar,cdi"},
            "flags.plugin.deviceListStrategy[1]: must be one of envvar, volume-mounts, "
            "cdi-annotations, cdi-cri; got 'cdi' (environment variable DEVICE_LIST_STRATEGY)",
        ),
        ({"IMEX_CHANNEL_IDS": "0,x"}, "imex.channelIDs: 'x' in '0,x' is not a whole number"),
        ({"IMEX_CHANNEL_IDS": "1"}, "imex.channelIDs: must be [] or [0], got [1] (environment"),
        ({"GFD_SLEEP_INTERVAL": "soon"}, "flags.gfd.sleepInterval: invalid duration 'soon'"),
        ({"GPULET_METRICS_PORT": "http"}, "gpulet.metricsPort: 'http' is not a whole number"),
        ({"NVIDIA_DRIVER_ROOT": "drv"}, "flags.nvidiaDriverRoot: must be an absolute path"),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(env=env)
    assert message in str(exc.value)
    assert exc.value.origin == f"environment variable {next(iter(env))}"


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError) as exc:
        load(env={"MIG_STRATEGY": "single"}, flags={"mig-strategy": "some"})
    assert str(exc.value).endswith("(flag --mig-strategy)")
    with pytest.raises(ConfigError, match=r"a bool value is expected, got 3 \(flag --oneshot\)"):
        load(env={}, flags={"oneshot": 3})
    with pytest.raises(ConfigError, match="unknown flag --gpus"):
        load(env={}, flags={"gpus": "all"})


# --- health variables (NVIDIA's DP_DISABLE_HEALTHCHECKS / DP_ENABLE_HEALTHCHECKS) ----------


@pytest.mark.parametrize(
    ("env", "disabled", "ignored", "critical"),
    [
        ({"DP_DISABLE_HEALTHCHECKS": "all"}, True, (), ()),
        ({"DP_DISABLE_HEALTHCHECKS": "xids"}, True, (), ()),
        ({"DP_DISABLE_HEALTHCHECKS": "48, 79"}, False, (48, 79), ()),
        ({"DP_ENABLE_HEALTHCHECKS": "13"}, False, (), (13,)),
        ({"DP_DISABLE_HEALTHCHECKS": "13,31", "DP_ENABLE_HEALTHCHECKS": "31"}, False, (13,), (31,)),
        ({"DP_ENABLE_HEALTHCHECKS": "all"}, False, (), "all"),
        ({"DP_DISABLE_HEALTHCHECKS": "13,abc"}, False, (13,), ()),
    ],
)
def test_health_env(env: dict[str, str], disabled: bool, ignored: Any, critical: Any) -> None:
    h = load(env=env).gpulet.health
    assert (h.disabled, h.ignored_xids, h.critical_xids) == (disabled, ignored, critical)


def test_health_lists_from_the_file() -> None:
    doc = {"gpulet": {"health": {"ignoredXIDs": [94, 13, 94], "criticalXIDs": [109]}}}
    h = parse(doc).gpulet.health
    assert (h.ignored_xids, h.critical_xids) == ((13, 94), (109,))


def test_health_env_merges_with_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("gpulet:\n  health:\n    ignoredXIDs: [94]\n    criticalXIDs: [109]\n")
    env = {"DP_DISABLE_HEALTHCHECKS": "48,109", "DP_ENABLE_HEALTHCHECKS": "94"}
    h = load(f, env=env).gpulet.health
    assert h.ignored_xids == (48,)
    assert h.critical_xids == (94, 109)


# --- round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted(p for p in DATA.rglob("*") if p.suffix in (".yaml", ".json")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_round_trip(path: Path) -> None:
    cfg = load(path, env={"MPS_ROOT": "/run/nvidia/mps"})
    doc = cfg.to_dict()
    again = parse(doc)
    assert again == cfg
    assert again.ignored == ()
    assert again.warnings == ()
    assert parse(yaml.safe_load(cfg.to_yaml())) == cfg
    # NVIDIA's sections alone are a file for NVIDIA's plugin; without gpulet's opt-ins they
    # mean the same to gpulet.
    nv = cfg.to_nvidia_dict()
    assert set(nv) == {"version", "flags", "resources", "sharing", "imex"}
    if not (cfg.gpulet.honor_device_subsets or cfg.gpulet.honor_resource_naming):
        again_nv = parse(json.loads(json.dumps(nv)))
        assert (again_nv.flags, again_nv.sharing, again_nv.imex) == (
            cfg.flags,
            cfg.sharing,
            cfg.imex,
        )


def test_to_dict_uses_nvidia_spellings() -> None:
    cfg = load(nvidia("full-flags.yaml"), env={})
    d = cfg.to_dict()
    assert d["flags"]["plugin"]["deviceIDStrategy"] == "index"
    assert d["flags"]["plugin"]["nvidiaCTKPath"] == "/usr/local/nvidia/toolkit/nvidia-ctk"
    assert d["flags"]["gfd"]["sleepInterval"] == "1m30s"
    assert d["imex"] == {"channelIDs": [0], "required": True}
    ts_doc = parse(ts({"name": "gpu", "replicas": 3}, renameByDefault=True)).to_dict()
    assert ts_doc["sharing"]["timeSlicing"]["resources"] == [
        {
            "name": "nvidia.com/gpu",
            "rename": "nvidia.com/gpu.shared",
            "devices": "all",
            "replicas": 3,
        }
    ]


_names = st.sampled_from(["gpu", "nvidia.com/mig-2g.20gb", "mig-1g.10gb", "mig-3g.40gb"])
_refs = st.one_of(
    st.integers(0, 15),
    st.integers(0, 7).map(lambda i: f"{i}:0"),
    st.uuids().map(lambda u: f"GPU-{u}"),
)
_devices = st.one_of(
    st.just("all"),
    st.integers(1, 8),
    st.lists(_refs, min_size=1, max_size=4, unique_by=str),
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    honor = draw(st.booleans())
    names = draw(st.lists(_names, min_size=1, max_size=3, unique=True))
    resources = []
    for name in names:
        entry: dict[str, Any] = {"name": name, "replicas": draw(st.integers(2, 64))}
        if draw(st.booleans()):
            entry["devices"] = draw(_devices)
        if draw(st.booleans()):
            entry["rename"] = f"{name.split('/')[-1]}-s"
        resources.append(entry)
    return {
        "version": "v1",
        "flags": {
            "migStrategy": draw(st.sampled_from(config.MIG_STRATEGIES)),
            "failOnInitError": draw(st.booleans()),
            "plugin": {
                "deviceListStrategy": draw(
                    st.lists(
                        st.sampled_from(config.DEVICE_LIST_STRATEGIES), min_size=1, unique=True
                    )
                ),
                "deviceIDStrategy": draw(st.sampled_from(config.DEVICE_ID_STRATEGIES)),
            },
            "gfd": {"sleepInterval": f"{draw(st.integers(1, 7200))}s"},
        },
        "sharing": {
            "timeSlicing": {
                "renameByDefault": draw(st.booleans()),
                "failRequestsGreaterThanOne": draw(st.booleans()),
                "resources": resources,
            }
        },
        "imex": {"channelIDs": draw(st.sampled_from([[], [0]]))},
        "gpulet": {
            "honorResourceNaming": honor,
            "honorDeviceSubsets": draw(st.booleans()),
            "metricsPort": draw(st.integers(0, 65535)),
            "health": {
                "preset": draw(st.sampled_from(config.HEALTH_PRESETS)),
                "ignoredXIDs": draw(st.lists(st.integers(1, 200), max_size=3)),
                "recoveryPeriod": f"{draw(st.integers(0, 3600))}s",
            },
        },
    }


@settings(max_examples=200, deadline=None)
@given(documents())
def test_round_trip_property(doc: dict[str, Any]) -> None:
    cfg = parse(doc)
    assert parse(cfg.to_dict()) == cfg
    ts_ = cfg.sharing.time_slicing
    assert ts_ is not None
    for r in ts_.resources:
        assert r.name.startswith("nvidia.com/")
        if not cfg.gpulet.honor_device_subsets:
            assert r.devices.all
        if not cfg.gpulet.honor_resource_naming:
            assert r.rename == (r.name + ".shared" if ts_.rename_by_default else None)


# --- durations and device refs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "canonical"),
    [
        ("60s", timedelta(seconds=60), "1m0s"),
        ("1m", timedelta(minutes=1), "1m0s"),
        ("1h30m", timedelta(hours=1, minutes=30), "1h30m0s"),
        ("1.5s", timedelta(seconds=1.5), "1.5s"),
        ("300ms", timedelta(milliseconds=300), "300ms"),
        ("2us", timedelta(microseconds=2), "2µs"),
        ("2µs", timedelta(microseconds=2), "2µs"),
        ("0", timedelta(0), "0s"),
        ("1h0m0s", timedelta(hours=1), "1h0m0s"),
        (".5m", timedelta(seconds=30), "30s"),
        ("-1s", timedelta(seconds=-1), "-1s"),
    ],
)
def test_go_durations(text: str, value: timedelta, canonical: str) -> None:
    assert parse_go_duration(text) == value
    assert format_go_duration(value) == canonical
    assert parse_go_duration(canonical) == value


@pytest.mark.parametrize("text", ["", "60", "s", "1d", "1 m", "1m-", "--1s", "1.2.3s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


def test_duration_as_nanoseconds() -> None:
    cfg = parse({"flags": {"gfd": {"sleepInterval": 60_000_000_000}}})
    assert cfg.flags.gfd.sleep_interval == timedelta(seconds=60)


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        ("0", True),
        ("12", True),
        ("0:0", True),
        (UUID, True),
        ("MIG-3eb87630-93d5-b2b6-b8ff-9b359caf4ee2", True),
        (f"MIG-{UUID}/10/0", True),
        ("-1", False),
        ("0:", False),
        ("GPU-UUID", False),
        ("MIG-UUID", False),
        (f"MIG-{UUID}", False),
        ("invalid-UUID", False),
    ],
)
def test_device_refs(ref: str, ok: bool) -> None:
    assert config.is_device_ref(ref) is ok


@pytest.mark.parametrize(
    ("given", "full"),
    [
        ("gpu", "nvidia.com/gpu"),
        ("nvidia.com/gpu", "nvidia.com/gpu"),
        ("mig-1g.10gb", "nvidia.com/mig-1g.10gb"),
    ],
)
def test_resource_names(given: str, full: str) -> None:
    assert config.resource_name(given) == full


def test_device_list_strategy_string_forms() -> None:
    one = parse({"flags": {"plugin": {"deviceListStrategy": "cdi-cri"}}})
    assert one.flags.plugin.device_list_strategy == ("cdi-cri",)
    two = parse({"flags": {"plugin": {"deviceListStrategy": "envvar, cdi-cri, envvar"}}})
    assert two.flags.plugin.device_list_strategy == ("envvar", "cdi-cri")


def test_replicated_resource_selector_helpers() -> None:
    assert DeviceSelector.everything().kind == "all"
    assert DeviceSelector.first(3).to_value() == 3
    assert DeviceSelector.of("0", "1").to_value() == ["0", "1"]
