"""The CDI spec for the node's GPUs and MIG devices, and its atomic write."""

from __future__ import annotations

import json
import os
import pathlib
import stat
from typing import Any

import pytest

import gpulet
from gpulet import cdi
from gpulet._core import Node

pytestmark = pytest.mark.usefixtures("fake_library")


@pytest.fixture(scope="module")
def hgx_h200(fake_library: pathlib.Path) -> Node:
    with gpulet.simulated("hgx-h200"):
        return gpulet.discover()


def by_name(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in spec["devices"]}


def nodes(device: dict[str, Any]) -> list[dict[str, str]]:
    found: list[dict[str, str]] = device["containerEdits"]["deviceNodes"]
    return found


def test_spec_names_every_gpu_and_mig_device(hgx_h200: Node) -> None:
    spec = cdi.build_spec(hgx_h200)
    assert spec["cdiVersion"] == cdi.CDI_VERSION
    assert spec["kind"] == "k8s.device-plugin.nvidia.com/gpu"
    devices = by_name(spec)
    g0, g7 = hgx_h200.gpus[0], hgx_h200.gpus[7]
    assert nodes(devices[g0.uuid]) == [{"path": "/dev/nvidia0"}]
    assert nodes(devices["0"]) == [{"path": "/dev/nvidia0"}]
    m = g7.mig_devices[1]
    assert nodes(devices[m.uuid]) == [{"path": "/dev/nvidia7"}]
    assert "7:1" in devices
    assert len(nodes(devices["all"])) == 8
    assert len(devices) == 2 * (8 + 2) + 1
    assert cdi.device_name(m.uuid) == f"k8s.device-plugin.nvidia.com/gpu={m.uuid}"
    assert cdi.spec_device_names(spec)[0] == f"k8s.device-plugin.nvidia.com/gpu={g0.uuid}"
    assert spec["containerEdits"] == {"env": ["NVIDIA_VISIBLE_DEVICES=void"], "deviceNodes": []}


def test_dev_root_control_nodes_and_mig_capabilities(
    hgx_h200: Node, tmp_path: pathlib.Path
) -> None:
    dev_root = tmp_path / "host"
    (dev_root / "dev").mkdir(parents=True)
    (dev_root / "dev" / "nvidiactl").touch()
    (dev_root / "dev" / "nvidia-uvm").touch()
    driver = tmp_path / "driver"
    caps = driver / "proc/driver/nvidia-caps"
    caps.mkdir(parents=True)
    g7 = hgx_h200.gpus[7]
    m = g7.mig_devices[0]
    gi, ci = m.gpu_instance_id, m.compute_instance_id
    caps.joinpath("mig-minors").write_text(
        f"config 1\nmonitor 2\ngpu7/gi{gi}/access 66\ngpu7/gi{gi}/ci{ci}/access 67\n",
        encoding="utf-8",
    )
    spec = cdi.build_spec(hgx_h200, dev_root=dev_root, driver_root=driver, gpus=[7])
    devices = by_name(spec)
    assert set(devices) == {g7.uuid, "7", m.uuid, "7:0", g7.mig_devices[1].uuid, "7:1", "all"}
    assert nodes(devices[m.uuid]) == [
        {"path": "/dev/nvidia7", "hostPath": f"{dev_root}/dev/nvidia7"},
        {
            "path": "/dev/nvidia-caps/nvidia-cap66",
            "hostPath": f"{dev_root}/dev/nvidia-caps/nvidia-cap66",
        },
        {
            "path": "/dev/nvidia-caps/nvidia-cap67",
            "hostPath": f"{dev_root}/dev/nvidia-caps/nvidia-cap67",
        },
    ]
    assert spec["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidiactl", "hostPath": f"{dev_root}/dev/nvidiactl"},
        {"path": "/dev/nvidia-uvm", "hostPath": f"{dev_root}/dev/nvidia-uvm"},
    ]
    # No libraries under that driver root: no mounts, no hook.
    assert "mounts" not in spec["containerEdits"]


def test_driver_libraries_are_optional_mounts(hgx_h200: Node, tmp_path: pathlib.Path) -> None:
    lib = tmp_path / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libcuda.so.570.133.20").write_bytes(b"\x7fELF")
    (lib / "libcuda.so.1").symlink_to("libcuda.so.570.133.20")
    (lib / "libcuda.so").symlink_to("libcuda.so.1")  # the dev symlink is not mounted
    (lib / "libnvidia-ml.so.1").write_bytes(b"\x7fELF")
    (lib / "libunrelated.so.1").write_bytes(b"")
    (tmp_path / "usr/bin").mkdir()
    (tmp_path / "usr/bin/nvidia-smi").write_bytes(b"#!")
    spec = cdi.build_spec(hgx_h200, driver_root=tmp_path, hook_path="/opt/nvidia-ctk")
    edits = spec["containerEdits"]
    mounts = {m["containerPath"]: m["hostPath"] for m in edits["mounts"]}
    assert mounts == {
        "/usr/bin/nvidia-smi": f"{tmp_path}/usr/bin/nvidia-smi",
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1": f"{lib}/libcuda.so.570.133.20",
        "/usr/lib/x86_64-linux-gnu/libcuda.so.570.133.20": f"{lib}/libcuda.so.570.133.20",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1": f"{lib}/libnvidia-ml.so.1",
    }
    assert edits["mounts"][0]["options"] == ["ro", "nosuid", "nodev", "bind"]
    (hook,) = edits["hooks"]
    assert hook["path"] == "/opt/nvidia-ctk"
    assert hook["args"][-2:] == ["--folder", "/usr/lib/x86_64-linux-gnu"]


def test_write_is_atomic_and_world_readable(hgx_h200: Node, tmp_path: pathlib.Path) -> None:
    root = tmp_path / "cdi"
    spec = cdi.build_spec(hgx_h200)
    path = cdi.write_spec(spec, root)
    assert path == root / cdi.SPEC_FILE
    assert json.loads(path.read_text(encoding="utf-8")) == spec
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(root) == [cdi.SPEC_FILE]
    inode = path.stat().st_ino
    cdi.write_spec({**spec, "devices": spec["devices"][:1]}, root)
    assert path.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert len(json.loads(path.read_text(encoding="utf-8"))["devices"]) == 1
    assert cdi.remove_spec(root)
    assert not cdi.remove_spec(root)


def test_a_failed_write_keeps_the_old_spec(
    hgx_h200: Node, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = cdi.build_spec(hgx_h200)
    path = cdi.write_spec(spec, tmp_path)
    before = path.read_bytes()

    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space"):
        cdi.write_spec({"cdiVersion": "0.5.0"}, tmp_path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [cdi.SPEC_FILE]


def test_device_paths() -> None:
    assert cdi.device_paths(2) == ["/dev/nvidia2"]
    assert cdi.device_paths(2, (1, 0)) == ["/dev/nvidia2"]
    assert cdi.device_paths(2, (1, 0), {"gpu2/gi1/access": 12}) == [
        "/dev/nvidia2",
        "/dev/nvidia-caps/nvidia-cap12",
    ]
    assert cdi.read_mig_minors("/nonexistent") == {}


def test_spec_directories_have_explicit_modes_whatever_the_umask(tmp_path: pathlib.Path) -> None:
    old = os.umask(0)
    try:
        root = tmp_path / "run" / "cdi"
        cdi.write_spec({"cdiVersion": cdi.CDI_VERSION, "kind": cdi.KIND, "devices": []}, root)
    finally:
        os.umask(old)
    for d in (root, root.parent):
        assert stat.S_IMODE(d.stat().st_mode) == cdi.DIR_MODE, d
    assert stat.S_IMODE((root / cdi.SPEC_FILE).stat().st_mode) == 0o644
    # An existing directory keeps its mode.
    tmp_path.chmod(0o700)
    cdi.write_spec({"cdiVersion": cdi.CDI_VERSION, "kind": cdi.KIND, "devices": []}, root)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
