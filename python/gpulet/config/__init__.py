"""gpulet's configuration: NVIDIA's device-plugin config v1, plus gpulet's own section.

    from gpulet import config
    cfg = config.load("/etc/gpulet/config.yaml")           # flags > env > file > defaults
    cfg = config.load(flags={"mig-strategy": "mixed"})      # file from --config-file/$CONFIG_FILE
    cfg = config.parse({"version": "v1", "sharing": {...}}) # a document already in memory
    cfg.flags.mig_strategy, cfg.sharing.strategy, cfg.gpulet.health.preset
    cfg.to_dict()                                           # back to the file's key names

A file written for NVIDIA's device plugin loads unchanged and means what it means there,
including what NVIDIA parses but discards (custom resource names, per-resource ``rename`` and
``devices``): those are dropped with a warning unless the ``gpulet`` section opts in
(``honorResourceNaming``, ``honorDeviceSubsets``). Every problem raises :class:`ConfigError`,
whose message starts with the field's path. See docs/config.md.
"""

from __future__ import annotations

from gpulet.config._duration import format_go_duration, parse_go_duration
from gpulet.config._errors import ConfigError
from gpulet.config._model import (
    ALLOCATION_POLICIES,
    DEFAULT_KUBELET_ROOT,
    DEFAULT_METRICS_PORT,
    DEVICE_DISCOVERY_STRATEGIES,
    DEVICE_ID_STRATEGIES,
    DEVICE_LIST_STRATEGIES,
    HEALTH_PRESETS,
    MAX_CONFIG_BYTES,
    MAX_DEVICE_COUNT,
    MAX_DEVICES_PER_RESOURCE,
    MAX_DURATION,
    MAX_MPS_REPLICAS,
    MAX_NESTING,
    MAX_REPLICAS,
    MAX_XID,
    MAX_YAML_NODES,
    MIG_STRATEGIES,
    NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS,
    RESOURCE_NAME_PREFIX,
    SHARED_RESOURCE_SUFFIX,
    AllocationPolicy,
    Config,
    DeviceDiscoveryStrategy,
    DeviceIDStrategy,
    DeviceListStrategy,
    DevicePluginConfig,
    DeviceSelector,
    DraConfig,
    Flags,
    GFDFlags,
    GpuletConfig,
    GpuReplicas,
    HealthPolicy,
    HealthPreset,
    Imex,
    MigStrategy,
    PluginFlags,
    ReplicatedResource,
    ReplicatedResources,
    Resource,
    Resources,
    Sharing,
    SharingStrategy,
)
from gpulet.config._node import validate_for_node
from gpulet.config._parse import is_device_ref, resource_name
from gpulet.config._sources import SETTINGS, Setting, load, parse

__all__ = [
    "ALLOCATION_POLICIES",
    "DEFAULT_KUBELET_ROOT",
    "DEFAULT_METRICS_PORT",
    "DEVICE_DISCOVERY_STRATEGIES",
    "DEVICE_ID_STRATEGIES",
    "DEVICE_LIST_STRATEGIES",
    "HEALTH_PRESETS",
    "MAX_CONFIG_BYTES",
    "MAX_DEVICES_PER_RESOURCE",
    "MAX_DEVICE_COUNT",
    "MAX_DURATION",
    "MAX_MPS_REPLICAS",
    "MAX_NESTING",
    "MAX_REPLICAS",
    "MAX_XID",
    "MAX_YAML_NODES",
    "MIG_STRATEGIES",
    "NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS",
    "RESOURCE_NAME_PREFIX",
    "SETTINGS",
    "SHARED_RESOURCE_SUFFIX",
    "AllocationPolicy",
    "Config",
    "ConfigError",
    "DeviceDiscoveryStrategy",
    "DeviceIDStrategy",
    "DeviceListStrategy",
    "DevicePluginConfig",
    "DeviceSelector",
    "DraConfig",
    "Flags",
    "GFDFlags",
    "GpuReplicas",
    "GpuletConfig",
    "HealthPolicy",
    "HealthPreset",
    "Imex",
    "MigStrategy",
    "PluginFlags",
    "ReplicatedResource",
    "ReplicatedResources",
    "Resource",
    "Resources",
    "Setting",
    "Sharing",
    "SharingStrategy",
    "format_go_duration",
    "is_device_ref",
    "load",
    "parse",
    "parse_go_duration",
    "resource_name",
    "validate_for_node",
]
