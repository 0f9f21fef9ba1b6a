"""CDI (Container Device Interface) specs for the node's GPUs and MIG devices.

A container runtime with CDI (containerd >= 1.7, CRI-O >= 1.24) injects a device by its fully
qualified name, e.g. ``k8s.device-plugin.nvidia.com/gpu=GPU-8a7c...``: the device nodes, mounts
and hooks the spec lists for it. gpulet writes one spec, in NVIDIA's device plugin's vendor and
class so Allocate responses name devices as NVIDIA's plugin does:

- one device per GPU and per MIG device, named both by UUID and by NVIDIA index (``3``,
  ``3:1``), so either ``deviceIDStrategy`` finds it, plus ``all``;
- a device's edits are its device nodes: ``/dev/nvidia<minor>`` and, for a MIG device, its GPU
  and compute instance capability nodes (``/dev/nvidia-caps/nvidia-cap<N>``, minors read from
  ``<driver root>/proc/driver/nvidia-caps/mig-minors`` when it exists);
- the spec's common edits: the control nodes (``/dev/nvidiactl``, ``/dev/nvidia-uvm``,
  ``/dev/nvidia-uvm-tools``, ``/dev/nvidia-modeset``) that exist under the device root, and,
  optionally, the driver's user-space libraries and tools found under the driver root
  (read-only bind mounts, plus the CDI hook that refreshes the container's ld cache).

Device nodes are looked up under a *device root* (the host's ``/`` normally; a directory in
simulation) and named by their path in the container; when the device root is not ``/``, each
node carries its ``hostPath``.

The spec is written atomically (:func:`write_spec`, through :func:`gpulet.files.write_atomic`:
temp file, fsync, rename, directory fsync), so a runtime never reads half a spec, and a crash
leaves the old one or the new one. Its directories are created with :data:`DIR_MODE` exactly
(:func:`make_dirs`, both from ``gpulet.files``).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gpulet._core import Gpu, MigDevice, Node
from gpulet.files import DIR_MODE, make_dirs, remove_durably, write_atomic

__all__ = [
    "CDI_VERSION",
    "CLASS",
    "CONTROL_DEVICES",
    "DIR_MODE",
    "KIND",
    "SPEC_FILE",
    "VENDOR",
    "build_spec",
    "device_name",
    "device_paths",
    "gpu_device_paths",
    "make_dirs",
    "mig_device_paths",
    "read_mig_minors",
    "write_spec",
]

VENDOR: Final = "k8s.device-plugin.nvidia.com"
CLASS: Final = "gpu"
KIND: Final = f"{VENDOR}/{CLASS}"
CDI_VERSION: Final = "0.5.0"
#: The spec's file name under the CDI root.
SPEC_FILE: Final = f"{VENDOR}-{CLASS}.json"
#: Control device nodes every GPU container needs; each is listed when it exists.
CONTROL_DEVICES: Final = (
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
)
MIG_MINORS_FILE: Final = "proc/driver/nvidia-caps/mig-minors"

# Driver files made visible in containers when a driver root is given (name prefixes).
_LIBRARIES: Final = (
    "libnvidia-ml.so",
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-cfg.so",
    "libnvidia-opencl.so",
    "libnvidia-gpucomp.so",
    "libnvidia-allocator.so",
    "libnvidia-pkcs11.so",
)
_BINARIES: Final = (
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
)
_LIBRARY_DIRS: Final = (
    "usr/lib64",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib64",
    "usr/lib",
)
_BINARY_DIRS: Final = ("usr/bin", "usr/sbin", "bin")
_NAME_OK: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def device_name(device_id: str) -> str:
    """The fully qualified CDI name of a device in gpulet's spec (UUID or NVIDIA index)."""
    return f"{KIND}={device_id}"


def read_mig_minors(driver_root: str | os.PathLike[str] = "/") -> dict[str, int]:
    """The driver's capability minors (``gpu0/gi1/access`` -> 21); empty when the file is
    missing (no driver, or MIG unsupported)."""
    path = pathlib.Path(driver_root) / MIG_MINORS_FILE
    out: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def device_paths(
    minor: int,
    instance: tuple[int, int] | None = None,
    mig_minors: Mapping[str, int] | None = None,
) -> list[str]:
    """The device nodes (container paths) of GPU ``minor`` or, with ``instance`` = (GPU
    instance id, compute instance id), of a MIG device on it: the GPU's node plus the
    instances' capability nodes when the driver's minors are known."""
    paths = [f"/dev/nvidia{minor}"]
    if instance is None:
        return paths
    minors = mig_minors or {}
    gi, ci = instance
    for key in (f"gpu{minor}/gi{gi}/access", f"gpu{minor}/gi{gi}/ci{ci}/access"):
        cap = minors.get(key)
        if cap is not None:
            paths.append(f"/dev/nvidia-caps/nvidia-cap{cap}")
    return paths


def gpu_device_paths(g: Gpu) -> list[str]:
    """The device nodes of a whole GPU (container paths)."""
    return device_paths(g.minor)


def mig_device_paths(g: Gpu, m: MigDevice, mig_minors: Mapping[str, int]) -> list[str]:
    """The device nodes of a MIG device (container paths)."""
    return device_paths(g.minor, (m.gpu_instance_id, m.compute_instance_id), mig_minors)


def _node(path: str, dev_root: pathlib.Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path}
    if dev_root != pathlib.Path("/"):
        entry["hostPath"] = os.fspath(dev_root / path.lstrip("/"))
    return entry


def _exists(path: str, dev_root: pathlib.Path) -> bool:
    return (dev_root / path.lstrip("/")).exists()


def _driver_files(driver_root: pathlib.Path) -> list[tuple[str, str]]:
    """(host path, container path) of driver libraries and tools under ``driver_root``."""
    found: dict[str, str] = {}
    for sub, prefixes in [(d, _LIBRARIES) for d in _LIBRARY_DIRS] + [
        (d, _BINARIES) for d in _BINARY_DIRS
    ]:
        directory = driver_root / sub
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if prefixes is _LIBRARIES:
                if not any(name.startswith(p) for p in prefixes) or name.endswith(".so"):
                    continue
            elif name not in prefixes:
                continue
            host = directory / name
            container = "/" + os.fspath(pathlib.PurePosixPath(sub) / name)
            if container in found or not host.exists():
                continue
            found[container] = os.fspath(host.resolve())
    return [(h, c) for c, h in sorted(found.items())]


@dataclass(frozen=True)
class _Entry:
    names: tuple[str, ...]
    paths: tuple[str, ...]


def build_spec(
    node: Node,
    *,
    dev_root: str | os.PathLike[str] = "/",
    driver_root: str | os.PathLike[str] | None = None,
    hook_path: str = "/usr/bin/nvidia-ctk",
    gpus: Iterable[int] | None = None,
) -> dict[str, Any]:
    """The CDI spec (a JSON-ready dict) for the node's GPUs and MIG devices.

    Args:
        dev_root: where the device nodes are on the host.
        driver_root: where the driver is installed; ``None`` lists no libraries.
        hook_path: the CDI hook binary (``flags.plugin.nvidiaCTKPath``) used to refresh the
            container's ld cache when libraries are mounted.
        gpus: NVML indices to include (default: all).
    """
    dev = pathlib.Path(dev_root)
    wanted = None if gpus is None else set(gpus)
    minors = read_mig_minors(driver_root if driver_root is not None else "/")
    entries: list[_Entry] = []
    for g in node.gpus:
        if wanted is not None and g.index not in wanted:
            continue
        entries.append(_Entry((g.uuid, str(g.index)), tuple(gpu_device_paths(g))))
        for m in g.mig_devices:
            entries.append(
                _Entry((m.uuid, f"{g.index}:{m.index}"), tuple(mig_device_paths(g, m, minors)))
            )
    devices: list[dict[str, Any]] = []
    every: list[str] = []
    for e in entries:
        for path in e.paths:
            if path not in every:
                every.append(path)
        for name in e.names:
            if not _NAME_OK.match(name):
                continue
            devices.append(
                {
                    "name": name,
                    "containerEdits": {"deviceNodes": [_node(p, dev) for p in e.paths]},
                }
            )
    if entries:
        devices.append(
            {"name": "all", "containerEdits": {"deviceNodes": [_node(p, dev) for p in every]}}
        )

    common: dict[str, Any] = {
        "env": ["NVIDIA_VISIBLE_DEVICES=void"],
        "deviceNodes": [_node(p, dev) for p in CONTROL_DEVICES if _exists(p, dev)],
    }
    if driver_root is not None:
        files = _driver_files(pathlib.Path(driver_root))
        if files:
            common["mounts"] = [
                {
                    "hostPath": host,
                    "containerPath": container,
                    "options": ["ro", "nosuid", "nodev", "bind"],
                }
                for host, container in files
            ]
            folders = sorted(
                {os.path.dirname(c) for _, c in files if os.path.basename(c).startswith("lib")}
            )
            if folders:
                args = ["nvidia-ctk", "hook", "update-ldcache"]
                for f in folders:
                    args += ["--folder", f]
                common["hooks"] = [{"hookName": "createContainer", "path": hook_path, "args": args}]
    return {
        "cdiVersion": CDI_VERSION,
        "kind": KIND,
        "devices": devices,
        "containerEdits": common,
    }


def write_spec(
    spec: Mapping[str, Any],
    cdi_root: str | os.PathLike[str],
    name: str = SPEC_FILE,
) -> pathlib.Path:
    """Write ``spec`` as ``<cdi_root>/<name>`` atomically; returns the path.

    Through :func:`gpulet.files.write_atomic`: the JSON goes to a temporary file in the same
    directory, which is fsynced, made world-readable (runtimes read it) and renamed over the old
    spec; then the directory is fsynced. Missing directories are created with :data:`DIR_MODE`.
    On any error the temporary file is removed and the old spec stays.
    """
    data = (json.dumps(spec, indent=2, sort_keys=False) + "\n").encode("utf-8")
    return write_atomic(pathlib.Path(cdi_root) / name, data, 0o644, dir_mode=DIR_MODE)


def remove_spec(cdi_root: str | os.PathLike[str], name: str = SPEC_FILE) -> bool:
    """Remove the spec (returns whether it existed)."""
    return remove_durably(pathlib.Path(cdi_root) / name)


def spec_device_names(spec: Mapping[str, Any]) -> list[str]:
    """Fully qualified names of every device in a spec."""
    kind = spec.get("kind", KIND)
    devices: Sequence[Mapping[str, Any]] = spec.get("devices", [])
    return [f"{kind}={d['name']}" for d in devices]
