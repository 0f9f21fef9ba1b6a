"""The DevicePlugin servicer without a transport: bytes in, state calls, bytes out."""

from __future__ import annotations

import pathlib
from typing import Any

import grpc
import pytest

import gpulet
from gpulet import config
from gpulet._core import Node
from gpulet._proto.deviceplugin.v1beta1 import api_pb2 as dp
from gpulet.deviceplugin import ResponseSettings, build_resources, container_response
from gpulet.deviceplugin.servicer import (
    MAX_CONTAINER_REQUESTS,
    MAX_DETAILS,
    SERVICE,
    DevicePluginServicer,
    RpcRefusal,
    clip,
    list_response,
    show_ids,
)
from gpulet.deviceplugin.state import DevicePluginState

pytestmark = pytest.mark.usefixtures("fake_library")

GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def dgx_h100(fake_library: pathlib.Path) -> Node:
    with gpulet.simulated("dgx-h100"):
        return gpulet.discover()


def make(node: Node, settings: ResponseSettings | None = None, **doc: Any) -> DevicePluginServicer:
    cfg = config.parse({"version": "v1", **doc})
    state = DevicePluginState(node, cfg, build_resources(node, cfg))
    return DevicePluginServicer(
        state, state.resources.resource(GPU), settings or ResponseSettings()
    )


def allocate(svc: DevicePluginServicer, *containers: list[str]) -> dp.AllocateResponse:
    request = dp.AllocateRequest(
        container_requests=[dp.ContainerAllocateRequest(devices_ids=c) for c in containers]
    )
    return dp.AllocateResponse.FromString(svc.allocate(request.SerializeToString()))


def ids(svc: DevicePluginServicer) -> list[str]:
    return [d.id for d in svc.resource.devices]


def test_clip_and_show_ids() -> None:
    assert clip("short") == "short"
    assert clip("x" * 30, 10) == "x" * 10 + " ... (20 more characters)"
    assert show_ids(["a", "b"]) == "a,b"
    assert show_ids(["a", "b", "c", "d", "e", "f"]) == "a,b,c,d ... (+2 more)"
    assert RpcRefusal(grpc.StatusCode.INTERNAL, "y" * 5000).details == clip("y" * 5000)
    assert len(clip("y" * 5000)) < MAX_DETAILS + 50


def test_the_unary_methods_by_path(dgx_h100: Node) -> None:
    svc = make(dgx_h100)
    names = {"GetDevicePluginOptions", "GetPreferredAllocation", "Allocate", "PreStartContainer"}
    assert set(svc.unary) == {f"/{SERVICE}/{n}".encode() for n in names}
    options = dp.DevicePluginOptions.FromString(
        svc.unary[b"/v1beta1.DevicePlugin/GetDevicePluginOptions"](b"")
    )
    assert options == dp.DevicePluginOptions(get_preferred_allocation_available=True)
    assert svc.pre_start_container(b"") == dp.PreStartContainerResponse().SerializeToString()


def test_device_list_is_the_list_response(dgx_h100: Node) -> None:
    svc = make(dgx_h100)
    sent = dp.ListAndWatchResponse.FromString(svc.device_list())
    assert sent == list_response(svc.state, GPU)
    assert [d.ID for d in sent.devices] == ids(svc)
    assert {d.topology.nodes[0].ID for d in sent.devices} == {0, 1}


def test_allocate_answers_as_container_response_does(dgx_h100: Node) -> None:
    svc = make(dgx_h100)
    a, b, c = ids(svc)[:3]
    by_id = svc.resource.by_id
    for _ in range(2):  # the second time from the cache
        got = allocate(svc, [a], [b, c])
        want = dp.AllocateResponse(
            container_responses=[
                container_response([by_id[a]], svc.settings, resource=GPU),
                container_response([by_id[b], by_id[c]], svc.settings, resource=GPU),
            ]
        )
        assert got == want
    assert got.container_responses[1].envs["NVIDIA_VISIBLE_DEVICES"] == f"{b},{c}"


def test_a_repeated_request_still_asks_the_state(dgx_h100: Node) -> None:
    svc = make(dgx_h100)
    a = ids(svc)[0]
    first = allocate(svc, [a])
    assert allocate(svc, [a]) == first  # answered from the cache ...
    svc.state.set_health(a, False, "XID 79")
    with pytest.raises(RpcRefusal) as info:  # ... but only once the state agreed
        allocate(svc, [a])
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_answers_that_change_per_call_are_not_cached(
    dgx_h100: Node, tmp_path: pathlib.Path
) -> None:
    svc = make(dgx_h100, ResponseSettings(strategies=("cdi-annotations",)))
    a = ids(svc)[0]
    first, second = (allocate(svc, [a]).container_responses[0] for _ in range(2))
    assert set(first.annotations) != set(second.annotations)  # a fresh UUID each time

    svc = make(dgx_h100, ResponseSettings(pass_device_specs=True, dev_root=str(tmp_path)))
    before = {d.container_path for d in allocate(svc, [a]).container_responses[0].devices}
    assert "/dev/nvidiactl" not in before
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidiactl").write_text("", encoding="utf-8")
    after = {d.container_path for d in allocate(svc, [a]).container_responses[0].devices}
    assert after == before | {"/dev/nvidiactl"}


def test_limits_and_bad_bytes_are_refused_before_the_state(dgx_h100: Node) -> None:
    svc = make(dgx_h100)
    gpus = ids(svc)
    cases: list[tuple[str, bytes, str]] = [
        (
            "allocate",
            dp.AllocateRequest(
                container_requests=[
                    dp.ContainerAllocateRequest(devices_ids=[gpus[0]])
                    for _ in range(MAX_CONTAINER_REQUESTS + 1)
                ]
            ).SerializeToString(),
            f"holds {MAX_CONTAINER_REQUESTS + 1} container requests",
        ),
        (
            "allocate",
            dp.AllocateRequest(
                container_requests=[dp.ContainerAllocateRequest(devices_ids=[*gpus, gpus[0]])]
            ).SerializeToString(),
            "devices_ids names 9 device IDs",
        ),
        (
            "preferred",
            dp.PreferredAllocationRequest(
                container_requests=[
                    dp.ContainerPreferredAllocationRequest(
                        available_deviceIDs=gpus,
                        must_include_deviceIDs=[*gpus, gpus[1]],
                        allocation_size=2,
                    )
                ]
            ).SerializeToString(),
            "must_include_deviceIDs names 9 device IDs",
        ),
        ("allocate", b"\xff\xff\xff", "not a valid AllocateRequest"),
        ("preferred", b"\x0a\x05ab", "not a valid PreferredAllocationRequest"),
    ]
    for rpc, data, needle in cases:
        fn = svc.allocate if rpc == "allocate" else svc.get_preferred_allocation
        with pytest.raises(RpcRefusal) as info:
            fn(data)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in info.value.details
    assert svc.state.assignments() == []


def test_state_refusals_keep_their_code(dgx_h100: Node) -> None:
    svc = make(dgx_h100)
    a = ids(svc)[0]
    svc.state.set_health(a, False, "XID 79")
    with pytest.raises(RpcRefusal) as info:
        allocate(svc, [a])
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "unhealthy: XID 79" in info.value.details
    with pytest.raises(RpcRefusal) as info:
        allocate(svc, ["GPU-nope"])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_observe_gets_each_timed_rpc(dgx_h100: Node) -> None:
    seen: list[str] = []
    cfg = config.parse({"version": "v1"})
    state = DevicePluginState(dgx_h100, cfg, build_resources(dgx_h100, cfg))
    svc = DevicePluginServicer(
        state,
        state.resources.resource(GPU),
        ResponseSettings(),
        observe=lambda rpc, seconds: seen.append(rpc) if seconds >= 0 else None,
    )
    gpus = ids(svc)
    allocate(svc, [gpus[0]])
    request = dp.PreferredAllocationRequest(
        container_requests=[
            dp.ContainerPreferredAllocationRequest(
                available_deviceIDs=gpus, must_include_deviceIDs=[gpus[0]], allocation_size=2
            )
        ]
    )
    chosen = dp.PreferredAllocationResponse.FromString(
        svc.get_preferred_allocation(request.SerializeToString())
    )
    assert len(chosen.container_responses[0].deviceIDs) == 2
    assert seen == ["Allocate", "GetPreferredAllocation"]
