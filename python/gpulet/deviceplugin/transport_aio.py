"""The ``aio`` transport: ``grpc.aio.server`` with generic handlers, grpcio's public API only.

The servicer's functions are registered as they are (no (de)serializer: bytes in, bytes out)
and run on the event loop that started the server; the rules are those of every transport
(:mod:`.transport`): the same options, :func:`~.transport.answer` for unary calls, and a
:class:`~.transport.ListAndWatchHub` for the streams, each stream a handler that writes what the
hub hands it, one message at a time (``context.write`` returns once the message is sent, as the
native transport's send batch completes).

It serves where the ``native`` transport cannot (a grpcio whose private layer differs), with
about a third more latency and twice the server CPU per call (docs/device-plugin.md,
"Transport").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import grpc

from gpulet.deviceplugin.servicer import RpcRefusal
from gpulet.deviceplugin.transport import (
    LIST_AND_WATCH,
    SERVER_OPTIONS,
    ListAndWatchHub,
    Stream,
    answer,
)

__all__ = ["AioTransport"]

log = logging.getLogger("gpulet.deviceplugin")

Context = grpc.aio.ServicerContext[bytes, bytes]


class _AioStream(Stream):
    """A ListAndWatch stream: its handler waits on ``wake`` for a message (or the end)."""

    __slots__ = ("ended", "loop", "message", "wake")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.wake = asyncio.Event()
        self.message: bytes | None = None
        self.ended = False

    def send(self, data: bytes) -> bool:
        # Under the hub's lock, on any thread.
        self.message = data
        return self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the loop is closed: nobody to send
            return False
        return True


def _split(path: bytes) -> tuple[str, str]:
    service, _, method = path.decode().lstrip("/").partition("/")
    return service, method


class AioTransport:
    """A ``grpc.aio`` server on one unix socket, on the running event loop.

    ``handlers`` maps unary method paths to functions of the request's bytes; ``after`` maps
    some of them to what to call when their response is returned to gRPC (not on a refusal).
    ListAndWatch streams send what :meth:`publish` was last given.
    """

    kind = "aio"

    def __init__(
        self,
        name: str,
        handlers: Mapping[bytes, Callable[[bytes], bytes]],
        max_streams: int,
        after: Mapping[bytes, Callable[[], None]] | None = None,
    ) -> None:
        self.name = name
        self._hub: ListAndWatchHub[_AioStream] = ListAndWatchHub(name, max_streams)
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
        self._bound = False
        self._started = False
        methods: dict[str, dict[str, grpc.RpcMethodHandler[bytes, bytes]]] = {}
        for path, fn in handlers.items():
            service, method = _split(path)
            methods.setdefault(service, {})[method] = grpc.unary_unary_rpc_method_handler(
                self._unary(fn, (after or {}).get(path))
            )
        service, method = _split(LIST_AND_WATCH)
        methods.setdefault(service, {})[method] = grpc.unary_stream_rpc_method_handler(
            self._list_and_watch
        )
        self._server.add_generic_rpc_handlers(
            tuple(grpc.method_handlers_generic_handler(s, m) for s, m in methods.items())
        )

    # --- life ---------------------------------------------------------------------------

    def bind(self, path: str) -> bool:
        try:
            self._server.add_insecure_port(f"unix:{path}")
        except RuntimeError:  # gRPC's "Failed to bind" (its log says why)
            return False
        self._bound = True
        return True

    async def start(self, latest: bytes) -> None:
        self._hub.publish(latest)
        await self._server.start()
        self._started = True

    async def discard(self) -> None:
        if self._started:
            return
        # gRPC releases a bound socket's listener only when a started server stops (a server
        # never started is left to the garbage collector, which does not shut it down).
        try:
            if self._bound:
                await self._server.start()
            await self._server.stop(None)
        except Exception:  # nothing more to do: say so, keep the first error
            log.warning("%s: the gRPC server could not be released", self.name, exc_info=True)

    async def stop(self, grace: float | None) -> None:
        for s in self._hub.snapshot():
            s.end()
        try:
            await asyncio.wait_for(self._server.stop(grace), (grace or 0.0) + 10.0)
        except TimeoutError:
            log.warning("the gRPC server of %s did not stop within 10s", self.name)

    # --- calls --------------------------------------------------------------------------

    @property
    def streams(self) -> int:
        return self._hub.count

    def publish(self, data: bytes) -> None:
        self._hub.publish(data)

    def _unary(
        self, fn: Callable[[bytes], bytes], after: Callable[[], None] | None
    ) -> Callable[[bytes, Context], Awaitable[bytes]]:
        name = self.name

        async def handle(request: bytes, context: Context) -> bytes:
            code, details, response = answer(name, fn, request)
            if response is None:
                await context.abort(code, details)
            if after is not None:
                after()
            return response

        return handle

    async def _list_and_watch(self, request: bytes, context: Context) -> None:
        hub = self._hub
        stream = _AioStream(asyncio.get_running_loop())
        try:
            hub.open(stream)
        except RpcRefusal as e:
            await context.abort(e.code, e.details)
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if stream.ended:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, f"gpulet stopped serving {self.name}"
                    )
                with hub.lock:
                    message, stream.message = stream.message, None
                if message is None:
                    continue
                ok = False
                try:
                    await context.write(message)
                    ok = True
                finally:
                    hub.sent(stream, ok)
        finally:
            hub.close(stream)
