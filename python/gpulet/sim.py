"""Simulated GPU nodes: the fake ``libnvidia-ml.so.1`` and its control interface.

The fake NVML (``rust/fakenvml``) answers the NVML C ABI from a node spec (a YAML file, see
``docs/node-spec.md``) and a state file that every process simulating the same node shares. This
module finds the library and the shipped specs, sets up a simulation for the current process and
its children, and drives a running simulation from outside: XID events, GPUs falling off the bus,
NVML error codes and slow calls, metric values and processes.

    with gpulet.simulated("dgx-h100") as sim:
        node = gpulet.discover()                  # sees 8 simulated H100s
        sim.control.inject_xid(3, 48)             # every process using the node sees the event
        subprocess.run([...], env=sim.env)        # children simulate the same node

Only the standard library is used; the mutation logic lives once, in the fake itself, reached
through ``ctypes``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

try:
    from gpulet.errors import GpuletError, SpecError
except ImportError:  # pragma: no cover - only when this file is loaded on its own
    # The fake's tests load this file by path when the package cannot be imported yet (its
    # extension not built); gpulet.errors is then out of reach, so stand-ins take its place.
    class GpuletError(Exception):  # type: ignore[no-redef]
        """Stands in for ``gpulet.errors.GpuletError``."""

    class SpecError(GpuletError, ValueError):  # type: ignore[no-redef]
        """Stands in for ``gpulet.errors.SpecError``."""


__all__ = [
    "ENV_FAKE_LIBRARY",
    "ENV_NVML_LIB",
    "ENV_SPEC",
    "ENV_STATE",
    "FakeLibraryNotFoundError",
    "FakeNvml",
    "FakeNvmlError",
    "Simulation",
    "SpecError",
    "default_state_path",
    "fake_library_path",
    "main",
    "shipped_specs",
    "simulated",
    "spec_path",
    "validate_spec",
]

#: The NVML library the core loads (a real driver's, or the fake's path).
ENV_NVML_LIB: Final = "GPULET_NVML_LIB"
#: The node spec the fake simulates (read at ``nvmlInit``).
ENV_SPEC: Final = "GPULET_FAKE_NVML_SPEC"
#: The state file shared by every process simulating the node.
ENV_STATE: Final = "GPULET_FAKE_NVML_STATE"
#: Overrides where the fake library is found.
ENV_FAKE_LIBRARY: Final = "GPULET_FAKE_NVML_PATH"

_PACKAGE_DIR: Final = pathlib.Path(__file__).resolve().parent
_SPEC_DIR: Final = _PACKAGE_DIR / "specs"
_PACKAGED_LIBRARY: Final = _PACKAGE_DIR / "_fakenvml" / "libnvidia-ml.so.1"
_REPO_ROOT: Final = _PACKAGE_DIR.parents[1]
_DEV_LIBRARY_NAME: Final = "libfakenvml.so"

# Return codes of the fake's own exports (see rust/fakenvml/src/ffi/control.rs).
_BAD_SPEC: Final = 1
_STATE_PATH_BUFFER: Final = 4096


class FakeNvmlError(GpuletError, RuntimeError):
    """The fake NVML refused a control command or could not use its state file."""


class FakeLibraryNotFoundError(GpuletError, FileNotFoundError):
    """The fake ``libnvidia-ml.so.1`` has not been built (or ``GPULET_FAKE_NVML_PATH`` names
    a file that does not exist)."""


def shipped_specs() -> list[str]:
    """Names of the node specs that ship with gpulet (``python/gpulet/specs/*.yaml``)."""
    return sorted(p.stem for p in _SPEC_DIR.glob("*.yaml"))


def spec_path(name_or_path: str | os.PathLike[str]) -> pathlib.Path:
    """Resolve a shipped spec name ("dgx-h100") or a path to a spec file."""
    text = os.fspath(name_or_path)
    if (
        isinstance(name_or_path, str)
        and os.sep not in text
        and not text.endswith((".yaml", ".yml"))
    ):
        shipped = _SPEC_DIR / f"{text}.yaml"
        if shipped.is_file():
            return shipped
    path = pathlib.Path(text).expanduser()
    if path.is_file():
        return path.resolve()
    known = ", ".join(shipped_specs()) or "none"
    raise SpecError(
        f"no node spec {text!r}: not a shipped spec (shipped: {known}) and not an existing file"
    )


def _dev_candidates() -> list[pathlib.Path]:
    roots: list[pathlib.Path] = []
    target_dir = os.environ.get("CARGO_TARGET_DIR")
    if target_dir:
        roots.append(pathlib.Path(target_dir))
    roots.append(_REPO_ROOT / "target")
    found: list[pathlib.Path] = []
    for root in roots:
        for profile in ("release", "debug"):
            candidate = root / profile / _DEV_LIBRARY_NAME
            if candidate.is_file():
                found.append(candidate)
    return found


def fake_library_path() -> pathlib.Path:
    """Where the fake NVML library is.

    In order: ``$GPULET_FAKE_NVML_PATH``; the copy built with the package
    (``gpulet/_fakenvml/libnvidia-ml.so.1``: every maturin or pip build of gpulet for Linux
    makes it, an editable install included); in a development checkout, the newest
    ``libfakenvml.so`` under ``$CARGO_TARGET_DIR`` or the repository's ``target/``.
    """
    override = os.environ.get(ENV_FAKE_LIBRARY)
    if override:
        path = pathlib.Path(override).expanduser()
        if not path.is_file():
            raise FakeLibraryNotFoundError(
                f"{ENV_FAKE_LIBRARY} names {override}, which does not exist; build the fake with "
                "`cargo build -p fakenvml` or unset the variable"
            )
        return path.resolve()
    if _PACKAGED_LIBRARY.is_file():
        return _PACKAGED_LIBRARY
    candidates = _dev_candidates()
    if candidates:
        return max(candidates, key=lambda p: p.stat().st_mtime).resolve()
    raise FakeLibraryNotFoundError(
        f"the fake NVML library is not built: {_PACKAGED_LIBRARY} is missing (a build of the "
        "gpulet package for Linux makes it: pip install, or scripts/build in a checkout); in "
        "the gpulet repository `cargo build -p fakenvml` also works (it makes "
        f"target/debug/{_DEV_LIBRARY_NAME}), or set {ENV_FAKE_LIBRARY} to the library's path"
    )


_LIBRARIES: dict[pathlib.Path, ctypes.CDLL] = {}


def _library(path: pathlib.Path) -> ctypes.CDLL:
    """Load the fake once per path, globally, so that a later ``dlopen("libnvidia-ml.so.1")``
    in this process (pynvml's, the core's) gets this same library through its soname."""
    lib = _LIBRARIES.get(path)
    if lib is None:
        lib = ctypes.CDLL(os.fspath(path), mode=ctypes.RTLD_GLOBAL)
        lib.gpuletFakeLastError.argtypes = []
        lib.gpuletFakeLastError.restype = ctypes.c_char_p
        lib.gpuletFakeValidateSpec.argtypes = [ctypes.c_char_p]
        lib.gpuletFakeValidateSpec.restype = ctypes.c_int
        lib.gpuletFakeStatePath.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        lib.gpuletFakeStatePath.restype = ctypes.c_int
        lib.gpuletFakeControl.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.gpuletFakeControl.restype = ctypes.c_int
        _LIBRARIES[path] = lib
    return lib


def _last_error(lib: ctypes.CDLL) -> str:
    raw = lib.gpuletFakeLastError()
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


def _encode(path: str | os.PathLike[str]) -> bytes:
    return os.fsencode(os.fspath(path))


def validate_spec(spec: str | os.PathLike[str]) -> pathlib.Path:
    """Check a spec with the fake's own loader; raise :class:`SpecError` if it is refused."""
    path = spec_path(spec)
    lib = _library(fake_library_path())
    if lib.gpuletFakeValidateSpec(_encode(path)) != 0:
        raise SpecError(_last_error(lib))
    return path


def default_state_path(spec: str | os.PathLike[str]) -> pathlib.Path:
    """The state file processes share when ``GPULET_FAKE_NVML_STATE`` is unset:
    ``${TMPDIR:-/tmp}/gpulet-fakenvml-<hash of the spec's path and content>.json``."""
    return _default_state_path(_library(fake_library_path()), spec_path(spec))


def _default_state_path(lib: ctypes.CDLL, path: pathlib.Path) -> pathlib.Path:
    buf = ctypes.create_string_buffer(_STATE_PATH_BUFFER)
    rc = lib.gpuletFakeStatePath(_encode(path), buf, _STATE_PATH_BUFFER)
    if rc == _BAD_SPEC:
        raise SpecError(_last_error(lib))
    if rc != 0:
        raise FakeNvmlError(_last_error(lib))
    return pathlib.Path(os.fsdecode(buf.value))


class FakeNvml:
    """Control client of one simulated node (a spec and its state file).

    Every method sends one command to the fake, which applies it to the shared state file
    under its lock; every process simulating the node sees the change on its next NVML call.
    GPUs are NVML indices.
    """

    def __init__(
        self,
        spec: str | os.PathLike[str],
        state_path: str | os.PathLike[str] | None = None,
        *,
        library: str | os.PathLike[str] | None = None,
    ) -> None:
        self.spec_path: pathlib.Path = spec_path(spec)
        self.library_path: pathlib.Path = (
            pathlib.Path(library).resolve() if library is not None else fake_library_path()
        )
        self._lib = _library(self.library_path)
        self.state_path: pathlib.Path = (
            pathlib.Path(state_path)
            if state_path is not None
            else _default_state_path(self._lib, self.spec_path)
        )

    def __repr__(self) -> str:
        return f"FakeNvml(spec={str(self.spec_path)!r}, state={str(self.state_path)!r})"

    def command(self, command: Mapping[str, Any]) -> None:
        """Send one raw command (see docs/fake-nvml.md for every shape)."""
        text = json.dumps(dict(command))
        rc = self._lib.gpuletFakeControl(
            _encode(self.spec_path), _encode(self.state_path), text.encode("utf-8")
        )
        if rc == _BAD_SPEC:
            raise SpecError(_last_error(self._lib))
        if rc != 0:
            raise FakeNvmlError(_last_error(self._lib))

    def inject_xid(
        self,
        gpu: int,
        xid: int,
        gpu_instance: int | None = None,
        compute_instance: int | None = None,
    ) -> None:
        """Emit an XID critical-error event (``eventData`` = ``xid``), optionally attributed to
        a MIG GPU/compute instance."""
        self.command(
            {
                "command": "inject_xid",
                "gpu": gpu,
                "xid": xid,
                "gpu_instance": gpu_instance,
                "compute_instance": compute_instance,
            }
        )

    def inject_event(
        self,
        gpu: int,
        event_type: int,
        data: int = 0,
        gpu_instance: int | None = None,
        compute_instance: int | None = None,
    ) -> None:
        """Emit any event type the GPU supports (one ``nvmlEventType*`` bit, e.g. 0x2 for a
        double-bit ECC error)."""
        self.command(
            {
                "command": "inject_event",
                "gpu": gpu,
                "event_type": event_type,
                "data": data,
                "gpu_instance": gpu_instance,
                "compute_instance": compute_instance,
            }
        )

    def fall_off_bus(self, gpu: int) -> None:
        """The GPU falls off the bus: every call on it returns NVML_ERROR_GPU_IS_LOST (15) and
        an XID 79 event is emitted."""
        self.command({"command": "fall_off_bus", "gpu": gpu})

    def restore_gpu(self, gpu: int) -> None:
        """Bring a GPU that fell off the bus back."""
        self.command({"command": "restore_gpu", "gpu": gpu})

    def fail(self, call: str, code: int, gpu: int | None = None, times: int | None = None) -> None:
        """Make the NVML function ``call`` return ``code``: only for ``gpu`` if given, only
        ``times`` times if given. A name without its ``_vN``/``V`` suffix covers every version."""
        self.command({"command": "fail", "call": call, "code": code, "gpu": gpu, "times": times})

    def delay(self, call: str, seconds: float, gpu: int | None = None) -> None:
        """Make the NVML function ``call`` take ``seconds`` longer (only for ``gpu`` if given)."""
        self.command({"command": "delay", "call": call, "seconds": seconds, "gpu": gpu})

    def set_metric(self, gpu: int, name: str, value: int | None) -> None:
        """Set a metric (``gpu_utilization``, ``power_mw``, ``temperature``, ...; the full list
        is in docs/fake-nvml.md). ``None`` is allowed for ``memory_used_mib`` only."""
        self.command({"command": "set_metric", "gpu": gpu, "name": name, "value": value})

    def set_field(
        self,
        gpu: int,
        field: int,
        value: float | None,
        scope: int | None = None,
        value_type: str | None = None,
    ) -> None:
        """Set what ``nvmlDeviceGetFieldValues`` answers for ``field`` (the id this driver's
        clients use), optionally for one ``scope`` (e.g. an NVLink). ``None`` clears it."""
        self.command(
            {
                "command": "set_field",
                "gpu": gpu,
                "field": field,
                "value": value,
                "scope": scope,
                "value_type": value_type,
            }
        )

    def set_processes(self, gpu: int, processes: Sequence[Mapping[str, Any]]) -> None:
        """Replace the GPU's compute processes. Each is a mapping with ``pid`` and
        ``used_memory_mib``, and optionally ``name``, ``gpu_instance``, ``compute_instance``."""
        self.command(
            {"command": "set_processes", "gpu": gpu, "processes": [dict(p) for p in processes]}
        )

    def clear_faults(self) -> None:
        """Drop injected error codes and delays, and bring lost GPUs back."""
        self.command({"command": "clear_faults"})

    def reset(self) -> None:
        """Return the node to the spec's initial state (MIG instances, metrics, processes)."""
        self.command({"command": "reset"})

    def state(self) -> dict[str, Any]:
        """The shared state as the fake last wrote it (schema in docs/fake-nvml.md)."""
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.reset()
            text = self.state_path.read_text(encoding="utf-8")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise FakeNvmlError(f"the state file {self.state_path} does not hold a JSON object")
        return data


@dataclass(frozen=True)
class Simulation:
    """A simulated node set up by :func:`simulated`."""

    spec_path: pathlib.Path
    state_path: pathlib.Path
    library_path: pathlib.Path
    control: FakeNvml
    #: The environment for child processes that should simulate the same node.
    env: dict[str, str]


_SIMULATION_VARS: Final = (ENV_NVML_LIB, ENV_SPEC, ENV_STATE, ENV_FAKE_LIBRARY)


@contextlib.contextmanager
def simulated(
    spec: str | os.PathLike[str] = "dgx-h100",
    *,
    state_path: str | os.PathLike[str] | None = None,
) -> Iterator[Simulation]:
    """Simulate a node in this process (and, through ``Simulation.env``, its children).

    The spec (a shipped name or a path) is validated first: a bad one raises
    :class:`SpecError` before anything changes. Unless ``state_path`` is given, the simulation
    gets a fresh private state file in a temporary directory, removed on exit. While the
    context is open, ``GPULET_NVML_LIB``, ``GPULET_FAKE_NVML_SPEC`` and
    ``GPULET_FAKE_NVML_STATE`` point at the fake; on exit the previous environment returns.
    """
    path = validate_spec(spec)
    library = fake_library_path()
    temp_dir: pathlib.Path | None = None
    if state_path is None:
        temp_dir = pathlib.Path(tempfile.mkdtemp(prefix="gpulet-sim-"))
        state = temp_dir / "state.json"
    else:
        state = pathlib.Path(state_path)
    saved = {name: os.environ.get(name) for name in _SIMULATION_VARS}
    try:
        control = FakeNvml(path, state, library=library)
        if temp_dir is not None:
            control.reset()
        os.environ[ENV_NVML_LIB] = os.fspath(library)
        os.environ[ENV_SPEC] = os.fspath(path)
        os.environ[ENV_STATE] = os.fspath(state)
        os.environ[ENV_FAKE_LIBRARY] = os.fspath(library)
        yield Simulation(
            spec_path=path,
            state_path=state,
            library_path=library,
            control=control,
            env=dict(os.environ),
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _control_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpulet.fakectl",
        description="Drive a running simulated node from outside its processes.",
    )
    p.add_argument("--spec", required=True, help="the node spec (shipped name or path)")
    p.add_argument(
        "--state",
        help="the node's state file (default: $GPULET_FAKE_NVML_STATE, else the spec's default)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    x = sub.add_parser("inject-xid", help="deliver an XID event on a GPU")
    x.add_argument("--gpu", type=int, required=True)
    x.add_argument("--xid", type=int, required=True)
    x.add_argument("--gpu-instance", type=int)
    x.add_argument("--compute-instance", type=int)
    for name, text in (
        ("fall-off-bus", "make a GPU fall off the bus"),
        ("restore-gpu", "bring a lost GPU back"),
        ("reset-gpu", "reset a GPU: it falls off the bus (XID 79) and comes back"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("--gpu", type=int, required=True)
    f = sub.add_parser("fail", help="make an NVML call return an error code")
    f.add_argument("--call", required=True)
    f.add_argument("--code", type=int, required=True)
    f.add_argument("--gpu", type=int)
    f.add_argument("--times", type=int)
    d = sub.add_parser("delay", help="make an NVML call take longer")
    d.add_argument("--call", required=True)
    d.add_argument("--seconds", type=float, required=True)
    d.add_argument("--gpu", type=int)
    m = sub.add_parser("set-metric", help="set a metric value on a GPU")
    m.add_argument("--gpu", type=int, required=True)
    m.add_argument("--name", required=True)
    m.add_argument("--value", type=int, required=True)
    sub.add_parser("clear-faults", help="clear every injected fault, bring lost GPUs back")
    sub.add_parser("reset", help="reset the node to its spec's initial state")
    sub.add_parser("state", help="print the shared state as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gpulet.fakectl --spec S [--state F] COMMAND ...``: one control command."""
    args = _control_parser().parse_args(argv)
    try:
        ctl = FakeNvml(args.spec, args.state or os.environ.get(ENV_STATE) or None)
        cmd = args.command
        if cmd == "inject-xid":
            ctl.inject_xid(args.gpu, args.xid, args.gpu_instance, args.compute_instance)
        elif cmd == "fall-off-bus":
            ctl.fall_off_bus(args.gpu)
        elif cmd == "restore-gpu":
            ctl.restore_gpu(args.gpu)
        elif cmd == "reset-gpu":
            ctl.fall_off_bus(args.gpu)
            ctl.restore_gpu(args.gpu)
        elif cmd == "fail":
            ctl.fail(args.call, args.code, args.gpu, args.times)
        elif cmd == "delay":
            ctl.delay(args.call, args.seconds, args.gpu)
        elif cmd == "set-metric":
            ctl.set_metric(args.gpu, args.name, args.value)
        elif cmd == "clear-faults":
            ctl.clear_faults()
        elif cmd == "reset":
            ctl.reset()
        else:
            print(json.dumps(ctl.state(), indent=2, sort_keys=True))
    except (SpecError, FakeNvmlError, FakeLibraryNotFoundError) as e:
        print(f"gpulet.sim: {e}", file=sys.stderr)
        return 2
    return 0
