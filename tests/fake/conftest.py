"""Fixtures for the fake NVML's tests.

The fake is located through ``gpulet.sim.fake_library_path()`` (set ``GPULET_FAKE_NVML_PATH``
or build it with ``cargo build -p fakenvml``); nothing is built here. ``gpulet.sim`` is loaded on
its own when the package cannot be imported yet (the compiled extension is not built).

Everything the tests use comes through the ``kit`` fixture, so the tests import nothing from
this file (which pytest may import under any name).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pathlib
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from typing import Any

import pynvml
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _load_sim() -> types.ModuleType:
    try:
        return importlib.import_module("gpulet.sim")
    except ImportError:
        path = REPO / "python" / "gpulet" / "sim.py"
        spec = importlib.util.spec_from_file_location("gpulet_sim_standalone", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


sim = _load_sim()

# Node specs the tests write into tmp_path.
VOLTA_MESH = """
version: v1
name: volta-mesh
driver_version: "535.183.01"
numa_nodes:
  - {id: 0, cpus: "0-19"}
  - {id: 1, cpus: "20-39"}
gpus:
  - {model: V100, pci_bus_id: "00000000:06:00.0", numa_node: 0}
  - {model: V100, pci_bus_id: "00000000:07:00.0", numa_node: 0}
  - {model: V100, pci_bus_id: "00000000:85:00.0", numa_node: 1}
  - {model: V100, pci_bus_id: "00000000:86:00.0", numa_node: 1}
nvlinks:
  - {gpus: [0, 1], links: 2}
  - {gpus: [0, 2], links: 1}
  - {gpus: [1, 3], links: 1}
  - {gpus: [2, 3], links: 2}
pcie:
  - {gpus: [0, 1], level: single-switch}
  - {gpus: [2, 3], level: multi-switch}
"""

MIXED_PCIE = """
version: v1
name: mixed-pcie
driver_version: "570.124.06"
numa_nodes:
  - {id: 0, cpus: "0-15"}
  - {id: 1, cpus: "16-31"}
gpus:
  - {model: L4, pci_bus_id: "00000000:17:00.0", numa_node: 0}
  - {model: L4, pci_bus_id: "00000000:18:00.0", numa_node: 0}
  - {model: A30, pci_bus_id: "00000000:B1:00.0", numa_node: 1}
  - {model: A30, pci_bus_id: "00000000:CA:00.0", numa_node: 1}
pcie:
  - {gpus: [0, 1], level: single-switch}
  - {gpus: [3, 2], level: host-bridge}
"""

A100_MIG = """
version: v1
name: a100-mig
driver_version: "580.82.07"
numa_nodes:
  - {id: 0, cpus: "0-63"}
nvswitches: 6
gpus:
  - {model: A100-SXM4-40GB, pci_bus_id: "00000000:07:00.0", numa_node: 0, mig_enabled: true,
     mig_devices: [{profile: 3g.20gb, start: 4}, {profile: 1g.5gb, start: 0}]}
  - {model: A100-SXM4-40GB, pci_bus_id: "00000000:0F:00.0", numa_node: 0}
"""


@pytest.fixture
def write_spec(tmp_path: pathlib.Path) -> Callable[..., pathlib.Path]:
    """Write spec text to ``tmp_path/<name>.yaml``."""

    def write(text: str, name: str = "node") -> pathlib.Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def _pynvml_uses_the_fake() -> Iterator[None]:
    """Point pynvml at the fake for each test here.

    pynvml loads ``libnvidia-ml.so.1`` by name. In a process that already holds a real driver's
    library (the hardware tier loads it while collecting), that name finds the real one, not the
    fake loaded by path; so hand pynvml the fake explicitly, and give back what it had after.
    """
    fake = sim._library(sim.fake_library_path())
    saved = pynvml.nvmlLib
    pynvml.nvmlLib = fake
    pynvml._nvmlGetFunctionPointer_cache.clear()
    try:
        yield
    finally:
        pynvml.nvmlLib = saved
        pynvml._nvmlGetFunctionPointer_cache.clear()


@contextlib.contextmanager
def nvml_on(spec: str | pathlib.Path, **kwargs: Any) -> Iterator[Any]:
    """A simulated node with pynvml initialised on it in this process."""
    with sim.simulated(spec, **kwargs) as simulation:
        pynvml.nvmlInit()
        try:
            yield simulation
        finally:
            pynvml.nvmlShutdown()


CHILD_PRELUDE = """
import ctypes, os, sys
ctypes.CDLL(os.environ["GPULET_NVML_LIB"], mode=ctypes.RTLD_GLOBAL)
import pynvml
pynvml.nvmlInit()
"""


def child(code: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    """Start a Python process that loads the fake and initialises pynvml, then runs ``code``."""
    script = CHILD_PRELUDE + textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def run_child(code: str, env: dict[str, str]) -> str:
    """Run ``code`` in a child (see :func:`child`) to completion; return its stdout."""
    proc = child(code, env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err}"
    return out


class Kit:
    """What the fake's tests need: the sim module, specs, pynvml sessions, child processes."""

    sim = sim
    VOLTA_MESH = VOLTA_MESH
    MIXED_PCIE = MIXED_PCIE
    A100_MIG = A100_MIG
    nvml_on = staticmethod(nvml_on)
    child = staticmethod(child)
    run_child = staticmethod(run_child)

    def __init__(self, write_spec: Callable[..., pathlib.Path]) -> None:
        self.write_spec = write_spec


@pytest.fixture
def kit(write_spec: Callable[..., pathlib.Path]) -> Kit:
    return Kit(write_spec)
