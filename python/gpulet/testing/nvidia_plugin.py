"""NVIDIA's device plugin (k8s-device-plugin, unmodified) on a simulated node, as a peer to measure
gpulet against.

The binary is built by ``scripts/nvidia-device-plugin`` into a cache outside the checkout
(:func:`binary_path`). It runs against gpulet's fake ``libnvidia-ml.so.1`` (found through
``LD_LIBRARY_PATH``; NVIDIA's go-nvml opens it with dlopen) with a kubelet root of its own:

- The plugin always serves on ``/var/lib/kubelet/device-plugins/<name>.sock`` and watches that
  directory for ``kubelet.sock``, whatever its flags say. So it runs in a private mount namespace
  (``unshare --mount``; for a user that is not root, in a user namespace too) where the
  scratch kubelet root is bind-mounted on
  ``/var/lib/kubelet``: a kubelet (gpulet's stand-in) listening on ``ROOT/device-plugins/
  kubelet.sock`` outside is the socket the plugin dials inside, and the plugin's socket appears
  in ``ROOT/device-plugins/`` for clients outside. If ``/var/lib/kubelet`` does not exist it is
  created (an empty directory, the mount point) and left in place.
- It takes a GPU's NUMA node from ``/sys/bus/pci/devices/<bus id>/numa_node``, not from NVML. A
  scratch directory with one such file per simulated GPU (from the node spec) is bind-mounted
  over ``/sys/bus/pci/devices`` in the namespace; without it the plugin advertises no topology.
- MIG specs are refused: the plugin would also need ``/proc/driver/nvidia-caps/mig-minors`` and
  the capability device nodes, which this module does not fake.

    with gpulet.simulated("dgx-h100") as sim, KubeletStandin(root) as kubelet:
        with NvidiaDevicePlugin(binary_path(), root, sim) as plugin:
            kubelet.wait_for_registrations([RESOURCE])
            ...  # dial plugin.socket

By hand: ``scripts/nvidia-device-plugin run [--spec S] [--root DIR]`` (this module's ``main``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import IO, Any, Final

import yaml

from gpulet.errors import GpuletError
from gpulet.sim import Simulation, simulated, spec_path

__all__ = [
    "RESOURCE",
    "VERSION",
    "NvidiaDevicePlugin",
    "NvidiaPluginError",
    "binary_path",
    "cache_dir",
    "main",
    "sysfs_bus_ids",
    "write_sysfs",
]

#: The release measured against (scripts/nvidia-device-plugin builds the same default).
VERSION: Final = "v0.17.4"
#: What the plugin advertises with its default config.
RESOURCE: Final = "nvidia.com/gpu"
#: Its socket, in the kubelet root's ``device-plugins/`` directory.
SOCKET_NAME: Final = "nvidia-gpu.sock"

_NVML_SONAME: Final = "libnvidia-ml.so.1"

# Runs inside the new mount namespace: $1 the kubelet root, $2 the sysfs stand-in, then the
# plugin's command line.
_NAMESPACE_SCRIPT: Final = """set -e
mount --make-rprivate /
if ! mkdir -p /var/lib/kubelet 2>/dev/null; then
    # Not root outside (a user namespace): /var/lib is not ours to write; a tmpfs over it,
    # seen only in this namespace, gives the mount point.
    mount -t tmpfs tmpfs /var/lib
    mkdir -p /var/lib/kubelet
fi
mount --bind "$1" /var/lib/kubelet
mount --bind "$2" /sys/bus/pci/devices
shift 2
exec "$@"
"""


class NvidiaPluginError(GpuletError, RuntimeError):
    """NVIDIA's plugin could not be started here (not root, no ``unshare``, a MIG spec, the
    binary missing or exiting early); the message says which."""


def cache_dir() -> pathlib.Path:
    """``$GPULET_NVIDIA_PLUGIN_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/gpulet/
    nvidia-device-plugin`` (the same rule as scripts/nvidia-device-plugin)."""
    override = os.environ.get("GPULET_NVIDIA_PLUGIN_CACHE")
    if override:
        return pathlib.Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return base / "gpulet" / "nvidia-device-plugin"


def binary_path(version: str | None = None) -> pathlib.Path:
    """Where scripts/nvidia-device-plugin puts the binary of ``version`` (default:
    ``$NVIDIA_DEVICE_PLUGIN_VERSION``, else :data:`VERSION`). It may not exist yet."""
    version = version or os.environ.get("NVIDIA_DEVICE_PLUGIN_VERSION") or VERSION
    return cache_dir() / version / "nvidia-device-plugin"


def _sysfs_name(bus_id: str) -> str:
    """NVML's ``00000000:1B:00.0`` as the plugin looks it up: 4-digit domain, lower case."""
    domain, sep, rest = bus_id.strip().lower().partition(":")
    if not sep or not domain:
        raise ValueError(f"pci_bus_id {bus_id!r} is not DOMAIN:BUS:DEVICE.FUNCTION")
    return f"{domain[-4:].rjust(4, '0')}:{rest}"


def sysfs_bus_ids(spec: str | os.PathLike[str]) -> dict[str, int]:
    """Each GPU of a node spec as ``{sysfs bus id: NUMA node}``; raises
    :class:`NvidiaPluginError` for a spec with MIG enabled on any GPU."""
    path = spec_path(spec)
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    gpus = data.get("gpus") if isinstance(data, dict) else None
    if not isinstance(gpus, list):
        raise ValueError(f"{path}: gpus: expected a list")
    out: dict[str, int] = {}
    for i, gpu in enumerate(gpus):
        if not isinstance(gpu, dict):
            raise ValueError(f"{path}: gpus[{i}]: expected a mapping")
        if gpu.get("mig_enabled"):
            raise NvidiaPluginError(
                f"{path}: gpus[{i}].mig_enabled: MIG specs are not supported here (NVIDIA's "
                "plugin also needs /proc/driver/nvidia-caps/mig-minors and capability devices)"
            )
        bus = gpu.get("pci_bus_id")
        numa = gpu.get("numa_node")
        if not isinstance(bus, str):
            raise ValueError(f"{path}: gpus[{i}].pci_bus_id: expected a string")
        if not isinstance(numa, int):
            raise ValueError(f"{path}: gpus[{i}].numa_node: expected an integer")
        out[_sysfs_name(bus)] = numa
    return out


def write_sysfs(spec: str | os.PathLike[str], dest: pathlib.Path) -> dict[str, int]:
    """Write ``dest/<bus id>/numa_node`` for each GPU of ``spec`` (the part of
    ``/sys/bus/pci/devices`` the plugin reads); returns what was written."""
    numa = sysfs_bus_ids(spec)
    for bus, node in numa.items():
        (dest / bus).mkdir(parents=True, exist_ok=True)
        (dest / bus / "numa_node").write_text(f"{node}\n", encoding="ascii")
    return numa


class NvidiaDevicePlugin:
    """One NVIDIA device plugin process serving under ``root`` on the node ``sim`` simulates.

    ``root`` is the kubelet root (the plugin's socket is ``root/device-plugins/
    nvidia-gpu.sock``); start a kubelet stand-in on it for the plugin to register with. ``args``
    go to the plugin (e.g. ``["--config-file", path]``). Its log (klog, on stderr) goes to
    ``log_path`` (default ``root/nvidia-device-plugin.log``).
    """

    def __init__(
        self,
        binary: str | os.PathLike[str],
        root: str | os.PathLike[str],
        sim: Simulation,
        *,
        args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.binary = pathlib.Path(binary)
        self.root = pathlib.Path(root).resolve()
        self.sim = sim
        self.args = list(args)
        self.log_path = (
            pathlib.Path(log_path)
            if log_path is not None
            else self.root / "nvidia-device-plugin.log"
        )
        self.socket = self.root / "device-plugins" / SOCKET_NAME
        self.numa: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._scratch: pathlib.Path | None = None
        self._log: IO[bytes] | None = None

    def _check(self) -> None:
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise NvidiaPluginError(
                f"no NVIDIA device plugin binary at {self.binary}; build it with "
                "scripts/nvidia-device-plugin build"
            )
        if shutil.which("unshare") is None:
            raise NvidiaPluginError("no `unshare` (util-linux) on PATH")

    def environment(self) -> dict[str, str]:
        """The simulation's environment, with the fake first on ``LD_LIBRARY_PATH``."""
        assert self._scratch is not None
        library = self.sim.library_path
        libdir = library.parent
        if library.name != _NVML_SONAME:
            # A development build (target/*/libfakenvml.so): give dlopen the soname it asks for.
            libdir = self._scratch / "lib"
            libdir.mkdir(exist_ok=True)
            (libdir / _NVML_SONAME).symlink_to(library)
        env = dict(self.sim.env)
        previous = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{libdir}{os.pathsep}{previous}" if previous else str(libdir)
        return env

    def start(self) -> None:
        self._check()
        (self.root / "device-plugins").mkdir(parents=True, exist_ok=True)
        self._scratch = pathlib.Path(tempfile.mkdtemp(prefix="gpl-nvsys-", dir="/tmp"))
        try:
            sysfs = self._scratch / "pci"
            sysfs.mkdir()
            self.numa = write_sysfs(self.sim.spec_path, sysfs)
            env = self.environment()
            # As root, a mount namespace; otherwise a user namespace that maps the caller to root
            # in it (unprivileged user namespaces must be enabled).
            command = ["unshare"]
            if os.geteuid() != 0:
                command += ["--user", "--map-root-user"]
            command += ["--mount", "--propagation", "private", "sh", "-c"]
            command += [_NAMESPACE_SCRIPT, "sh", str(self.root), str(sysfs)]
            command += [str(self.binary), *self.args]
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            # unshare and sh exec: the process is the plugin (signals reach it directly).
            self.proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
            )
        except BaseException:
            self._cleanup()
            raise

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def check_running(self) -> None:
        """Raise :class:`NvidiaPluginError` with the log's tail if the plugin has exited."""
        if self.proc is None:
            raise NvidiaPluginError("NVIDIA's device plugin was not started")
        rc = self.proc.poll()
        if rc is not None:
            tail = "\n".join(self.log_text().splitlines()[-30:])
            raise NvidiaPluginError(
                f"NVIDIA's device plugin exited with status {rc}; its log ({self.log_path}):\n"
                f"{tail}"
            )

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> NvidiaDevicePlugin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the plugin by hand: a simulated node, the kubelet stand-in, until Ctrl-C."""
    from gpulet.testing.kubelet import KubeletStandin

    parser = argparse.ArgumentParser(
        prog="python -m gpulet.testing.nvidia_plugin",
        description="Run NVIDIA's device plugin on a simulated node with gpulet's kubelet "
        "stand-in, in a private mount namespace. Arguments after -- go to the plugin.",
    )
    parser.add_argument("--binary", type=pathlib.Path, default=None, help="default: the cache")
    parser.add_argument("--spec", default="dgx-h100", help="shipped spec name or file")
    parser.add_argument("--root", type=pathlib.Path, default=None, help="kubelet root (new dir)")
    parser.add_argument("--timeout", type=float, default=60.0, help="registration wait, seconds")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    ns = parser.parse_args(argv)
    binary = ns.binary or binary_path()
    root = ns.root or pathlib.Path(tempfile.mkdtemp(prefix="gpl-nv-", dir="/tmp"))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with (
            simulated(ns.spec) as sim,
            KubeletStandin(root) as kubelet,
            NvidiaDevicePlugin(binary, root, sim, args=extra) as plugin,
        ):
            try:
                kubelet.wait_for_registrations([RESOURCE], timeout=ns.timeout)
            except TimeoutError:
                plugin.check_running()
                raise
            with kubelet.plugin(RESOURCE) as client:
                devices = client.devices()
            print(f"NVIDIA device plugin registered {RESOURCE}: {len(devices)} devices")
            print(f"socket: {plugin.socket}")
            print(f"log:    {plugin.log_path}")
            print("Ctrl-C stops it.", flush=True)
            while not stop.wait(1.0):
                plugin.check_running()
    except (NvidiaPluginError, TimeoutError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
