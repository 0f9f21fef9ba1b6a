"""What every device-plugin transport shares: the bounds, the answer to a unary call, and the
rules of ListAndWatch streams.

:mod:`gpulet.deviceplugin.server` serves one resource over one of two transports that move the
servicer's bytes (:mod:`gpulet.deviceplugin.servicer`):

- ``native`` (:mod:`.transport_native`): one thread polls grpcio's private low-level layer
  (``grpc._cython.cygrpc``) and runs the servicer inline;
- ``aio`` (:mod:`.transport_aio`): ``grpc.aio.server`` with generic handlers, public API only.

Both take their bounds and rules from here, so they cannot drift apart:

- :data:`SERVER_OPTIONS` (request size, concurrent calls, no port sharing, no BDP probing);
- :func:`answer`: a unary call's status, details and response from the servicer's function
  (a refusal's own status, ``INTERNAL`` for a bug, logged);
- :class:`ListAndWatchHub`: at most ``max_streams`` streams per resource (another one is
  refused with ``RESOURCE_EXHAUSTED``, so the oldest streams win), at most one message in
  flight per stream and only the newest device list behind it, nothing sent twice in a row.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

import grpc

from gpulet.deviceplugin.servicer import SERVICE, RpcRefusal

__all__ = [
    "FAILED",
    "LIST_AND_WATCH",
    "MAX_CONCURRENT_STREAMS",
    "MAX_LIST_AND_WATCH_STREAMS",
    "MAX_REQUEST_BYTES",
    "SERVER_OPTIONS",
    "ListAndWatchHub",
    "Stream",
    "Transport",
    "TransportFactory",
    "answer",
]

log = logging.getLogger("gpulet.deviceplugin")

#: The largest request message accepted (a larger one is refused by gRPC with
#: RESOURCE_EXHAUSTED before gpulet reads it).
MAX_REQUEST_BYTES = 1 << 20
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
#: The method path of ListAndWatch.
LIST_AND_WATCH = f"/{SERVICE}/ListAndWatch".encode()
#: What a call that failed inside gpulet is told (the log has the traceback).
FAILED = "gpulet failed: see its log"


def answer(
    name: str, handler: Callable[[bytes], bytes], message: bytes
) -> tuple[grpc.StatusCode, str, bytes | None]:
    """The status, details and response (``None`` unless OK) of a unary call of resource
    ``name`` whose request is ``message``."""
    try:
        return grpc.StatusCode.OK, "", handler(message)
    except RpcRefusal as e:
        return e.code, e.details, None
    except Exception:  # answer the caller, keep serving
        log.exception("%s: a device-plugin call failed", name)
        return grpc.StatusCode.INTERNAL, FAILED, None


class Stream(abc.ABC):
    """One ListAndWatch stream as :class:`ListAndWatchHub` sees it; each transport says how a
    message is sent. Its fields change only under the hub's lock."""

    __slots__ = ("last", "open", "pending", "sending")

    def __init__(self) -> None:
        self.open = True
        #: A message is in flight (sent, its completion not seen yet).
        self.sending = False
        #: The newest list not sent yet, waiting for the one in flight.
        self.pending: bytes | None = None
        #: The newest list sent or waiting (nothing is sent twice in a row).
        self.last: bytes | None = None

    @abc.abstractmethod
    def send(self, data: bytes) -> bool:
        """Start sending ``data`` (under the hub's lock: it must not block); the transport
        calls :meth:`ListAndWatchHub.sent` when the send completes. False: it could not be
        started (no completion will come)."""


S = TypeVar("S", bound=Stream)


class ListAndWatchHub(Generic[S]):
    """The ListAndWatch streams of one resource and the device list they are sent.

    ``lock`` guards every stream's fields and is held while :meth:`Stream.send` runs (a
    transport whose sends touch its own state passes the lock that guards it). Every method
    may be called from any thread.
    """

    def __init__(self, name: str, max_streams: int, lock: threading.Lock | None = None) -> None:
        self.name = name
        self.max_streams = max_streams
        self.lock = lock if lock is not None else threading.Lock()
        self._streams: set[S] = set()
        self._latest = b""
        self._refusing = False  # a refusal was logged since the last stream closed

    @property
    def count(self) -> int:
        with self.lock:
            return len(self._streams)

    def snapshot(self) -> list[S]:
        with self.lock:
            return list(self._streams)

    def open(self, stream: S) -> None:
        """Add a new stream, which is then sent the latest list; raises :class:`RpcRefusal`
        (``RESOURCE_EXHAUSTED``) when ``max_streams`` are open already."""
        with self.lock:
            if len(self._streams) >= self.max_streams:
                warn, self._refusing = not self._refusing, True
                refused = True
            else:
                refused = warn = False
                self._streams.add(stream)
                self._offer(stream, self._latest)
                count = len(self._streams)
        if refused:
            message = (
                f"at most {self.max_streams} ListAndWatch streams may be open for {self.name} "
                f"and {self.max_streams} are (the kubelet needs one): close one and retry"
            )
            if warn:  # once until a stream closes, however many are refused meanwhile
                log.warning("ListAndWatch refused: %s", message)
            raise RpcRefusal(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        log.info("ListAndWatch opened for %s (%d open)", self.name, count)

    def publish(self, data: bytes) -> None:
        """A new device list for every stream (and every stream opened later)."""
        with self.lock:
            self._latest = data
            for s in self._streams:
                self._offer(s, data)

    def sent(self, stream: S, ok: bool) -> None:
        """The message in flight on ``stream`` completed (``ok``) or failed (the stream is
        done: nothing more is sent on it)."""
        with self.lock:
            stream.sending = False
            if not ok:
                stream.open = False
                stream.pending = None
            elif stream.pending is not None and stream.open:
                data, stream.pending = stream.pending, None
                self._send(stream, data)

    def close(self, stream: S) -> None:
        """``stream`` ended (the client left, or the server ended it)."""
        with self.lock:
            stream.open = False
            stream.pending = None
            if stream not in self._streams:
                return
            self._streams.discard(stream)
            self._refusing = False
            count = len(self._streams)
        log.info("ListAndWatch closed for %s (%d open)", self.name, count)

    def _offer(self, s: S, data: bytes) -> None:
        # Under the lock.
        if not s.open or data == s.last:
            return
        s.last = data
        if s.sending:
            s.pending = data  # replaces any older list not yet sent
        else:
            self._send(s, data)

    def _send(self, s: S, data: bytes) -> None:
        # Under the lock.
        if s.send(data):
            s.sending = True


class Transport(Protocol):
    """A gRPC server of one resource on one unix socket, as PluginServer drives it:
    :meth:`bind`, then :meth:`start` (or :meth:`discard`), :meth:`publish` any number of
    times, :meth:`stop`. Runs on the event loop that starts it."""

    #: ``native`` or ``aio``.
    kind: str

    @property
    def streams(self) -> int:
        """ListAndWatch streams open now."""
        ...

    def bind(self, path: str) -> bool:
        """Listen on ``path`` (before :meth:`start`); false when gRPC could not."""
        ...

    async def start(self, latest: bytes) -> None:
        """Serve; ``latest`` is the device list a new stream is sent first."""
        ...

    async def discard(self) -> None:
        """Release a transport that did not start."""
        ...

    def publish(self, data: bytes) -> None:
        """A new device list for every stream (any thread)."""
        ...

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, end every ListAndWatch stream (``UNAVAILABLE``), give the calls
        in progress ``grace`` seconds (``None``: none), then cancel them."""
        ...


class TransportFactory(Protocol):
    def __call__(
        self,
        name: str,
        handlers: Mapping[bytes, Callable[[bytes], bytes]],
        max_streams: int,
        after: Mapping[bytes, Callable[[], None]] | None = None,
    ) -> Transport: ...
