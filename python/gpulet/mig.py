"""MIG geometry, planning and fragmentation from the GPU catalog, and NVIDIA mig-parted configs.

A MIG-capable GPU has ``C`` compute slices and ``M`` memory slices (7 x 8 on A100, H100, H200,
B200 and GB200; 4 x 4 on A30). A profile takes ``c`` compute slices and ``m`` contiguous memory
slices starting at one of its placements. A :class:`Layout` is a set of :class:`Placement`\\ s
(profile name, start memory slice)::

    from gpulet import mig
    mig.profiles("H100-80GB")[0].resource_name          # 'nvidia.com/mig-1g.10gb'
    layout = mig.plan("H100-80GB", ["3g.40gb", "4g.40gb"])
    layout                                              # Layout([("4g.40gb", 0), ("3g.40gb", 4)])
    mig.validate("H100-80GB", [("3g.40gb", 0), ("2g.20gb", 2)])
    # MigLayoutError: 3g.40gb@0 overlaps 2g.20gb@2 on memory slices 2-3
    mig.plan_node("H100-80GB", ["3g.40gb"] * 3, gpus=2)  # one layout per GPU

``model`` is a catalog key ("H100-80GB"), an alias ("A100-40GB"), NVML's product name ("NVIDIA
H100 80GB HBM3") or a PCI device id ("0x2330"). Profiles are NVML's names ("1g.10gb+me"); the
resource spellings ("1g.10gb.me", "nvidia.com/mig-1g.10gb.me") are accepted too.

Fragmentation
    For a valid layout with ``F`` free memory slices and ``K`` free compute slices, let ``Fmax`` and
    ``Kmax`` be the most memory and compute slices that any set of further instances can still
    take (placements, overlaps, compute and instance limits respected). The layout strands
    ``Sm = F - Fmax`` memory slices and ``Sc = K - Kmax`` compute slices, and
    ``fragmentation = (Sm / M + Sc / C) / 2``, in [0, 1]; 0.0 means nothing is stranded. Seven
    single-slice 1g instances strand memory slice 7 (no 1g placement starts there): 1/16; a lone
    3g at slice 0 strands a compute slice (slices 4-7 feed at most 3 more): 1/14.

Planning
    :func:`plan` is exact on one GPU: it finds a placement whenever one exists and returns the one
    that strands the least (lowest fragmentation); ties go to big profiles first at their lowest
    starts. :func:`plan_node` assigns requests to the GPUs of a node with an exact search over
    the GPUs (memoised on the requests still unplaced, with branch and bound), so it fails only
    when no assignment exists, and returns the one with the least total stranded capacity.

mig-parted
    :func:`parse_mig_parted` / :func:`read_mig_parted` read NVIDIA mig-parted v1 config files,
    :func:`format_mig_parted` / :func:`write_mig_parted` write them, :func:`validate_mig_parted`
    checks each entry against the catalog, and :func:`mig_parted_plans` turns a named config into
    per-GPU layouts. Problems raise :class:`MigPartedError` naming the config, entry and field.

Errors are ``gpulet.errors`` exceptions: ``UnknownModelError``, ``MigLayoutError`` (an unknown
profile, a clash in a layout), ``InfeasibleError`` (requests that do not fit, with what is
left), ``InvalidArgumentError`` (a model without MIG, malformed arguments).
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

import yaml

from gpulet import _core
from gpulet._core import MigLayout as Layout
from gpulet._core import MigPlacement as Placement
from gpulet._core import MigProfile as Profile
from gpulet.errors import (
    GpuletError,
    InfeasibleError,
    InvalidArgumentError,
    MigLayoutError,
    UnknownModelError,
)
from gpulet.files import write_atomic

__all__ = [
    "Layout",
    "LayoutLike",
    "MigPartedConfig",
    "MigPartedEntry",
    "MigPartedError",
    "Placement",
    "PlacementLike",
    "Profile",
    "format_mig_parted",
    "fragmentation",
    "layouts",
    "mig_parted_config",
    "mig_parted_plans",
    "parse_mig_parted",
    "plan",
    "plan_node",
    "profiles",
    "read_mig_parted",
    "stranded",
    "validate",
    "validate_mig_parted",
    "write_mig_parted",
]

PlacementLike: TypeAlias = Placement | tuple[str, int] | str
"""A placement: a :class:`Placement`, a ``(profile, start)`` pair or ``"profile@start"``."""

LayoutLike: TypeAlias = Layout | Iterable[PlacementLike]
"""A layout: a :class:`Layout` or an iterable of placements."""


def profiles(model: str) -> list[Profile]:
    """The MIG profiles of ``model`` in the catalog (NVML's order).

    Raises ``UnknownModelError`` for a model the catalog does not know, and
    ``InvalidArgumentError`` for a model without MIG.
    """
    return _core.mig_model_profiles(model)


def validate(model: str, layout: LayoutLike) -> None:
    """Check ``layout`` on ``model``; ``MigLayoutError`` names the first clash.

    Checks, in order: every profile exists, every start is one of its placements, no profile
    over its instance limit, compute slices within the GPU's, and no two instances share a
    memory slice.
    """
    _core.mig_validate(model, _layout_arg(layout))


def layouts(
    model: str, profiles: Iterable[str] | None = None, maximal: bool = False
) -> list[Layout]:
    """Every valid layout of ``model`` built from ``profiles`` (default: all of the model's).

    Placement-distinct, the empty layout included (first). With ``maximal``, only the layouts to
    which no further instance of those profiles can be added. On an A100-40GB with its five base
    profiles there are 298 layouts (297 without the empty one) and 19 maximal ones.
    """
    return _core.mig_layouts(model, None if profiles is None else _names(profiles), maximal)


def plan(model: str, requests: Iterable[str], existing: LayoutLike | None = None) -> Layout:
    """Place ``requests`` (profile names, repeats allowed) on one GPU beside ``existing``.

    Returns the whole layout (existing instances included, unmoved). Finds a placement whenever
    one exists and, among them, the least fragmented one; ``InfeasibleError`` says what was left
    and how many of the requests could fit at once.
    """
    return _core.mig_plan(
        model, _names(requests), None if existing is None else _layout_arg(existing)
    )


def plan_node(
    model: str | Sequence[str],
    requests: Iterable[str],
    existing: Sequence[LayoutLike | None] | None = None,
    *,
    gpus: int | None = None,
) -> list[Layout]:
    """Assign ``requests`` to the GPUs of a node and place them; one layout per GPU.

    ``model`` is one model for every GPU (then give ``gpus=N`` or ``existing``) or one model per
    GPU. ``existing`` holds each GPU's current layout (``None`` for none); existing instances are
    kept where they are. Exact: raises ``InfeasibleError`` only when no assignment exists, and
    otherwise returns one with the least total stranded capacity. GPUs are decided most
    constrained first (then by index); on ties each takes its cheapest addition, the one with
    the most compute slices among equally cheap ones.
    """
    if isinstance(model, str):
        count = gpus if gpus is not None else (len(existing) if existing is not None else None)
        if count is None:
            raise _invalid(
                "plan_node needs the number of GPUs: give gpus=N, existing layouts, "
                "or one model per GPU"
            )
        models = [model] * count
    else:
        models = list(model)
        if gpus is not None and gpus != len(models):
            raise _invalid(f"gpus={gpus} but {len(models)} models were given")
    layouts_ = None if existing is None else [_optional_layout(e) for e in existing]
    return _core.mig_plan_node(models, _names(requests), layouts_)


def fragmentation(model: str, layout: LayoutLike) -> float:
    """Stranded capacity of a valid ``layout``, in [0, 1] (0.0: nothing stranded).

    ``(Sm / M + Sc / C) / 2`` where ``Sm`` free memory slices and ``Sc`` free compute slices can
    be used by no set of further instances, and ``M`` x ``C`` is the GPU's slice grid (see the
    module docs).
    """
    return _core.mig_fragmentation(model, _layout_arg(layout))


def stranded(model: str, layout: LayoutLike) -> tuple[int, int]:
    """(memory slices, compute slices) that ``layout`` strands on ``model``."""
    return _core.mig_stranded(model, _layout_arg(layout))


def _names(names: Iterable[str]) -> list[str]:
    if isinstance(names, str):
        raise TypeError(
            f"expected a list of profile names, not the string {names!r}; e.g. [{names!r}]"
        )
    return list(names)


def _layout_arg(layout: LayoutLike) -> Layout:
    return layout if isinstance(layout, Layout) else Layout(layout)


def _optional_layout(layout: LayoutLike | None) -> Layout | None:
    return None if layout is None else _layout_arg(layout)


def _invalid(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message)


# --------------------------------------------------------------------------------------------
# NVIDIA mig-parted config files (version v1)
# --------------------------------------------------------------------------------------------

_VERSION = "v1"
_DEVICE_ID = re.compile(r"^0x[0-9a-fA-F]{8}$")
_ENTRY_KEYS = ("device-filter", "devices", "mig-enabled", "mig-devices")


class MigPartedError(GpuletError, ValueError):
    """A mig-parted config is malformed, or asks for what the GPU cannot hold.

    The message starts with the offending field, e.g.
    ``mig-configs.all-balanced[0].mig-devices["3g.40gb"]: ...``.

    Attributes:
        path: the field (``""`` for the file as a whole).
        problem: what is wrong and what would be right.
        config: the config name, when the problem is inside one.
        entry: the entry's index in that config, when the problem is inside one.
    """

    path: str
    problem: str
    config: str | None
    entry: int | None

    def __init__(
        self, path: str, problem: str, config: str | None = None, entry: int | None = None
    ) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem
        self.config = config
        self.entry = entry


@dataclass(frozen=True)
class MigPartedEntry:
    """One entry of a mig-parted config: which GPUs, and what MIG layout they get.

    Attributes:
        devices: ``"all"`` or GPU indices.
        mig_enabled: whether MIG mode is on.
        mig_devices: instances per profile name (empty when MIG is off).
        device_filter: PCI device ids (``"0xDDDDVVVV"``) the entry is limited to: one string or
            a tuple of them as written in the file, or ``None`` for any GPU.
    """

    devices: Literal["all"] | tuple[int, ...]
    mig_enabled: bool
    mig_devices: Mapping[str, int] = field(default_factory=dict)
    device_filter: str | tuple[str, ...] | None = None

    def filter_ids(self) -> tuple[int, ...]:
        """The device filter as integers (empty: any GPU)."""
        f = self.device_filter
        items = () if f is None else (f,) if isinstance(f, str) else f
        return tuple(int(x, 16) for x in items)

    def matches(self, index: int, pci_device_id: int) -> bool:
        """Whether the entry applies to GPU ``index`` with PCI id ``pci_device_id``."""
        ids = self.filter_ids()
        if ids and pci_device_id not in ids:
            return False
        return self.devices == "all" or index in self.devices

    def requests(self) -> list[str]:
        """``mig_devices`` as a list of profile names, repeated by count."""
        return [name for name, count in self.mig_devices.items() for _ in range(count)]


@dataclass(frozen=True)
class MigPartedConfig:
    """A mig-parted config file: named configs, each a list of entries."""

    configs: Mapping[str, tuple[MigPartedEntry, ...]]
    version: str = _VERSION


def _entry_path(config: str, entry: int, key: str | None = None) -> str:
    base = f"mig-configs.{config}[{entry}]"
    return f"{base}.{key}" if key else base


def _parse_entry(raw: object, config: str, i: int) -> MigPartedEntry:
    def err(key: str | None, problem: str) -> MigPartedError:
        return MigPartedError(_entry_path(config, i, key), problem, config, i)

    if not isinstance(raw, dict):
        raise err(None, f"an entry is a mapping with devices and mig-enabled, got {raw!r}")
    for key in raw:
        if key not in _ENTRY_KEYS:
            raise err(str(key), f"unexpected field; an entry has {', '.join(_ENTRY_KEYS)}")
    for key in ("devices", "mig-enabled"):
        if key not in raw:
            raise err(key, "missing required field")

    raw_devices = raw["devices"]
    devices: Literal["all"] | tuple[int, ...]
    if raw_devices == "all":
        devices = "all"
    elif isinstance(raw_devices, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw_devices
    ):
        devices = tuple(raw_devices)
    else:
        raise err("devices", f'must be "all" or a list of GPU indices, got {raw_devices!r}')

    enabled = raw["mig-enabled"]
    if not isinstance(enabled, bool):
        raise err("mig-enabled", f"must be true or false, got {enabled!r}")

    device_filter: str | tuple[str, ...] | None = None
    if "device-filter" in raw:
        f = raw["device-filter"]
        items = [f] if isinstance(f, str) else f
        if not isinstance(items, list) or not items:
            raise err(
                "device-filter", f'must be a PCI id "0xDDDDVVVV" or a list of them, got {f!r}'
            )
        for x in items:
            if not isinstance(x, str) or not _DEVICE_ID.match(x):
                raise err(
                    "device-filter",
                    f'{x!r} is not a PCI id of the form "0xDDDDVVVV" (device, vendor), '
                    'e.g. "0x20B010DE"',
                )
        device_filter = f if isinstance(f, str) else tuple(items)

    mig_devices: dict[str, int] = {}
    if "mig-devices" in raw and raw["mig-devices"] is not None:
        md = raw["mig-devices"]
        if not isinstance(md, dict):
            raise err("mig-devices", f"must map profile names to counts, got {md!r}")
        for name, count in md.items():
            key = f'mig-devices["{name}"]'
            if not isinstance(name, str) or not name:
                raise err("mig-devices", f"profile names are strings, got {name!r}")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise err(key, f"count must be a whole number, 0 or more, got {count!r}")
            mig_devices[name] = count
    if enabled and "mig-devices" not in raw:
        raise err("mig-devices", "missing required field when mig-enabled is true (use {})")
    if not enabled and any(mig_devices.values()):
        raise err("mig-devices", "MIG devices given while mig-enabled is false")
    return MigPartedEntry(devices, enabled, mig_devices, device_filter)


def parse_mig_parted(text: str, source: str = "<string>") -> MigPartedConfig:
    """Parse a mig-parted v1 config (YAML or JSON) with mig-parted's own rules.

    ``version: v1`` is required; ``mig-configs`` maps names to non-empty lists of entries; an
    entry has ``devices`` (``all`` or indices) and ``mig-enabled``, optionally ``device-filter``
    and ``mig-devices`` (required when MIG is on, empty when off). Unknown fields are errors.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MigPartedError("", f"{source} is not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MigPartedError("", f"{source}: a mig-parted config is a mapping, got {raw!r}")
    for key in raw:
        if key not in ("version", "mig-configs"):
            raise MigPartedError(str(key), "unexpected field; the file has version and mig-configs")
    version = raw.get("version")
    if version != _VERSION:
        raise MigPartedError("version", f"must be {_VERSION!r}, got {version!r}")
    configs_raw = raw.get("mig-configs")
    if not isinstance(configs_raw, dict) or not configs_raw:
        raise MigPartedError(
            "mig-configs", "must map config names to lists of entries (one at least)"
        )
    configs: dict[str, tuple[MigPartedEntry, ...]] = {}
    for name, entries in configs_raw.items():
        if not isinstance(entries, list) or not entries:
            raise MigPartedError(
                f"mig-configs.{name}", "must be a list of entries (one at least)", str(name)
            )
        configs[str(name)] = tuple(_parse_entry(e, str(name), i) for i, e in enumerate(entries))
    return MigPartedConfig(configs, _VERSION)


def read_mig_parted(path: str | os.PathLike[str]) -> MigPartedConfig:
    """Read and parse a mig-parted config file (see :func:`parse_mig_parted`)."""
    p = pathlib.Path(path)
    return parse_mig_parted(p.read_text(encoding="utf-8"), str(p))


def _entry_dict(e: MigPartedEntry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if e.device_filter is not None:
        out["device-filter"] = (
            e.device_filter if isinstance(e.device_filter, str) else list(e.device_filter)
        )
    out["devices"] = e.devices if e.devices == "all" else list(e.devices)
    out["mig-enabled"] = e.mig_enabled
    if e.mig_enabled:
        out["mig-devices"] = dict(e.mig_devices)
    return out


def format_mig_parted(config: MigPartedConfig) -> str:
    """The config as mig-parted YAML (entries' keys in mig-parted's order)."""
    doc = {
        "version": config.version,
        "mig-configs": {
            name: [_entry_dict(e) for e in entries] for name, entries in config.configs.items()
        },
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


def write_mig_parted(config: MigPartedConfig, path: str | os.PathLike[str]) -> None:
    """Write the config to ``path`` atomically and durably (:func:`gpulet.files.write_atomic`:
    temp file, fsync, rename, directory fsync; world-readable, missing directories created)."""
    write_atomic(path, format_mig_parted(config).encode("utf-8"))


class _GpuLike(Protocol):
    """A discovered GPU (``gpulet.Gpu``): what mig-parted matches entries on."""

    @property
    def pci_device_id(self) -> int: ...
    @property
    def name(self) -> str: ...


def _catalog(model: str) -> tuple[str, int, bool]:
    return _core.mig_catalog_model(model)


def _check_entry(
    config: str, i: int, entry: MigPartedEntry, models: Sequence[str]
) -> list[tuple[str, Exception]]:
    """Plan the entry on each model; the failures, as (model, error)."""
    failures: list[tuple[str, Exception]] = []
    for m in models:
        known = {p.name for p in profiles(m)}
        for name in entry.mig_devices:
            if entry.mig_devices[name] and name not in known:
                names = ", ".join(p.name for p in profiles(m))
                raise MigPartedError(
                    _entry_path(config, i, f'mig-devices["{name}"]'),
                    f"{m} has no MIG profile {name!r}; its profiles are {names}",
                    config,
                    i,
                )
        try:
            plan(m, entry.requests())
        except (InfeasibleError, MigLayoutError) as e:
            failures.append((m, e))
    return failures


def validate_mig_parted(config: MigPartedConfig, model: str | None = None) -> None:
    """Check every MIG-enabled entry against the catalog.

    With ``model``, each entry that applies to it (its device filter allows it) must name only
    that model's profiles and fit one GPU of it. Without, an entry with a device filter is
    checked against every catalog model the filter names (PCI ids the catalog does not know are
    left unchecked), and an entry without one must fit at least one catalog model that has all
    its profiles. The error names the config, the entry and the field.
    """
    target = None if model is None else _catalog(model)
    if target is not None and not target[2]:
        raise _invalid(f"{target[0]} does not support MIG; nothing to check a MIG config against")
    all_models = _core.mig_models()
    ids = {_catalog(m)[1]: m for m in all_models}
    for name, entries in config.configs.items():
        for i, entry in enumerate(entries):
            if not entry.mig_enabled or not any(entry.mig_devices.values()):
                continue
            filt = entry.filter_ids()
            if target is not None:
                if filt and target[1] not in filt:
                    continue
                models = [target[0]]
            elif filt:
                models = [ids[f] for f in filt if f in ids]
            else:
                wanted = {n for n, c in entry.mig_devices.items() if c}
                models = [m for m in all_models if wanted <= {p.name for p in profiles(m)}]
                if not models:
                    raise MigPartedError(
                        _entry_path(name, i, "mig-devices"),
                        f"no MIG model in the catalog has all of {', '.join(sorted(wanted))}; "
                        f"models: {', '.join(all_models)}",
                        name,
                        i,
                    )
                failures = _check_entry(name, i, entry, models)
                if len(failures) == len(models):
                    reasons = "; ".join(f"{m}: {e}" for m, e in failures)
                    raise MigPartedError(
                        _entry_path(name, i, "mig-devices"),
                        f"fits no GPU model that has these profiles ({reasons})",
                        name,
                        i,
                    ) from failures[0][1]
                continue
            for m, e in _check_entry(name, i, entry, models):
                raise MigPartedError(
                    _entry_path(name, i, "mig-devices"), f"does not fit one {m}: {e}", name, i
                ) from e


def mig_parted_plans(
    config: MigPartedConfig, name: str, gpus: Sequence[str | _GpuLike]
) -> dict[int, Layout | None]:
    """Per-GPU layouts that config ``name`` asks for on a node with ``gpus``.

    ``gpus`` lists the node's GPUs in NVML index order, as models (catalog key, product name or
    PCI id) or discovered ``gpulet.Gpu`` objects. Entries apply in order, as mig-parted walks
    them, so a later entry that matches a GPU overrides an earlier one. The result has a key for
    each GPU some entry matches: its planned layout, or ``None`` where MIG is to be disabled.
    """
    entries = config.configs.get(name)
    if entries is None:
        known = ", ".join(config.configs)
        raise MigPartedError(f"mig-configs.{name}", f"no such config; the file has {known}", name)
    resolved: list[tuple[str, int, bool | None]] = []
    for g in gpus:
        if isinstance(g, str):
            resolved.append(_catalog(g))
            continue
        try:
            key, _, capable = _catalog(f"0x{g.pci_device_id:08X}")
            resolved.append((key, g.pci_device_id, capable))
        except UnknownModelError:
            # Not in the catalog: fine for entries that turn MIG off, unplannable otherwise.
            resolved.append((f"{g.name} (0x{g.pci_device_id:08X})", g.pci_device_id, None))
    chosen: dict[int, int] = {}
    for i, entry in enumerate(entries):
        for index, (_, pci_id, _) in enumerate(resolved):
            if entry.matches(index, pci_id):
                chosen[index] = i
    out: dict[int, Layout | None] = {}
    for index in sorted(chosen):
        i = chosen[index]
        entry = entries[i]
        key, _, mig_capable = resolved[index]
        if not entry.mig_enabled:
            out[index] = None
            continue
        if not mig_capable:
            why = "does not support MIG" if mig_capable is False else "is not in gpulet's catalog"
            raise MigPartedError(
                _entry_path(name, i, "mig-enabled"), f"GPU {index} ({key}) {why}", name, i
            )
        try:
            out[index] = plan(key, entry.requests())
        except (InfeasibleError, MigLayoutError) as e:
            raise MigPartedError(
                _entry_path(name, i, "mig-devices"), f"GPU {index} ({key}): {e}", name, i
            ) from e
    return out


def mig_parted_config(
    name: str, layouts: Sequence[Layout | None], models: Sequence[str] | None = None
) -> MigPartedConfig:
    """A mig-parted config named ``name`` that asks for ``layouts`` (one per GPU, ``None``: MIG
    off).

    GPUs with the same instance counts share an entry (``devices: all`` when every GPU does).
    With ``models`` (one per GPU), entries are also split by model and carry its PCI id as
    ``device-filter``. mig-parted places instances itself, so the config keeps counts, not
    placements: planning it back gives the same multisets.
    """
    if models is not None and len(models) != len(layouts):
        raise _invalid(f"{len(models)} models for {len(layouts)} layouts; give one per GPU")
    groups: dict[tuple[str | None, bool, tuple[tuple[str, int], ...]], list[int]] = {}
    for index, layout in enumerate(layouts):
        filt = None if models is None else f"0x{_catalog(models[index])[1]:08X}"
        counts = () if layout is None else tuple(sorted(layout.counts().items()))
        groups.setdefault((filt, layout is not None, counts), []).append(index)
    entries: list[MigPartedEntry] = []
    for (filt, enabled, counts), indices in groups.items():
        devices: Literal["all"] | tuple[int, ...] = "all" if len(groups) == 1 else tuple(indices)
        entries.append(MigPartedEntry(devices, enabled, dict(counts), filt))
    return MigPartedConfig({name: tuple(entries)}, _VERSION)
