"""The ``gpulet`` command line (also ``python -m gpulet``).

Subcommands so far:

- ``gpulet discover [--json] [--library PATH]``: what NVML reports about this node.
- ``gpulet simulate --spec NAME|FILE [--print] [--json]``: the same for a simulated node.

Exit codes: 0 success, 1 an NVML call failed, 2 bad input, no NVML library, or (simulate) the
fake NVML not built.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from gpulet import sim
from gpulet._core import Gpu, MigProfileInfo, Node, discover, mig_profiles
from gpulet.errors import NvmlError, NvmlLibraryNotFound, SpecError

__all__ = ["main", "render_json", "render_text"]

# `nvidia-smi topo -m` abbreviations of the PCIe levels.
_SMI_LEVEL = {
    "board": "PIX",
    "single-switch": "PIX",
    "multi-switch": "PXB",
    "host-bridge": "PHB",
    "same-cpu": "NODE",
    "cross-cpu": "SYS",
}

_LEGEND = """\
Legend:
  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes
  NODE = Connection traversing PCIe and the interconnect between host bridges of one NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe host bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe host bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks (via NVSwitches if the node has them)"""


def _cpulist(cpus: Sequence[int]) -> str:
    """CPU ids (ascending) in Linux cpulist syntax, e.g. "0-55,112-167"."""
    ranges: list[str] = []
    i = 0
    while i < len(cpus):
        start = end = cpus[i]
        while i + 1 < len(cpus) and cpus[i + 1] == end + 1:
            end = cpus[i + 1]
            i += 1
        ranges.append(str(start) if start == end else f"{start}-{end}")
        i += 1
    return ",".join(ranges)


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _mig_mode(g: Gpu) -> str:
    if not g.mig_capable:
        return "N/A"
    mode = "Enabled" if g.mig_enabled else "Disabled"
    if g.mig_pending != g.mig_enabled:
        mode += " (pending " + ("Enabled" if g.mig_pending else "Disabled") + ")"
    return mode


def _link(node: Node, a: int, b: int) -> str:
    """One cell of the topology matrix."""
    if a == b:
        return "X"
    t = node.topology
    direct = t.nvlinks(a, b)
    if direct:
        return f"NV{direct}"
    ga, gb = node.gpus[a], node.gpus[b]
    if ga.nvswitch_links and gb.nvswitch_links:
        return f"NV{min(ga.nvswitch_links, gb.nvswitch_links)}"
    return _SMI_LEVEL[t.pcie(a, b)]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def mig_capability(node: Node, library_path: str | None = None) -> dict[str, list[MigProfileInfo]]:
    """The MIG profiles of each distinct MIG-capable model on the node, as NVML reports them
    (queried on the first GPU of each model; read-only)."""
    out: dict[str, list[MigProfileInfo]] = {}
    for g in node.gpus:
        if g.mig_capable and g.name not in out:
            out[g.name] = mig_profiles(g.index, library_path)
    return out


def render_text(
    node: Node, profiles: dict[str, list[MigProfileInfo]], out: TextIO, title: str = "Node"
) -> None:
    """The node as tables: GPUs, the topology matrix, MIG capability."""
    w = out.write
    w(
        f"{title}: {len(node.gpus)} GPU{'s' if len(node.gpus) != 1 else ''}, "
        f"driver {node.driver_version}, CUDA {_cuda_version(node.cuda_driver_version)}, "
        f"NVML {node.nvml_version}\n\n"
    )
    if not node.gpus:
        w("No GPUs.\n")
        return
    rows = [
        [
            str(g.index),
            g.name,
            f"{g.memory_bytes // 2**20} MiB",
            f"{g.compute_capability[0]}.{g.compute_capability[1]}",
            g.pci_bus_id,
            "N/A" if g.numa_node is None else str(g.numa_node),
            _mig_mode(g),
            g.uuid,
        ]
        for g in node.gpus
    ]
    header = ["GPU", "Name", "Memory", "CC", "Bus ID", "NUMA", "MIG", "UUID"]
    w("\n".join(_table(header, rows)) + "\n")
    for g in node.gpus:
        for m in g.mig_devices:
            placement = (
                "?" if m.placement_start is None else f"{m.placement_start}:{m.placement_size}"
            )
            w(
                f"  GPU {g.index} MIG {m.profile_name or '?'} (GI {m.gpu_instance_id}, "
                f"CI {m.compute_instance_id}, placement {placement}, "
                f"{m.memory_bytes // 2**20} MiB) {m.uuid}\n"
            )

    n = len(node.gpus)
    header = ["", *[f"GPU{i}" for i in range(n)], "CPU Affinity", "NUMA Affinity"]
    rows = [
        [
            f"GPU{a}",
            *[_link(node, a, b) for b in range(n)],
            _cpulist(g.cpu_affinity) or "N/A",
            "N/A" if g.numa_node is None else str(g.numa_node),
        ]
        for a, g in enumerate(node.gpus)
    ]
    w("\nTopology" + (" (NVSwitch)" if node.topology.nvswitch else "") + "\n")
    w("\n".join(_table(header, rows)) + "\n\n" + _LEGEND + "\n")

    for model, ps in profiles.items():
        gpus = [str(g.index) for g in node.gpus if g.name == model]
        w(f"\nMIG profiles: {model} (GPU {', '.join(gpus)})\n")
        if not ps:
            w("  NVML reports no GPU-instance profiles.\n")
            continue
        rows = [
            [
                str(p.profile_id),
                p.name,
                str(p.compute_slices),
                str(p.memory_slices),
                f"{p.memory_mib} MiB",
                str(p.max_instances),
                ",".join(str(s) for s in p.placements),
            ]
            for p in ps
        ]
        header = ["ID", "Name", "Compute", "Mem slices", "Memory", "Max", "Placements"]
        w("\n".join("  " + line for line in _table(header, rows)) + "\n")


def render_json(node: Node, profiles: dict[str, list[MigProfileInfo]]) -> dict[str, Any]:
    """The node as plain JSON-ready data."""
    t = node.topology
    return {
        "driver_version": node.driver_version,
        "cuda_driver_version": node.cuda_driver_version,
        "nvml_version": node.nvml_version,
        "gpus": [
            {
                "index": g.index,
                "minor": g.minor,
                "uuid": g.uuid,
                "name": g.name,
                "serial": g.serial,
                "memory_bytes": g.memory_bytes,
                "compute_capability": list(g.compute_capability),
                "architecture": g.architecture,
                "pci_bus_id": g.pci_bus_id,
                "pci_device_id": g.pci_device_id,
                "numa_node": g.numa_node,
                "cpu_affinity": _cpulist(g.cpu_affinity),
                "mig_capable": g.mig_capable,
                "mig_enabled": g.mig_enabled,
                "mig_pending": g.mig_pending,
                "nvlinks": g.nvlinks,
                "nvswitch_links": g.nvswitch_links,
                "mig_devices": [
                    {
                        "uuid": m.uuid,
                        "index": m.index,
                        "gpu_instance_id": m.gpu_instance_id,
                        "compute_instance_id": m.compute_instance_id,
                        "profile_id": m.profile_id,
                        "profile_name": m.profile_name,
                        "placement_start": m.placement_start,
                        "placement_size": m.placement_size,
                        "memory_bytes": m.memory_bytes,
                    }
                    for m in g.mig_devices
                ],
            }
            for g in node.gpus
        ],
        "topology": {
            "gpu_count": t.gpu_count,
            "nvswitch": t.nvswitch,
            "numa": t.numa,
            "nvlinks": [[a, b, n] for (a, b), n in sorted(t.nvlink_pairs().items())],
            "pcie": [[a, b, level] for (a, b), level in sorted(t.pcie_pairs().items())],
        },
        "mig_profiles": {
            model: [
                {
                    "name": p.name,
                    "profile_id": p.profile_id,
                    "compute_slices": p.compute_slices,
                    "memory_slices": p.memory_slices,
                    "memory_mib": p.memory_mib,
                    "multiprocessors": p.multiprocessors,
                    "max_instances": p.max_instances,
                    "placements": p.placements,
                }
                for p in ps
            ]
            for model, ps in profiles.items()
        },
    }


def _show(node: Node, library_path: str | None, as_json: bool, title: str) -> None:
    profiles = mig_capability(node, library_path)
    if as_json:
        json.dump(render_json(node, profiles), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_text(node, profiles, sys.stdout, title)


def _cmd_discover(args: argparse.Namespace) -> int:
    library: str | None = args.library
    _show(discover(library), library, args.json, "Node")
    return 0


def _cmd_simulate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    spec: str = args.spec
    try:
        sim.spec_path(spec)
    except SpecError as e:
        parser.error(f"argument --spec: {e}")
    with sim.simulated(spec):
        _show(discover(), None, args.json, f"Simulated node {spec}")
    return 0


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="gpulet",
        description="gpulet: the GPU agent for Kubernetes nodes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "discover",
        help="print this node's GPUs, topology and MIG capability as NVML reports them",
        description="Print this node's GPUs, topology matrix and MIG capability, read-only.",
    )
    d.add_argument("--json", action="store_true", help="print JSON instead of tables")
    d.add_argument(
        "--library",
        metavar="PATH",
        help="the NVML library to load (default: $GPULET_NVML_LIB, else libnvidia-ml.so.1)",
    )

    s = sub.add_parser(
        "simulate",
        help="a simulated GPU node from a node spec",
        description=(
            "Load the fake NVML with a node spec and print the simulated node (GPUs, topology "
            "matrix, MIG capability). Printing is the only mode so far: running the whole agent "
            "on the simulated node comes with the agent."
        ),
    )
    s.add_argument(
        "--spec",
        required=True,
        metavar="NAME|FILE",
        help=f"a shipped spec ({', '.join(sim.shipped_specs())}) or the path of a spec file",
    )
    s.add_argument(
        "--print",
        action="store_true",
        default=True,
        help="print the simulated node and exit (the default, and for now the only mode)",
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser, s


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser, simulate_parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "discover":
            return _cmd_discover(args)
        return _cmd_simulate(args, simulate_parser)
    except (NvmlLibraryNotFound, SpecError, sim.FakeLibraryNotFoundError) as e:
        print(f"gpulet: {e}", file=sys.stderr)
        return 2
    except (NvmlError, sim.FakeNvmlError) as e:
        print(f"gpulet: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
