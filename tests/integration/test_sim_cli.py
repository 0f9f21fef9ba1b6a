"""``python -m gpulet.fakectl``: the control interface from the shell, as other processes use it."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

import gpulet


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpulet.fakectl", *args], capture_output=True, text=True, timeout=120
    )


def test_commands_reach_the_shared_state(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state.json"
    with gpulet.simulated("dgx-h100", state_path=state) as sim:
        sim.control.reset()
        base = ("--spec", "dgx-h100", "--state", str(state))
        assert run(*base, "inject-xid", "--gpu", "2", "--xid", "48").returncode == 0
        assert run(*base, "fall-off-bus", "--gpu", "5").returncode == 0
        shown = run(*base, "state")
        assert shown.returncode == 0, shown.stderr
        data = json.loads(shown.stdout)
        assert data == sim.control.state()
        assert [(e["gpu"], e["data"]) for e in data["events"] if e["event_type"] == 8][:1] == [
            (2, 48)
        ]
        assert data["gpus"][5]["lost"] is True
        # The simulated node itself sees the lost GPU.
        with pytest.raises(gpulet.errors.NvmlError) as err:
            gpulet.discover()
        assert err.value.gpu == 5
        assert run(*base, "clear-faults").returncode == 0
        assert len(gpulet.discover().gpus) == 8


def test_bad_input_is_named_and_changes_nothing(tmp_path: pathlib.Path) -> None:
    r = run("--spec", "no-such-node", "reset")
    assert r.returncode == 2
    assert "no-such-node" in r.stderr
    state = tmp_path / "state.json"
    with gpulet.simulated("single-t4", state_path=state) as sim:
        sim.control.reset()
        before = sim.control.state()
        r = run(
            "--spec", "single-t4", "--state", str(state), "inject-xid", "--gpu", "7", "--xid", "1"
        )
        assert r.returncode == 2
        assert "gpu" in r.stderr.lower()
        assert sim.control.state() == before
    r = run("--spec", "single-t4", "inject-xid", "--gpu", "0")
    assert r.returncode == 2
    assert "--xid" in r.stderr
