"""Registering a device-plugin server with the kubelet (``v1beta1.Registration/Register``)."""

from __future__ import annotations

import os

import grpc

from gpulet._proto.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from gpulet.errors import GpuletError

__all__ = ["API_VERSION", "RegistrationError", "register"]

API_VERSION = "v1beta1"


class RegistrationError(GpuletError):
    """The kubelet could not be reached, or refused the registration.

    ``retryable`` is true when the kubelet was not there to ask (its socket missing or not
    accepting yet); false when it answered with a refusal (a version it does not support, a
    resource another plugin holds).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


async def register(
    kubelet_socket: str | os.PathLike[str],
    *,
    endpoint: str,
    resource: str,
    timeout: float = 5.0,
) -> None:
    """Register ``resource``, served on ``endpoint`` (a socket file name in the kubelet's
    device-plugins directory), with the kubelet listening on ``kubelet_socket``.

    As NVIDIA's plugin does: version ``v1beta1``, ``get_preferred_allocation_available`` true,
    ``pre_start_required`` false. Raises :class:`RegistrationError`.
    """
    request = api_pb2.RegisterRequest(
        version=API_VERSION,
        endpoint=endpoint,
        resource_name=resource,
        options=api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        ),
    )
    target = f"unix://{os.fspath(kubelet_socket)}"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RegistrationStub(channel)
        try:
            await stub.Register(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            raise RegistrationError(
                f"registering {resource} with the kubelet at {os.fspath(kubelet_socket)} failed: "
                f"{code.name}: {e.details()}",
                retryable=retryable,
            ) from None
