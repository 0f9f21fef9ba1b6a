"""The command line: ``gpulet simulate`` and ``gpulet discover``."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import gpulet
from gpulet import sim
from gpulet.cli import main

pytestmark = pytest.mark.usefixtures("fake_library")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpulet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_python_m_gpulet_simulate_prints_the_node() -> None:
    r = run("simulate", "--spec", "dgx-h100", "--print")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    rows = [line for line in out.splitlines() if re.match(r"^\d+\s+NVIDIA H100 80GB HBM3\s", line)]
    assert len(rows) == 8
    assert "81559 MiB" in rows[0]
    assert "00000000:1B:00.0" in rows[0]
    assert "Topology (NVSwitch)" in out
    matrix = [line.split() for line in out.splitlines() if re.match(r"^GPU\d\s", line)]
    assert len(matrix) == 8
    assert matrix[0][:9] == ["GPU0", "X", *["NV18"] * 7]
    assert matrix[0][9:] == ["0-55,112-167", "0"]
    assert matrix[7][9:] == ["56-111,168-223", "1"]
    assert "MIG profiles: NVIDIA H100 80GB HBM3 (GPU 0, 1, 2, 3, 4, 5, 6, 7)" in out
    assert re.search(r"^\s+9\s+3g\.40gb\s+3\s+4\s+40448 MiB\s+2\s+0,4$", out, re.M), out
    assert re.search(r"^\s+19\s+1g\.10gb\s+1\s+1\s+9984 MiB\s+7\s+0,1,2,3,4,5,6$", out, re.M)


def test_simulate_pcie_levels_and_mig_devices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--spec", "mixed-pcie", "--print"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"^GPU\d+\s", line)]
    matrix = {row[0]: row[1:] for row in rows}
    assert matrix["GPU0"][:6] == ["X", "PIX", "PHB", "PHB", "SYS", "SYS"]
    assert matrix["GPU4"][:6] == ["SYS", "SYS", "SYS", "SYS", "X", "NV4"]
    assert "GPU 5 MIG 2g.12gb" in out
    assert "placement 0:2" in out
    assert "Enabled" in out
    assert "N/A" in out
    assert "MIG profiles: NVIDIA A30 (GPU 4, 5)" in out


def test_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--spec", "dgx1-volta", "--print", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["gpus"]) == 8
    assert data["topology"]["nvswitch"] is False
    assert [0, 3, 2] in data["topology"]["nvlinks"]
    assert data["topology"]["numa"] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert data["mig_profiles"] == {}
    assert data["gpus"][0]["cpu_affinity"] == "0-19,40-59"


def test_simulate_takes_a_spec_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "my-node.yaml"
    spec.write_text(sim.spec_path("single-t4").read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["simulate", "--spec", str(spec), "--print"]) == 0
    out = capsys.readouterr().out
    assert "Tesla T4" in out
    assert "1 GPU," in out


def test_an_unknown_spec_name_lists_the_shipped_ones() -> None:
    r = run("simulate", "--spec", "dgx-h999", "--print")
    assert r.returncode == 2
    assert r.stdout == ""
    assert "--spec" in r.stderr
    assert "'dgx-h999'" in r.stderr
    for name in sim.shipped_specs():
        assert name in r.stderr


def test_a_bad_spec_file_names_the_field(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "version: v1\nname: bad\ndriver_version: '570.1'\n"
        "numa_nodes: [{id: 0, cpus: '0-3'}]\n"
        "gpus: [{model: H100-81GB, pci_bus_id: '00000000:01:00.0', numa_node: 0}]\n",
        encoding="utf-8",
    )
    assert main(["simulate", "--spec", str(spec), "--print"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpulet: ")
    assert "H100-81GB" in err
    assert "model" in err


def test_discover_on_the_simulated_node() -> None:
    with gpulet.simulated("hgx-h200") as s:
        r = run("discover", "--json", env=s.env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["gpus"]) == 8
    assert data["topology"]["nvswitch"] is True
    assert data["gpus"][7]["mig_enabled"] is True
    assert {m["profile_name"] for m in data["gpus"][7]["mig_devices"]} == {"3g.71gb", "2g.35gb"}
    assert "NVIDIA H200" in data["mig_profiles"]


def test_discover_without_nvml_is_one_sentence_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULET_")}
    env["GPULET_NVML_LIB"] = "/nonexistent/libnvidia-ml.so.1"
    r = run("discover", env=env)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gpulet: NVML library not found: /nonexistent/libnvidia-ml.so.1")


def test_discover_library_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["discover", "--library", "/nonexistent/x.so"]) == 2
    assert "NVML library not found: /nonexistent/x.so" in capsys.readouterr().err


def test_an_nvml_failure_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with gpulet.simulated("single-t4") as s:
        s.control.fail("nvmlDeviceGetName", 15, gpu=0)
        assert main(["discover"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpulet: nvmlDeviceGetName on GPU 0 failed:")


def test_simulate_without_the_fake_says_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(sim.ENV_FAKE_LIBRARY, "/nonexistent/libfakenvml.so")
    assert main(["simulate", "--spec", "single-t4", "--print"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpulet: GPULET_FAKE_NVML_PATH names /nonexistent/libfakenvml.so")
    assert "cargo build -p fakenvml" in err


def test_help_says_what_simulate_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--print" in out
    assert "--root" in out
    assert "whole agent" in out
    for name in sim.shipped_specs():
        assert name in out


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
