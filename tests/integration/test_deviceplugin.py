"""The device plugin over real unix sockets, driven as the kubelet drives it.

Each test runs the agent (``gpulet.agent.Agent``) on a simulated node (the fake NVML) under a
short temporary kubelet root, with :mod:`gpulet.testing.kubelet` as the kubelet: per MIG
strategy and sharing mode, registration and ListAndWatch; GetPreferredAllocation against the
allocator; Allocate per device-list strategy; every bad input.

The tests that take ``transport`` run once per device-plugin transport (``native``, ``aio``,
chosen with ``GPULET_GRPC_TRANSPORT``): the stock one answers as the native one does.
"""

from __future__ import annotations

import collections
import contextlib
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

import gpulet
from gpulet import alloc, config
from gpulet._proto.deviceplugin.v1beta1 import api_pb2 as dp
from gpulet.agent import Agent, AgentOptions
from gpulet.alloc import ClaimOwner
from gpulet.deviceplugin.server import TRANSPORT_ENV
from gpulet.sim import Simulation
from gpulet.testing.kubelet import AgentThread, KubeletStandin, PluginClient

pytestmark = pytest.mark.usefixtures("fake_library")

GPU = "nvidia.com/gpu"
CDI = "k8s.device-plugin.nvidia.com/gpu="

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


@dataclass
class Node:
    root: pathlib.Path
    sim: Simulation
    kubelet: KubeletStandin
    agent: Agent
    thread: AgentThread

    def plugin(self, resource: str = GPU) -> PluginClient:
        self.kubelet.wait_for_registrations([resource])
        return self.kubelet.plugin(resource)

    def transports(self) -> set[str | None]:
        """The transports the agent's servers serve with."""
        return {server.transport for server in self.agent.servers.values()}

    def ledger(self) -> bytes:
        assert self.agent.state is not None
        state = self.agent.state
        return self.thread.run(state.ledger.snapshot)


@pytest.fixture(params=["native", "aio"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each transport in turn, chosen as a user would: with the environment variable."""
    name = str(request.param)
    monkeypatch.setenv(TRANSPORT_ENV, name)
    return name


def agent_config(root: pathlib.Path, doc: dict[str, Any]) -> config.Config:
    doc = {"version": "v1", **doc}
    doc["gpulet"] = {**doc.get("gpulet", {}), "kubeletRoot": str(root), "metricsPort": 0}
    return config.parse(doc)


@contextlib.contextmanager
def running(
    spec: str | pathlib.Path,
    root: pathlib.Path,
    doc: dict[str, Any] | None = None,
    *,
    health: Any = None,
) -> Iterator[Node]:
    cfg = agent_config(root, doc or {})
    with gpulet.simulated(spec) as s, KubeletStandin(root) as kubelet:
        options = AgentOptions.from_config(cfg, cdi_root=root / "cdi", reconcile_interval=3600)
        agent = Agent(cfg, options, health=health)
        with AgentThread(agent) as thread:
            yield Node(root, s, kubelet, agent, thread)


def ids(response: dp.ListAndWatchResponse) -> list[str]:
    return [d.ID for d in response.devices]


def numa(response: dp.ListAndWatchResponse) -> collections.Counter[int]:
    return collections.Counter(d.topology.nodes[0].ID for d in response.devices)


# --- registration and ListAndWatch per strategy ---------------------------------------------


def test_none_strategy(root: pathlib.Path, transport: str) -> None:
    with running("dgx-h100", root) as n:
        reg = n.kubelet.wait_for_registrations([GPU])[GPU]
        assert n.transports() == {transport}
        assert (reg.version, reg.endpoint) == ("v1beta1", "gpulet-gpu.sock")
        assert reg.options.get_preferred_allocation_available
        assert not reg.options.pre_start_required
        with n.plugin() as p:
            assert p.options() == reg.options
            first = p.watch().next()
            node = gpulet.discover()
            assert ids(first) == [g.uuid for g in node.gpus]
            assert {d.health for d in first.devices} == {"Healthy"}
            assert numa(first) == {0: 4, 1: 4}
            assert all(len(d.topology.nodes) == 1 for d in first.devices)


def test_mixed_strategy_registers_each_mig_resource(root: pathlib.Path) -> None:
    with running("hgx-h200", root, {"flags": {"migStrategy": "mixed"}}) as n:
        resources = [GPU, "nvidia.com/mig-3g.71gb", "nvidia.com/mig-2g.35gb"]
        regs = n.kubelet.wait_for_registrations(resources)
        assert regs["nvidia.com/mig-3g.71gb"].endpoint == "gpulet-mig-3g.71gb.sock"
        g7 = gpulet.discover().gpus[7]
        with n.kubelet.plugin("nvidia.com/mig-3g.71gb") as p:
            (d,) = p.devices()
            assert (d.ID, d.health, d.topology.nodes[0].ID) == (
                g7.mig_devices[0].uuid,
                "Healthy",
                1,
            )
        with n.kubelet.plugin("nvidia.com/mig-2g.35gb") as p:
            assert [d.ID for d in p.devices()] == [g7.mig_devices[1].uuid]
        with n.kubelet.plugin(GPU) as p:
            assert len(p.devices()) == 7
            r = p.allocate([gpulet.discover().gpus[0].uuid])
            assert r.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"].startswith("GPU-")


def test_single_strategy(root: pathlib.Path) -> None:
    spec = root / "single-mig.yaml"
    spec.write_text(SINGLE_MIG_SPEC, encoding="utf-8")
    with running(spec, root, {"flags": {"migStrategy": "single"}}) as n, n.plugin() as p:
        migs = [m.uuid for g in gpulet.discover().gpus for m in g.mig_devices]
        devices = p.devices()
        assert [d.ID for d in devices] == migs
        assert [d.topology.nodes[0].ID for d in devices] == [0, 0, 1, 1]
        r = p.allocate([migs[2]])
        assert r.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == migs[2]
        # GetPreferredAllocation over MIG devices spreads them over the GPUs.
        chosen = p.preferred(migs, [], 2)
        assert {m[:8] for m in chosen} <= {m[:8] for m in migs}
        assert len(chosen) == 2


def test_time_slicing(root: pathlib.Path) -> None:
    doc = {
        "sharing": {
            "timeSlicing": {
                "renameByDefault": True,
                "resources": [{"name": GPU, "replicas": 4}],
            }
        }
    }
    with running("dgx-h100", root, doc) as n, n.plugin("nvidia.com/gpu.shared") as p:
        listed = ids(p.watch().next())
        uuids = [g.uuid for g in gpulet.discover().gpus]
        assert listed == [f"{u}::{i}" for u in uuids for i in range(4)]
        r = p.allocate([listed[1], listed[2]])
        assert r.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == uuids[0]
        chosen = p.preferred(listed[4:], [], 2)
        assert len({c.split("::")[0] for c in chosen}) == 2


def test_mps(root: pathlib.Path, transport: str) -> None:
    doc = {
        "flags": {"mpsRoot": "/run/nvidia/mps"},
        "sharing": {"mps": {"resources": [{"name": GPU, "replicas": 2}]}},
    }
    with running("single-t4", root, doc) as n, n.plugin() as p:
        listed = ids(p.watch().next())
        assert n.transports() == {transport}
        assert len(listed) == 2
        r = p.allocate([listed[0]]).container_responses[0]
        assert r.envs["CUDA_MPS_PIPE_DIRECTORY"] == "/mps/nvidia.com/gpu/pipe"
        assert ("/dev/shm", "/run/nvidia/mps/shm") in [
            (m.container_path, m.host_path) for m in r.mounts
        ]
        # MPS always fails requests for more than one replica (as NVIDIA's plugin).
        with pytest.raises(grpc.RpcError) as info:
            p.allocate(listed)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("opt_in", [False, True])
def test_rename_only_with_opt_in(root: pathlib.Path, opt_in: bool) -> None:
    doc = {
        "sharing": {
            "timeSlicing": {"resources": [{"name": GPU, "replicas": 2, "rename": "gpu-ts"}]}
        },
        "gpulet": {"honorResourceNaming": opt_in},
    }
    name = "nvidia.com/gpu-ts" if opt_in else GPU
    with running("single-t4", root, doc) as n, n.plugin(name) as p:
        assert len(p.devices()) == 2
        assert set(n.kubelet.registered()) == {name}


def test_per_gpu_replicas(root: pathlib.Path) -> None:
    doc = {
        "sharing": {"timeSlicing": {"resources": [{"name": GPU, "replicas": 2}]}},
        "gpulet": {
            "gpuReplicas": [{"devices": [0], "replicas": 6}, {"devices": [5], "replicas": 1}]
        },
    }
    with running("mixed-pcie", root, doc) as n, n.plugin() as p:
        per_gpu = collections.Counter(i.split("::")[0] for i in ids(p.watch().next()))
        uuids = [g.uuid for g in gpulet.discover().gpus]
        assert per_gpu == {uuids[0]: 6, uuids[5]: 1, **{u: 2 for u in uuids[1:5]}}


def test_device_id_strategy_index(root: pathlib.Path) -> None:
    doc = {
        "flags": {
            "plugin": {"deviceIDStrategy": "index", "deviceListStrategy": ["envvar", "cdi-cri"]}
        }
    }
    with running("dgx-h100", root, doc) as n, n.plugin() as p:
        listed = ids(p.watch().next())
        assert all(i.startswith("GPU-") for i in listed)  # the kubelet still sees UUIDs
        r = p.allocate([listed[5], listed[2]]).container_responses[0]
        assert r.envs["NVIDIA_VISIBLE_DEVICES"] == "5,2"
        assert [c.name for c in r.cdi_devices] == [CDI + "5", CDI + "2"]


# --- GetPreferredAllocation -----------------------------------------------------------------


def test_preferred_allocation_is_the_allocators_answer(root: pathlib.Path, transport: str) -> None:
    with running("dgx1-volta", root) as n, n.plugin() as p:
        node = gpulet.discover()
        assert n.transports() == {transport}
        uuid = {g.index: g.uuid for g in node.gpus}
        cases: list[tuple[list[int], list[int], int]] = [
            (list(range(8)), [], 1),
            (list(range(8)), [], 2),
            (list(range(8)), [2], 2),
            (list(range(8)), [], 4),
            ([0, 1, 2, 3, 5, 6, 7], [6], 4),
            ([1, 2, 4, 5, 7], [], 3),
            (list(range(8)), [0, 7], 3),
            (list(range(8)), [], 8),
        ]
        for available, required, size in cases:
            expected = alloc.preferred(node.topology, available, required, size=size)
            got = p.preferred([uuid[i] for i in available], [uuid[i] for i in required], size)
            assert got == [uuid[i] for i in expected], (available, required, size)
        with pytest.raises(grpc.RpcError) as info:
            p.preferred([uuid[0]], [], 2)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- Allocate per strategy ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategies", "check"),
    [
        (["envvar"], lambda r, u: dict(r.envs) == {"NVIDIA_VISIBLE_DEVICES": ",".join(u)}),
        (
            ["volume-mounts"],
            lambda r, u: (
                r.envs["NVIDIA_VISIBLE_DEVICES"] == "/var/run/nvidia-container-devices"
                and [m.container_path for m in r.mounts]
                == [f"/var/run/nvidia-container-devices/{x}" for x in u]
                and {m.host_path for m in r.mounts} == {"/dev/null"}
            ),
        ),
        (
            ["cdi-annotations"],
            lambda r, u: (
                len(r.annotations) == 1
                and next(iter(r.annotations)).startswith("cdi.k8s.io/nvidia-device-plugin_")
                and next(iter(r.annotations.values())) == ",".join(CDI + x for x in u)
                and not r.envs
            ),
        ),
        (
            ["cdi-cri"],
            lambda r, u: [c.name for c in r.cdi_devices] == [CDI + x for x in u] and not r.envs,
        ),
    ],
    ids=["envvar", "volume-mounts", "cdi-annotations", "cdi-cri"],
)
def test_allocate_per_device_list_strategy(
    root: pathlib.Path,
    strategies: list[str],
    check: Callable[[dp.ContainerAllocateResponse, list[str]], bool],
) -> None:
    doc = {"flags": {"plugin": {"deviceListStrategy": strategies}}}
    with running("dgx-h100", root, doc) as n, n.plugin() as p:
        listed = ids(p.watch().next())
        chosen = [listed[3], listed[1]]
        r = p.allocate(chosen)
        (c,) = r.container_responses
        assert check(c, chosen), c
        assert not c.devices
        # The kubelet may call again for the same devices.
        assert p.allocate(chosen).container_responses[0].envs == c.envs


def test_pass_device_specs_and_cdi_spec(root: pathlib.Path) -> None:
    dev_root = root / "host"
    (dev_root / "dev").mkdir(parents=True)
    for name in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia3"):
        (dev_root / "dev" / name).touch()
    doc = {"flags": {"nvidiaDevRoot": str(dev_root), "plugin": {"passDeviceSpecs": True}}}
    with running("dgx-h100", root, doc) as n, n.plugin() as p:
        node = gpulet.discover()
        r = p.allocate([node.gpus[3].uuid]).container_responses[0]
        specs = [(d.container_path, d.host_path, d.permissions) for d in r.devices]
        assert specs == [
            (path, f"{dev_root}{path}", "rw")
            for path in (
                "/dev/nvidiactl",
                "/dev/nvidia-uvm",
                "/dev/nvidia-uvm-tools",
                "/dev/nvidia3",
            )
        ]
        spec = n.agent.cdi_spec
        assert spec == root / "cdi" / "k8s.device-plugin.nvidia.com-gpu.json"
        text = spec.read_text(encoding="utf-8")
        assert node.gpus[3].uuid in text
        assert f"{dev_root}/dev/nvidia3" in text


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("unknown", grpc.StatusCode.INVALID_ARGUMENT, "unknown device ID"),
        ("twice", grpc.StatusCode.INVALID_ARGUMENT, "more than once"),
        ("unhealthy", grpc.StatusCode.FAILED_PRECONDITION, "unhealthy: XID 79"),
        ("replicas", grpc.StatusCode.INVALID_ARGUMENT, "maximum request size for shared resources"),
        ("dra", grpc.StatusCode.FAILED_PRECONDITION, "claim claim-7"),
        ("empty", grpc.StatusCode.INVALID_ARGUMENT, "names no device"),
    ],
)
def test_bad_allocate_requests(
    root: pathlib.Path, transport: str, case: str, code: grpc.StatusCode, needle: str
) -> None:
    ts = {"failRequestsGreaterThanOne": True, "resources": [{"name": GPU, "replicas": 2}]}
    doc = {"sharing": {"timeSlicing": ts}} if case == "replicas" else {}
    with running("dgx-h100", root, doc) as n, n.plugin() as p:
        listed = ids(p.watch().next())
        assert n.transports() == {transport}
        a, b = listed[0], listed[2]
        p.allocate([listed[4]])  # something is held already
        state = n.agent.state
        assert state is not None
        request = {
            "unknown": [a, "GPU-ffffffff-0000-0000-0000-000000000000"],
            "twice": [a, b, a],
            "unhealthy": [a, b],
            "replicas": [a, b],
            "dra": [a, b],
            "empty": [],
        }[case]
        if case == "unhealthy":
            n.thread.run(lambda: state.set_health(b, False, "XID 79"))
        if case == "dra":
            n.thread.run(lambda: state.ledger.allocate(ClaimOwner("claim-7"), [b]))
        before = (n.ledger(), n.thread.run(state.assignments))
        with pytest.raises(grpc.RpcError) as info:
            p.allocate(request)
        assert info.value.code() == code
        assert needle in (info.value.details() or "")
        assert (n.ledger(), n.thread.run(state.assignments)) == before
        assert n.thread.run(lambda: state.holder(a)) is None
        # A good request still works afterwards.
        assert p.allocate([listed[6]]).container_responses


# --- health ---------------------------------------------------------------------------------


def test_health_changes_stream_on_list_and_watch(root: pathlib.Path, transport: str) -> None:
    with running("hgx-h200", root, {"flags": {"migStrategy": "mixed"}}) as n:
        state = n.agent.state
        assert state is not None
        g7 = gpulet.discover().gpus[7]
        with n.plugin("nvidia.com/mig-3g.71gb") as p:
            assert n.transports() == {transport}
            w = p.watch()
            assert w.next().devices[0].health == "Healthy"
            n.thread.run(lambda: state.set_health(g7.uuid, False, "XID 48"))
            w.wait_for(lambda r: r.devices[0].health == "Unhealthy")
            n.thread.run(lambda: state.set_health(g7.uuid, True, "re-probe passed"))
            w.wait_for(lambda r: r.devices[0].health == "Healthy")
            n.thread.run(lambda: state.set_health(g7.uuid, False, "XID 79"))
            with pytest.raises(grpc.RpcError) as info:
                p.allocate([g7.mig_devices[0].uuid])
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_health_engine_drives_list_and_watch(root: pathlib.Path) -> None:
    with running("dgx-h100", root, health=True) as n, n.plugin() as p:
        w = p.watch()
        first = w.next()
        assert {d.health for d in first.devices} == {"Healthy"}
        n.sim.control.inject_xid(0, 48)
        unhealthy = w.wait_for(lambda r: any(d.health == "Unhealthy" for d in r.devices))
        bad = [d for d in unhealthy.devices if d.health == "Unhealthy"]
        assert [d.ID for d in bad] == [first.devices[0].ID]
        assert bad[0].topology.nodes[0].ID == 0
        assert len(unhealthy.devices) == 8
