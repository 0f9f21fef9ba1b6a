"""The typed, frozen shape of a loaded config.

NVIDIA's device-plugin config v1 sections (``version``, ``flags``, ``resources``, ``sharing``,
``imex``) keep NVIDIA's meaning; gpulet's own keys live only in the ``gpulet`` section. Field
names here are Python's; :meth:`Config.to_dict` writes the file's key names back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import yaml

from gpulet import _core
from gpulet.config._duration import format_go_duration

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
    "SHARED_RESOURCE_SUFFIX",
    "AllocationPolicy",
    "Config",
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
    "Sharing",
    "SharingStrategy",
]

MigStrategy = Literal["none", "single", "mixed"]
DeviceListStrategy = Literal["envvar", "volume-mounts", "cdi-annotations", "cdi-cri"]
DeviceIDStrategy = Literal["uuid", "index"]
AllocationPolicy = Literal["distributed", "packed"]
DeviceDiscoveryStrategy = Literal["auto", "nvml", "tegra"]
HealthPreset = Literal["xid-catalog", "nvidia-device-plugin"]
SharingStrategy = Literal["none", "time-slicing", "mps"]

MIG_STRATEGIES: tuple[MigStrategy, ...] = ("none", "single", "mixed")
DEVICE_LIST_STRATEGIES: tuple[DeviceListStrategy, ...] = (
    "envvar",
    "volume-mounts",
    "cdi-annotations",
    "cdi-cri",
)
DEVICE_ID_STRATEGIES: tuple[DeviceIDStrategy, ...] = ("uuid", "index")
ALLOCATION_POLICIES: tuple[AllocationPolicy, ...] = ("distributed", "packed")
DEVICE_DISCOVERY_STRATEGIES: tuple[DeviceDiscoveryStrategy, ...] = ("auto", "nvml", "tegra")
HEALTH_PRESETS: tuple[HealthPreset, ...] = ("xid-catalog", "nvidia-device-plugin")

#: NVIDIA's resource domain (``nvidia.com/gpu``), one rule in the core.
RESOURCE_NAME_PREFIX: str = _core.RESOURCE_NAME_PREFIX
SHARED_RESOURCE_SUFFIX = ".shared"
DEFAULT_KUBELET_ROOT = "/var/lib/kubelet"
#: The port of /healthz, /readyz and /metrics: not dcgm-exporter's 9400, so that both can run
#: on a node during a migration from dcgm-exporter.
DEFAULT_METRICS_PORT = 9401
# --- limits (docs/config.md, "Limits", says why each is what it is) ------------------------

#: Most replicas of one device with time-slicing, and in ``gpulet.gpuReplicas``.
MAX_REPLICAS = 1024
#: Most replicas of one device with MPS: an MPS server takes at most 48 client contexts per GPU
#: (Volta and newer; 16 before Volta).
MAX_MPS_REPLICAS = 48
#: Largest ``devices: <count>`` in a sharing entry.
MAX_DEVICE_COUNT = 1024
#: Most devices one resource advertises on a node: its whole list goes to the kubelet in one
#: ListAndWatch message, which the kubelet's gRPC client takes up to 4 MiB; one device is at
#: most about 90 bytes there, so 16384 devices stay under 1.5 MiB.
MAX_DEVICES_PER_RESOURCE = 16384
#: Largest XID: NVML reports an XID in a 64-bit field.
MAX_XID = 2**64 - 1
#: Longest duration (``sleepInterval``, ``recoveryPeriod``).
MAX_DURATION = timedelta(days=365)
#: Largest config file read.
MAX_CONFIG_BYTES = 64 * 1024
#: Deepest nesting of lists and mappings in a config file, values at the bottom counted (a valid
#: one needs 7).
MAX_NESTING = 32
#: Most YAML nodes a config file may hold, counting each use of an alias as a copy of what it
#: names (a file under MAX_CONFIG_BYTES holds fewer than this unless aliases multiply it).
MAX_YAML_NODES = 100_000

#: XIDs that NVIDIA's device plugin never treats as fatal (``internal/rm/health.go``); the
#: ``nvidia-device-plugin`` health preset ignores these and treats every other XID as fatal.
#: The only copy: :mod:`gpulet.health.catalog` imports it from here.
NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS: tuple[int, ...] = (13, 31, 43, 45, 68, 109)


# --- flags ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginFlags:
    """``flags.plugin``: settings of the device-plugin servers."""

    pass_device_specs: bool = False
    device_list_strategy: tuple[DeviceListStrategy, ...] = ("envvar",)
    device_id_strategy: DeviceIDStrategy = "uuid"
    cdi_annotation_prefix: str = "cdi.k8s.io/"
    nvidia_ctk_path: str = "/usr/bin/nvidia-ctk"
    container_driver_root: str = "/driver-root"
    #: ``None``: ``<gpulet.kubeletRoot>/device-plugins/kubelet.sock`` (see Config.kubelet_socket).
    kubelet_socket: str | None = None
    cdi_feature_flags: tuple[str, ...] = ()
    shared_devices_allocation_policy: AllocationPolicy = "distributed"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "passDeviceSpecs": self.pass_device_specs,
            "deviceListStrategy": list(self.device_list_strategy),
            "deviceIDStrategy": self.device_id_strategy,
            "cdiAnnotationPrefix": self.cdi_annotation_prefix,
            "nvidiaCTKPath": self.nvidia_ctk_path,
            "containerDriverRoot": self.container_driver_root,
        }
        if self.kubelet_socket is not None:
            out["kubeletSocket"] = self.kubelet_socket
        if self.cdi_feature_flags:
            out["cdiFeatureFlags"] = list(self.cdi_feature_flags)
        out["sharedDevicesAllocationPolicy"] = self.shared_devices_allocation_policy
        return out


@dataclass(frozen=True)
class GFDFlags:
    """``flags.gfd``: settings of the node labeller (GPU feature discovery's keys)."""

    oneshot: bool = False
    no_timestamp: bool = False
    sleep_interval: timedelta = timedelta(seconds=60)
    output_file: str = "/etc/kubernetes/node-feature-discovery/features.d/gfd"
    machine_type_file: str = "/sys/class/dmi/id/product_name"

    def to_dict(self) -> dict[str, Any]:
        return {
            "oneshot": self.oneshot,
            "noTimestamp": self.no_timestamp,
            "sleepInterval": format_go_duration(self.sleep_interval),
            "outputFile": self.output_file,
            "machineTypeFile": self.machine_type_file,
        }


@dataclass(frozen=True)
class Flags:
    """``flags``: NVIDIA's command-line settings, also settable in the file."""

    mig_strategy: MigStrategy = "none"
    fail_on_init_error: bool = True
    mps_root: str | None = None
    nvidia_driver_root: str = "/"
    #: Where the device nodes are on the host; defaults to ``nvidia_driver_root``.
    nvidia_dev_root: str = "/"
    gdrcopy_enabled: bool = False
    gds_enabled: bool = False
    mofed_enabled: bool = False
    #: ``None``: not set (GFD's own default is true; the labeller decides).
    use_node_feature_api: bool | None = None
    device_discovery_strategy: DeviceDiscoveryStrategy = "auto"
    plugin: PluginFlags = field(default_factory=PluginFlags)
    gfd: GFDFlags = field(default_factory=GFDFlags)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "migStrategy": self.mig_strategy,
            "failOnInitError": self.fail_on_init_error,
        }
        if self.mps_root is not None:
            out["mpsRoot"] = self.mps_root
        out["nvidiaDriverRoot"] = self.nvidia_driver_root
        out["nvidiaDevRoot"] = self.nvidia_dev_root
        out["gdrcopyEnabled"] = self.gdrcopy_enabled
        out["gdsEnabled"] = self.gds_enabled
        out["mofedEnabled"] = self.mofed_enabled
        if self.use_node_feature_api is not None:
            out["useNodeFeatureAPI"] = self.use_node_feature_api
        out["deviceDiscoveryStrategy"] = self.device_discovery_strategy
        out["plugin"] = self.plugin.to_dict()
        out["gfd"] = self.gfd.to_dict()
        return out


# --- resources -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """One ``resources.gpus`` / ``resources.mig`` entry: devices whose name matches ``pattern``
    (``*`` is a wildcard) are advertised as ``name`` (fully qualified, ``nvidia.com/...``)."""

    pattern: str
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "name": self.name}


@dataclass(frozen=True)
class Resources:
    """``resources``: custom resource names. NVIDIA's plugin parses but ignores them; gpulet
    honours them only with ``gpulet.honorResourceNaming: true`` (otherwise both stay empty)."""

    gpus: tuple[Resource, ...] = ()
    mig: tuple[Resource, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gpus": [r.to_dict() for r in self.gpus]}
        if self.mig:
            out["mig"] = [r.to_dict() for r in self.mig]
        return out


# --- sharing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSelector:
    """Which devices a setting covers: all of them, the first ``count``, or a list of refs.

    A ref is a GPU index (``"0"``), a MIG index (``"0:1"``, GPU:MIG device), or a GPU or MIG
    UUID. Exactly one form is in use: ``all``, else ``count > 0``, else ``refs``.
    """

    all: bool = True
    count: int = 0
    refs: tuple[str, ...] = ()

    @classmethod
    def everything(cls) -> DeviceSelector:
        return cls()

    @classmethod
    def first(cls, count: int) -> DeviceSelector:
        return cls(all=False, count=count)

    @classmethod
    def of(cls, *refs: str) -> DeviceSelector:
        return cls(all=False, refs=tuple(refs))

    @property
    def kind(self) -> Literal["all", "count", "list"]:
        if self.all:
            return "all"
        return "count" if self.count > 0 else "list"

    def to_value(self) -> str | int | list[str]:
        """The YAML value NVIDIA's config uses: ``"all"``, a count, or a list of refs."""
        if self.all:
            return "all"
        if self.count > 0:
            return self.count
        return list(self.refs)


@dataclass(frozen=True)
class ReplicatedResource:
    """One ``sharing.<strategy>.resources`` entry: advertise ``replicas`` shares of each
    selected device of resource ``name`` (fully qualified), optionally as ``rename``."""

    name: str
    replicas: int
    rename: str | None = None
    devices: DeviceSelector = field(default_factory=DeviceSelector)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.rename:
            out["rename"] = self.rename
        out["devices"] = self.devices.to_value()
        out["replicas"] = self.replicas
        return out


@dataclass(frozen=True)
class ReplicatedResources:
    """``sharing.timeSlicing`` or ``sharing.mps``."""

    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False
    resources: tuple[ReplicatedResource, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "renameByDefault": self.rename_by_default,
            "failRequestsGreaterThanOne": self.fail_requests_greater_than_one,
            "resources": [r.to_dict() for r in self.resources],
        }


@dataclass(frozen=True)
class Sharing:
    """``sharing``: time-slicing or MPS (NVIDIA's plugin uses MPS when both are given)."""

    time_slicing: ReplicatedResources | None = None
    mps: ReplicatedResources | None = None

    @property
    def strategy(self) -> SharingStrategy:
        if self.mps is not None and any(r.replicas > 1 for r in self.mps.resources):
            return "mps"
        if self.time_slicing is not None and any(
            r.replicas > 1 for r in self.time_slicing.resources
        ):
            return "time-slicing"
        return "none"

    @property
    def active(self) -> ReplicatedResources | None:
        """The settings of the strategy in use, or ``None`` when nothing is shared."""
        if self.strategy == "mps":
            return self.mps
        if self.strategy == "time-slicing":
            return self.time_slicing
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.time_slicing is not None:
            out["timeSlicing"] = self.time_slicing.to_dict()
        if self.mps is not None:
            out["mps"] = self.mps.to_dict()
        return out


@dataclass(frozen=True)
class Imex:
    """``imex``: IMEX channels injected into containers that get NVIDIA devices."""

    #: ``()`` or ``(0,)``, the only values NVIDIA allows.
    channel_ids: tuple[int, ...] = ()
    required: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"channelIDs": list(self.channel_ids), "required": self.required}


# --- gpulet's own section ------------------------------------------------------------------


@dataclass(frozen=True)
class HealthPolicy:
    """``gpulet.health``: which XIDs make a GPU unhealthy, and when it may come back.

    ``preset`` picks the base list: ``xid-catalog`` follows NVIDIA's XID catalog (the health
    engine holds the table), ``nvidia-device-plugin`` reproduces NVIDIA's device plugin
    (:data:`NVIDIA_DEVICE_PLUGIN_IGNORED_XIDS` ignored, every other XID fatal). Then XIDs in
    ``ignored_xids`` never mark a GPU unhealthy, and XIDs in ``critical_xids`` (or every XID
    when it is ``"all"``) always do; ``critical_xids`` wins.
    """

    preset: HealthPreset = "xid-catalog"
    disabled: bool = False
    ignored_xids: tuple[int, ...] = ()
    critical_xids: tuple[int, ...] | Literal["all"] = ()
    #: How long a GPU must keep passing its re-probe before it is advertised healthy again.
    recovery_period: timedelta = timedelta(minutes=5)

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "disabled": self.disabled,
            "ignoredXIDs": list(self.ignored_xids),
            "criticalXIDs": (
                self.critical_xids if self.critical_xids == "all" else list(self.critical_xids)
            ),
            "recoveryPeriod": format_go_duration(self.recovery_period),
        }


@dataclass(frozen=True)
class GpuReplicas:
    """``gpulet.gpuReplicas`` entry: the selected devices get ``replicas`` shares each,
    overriding the count in ``sharing`` (1 means the device is not shared)."""

    devices: DeviceSelector
    replicas: int

    def to_dict(self) -> dict[str, Any]:
        return {"devices": self.devices.to_value(), "replicas": self.replicas}


@dataclass(frozen=True)
class DevicePluginConfig:
    """``gpulet.devicePlugin``."""

    enabled: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled}


@dataclass(frozen=True)
class DraConfig:
    """``gpulet.dra``: the DRA kubelet plugin, and which GPUs it serves.

    With both paths enabled, ``devices`` lists the GPUs (index or UUID) DRA serves; the device
    plugin serves the rest. No GPU is ever served by both.
    """

    enabled: bool = False
    driver_name: str = "gpu.gpulet.dev"
    devices: DeviceSelector = field(default_factory=DeviceSelector)

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "driverName": self.driver_name,
            "devices": self.devices.to_value(),
        }


@dataclass(frozen=True)
class GpuletConfig:
    """``gpulet``: settings NVIDIA's config has no key for. Unknown keys here are errors."""

    #: Honour ``resources.gpus``/``resources.mig`` and per-resource ``rename``.
    honor_resource_naming: bool = False
    #: Honour per-resource ``devices`` subsets in ``sharing``.
    honor_device_subsets: bool = False
    #: Unknown keys in NVIDIA's sections are errors (by default: a warning, as NVIDIA ignores them).
    strict: bool = False
    kubelet_root: str = DEFAULT_KUBELET_ROOT
    node_name: str | None = None
    #: 0: no metrics endpoint.
    metrics_port: int = DEFAULT_METRICS_PORT
    gpu_replicas: tuple[GpuReplicas, ...] = ()
    health: HealthPolicy = field(default_factory=HealthPolicy)
    device_plugin: DevicePluginConfig = field(default_factory=DevicePluginConfig)
    dra: DraConfig = field(default_factory=DraConfig)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "honorResourceNaming": self.honor_resource_naming,
            "honorDeviceSubsets": self.honor_device_subsets,
            "strict": self.strict,
            "kubeletRoot": self.kubelet_root,
        }
        if self.node_name is not None:
            out["nodeName"] = self.node_name
        out["metricsPort"] = self.metrics_port
        out["gpuReplicas"] = [g.to_dict() for g in self.gpu_replicas]
        out["health"] = self.health.to_dict()
        out["devicePlugin"] = self.device_plugin.to_dict()
        out["dra"] = self.dra.to_dict()
        return out


@dataclass(frozen=True)
class Config:
    """A loaded config: what gpulet runs with.

    The NVIDIA sections hold what NVIDIA's plugin would run with: settings NVIDIA discards are
    already discarded unless the ``gpulet`` section opts in, and ``ignored`` names them.
    ``warnings`` holds every warning logged while loading. Neither takes part in equality.
    """

    version: str = "v1"
    flags: Flags = field(default_factory=Flags)
    resources: Resources = field(default_factory=Resources)
    sharing: Sharing = field(default_factory=Sharing)
    imex: Imex = field(default_factory=Imex)
    gpulet: GpuletConfig = field(default_factory=GpuletConfig)
    #: The config file read, if any.
    source: str | None = field(default=None, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    #: Paths of settings that were parsed but not applied (NVIDIA compatibility).
    ignored: tuple[str, ...] = field(default=(), compare=False)

    @property
    def kubelet_socket(self) -> str:
        """The kubelet's device-plugin registration socket."""
        if self.flags.plugin.kubelet_socket:
            return self.flags.plugin.kubelet_socket
        return f"{self.gpulet.kubelet_root.rstrip('/')}/device-plugins/kubelet.sock"

    def to_dict(self) -> dict[str, Any]:
        """The config as a document in the file's key names; NVIDIA's sections are valid input
        for NVIDIA's plugin, and ``parse(c.to_dict()) == c``."""
        return {
            "version": self.version,
            "flags": self.flags.to_dict(),
            "resources": self.resources.to_dict(),
            "sharing": self.sharing.to_dict(),
            "imex": self.imex.to_dict(),
            "gpulet": self.gpulet.to_dict(),
        }

    def to_nvidia_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the ``gpulet`` section: a file for NVIDIA's own plugin."""
        out = self.to_dict()
        del out["gpulet"]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
