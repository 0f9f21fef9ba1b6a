"""One gRPC server per resource, on a unix socket in the kubelet's device-plugins directory.

The socket is created owner-only (``0600``: the kubelet runs as root; no socket gpulet makes is
world-writable), its identity (device and inode) remembered, and on stop it is removed only if
it is still the one this server made (a newer server's socket at the same path stays).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import stat
from collections.abc import Callable, Iterator

import grpc

from gpulet._proto.deviceplugin.v1beta1 import api_pb2_grpc
from gpulet.agent.state import AgentState
from gpulet.deviceplugin.resources import ResourceSpec
from gpulet.deviceplugin.responses import ResponseSettings
from gpulet.deviceplugin.servicer import DevicePluginServicer
from gpulet.errors import GpuletError

__all__ = ["MAX_SOCKET_PATH", "SOCKET_MODE", "PluginServer", "SocketPathError", "check_socket_path"]

log = logging.getLogger("gpulet.deviceplugin")

#: ``sun_path`` holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
SOCKET_MODE = 0o600


class SocketPathError(GpuletError, ValueError):
    """A socket path too long for ``AF_UNIX``."""


def check_socket_path(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    if len(os.fsencode(text)) > MAX_SOCKET_PATH:
        raise SocketPathError(
            f"socket path {text} is {len(os.fsencode(text))} bytes; unix sockets allow at most "
            f"{MAX_SOCKET_PATH}: use a shorter kubelet root"
        )
    return text


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


class PluginServer:
    """The device-plugin server of one resource."""

    def __init__(
        self,
        state: AgentState,
        resource: ResourceSpec,
        directory: str | os.PathLike[str],
        settings: ResponseSettings,
        *,
        on_allocate: Callable[[], None] | None = None,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.resource = resource
        self.path = pathlib.Path(directory) / resource.socket_name
        check_socket_path(self.path)
        self.servicer = DevicePluginServicer(
            state, resource, settings, on_allocate=on_allocate, observe=observe
        )
        self._server: grpc.aio.Server | None = None
        self._identity: tuple[int, int] | None = None
        #: How many times the server was (re)started.
        self.starts = 0

    @property
    def endpoint(self) -> str:
        """The socket's file name, as Register names it."""
        return self.path.name

    @property
    def serving(self) -> bool:
        return self._server is not None

    def socket_present(self) -> bool:
        """The socket this server made is still at its path."""
        if self._identity is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity and stat.S_ISSOCK(st.st_mode)

    async def start(self) -> None:
        """Serve on a fresh socket (replacing a stale file at the path)."""
        if self._server is not None:
            await self.stop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        api_pb2_grpc.add_DevicePluginServicer_to_server(self.servicer, server)
        with _umask(0o177):
            server.add_insecure_port(f"unix://{self.path}")
        await server.start()
        os.chmod(self.path, SOCKET_MODE)
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._server = server
        self.starts += 1
        log.info("serving %s on %s", self.resource.name, self.path)

    async def stop(self, grace: float | None = 0.2) -> None:
        """Stop serving (open ListAndWatch streams end) and remove the socket if it is ours."""
        server, self._server = self._server, None
        if server is None:
            return
        ours = self.socket_present()
        await server.stop(grace)
        if ours:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._identity = None
        log.info("stopped serving %s", self.resource.name)
