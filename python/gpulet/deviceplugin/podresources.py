"""A client of the kubelet's PodResources API (``v1.PodResourcesLister/List``).

The device plugin learns from it which container holds which device: Allocate carries no pod
identity, so attribution and release come from reconciling with this list.
"""

from __future__ import annotations

import os

import grpc

from gpulet._proto.podresources.v1 import api_pb2, api_pb2_grpc
from gpulet.deviceplugin.state import ContainerDevices
from gpulet.errors import GpuletError

__all__ = ["PodResourcesClient", "PodResourcesError", "container_devices"]


class PodResourcesError(GpuletError):
    """The kubelet's PodResources socket could not be asked."""


def container_devices(response: api_pb2.ListPodResourcesResponse) -> list[ContainerDevices]:
    """Every (container, resource) with devices in a List response."""
    out: list[ContainerDevices] = []
    for pod in response.pod_resources:
        for c in pod.containers:
            for d in c.devices:
                out.append(
                    ContainerDevices(
                        namespace=pod.namespace,
                        pod=pod.name,
                        container=c.name,
                        resource=d.resource_name,
                        ids=tuple(d.device_ids),
                    )
                )
    return out


class PodResourcesClient:
    """List the kubelet's pod resources over ``socket`` (one channel, reconnecting as the
    kubelet restarts)."""

    def __init__(self, socket: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        self.socket = os.fspath(socket)
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    async def list(self) -> list[ContainerDevices]:
        if not os.path.exists(self.socket):
            raise PodResourcesError(f"no PodResources socket at {self.socket}")
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(f"unix://{self.socket}")
        stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        try:
            response = await stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            raise PodResourcesError(
                f"PodResources List at {self.socket} failed: {e.code().name}: {e.details()}"
            ) from None
        return container_devices(response)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
