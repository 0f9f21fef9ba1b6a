"""One gRPC server per resource, on a unix socket in the kubelet's device-plugins directory.

The socket is created owner-only (``0600``: the kubelet runs as root; no socket gpulet makes is
world-writable), its identity (device and inode) remembered, and on stop it is removed only if
it is still the one this server made (a newer server's socket at the same path stays). A stale
socket at the path is replaced; anything else there (a regular file, a directory, a link) is
left alone and :class:`ServeError` says so, as it does for any other reason the socket cannot
be made (the OS's reason included). After a failed start the server is stopped, and ``start``
may be called again.

The transport: every call is handled on one thread per server, which polls the gRPC server's
completion queue itself (grpcio's low-level ``cygrpc`` layer, the one ``grpc.server`` and
``grpc.aio`` are built on) and runs the servicer's functions (bytes in, bytes out) inline.
Neither stock server does that: ``grpc.server`` hands each call to a pool thread and back
several times, ``grpc.aio`` wakes the event loop from a poller thread for each step; on the
2-core development machine they cost 230-350 µs of server CPU per empty call against some
100 µs for this loop (benches/RESULTS.md, "Device plugin"). Handlers take tens of microseconds
and never block (the state does no I/O).

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
import importlib
import logging
import os
import pathlib
import socket
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from gpulet.deviceplugin.resources import ResourceSpec
from gpulet.deviceplugin.responses import ResponseSettings
from gpulet.deviceplugin.servicer import SERVICE, DevicePluginServicer, RpcRefusal
from gpulet.deviceplugin.state import DevicePluginState
from gpulet.errors import GpuletError

__all__ = [
    "ALLOCATE_HOOK_DELAY",
    "MAX_LIST_AND_WATCH_STREAMS",
    "MAX_REQUEST_BYTES",
    "MAX_SOCKET_PATH",
    "SERVER_OPTIONS",
    "SOCKET_MODE",
    "PluginServer",
    "ServeError",
    "SocketPathError",
    "check_socket_path",
]

log = logging.getLogger("gpulet.deviceplugin")

# grpcio's Cython layer has no type stubs; everything taken from it is Any.
cygrpc: Any = importlib.import_module("grpc._cython.cygrpc")

#: The longest socket path gRPC binds and dials as a ``unix://`` address (measured with
#: grpcio 1.85: 105 bytes bind, 106 are refused), two bytes below what ``sun_path`` holds.
MAX_SOCKET_PATH = 105
SOCKET_MODE = 0o600
#: The largest request message accepted (a larger one is refused by gRPC with
#: RESOURCE_EXHAUSTED before gpulet reads it).
MAX_REQUEST_BYTES = 1 << 20
#: Seconds between an Allocate and the ``on_allocate`` call that covers it (and every other
#: Allocate meanwhile): one call per burst, not one wake-up of the event loop per Allocate.
ALLOCATE_HOOK_DELAY = 0.05
#: ListAndWatch streams open at once per resource.
MAX_LIST_AND_WATCH_STREAMS = 4
#: Concurrent calls on one connection (the kubelet multiplexes its calls on one).
MAX_CONCURRENT_STREAMS = 64
#: Options of every device-plugin server: no port sharing, bounded requests and concurrency,
#: and no BDP probing (the pings gRPC uses to grow HTTP/2 flow-control windows for throughput;
#: without them a stream that does not read stalls sooner: measured, after half as much).
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
    ("grpc.http2.bdp_probe", 0),
)

#: Calls requested from gRPC ahead of their arrival: when one arrives, the next is requested
#: after its answer is sent, not before (one more stays requested meanwhile).
_REQUESTED_CALLS = 2
_LIST_AND_WATCH = f"/{SERVICE}/ListAndWatch".encode()
_ALLOCATE = f"/{SERVICE}/Allocate".encode()


class SocketPathError(GpuletError, ValueError):
    """A socket path too long for a unix socket that gRPC serves."""


class ServeError(GpuletError):
    """The server's socket cannot be made: something other than a socket squats its path, or
    the OS refused (the message names the path and says why)."""


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


# --- the transport ------------------------------------------------------------------------


class _Tag:
    """What a completion-queue event is about."""

    __slots__ = ()


class _NewCall(_Tag):
    __slots__ = ()


class _Shutdown(_Tag):
    __slots__ = ()


class _Finished(_Tag):
    """The last batch of a call (status sent, close received)."""

    __slots__ = ()


_NEW_CALL = _NewCall()
_SHUTDOWN = _Shutdown()
_FINISHED = _Finished()


class _Unary(_Tag):
    """The request message of a unary call arrived."""

    __slots__ = ("after", "call", "handler")

    def __init__(
        self, call: Any, handler: Callable[[bytes], bytes], after: Callable[[], None] | None
    ) -> None:
        self.call = call
        self.handler = handler
        self.after = after


class _Stream:
    """One ListAndWatch stream: at most one message in flight, the newest list behind it."""

    __slots__ = ("call", "closed_tag", "last", "open", "pending", "sending", "sent_tag", "started")

    def __init__(self, call: Any) -> None:
        self.call = call
        self.open = True
        self.started = False  # initial metadata sent
        self.sending = False
        self.pending: bytes | None = None
        #: The newest list sent or waiting (nothing is sent twice in a row).
        self.last: bytes | None = None
        self.sent_tag = _StreamSent(self)
        self.closed_tag = _StreamClosed(self)


class _StreamSent(_Tag):
    __slots__ = ("stream",)

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream


class _StreamClosed(_Tag):
    __slots__ = ("stream",)

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream


def _status(code: Any, details: str) -> Any:
    return cygrpc.SendStatusFromServerOperation(None, code, details.encode(), 0)


class _Transport:
    """A gRPC server on one unix socket whose calls are all handled on one thread.

    ``handlers`` maps unary method paths to functions of the request's bytes; ``after`` maps
    some of them to what to call once their response is on its way (not on a refusal).
    ListAndWatch streams send what :meth:`publish` was last given. Every batch started is
    counted, so the thread ends only when the server has shut down and every batch has
    completed.
    """

    def __init__(
        self,
        name: str,
        handlers: Mapping[bytes, Callable[[bytes], bytes]],
        max_streams: int,
        after: Mapping[bytes, Callable[[], None]] | None = None,
    ) -> None:
        self.name = name
        self._handlers = handlers
        self._after = dict(after or {})
        self._max_streams = max_streams
        self._lock = threading.Lock()
        self._cq = cygrpc.CompletionQueue()
        self._server = cygrpc.Server(SERVER_OPTIONS, False)
        self._server.register_completion_queue(self._cq)
        self._started = False
        self._stopping = False
        self._shut_down = False
        self._destroyed = False
        self._outstanding = 0
        self._requested = 0  # calls requested from gRPC and not yet arrived
        self._streams: set[_Stream] = set()
        self._refusing = False
        self._latest = b""
        self._thread: threading.Thread | None = None
        self.done = threading.Event()

    # --- life ---------------------------------------------------------------------------

    def bind(self, path: pathlib.Path) -> bool:
        """Listen on ``path`` (before :meth:`start`); false when gRPC could not."""
        return bool(self._server.add_http2_port(f"unix:{path}".encode()))

    def start(self, latest: bytes) -> None:
        self._latest = latest
        self._server.start()
        self._started = True
        with self._lock:
            for _ in range(_REQUESTED_CALLS):
                self._request_call()
        self._thread = threading.Thread(
            target=self._run, name=f"gpulet-plugin-{self.name}", daemon=True
        )
        self._thread.start()

    def destroy_unstarted(self) -> None:
        """Release a server that never started (a failed bind)."""
        with self._lock:
            if not self._started and not self._destroyed:
                self._destroyed = True
                self._server.destroy()
        self.done.set()

    def begin_stop(self) -> None:
        """Refuse new calls and end every ListAndWatch stream (UNAVAILABLE)."""
        with self._lock:
            if self._stopping or not self._started:
                return
            self._stopping = True
            self._server.shutdown(self._cq, _SHUTDOWN)
            self._outstanding += 1
            streams = list(self._streams)
        for s in streams:
            s.call.cancel(
                cygrpc.StatusCode.unavailable, f"gpulet stopped serving {self.name}".encode()
            )

    def cancel_all(self) -> None:
        """End every call still open (after the grace period)."""
        with self._lock:
            if self._stopping and not self._destroyed:
                self._server.cancel_all_calls()

    # --- ListAndWatch -------------------------------------------------------------------

    @property
    def streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def publish(self, data: bytes) -> None:
        """A new device list for every stream (any thread)."""
        with self._lock:
            self._latest = data
            for s in self._streams:
                self._offer(s, data)

    def _offer(self, s: _Stream, data: bytes) -> None:
        # Under the lock.
        if not s.open or data == s.last:
            return
        s.last = data
        if s.sending:
            s.pending = data  # replaces any older list not yet sent
        else:
            self._send(s, data)

    def _send(self, s: _Stream, data: bytes) -> None:
        # Under the lock.
        ops: tuple[Any, ...] = (cygrpc.SendMessageOperation(data, 0),)
        if not s.started:
            ops = (cygrpc.SendInitialMetadataOperation(None, 0), *ops)
        if self._start_batch(s.call, ops, s.sent_tag):
            s.started = True
            s.sending = True

    def _open_stream(self, call: Any) -> None:
        with self._lock:
            if len(self._streams) >= self._max_streams:
                refused = True
                warn, self._refusing = not self._refusing, True
            else:
                refused = warn = False
                s = _Stream(call)
                self._streams.add(s)
                self._start_batch(call, (cygrpc.ReceiveCloseOnServerOperation(0),), s.closed_tag)
                self._offer(s, self._latest)
                count = len(self._streams)
        if refused:
            message = (
                f"at most {self._max_streams} ListAndWatch streams may be open for {self.name} "
                f"and {self._max_streams} are (the kubelet needs one): close one and retry"
            )
            if warn:  # once until a stream closes, however many are refused meanwhile
                log.warning("ListAndWatch refused: %s", message)
            self._finish(call, cygrpc.StatusCode.resource_exhausted, message)
            return
        log.info("ListAndWatch opened for %s (%d open)", self.name, count)

    def _stream_sent(self, s: _Stream, ok: bool) -> None:
        with self._lock:
            s.sending = False
            if not ok:
                s.open = False
                s.pending = None
            elif s.pending is not None and s.open:
                data, s.pending = s.pending, None
                self._send(s, data)

    def _stream_closed(self, s: _Stream) -> None:
        with self._lock:
            s.open = False
            s.pending = None
            self._streams.discard(s)
            self._refusing = False
            count = len(self._streams)
        log.info("ListAndWatch closed for %s (%d open)", self.name, count)

    # --- the completion queue -----------------------------------------------------------

    def _request_call(self) -> None:
        # Under the lock.
        if not self._stopping:
            self._server.request_call(self._cq, self._cq, _NEW_CALL)
            self._outstanding += 1
            self._requested += 1

    def _start_batch(self, call: Any, ops: tuple[Any, ...], tag: _Tag) -> bool:
        # Under the lock when another thread may start batches too (streams).
        if call.start_server_batch(ops, tag) != 0:  # grpc_call_error: not started, no event
            log.warning("%s: a gRPC batch could not be started", self.name)
            return False
        self._outstanding += 1
        return True

    def _finish(self, call: Any, code: Any, details: str, response: bytes | None = None) -> None:
        ops: list[Any] = [cygrpc.SendInitialMetadataOperation(None, 0)]
        if response is not None:
            ops.append(cygrpc.SendMessageOperation(response, 0))
        ops += [_status(code, details), cygrpc.ReceiveCloseOnServerOperation(0)]
        with self._lock:
            self._start_batch(call, tuple(ops), _FINISHED)

    def _run(self) -> None:
        cq = self._cq
        try:
            while True:
                event = cq.poll()
                tag = event.tag
                arrival = tag is _NEW_CALL
                try:
                    if arrival:
                        with self._lock:
                            self._requested -= 1
                            if self._requested == 0:  # never none requested
                                self._request_call()
                        if event.success:
                            self._new_call(event.call, event.call_details.method)
                    else:
                        self._dispatch(tag, event)
                except Exception:  # a bug: this call is lost, the server keeps serving
                    log.exception("the gRPC server of %s failed to handle an event", self.name)
                del event
                with self._lock:
                    self._outstanding -= 1
                    # Topped up after other events (a unary call's answer is then on its way).
                    if not arrival and self._requested < _REQUESTED_CALLS:
                        self._request_call()
                    if self._shut_down and self._outstanding == 0:
                        self._destroyed = True
                        self._server.destroy()
                        break
        except BaseException:  # a bug here must not pass silently
            log.exception("the gRPC server of %s stopped", self.name)
        finally:
            self.done.set()

    def _dispatch(self, tag: _Tag, event: Any) -> None:
        if tag is _FINISHED:
            pass
        elif isinstance(tag, _Unary):
            message = event.batch_operations[0].message() if event.success else None
            self._unary(tag, message)
        elif isinstance(tag, _StreamSent):
            self._stream_sent(tag.stream, bool(event.success))
        elif isinstance(tag, _StreamClosed):
            self._stream_closed(tag.stream)
        elif tag is _SHUTDOWN:
            self._shut_down = True

    def _new_call(self, call: Any, method: bytes) -> None:
        if method == _LIST_AND_WATCH:
            self._open_stream(call)
            return
        handler = self._handlers.get(method)
        if handler is None:
            name = method.decode(errors="replace")
            self._finish(call, cygrpc.StatusCode.unimplemented, f"unknown method {name}")
            return
        with self._lock:
            self._start_batch(
                call,
                (cygrpc.ReceiveMessageOperation(0),),
                _Unary(call, handler, self._after.get(method)),
            )

    def _unary(self, tag: _Unary, message: bytes | None) -> None:
        call = tag.call
        if message is None:  # cancelled, too large, or no request message at all
            self._finish(call, cygrpc.StatusCode.invalid_argument, "no request message")
            return
        try:
            response = tag.handler(message)
        except RpcRefusal as e:
            self._finish(call, e.code.value[0], e.details)
            return
        except Exception:  # answer the caller, keep serving
            log.exception("%s: a device-plugin call failed", self.name)
            self._finish(call, cygrpc.StatusCode.internal, "gpulet failed: see its log")
            return
        self._finish(call, cygrpc.StatusCode.ok, "", response)
        if tag.after is not None:
            tag.after()


# --- the server ---------------------------------------------------------------------------


class PluginServer:
    """The device-plugin server of one resource.

    ``on_allocate`` is called on the event loop that started the server, at most
    :data:`ALLOCATE_HOOK_DELAY` after each successful Allocate (whose response is then on its
    way; Allocate calls meanwhile share the call); ``observe(rpc, seconds)`` is called on the
    server's own thread (it must be thread-safe).
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
    ) -> None:
        self.resource = resource
        self.state = state
        self.path = pathlib.Path(directory) / resource.socket_name
        check_socket_path(self.path)
        self.max_streams = max_streams
        self._on_allocate = on_allocate
        self.servicer = DevicePluginServicer(state, resource, settings, observe=observe)
        self._transport: _Transport | None = None
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

        Raises :class:`ServeError` when the socket cannot be made; the server is then stopped
        and may be started again.
        """
        if self._transport is not None:
            await self.stop()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(
                f"cannot create the directory {self.path.parent}: {e.strerror or e}"
            ) from None
        self._clear_path()
        after = {_ALLOCATE: self._allocated} if self._on_allocate is not None else {}
        transport = _Transport(self.resource.name, self.servicer.unary, self.max_streams, after)
        with _umask(0o177):
            bound = transport.bind(self.path)
        if not bound:
            transport.destroy_unstarted()
            raise self._error(_bind_error(self.path))
        try:
            os.chmod(self.path, SOCKET_MODE)
            st = os.stat(self.path)
        except OSError as e:
            transport.destroy_unstarted()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise self._error(e.strerror or str(e)) from None
        self._loop = asyncio.get_running_loop()
        transport.start(self.servicer.device_list())
        self._identity = (st.st_dev, st.st_ino)
        self._transport = transport
        self._publisher = asyncio.create_task(
            self._publish(transport), name=f"gpulet-list-{self.resource.name}"
        )
        self.starts += 1
        log.info("serving %s on %s", self.resource.name, self.path)

    async def _publish(self, transport: _Transport) -> None:
        """Give the streams the device list on every change of the state."""
        with self.state.watch() as watch:
            while True:
                try:
                    transport.publish(self.servicer.device_list())
                except Exception:  # a bug: the next change tries again
                    log.exception("cannot send the device list of %s", self.resource.name)
                await watch.wait()

    def _allocated(self) -> None:
        # On the server's thread, after an Allocate response: have the loop call the hook
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
        transport.begin_stop()
        if not await asyncio.to_thread(transport.done.wait, grace or 0.0):
            transport.cancel_all()
            if not await asyncio.to_thread(transport.done.wait, 10.0):
                log.warning("the gRPC server of %s did not stop within 10s", self.resource.name)
        if ours:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._identity = None
        log.info("stopped serving %s", self.resource.name)
