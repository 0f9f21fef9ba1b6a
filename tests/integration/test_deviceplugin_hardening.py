"""The device-plugin server under hostile or unlucky conditions.

Each test serves one resource with :class:`gpulet.deviceplugin.server.PluginServer` on an event
loop in a thread (as the agent does) over a real unix socket, on a simulated node, and talks to
it with gRPC clients as the kubelet or a misbehaving local client would:

- socket paths at gRPC's limit and one byte over it;
- a file, directory or link squatting the socket path, and a directory the OS refuses to bind in;
- requests with too many containers or IDs, or too large to read, and what gets logged;
- more ListAndWatch streams than the cap, and a stream that never reads;
- a grpcio whose private layer does not fit the native transport.

The tests that take ``transport`` run once per transport (``native``, ``aio``): the stock one
must bind, bound, answer and stream as the native one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pathlib
import shutil
import socket
import stat
import threading
import types
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from agents import wait_until

import gpulet
from gpulet import config
from gpulet._core import Node
from gpulet._proto.deviceplugin.v1beta1 import api_pb2 as dp
from gpulet._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from gpulet.deviceplugin import ResponseSettings, build_resources, transport_native
from gpulet.deviceplugin import server as server_module
from gpulet.deviceplugin.server import (
    MAX_LIST_AND_WATCH_STREAMS,
    MAX_REQUEST_BYTES,
    MAX_SOCKET_PATH,
    SOCKET_MODE,
    TRANSPORT_ENV,
    PluginServer,
    ServeError,
    SocketPathError,
    TransportError,
)
from gpulet.deviceplugin.servicer import MAX_CONTAINER_REQUESTS, MAX_DETAILS
from gpulet.deviceplugin.state import DevicePluginState
from gpulet.errors import GpuletError
from gpulet.testing.kubelet import WAIT, PluginClient

pytestmark = pytest.mark.usefixtures("fake_library")

GPU = "nvidia.com/gpu"
T = TypeVar("T")


def discover(spec: str) -> Node:
    with gpulet.simulated(spec):
        return gpulet.discover()


def make_state(node: Node, **doc: Any) -> DevicePluginState:
    cfg = config.parse({"version": "v1", **doc})
    return DevicePluginState(node, cfg, build_resources(node, cfg))


@pytest.fixture(scope="module")
def dgx_h100(fake_library: pathlib.Path) -> Node:
    return discover("dgx-h100")


@pytest.fixture(params=["native", "aio"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each transport in turn: the bounds, answers and stream rules are the same on both."""
    return str(request.param)


class Served:
    """A PluginServer of ``nvidia.com/gpu`` on its own event loop in a thread."""

    def __init__(self, state: DevicePluginState, directory: pathlib.Path, **kwargs: Any) -> None:
        self.state = state
        self.transport: str | None = kwargs.get("transport")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = PluginServer(
            state, state.resources.resource(GPU), directory, ResponseSettings(), **kwargs
        )

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def run(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())

    def start(self) -> None:
        self.call(self.server.start())
        if self.transport is not None:  # no silent fallback: the one asked for serves
            assert self.server.transport == self.transport

    def close(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(WAIT)
            self.loop.close()


@contextlib.contextmanager
def serving(state: DevicePluginState, directory: pathlib.Path, **kwargs: Any) -> Iterator[Served]:
    s = Served(state, directory, **kwargs)
    try:
        s.start()
        yield s
    finally:
        s.close()


def allocate_request(*containers: list[str]) -> dp.AllocateRequest:
    return dp.AllocateRequest(
        container_requests=[dp.ContainerAllocateRequest(devices_ids=c) for c in containers]
    )


# --- socket paths ----------------------------------------------------------------------------


def directory_for(root: pathlib.Path, state: DevicePluginState, size: int) -> pathlib.Path:
    """A directory under ``root`` in which the socket's path is ``size`` bytes long."""
    name = state.resources.resource(GPU).socket_name
    fill = size - len(os.fsencode(str(root))) - 2 - len(name)
    assert fill > 0, "the temporary root is too long for this test"
    directory = root / ("d" * fill)
    assert len(os.fsencode(str(directory / name))) == size
    return directory


def test_the_longest_socket_path_serves_and_one_byte_more_is_refused(
    dgx_h100: Node, root: pathlib.Path, transport: str
) -> None:
    state = make_state(dgx_h100)
    longest = directory_for(root / "a", state, MAX_SOCKET_PATH)
    with serving(state, longest, transport=transport) as s:
        assert len(os.fsencode(str(s.server.path))) == MAX_SOCKET_PATH
        assert stat.S_IMODE(s.server.path.stat().st_mode) == SOCKET_MODE
        with PluginClient(s.server.path) as client:  # a unix:// client reaches it
            assert client.options().get_preferred_allocation_available
            assert len(client.devices()) == 8

    over = directory_for(root / "b", state, MAX_SOCKET_PATH + 1)
    with pytest.raises(SocketPathError, match=f"at most {MAX_SOCKET_PATH} bytes"):
        PluginServer(state, state.resources.resource(GPU), over, ResponseSettings())
    assert not (root / "b").exists()  # refused before anything was made


# --- what squats the socket path, and other reasons the OS refuses ---------------------------


@pytest.mark.parametrize("kind", ["regular file", "directory", "symbolic link"])
def test_something_else_at_the_socket_path_is_refused_and_left_alone(
    dgx_h100: Node, root: pathlib.Path, kind: str
) -> None:
    state = make_state(dgx_h100)
    s = Served(state, root)
    path = s.server.path
    if kind == "regular file":
        path.write_text("not a socket\n", encoding="utf-8")
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("kept\n", encoding="utf-8")
    else:
        path.symlink_to(root / "elsewhere")
    try:
        with pytest.raises(ServeError) as info:
            s.start()
        message = str(info.value)
        assert isinstance(info.value, GpuletError)
        assert str(path) in message
        assert f"is a {kind}, not a socket" in message
        assert "move or remove it" in message
        assert not s.server.serving
        # Untouched.
        if kind == "regular file":
            assert path.read_text(encoding="utf-8") == "not a socket\n"
        elif kind == "directory":
            assert (path / "inside").read_text(encoding="utf-8") == "kept\n"
        else:
            assert path.is_symlink()
        # Once it is gone, the same server starts.
        if kind == "directory":
            shutil.rmtree(path)
        else:
            path.unlink()
        s.start()
        assert s.server.serving
        with PluginClient(path) as client:
            assert len(client.devices()) == 8
    finally:
        s.close()
    assert not path.exists()


def test_a_stale_socket_is_replaced(dgx_h100: Node, root: pathlib.Path) -> None:
    state = make_state(dgx_h100)
    s = Served(state, root)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(s.server.path))
    stale.close()
    try:
        s.start()
        with PluginClient(s.server.path) as client:
            assert len(client.devices()) == 8
    finally:
        s.close()


def test_an_os_refusal_is_a_serve_error_with_the_reason(
    dgx_h100: Node, root: pathlib.Path, transport: str
) -> None:
    state = make_state(dgx_h100)
    # sysfs holds no sockets: the directory exists, binding in it fails (EPERM as root).
    s = Served(state, pathlib.Path("/sys"), transport=transport)
    try:
        with pytest.raises(ServeError) as info:
            s.start()
        message = str(info.value)
        assert f"cannot serve {GPU} on /sys/" in message
        assert "errno E" in message  # the OS's reason, by name
        assert not s.server.serving
        assert not s.server.path.exists()
    finally:
        s.close()

    # A directory that cannot be made (a file is in the way).
    (root / "file").write_text("", encoding="utf-8")
    s = Served(state, root / "file" / "plugins", transport=transport)
    try:
        with pytest.raises(ServeError, match="cannot create the directory"):
            s.start()
        assert not s.server.serving
    finally:
        s.close()


# --- bounded requests and logs ---------------------------------------------------------------


def test_too_many_container_requests_are_refused_before_the_state_is_asked(
    dgx_h100: Node, root: pathlib.Path, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = make_state(dgx_h100)
    with serving(state, root, transport=transport) as s, PluginClient(s.server.path) as client:
        gpus = [d.ID for d in client.devices()]
        before = (s.run(state.ledger.snapshot), s.run(state.assignments))
        for count in (MAX_CONTAINER_REQUESTS + 1, 10_000):
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="gpulet"):
                request = allocate_request(*([gpus[i % 8]] for i in range(count)))
                with pytest.raises(grpc.RpcError) as info:
                    client.stub.Allocate(request, timeout=WAIT)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = info.value.details() or ""
            assert f"holds {count} container requests" in details
            assert f"at most {MAX_CONTAINER_REQUESTS}" in details
            assert max(len(r.getMessage()) for r in caplog.records) <= MAX_DETAILS + 200
        assert (s.run(state.ledger.snapshot), s.run(state.assignments)) == before
        # The limit itself is accepted.
        request = allocate_request(*([gpus[i % 8]] for i in range(MAX_CONTAINER_REQUESTS)))
        response = client.stub.Allocate(request, timeout=WAIT)
        assert len(response.container_responses) == MAX_CONTAINER_REQUESTS


def test_more_ids_than_the_resource_advertises_are_refused(
    dgx_h100: Node, root: pathlib.Path, transport: str
) -> None:
    state = make_state(dgx_h100)
    with serving(state, root, transport=transport) as s, PluginClient(s.server.path) as client:
        gpus = [d.ID for d in client.devices()]
        nine = [*gpus, gpus[0]]
        with pytest.raises(grpc.RpcError) as info:
            client.allocate(nine)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "devices_ids names 9 device IDs" in (info.value.details() or "")
        assert "at most 8" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            client.preferred(nine, [gpus[0]], 2)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "available_deviceIDs names 9 device IDs" in (info.value.details() or "")
        assert s.run(state.assignments) == []
        assert len(client.allocate(gpus).container_responses) == 1


def test_a_request_over_the_size_limit_is_not_read(
    dgx_h100: Node, root: pathlib.Path, transport: str
) -> None:
    state = make_state(dgx_h100)
    with serving(state, root, transport=transport) as s, PluginClient(s.server.path) as client:
        big = allocate_request(["x" * 1000] * (2 * MAX_REQUEST_BYTES // 1000))
        assert big.ByteSize() > MAX_REQUEST_BYTES
        with pytest.raises(grpc.RpcError) as info:
            client.stub.Allocate(big, timeout=WAIT)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        gpus = [d.ID for d in client.devices()]  # and the server still answers
        assert client.allocate([gpus[0]]).container_responses


def test_allocate_logs_at_debug_with_the_ids_shortened(
    dgx_h100: Node, root: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = make_state(dgx_h100)
    with serving(state, root) as s, PluginClient(s.server.path) as client:
        gpus = [d.ID for d in client.devices()]
        with caplog.at_level(logging.INFO, logger="gpulet"):
            client.allocate([gpus[0]])
        assert not [r for r in caplog.records if "Allocate" in r.getMessage()]
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="gpulet"):
            client.allocate(gpus)
        (line,) = [r.getMessage() for r in caplog.records if "Allocate" in r.getMessage()]
        assert line == f"Allocate {GPU}: {','.join(gpus[:4])} ... (+4 more)"


def test_a_long_refusal_is_clipped_in_the_status_and_the_log(
    dgx_h100: Node, root: pathlib.Path, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    ts = {"resources": [{"name": GPU, "replicas": 64}]}
    state = make_state(dgx_h100, sharing={"timeSlicing": ts})
    with serving(state, root, transport=transport) as s, PluginClient(s.server.path) as client:
        replicas = [d.ID for d in client.devices()]
        assert len(replicas) == 512
        twice = replicas[:200] * 2  # the state names every repeated ID
        with caplog.at_level(logging.INFO, logger="gpulet"), pytest.raises(grpc.RpcError) as info:
            client.allocate(twice)
        details = info.value.details() or ""
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "more than once" in details or "more characters" in details
        assert len(details) <= MAX_DETAILS + 50
        assert details.endswith("more characters)")
        (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(line) <= MAX_DETAILS + 100


# --- ListAndWatch ----------------------------------------------------------------------------


def test_list_and_watch_streams_beyond_the_cap_are_refused(
    dgx_h100: Node, root: pathlib.Path, transport: str
) -> None:
    state = make_state(dgx_h100)
    with serving(state, root, transport=transport) as s, PluginClient(s.server.path) as client:
        watches = [client.watch() for _ in range(MAX_LIST_AND_WATCH_STREAMS)]
        for w in watches:
            assert len(w.next().devices) == 8
        assert s.server.streams == MAX_LIST_AND_WATCH_STREAMS
        with pytest.raises(grpc.RpcError) as info:
            client.watch().next()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = info.value.details() or ""
        assert f"at most {MAX_LIST_AND_WATCH_STREAMS} ListAndWatch streams" in details
        assert GPU in details
        # The streams that were open first keep working.
        latest = watches[0].latest
        assert latest is not None
        gpu = latest.devices[3].ID
        s.run(lambda: state.set_health(gpu, False, "XID 79"))
        for w in watches:
            w.wait_for(lambda r: r.devices[3].health == "Unhealthy")
        # Closing one makes room for another.
        watches[0].close()
        wait_until(lambda: s.server.streams < MAX_LIST_AND_WATCH_STREAMS, "a stream closing")
        assert client.watch().next().devices[3].health == "Unhealthy"


def test_a_stream_that_never_reads_holds_only_the_latest_list(
    dgx_h100: Node, root: pathlib.Path, transport: str
) -> None:
    # 8 GPUs x 512 replicas: each list is some 250 KB, more than a flow-control window.
    ts = {"resources": [{"name": GPU, "replicas": 512}]}
    state = make_state(dgx_h100, sharing={"timeSlicing": ts})
    gpus = [g.uuid for g in dgx_h100.gpus]
    flaps = 60
    options = [("grpc.http2.bdp_probe", 0)]  # a window that stays small: it stalls at once
    with (
        serving(state, root, transport=transport) as s,
        grpc.insecure_channel(f"unix://{s.server.path}", options=options) as stalled_channel,
    ):
        stalled = dp_grpc.DevicePluginStub(stalled_channel).ListAndWatch(dp.Empty())
        with PluginClient(s.server.path) as client:
            reader = client.watch()
            assert len(reader.next().devices) == 4096
            wait_until(lambda: s.server.streams == 2, "both streams open")
            for i in range(flaps):
                s.run(functools.partial(state.set_health, gpus[i % 8], i % 16 >= 8, f"flap {i}"))
            final = s.run(lambda: {d.device.id: d.healthy for d in state.list_devices(GPU)})

            def current(r: dp.ListAndWatchResponse) -> bool:
                return {d.ID: d.health == "Healthy" for d in r.devices} == final

            # The stream that reads is not held up by the one that does not.
            reader.wait_for(current)
        # Now the stalled stream reads: what waited for it is the list in flight when it
        # stalled and the newest one, not one list per change.
        received = 0
        for response in stalled:
            received += 1
            if current(response):
                break
        stalled.cancel()
    print(f"the stalled stream received {received} lists after {flaps} changes")
    assert received <= 3


# --- the transport ---------------------------------------------------------------------------


def test_unknown_methods_bad_bytes_and_handler_failures(
    dgx_h100: Node, root: pathlib.Path, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = make_state(dgx_h100)
    s = Served(state, root, transport=transport)

    def broken(data: bytes) -> bytes:
        raise RuntimeError("a bug")

    unary = dict(s.server.servicer.unary)
    unary[b"/v1beta1.DevicePlugin/PreStartContainer"] = broken
    s.server.servicer.unary = unary
    try:
        s.start()
        with grpc.insecure_channel(f"unix://{s.server.path}") as channel:

            def raw(method: str, data: bytes) -> grpc.RpcError:
                call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
                with pytest.raises(grpc.RpcError) as info:
                    call(data, timeout=WAIT)
                assert isinstance(info.value, grpc.RpcError)
                return info.value

            e = raw("/v1beta1.DevicePlugin/Nope", b"")
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED
            e = raw("/v1beta1.DevicePlugin/Allocate", b"\xff\xff")
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            with caplog.at_level(logging.ERROR, logger="gpulet"):
                e = raw("/v1beta1.DevicePlugin/PreStartContainer", b"")
            assert e.code() == grpc.StatusCode.INTERNAL
            assert "RuntimeError: a bug" in caplog.text
            # Still serving.
            options: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/v1beta1.DevicePlugin/GetDevicePluginOptions"
            )
            assert dp.DevicePluginOptions.FromString(options(b"", timeout=WAIT))
    finally:
        s.close()


def test_stop_ends_streams_and_removes_the_socket_then_start_serves_again(
    dgx_h100: Node, root: pathlib.Path, transport: str
) -> None:
    state = make_state(dgx_h100)
    s = Served(state, root, transport=transport)
    try:
        s.start()
        with PluginClient(s.server.path) as client:
            w = client.watch()
            assert len(w.next().devices) == 8
            s.call(s.server.stop())
            with pytest.raises(grpc.RpcError) as info:
                w.next()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not s.server.path.exists()
            assert not s.server.serving
        s.start()
        assert s.server.starts == 2
        with PluginClient(s.server.path) as client:
            assert len(client.devices()) == 8
    finally:
        s.close()


def test_on_allocate_runs_on_the_event_loop_after_allocate(
    dgx_h100: Node, root: pathlib.Path, transport: str
) -> None:
    state = make_state(dgx_h100)
    calls: list[threading.Thread] = []
    called = threading.Event()

    def on_allocate() -> None:
        calls.append(threading.current_thread())
        called.set()

    with (
        serving(state, root, on_allocate=on_allocate, transport=transport) as s,
        PluginClient(s.server.path) as client,
    ):
        gpus = [d.ID for d in client.devices()]
        # A refused Allocate does not call it (not even when the server stops).
        with pytest.raises(grpc.RpcError):
            client.allocate(["GPU-nope"])
        s.call(s.server.stop())
        assert calls == []
        s.start()
        with PluginClient(s.server.path) as client:
            for g in gpus:
                client.allocate([g])
            assert called.wait(WAIT)
            assert calls[0] is s.run(threading.current_thread)


# --- a grpcio whose private layer does not fit ------------------------------------------------


class UnmakeableServer:
    """A ``cygrpc.Server`` stand-in: every method the native transport calls is there with the
    arguments it passes, but a server cannot be made (as when a release changes what the
    constructor takes)."""

    def __init__(self, *args: Any) -> None:
        raise TypeError(f"Server() takes 3 arguments ({len(args)} given)")

    def register_completion_queue(self, queue: Any) -> None: ...
    def start(self) -> None: ...
    def request_call(self, call_queue: Any, server_queue: Any, tag: Any) -> None: ...
    def shutdown(self, queue: Any, tag: Any) -> None: ...
    def cancel_all_calls(self) -> None: ...
    def destroy(self) -> None: ...

    def add_http2_port(self, address: Any) -> int:
        return 0


@pytest.fixture
def unmakeable_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """grpcio's private layer replaced by a stand-in module whose Server cannot be made, and
    the transport not chosen yet in this process."""
    layer = types.ModuleType("cygrpc_stand_in")
    for name in dir(transport_native.cygrpc):
        if not name.startswith("__"):
            setattr(layer, name, getattr(transport_native.cygrpc, name))
    layer.Server = UnmakeableServer  # type: ignore[attr-defined]
    assert transport_native.check(layer) is None  # the names and signatures fit
    monkeypatch.setattr(transport_native, "cygrpc", layer)
    monkeypatch.setattr(server_module._Native, "checked", False)
    monkeypatch.setattr(server_module._Native, "problem", None)
    monkeypatch.setattr(server_module._Native, "warned", False)
    monkeypatch.delenv(TRANSPORT_ENV, raising=False)


@pytest.mark.usefixtures("unmakeable_layer")
def test_a_native_server_that_fails_to_start_falls_back_to_aio_with_one_warning(
    dgx_h100: Node, root: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = make_state(dgx_h100)
    with caplog.at_level(logging.INFO, logger="gpulet"):
        with serving(state, root) as s, PluginClient(s.server.path) as client:
            assert s.server.transport == "aio"
            assert stat.S_IMODE(s.server.path.stat().st_mode) == SOCKET_MODE
            gpus = [d.ID for d in client.devices()]
            assert client.allocate([gpus[0]]).container_responses
            # Served again (a kubelet restart): aio at once, no second warning.
            s.call(s.server.stop())
            s.start()
            assert s.server.transport == "aio"
        assert not s.server.path.exists()
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(r.getMessage().endswith("(aio transport)") for r in caplog.records)
    assert f"grpcio {grpc.__version__}" in line
    assert "making the server failed: TypeError: Server() takes 3 arguments" in line
    assert f"{TRANSPORT_ENV}=aio" in line

    # Asked for by name, the native transport that cannot run is an error, not a fallback.
    s = Served(state, root, transport="native")
    try:
        with pytest.raises(TransportError, match="cannot run with grpcio"):
            s.start()
        assert not s.server.serving
    finally:
        s.close()


@pytest.mark.usefixtures("unmakeable_layer")
def test_forced_native_that_fails_to_start_is_a_serve_error(
    dgx_h100: Node, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = make_state(dgx_h100)
    monkeypatch.setenv(TRANSPORT_ENV, "native")
    s = Served(state, root)
    try:
        with pytest.raises(ServeError) as info:
            s.start()
        assert f"the native transport, with grpcio {grpc.__version__}" in str(info.value)
        assert not s.server.serving
        assert not s.server.path.exists()
        # A bad value: an error naming the variable, nothing made.
        monkeypatch.setenv(TRANSPORT_ENV, "fast")
        with pytest.raises(TransportError, match=f"{TRANSPORT_ENV}: must be one of native, aio"):
            s.start()
        assert not s.server.path.exists()
        monkeypatch.setenv(TRANSPORT_ENV, "aio")
        s.start()
        assert s.server.transport == "aio"
    finally:
        s.close()


def listening_at(path: pathlib.Path) -> bool:
    """A unix socket of any process is bound at ``path`` (/proc/net/unix names bound ones,
    whether or not the path still exists)."""
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
        return any(line.split()[7:] == [str(path)] for line in f.readlines()[1:])


def test_the_socket_removed_while_the_server_starts_is_a_serve_error(
    dgx_h100: Node, root: pathlib.Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A starting kubelet removes every socket in the directory: here, between gRPC's bind and
    # gpulet's chmod. The bound server is released (gRPC aborts the process when a server with
    # a bound socket is destroyed before it was shut down) and the server stays startable.
    state = make_state(dgx_h100)
    s = Served(state, root, transport=transport)
    chmod = os.chmod
    removed: list[str] = []

    def kubelet_cleanup_then_chmod(path: Any, mode: int, **kwargs: Any) -> None:
        if os.fspath(path) == os.fspath(s.server.path) and not removed:
            removed.append(os.fspath(path))
            os.unlink(path)
        chmod(path, mode, **kwargs)

    try:
        monkeypatch.setattr(os, "chmod", kubelet_cleanup_then_chmod)
        with pytest.raises(ServeError) as info:
            s.start()
        assert removed == [str(s.server.path)]
        assert str(s.server.path) in str(info.value)
        assert not s.server.serving
        assert not s.server.path.exists()
        # gRPC's listener is closed, not left open on a socket nobody can reach.
        wait_until(lambda: not listening_at(s.server.path), "the listener closing")
        monkeypatch.setattr(os, "chmod", chmod)
        s.start()
        assert listening_at(s.server.path)
        with PluginClient(s.server.path) as client:
            assert len(client.devices()) == 8
    finally:
        s.close()
