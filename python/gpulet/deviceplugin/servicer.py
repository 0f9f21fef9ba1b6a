"""The DevicePlugin gRPC service of one resource: kubelet messages in, state calls, messages out.

Nothing is decided here: :class:`gpulet.agent.state.AgentState` validates and records,
:mod:`gpulet.deviceplugin.responses` says what the container gets. Refusals become gRPC
``INVALID_ARGUMENT`` (a request that can never succeed: unknown or repeated IDs, more than one
shared replica under ``failRequestsGreaterThanOne``) or ``FAILED_PRECONDITION`` (a device that
is unhealthy or held through DRA), each with a message; the state is untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from gpulet._proto.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from gpulet.agent.state import AgentState, AllocationError
from gpulet.deviceplugin.resources import ResourceSpec
from gpulet.deviceplugin.responses import ResponseSettings, container_response

__all__ = ["HEALTHY", "UNHEALTHY", "DevicePluginServicer", "list_response"]

log = logging.getLogger("gpulet.deviceplugin")

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

_CODES = {
    "invalid-argument": grpc.StatusCode.INVALID_ARGUMENT,
    "failed-precondition": grpc.StatusCode.FAILED_PRECONDITION,
}

Context = grpc.aio.ServicerContext[Any, Any]


def list_response(state: AgentState, resource: str) -> api_pb2.ListAndWatchResponse:
    """The device list of ``resource`` as ListAndWatch sends it."""
    out = api_pb2.ListAndWatchResponse()
    for s in state.list_devices(resource):
        d = out.devices.add(ID=s.device.id, health=HEALTHY if s.healthy else UNHEALTHY)
        numa = s.device.physical.numa_node
        if numa is not None:
            d.topology.nodes.add(ID=numa)
    return out


class DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):
    """``v1beta1.DevicePlugin`` for one resource.

    ``on_allocate`` is called after each successful Allocate (the agent schedules a
    PodResources reconciliation); ``observe(rpc, seconds)`` receives each call's latency.
    """

    def __init__(
        self,
        state: AgentState,
        resource: ResourceSpec,
        settings: ResponseSettings,
        *,
        on_allocate: Callable[[], None] | None = None,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.state = state
        self.resource = resource
        self.settings = settings
        self._on_allocate = on_allocate
        self._observe = observe

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: Context
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: Context
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        name = self.resource.name
        log.info("ListAndWatch opened for %s", name)
        last: api_pb2.ListAndWatchResponse | None = None
        try:
            with self.state.watch() as watch:
                while True:
                    current = list_response(self.state, name)
                    if current != last:
                        yield current
                        last = current
                    await watch.wait()
        finally:
            log.info("ListAndWatch closed for %s", name)

    async def _abort(self, context: Context, rpc: str, error: AllocationError) -> None:
        log.warning("%s %s refused: %s", self.resource.name, rpc, error)
        await context.abort(_CODES[error.code], str(error))

    async def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: Context
    ) -> api_pb2.PreferredAllocationResponse:
        start = time.perf_counter()
        out = api_pb2.PreferredAllocationResponse()
        try:
            for c in request.container_requests:
                chosen = self.state.preferred(
                    self.resource.name,
                    list(c.available_deviceIDs),
                    list(c.must_include_deviceIDs),
                    c.allocation_size,
                )
                out.container_responses.add(deviceIDs=chosen)
        except AllocationError as e:
            await self._abort(context, "GetPreferredAllocation", e)
        if self._observe is not None:
            self._observe("GetPreferredAllocation", time.perf_counter() - start)
        return out

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: Context
    ) -> api_pb2.AllocateResponse:
        start = time.perf_counter()
        requests = [list(c.devices_ids) for c in request.container_requests]
        try:
            granted = self.state.allocate(self.resource.name, requests)
        except AllocationError as e:
            await self._abort(context, "Allocate", e)
            raise  # unreachable: abort raises
        out = api_pb2.AllocateResponse()
        mps = self.resource.sharing == "mps"
        for devices in granted:
            out.container_responses.append(
                container_response(
                    devices,
                    self.settings,
                    resource=self.resource.name,
                    mps=mps and any(d.shared for d in devices),
                )
            )
        log.info(
            "Allocate %s: %s",
            self.resource.name,
            "; ".join(",".join(r) for r in requests),
        )
        if self._on_allocate is not None:
            self._on_allocate()
        if self._observe is not None:
            self._observe("Allocate", time.perf_counter() - start)
        return out

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: Context
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()
