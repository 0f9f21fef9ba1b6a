"""One gRPC server per resource, on a unix socket in the kubelet's device-plugins directory.

The socket is created owner-only (``0600``: the kubelet runs as root; no socket gpulet makes is
world-writable), its identity (device and inode) remembered, and on stop it is removed only if
it is still the one this server made (a newer server's socket at the same path stays). A stale
socket at the path is replaced; anything else there (a regular file, a directory, a link) is
left alone and :class:`ServeError` says so, as it does for any other reason the socket cannot
be made (the OS's reason included). After a failed start the server is stopped, and ``start``
may be called again.

The transport (:mod:`gpulet.deviceplugin.transport`): ``native`` handles every call of a
resource on one thread that polls grpcio's private low-level layer (``grpc._cython.cygrpc``)
itself, with a quarter less latency and half the server CPU per call of the stock servers
(docs/device-plugin.md, "Transport"); ``aio`` is ``grpc.aio.server`` with generic handlers,
grpcio's public API only. Both move the servicer's bytes unchanged and take the bounds and
ListAndWatch rules from one place. At start ``native`` is used when the private layer has
every name it uses with the signatures it needs (checked once per process:
:func:`gpulet.deviceplugin.transport_native.check`); on a mismatch, or when the native server
fails to start for a reason that is not the socket's, one warning names grpcio's version and
why, and ``aio`` serves from then on. :data:`TRANSPORT_ENV` (``GPULET_GRPC_TRANSPORT=native|aio``)
forces one.

ListAndWatch streams are bounded: at most :data:`MAX_LIST_AND_WATCH_STREAMS` open per resource
(the kubelet opens one; another stream beyond the cap is refused with ``RESOURCE_EXHAUSTED``:
the oldest streams win, so no local client can knock the kubelet's stream off, and a kubelet
restart removes the socket, which ends every stream, before the new kubelet connects); each
stream has at most one message in flight and keeps only the newest device list behind it (a
stream that does not read holds one list, never a queue of them, and never delays another
stream). Requests are bounded by :data:`MAX_REQUEST_BYTES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pathlib
import socket
import stat
from collections.abc import Callable, Iterator, Mapping

import grpc

from gpulet.deviceplugin import transport_native
from gpulet.deviceplugin.resources import ResourceSpec
from gpulet.deviceplugin.responses import ResponseSettings
from gpulet.deviceplugin.servicer import SERVICE, DevicePluginServicer
from gpulet.deviceplugin.state import DevicePluginState
from gpulet.deviceplugin.transport import (
    MAX_CONCURRENT_STREAMS,
    MAX_LIST_AND_WATCH_STREAMS,
    MAX_REQUEST_BYTES,
    SERVER_OPTIONS,
    Transport,
    TransportFactory,
)
from gpulet.deviceplugin.transport_aio import AioTransport
from gpulet.errors import GpuletError

__all__ = [
    "ALLOCATE_HOOK_DELAY",
    "MAX_CONCURRENT_STREAMS",
    "MAX_LIST_AND_WATCH_STREAMS",
    "MAX_REQUEST_BYTES",
    "MAX_SOCKET_PATH",
    "SERVER_OPTIONS",
    "SOCKET_MODE",
    "TRANSPORTS",
    "TRANSPORT_ENV",
    "PluginServer",
    "ServeError",
    "SocketPathError",
    "TransportError",
    "check_socket_path",
    "choose_transport",
    "transport_setting",
]

log = logging.getLogger("gpulet.deviceplugin")

#: The longest socket path gRPC binds and dials as a ``unix://`` address (measured with
#: grpcio 1.85: 105 bytes bind, 106 are refused), two bytes below what ``sun_path`` holds.
MAX_SOCKET_PATH = 105
SOCKET_MODE = 0o600
#: Seconds between an Allocate and the ``on_allocate`` call that covers it (and every other
#: Allocate meanwhile): one call per burst, not one wake-up of the event loop per Allocate.
ALLOCATE_HOOK_DELAY = 0.05
#: The environment variable that forces a transport: ``native`` or ``aio`` (unset or empty:
#: ``native`` when grpcio's private layer fits it, else ``aio``).
TRANSPORT_ENV = "GPULET_GRPC_TRANSPORT"
TRANSPORTS: Mapping[str, TransportFactory] = {
    "native": transport_native.NativeTransport,
    "aio": AioTransport,
}

_ALLOCATE = f"/{SERVICE}/Allocate".encode()


class SocketPathError(GpuletError, ValueError):
    """A socket path too long for a unix socket that gRPC serves."""


class ServeError(GpuletError):
    """The server's socket cannot be made: something other than a socket squats its path, or
    the OS refused (the message names the path and says why)."""


class TransportError(GpuletError, ValueError):
    """:data:`TRANSPORT_ENV` (or the server's ``transport``) names no transport, or names
    ``native`` where it cannot run."""


def check_socket_path(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    size = len(os.fsencode(text))
    if size > MAX_SOCKET_PATH:
        raise SocketPathError(
            f"socket path {text} is {size} bytes; gRPC serves unix sockets of at most "
            f"{MAX_SOCKET_PATH} bytes (sun_path itself holds at most 107): use a shorter "
            "kubelet root"
        )
    return text


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a special file"


def _bind_error(path: pathlib.Path) -> str:
    """Why a unix socket cannot be bound at ``path`` (gRPC's failure gives no reason): bind one
    and report the OS's error."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _umask(0o177):
            probe.bind(os.fspath(path))
    except OSError as e:
        return f"{e.strerror or e} (errno {errno.errorcode.get(e.errno or 0, e.errno)})"
    finally:
        probe.close()
    with contextlib.suppress(OSError):
        os.unlink(path)
    return "gRPC could not listen on it (its log line above says why)"


# --- choosing the transport --------------------------------------------------------------


def transport_setting(env: Mapping[str, str] | None = None) -> str | None:
    """The transport :data:`TRANSPORT_ENV` forces (``None``: unset or empty, the choice is
    gpulet's); a value that names none is a :class:`TransportError` naming the variable."""
    value = (os.environ if env is None else env).get(TRANSPORT_ENV, "")
    if not value:
        return None
    if value not in TRANSPORTS:
        raise TransportError(
            f"{TRANSPORT_ENV}: must be one of {', '.join(TRANSPORTS)} (or unset); got {value!r}"
        )
    return value


class _Native:
    """Whether the native transport can run in this process: checked once, and a warning
    logged once when it cannot."""

    checked = False
    problem: str | None = None
    warned = False


def _native_problem() -> str | None:
    if not _Native.checked:
        _Native.problem = transport_native.check(transport_native.cygrpc)
        _Native.checked = True
    return _Native.problem


def _native_broken(why: str) -> None:
    """The native transport cannot run: say so once; ``aio`` serves from now on."""
    _Native.checked, _Native.problem = True, why
    if not _Native.warned:
        _Native.warned = True
        log.warning(
            "grpcio %s: the device plugin's native transport cannot run (%s); serving with "
            "grpc.aio instead (the same answers, slower per call). %s=aio chooses it without "
            "this warning",
            grpc.__version__,
            why,
            TRANSPORT_ENV,
        )


def choose_transport(requested: str | None = None) -> str:
    """The transport to serve with: ``requested`` (or :data:`TRANSPORT_ENV`) when it names
    one, else ``native`` when grpcio's private layer fits it, else ``aio`` (warned once).
    A forced ``native`` that cannot run is a :class:`TransportError`."""
    return _choose(requested)[0]


def _choose(requested: str | None) -> tuple[str, bool]:
    """The transport, and whether it was forced."""
    forced = requested if requested is not None else transport_setting()
    if forced is not None and forced not in TRANSPORTS:
        raise TransportError(f"transport: must be one of {', '.join(TRANSPORTS)}; got {forced!r}")
    if forced == "aio":
        return "aio", True
    problem = _native_problem()
    if problem is None:
        return "native", forced is not None
    if forced == "native":
        source = "by the server's transport" if requested is not None else f"by {TRANSPORT_ENV}"
        raise TransportError(
            f"the native transport was asked for {source} but cannot run with grpcio "
            f"{grpc.__version__}: {problem}; use aio"
        )
    _native_broken(problem)
    return "aio", False


# --- the server ---------------------------------------------------------------------------


class PluginServer:
    """The device-plugin server of one resource.

    ``on_allocate`` is called on the event loop that started the server, at most
    :data:`ALLOCATE_HOOK_DELAY` after each successful Allocate (whose response is then on its
    way; Allocate calls meanwhile share the call); ``observe(rpc, seconds)`` is called on the
    thread that serves the call (the server's own with ``native``, the event loop with
    ``aio``; it must be thread-safe). ``transport`` forces one (``native`` or ``aio``; ``None``:
    :func:`choose_transport` chooses at each start).
    """

    def __init__(
        self,
        state: DevicePluginState,
        resource: ResourceSpec,
        directory: str | os.PathLike[str],
        settings: ResponseSettings,
        *,
        on_allocate: Callable[[], None] | None = None,
        observe: Callable[[str, float], None] | None = None,
        max_streams: int = MAX_LIST_AND_WATCH_STREAMS,
        transport: str | None = None,
    ) -> None:
        self.resource = resource
        self.state = state
        self.path = pathlib.Path(directory) / resource.socket_name
        check_socket_path(self.path)
        self.max_streams = max_streams
        self._requested = transport
        self._on_allocate = on_allocate
        self.servicer = DevicePluginServicer(state, resource, settings, observe=observe)
        self._transport: Transport | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick_due = False
        self._kick_timer: asyncio.TimerHandle | None = None
        self._identity: tuple[int, int] | None = None
        #: How many times the server was (re)started.
        self.starts = 0

    @property
    def endpoint(self) -> str:
        """The socket's file name, as Register names it."""
        return self.path.name

    @property
    def serving(self) -> bool:
        return self._transport is not None

    @property
    def transport(self) -> str | None:
        """The transport serving now: ``native``, ``aio``, or ``None`` when not serving."""
        return self._transport.kind if self._transport is not None else None

    @property
    def streams(self) -> int:
        """ListAndWatch streams open now."""
        return self._transport.streams if self._transport is not None else 0

    def socket_present(self) -> bool:
        """The socket this server made is still at its path."""
        if self._identity is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity and stat.S_ISSOCK(st.st_mode)

    def _error(self, why: str) -> ServeError:
        return ServeError(f"cannot serve {self.resource.name} on {self.path}: {why}")

    def _clear_path(self) -> None:
        """Remove a stale socket at the path; refuse anything else there."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as e:
            raise self._error(e.strerror or str(e)) from None
        if not stat.S_ISSOCK(mode):
            raise self._error(
                f"the path is {_kind(mode)}, not a socket; gpulet replaces only stale sockets "
                "and leaves it alone: move or remove it so that gpulet can serve here"
            )
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error(f"cannot remove the stale socket: {e.strerror or e}") from None

    async def start(self) -> None:
        """Serve on a fresh socket (replacing a stale socket at the path).

        Raises :class:`ServeError` when the socket cannot be made, :class:`TransportError`
        when the transport asked for names none or cannot run; the server is then stopped and
        may be started again.
        """
        if self._transport is not None:
            await self.stop()
        kind, forced = _choose(self._requested)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(
                f"cannot create the directory {self.path.parent}: {e.strerror or e}"
            ) from None
        self._clear_path()
        self._loop = asyncio.get_running_loop()
        try:
            transport, st = await self._serve(kind)
        except transport_native.NativeFailed as e:
            if forced:
                raise self._error(
                    f"the native transport, with grpcio {grpc.__version__}: {e}"
                ) from None
            _native_broken(str(e))
            self._clear_path()
            transport, st = await self._serve("aio")
        self._identity = (st.st_dev, st.st_ino)
        self._transport = transport
        self._publisher = asyncio.create_task(
            self._publish(transport), name=f"gpulet-list-{self.resource.name}"
        )
        self.starts += 1
        log.info("serving %s on %s (%s transport)", self.resource.name, self.path, transport.kind)

    async def _serve(self, kind: str) -> tuple[Transport, os.stat_result]:
        """A started transport of ``kind`` on the socket, and the socket's status. Raises
        :class:`ServeError` when the socket cannot be made, ``NativeFailed`` when grpcio's
        private layer fails (the socket is then removed)."""
        after = {_ALLOCATE: self._allocated} if self._on_allocate is not None else {}
        transport = TRANSPORTS[kind](
            self.resource.name, self.servicer.unary, self.max_streams, after
        )
        made = False
        try:
            with _umask(0o177):
                bound = transport.bind(os.fspath(self.path))
            if not bound:
                raise self._error(_bind_error(self.path))
            made = True
            try:
                os.chmod(self.path, SOCKET_MODE)
                st = os.stat(self.path)
            except OSError as e:
                raise self._error(e.strerror or str(e)) from None
            await transport.start(self.servicer.device_list())
        except BaseException:
            await transport.discard()
            if made:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            raise
        return transport, st

    async def _publish(self, transport: Transport) -> None:
        """Give the streams the device list on every change of the state."""
        with self.state.watch() as watch:
            while True:
                try:
                    transport.publish(self.servicer.device_list())
                except Exception:  # a bug: the next change tries again
                    log.exception("cannot send the device list of %s", self.resource.name)
                await watch.wait()

    def _allocated(self) -> None:
        # On the thread that served an Allocate, after its response: have the loop call the hook
        # ALLOCATE_HOOK_DELAY from now, unless a call is already due (it runs after this
        # Allocate was recorded, so it covers it).
        loop = self._loop
        if self._kick_due or loop is None:
            return
        self._kick_due = True
        try:
            loop.call_soon_threadsafe(self._schedule_kick)
        except RuntimeError:  # the loop is closed: nobody to tell
            self._kick_due = False

    def _schedule_kick(self) -> None:
        assert self._loop is not None
        self._kick_timer = self._loop.call_later(ALLOCATE_HOOK_DELAY, self._kick)

    def _kick(self) -> None:
        self._kick_timer = None
        self._kick_due = False
        if self._on_allocate is not None:
            self._on_allocate()

    async def stop(self, grace: float | None = 0.2) -> None:
        """Stop serving (open ListAndWatch streams end) and remove the socket if it is ours.

        Calls in progress get ``grace`` seconds to complete (``None``: none), then are
        cancelled.
        """
        transport, self._transport = self._transport, None
        publisher, self._publisher = self._publisher, None
        if transport is None:
            return
        ours = self.socket_present()
        if self._kick_timer is not None:  # the hook runs now rather than never
            self._kick_timer.cancel()
            self._kick()
        if publisher is not None:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
        await transport.stop(grace)
        if ours:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._identity = None
        log.info("stopped serving %s", self.resource.name)
