"""The ``native`` transport: every call of one resource handled on one thread, which polls the
gRPC server's completion queue itself and runs the servicer's functions (bytes in, bytes out)
inline.

It is built on grpcio's low-level ``cygrpc`` layer (the one ``grpc.server`` and ``grpc.aio`` are
built on), which is private: grpcio may change it in any release. Neither stock server runs
handlers inline: ``grpc.server`` hands each call to a pool thread and back several times,
``grpc.aio`` wakes the event loop from a poller thread for each step; on the 2-core development
machine they cost 230-350 µs of server CPU per empty call against some 100 µs for this loop
(benches/RESULTS.md, "Device plugin"). Handlers take tens of microseconds and never block (the
state does no I/O).

:func:`check` says whether a ``cygrpc`` module has every name this transport uses, with
signatures that take the arguments it passes; the server uses this transport only then, and
falls back to :mod:`.transport_aio` when it does not, or when this transport fails to start
(:class:`NativeFailed`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from gpulet.deviceplugin.servicer import RpcRefusal
from gpulet.deviceplugin.transport import (
    LIST_AND_WATCH,
    SERVER_OPTIONS,
    ListAndWatchHub,
    Stream,
    answer,
)
from gpulet.errors import GpuletError

__all__ = ["NativeFailed", "NativeTransport", "check", "cygrpc"]

log = logging.getLogger("gpulet.deviceplugin")


def _load() -> Any:
    try:
        return importlib.import_module("grpc._cython.cygrpc")
    except Exception:  # checked by check(): the stock transport serves instead
        return None


#: grpcio's private layer (``None`` when it cannot be imported). It has no type stubs:
#: everything taken from it is Any.
cygrpc: Any = _load()

#: The methods this transport calls, with the number of positional arguments it passes.
_METHODS: tuple[tuple[str, str, int], ...] = (
    ("CompletionQueue", "poll", 0),
    ("Server", "register_completion_queue", 1),
    ("Server", "add_http2_port", 1),
    ("Server", "start", 0),
    ("Server", "request_call", 3),
    ("Server", "shutdown", 2),
    ("Server", "cancel_all_calls", 0),
    ("Server", "destroy", 0),
    ("Call", "start_server_batch", 2),
    ("Call", "cancel", 2),
    ("ReceiveMessageOperation", "message", 0),
)
#: The attributes it reads of what the completion queue returns.
_ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("RequestCallEvent", ("tag", "success", "call", "call_details")),
    ("BatchOperationEvent", ("tag", "success", "batch_operations")),
    ("CallDetails", ("method",)),
)
#: The operations it makes, with the arguments it makes them with (made once by check()).
_OPERATIONS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("SendInitialMetadataOperation", (None, 0)),
    ("SendMessageOperation", (b"", 0)),
    ("SendStatusFromServerOperation", (None, 0, b"", 0)),
    ("ReceiveMessageOperation", (0,)),
    ("ReceiveCloseOnServerOperation", (0,)),
)


def check(module: Any) -> str | None:
    """Why ``module`` (a ``cygrpc``) cannot carry this transport, or ``None`` when it has every
    class, method and attribute it uses, the methods taking the arguments it passes and the
    operations made as it makes them. (The completion queue and the server are made when the
    transport is: a failure there is a :class:`NativeFailed`.)"""
    if module is None:
        return "grpc._cython.cygrpc cannot be imported"
    for owner_name, method, count in _METHODS:
        owner = getattr(module, owner_name, None)
        if owner is None:
            return f"cygrpc.{owner_name} is missing"
        fn = getattr(owner, method, None)
        if fn is None:
            return f"cygrpc.{owner_name}.{method} is missing"
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return f"the signature of cygrpc.{owner_name}.{method} cannot be read"
        try:
            signature.bind(*([None] * (count + 1)))  # self, then the arguments
        except TypeError:
            return (
                f"cygrpc.{owner_name}.{method}{signature} does not take "
                f"{count} positional argument(s)"
            )
    for owner_name, attributes in _ATTRIBUTES:
        owner = getattr(module, owner_name, None)
        if owner is None:
            return f"cygrpc.{owner_name} is missing"
        for attribute in attributes:
            if not hasattr(owner, attribute):
                return f"cygrpc.{owner_name}.{attribute} is missing"
    for name, args in _OPERATIONS:
        cls = getattr(module, name, None)
        if cls is None:
            return f"cygrpc.{name} is missing"
        try:
            cls(*args)
        except Exception as e:
            shown = ", ".join(repr(a) for a in args)
            return f"cygrpc.{name}({shown}) fails: {type(e).__name__}: {e}"
    return None


class NativeFailed(GpuletError):
    """The private layer failed while the transport was made, bound or started (not the
    socket's fault: the stock transport can serve instead)."""


def _code(code: grpc.StatusCode) -> int:
    value: int = code.value[0]
    return value


# --- completion-queue tags ----------------------------------------------------------------


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


class _NativeStream(Stream):
    """A ListAndWatch stream: a gRPC call and the tags of its batches."""

    __slots__ = ("call", "closed_tag", "sent_tag", "started", "transport")

    def __init__(self, transport: NativeTransport, call: Any) -> None:
        super().__init__()
        self.transport = transport
        self.call = call
        self.started = False  # initial metadata sent
        self.sent_tag = _StreamSent(self)
        self.closed_tag = _StreamClosed(self)

    def send(self, data: bytes) -> bool:
        # Under the transport's lock (the hub's).
        ops: tuple[Any, ...] = (cygrpc.SendMessageOperation(data, 0),)
        if not self.started:
            ops = (cygrpc.SendInitialMetadataOperation(None, 0), *ops)
        if not self.transport._start_batch(self.call, ops, self.sent_tag):
            return False
        self.started = True
        return True


class _StreamSent(_Tag):
    __slots__ = ("stream",)

    def __init__(self, stream: _NativeStream) -> None:
        self.stream = stream


class _StreamClosed(_Tag):
    __slots__ = ("stream",)

    def __init__(self, stream: _NativeStream) -> None:
        self.stream = stream


#: Calls requested from gRPC ahead of their arrival: when one arrives, the next is requested
#: after its answer is sent, not before (one more stays requested meanwhile).
_REQUESTED_CALLS = 2


class NativeTransport:
    """A gRPC server on one unix socket whose calls are all handled on one thread.

    ``handlers`` maps unary method paths to functions of the request's bytes; ``after`` maps
    some of them to what to call once their response is on its way (not on a refusal).
    ListAndWatch streams send what :meth:`publish` was last given. Every batch started is
    counted, so the thread ends only when the server has shut down and every batch has
    completed.
    """

    kind = "native"

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
        self._lock = threading.Lock()
        self._hub: ListAndWatchHub[_NativeStream] = ListAndWatchHub(name, max_streams, self._lock)
        try:
            self._cq = cygrpc.CompletionQueue()
            self._server = cygrpc.Server(SERVER_OPTIONS, False)
            self._server.register_completion_queue(self._cq)
        except Exception as e:
            raise NativeFailed(f"making the server failed: {type(e).__name__}: {e}") from e
        self._bound = False  # a socket is bound (gRPC holds a listener)
        self._core_started = False  # the gRPC server was started
        self._started = False  # and this transport's thread serves it
        self._stopping = False
        self._shut_down = False
        self._destroyed = False
        self._outstanding = 0
        self._requested = 0  # calls requested from gRPC and not yet arrived
        self._thread: threading.Thread | None = None
        self.done = threading.Event()

    # --- life ---------------------------------------------------------------------------

    def bind(self, path: str) -> bool:
        try:
            port = self._server.add_http2_port(f"unix:{path}".encode())
        except Exception as e:
            raise NativeFailed(f"binding failed: {type(e).__name__}: {e}") from e
        self._bound = bool(port)
        return self._bound

    async def start(self, latest: bytes) -> None:
        self._hub.publish(latest)
        try:
            self._core_started = True
            self._server.start()
            with self._lock:
                for _ in range(_REQUESTED_CALLS):
                    self._request_call()
            thread = threading.Thread(
                target=self._run, name=f"gpulet-plugin-{self.name}", daemon=True
            )
            thread.start()
        except Exception as e:
            await self.discard()
            raise NativeFailed(f"starting the server failed: {type(e).__name__}: {e}") from e
        self._thread = thread
        self._started = True

    async def discard(self) -> None:
        with self._lock:
            if self._started or self._destroyed:
                return
            self._destroyed = True
            self._stopping = True
        try:
            await asyncio.to_thread(self._release)
        except Exception:  # the layer is not what it should be: nothing more to do
            log.warning("%s: the gRPC server could not be released", self.name, exc_info=True)
        self.done.set()

    def _release(self) -> None:
        """Destroy a server that this transport's thread does not serve. gRPC aborts the
        process when a server holding a bound socket is destroyed before it was shut down,
        and shuts down only a started server: such a server is started (no call is requested:
        none is served), then destroyed, which shuts it down on grpcio's own queue and waits
        for that."""
        try:
            if self._bound and not self._core_started:
                self._core_started = True
                self._server.start()
        finally:
            self._server.destroy()

    async def stop(self, grace: float | None) -> None:
        self._begin_stop()
        if not await asyncio.to_thread(self.done.wait, grace or 0.0):
            with self._lock:
                if self._stopping and not self._destroyed:
                    self._server.cancel_all_calls()
            if not await asyncio.to_thread(self.done.wait, 10.0):
                log.warning("the gRPC server of %s did not stop within 10s", self.name)

    def _begin_stop(self) -> None:
        """Refuse new calls and end every ListAndWatch stream (UNAVAILABLE)."""
        with self._lock:
            if self._stopping or not self._started:
                return
            self._stopping = True
            self._server.shutdown(self._cq, _SHUTDOWN)
            self._outstanding += 1
        details = f"gpulet stopped serving {self.name}".encode()
        for s in self._hub.snapshot():
            s.call.cancel(_code(grpc.StatusCode.UNAVAILABLE), details)

    # --- ListAndWatch -------------------------------------------------------------------

    @property
    def streams(self) -> int:
        return self._hub.count

    def publish(self, data: bytes) -> None:
        self._hub.publish(data)

    def _open_stream(self, call: Any) -> None:
        stream = _NativeStream(self, call)
        try:
            self._hub.open(stream)
        except RpcRefusal as e:
            self._finish(call, _code(e.code), e.details)
            return
        with self._lock:
            self._start_batch(call, (cygrpc.ReceiveCloseOnServerOperation(0),), stream.closed_tag)

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

    def _finish(self, call: Any, code: int, details: str, response: bytes | None = None) -> None:
        ops: list[Any] = [cygrpc.SendInitialMetadataOperation(None, 0)]
        if response is not None:
            ops.append(cygrpc.SendMessageOperation(response, 0))
        ops += [
            cygrpc.SendStatusFromServerOperation(None, code, details.encode(), 0),
            cygrpc.ReceiveCloseOnServerOperation(0),
        ]
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
            self._hub.sent(tag.stream, bool(event.success))
        elif isinstance(tag, _StreamClosed):
            self._hub.close(tag.stream)
        elif tag is _SHUTDOWN:
            self._shut_down = True

    def _new_call(self, call: Any, method: bytes) -> None:
        if method == LIST_AND_WATCH:
            self._open_stream(call)
            return
        handler = self._handlers.get(method)
        if handler is None:
            name = method.decode(errors="replace")
            self._finish(call, _code(grpc.StatusCode.UNIMPLEMENTED), f"unknown method {name}")
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
            code = _code(grpc.StatusCode.INVALID_ARGUMENT)
            self._finish(call, code, "no request message")
            return
        status, details, response = answer(self.name, tag.handler, message)
        self._finish(call, _code(status), details, response)
        if response is not None and tag.after is not None:
            tag.after()
