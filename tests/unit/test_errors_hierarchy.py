"""Every exception class gpulet defines derives from gpulet.errors.GpuletError.

The modules are found by walking the package, so a class added later that forgets the base fails
here without anyone listing it. The extension (``gpulet._core``) is walked like the rest.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gpulet
from gpulet.errors import GpuletError

# Not imported: generated protobuf code (defines no exceptions of ours), and the entry point
# (importing it runs the CLI). No module needs a GPU to be imported (NVML is loaded on the first
# call, never at import); one that ever does belongs here, with the reason.
SKIPPED_PREFIXES = ("gpulet._proto",)
SKIPPED = {"gpulet.__main__"}

_walk_errors: list[str] = []


def _module_names() -> list[str]:
    names = [
        info.name
        for info in pkgutil.walk_packages(gpulet.__path__, "gpulet.", onerror=_walk_errors.append)
    ]
    # A package that failed to import hides its submodules: test it too, to show the error.
    names += _walk_errors
    return sorted(
        {n for n in names if n not in SKIPPED and not n.startswith(SKIPPED_PREFIXES)},
    )


MODULES = _module_names()


def _exception_classes(module_name: str) -> list[type[BaseException]]:
    """The exception classes of gpulet's own found in the module's namespace (defined there or
    imported into it)."""
    module = importlib.import_module(module_name)
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__.startswith("gpulet")
        and not obj.__module__.startswith(SKIPPED_PREFIXES)
    ]


def _name(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_walk_finds_the_modules_and_their_exceptions() -> None:
    assert not _walk_errors, f"packages that could not be imported: {_walk_errors}"
    for expected in ("gpulet._core", "gpulet.errors", "gpulet.sim", "gpulet.agent.inotify"):
        assert expected in MODULES
    found = {_name(c) for m in MODULES for c in _exception_classes(m)}
    for expected in (
        "gpulet.errors.NvmlError",
        "gpulet.errors.SpecError",
        "gpulet.sim.FakeNvmlError",
        "gpulet.agent.inotify.InotifyError",
        "gpulet.config._errors.ConfigError",
    ):
        assert expected in found


@pytest.mark.parametrize("module_name", MODULES)
def test_every_exception_derives_from_gpulet_error(module_name: str) -> None:
    wrong = [
        _name(cls) for cls in _exception_classes(module_name) if not issubclass(cls, GpuletError)
    ]
    assert not wrong, f"not derived from gpulet.errors.GpuletError: {wrong}"


def test_existing_except_clauses_keep_working() -> None:
    from gpulet.agent.inotify import InotifyError
    from gpulet.errors import SpecError
    from gpulet.sim import FakeLibraryNotFoundError, FakeNvmlError
    from gpulet.testing.nvidia_plugin import NvidiaPluginError

    assert issubclass(SpecError, ValueError)
    assert issubclass(FakeNvmlError, RuntimeError)
    assert issubclass(FakeLibraryNotFoundError, FileNotFoundError)
    assert issubclass(NvidiaPluginError, RuntimeError)
    e = InotifyError(28, "inotify_add_watch failed")
    assert isinstance(e, OSError)
    assert (e.errno, e.strerror) == (28, "inotify_add_watch failed")


def test_sim_loaded_on_its_own_keeps_its_bases(tmp_path: Path) -> None:
    """The fake's tests load sim.py by path when the package cannot be imported (its extension
    not built); its exceptions must still be defined, with the same bases."""
    sim_py = Path(gpulet.__file__).with_name("sim.py")
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.modules["gpulet._core"] = None  # the extension not built
        try:
            import gpulet
        except ImportError:
            pass
        else:
            raise SystemExit("gpulet imported without its extension")
        spec = importlib.util.spec_from_file_location("sim_alone", {str(sim_py)!r})
        sim = importlib.util.module_from_spec(spec)
        sys.modules["sim_alone"] = sim
        spec.loader.exec_module(sim)
        assert issubclass(sim.SpecError, ValueError)
        assert issubclass(sim.FakeNvmlError, RuntimeError)
        assert issubclass(sim.FakeLibraryNotFoundError, FileNotFoundError)
        for cls in (sim.SpecError, sim.FakeNvmlError, sim.FakeLibraryNotFoundError):
            assert issubclass(cls, sim.GpuletError), cls
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
