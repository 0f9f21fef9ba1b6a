"""Where settings come from, and which wins: command-line flags, then environment variables,
then the config file, then defaults (NVIDIA's order). Flag and variable names are NVIDIA's
where NVIDIA has the setting.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from gpulet.config._duration import parse_go_duration
from gpulet.config._errors import ConfigError, show
from gpulet.config._model import MAX_CONFIG_BYTES, MAX_NESTING, MAX_YAML_NODES, Config
from gpulet.config._parse import build

__all__ = ["SETTINGS", "Setting", "load", "parse"]

log = logging.getLogger("gpulet.config")

Kind = Literal["str", "bool", "list", "intlist", "duration", "int"]


@dataclass(frozen=True)
class Setting:
    """A config key that a flag and environment variables can also set.

    ``flags`` are long option names without ``--`` (the first is the canonical one); of
    ``envs``, the first one set wins (as with NVIDIA's CLI library).
    """

    path: tuple[str, ...]
    flags: tuple[str, ...]
    envs: tuple[str, ...]
    kind: Kind

    @property
    def key(self) -> str:
        return ".".join(self.path)


def _s(path: str, flags: str, envs: str, kind: Kind) -> Setting:
    return Setting(tuple(path.split(".")), tuple(flags.split()), tuple(envs.split()), kind)


#: Every setting a flag or environment variable can set.
SETTINGS: tuple[Setting, ...] = (
    _s("flags.migStrategy", "mig-strategy", "MIG_STRATEGY GFD_MIG_STRATEGY", "str"),
    _s(
        "flags.failOnInitError",
        "fail-on-init-error",
        "FAIL_ON_INIT_ERROR GFD_FAIL_ON_INIT_ERROR",
        "bool",
    ),
    _s("flags.mpsRoot", "mps-root", "MPS_ROOT", "str"),
    _s("flags.nvidiaDriverRoot", "driver-root nvidia-driver-root", "NVIDIA_DRIVER_ROOT", "str"),
    _s("flags.nvidiaDevRoot", "dev-root nvidia-dev-root", "NVIDIA_DEV_ROOT", "str"),
    _s("flags.gdrcopyEnabled", "gdrcopy-enabled", "GDRCOPY_ENABLED", "bool"),
    _s("flags.gdsEnabled", "gds-enabled", "GDS_ENABLED", "bool"),
    _s("flags.mofedEnabled", "mofed-enabled", "MOFED_ENABLED", "bool"),
    _s(
        "flags.useNodeFeatureAPI",
        "use-node-feature-api",
        "GFD_USE_NODE_FEATURE_API USE_NODE_FEATURE_API",
        "bool",
    ),
    _s(
        "flags.deviceDiscoveryStrategy",
        "device-discovery-strategy",
        "DEVICE_DISCOVERY_STRATEGY",
        "str",
    ),
    _s("flags.plugin.passDeviceSpecs", "pass-device-specs", "PASS_DEVICE_SPECS", "bool"),
    _s("flags.plugin.deviceListStrategy", "device-list-strategy", "DEVICE_LIST_STRATEGY", "list"),
    _s("flags.plugin.deviceIDStrategy", "device-id-strategy", "DEVICE_ID_STRATEGY", "str"),
    _s(
        "flags.plugin.cdiAnnotationPrefix",
        "cdi-annotation-prefix",
        "CDI_ANNOTATION_PREFIX",
        "str",
    ),
    _s(
        "flags.plugin.nvidiaCTKPath",
        "nvidia-cdi-hook-path nvidia-ctk-path",
        "NVIDIA_CDI_HOOK_PATH NVIDIA_CTK_PATH",
        "str",
    ),
    _s(
        "flags.plugin.containerDriverRoot",
        "driver-root-ctr-path container-driver-root",
        "DRIVER_ROOT_CTR_PATH CONTAINER_DRIVER_ROOT",
        "str",
    ),
    _s("flags.plugin.kubeletSocket", "kubelet-socket", "KUBELET_SOCKET", "str"),
    _s("flags.plugin.cdiFeatureFlags", "cdi-feature-flags", "CDI_FEATURE_FLAGS", "list"),
    _s(
        "flags.plugin.sharedDevicesAllocationPolicy",
        "shared-devices-allocation-policy",
        "SHARED_DEVICES_ALLOCATION_POLICY",
        "str",
    ),
    _s("flags.gfd.oneshot", "oneshot", "GFD_ONESHOT", "bool"),
    _s("flags.gfd.noTimestamp", "no-timestamp", "GFD_NO_TIMESTAMP", "bool"),
    _s("flags.gfd.sleepInterval", "sleep-interval", "GFD_SLEEP_INTERVAL", "duration"),
    _s("flags.gfd.outputFile", "output-file", "GFD_OUTPUT_FILE", "str"),
    _s("flags.gfd.machineTypeFile", "machine-type-file", "GFD_MACHINE_TYPE_FILE", "str"),
    _s("imex.channelIDs", "imex-channel-ids", "IMEX_CHANNEL_IDS", "intlist"),
    _s("imex.required", "imex-required", "IMEX_REQUIRED", "bool"),
    _s("gpulet.kubeletRoot", "kubelet-root", "GPULET_KUBELET_ROOT", "str"),
    _s("gpulet.nodeName", "node-name", "NODE_NAME", "str"),
    _s("gpulet.metricsPort", "metrics-port", "GPULET_METRICS_PORT", "int"),
)
CONFIG_FILE_FLAG = "config-file"
CONFIG_FILE_ENVS = ("CONFIG_FILE", "GFD_CONFIG_FILE")
DISABLE_HEALTHCHECKS_ENV = "DP_DISABLE_HEALTHCHECKS"
ENABLE_HEALTHCHECKS_ENV = "DP_ENABLE_HEALTHCHECKS"

_BY_FLAG = {name: s for s in SETTINGS for name in s.flags}
# Go's strconv.ParseBool, which NVIDIA's flags and variables go through.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _from_text(setting: Setting, text: str, origin: str) -> object:
    """Turn a flag's or variable's text into the value the config file would hold."""

    def bad(problem: str) -> ConfigError:
        return ConfigError(setting.key, problem, origin)

    if setting.kind == "str":
        return text
    if setting.kind == "bool":
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise bad(f"{show(text)} is not a boolean; use true or false")
    if setting.kind == "list":
        return [p.strip() for p in text.split(",") if p.strip()]
    if setting.kind == "intlist":
        out: list[int] = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                out.append(int(part, 0))
            except ValueError:
                raise bad(f"{show(part)} in {show(text)} is not a whole number") from None
        return out
    if setting.kind == "int":
        try:
            return int(text, 10)
        except ValueError:
            raise bad(f"{show(text)} is not a whole number") from None
    # duration: checked here so that the message names the flag or variable
    try:
        parse_go_duration(text)
    except ValueError as e:
        raise bad(str(e)) from None
    return text


def _from_flag(setting: Setting, value: object, origin: str) -> object:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return _from_text(setting, value, origin)
    ok = {
        "str": False,
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "list": isinstance(value, (list, tuple)),
        "intlist": isinstance(value, (list, tuple)),
        "duration": False,
    }[setting.kind]
    if not ok:
        raise ConfigError(
            setting.key, f"a {setting.kind} value is expected, got {show(value)}", origin
        )
    return list(value) if isinstance(value, tuple) else value


def _put(doc: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    node = doc
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _find_case_insensitive(doc: dict[str, Any], path: tuple[str, ...]) -> tuple[str, ...]:
    """The path as the file spells it (NVIDIA's keys match case-insensitively), so that an
    override replaces the file's value instead of sitting beside it."""
    out: list[str] = []
    node: object = doc
    for key in path:
        actual = key
        if isinstance(node, dict) and key not in node:
            for k in node:
                if isinstance(k, str) and k.lower() == key.lower():
                    actual = k
                    break
        out.append(actual)
        node = node.get(actual) if isinstance(node, dict) else None
    return tuple(out)


def _health_env(
    env: Mapping[str, str],
) -> tuple[bool, tuple[int, ...], tuple[int, ...] | Literal["all"]] | None:
    disable = env.get(DISABLE_HEALTHCHECKS_ENV, "").strip()
    enable = env.get(ENABLE_HEALTHCHECKS_ENV, "").strip()
    if not disable and not enable:
        return None

    def xids(name: str, text: str) -> list[int]:
        out: list[int] = []
        for part in (p.strip() for p in text.split(",")):
            if not part or part.lower() in ("all", "xids"):
                continue
            if part.isdigit() and int(part) > 0:
                out.append(int(part))
            else:
                # NVIDIA's plugin skips what it cannot read; so does gpulet, but says so.
                log.warning("%s: %r is not an XID number; skipped", name, part)
        return out

    lowered = disable.lower()
    disable_all = lowered == "all" or "xids" in lowered
    critical: tuple[int, ...] | Literal["all"]
    if enable.lower() == "all" or "all" in [p.strip().lower() for p in enable.split(",")]:
        critical = "all"
    else:
        critical = tuple(xids(ENABLE_HEALTHCHECKS_ENV, enable))
    return disable_all, tuple(xids(DISABLE_HEALTHCHECKS_ENV, disable)), critical


# libyaml when PyYAML has it (about 5x faster); the checks below do not depend on which.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """PyYAML's safe loader, whose scalars that cannot be held (an integer of thousands of
    digits, a date such as 2024-13-45) are YAML errors with a line, not a bare ValueError."""


def _guarded(tag: str, kind: str) -> None:
    construct = _Loader.yaml_constructors[tag]

    def guarded(loader: yaml.SafeLoader, node: yaml.Node) -> object:
        try:
            return construct(loader, node)
        except (ValueError, OverflowError):
            text = node.value if isinstance(node.value, str) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"{show(text)} cannot be read as {kind}", node.start_mark
            ) from None

    _Loader.add_constructor(tag, guarded)


for _tag, _kind in (("int", "an integer"), ("float", "a number"), ("timestamp", "a date")):
    _guarded(f"tag:yaml.org,2002:{_tag}", _kind)


def _check_shape(root: yaml.Node) -> str | None:
    """What is wrong with a composed YAML document's shape, or ``None``: nesting deeper than
    :data:`MAX_NESTING`, or more than :data:`MAX_YAML_NODES` nodes once aliases are expanded
    (a "billion laughs" document is a few hundred bytes that expand to billions of nodes).

    Walks each distinct node once (an alias is the node it names), without recursion."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    on_path: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            total = 1 + sum(size[id(c)] for c in children)
            if total > MAX_YAML_NODES:
                return (
                    f"it holds more than {MAX_YAML_NODES} values once its aliases (*name) "
                    "are expanded"
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            return "an alias (*name) refers to a node that contains it"
        if depth > MAX_NESTING:
            return f"lists and mappings are nested more than {MAX_NESTING} deep"
        on_path.add(key)
        stack.append((node, depth, True))
        for child in _children(node):
            if id(child) not in size:
                stack.append((child, depth + 1, False))
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _read_file(path: str) -> object:
    """The YAML document in ``path``, or ConfigError: a missing or unreadable file, one over
    :data:`MAX_CONFIG_BYTES`, not UTF-8, not YAML, or of a shape no config has."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError("", f"config file {path} cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            "",
            f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
            "a config is a few KiB at most (is this the right file?)",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            "", f"config file {path} is not UTF-8 text (line {line} has byte 0x{data[e.start]:02x})"
        ) from None
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        problem = _check_shape(root)
        if problem is not None:
            raise ConfigError("", f"config file {path} is refused: {problem}")
        return loader.construct_document(root)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError("", f"config file {path} is not valid YAML{where}: {problem}") from None
    finally:
        loader.dispose()


def parse(document: object, *, source: str | None = None) -> Config:
    """Build a :class:`Config` from an already-loaded document (a dict from YAML or JSON),
    with no flags or environment variables. Raises :class:`ConfigError`."""
    return build(copy.deepcopy(document), file=source)


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> Config:
    """Load the config: flags win over environment variables, which win over the file.

    Args:
        path: the config file; if ``None``, the ``config-file`` flag, else ``$CONFIG_FILE``
            (or ``$GFD_CONFIG_FILE``); with none of them, defaults only.
        env: the environment (default ``os.environ``). A variable set to ``""`` counts as unset.
        flags: parsed command-line options by long name without ``--`` (``"mig-strategy"``;
            ``_`` may stand for ``-``). Values are the flag's text, or a value of the right
            type (bool, int, list); ``None`` means not given.

    Raises:
        ConfigError: naming the field, and the flag, variable or file it came from.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    given: dict[str, object] = {}
    for name, flag_value in (flags or {}).items():
        canonical = name.lstrip("-").replace("_", "-")
        if canonical != CONFIG_FILE_FLAG and canonical not in _BY_FLAG:
            raise ConfigError("", f"unknown flag --{canonical}")
        if flag_value is not None:
            given[canonical] = flag_value

    file: str | None = None
    if path is not None:
        file = os.fspath(path)
    elif given.get(CONFIG_FILE_FLAG):
        file = str(given[CONFIG_FILE_FLAG])
    else:
        file = next((environ[e] for e in CONFIG_FILE_ENVS if environ.get(e)), None)

    document = _read_file(file) if file else None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError("", "a config file holds a mapping at the top", f"in {file}")
    document = copy.deepcopy(document)

    origins: dict[str, str] = {}
    for setting in SETTINGS:
        env_name = next((e for e in setting.envs if environ.get(e)), None)
        flag_name = next((f for f in setting.flags if f in given), None)
        value: object
        if flag_name is not None:
            origin = f"flag --{flag_name}"
            value = _from_flag(setting, given[flag_name], origin)
        elif env_name is not None:
            origin = f"environment variable {env_name}"
            value = _from_text(setting, environ[env_name], origin)
        else:
            continue
        _put(document, _find_case_insensitive(document, setting.path), value)
        origins[setting.key] = origin

    return build(document, file=file, origins=origins, health_env=_health_env(environ))
