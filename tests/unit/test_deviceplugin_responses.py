"""Allocate responses per device-list strategy, ID strategy and option."""

from __future__ import annotations

import pathlib

import pytest

from gpulet.deviceplugin import PluginDevice, ResponseSettings, container_response
from gpulet.deviceplugin.responses import container_ids
from gpulet.inventory import MigInfo, PhysicalDevice

U0 = "GPU-00000000-0000-0000-0000-000000000000"
U3 = "GPU-33333333-3333-3333-3333-333333333333"
M1 = "MIG-11111111-1111-1111-1111-111111111111"
GPU = "nvidia.com/gpu"
PREFIX = "k8s.device-plugin.nvidia.com/gpu="


def gpu(uuid: str, index: int) -> PhysicalDevice:
    return PhysicalDevice(uuid, str(index), index, uuid, index, 0, "NVIDIA H100 80GB HBM3")


GPU0, GPU3 = gpu(U0, 0), gpu(U3, 3)
MIG = PhysicalDevice(
    M1, "3:1", 3, U3, 3, 1, "NVIDIA A100", MigInfo(1, 2, 0, 9, "3g.20gb", 4, 4, 20 << 30)
)


def whole(*physical: PhysicalDevice) -> list[PluginDevice]:
    return [PluginDevice(p.uuid, GPU, p) for p in physical]


def test_envvar_default() -> None:
    r = container_response(whole(GPU0, GPU3), ResponseSettings(), resource=GPU)
    assert dict(r.envs) == {"NVIDIA_VISIBLE_DEVICES": f"{U0},{U3}"}
    assert (list(r.mounts), list(r.devices), list(r.cdi_devices), dict(r.annotations)) == (
        [],
        [],
        [],
        {},
    )


def test_index_strategy_and_replicas_named_once() -> None:
    devices = [
        PluginDevice(f"{U3}::0", GPU, GPU3, 0, 4),
        PluginDevice(f"{U3}::2", GPU, GPU3, 2, 4),
        PluginDevice(M1, "nvidia.com/mig-3g.20gb", MIG),
    ]
    assert container_ids(devices, "uuid") == [U3, M1]
    assert container_ids(devices, "index") == ["3", "3:1"]
    r = container_response(devices, ResponseSettings(id_strategy="index"), resource=GPU)
    assert r.envs["NVIDIA_VISIBLE_DEVICES"] == "3,3:1"


def test_volume_mounts() -> None:
    r = container_response(
        whole(GPU0, GPU3), ResponseSettings(strategies=("volume-mounts",)), resource=GPU
    )
    assert dict(r.envs) == {"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"}
    assert [(m.container_path, m.host_path) for m in r.mounts] == [
        (f"/var/run/nvidia-container-devices/{U0}", "/dev/null"),
        (f"/var/run/nvidia-container-devices/{U3}", "/dev/null"),
    ]


def test_cdi_annotations_with_a_custom_prefix() -> None:
    settings = ResponseSettings(
        strategies=("cdi-annotations",), cdi_annotation_prefix="cdi.example.com/"
    )
    r = container_response(whole(GPU0), settings, resource=GPU, response_id="abc")
    assert dict(r.annotations) == {"cdi.example.com/nvidia-device-plugin_abc": PREFIX + U0}
    # Only CDI strategies: no environment, no device specs (as NVIDIA's plugin).
    assert dict(r.envs) == {}
    fresh = container_response(whole(GPU0), settings, resource=GPU)
    (key,) = fresh.annotations
    assert key.startswith("cdi.example.com/nvidia-device-plugin_")
    assert len(key.split("/", 1)[1]) <= 63


def test_cdi_cri_with_envvar_and_device_specs(tmp_path: pathlib.Path) -> None:
    (tmp_path / "dev").mkdir()
    for name in ("nvidiactl", "nvidia-uvm", "nvidia0"):
        (tmp_path / "dev" / name).touch()
    settings = ResponseSettings(
        strategies=("envvar", "cdi-cri"),
        pass_device_specs=True,
        dev_root=str(tmp_path),
        id_strategy="index",
    )
    r = container_response(whole(GPU0), settings, resource=GPU)
    assert [c.name for c in r.cdi_devices] == [PREFIX + "0"]
    assert r.envs["NVIDIA_VISIBLE_DEVICES"] == "0"
    specs = [(d.container_path, d.host_path, d.permissions) for d in r.devices]
    assert specs == [
        ("/dev/nvidiactl", f"{tmp_path}/dev/nvidiactl", "rw"),
        ("/dev/nvidia-uvm", f"{tmp_path}/dev/nvidia-uvm", "rw"),
        ("/dev/nvidia0", f"{tmp_path}/dev/nvidia0", "rw"),
    ]


def test_mig_device_specs_use_capability_minors() -> None:
    minors = {"gpu3/gi2/access": 30, "gpu3/gi2/ci0/access": 31}
    settings = ResponseSettings(pass_device_specs=True, mig_minors=minors)
    r = container_response(
        [PluginDevice(M1, "nvidia.com/mig-3g.20gb", MIG)], settings, resource=GPU
    )
    assert [d.container_path for d in r.devices] == [
        "/dev/nvidia3",
        "/dev/nvidia-caps/nvidia-cap30",
        "/dev/nvidia-caps/nvidia-cap31",
    ]


def test_mps_and_feature_variables() -> None:
    settings = ResponseSettings(
        mps_root="/run/nvidia/mps", gds=True, mofed=True, gdrcopy=True, imex_channel_ids=(0,)
    )
    devices = [PluginDevice(f"{U0}::1", GPU, GPU0, 1, 4)]
    r = container_response(devices, settings, resource=GPU, mps=True)
    assert r.envs["CUDA_MPS_PIPE_DIRECTORY"] == "/mps/nvidia.com/gpu/pipe"
    assert [(m.container_path, m.host_path) for m in r.mounts] == [
        ("/mps/nvidia.com/gpu/pipe", "/run/nvidia/mps/nvidia.com/gpu/pipe"),
        ("/dev/shm", "/run/nvidia/mps/shm"),
    ]
    for name in ("NVIDIA_GDS", "NVIDIA_MOFED", "NVIDIA_GDRCOPY"):
        assert r.envs[name] == "enabled"
    assert r.envs["NVIDIA_IMEX_CHANNELS"] == "0"
    assert "CUDA_MPS_PIPE_DIRECTORY" not in container_response(devices, settings, resource=GPU).envs


@pytest.mark.parametrize("strategy", ["envvar", "volume-mounts", "cdi-annotations", "cdi-cri"])
def test_every_strategy_names_every_device(strategy: str) -> None:
    settings = ResponseSettings(strategies=(strategy,))  # type: ignore[arg-type]
    r = container_response(whole(GPU0, GPU3), settings, resource=GPU, response_id="x")
    text = str(r)
    assert U0 in text
    assert U3 in text
