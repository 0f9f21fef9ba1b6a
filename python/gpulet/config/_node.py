"""A config checked against the node it runs on: every per-GPU key must name a GPU or MIG device
the node has.

A GPU is named by its NVML index (``"3"``) or UUID (``"GPU-..."``), a MIG device by
``"<gpu>:<mig>"`` or its UUID (``"MIG-..."``). A config is read before the node is known, so
this check runs when the two meet (the device plugin's inventory calls it, and so can a re-read
of the config before it replaces the one in use).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from gpulet._core import Gpu, Node
from gpulet.config._errors import ConfigError, show
from gpulet.config._model import Config, DeviceSelector

__all__ = ["describe_indices", "missing_device", "node_error", "validate_for_node"]

_MIG_INDEX = re.compile(r"(\d+):(\d+)")
#: Most devices a message lists before it says how many more there are.
_LISTED = 8


def describe_indices(indices: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 5]`` as ``"0-3, 5"``."""
    out: list[str] = []
    run: list[int] = []
    for i in sorted(set(indices)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(out)


def _listing(items: Sequence[str]) -> str:
    if len(items) <= _LISTED:
        return ", ".join(items)
    return ", ".join(items[:_LISTED]) + f" and {len(items) - _LISTED} more"


def _gpus_text(node: Node) -> str:
    if not node.gpus:
        return "it has no GPUs"
    return f"GPUs {describe_indices(g.index for g in node.gpus)}"


def _case_hint(ref: str, known: Iterable[str]) -> str:
    for uuid in known:
        if uuid.lower() == ref.lower():
            return f"; write it as the node reports it: {uuid}"
    return ""


def missing_device(node: Node, ref: str, *, gpus_only: bool = False) -> str | None:
    """Why ``ref`` names nothing on ``node`` (a sentence for a ConfigError), or ``None`` when it
    names a GPU (or, unless ``gpus_only``, a MIG device) the node has."""
    by_index = {g.index: g for g in node.gpus}
    if ref.isdigit():
        if int(ref) in by_index:
            return None
        return f"GPU {int(ref)} does not exist on this node ({_gpus_text(node)})"
    if ref.startswith("GPU-"):
        uuids = [g.uuid for g in node.gpus]
        if ref in uuids:
            return None
        known = [f"{g.index} {g.uuid}" for g in node.gpus]
        where = f"its GPUs: {_listing(known)}" if known else "it has no GPUs"
        return f"{ref} does not exist on this node ({where}){_case_hint(ref, uuids)}"
    if gpus_only:
        return f"{show(ref)} is not a whole GPU; name a GPU by index or GPU- UUID"
    m = _MIG_INDEX.fullmatch(ref)
    if m is not None:
        gpu_index, mig_index = int(m.group(1)), int(m.group(2))
        gpu = by_index.get(gpu_index)
        if gpu is None:
            return f"GPU {gpu_index} does not exist on this node ({_gpus_text(node)})"
        if any(d.index == mig_index for d in gpu.mig_devices):
            return None
        return f"MIG device {ref} does not exist on this node ({_mig_text(gpu)})"
    if ref.startswith("MIG-"):
        migs = [(g, d) for g in node.gpus for d in g.mig_devices]
        uuids = [d.uuid for _, d in migs]
        if ref in uuids:
            return None
        known = [f"{g.index}:{d.index} {d.uuid}" for g, d in migs]
        where = f"its MIG devices: {_listing(known)}" if known else "it has no MIG devices"
        return f"{ref} does not exist on this node ({where}){_case_hint(ref, uuids)}"
    return f"{show(ref)} is not a GPU or MIG device reference"


def _mig_text(gpu: Gpu) -> str:
    if not gpu.mig_devices:
        state = "enabled" if gpu.mig_enabled else "disabled"
        return f"GPU {gpu.index} has no MIG devices; MIG is {state} on it"
    refs = ", ".join(f"{gpu.index}:{d.index}" for d in gpu.mig_devices)
    return f"GPU {gpu.index} has MIG devices {refs}"


def node_error(config: Config, path: str, problem: str) -> ConfigError:
    """A ConfigError for ``path``, saying which file the config came from."""
    return ConfigError(path, problem, f"in {config.source}" if config.source else None)


def _check_refs(
    config: Config, node: Node, selector: DeviceSelector, path: str, *, gpus_only: bool = False
) -> None:
    for j, ref in enumerate(selector.refs):
        problem = missing_device(node, ref, gpus_only=gpus_only)
        if problem is not None:
            raise node_error(config, f"{path}[{j}]", problem)


def validate_for_node(config: Config, node: Node) -> None:
    """Refuse a config whose per-GPU keys name a GPU or MIG device ``node`` does not have.

    Checks ``gpulet.gpuReplicas[].devices`` and, with DRA enabled, ``gpulet.dra.devices``. The
    device lists of ``sharing`` entries are per resource: the inventory checks them against the
    devices of their resource (:func:`gpulet.deviceplugin.resources.build_resources`).

    Raises:
        ConfigError: naming the field (``gpulet.gpuReplicas[1].devices[0]``), the reference and
            what the node has.
    """
    for i, entry in enumerate(config.gpulet.gpu_replicas):
        _check_refs(config, node, entry.devices, f"gpulet.gpuReplicas[{i}].devices")
    dra = config.gpulet.dra
    if dra.enabled:
        _check_refs(config, node, dra.devices, "gpulet.dra.devices", gpus_only=True)
