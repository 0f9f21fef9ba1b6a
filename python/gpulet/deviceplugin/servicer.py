"""The DevicePlugin service of one resource: kubelet messages in, state calls, messages out.

Nothing is decided here: :class:`gpulet.deviceplugin.state.DevicePluginState` validates and records,
:mod:`gpulet.deviceplugin.responses` says what the container gets. Each unary RPC is a function
from the request's bytes to the response's bytes (the transport, :mod:`gpulet.deviceplugin.server`,
moves bytes and never parses them); ``device_list`` is what ListAndWatch sends.

Refusals are :class:`RpcRefusal` (the transport answers with their status, the state untouched):
``INVALID_ARGUMENT`` for a request that can never succeed (unknown or repeated IDs, more than one
shared replica under ``failRequestsGreaterThanOne``, more containers or IDs than the limits
below, bytes that are not the RPC's message), ``FAILED_PRECONDITION`` for a device that is
unhealthy or held through DRA.

Limits, checked before the state is asked anything, so that a request cannot make the agent
work in proportion to its size: at most :data:`MAX_CONTAINER_REQUESTS` container requests per
call (the kubelet sends one per call), and per container at most as many device IDs as the
resource advertises (more cannot be valid: IDs must be distinct and advertised). Logs show at
most :data:`LOGGED_IDS` IDs per container and :data:`MAX_DETAILS` characters of a refusal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from gpulet._proto.deviceplugin.v1beta1 import api_pb2
from gpulet.deviceplugin.resources import PluginDevice, ResourceSpec
from gpulet.deviceplugin.responses import ResponseSettings, container_response
from gpulet.deviceplugin.state import AllocationError, DevicePluginState
from gpulet.errors import GpuletError

__all__ = [
    "HEALTHY",
    "LOGGED_IDS",
    "MAX_CACHED_REQUEST",
    "MAX_CONTAINER_REQUESTS",
    "MAX_DETAILS",
    "RESPONSE_CACHE_SIZE",
    "SERVICE",
    "UNHEALTHY",
    "DevicePluginServicer",
    "RpcRefusal",
    "clip",
    "list_response",
    "show_ids",
]

log = logging.getLogger("gpulet.deviceplugin")

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

#: The gRPC service, as method paths name it.
SERVICE = "v1beta1.DevicePlugin"
#: Container requests one Allocate or GetPreferredAllocation may hold.
MAX_CONTAINER_REQUESTS = 64
#: Device IDs of one container a log line shows (then "... (+N more)").
LOGGED_IDS = 4
#: Characters of a refusal's message sent as the status details and logged.
MAX_DETAILS = 1000
#: Allocate answers kept per servicer, by the request's bytes (emptied when full) ...
RESPONSE_CACHE_SIZE = 4096
#: ... for requests up to this size (the kubelet's are some 60 bytes per device).
MAX_CACHED_REQUEST = 2048

_CODES = {
    "invalid-argument": grpc.StatusCode.INVALID_ARGUMENT,
    "failed-precondition": grpc.StatusCode.FAILED_PRECONDITION,
}

M = TypeVar("M", bound=Message)


class RpcRefusal(GpuletError):
    """An RPC answered with a status other than OK; ``details`` is clipped to
    :data:`MAX_DETAILS` characters."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(clip(details))
        self.code = code
        self.details = clip(details)


def clip(text: str, limit: int = MAX_DETAILS) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... ({len(text) - limit} more characters)"


def show_ids(ids: Sequence[str], limit: int = LOGGED_IDS) -> str:
    """At most ``limit`` IDs, comma-separated, then how many more there are."""
    shown = ",".join(ids[:limit])
    return shown if len(ids) <= limit else f"{shown} ... (+{len(ids) - limit} more)"


def list_response(state: DevicePluginState, resource: str) -> api_pb2.ListAndWatchResponse:
    """The device list of ``resource`` as ListAndWatch sends it."""
    out = api_pb2.ListAndWatchResponse()
    for s in state.list_devices(resource):
        d = out.devices.add(ID=s.device.id, health=HEALTHY if s.healthy else UNHEALTHY)
        numa = s.device.physical.numa_node
        if numa is not None:
            d.topology.nodes.add(ID=numa)
    return out


class DevicePluginServicer:
    """``v1beta1.DevicePlugin`` for one resource, as functions of serialized messages.

    Every method may be called from any thread (the state is thread-safe).
    ``observe(rpc, seconds)`` receives the time Allocate and GetPreferredAllocation took here
    (decoding to encoding), on the calling thread.
    """

    def __init__(
        self,
        state: DevicePluginState,
        resource: ResourceSpec,
        settings: ResponseSettings,
        *,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.state = state
        self.resource = resource
        self.settings = settings
        self._observe = observe
        self._max_ids = len(resource.devices)
        # A fresh UUID names each cdi-annotations answer; passDeviceSpecs looks at /dev.
        self._cacheable = (
            "cdi-annotations" not in settings.strategies and not settings.pass_device_specs
        )
        #: Answers by the request's bytes: (the IDs asked for, the serialized response).
        self._answers: dict[bytes, tuple[tuple[tuple[str, ...], ...], bytes]] = {}
        self._options = api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        ).SerializeToString()
        #: The unary RPCs by method path (``/v1beta1.DevicePlugin/Allocate``).
        self.unary: Mapping[bytes, Callable[[bytes], bytes]] = {
            f"/{SERVICE}/{name}".encode(): fn
            for name, fn in (
                ("GetDevicePluginOptions", self.get_device_plugin_options),
                ("GetPreferredAllocation", self.get_preferred_allocation),
                ("Allocate", self.allocate),
                ("PreStartContainer", self.pre_start_container),
            )
        }

    # --- limits ------------------------------------------------------------------------

    def _refusal(self, rpc: str, code: grpc.StatusCode, message: str) -> RpcRefusal:
        refusal = RpcRefusal(code, message)
        log.warning("%s %s refused: %s", self.resource.name, rpc, refusal.details)
        return refusal

    def _check_containers(self, rpc: str, count: int) -> None:
        if count > MAX_CONTAINER_REQUESTS:
            raise self._refusal(
                rpc,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{rpc} for {self.resource.name} holds {count} container requests; at most "
                f"{MAX_CONTAINER_REQUESTS} are accepted per call",
            )

    def _check_ids(self, rpc: str, field: str, ids: Sequence[str]) -> None:
        limit = self._max_ids
        if len(ids) > limit:
            raise self._refusal(
                rpc,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{rpc}: {field} names {len(ids)} device IDs; {self.resource.name} advertises "
                f"{limit} device(s), so one container can name at most {limit}",
            )

    def _decode(self, rpc: str, cls: type[M], data: bytes) -> M:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            raise self._refusal(
                rpc,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid {cls.__name__}: {e}",
            ) from None

    def _refused(self, rpc: str, e: AllocationError) -> RpcRefusal:
        return self._refusal(rpc, _CODES[e.code], str(e))

    # --- RPCs --------------------------------------------------------------------------

    def get_device_plugin_options(self, data: bytes) -> bytes:
        return self._options

    def pre_start_container(self, data: bytes) -> bytes:
        return b""  # PreStartContainerResponse has no fields

    def device_list(self) -> bytes:
        """The serialized ListAndWatch response: every advertised device and its health."""
        return list_response(self.state, self.resource.name).SerializeToString()

    def get_preferred_allocation(self, data: bytes) -> bytes:
        start = time.perf_counter()
        rpc = "GetPreferredAllocation"
        request = self._decode(rpc, api_pb2.PreferredAllocationRequest, data)
        containers = request.container_requests
        self._check_containers(rpc, len(containers))
        for c in containers:
            self._check_ids(rpc, "available_deviceIDs", c.available_deviceIDs)
            self._check_ids(rpc, "must_include_deviceIDs", c.must_include_deviceIDs)
        out = api_pb2.PreferredAllocationResponse()
        try:
            for c in containers:
                chosen = self.state.preferred(
                    self.resource.name,
                    list(c.available_deviceIDs),
                    list(c.must_include_deviceIDs),
                    c.allocation_size,
                )
                out.container_responses.add(deviceIDs=chosen)
        except AllocationError as e:
            raise self._refused(rpc, e) from None
        response = out.SerializeToString()
        if self._observe is not None:
            self._observe(rpc, time.perf_counter() - start)
        return response

    def allocate(self, data: bytes) -> bytes:
        observe = self._observe
        start = time.perf_counter() if observe is not None else 0.0
        requests: Sequence[Sequence[str]]
        seen = self._answers.get(data)
        if seen is not None:  # the same request bytes before: the state is asked all the same
            requests, response = seen
            self._allocate(requests)
        else:
            containers = self._decode("Allocate", api_pb2.AllocateRequest, data).container_requests
            self._check_containers("Allocate", len(containers))
            asked = tuple(tuple(c.devices_ids) for c in containers)
            for ids in asked:
                if len(ids) > self._max_ids:
                    self._check_ids("Allocate", "devices_ids", ids)
            response = self._answer(self._allocate(asked))
            if self._cacheable and len(data) <= MAX_CACHED_REQUEST:
                if len(self._answers) >= RESPONSE_CACHE_SIZE:
                    self._answers.clear()
                self._answers[data] = (asked, response)
            requests = asked
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "Allocate %s: %s", self.resource.name, "; ".join(show_ids(r) for r in requests)
            )
        if observe is not None:
            observe("Allocate", time.perf_counter() - start)
        return response

    def _allocate(self, requests: Sequence[Sequence[str]]) -> list[list[PluginDevice]]:
        try:
            return self.state.allocate(self.resource.name, requests)
        except AllocationError as e:
            raise self._refused("Allocate", e) from None

    def _answer(self, granted: Sequence[Sequence[PluginDevice]]) -> bytes:
        mps = self.resource.sharing == "mps"
        return api_pb2.AllocateResponse(
            container_responses=[
                container_response(
                    devices,
                    self.settings,
                    resource=self.resource.name,
                    mps=mps and any(d.shared for d in devices),
                )
                for devices in granted
            ]
        ).SerializeToString()
