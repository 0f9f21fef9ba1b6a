"""A config meets its node: every per-GPU key must name a GPU or MIG device the node has, and no
resource may advertise more devices than the kubelet takes in one ListAndWatch message.

Before, a key naming a missing GPU was silently ignored, and ``replicas: 1000000`` built a
device list of millions of entries before anything failed.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

import gpulet
from gpulet import config
from gpulet._core import Node
from gpulet.config import MAX_DEVICES_PER_RESOURCE, MAX_REPLICAS, ConfigError, validate_for_node
from gpulet.deviceplugin.resources import ResourceSet, _entry_paths, build_resources
from gpulet.errors import GpuletError

pytestmark = pytest.mark.usefixtures("fake_library")

ALL_MIG_SPEC = """\
version: v1
name: all-mig
numa_nodes: [{id: 0, cpus: "0-7"}]
gpus:
""" + "".join(
    f"""\
  - model: H100-80GB
    pci_bus_id: "00000000:{0x10 + i:02X}:00.0"
    numa_node: 0
    mig_enabled: true
    mig_devices: [{", ".join(f"{{profile: 1g.10gb, start: {s}}}" for s in range(7))}]
"""
    for i in range(8)
)


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
def all_mig(fake_library: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Node:
    path = tmp_path_factory.mktemp("spec") / "all-mig.yaml"
    path.write_text(ALL_MIG_SPEC, encoding="utf-8")
    return discover(path)


def cfg(**doc: Any) -> config.Config:
    return config.parse({"version": "v1", **doc})


def inventory(node: Node, **doc: Any) -> ResourceSet:
    return build_resources(node, cfg(**doc))


def refused(node: Node, **doc: Any) -> ConfigError:
    """The error build_resources raises; validate_for_node raises the same for node-wide keys."""
    with pytest.raises(ConfigError) as e:
        inventory(node, **doc)
    assert isinstance(e.value, GpuletError)
    return e.value


TS2 = {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 2}]}}


def per_gpu(*entries: tuple[list[Any], int]) -> dict[str, Any]:
    return {
        "sharing": TS2,
        "gpulet": {"gpuReplicas": [{"devices": d, "replicas": n} for d, n in entries]},
    }


# --- gpulet.gpuReplicas --------------------------------------------------------------------


def test_gpu_replicas_naming_existing_gpus_still_load(dgx_h100: Node) -> None:
    g7 = dgx_h100.gpus[7].uuid
    doc = per_gpu(([0, 1], 4), ([g7], 1))
    validate_for_node(cfg(**doc), dgx_h100)
    inv = inventory(dgx_h100, **doc)
    assert inv.counts() == {"nvidia.com/gpu": 4 * 2 + 2 * 5 + 1}
    assert not [n for n in inv.notes if "gpuReplicas" in n]


def test_gpu_replicas_by_index_must_exist(dgx_h100: Node) -> None:
    doc = per_gpu(([0], 4), ([9], 3))
    e = refused(dgx_h100, **doc)
    assert (
        str(e) == "gpulet.gpuReplicas[1].devices[0]: GPU 9 does not exist on this node (GPUs 0-7)"
    )
    assert e.path == "gpulet.gpuReplicas[1].devices[0]"
    with pytest.raises(ConfigError, match="GPU 9 does not exist"):
        validate_for_node(cfg(**doc), dgx_h100)


def test_gpu_replicas_by_uuid_must_exist(dgx_h100: Node) -> None:
    missing = "GPU-00000000-0000-0000-0000-000000000000"
    e = refused(dgx_h100, **per_gpu(([0, missing], 4)))
    assert e.path == "gpulet.gpuReplicas[0].devices[1]"
    assert str(e).startswith(f"{e.path}: {missing} does not exist on this node (its GPUs: 0 GPU-")
    assert dgx_h100.gpus[0].uuid in str(e)
    assert "and 0 more" not in str(e)


def test_a_uuid_in_another_case_is_named_as_the_node_writes_it(dgx_h100: Node) -> None:
    upper = "GPU-" + dgx_h100.gpus[3].uuid[4:].upper()
    assert upper != dgx_h100.gpus[3].uuid
    e = refused(dgx_h100, **per_gpu(([upper], 4)))
    assert f"write it as the node reports it: {dgx_h100.gpus[3].uuid}" in str(e)


def test_gpu_replicas_mig_refs_must_exist(hgx_h200: Node) -> None:
    mig = hgx_h200.gpus[7].mig_devices[0]
    # Existing MIG refs load (by index and by UUID).
    inventory(hgx_h200, **per_gpu(([f"7:{mig.index}"], 3)))
    inventory(hgx_h200, **per_gpu(([mig.uuid], 3)))
    e = refused(hgx_h200, **per_gpu(([0], 2), (["7:5"], 3)))
    assert e.path == "gpulet.gpuReplicas[1].devices[0]"
    assert "MIG device 7:5 does not exist on this node (GPU 7 has MIG devices 7:" in str(e)
    e = refused(hgx_h200, **per_gpu((["0:0"], 3)))
    assert "MIG device 0:0 does not exist on this node (GPU 0 has no MIG devices; MIG is " in str(e)
    e = refused(hgx_h200, **per_gpu((["12:0"], 3)))
    assert "GPU 12 does not exist on this node (GPUs 0-7)" in str(e)
    missing = "MIG-00000000-0000-0000-0000-000000000000"
    e = refused(hgx_h200, **per_gpu(([missing], 3)))
    assert f"{missing} does not exist on this node (its MIG devices: 7:" in str(e)


def test_mig_uuid_on_a_node_without_mig(dgx_h100: Node) -> None:
    missing = "MIG-00000000-0000-0000-0000-000000000000"
    e = refused(dgx_h100, **per_gpu(([missing], 3)))
    assert str(e).endswith("(it has no MIG devices)")


def test_a_listing_of_many_devices_is_cut(all_mig: Node) -> None:
    missing = "MIG-00000000-0000-0000-0000-000000000000"
    e = refused(all_mig, flags={"migStrategy": "mixed"}, **per_gpu(([missing], 3)))
    assert "and 48 more)" in str(e)


def test_the_error_names_the_config_file(dgx_h100: Node, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n"
        "    - {name: nvidia.com/gpu, replicas: 2}\n"
        "gpulet:\n  gpuReplicas:\n  - {devices: [8], replicas: 4}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as e:
        build_resources(dgx_h100, config.load(path, env={}))
    assert str(e.value) == (
        f"gpulet.gpuReplicas[0].devices[0]: GPU 8 does not exist on this node (GPUs 0-7) "
        f"(in {path})"
    )


def test_a_gpu_replicas_ref_that_shares_nothing_is_noted(hgx_h200: Node) -> None:
    # With migStrategy none, GPU 7 is advertised whole: its MIG device 7:0 is not a device.
    mig = hgx_h200.gpus[7].mig_devices[0]
    inv = inventory(hgx_h200, **per_gpu(([f"7:{mig.index}"], 3)))
    assert any(
        n.startswith("gpulet.gpuReplicas[0].devices[0]: ") and "not used" in n for n in inv.notes
    )


# --- gpulet.dra.devices --------------------------------------------------------------------


def test_dra_devices_must_exist(dgx_h100: Node) -> None:
    inv = inventory(dgx_h100, gpulet={"dra": {"enabled": True, "devices": [6, 7]}})
    assert inv.served == (0, 1, 2, 3, 4, 5)
    e = refused(dgx_h100, gpulet={"dra": {"enabled": True, "devices": [6, 8]}})
    assert str(e) == "gpulet.dra.devices[1]: GPU 8 does not exist on this node (GPUs 0-7)"
    missing = "GPU-00000000-0000-0000-0000-000000000000"
    e = refused(dgx_h100, gpulet={"dra": {"enabled": True, "devices": [missing]}})
    assert e.path == "gpulet.dra.devices[0]"
    assert f"{missing} does not exist on this node (its GPUs: 0 GPU-" in str(e)
    # By UUID, an existing GPU is fine.
    uuid = dgx_h100.gpus[2].uuid
    inv = inventory(dgx_h100, gpulet={"dra": {"enabled": True, "devices": [uuid]}})
    assert 2 not in inv.served


def test_dra_devices_are_not_checked_while_dra_is_off(dgx_h100: Node) -> None:
    inv = inventory(dgx_h100, gpulet={"dra": {"enabled": False, "devices": [6, 9]}})
    assert inv.counts() == {"nvidia.com/gpu": 8}


# --- sharing.*.resources[].devices (with honorDeviceSubsets) ------------------------------


def subsets(devices: object, name: str = "nvidia.com/gpu", **more: Any) -> dict[str, Any]:
    entry = {"name": name, "replicas": 3, "devices": devices}
    return {
        "sharing": {"timeSlicing": {"resources": [entry]}},
        "gpulet": {"honorDeviceSubsets": True, **more},
    }


def test_sharing_subsets_naming_existing_devices_still_load(dgx_h100: Node) -> None:
    uuid = dgx_h100.gpus[5].uuid
    inv = inventory(dgx_h100, **subsets([0, uuid]))
    assert inv.counts() == {"nvidia.com/gpu": 2 * 3 + 6}
    assert inventory(dgx_h100, **subsets(8)).counts() == {"nvidia.com/gpu": 24}


def test_sharing_subsets_must_name_devices_that_exist(dgx_h100: Node) -> None:
    e = refused(dgx_h100, **subsets([0, 9]))
    assert str(e) == (
        "sharing.timeSlicing.resources[0].devices[1]: GPU 9 does not exist on this node (GPUs 0-7)"
    )
    missing = "GPU-00000000-0000-0000-0000-000000000000"
    e = refused(dgx_h100, **subsets([missing]))
    assert e.path == "sharing.timeSlicing.resources[0].devices[0]"
    assert f"{missing} does not exist on this node" in str(e)


def test_sharing_subset_count_must_fit_the_resource(dgx_h100: Node) -> None:
    e = refused(dgx_h100, **subsets(9))
    assert str(e) == (
        "sharing.timeSlicing.resources[0].devices: asks for the first 9 devices of "
        "nvidia.com/gpu, but this node has 8 (GPUs 0-7)"
    )


def test_sharing_subsets_must_name_devices_of_their_resource(hgx_h200: Node) -> None:
    mixed = {"flags": {"migStrategy": "mixed"}}
    # GPU 7 is split into MIG devices under mixed: it is not an nvidia.com/gpu device.
    e = refused(hgx_h200, **mixed, **subsets([0, 7]))
    assert e.path == "sharing.timeSlicing.resources[0].devices[1]"
    assert "7 is not a device of nvidia.com/gpu on this node (its devices: GPUs 0-6)" in str(e)
    mig = hgx_h200.gpus[7].mig_devices[0]
    name = config.resource_name(f"mig-{mig.profile_name}")
    inv = inventory(hgx_h200, **mixed, **subsets([f"7:{mig.index}"], name=name))
    assert len(inv.resource(name).devices) == 3


def test_sharing_subsets_naming_a_dra_gpu_say_so(dgx_h100: Node) -> None:
    e = refused(dgx_h100, **subsets([0, 7], dra={"enabled": True, "devices": [7]}))
    assert e.path == "sharing.timeSlicing.resources[0].devices[1]"
    assert "gpulet.dra.devices gives it to DRA" in str(e)


def test_sharing_subsets_of_a_resource_the_node_lacks_are_not_checked(dgx_h100: Node) -> None:
    # One config serves many nodes: an entry for a resource this node lacks is noted, as before.
    inv = inventory(dgx_h100, **subsets([9], name="nvidia.com/mig-1g.10gb"))
    assert any("mig-1g.10gb" in n for n in inv.notes)


def test_the_path_counts_entries_the_config_package_ignored(dgx_h100: Node) -> None:
    # Without honorDeviceSubsets, the second entry for nvidia.com/gpu is ignored; the third
    # entry's path must still say [2].
    doc = {
        "sharing": {
            "timeSlicing": {
                "resources": [
                    {"name": "nvidia.com/gpu", "replicas": 2, "devices": [0]},
                    {"name": "nvidia.com/gpu", "replicas": 2, "devices": [1]},
                    {"name": "nvidia.com/mig-1g.10gb", "replicas": MAX_REPLICAS},
                ]
            }
        },
        "flags": {"migStrategy": "mixed"},
    }
    c = cfg(**doc)
    assert "sharing.timeSlicing.resources[1]" in c.ignored
    assert _entry_paths(c) == [
        "sharing.timeSlicing.resources[0]",
        "sharing.timeSlicing.resources[2]",
    ]


# --- the size of one resource's device list ------------------------------------------------


def mig_ts(replicas: int) -> dict[str, Any]:
    return {
        "flags": {"migStrategy": "mixed"},
        "sharing": {
            "timeSlicing": {
                "resources": [
                    {"name": "nvidia.com/gpu", "replicas": 2},
                    {"name": "nvidia.com/mig-1g.10gb", "replicas": replicas},
                ]
            }
        },
    }


def test_one_resource_advertises_at_most_the_limit(all_mig: Node) -> None:
    most = MAX_DEVICES_PER_RESOURCE // 56  # 8 GPUs x 7 MIG devices
    inv = inventory(all_mig, **mig_ts(most))
    assert inv.counts() == {"nvidia.com/mig-1g.10gb": 56 * most}
    e = refused(all_mig, **mig_ts(most + 1))
    assert e.path == "sharing.timeSlicing.resources[1].replicas"
    assert str(e) == (
        f"sharing.timeSlicing.resources[1].replicas: {most + 1} replicas make "
        f"{56 * (most + 1)} nvidia.com/mig-1g.10gb devices on this node, above the "
        f"{MAX_DEVICES_PER_RESOURCE} one resource may advertise (the kubelet takes a resource's "
        f"device list in one message of at most 4 MiB); use at most {most} replicas per device"
    )


def test_the_replica_limit_on_a_whole_node_fits_the_device_list_limit(dgx_h100: Node) -> None:
    inv = inventory(
        dgx_h100,
        sharing={"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 1024}]}},
    )
    assert inv.counts() == {"nvidia.com/gpu": 8 * MAX_REPLICAS}
    assert {g.replicas for g in inv.gpus} == {MAX_REPLICAS}


def test_a_million_replicas_never_reach_the_node(dgx_h100: Node) -> None:
    doc = {"sharing": {"timeSlicing": {"resources": [{"name": "gpu", "replicas": 1_000_000}]}}}
    with pytest.raises(ConfigError, match=r"replicas: 1000000 is above the limit of 1024"):
        config.parse(doc)
