"""The ``gpulet`` command line (also ``python -m gpulet``).

Subcommands so far:

- ``gpulet run [--config FILE] [--node-name NAME] [--kubelet-root DIR] [--metrics-port 9401]
  [--cdi-root DIR]``: the agent: the kubelet device plugin for this node's GPUs.
- ``gpulet simulate --spec NAME|FILE [--root DIR] [--config FILE] [--metrics-port N]``: the
  whole agent on a simulated node, kubelet directories under DIR; ``--print [--json]`` prints
  the simulated node instead.
- ``gpulet discover [--json] [--library PATH]``: what NVML reports about this node.

Exit codes: 0 success (the agent: stopped by SIGTERM or SIGINT), 1 an NVML call failed (the
agent: NVML failed to start under ``failOnInitError``, or the node cannot be advertised), 2 bad
input, no NVML library, or (simulate) the fake NVML not built.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import pathlib
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from gpulet import config as gconfig
from gpulet import sim
from gpulet._core import Gpu, MigProfileInfo, Node, discover, mig_profiles
from gpulet.errors import GpuletError, NvmlError, NvmlLibraryNotFound, SpecError

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


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("GPULET_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load_config(
    args: argparse.Namespace, extra: Mapping[str, object] | None = None
) -> gconfig.Config:
    flags: dict[str, object] = {
        "kubelet-root": args.kubelet_root,
        "node-name": getattr(args, "node_name", None),
        "metrics-port": args.metrics_port,
    }
    flags.update(extra or {})
    return gconfig.load(args.config, flags=flags)


def _serve(
    cfg: gconfig.Config, options: Any, reread: Callable[[], gconfig.Config] | None = None
) -> int:
    """Run the agent until SIGTERM or SIGINT. SIGHUP re-reads the config (``reread``) and
    applies it; a bad new config is logged and the old one stays."""
    from gpulet.agent import Agent

    log = logging.getLogger("gpulet")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        agent = Agent(cfg, options)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        reloads: set[asyncio.Task[None]] = set()
        again = False

        async def reload() -> None:
            nonlocal again
            while True:
                again = False
                if reread is None:
                    await agent.restart_plugins()
                else:
                    try:
                        new = reread()
                    except gconfig.ConfigError as e:
                        agent.stats.reload_failures += 1
                        agent.last_reload_error = str(e)
                        log.error(
                            "SIGHUP: the config is refused, still serving the previous one: %s", e
                        )
                    else:
                        await agent.reload(new)
                if not again:
                    return

        def hangup() -> None:
            nonlocal again
            if reloads:
                # The running reload may have read the file already: read it once more after.
                log.info("SIGHUP: a reload is running; reading the config again after it")
                again = True
                return
            log.info("SIGHUP: re-reading the config")
            task = loop.create_task(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, hangup)
        await agent.run(stop)

    asyncio.run(main())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from gpulet.agent import AgentOptions

    _setup_logging()
    cfg = _load_config(args)
    options = AgentOptions.from_config(
        cfg, cdi_root=args.cdi_root, http_host=_bind_address(args.bind_address)
    )
    return _serve(cfg, options, lambda: _load_config(args))


def _bind_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise BadArgument(
            f"--bind-address: {value!r} is not an IP address (e.g. 0.0.0.0, 127.0.0.1, ::)"
        ) from None
    return value


class BadArgument(GpuletError, ValueError):
    """A command-line argument that cannot be used (exit code 2)."""


def _usable_root(root: pathlib.Path) -> pathlib.Path:
    """``--root``, created if missing, checked to be a writable directory."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadArgument(f"--root {root}: cannot create it: {e.strerror or e}") from None
    if not root.is_dir():
        raise BadArgument(f"--root {root}: not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise BadArgument(f"--root {root}: not writable")
    return root.resolve()


#: What ``gpulet simulate`` shows a container when no config file says otherwise: every
#: device-list output at once (NVIDIA's defaults are ``envvar`` only, without device specs).
SIMULATION_DEFAULTS: Mapping[str, object] = {
    "device-list-strategy": "envvar,cdi-cri",
    "pass-device-specs": True,
}


def _simulated_dev_root(root: pathlib.Path, gpus: int) -> pathlib.Path:
    """Stand-in device nodes (empty files) for the simulated GPUs under ROOT/dev-root."""
    dev = root / "dev-root" / "dev"
    dev.mkdir(parents=True, exist_ok=True)
    names = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", *[f"nvidia{i}" for i in range(gpus)]]
    for name in names:
        (dev / name).touch()
    return dev.parent


def _cmd_simulate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    spec: str = args.spec
    try:
        sim.spec_path(spec)
    except SpecError as e:
        parser.error(f"argument --spec: {e}")
    if args.print:
        with sim.simulated(spec):
            _show(discover(), None, args.json, f"Simulated node {spec}")
        return 0

    from gpulet.agent import AgentOptions

    _setup_logging()
    _bind_address(args.bind_address)
    root = pathlib.Path(args.root or tempfile.mkdtemp(prefix="gpulet-sim-", dir="/tmp"))
    root = _usable_root(root)
    args.kubelet_root = os.fspath(root)
    has_file = bool(args.config) or any(
        os.environ.get(e) for e in ("CONFIG_FILE", "GFD_CONFIG_FILE")
    )
    extra = {
        k: v
        for k, v in SIMULATION_DEFAULTS.items()
        if not has_file and not os.environ.get(k.upper().replace("-", "_"))
    }
    state = os.environ.get(sim.ENV_STATE) or None
    with sim.simulated(spec, state_path=state):
        gpus = len(discover().gpus)

        def load() -> gconfig.Config:
            cfg = _load_config(args, extra)
            if cfg.flags.nvidia_dev_root == "/":
                try:
                    dev_root = _simulated_dev_root(root, gpus)
                except OSError as e:
                    raise BadArgument(
                        f"--root {root}: cannot make the stand-in device nodes: {e.strerror or e}"
                    ) from None
                cfg = dataclasses.replace(
                    cfg, flags=dataclasses.replace(cfg.flags, nvidia_dev_root=os.fspath(dev_root))
                )
            return cfg

        cfg = load()
        logging.getLogger("gpulet").info(
            "simulating %s; kubelet root %s", sim.spec_path(spec).stem, root
        )
        options = AgentOptions.from_config(cfg, cdi_root=root / "cdi", http_host=args.bind_address)
        return _serve(cfg, options, load)


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

    r = sub.add_parser(
        "run",
        help="run the agent: the kubelet device plugin for this node's GPUs",
        description=(
            "Run the agent: one device-plugin server per resource in the kubelet's "
            "device-plugins directory, registered with the kubelet (again whenever it restarts), "
            "until SIGTERM or SIGINT. SIGHUP restarts the servers."
        ),
    )
    _agent_arguments(r)
    r.add_argument("--node-name", metavar="NAME", help="this node's name (default: $NODE_NAME)")
    r.add_argument(
        "--kubelet-root",
        metavar="DIR",
        help="the kubelet's root directory (default: $GPULET_KUBELET_ROOT, else /var/lib/kubelet)",
    )
    r.add_argument(
        "--cdi-root",
        metavar="DIR",
        default="/var/run/cdi",
        help="where the CDI spec for the node's GPUs is written (default: /var/run/cdi)",
    )

    s = sub.add_parser(
        "simulate",
        help="the whole agent on a simulated GPU node from a node spec",
        description=(
            "Load the fake NVML with a node spec and run the whole agent on the simulated node, "
            "with the kubelet's directories under --root (device-plugins/, pod-resources/), the "
            "CDI spec under ROOT/cdi and stand-in device nodes under ROOT/dev-root. Without a "
            "config file, Allocate answers with every output at once (envvar and cdi-cri, "
            "device specs). The fake's state file is $GPULET_FAKE_NVML_STATE when set, so "
            "another process can inject faults. With --print, print the simulated node (GPUs, "
            "topology matrix, MIG capability) and exit."
        ),
    )
    s.add_argument(
        "--spec",
        required=True,
        metavar="NAME|FILE",
        help=f"a shipped spec ({', '.join(sim.shipped_specs())}) or the path of a spec file",
    )
    s.add_argument(
        "--root",
        metavar="DIR",
        help="the simulated kubelet root (default: a new directory under /tmp)",
    )
    _agent_arguments(s)
    s.add_argument(
        "--print",
        action="store_true",
        help="print the simulated node and exit instead of running the agent",
    )
    s.add_argument("--json", action="store_true", help="with --print: JSON instead of tables")
    return parser, s


def _agent_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="config file: NVIDIA's device-plugin config v1, plus a gpulet section "
        "(default: $CONFIG_FILE)",
    )
    p.add_argument(
        "--metrics-port",
        metavar="PORT",
        type=int,
        help="port of /healthz and /readyz (and /metrics); 0 turns it off (default "
        f"{gconfig.DEFAULT_METRICS_PORT}; dcgm-exporter's is 9400, so both can run side by side)",
    )
    p.add_argument(
        "--bind-address",
        metavar="ADDR",
        default=os.environ.get("GPULET_BIND_ADDRESS", "0.0.0.0"),
        help="the address that port binds (default: $GPULET_BIND_ADDRESS, else 0.0.0.0: every "
        "interface, as the kubelet's probes and Prometheus reach a hostNetwork pod on the "
        "node's address); 127.0.0.1 keeps it on the node",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser, simulate_parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "discover":
            return _cmd_discover(args)
        if args.command == "run":
            return _cmd_run(args)
        return _cmd_simulate(args, simulate_parser)
    except (
        NvmlLibraryNotFound,
        SpecError,
        sim.FakeLibraryNotFoundError,
        gconfig.ConfigError,
        BadArgument,
    ) as e:
        print(f"gpulet: {e}", file=sys.stderr)
        return 2
    except (NvmlError, sim.FakeNvmlError, GpuletError) as e:
        print(f"gpulet: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
