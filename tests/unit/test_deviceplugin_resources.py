"""Which resources and devices the device plugin advertises, per MIG strategy and sharing."""

from __future__ import annotations

import collections
import pathlib
from typing import Any

import pytest

import gpulet
from gpulet import config
from gpulet._core import Node
from gpulet.deviceplugin import ResourceError, build_resources, mig_resource_name
from gpulet.deviceplugin.resources import ResourceSet

pytestmark = pytest.mark.usefixtures("fake_library")

SINGLE_MIG_SPEC = """\
version: v1
name: single-mig
numa_nodes: [{id: 0, cpus: "0-7"}, {id: 1, cpus: "8-15"}]
gpus:
  - model: A100-SXM4-40GB
    pci_bus_id: "00000000:01:00.0"
    numa_node: 0
    mig_enabled: true
    mig_devices: [{profile: 1g.5gb, start: 0}, {profile: 1g.5gb, start: 1}]
  - model: A100-SXM4-40GB
    pci_bus_id: "00000000:81:00.0"
    numa_node: 1
    mig_enabled: true
    mig_devices: [{profile: 1g.5gb, start: 0}, {profile: 1g.5gb, start: 2}]
"""


def discover(spec: str | pathlib.Path) -> Node:
    with gpulet.simulated(spec):
        return gpulet.discover()


@pytest.fixture(scope="module")
def dgx_h100(fake_library: pathlib.Path) -> Node:
    return discover("dgx-h100")


@pytest.fixture(scope="module")
def hgx_h200(fake_library: pathlib.Path) -> Node:
    return discover("hgx-h200")


@pytest.fixture(scope="module")
def mixed_pcie(fake_library: pathlib.Path) -> Node:
    return discover("mixed-pcie")


@pytest.fixture(scope="module")
def single_mig(fake_library: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Node:
    path = tmp_path_factory.mktemp("spec") / "single-mig.yaml"
    path.write_text(SINGLE_MIG_SPEC, encoding="utf-8")
    return discover(path)


def inventory(node: Node, **doc: Any) -> ResourceSet:
    return build_resources(node, config.parse({"version": "v1", **doc}))


def test_none_strategy_every_gpu_whole(hgx_h200: Node) -> None:
    inv = inventory(hgx_h200)
    assert inv.counts() == {"nvidia.com/gpu": 8}
    r = inv.resource("nvidia.com/gpu")
    assert [d.id for d in r.devices] == [g.uuid for g in hgx_h200.gpus]
    assert r.whole_gpus
    assert r.socket_name == "gpulet-gpu.sock"
    numa = collections.Counter(d.physical.numa_node for d in r.devices)
    assert numa == {0: 4, 1: 4}
    # The MIG-enabled GPU is advertised whole; its ledger key is its UUID.
    assert r.devices[7].ledger_key() == hgx_h200.gpus[7].uuid


def test_mixed_strategy_names_mig_resources(hgx_h200: Node) -> None:
    inv = inventory(hgx_h200, flags={"migStrategy": "mixed"})
    assert inv.counts() == {
        "nvidia.com/gpu": 7,
        "nvidia.com/mig-2g.35gb": 1,
        "nvidia.com/mig-3g.71gb": 1,
    }
    mig = inv.resource("nvidia.com/mig-3g.71gb").devices[0]
    parent = hgx_h200.gpus[7]
    assert mig.id == parent.mig_devices[0].uuid
    assert mig.physical.index == "7:0"
    assert mig.physical.numa_node == 1
    assert mig.ledger_key() == (parent.uuid, 9, 4)
    assert not inv.resource("nvidia.com/mig-3g.71gb").whole_gpus
    assert inv.gpus[7].model == "NVIDIA H200"


def test_mixed_strategy_on_pcie_node(mixed_pcie: Node) -> None:
    inv = inventory(mixed_pcie, flags={"migStrategy": "mixed"})
    assert inv.counts() == {
        "nvidia.com/gpu": 5,
        "nvidia.com/mig-1g.6gb": 1,
        "nvidia.com/mig-2g.12gb": 1,
    }


def test_mig_resource_names() -> None:
    assert mig_resource_name("1g.10gb") == "nvidia.com/mig-1g.10gb"
    assert mig_resource_name("1g.10gb+me") == "nvidia.com/mig-1g.10gb.me"


def test_single_strategy(single_mig: Node) -> None:
    inv = inventory(single_mig, flags={"migStrategy": "single"})
    assert inv.counts() == {"nvidia.com/gpu": 4}
    ids = [d.id for d in inv.resource("nvidia.com/gpu").devices]
    assert ids == [m.uuid for g in single_mig.gpus for m in g.mig_devices]


def test_single_strategy_refuses_mixed_modes_and_profiles(hgx_h200: Node, mixed_pcie: Node) -> None:
    with pytest.raises(ResourceError, match="same MIG mode"):
        inventory(hgx_h200, flags={"migStrategy": "single"})
    node = discover("hgx-h200")
    assert node.gpus[7].mig_enabled
    with pytest.raises(ResourceError, match="migStrategy mixed"):
        inventory(mixed_pcie, flags={"migStrategy": "single"})


def test_time_slicing_replicas(dgx_h100: Node) -> None:
    inv = inventory(
        dgx_h100,
        sharing={"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 4}]}},
    )
    r = inv.resource("nvidia.com/gpu")
    assert len(r.devices) == 32
    assert r.sharing == "time-slicing"
    assert not r.fail_requests_greater_than_one
    assert r.devices[5].id == f"{dgx_h100.gpus[1].uuid}::1"
    assert r.devices[5].ledger_key() == f"{dgx_h100.gpus[1].uuid}::1"
    assert not r.whole_gpus
    assert {g.replicas for g in inv.gpus} == {4}


def test_rename_by_default_and_rename_opt_in(dgx_h100: Node) -> None:
    ts = {"renameByDefault": True, "resources": [{"name": "nvidia.com/gpu", "replicas": 2}]}
    assert inventory(dgx_h100, sharing={"timeSlicing": ts}).counts() == {
        "nvidia.com/gpu.shared": 16
    }
    renamed = {"resources": [{"name": "nvidia.com/gpu", "replicas": 2, "rename": "gpu-ts"}]}
    # NVIDIA's plugin ignores rename; so does gpulet without its opt-in.
    assert inventory(dgx_h100, sharing={"timeSlicing": renamed}).counts() == {"nvidia.com/gpu": 16}
    assert inventory(
        dgx_h100, sharing={"timeSlicing": renamed}, gpulet={"honorResourceNaming": True}
    ).counts() == {"nvidia.com/gpu-ts": 16}


def test_device_subsets_opt_in(dgx_h100: Node) -> None:
    ts = {"resources": [{"name": "nvidia.com/gpu", "replicas": 3, "devices": [0, 1]}]}
    assert inventory(dgx_h100, sharing={"timeSlicing": ts}).counts() == {"nvidia.com/gpu": 24}
    inv = inventory(dgx_h100, sharing={"timeSlicing": ts}, gpulet={"honorDeviceSubsets": True})
    devices = inv.resource("nvidia.com/gpu").devices
    assert len(devices) == 2 * 3 + 6
    assert [d.replica for d in devices[:7]] == [0, 1, 2, 0, 1, 2, None]
    assert {g.index: g.replicas for g in inv.gpus} == {i: (3 if i < 2 else 0) for i in range(8)}


def test_per_gpu_replicas(dgx_h100: Node) -> None:
    g1 = dgx_h100.gpus[1].uuid
    inv = inventory(
        dgx_h100,
        sharing={"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 2}]}},
        gpulet={"gpuReplicas": [{"devices": [0], "replicas": 5}, {"devices": [g1], "replicas": 1}]},
    )
    per_gpu = collections.Counter(
        d.physical.gpu_index for d in inv.resource("nvidia.com/gpu").devices
    )
    assert per_gpu == {0: 5, 1: 1, **{i: 2 for i in range(2, 8)}}
    unshared = [d for d in inv.resource("nvidia.com/gpu").devices if not d.shared]
    assert [d.id for d in unshared] == [g1]


def test_custom_gpu_names_opt_in(mixed_pcie: Node) -> None:
    resources = {"gpus": [{"pattern": "*L4*", "name": "l4"}, {"pattern": "*", "name": "gpu"}]}
    assert inventory(mixed_pcie, resources=resources).counts() == {"nvidia.com/gpu": 6}
    inv = inventory(mixed_pcie, resources=resources, gpulet={"honorResourceNaming": True})
    assert inv.counts() == {"nvidia.com/l4": 4, "nvidia.com/gpu": 2}


def test_custom_gpu_names_must_cover_every_gpu(mixed_pcie: Node) -> None:
    with pytest.raises(ResourceError, match="matches no pattern"):
        inventory(
            mixed_pcie,
            resources={"gpus": [{"pattern": "*L4*", "name": "l4"}]},
            gpulet={"honorResourceNaming": True},
        )


def test_time_slicing_mig_resources(hgx_h200: Node) -> None:
    inv = inventory(
        hgx_h200,
        flags={"migStrategy": "mixed"},
        sharing={"timeSlicing": {"resources": [{"name": "nvidia.com/mig-3g.71gb", "replicas": 3}]}},
    )
    r = inv.resource("nvidia.com/mig-3g.71gb")
    mig = hgx_h200.gpus[7].mig_devices[0]
    assert [d.id for d in r.devices] == [f"{mig.uuid}::{n}" for n in range(3)]
    # Each replica of a MIG device is a replica of its slice in the ledger.
    uuid = hgx_h200.gpus[7].uuid
    assert [d.ledger_key() for d in r.devices] == [(uuid, 9, 4, n) for n in range(3)]
    # A GPU whose model the ledger does not know: the MIG device by its ID.
    assert r.devices[0].ledger_key(placeable=False) == (uuid, r.devices[0].id)
    assert inv.gpus[7].replicas == 0


def test_mps(dgx_h100: Node, single_mig: Node) -> None:
    mps = {"mps": {"resources": [{"name": "nvidia.com/gpu", "replicas": 4}]}}
    inv = inventory(dgx_h100, flags={"mpsRoot": "/run/nvidia/mps"}, sharing=mps)
    r = inv.resource("nvidia.com/gpu")
    assert (len(r.devices), r.sharing, r.fail_requests_greater_than_one) == (32, "mps", True)
    with pytest.raises(ResourceError, match="MPS cannot share MIG"):
        inventory(
            single_mig,
            flags={"migStrategy": "single", "mpsRoot": "/run/nvidia/mps"},
            sharing=mps,
        )


def test_dra_takes_its_gpus(dgx_h100: Node) -> None:
    inv = inventory(dgx_h100, gpulet={"dra": {"enabled": True, "devices": [6, 7]}})
    assert inv.counts() == {"nvidia.com/gpu": 6}
    assert inv.served == (0, 1, 2, 3, 4, 5)
    assert [g.serves for g in inv.gpus] == ["device-plugin"] * 6 + ["dra"] * 2
    assert inventory(dgx_h100, gpulet={"devicePlugin": {"enabled": False}}).resources == ()


def test_sharing_an_absent_resource_is_noted(dgx_h100: Node) -> None:
    inv = inventory(
        dgx_h100,
        sharing={"timeSlicing": {"resources": [{"name": "nvidia.com/mig-1g.10gb", "replicas": 2}]}},
    )
    assert inv.counts() == {"nvidia.com/gpu": 8}
    assert any("mig-1g.10gb" in n for n in inv.notes)
