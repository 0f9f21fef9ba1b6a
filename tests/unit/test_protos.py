"""The generated kubelet API modules match upstream's wire format (k8s.io/kubelet at 1.37).

Field numbers, names, types and full gRPC method names are checked against the values read
from upstream's .proto files; a few messages are also checked byte for byte, and one call
goes over a real unix socket by its raw method path.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

REPO = Path(__file__).resolve().parents[2]

APIS = {
    "deviceplugin.v1beta1": "v1beta1",
    "podresources.v1": "v1",
    "dra.v1": "k8s.io.kubelet.pkg.apis.dra.v1",
    "dra.v1beta1": "k8s.io.kubelet.pkg.apis.dra.v1beta1",
    "dra_health.v1alpha1": "v1alpha1",
    "dra_health.v1beta1": "v1beta1",
    "dra_health.v1": "v1",
    "pluginregistration.v1": "pluginregistration",
}


def pb2(api: str) -> ModuleType:
    return importlib.import_module(f"gpulet._proto.{api}.api_pb2")


def pb2_grpc(api: str) -> ModuleType:
    return importlib.import_module(f"gpulet._proto.{api}.api_pb2_grpc")


S = FieldDescriptor.TYPE_STRING
B = FieldDescriptor.TYPE_BOOL
I32 = FieldDescriptor.TYPE_INT32
I64 = FieldDescriptor.TYPE_INT64
U64 = FieldDescriptor.TYPE_UINT64
M = FieldDescriptor.TYPE_MESSAGE
E = FieldDescriptor.TYPE_ENUM
REP = "repeated"
MAP = "map"
OPT = "optional"  # proto3 optional: explicit presence

# (api, message): {field: (number, type, shape)}; shape None = singular. Read from upstream.
FIELDS: dict[tuple[str, str], dict[str, tuple[int, int, str | None]]] = {
    ("deviceplugin.v1beta1", "DevicePluginOptions"): {
        "pre_start_required": (1, B, None),
        "get_preferred_allocation_available": (2, B, None),
    },
    ("deviceplugin.v1beta1", "RegisterRequest"): {
        "version": (1, S, None),
        "endpoint": (2, S, None),
        "resource_name": (3, S, None),
        "options": (4, M, None),
    },
    ("deviceplugin.v1beta1", "Empty"): {},
    ("deviceplugin.v1beta1", "ListAndWatchResponse"): {"devices": (1, M, REP)},
    ("deviceplugin.v1beta1", "TopologyInfo"): {"nodes": (1, M, REP)},
    ("deviceplugin.v1beta1", "NUMANode"): {"ID": (1, I64, None)},
    ("deviceplugin.v1beta1", "Device"): {
        "ID": (1, S, None),
        "health": (2, S, None),
        "topology": (3, M, None),
    },
    ("deviceplugin.v1beta1", "PreStartContainerRequest"): {"devices_ids": (1, S, REP)},
    ("deviceplugin.v1beta1", "PreStartContainerResponse"): {},
    ("deviceplugin.v1beta1", "PreferredAllocationRequest"): {"container_requests": (1, M, REP)},
    ("deviceplugin.v1beta1", "ContainerPreferredAllocationRequest"): {
        "available_deviceIDs": (1, S, REP),
        "must_include_deviceIDs": (2, S, REP),
        "allocation_size": (3, I32, None),
    },
    ("deviceplugin.v1beta1", "PreferredAllocationResponse"): {"container_responses": (1, M, REP)},
    ("deviceplugin.v1beta1", "ContainerPreferredAllocationResponse"): {"deviceIDs": (1, S, REP)},
    ("deviceplugin.v1beta1", "AllocateRequest"): {"container_requests": (1, M, REP)},
    ("deviceplugin.v1beta1", "ContainerAllocateRequest"): {"devices_ids": (1, S, REP)},
    ("deviceplugin.v1beta1", "AllocateResponse"): {"container_responses": (1, M, REP)},
    ("deviceplugin.v1beta1", "ContainerAllocateResponse"): {
        "envs": (1, M, MAP),
        "mounts": (2, M, REP),
        "devices": (3, M, REP),
        "annotations": (4, M, MAP),
        "cdi_devices": (5, M, REP),
    },
    ("deviceplugin.v1beta1", "Mount"): {
        "container_path": (1, S, None),
        "host_path": (2, S, None),
        "read_only": (3, B, None),
    },
    ("deviceplugin.v1beta1", "DeviceSpec"): {
        "container_path": (1, S, None),
        "host_path": (2, S, None),
        "permissions": (3, S, None),
    },
    ("deviceplugin.v1beta1", "CDIDevice"): {"name": (1, S, None)},
    ("podresources.v1", "AllocatableResourcesRequest"): {},
    ("podresources.v1", "AllocatableResourcesResponse"): {
        "devices": (1, M, REP),
        "cpu_ids": (2, I64, REP),
        "memory": (3, M, REP),
    },
    ("podresources.v1", "ListPodResourcesRequest"): {},
    ("podresources.v1", "ListPodResourcesResponse"): {"pod_resources": (1, M, REP)},
    ("podresources.v1", "PodResources"): {
        "name": (1, S, None),
        "namespace": (2, S, None),
        "containers": (3, M, REP),
        "cpu_ids": (4, I64, REP),
        "memory": (5, M, REP),
    },
    ("podresources.v1", "ContainerResources"): {
        "name": (1, S, None),
        "devices": (2, M, REP),
        "cpu_ids": (3, I64, REP),
        "memory": (4, M, REP),
        "dynamic_resources": (5, M, REP),
    },
    ("podresources.v1", "ContainerMemory"): {
        "memory_type": (1, S, None),
        "size": (2, U64, None),
        "topology": (3, M, None),
    },
    ("podresources.v1", "ContainerDevices"): {
        "resource_name": (1, S, None),
        "device_ids": (2, S, REP),
        "topology": (3, M, None),
    },
    ("podresources.v1", "TopologyInfo"): {"nodes": (1, M, REP)},
    ("podresources.v1", "NUMANode"): {"ID": (1, I64, None)},
    ("podresources.v1", "DynamicResource"): {
        "claim_name": (2, S, None),
        "claim_namespace": (3, S, None),
        "claim_resources": (4, M, REP),
    },
    ("podresources.v1", "ClaimResource"): {
        "cdi_devices": (1, M, REP),
        "driver_name": (2, S, None),
        "pool_name": (3, S, None),
        "device_name": (4, S, None),
        "share_id": (5, S, OPT),
    },
    ("podresources.v1", "CDIDevice"): {"name": (1, S, None)},
    ("podresources.v1", "GetPodResourcesRequest"): {
        "pod_name": (1, S, None),
        "pod_namespace": (2, S, None),
    },
    ("podresources.v1", "GetPodResourcesResponse"): {"pod_resources": (1, M, None)},
    ("pluginregistration.v1", "PluginInfo"): {
        "type": (1, S, None),
        "name": (2, S, None),
        "endpoint": (3, S, None),
        "supported_versions": (4, S, REP),
    },
    ("pluginregistration.v1", "RegistrationStatus"): {
        "plugin_registered": (1, B, None),
        "error": (2, S, None),
    },
    ("pluginregistration.v1", "RegistrationStatusResponse"): {},
    ("pluginregistration.v1", "InfoRequest"): {},
}
for _v in ("dra.v1", "dra.v1beta1"):
    FIELDS |= {
        (_v, "NodePrepareResourcesRequest"): {"claims": (1, M, REP)},
        (_v, "NodePrepareResourcesResponse"): {"claims": (1, M, MAP)},
        (_v, "NodePrepareResourceResponse"): {"devices": (1, M, REP), "error": (2, S, None)},
        (_v, "Device"): {
            "request_names": (1, S, REP),
            "pool_name": (2, S, None),
            "device_name": (3, S, None),
            "cdi_device_ids": (4, S, REP),
        }
        | ({"share_id": (5, S, OPT)} if _v == "dra.v1" else {}),
        (_v, "NodeUnprepareResourcesRequest"): {"claims": (1, M, REP)},
        (_v, "NodeUnprepareResourcesResponse"): {"claims": (1, M, MAP)},
        (_v, "NodeUnprepareResourceResponse"): {"error": (1, S, None)},
        (_v, "Claim"): {"namespace": (1, S, None), "uid": (2, S, None), "name": (3, S, None)},
    }
for _v in ("dra_health.v1alpha1", "dra_health.v1beta1", "dra_health.v1"):
    FIELDS |= {
        (_v, "NodeWatchResourcesRequest"): {},
        (_v, "DeviceIdentifier"): {"pool_name": (1, S, None), "device_name": (2, S, None)},
        (_v, "DeviceHealth"): {
            "device": (1, M, None),
            "health": (2, E, None),
            "last_updated_time": (3, I64, None),
            "health_check_timeout_seconds": (4, I64, None),
            "message": (5, S, None),
        },
        (_v, "NodeWatchResourcesResponse"): {"devices": (1, M, REP)},
    }

# Full gRPC method paths the kubelet calls or serves; (path, server streaming).
METHODS: dict[str, set[tuple[str, bool]]] = {
    "deviceplugin.v1beta1": {
        ("/v1beta1.Registration/Register", False),
        ("/v1beta1.DevicePlugin/GetDevicePluginOptions", False),
        ("/v1beta1.DevicePlugin/ListAndWatch", True),
        ("/v1beta1.DevicePlugin/GetPreferredAllocation", False),
        ("/v1beta1.DevicePlugin/Allocate", False),
        ("/v1beta1.DevicePlugin/PreStartContainer", False),
    },
    "podresources.v1": {
        ("/v1.PodResourcesLister/List", False),
        ("/v1.PodResourcesLister/GetAllocatableResources", False),
        ("/v1.PodResourcesLister/Get", False),
    },
    "dra.v1": {
        ("/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources", False),
        ("/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources", False),
    },
    "dra.v1beta1": {
        ("/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources", False),
        ("/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodeUnprepareResources", False),
    },
    "dra_health.v1alpha1": {("/v1alpha1.DRAResourceHealth/NodeWatchResources", True)},
    "dra_health.v1beta1": {("/v1beta1.DRAResourceHealth/NodeWatchResources", True)},
    "dra_health.v1": {("/v1.DRAResourceHealth/NodeWatchResources", True)},
    "pluginregistration.v1": {
        ("/pluginregistration.Registration/GetInfo", False),
        ("/pluginregistration.Registration/NotifyRegistrationStatus", False),
    },
}

GO_PACKAGES = {
    "deviceplugin.v1beta1": "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1",
    "podresources.v1": "k8s.io/kubelet/pkg/apis/podresources/v1",
    "dra.v1": "k8s.io/kubelet/pkg/apis/dra/v1",
    "dra.v1beta1": "k8s.io/kubelet/pkg/apis/dra/v1beta1",
    "dra_health.v1alpha1": "k8s.io/kubelet/pkg/apis/dra-health/v1alpha1",
    "dra_health.v1beta1": "k8s.io/kubelet/pkg/apis/dra-health/v1beta1",
    "dra_health.v1": "k8s.io/kubelet/pkg/apis/dra-health/v1",
    "pluginregistration.v1": "k8s.io/kubelet/pkg/apis/pluginregistration/v1",
}


def _shape(f: FieldDescriptor) -> str | None:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        return MAP
    if f.is_repeated:
        return REP
    if f.has_presence and f.containing_oneof is not None:
        return OPT
    return None


def test_all_apis_load_together() -> None:
    # Two files share proto package v1beta1 and two share v1, as upstream's do: they must not
    # collide in the one descriptor pool.
    for api, package in APIS.items():
        module = pb2(api)
        assert module.DESCRIPTOR.package == package, api
        assert module.DESCRIPTOR.GetOptions().go_package == GO_PACKAGES[api]
        pb2_grpc(api)


@pytest.mark.parametrize(("api", "message"), sorted(FIELDS), ids=lambda x: str(x))
def test_message_fields(api: str, message: str) -> None:
    desc: Descriptor = getattr(pb2(api), message).DESCRIPTOR
    got = {f.name: (f.number, f.type, _shape(f)) for f in desc.fields}
    assert got == FIELDS[(api, message)]


def test_every_message_is_checked() -> None:
    for api in APIS:
        names = set(pb2(api).DESCRIPTOR.message_types_by_name)
        checked = {m for (a, m) in FIELDS if a == api}
        assert names == checked, f"{api}: unchecked messages {names - checked}"


@pytest.mark.parametrize("api", sorted(APIS))
def test_methods(api: str) -> None:
    module = pb2(api)
    got = set()
    for service in module.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert not method.client_streaming
            got.add((f"/{service.full_name}/{method.name}", method.server_streaming))
    assert got == METHODS[api]


@pytest.mark.parametrize(
    ("api", "message", "field"),
    [
        ("deviceplugin.v1beta1", "ContainerAllocateResponse", "envs"),
        ("deviceplugin.v1beta1", "ContainerAllocateResponse", "annotations"),
        ("dra.v1", "NodePrepareResourcesResponse", "claims"),
        ("dra.v1", "NodeUnprepareResourcesResponse", "claims"),
    ],
)
def test_maps_are_string_keyed(api: str, message: str, field: str) -> None:
    entry = getattr(pb2(api), message).DESCRIPTOR.fields_by_name[field].message_type
    assert entry.fields_by_name["key"].type == S


def test_dra_map_values() -> None:
    v1 = pb2("dra.v1")
    prep = v1.NodePrepareResourcesResponse.DESCRIPTOR.fields_by_name["claims"].message_type
    assert prep.fields_by_name["value"].message_type.name == "NodePrepareResourceResponse"
    unprep = v1.NodeUnprepareResourcesResponse.DESCRIPTOR.fields_by_name["claims"].message_type
    assert unprep.fields_by_name["value"].message_type.name == "NodeUnprepareResourceResponse"


@pytest.mark.parametrize("api", ["dra_health.v1alpha1", "dra_health.v1beta1", "dra_health.v1"])
def test_health_status_enum(api: str) -> None:
    enum = pb2(api).HealthStatus.DESCRIPTOR
    assert {v.name: v.number for v in enum.values} == {"UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}


def test_dynamic_resource_keeps_field_1_free() -> None:
    # class_name = 1 was removed upstream; the number must never be reused.
    desc = pb2("podresources.v1").DynamicResource.DESCRIPTOR
    assert 1 not in desc.fields_by_number


def test_wire_bytes() -> None:
    dp = pb2("deviceplugin.v1beta1")
    req = dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=["a"])])
    # field 1 (len) { field 1 (len) "a" }
    assert req.SerializeToString() == b"\n\x03\n\x01a"
    resp = dp.ContainerAllocateResponse(cdi_devices=[dp.CDIDevice(name="v/c=d")])
    assert resp.SerializeToString() == b"*\x07\n\x05v/c=d"  # field 5, length-delimited
    reg = dp.RegisterRequest(
        version="v1beta1",
        endpoint="g.sock",
        resource_name="nvidia.com/gpu",
        options=dp.DevicePluginOptions(get_preferred_allocation_available=True),
    )
    assert reg.SerializeToString() == (
        b'\n\x07v1beta1\x12\x06g.sock\x1a\x0envidia.com/gpu"\x02\x10\x01'
    )
    dev = dp.Device(
        ID="GPU-1", health="Healthy", topology=dp.TopologyInfo(nodes=[dp.NUMANode(ID=1)])
    )
    assert dev.SerializeToString() == b"\n\x05GPU-1\x12\x07Healthy\x1a\x04\n\x02\x08\x01"


def test_optional_share_id_has_presence() -> None:
    cr = pb2("podresources.v1").ClaimResource()
    assert not cr.HasField("share_id")
    cr.share_id = ""
    assert cr.HasField("share_id")
    assert cr.SerializeToString() == b"*\x00"  # field 5 present even when empty
    dev = pb2("dra.v1").Device(share_id="s")
    assert dev.HasField("share_id")


@pytest.fixture
def unix_socket() -> Iterator[str]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="gpulet-proto-")
    try:
        yield os.path.join(d, "dp.sock")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_device_plugin_over_a_unix_socket(unix_socket: str) -> None:
    dp = pb2("deviceplugin.v1beta1")
    dp_grpc = pb2_grpc("deviceplugin.v1beta1")

    class Plugin(dp_grpc.DevicePluginServicer):  # type: ignore[misc]
        def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
            return dp.DevicePluginOptions(get_preferred_allocation_available=True)

        def ListAndWatch(self, request: Any, context: Any) -> Iterator[Any]:
            yield dp.ListAndWatchResponse(devices=[dp.Device(ID="GPU-0", health="Healthy")])

        def Allocate(self, request: Any, context: Any) -> Any:
            ids = [i for c in request.container_requests for i in c.devices_ids]
            return dp.AllocateResponse(
                container_responses=[
                    dp.ContainerAllocateResponse(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(ids)})
                ]
            )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    dp_grpc.add_DevicePluginServicer_to_server(Plugin(), server)
    server.add_insecure_port(f"unix:{unix_socket}")
    server.start()
    try:
        with grpc.insecure_channel(f"unix:{unix_socket}") as channel:
            stub = dp_grpc.DevicePluginStub(channel)
            opts = stub.GetDevicePluginOptions(dp.Empty(), timeout=5)
            assert opts.get_preferred_allocation_available
            first = next(iter(stub.ListAndWatch(dp.Empty(), timeout=5)))
            assert [d.ID for d in first.devices] == ["GPU-0"]
            # By raw path, as the kubelet calls it.
            raw = channel.unary_unary(
                "/v1beta1.DevicePlugin/Allocate",
                request_serializer=dp.AllocateRequest.SerializeToString,
                response_deserializer=dp.AllocateResponse.FromString,
            )
            resp = raw(
                dp.AllocateRequest(
                    container_requests=[dp.ContainerAllocateRequest(devices_ids=["GPU-0"])]
                ),
                timeout=5,
            )
            assert resp.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-0"
    finally:
        server.stop(None)
