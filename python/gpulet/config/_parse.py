"""From a YAML/JSON document to a :class:`Config`: check types, apply defaults, normalize,
validate, and drop what NVIDIA's plugin drops unless the ``gpulet`` section opts in.

NVIDIA's parser (``sigs.k8s.io/yaml`` into Go structs) ignores unknown keys and matches struct
keys case-insensitively; gpulet does the same in NVIDIA's sections but warns, and is strict in
its own section (and in NVIDIA's too with ``gpulet.strict: true``).
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Literal, TypeVar

from gpulet.config._duration import parse_go_duration
from gpulet.config._errors import ConfigError, show
from gpulet.config._model import (
    ALLOCATION_POLICIES,
    DEVICE_DISCOVERY_STRATEGIES,
    DEVICE_ID_STRATEGIES,
    DEVICE_LIST_STRATEGIES,
    HEALTH_PRESETS,
    MAX_DEVICE_COUNT,
    MAX_DURATION,
    MAX_MPS_REPLICAS,
    MAX_REPLICAS,
    MAX_XID,
    MIG_STRATEGIES,
    RESOURCE_NAME_PREFIX,
    SHARED_RESOURCE_SUFFIX,
    Config,
    DeviceListStrategy,
    DevicePluginConfig,
    DeviceSelector,
    DraConfig,
    Flags,
    GFDFlags,
    GpuletConfig,
    GpuReplicas,
    HealthPolicy,
    Imex,
    PluginFlags,
    ReplicatedResource,
    ReplicatedResources,
    Resource,
    Resources,
    Sharing,
)

__all__ = ["build"]

log = logging.getLogger("gpulet.config")

VERSION = "v1"
MAX_RESOURCE_NAME_LENGTH = 63

_T = TypeVar("_T", bound=str)
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_UUID = (
    r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32})"
)
_GPU_UUID = re.compile(rf"GPU-{_UUID}")
_MIG_UUID = re.compile(rf"MIG-({_UUID}|GPU-{_UUID}/\d+/\d+)")
_GPU_INDEX = re.compile(r"\d+")
#: NVIDIA's Go int: what its parser can hold.
_GO_INT_MAX = 2**63 - 1
_REPLICA_LIMIT = "gpulet's limit of shares per device; docs/config.md, Limits, says why"
_MPS_LIMIT = "an MPS server takes at most 48 clients per GPU"

_MIG_INDEX = re.compile(r"\d+:\d+")

# Key names per section. NVIDIA's struct-decoded sections match case-insensitively (Go's
# encoding/json does); its hand-written decoders (sharing entries, resources entries) do not.
_TOP_NVIDIA = ("version", "flags", "resources", "sharing", "imex")
_FLAGS = (
    "migStrategy",
    "failOnInitError",
    "mpsRoot",
    "nvidiaDriverRoot",
    "nvidiaDevRoot",
    "gdrcopyEnabled",
    "gdsEnabled",
    "mofedEnabled",
    "useNodeFeatureAPI",
    "deviceDiscoveryStrategy",
    "plugin",
    "gfd",
)
_PLUGIN = (
    "passDeviceSpecs",
    "deviceListStrategy",
    "deviceIDStrategy",
    "cdiAnnotationPrefix",
    "nvidiaCTKPath",
    "containerDriverRoot",
    "kubeletSocket",
    "cdiFeatureFlags",
    "sharedDevicesAllocationPolicy",
)
_GFD = ("oneshot", "noTimestamp", "sleepInterval", "outputFile", "machineTypeFile")
_RESOURCES = ("gpus", "mig")
_RESOURCE = ("pattern", "name")
_SHARING = ("timeSlicing", "mps")
_REPLICATED = ("renameByDefault", "failRequestsGreaterThanOne", "resources")
_REPLICATED_RESOURCE = ("name", "rename", "devices", "replicas")
_IMEX = ("channelIDs", "required")
_GPULET = (
    "honorResourceNaming",
    "honorDeviceSubsets",
    "strict",
    "kubeletRoot",
    "nodeName",
    "metricsPort",
    "gpuReplicas",
    "health",
    "devicePlugin",
    "dra",
)
_HEALTH = ("preset", "disabled", "ignoredXIDs", "criticalXIDs", "recoveryPeriod")
_GPU_REPLICAS = ("devices", "replicas")
_DEVICE_PLUGIN = ("enabled",)
_DRA = ("enabled", "driverName", "devices")


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{show(value)} (a number)"
    if isinstance(value, str):
        return f"{show(value)} (a string)"
    return show(value)


def _key(key: str) -> str:
    """A key as it appears in a path: cut when it is too long to read."""
    return key if len(key) <= 80 else f"{key[:60]}...({len(key)} characters)"


@dataclass
class _Ctx:
    """Per-parse state: where values came from, and what was said about them."""

    file: str | None
    origins: Mapping[str, str]
    strict: bool = False

    def __post_init__(self) -> None:
        self.warnings: list[str] = []
        self.ignored: list[str] = []

    def error(self, path: str, problem: str) -> ConfigError:
        origin = None
        for key, where in self.origins.items():
            if path == key or path.startswith((f"{key}[", f"{key}.")):
                origin = where
                break
        if origin is None and self.file is not None:
            origin = f"in {self.file}"
        return ConfigError(path, problem, origin)

    def warn(self, path: str, message: str) -> None:
        text = f"{path}: {message}" if path else message
        if self.file is not None:
            text += f" (in {self.file})"
        self.warnings.append(text)
        log.warning("%s", text)

    def ignore(self, path: str, message: str) -> None:
        self.ignored.append(path)
        self.warn(path, message)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- mappings and scalars ------------------------------------------------------------------


def _mapping(
    ctx: _Ctx,
    node: object,
    path: str,
    known: tuple[str, ...],
    *,
    nvidia: bool,
    fold_case: bool = True,
) -> dict[str, Any]:
    """The known keys of a mapping node (``None`` is an empty mapping).

    Unknown keys are errors in gpulet's section (``nvidia=False``) and in strict mode, else
    warnings (NVIDIA's plugin ignores them silently).
    """
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise ctx.error(path, f"must be a mapping, got {_describe(node)}")
    lower = {k.lower(): k for k in known}
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in node.items():
        if not isinstance(key, str):
            raise ctx.error(path, f"keys must be strings, got {_describe(key)}")
        canonical: str | None = key if key in known else None
        if canonical is None and nvidia and fold_case and key.lower() in lower:
            canonical = lower[key.lower()]
            if ctx.strict:
                raise ctx.error(_join(path, key), f"write {canonical!r} (gpulet.strict is set)")
            ctx.warn(
                _join(path, key),
                f"read as {canonical!r} (NVIDIA's parser ignores case here); write {canonical!r}",
            )
        if canonical is None:
            candidates = known + (("gpulet",) if not path and nvidia else ())
            hint = difflib.get_close_matches(key, candidates, n=1) if len(key) <= 80 else []
            if not hint:
                hint = [k for k in candidates if k.lower() == key.lower()]
            where = f"unknown key {show(key)}"
            known_text = ", ".join(candidates)
            if hint:
                where += f"; did you mean {hint[0]!r}?"
            if not nvidia or ctx.strict:
                raise ctx.error(_join(path, _key(key)), f"{where} (known keys: {known_text})")
            ctx.warn(_join(path, _key(key)), f"{where}; ignored, as NVIDIA's plugin ignores it")
            continue
        if canonical in seen:
            raise ctx.error(
                _join(path, key), f"given twice (also as {seen[canonical]!r}); keep one"
            )
        seen[canonical] = key
        out[canonical] = value
    return out


def _bool(ctx: _Ctx, value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(path, f"must be true or false, got {_describe(value)}")
    return value


def _int(ctx: _Ctx, value: object, path: str, *, minimum: int, maximum: int, why: str = "") -> int:
    """A whole number in ``[minimum, maximum]``; ``why`` says where the maximum comes from."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.error(path, f"must be a whole number, got {_describe(value)}")
    if value < minimum:
        raise ctx.error(path, f"must be >= {minimum}, got {show(value)}")
    if value > maximum:
        if why:
            raise ctx.error(path, f"{show(value)} is above the limit of {maximum} ({why})")
        raise ctx.error(path, f"must be <= {maximum}, got {show(value)}")
    return value


def _str(ctx: _Ctx, value: object, path: str, *, empty_ok: bool = True) -> str:
    if not isinstance(value, str):
        raise ctx.error(path, f"must be a string, got {_describe(value)}")
    if not empty_ok and not value:
        raise ctx.error(path, "must not be empty")
    return value


def _choice(ctx: _Ctx, value: object, path: str, choices: tuple[_T, ...]) -> _T:
    text = _str(ctx, value, path)
    for choice in choices:
        if text == choice:
            return choice
    raise ctx.error(path, f"must be one of {', '.join(choices)}; got {show(text)}")


def _duration(ctx: _Ctx, value: object, path: str) -> timedelta:
    limit = f"{MAX_DURATION // timedelta(hours=1)}h"
    if isinstance(value, str):
        try:
            result = parse_go_duration(value)
        except ValueError as e:
            raise ctx.error(path, str(e)) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        # NVIDIA's Duration takes a bare number as nanoseconds.
        if value != value:  # NaN
            raise ctx.error(path, "must be a duration such as 60s or 1m30s, got NaN")
        if value < 0:
            raise ctx.error(path, f"must not be negative, got {show(value)}")
        if value > MAX_DURATION // timedelta(microseconds=1) * 1000:
            raise ctx.error(path, f"{show(value)} ns is above the limit of {limit}")
        result = timedelta(microseconds=round(value / 1000))
    else:
        raise ctx.error(path, f"must be a duration such as 60s or 1m30s, got {_describe(value)}")
    if result < timedelta(0):
        raise ctx.error(path, f"must not be negative, got {show(value)}")
    if result > MAX_DURATION:
        raise ctx.error(path, f"{show(value)} is above the limit of {limit}")
    return result


def _list(ctx: _Ctx, value: object, path: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ctx.error(path, f"must be a list, got {_describe(value)}")
    return list(value)


def _abs_path(ctx: _Ctx, value: object, path: str) -> str:
    text = _str(ctx, value, path, empty_ok=False)
    if not text.startswith("/"):
        raise ctx.error(path, f"must be an absolute path, got {show(text)}")
    return text


# --- flags ---------------------------------------------------------------------------------

_V = TypeVar("_V")
_Parser = Callable[[_Ctx, object, str], _V]


def _field(
    ctx: _Ctx,
    raw: Mapping[str, Any],
    path: str,
    key: str,
    parse: _Parser[_V],
    default: _V,
    *,
    empty_is_unset: bool = False,
) -> _V:
    """``raw[key]`` parsed, or ``default`` when it is missing or null (or ``""`` if so told)."""
    value = raw.get(key)
    if value is None or (empty_is_unset and value == ""):
        return default
    return parse(ctx, value, _join(path, key))


def _chooser(choices: tuple[_T, ...]) -> _Parser[_T]:
    def parse(ctx: _Ctx, value: object, path: str) -> _T:
        return _choice(ctx, value, path, choices)

    return parse


def _device_list_strategy(ctx: _Ctx, value: object, path: str) -> tuple[DeviceListStrategy, ...]:
    # NVIDIA takes one string or a list; gpulet also splits a string on commas, as the
    # DEVICE_LIST_STRATEGY variable is split.
    if isinstance(value, str):
        items: list[object] = [s.strip() for s in value.split(",")]
    else:
        items = _list(ctx, value, path)
    out: list[DeviceListStrategy] = []
    for i, item in enumerate(items):
        strategy = _choice(ctx, item, f"{path}[{i}]", DEVICE_LIST_STRATEGIES)
        if strategy not in out:
            out.append(strategy)
    if not out:
        raise ctx.error(path, f"must name at least one of {', '.join(DEVICE_LIST_STRATEGIES)}")
    return tuple(out)


def _string_list(ctx: _Ctx, value: object, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(",") if s.strip())
    return tuple(_str(ctx, v, f"{path}[{i}]") for i, v in enumerate(_list(ctx, value, path)))


def _optional_abs_path(ctx: _Ctx, value: object, path: str) -> str | None:
    return _abs_path(ctx, value, path)


def _plugin_flags(ctx: _Ctx, node: object, path: str) -> PluginFlags:
    raw = _mapping(ctx, node, path, _PLUGIN, nvidia=True)
    d = PluginFlags()
    return PluginFlags(
        pass_device_specs=_field(ctx, raw, path, "passDeviceSpecs", _bool, d.pass_device_specs),
        device_list_strategy=_field(
            ctx, raw, path, "deviceListStrategy", _device_list_strategy, d.device_list_strategy
        ),
        device_id_strategy=_field(
            ctx, raw, path, "deviceIDStrategy", _chooser(DEVICE_ID_STRATEGIES), d.device_id_strategy
        ),
        cdi_annotation_prefix=_field(
            ctx, raw, path, "cdiAnnotationPrefix", _str, d.cdi_annotation_prefix
        ),
        nvidia_ctk_path=_field(ctx, raw, path, "nvidiaCTKPath", _abs_path, d.nvidia_ctk_path),
        container_driver_root=_field(
            ctx, raw, path, "containerDriverRoot", _abs_path, d.container_driver_root
        ),
        kubelet_socket=_field(
            ctx, raw, path, "kubeletSocket", _optional_abs_path, None, empty_is_unset=True
        ),
        cdi_feature_flags=_field(
            ctx, raw, path, "cdiFeatureFlags", _string_list, d.cdi_feature_flags
        ),
        shared_devices_allocation_policy=_field(
            ctx,
            raw,
            path,
            "sharedDevicesAllocationPolicy",
            _chooser(ALLOCATION_POLICIES),
            d.shared_devices_allocation_policy,
        ),
    )


def _gfd_flags(ctx: _Ctx, node: object, path: str) -> GFDFlags:
    raw = _mapping(ctx, node, path, _GFD, nvidia=True)
    d = GFDFlags()
    return GFDFlags(
        oneshot=_field(ctx, raw, path, "oneshot", _bool, d.oneshot),
        no_timestamp=_field(ctx, raw, path, "noTimestamp", _bool, d.no_timestamp),
        sleep_interval=_field(ctx, raw, path, "sleepInterval", _duration, d.sleep_interval),
        output_file=_field(ctx, raw, path, "outputFile", _str, d.output_file),
        machine_type_file=_field(ctx, raw, path, "machineTypeFile", _str, d.machine_type_file),
    )


def _optional_bool(ctx: _Ctx, value: object, path: str) -> bool | None:
    return _bool(ctx, value, path)


def _flags(ctx: _Ctx, node: object) -> Flags:
    path = "flags"
    raw = _mapping(ctx, node, path, _FLAGS, nvidia=True)
    d = Flags()
    driver_root = _field(
        ctx, raw, path, "nvidiaDriverRoot", _abs_path, d.nvidia_driver_root, empty_is_unset=True
    )
    return Flags(
        mig_strategy=_field(
            ctx, raw, path, "migStrategy", _chooser(MIG_STRATEGIES), d.mig_strategy
        ),
        fail_on_init_error=_field(ctx, raw, path, "failOnInitError", _bool, d.fail_on_init_error),
        mps_root=_field(ctx, raw, path, "mpsRoot", _optional_abs_path, None, empty_is_unset=True),
        nvidia_driver_root=driver_root,
        # NVIDIA: an unset or empty nvidiaDevRoot means "the driver root".
        nvidia_dev_root=_field(
            ctx, raw, path, "nvidiaDevRoot", _abs_path, driver_root, empty_is_unset=True
        ),
        gdrcopy_enabled=_field(ctx, raw, path, "gdrcopyEnabled", _bool, d.gdrcopy_enabled),
        gds_enabled=_field(ctx, raw, path, "gdsEnabled", _bool, d.gds_enabled),
        mofed_enabled=_field(ctx, raw, path, "mofedEnabled", _bool, d.mofed_enabled),
        use_node_feature_api=_field(ctx, raw, path, "useNodeFeatureAPI", _optional_bool, None),
        device_discovery_strategy=_field(
            ctx,
            raw,
            path,
            "deviceDiscoveryStrategy",
            _chooser(DEVICE_DISCOVERY_STRATEGIES),
            d.device_discovery_strategy,
        ),
        plugin=_plugin_flags(ctx, raw.get("plugin"), _join(path, "plugin")),
        gfd=_gfd_flags(ctx, raw.get("gfd"), _join(path, "gfd")),
    )


# --- resources -----------------------------------------------------------------------------


def resource_name(value: str) -> str:
    """NVIDIA's ``NewResourceName``: prefix ``nvidia.com/`` unless present, check the length
    (<= 63) and that the part after the prefix is a DNS subdomain. Raises ValueError."""
    name = (
        value if value.startswith(f"{RESOURCE_NAME_PREFIX}/") else f"{RESOURCE_NAME_PREFIX}/{value}"
    )
    if len(name) > MAX_RESOURCE_NAME_LENGTH:
        raise ValueError(
            f"fully qualified resource name {show(name)} is {len(name)} characters; "
            f"at most {MAX_RESOURCE_NAME_LENGTH} are allowed"
        )
    short = name.split("/", 1)[1]
    if len(short) > 253 or not _DNS_SUBDOMAIN.fullmatch(short):
        raise ValueError(
            f"{show(short)} in {show(name)} is not a DNS subdomain "
            "(lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        )
    return name


def _resource_name(ctx: _Ctx, value: object, path: str) -> str:
    text = _str(ctx, value, path, empty_ok=False)
    try:
        return resource_name(text)
    except ValueError as e:
        raise ctx.error(path, str(e)) from None


def _resource_list(ctx: _Ctx, node: object, path: str) -> tuple[Resource, ...]:
    out: list[Resource] = []
    for i, item in enumerate(_list(ctx, node, path)):
        ipath = f"{path}[{i}]"
        raw = _mapping(ctx, item, ipath, _RESOURCE, nvidia=True, fold_case=False)
        for key in _RESOURCE:
            if key not in raw:
                raise ctx.error(_join(ipath, key), "is required")
        out.append(
            Resource(
                pattern=_str(ctx, raw["pattern"], _join(ipath, "pattern"), empty_ok=False),
                name=_resource_name(ctx, raw["name"], _join(ipath, "name")),
            )
        )
    return tuple(out)


def _resources(ctx: _Ctx, node: object) -> Resources:
    raw = _mapping(ctx, node, "resources", _RESOURCES, nvidia=True)
    return Resources(
        gpus=_resource_list(ctx, raw.get("gpus"), "resources.gpus"),
        mig=_resource_list(ctx, raw.get("mig"), "resources.mig"),
    )


# --- sharing -------------------------------------------------------------------------------


def is_device_ref(ref: str) -> bool:
    """A GPU index, a MIG index (``gpu:mig``), or a GPU or MIG UUID, as NVIDIA accepts them."""
    return any(p.fullmatch(ref) for p in (_GPU_INDEX, _MIG_INDEX, _GPU_UUID, _MIG_UUID))


def _device_selector(
    ctx: _Ctx,
    value: object,
    path: str,
    *,
    allow: tuple[Literal["all", "count", "list"], ...] = ("all", "count", "list"),
    gpus_only: bool = False,
) -> DeviceSelector:
    """NVIDIA's ReplicatedDevices: ``"all"``, a count > 0, or a list of device refs."""
    forms = {
        "all": "'all'",
        "count": "a count",
        "list": "a list of GPU indices or UUIDs"
        if gpus_only
        else "a list of GPU indices, MIG indices (gpu:mig) or UUIDs",
    }
    expected = " or ".join(forms[a] for a in allow)
    if isinstance(value, str):
        if value != "all" or "all" not in allow:
            raise ctx.error(path, f"must be {expected}; got {show(value)}")
        return DeviceSelector()
    if isinstance(value, int) and not isinstance(value, bool):
        if "count" not in allow:
            raise ctx.error(path, f"must be {expected}; got {show(value)}")
        if value <= 0:
            raise ctx.error(path, f"a count of devices must be > 0, got {show(value)}")
        if value > MAX_DEVICE_COUNT:
            raise ctx.error(
                path,
                f"a count of {show(value)} devices is above the limit of {MAX_DEVICE_COUNT}",
            )
        return DeviceSelector.first(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes) and "list" in allow:
        refs: list[str] = []
        seen: set[str] = set()
        for i, item in enumerate(value):
            ipath = f"{path}[{i}]"
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                ref = str(item)
            elif isinstance(item, str) and is_device_ref(item):
                ref = item
            else:
                raise ctx.error(
                    ipath,
                    f"{_describe(item)} is not a GPU index, MIG index (gpu:mig), or GPU-/MIG- UUID",
                )
            if gpus_only and not (_GPU_INDEX.fullmatch(ref) or _GPU_UUID.fullmatch(ref)):
                raise ctx.error(ipath, f"{ref!r}: name a whole GPU (index or GPU- UUID)")
            if ref in seen:
                raise ctx.error(ipath, f"{ref!r} is listed twice")
            seen.add(ref)
            refs.append(ref)
        return DeviceSelector.of(*refs)
    raise ctx.error(path, f"must be {expected}; got {_describe(value)}")


def _replicated_resources(
    ctx: _Ctx, node: object, path: str, *, mps: bool, gpulet: GpuletConfig
) -> ReplicatedResources:
    raw = _mapping(ctx, node, path, _REPLICATED, nvidia=True, fold_case=False)
    rename_by_default = (
        _bool(ctx, raw["renameByDefault"], _join(path, "renameByDefault"))
        if "renameByDefault" in raw
        else False
    )
    fail_gt1 = (
        _bool(ctx, raw["failRequestsGreaterThanOne"], _join(path, "failRequestsGreaterThanOne"))
        if "failRequestsGreaterThanOne" in raw
        else mps
    )
    if mps and not fail_gt1:
        # NVIDIA sets this to true for MPS whatever the file says.
        ctx.ignore(
            _join(path, "failRequestsGreaterThanOne"),
            "false is ignored: with MPS a request for more than one replica always fails "
            "(as with NVIDIA's plugin)",
        )
        fail_gt1 = True
    rpath = _join(path, "resources")
    items = _list(ctx, raw.get("resources"), rpath)
    if not items:
        raise ctx.error(rpath, "must list at least one resource to share")
    resources: list[ReplicatedResource] = []
    seen: dict[tuple[str, DeviceSelector], tuple[int, DeviceSelector]] = {}
    for i, item in enumerate(items):
        ipath = f"{rpath}[{i}]"
        r = _mapping(ctx, item, ipath, _REPLICATED_RESOURCE, nvidia=True, fold_case=False)
        if "name" not in r:
            raise ctx.error(_join(ipath, "name"), "is required (e.g. nvidia.com/gpu)")
        if "replicas" not in r:
            raise ctx.error(_join(ipath, "replicas"), "is required")
        name = _resource_name(ctx, r["name"], _join(ipath, "name"))
        replicas = _int(
            ctx,
            r["replicas"],
            _join(ipath, "replicas"),
            minimum=2,
            maximum=MAX_MPS_REPLICAS if mps else MAX_REPLICAS,
            why=_MPS_LIMIT if mps else _REPLICA_LIMIT,
        )
        devices = (
            _device_selector(ctx, r["devices"], _join(ipath, "devices"))
            if r.get("devices") is not None
            else DeviceSelector()
        )
        default_rename = name + SHARED_RESOURCE_SUFFIX
        rename = (
            _resource_name(ctx, r["rename"], _join(ipath, "rename")) if r.get("rename") else None
        )
        if rename_by_default and rename is None:
            rename = default_rename
        if rename_by_default:
            try:
                resource_name(default_rename)
            except ValueError as e:
                raise ctx.error(_join(ipath, "name"), f"renameByDefault: {e}") from None
        # NVIDIA's DisableResourceNamingInConfig, unless gpulet's section opts in.
        if not gpulet.honor_resource_naming:
            wanted = default_rename if rename_by_default else None
            if rename != wanted:
                used = f"the default {wanted!r}" if wanted else "no rename"
                ctx.ignore(
                    _join(ipath, "rename"),
                    f"ignored ({used} is used, as with NVIDIA's plugin); "
                    "set gpulet.honorResourceNaming: true to use it",
                )
                rename = wanted
        written = devices
        if not devices.all and not gpulet.honor_device_subsets:
            ctx.ignore(
                _join(ipath, "devices"),
                "ignored (all devices are shared, as with NVIDIA's plugin); "
                "set gpulet.honorDeviceSubsets: true to share only these",
            )
            devices = DeviceSelector()
        if devices.kind == "list" and not devices.refs:
            raise ctx.error(_join(ipath, "devices"), "selects no devices; list at least one")
        key = (name, devices)
        if key in seen:
            first, first_written = seen[key]
            if written == first_written:
                raise ctx.error(
                    _join(ipath, "name"),
                    f"{name} with the same devices is already shared by {rpath}[{first}]",
                )
            # Two subsets of one resource, with subsets not honoured: both became "all".
            ctx.ignore(
                ipath,
                f"ignored: {rpath}[{first}] already shares all devices of {name} (device "
                "subsets are not honoured); set gpulet.honorDeviceSubsets: true to use both",
            )
            continue
        seen[key] = (i, written)
        resources.append(
            ReplicatedResource(name=name, replicas=replicas, rename=rename, devices=devices)
        )
    return ReplicatedResources(
        rename_by_default=rename_by_default,
        fail_requests_greater_than_one=fail_gt1,
        resources=tuple(resources),
    )


def _sharing(ctx: _Ctx, node: object, gpulet: GpuletConfig) -> Sharing:
    raw = _mapping(ctx, node, "sharing", _SHARING, nvidia=True)
    # An empty mapping is "not set" (NVIDIA's own config dump writes ``timeSlicing: {}``).
    raw = {k: v for k, v in raw.items() if not (isinstance(v, Mapping) and not v)}
    ts = (
        _replicated_resources(
            ctx, raw["timeSlicing"], "sharing.timeSlicing", mps=False, gpulet=gpulet
        )
        if raw.get("timeSlicing") is not None
        else None
    )
    mps = (
        _replicated_resources(ctx, raw["mps"], "sharing.mps", mps=True, gpulet=gpulet)
        if raw.get("mps") is not None
        else None
    )
    if ts is not None and mps is not None:
        ctx.ignore(
            "sharing.timeSlicing",
            "ignored: sharing.mps is also set and wins, as with NVIDIA's plugin; keep one",
        )
    return Sharing(time_slicing=ts, mps=mps)


def _imex(ctx: _Ctx, node: object) -> Imex:
    raw = _mapping(ctx, node, "imex", _IMEX, nvidia=True)
    ids = tuple(
        _int(ctx, v, f"imex.channelIDs[{i}]", minimum=0, maximum=_GO_INT_MAX)
        for i, v in enumerate(_list(ctx, raw.get("channelIDs"), "imex.channelIDs"))
    )
    if ids not in ((), (0,)):
        got = str(list(ids)) if len(ids) <= 8 else f"{len(ids)} IDs"
        raise ctx.error("imex.channelIDs", f"must be [] or [0], got {got}")
    required = (
        _bool(ctx, raw["required"], "imex.required") if raw.get("required") is not None else False
    )
    return Imex(channel_ids=ids, required=required)


# --- gpulet --------------------------------------------------------------------------------


def _xids(ctx: _Ctx, value: object, path: str) -> tuple[int, ...]:
    out: set[int] = set()
    for i, v in enumerate(_list(ctx, value, path)):
        out.add(_int(ctx, v, f"{path}[{i}]", minimum=1, maximum=MAX_XID))
    return tuple(sorted(out))


def _health(ctx: _Ctx, node: object, path: str) -> HealthPolicy:
    raw = _mapping(ctx, node, path, _HEALTH, nvidia=False)
    d = HealthPolicy()
    ignored = _xids(ctx, raw.get("ignoredXIDs"), _join(path, "ignoredXIDs"))
    cpath = _join(path, "criticalXIDs")
    critical_raw = raw.get("criticalXIDs")
    critical: tuple[int, ...] | Literal["all"]
    if critical_raw == "all":
        critical = "all"
    elif isinstance(critical_raw, str):
        raise ctx.error(cpath, f"must be 'all' or a list of XIDs, got {show(critical_raw)}")
    else:
        critical = _xids(ctx, critical_raw, cpath)
        both = sorted(set(critical) & set(ignored))
        if both:
            listed = str(both) if len(both) <= 8 else f"{both[:8]} and {len(both) - 8} more"
            raise ctx.error(cpath, f"XIDs {listed} are also in ignoredXIDs; list each XID once")
    return HealthPolicy(
        preset=_field(ctx, raw, path, "preset", _chooser(HEALTH_PRESETS), d.preset),
        disabled=_field(ctx, raw, path, "disabled", _bool, d.disabled),
        ignored_xids=ignored,
        critical_xids=critical,
        recovery_period=_field(ctx, raw, path, "recoveryPeriod", _duration, d.recovery_period),
    )


def _gpu_replicas(ctx: _Ctx, node: object, path: str) -> tuple[GpuReplicas, ...]:
    out: list[GpuReplicas] = []
    owner: dict[str, int] = {}
    for i, item in enumerate(_list(ctx, node, path)):
        ipath = f"{path}[{i}]"
        raw = _mapping(ctx, item, ipath, _GPU_REPLICAS, nvidia=False)
        for key in _GPU_REPLICAS:
            if key not in raw:
                raise ctx.error(_join(ipath, key), "is required")
        devices = _device_selector(ctx, raw["devices"], _join(ipath, "devices"), allow=("list",))
        if not devices.refs:
            raise ctx.error(_join(ipath, "devices"), "selects no devices; list at least one")
        for j, ref in enumerate(devices.refs):
            if ref in owner:
                raise ctx.error(
                    f"{ipath}.devices[{j}]", f"{ref!r} already has a count in {path}[{owner[ref]}]"
                )
            owner[ref] = i
        out.append(
            GpuReplicas(
                devices=devices,
                replicas=_int(
                    ctx,
                    raw["replicas"],
                    _join(ipath, "replicas"),
                    minimum=1,
                    maximum=MAX_REPLICAS,
                    why=_REPLICA_LIMIT,
                ),
            )
        )
    return tuple(out)


def _dns_subdomain(ctx: _Ctx, value: object, path: str, *, max_len: int) -> str:
    text = _str(ctx, value, path, empty_ok=False)
    if len(text) > max_len or not _DNS_SUBDOMAIN.fullmatch(text):
        raise ctx.error(
            path,
            f"{show(text)} is not a DNS subdomain of at most {max_len} characters "
            "(lowercase letters, digits, '-' and '.')",
        )
    return text


def _node_name(ctx: _Ctx, value: object, path: str) -> str | None:
    return _dns_subdomain(ctx, value, path, max_len=253)


def _driver_name(ctx: _Ctx, value: object, path: str) -> str:
    return _dns_subdomain(ctx, value, path, max_len=63)


def _port(ctx: _Ctx, value: object, path: str) -> int:
    return _int(ctx, value, path, minimum=0, maximum=65535)


def _dra_devices(ctx: _Ctx, value: object, path: str) -> DeviceSelector:
    return _device_selector(ctx, value, path, allow=("all", "list"), gpus_only=True)


def _gpulet(ctx: _Ctx, node: object) -> GpuletConfig:
    path = "gpulet"
    raw = _mapping(ctx, node, path, _GPULET, nvidia=False)
    d = GpuletConfig()
    dp_path = _join(path, "devicePlugin")
    dp_raw = _mapping(ctx, raw.get("devicePlugin"), dp_path, _DEVICE_PLUGIN, nvidia=False)
    device_plugin = DevicePluginConfig(
        enabled=_field(ctx, dp_raw, dp_path, "enabled", _bool, d.device_plugin.enabled)
    )
    dra_path = _join(path, "dra")
    dra_raw = _mapping(ctx, raw.get("dra"), dra_path, _DRA, nvidia=False)
    dra = DraConfig(
        enabled=_field(ctx, dra_raw, dra_path, "enabled", _bool, d.dra.enabled),
        driver_name=_field(ctx, dra_raw, dra_path, "driverName", _driver_name, d.dra.driver_name),
        devices=_field(ctx, dra_raw, dra_path, "devices", _dra_devices, d.dra.devices),
    )
    if dra.enabled and device_plugin.enabled:
        if dra.devices.all:
            raise ctx.error(
                _join(dra_path, "devices"),
                "with gpulet.devicePlugin.enabled, list the GPUs DRA serves (the device plugin "
                "serves the rest; no GPU can be served by both), or disable the device plugin",
            )
        if not dra.devices.refs:
            raise ctx.error(_join(dra_path, "devices"), "selects no GPUs; list at least one")
    return GpuletConfig(
        honor_resource_naming=_field(
            ctx, raw, path, "honorResourceNaming", _bool, d.honor_resource_naming
        ),
        honor_device_subsets=_field(
            ctx, raw, path, "honorDeviceSubsets", _bool, d.honor_device_subsets
        ),
        strict=_field(ctx, raw, path, "strict", _bool, d.strict),
        kubelet_root=_field(
            ctx, raw, path, "kubeletRoot", _abs_path, d.kubelet_root, empty_is_unset=True
        ),
        node_name=_field(ctx, raw, path, "nodeName", _node_name, None, empty_is_unset=True),
        metrics_port=_field(ctx, raw, path, "metricsPort", _port, d.metrics_port),
        gpu_replicas=_gpu_replicas(ctx, raw.get("gpuReplicas"), _join(path, "gpuReplicas")),
        health=_health(ctx, raw.get("health"), _join(path, "health")),
        device_plugin=device_plugin,
        dra=dra,
    )


# --- the whole document --------------------------------------------------------------------


def build(
    document: object,
    *,
    file: str | None = None,
    origins: Mapping[str, str] | None = None,
    health_env: tuple[bool, tuple[int, ...], tuple[int, ...] | Literal["all"]] | None = None,
) -> Config:
    """Parse a config document (the result of ``yaml.safe_load``).

    ``origins`` maps field paths to where their value came from (for error messages);
    ``health_env`` is what DP_DISABLE_HEALTHCHECKS / DP_ENABLE_HEALTHCHECKS added.
    """
    ctx = _Ctx(file=file, origins=origins or {})
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise ctx.error("", f"a config file holds a mapping at the top, got {_describe(document)}")
    # gpulet's section first: it decides how strictly NVIDIA's sections are read.
    gpulet_node = None
    for key, value in document.items():
        if key == "gpulet":
            gpulet_node = value
    gpulet = _gpulet(ctx, gpulet_node)
    ctx.strict = gpulet.strict
    rest = {k: v for k, v in document.items() if k != "gpulet"}
    top = _mapping(ctx, rest, "", _TOP_NVIDIA, nvidia=True)

    version = top.get("version")
    if version in (None, ""):
        version = VERSION
    if version != VERSION:
        raise ctx.error("version", f"unsupported version {show(version)}; gpulet reads version v1")

    flags = _flags(ctx, top.get("flags"))
    resources = _resources(ctx, top.get("resources"))
    if (resources.gpus or resources.mig) and not gpulet.honor_resource_naming:
        for section, entries in (
            ("resources.gpus", resources.gpus),
            ("resources.mig", resources.mig),
        ):
            if entries:
                ctx.ignore(
                    section,
                    "custom resource names are ignored (as with NVIDIA's plugin); "
                    "set gpulet.honorResourceNaming: true to use them",
                )
        resources = Resources()
    sharing = _sharing(ctx, top.get("sharing"), gpulet)
    imex = _imex(ctx, top.get("imex"))

    # Checks NVIDIA's plugin makes at start-up.
    if sharing.strategy == "mps":
        if flags.mig_strategy == "mixed":
            raise ctx.error("sharing.mps", "MPS cannot be used with flags.migStrategy: mixed")
        if not flags.mps_root:
            raise ctx.error(
                "flags.mpsRoot",
                "is required with sharing.mps (the host folder for the MPS daemons' pipes "
                "and shared memory, e.g. /run/nvidia/mps)",
            )
    if gpulet.gpu_replicas and sharing.strategy == "none":
        raise ctx.error(
            "gpulet.gpuReplicas",
            "needs sharing.timeSlicing or sharing.mps to say which resource is shared",
        )
    if sharing.strategy == "mps":
        for i, entry in enumerate(gpulet.gpu_replicas):
            if entry.replicas > MAX_MPS_REPLICAS:
                raise ctx.error(
                    f"gpulet.gpuReplicas[{i}].replicas",
                    f"{entry.replicas} is above the limit of {MAX_MPS_REPLICAS} with sharing.mps "
                    f"({_MPS_LIMIT})",
                )

    if health_env is not None:
        gpulet = replace(gpulet, health=_merge_health(gpulet.health, *health_env))

    return Config(
        version=VERSION,
        flags=flags,
        resources=resources,
        sharing=sharing,
        imex=imex,
        gpulet=gpulet,
        source=file,
        warnings=tuple(ctx.warnings),
        ignored=tuple(ctx.ignored),
    )


def _merge_health(
    h: HealthPolicy,
    disable_all: bool,
    ignore: tuple[int, ...],
    critical: tuple[int, ...] | Literal["all"],
) -> HealthPolicy:
    """Add what NVIDIA's health variables say: their XIDs are added to the file's lists, and a
    critical XID beats an ignored one (as DP_ENABLE_HEALTHCHECKS beats DP_DISABLE_HEALTHCHECKS)."""
    if h.critical_xids == "all" or critical == "all":
        merged_critical: tuple[int, ...] | Literal["all"] = "all"
        merged_ignored: tuple[int, ...] = ()
    else:
        merged_critical = tuple(sorted(set(h.critical_xids) | set(critical)))
        merged_ignored = tuple(sorted((set(h.ignored_xids) | set(ignore)) - set(merged_critical)))
    return replace(
        h,
        disabled=h.disabled or disable_all,
        ignored_xids=merged_ignored,
        critical_xids=merged_critical,
    )
