"""Choosing the device-plugin transport, and the ListAndWatch rules both transports share.

The feature detection is tried on stand-in module objects made from the names the native
transport uses (never on grpcio's own module, which is only read).
"""

from __future__ import annotations

import logging
import threading
import types
from typing import Any

import grpc
import pytest

from gpulet.deviceplugin import server, transport_native
from gpulet.deviceplugin.server import (
    TRANSPORT_ENV,
    TransportError,
    choose_transport,
    transport_setting,
)
from gpulet.deviceplugin.servicer import RpcRefusal
from gpulet.deviceplugin.transport import ListAndWatchHub, Stream, answer
from gpulet.errors import GpuletError

#: Every name of the private layer the native transport uses.
NAMES = sorted(
    {owner for owner, _, _ in transport_native._METHODS}
    | {owner for owner, _ in transport_native._ATTRIBUTES}
    | {name for name, _ in transport_native._OPERATIONS}
)


def stand_in(**replace: Any) -> types.ModuleType:
    """A module object with the real layer's classes under the names the transport uses,
    ``replace`` changing some (``None``: left out)."""
    module = types.ModuleType("cygrpc_stand_in")
    for name in NAMES:
        value = replace.get(name, getattr(transport_native.cygrpc, name))
        if value is not None:
            setattr(module, name, value)
    return module


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice not made yet in this process, and no transport forced."""
    monkeypatch.setattr(server._Native, "checked", False)
    monkeypatch.setattr(server._Native, "problem", None)
    monkeypatch.setattr(server._Native, "warned", False)
    monkeypatch.delenv(TRANSPORT_ENV, raising=False)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- feature detection ---------------------------------------------------------------------


def test_the_installed_grpcio_has_what_the_native_transport_uses() -> None:
    assert transport_native.check(transport_native.cygrpc) is None
    assert transport_native.check(stand_in()) is None


@pytest.mark.parametrize(
    "name",
    ["Server", "CompletionQueue", "SendStatusFromServerOperation", "RequestCallEvent", "Call"],
)
def test_a_missing_name_is_found(name: str) -> None:
    problem = transport_native.check(stand_in(**{name: None}))
    assert problem is not None
    assert f"cygrpc.{name}" in problem


def test_a_missing_method_or_attribute_is_found() -> None:
    class Server:  # start and the methods after it gone
        def register_completion_queue(self, queue: Any) -> None:
            pass

        def add_http2_port(self, address: bytes) -> int:
            return 0

    problem = transport_native.check(stand_in(Server=Server))
    assert problem == "cygrpc.Server.start is missing"

    class CallDetails:  # no method
        host = b""

    problem = transport_native.check(stand_in(CallDetails=CallDetails))
    assert problem == "cygrpc.CallDetails.method is missing"


def test_a_changed_signature_is_found() -> None:
    class Call:
        def start_server_batch(self, operations: Any, tag: Any, flags: int) -> int:
            return 0

        def cancel(self, error_code: int, details: bytes) -> None:
            pass

    problem = transport_native.check(stand_in(Call=Call))
    assert problem is not None
    assert problem.startswith("cygrpc.Call.start_server_batch(self, operations")
    assert "does not take 2 positional argument(s)" in problem


def test_an_operation_made_otherwise_is_found() -> None:
    class SendMessageOperation:
        def __init__(self, message: bytes, flags: int, buffer: Any) -> None: ...

    problem = transport_native.check(stand_in(SendMessageOperation=SendMessageOperation))
    assert problem is not None
    assert problem.startswith("cygrpc.SendMessageOperation(b'', 0) fails: TypeError")


def test_no_layer_at_all() -> None:
    assert transport_native.check(None) == "grpc._cython.cygrpc cannot be imported"


# --- the choice ----------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh")
def test_native_when_the_layer_fits(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gpulet"):
        assert choose_transport() == "native"
    assert warnings(caplog) == []


@pytest.mark.usefixtures("fresh")
def test_a_missing_name_falls_back_to_aio_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(transport_native, "cygrpc", stand_in(ReceiveCloseOnServerOperation=None))
    with caplog.at_level(logging.WARNING, logger="gpulet"):
        assert choose_transport() == "aio"
        assert choose_transport() == "aio"  # every later server: no second warning
    (line,) = warnings(caplog)
    assert f"grpcio {grpc.__version__}" in line
    assert "cygrpc.ReceiveCloseOnServerOperation is missing" in line
    assert "grpc.aio" in line
    assert f"{TRANSPORT_ENV}=aio" in line


@pytest.mark.usefixtures("fresh")
def test_the_environment_forces_a_transport(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(TRANSPORT_ENV, "aio")
    assert choose_transport() == "aio"
    monkeypatch.setenv(TRANSPORT_ENV, "native")
    assert choose_transport() == "native"
    monkeypatch.setenv(TRANSPORT_ENV, "")  # empty is unset
    assert choose_transport() == "native"
    # Forced native where the layer does not fit: an error, not a silent fallback.
    monkeypatch.setattr(transport_native, "cygrpc", stand_in(Server=None))
    monkeypatch.setattr(server._Native, "checked", False)  # checked once per process
    monkeypatch.setenv(TRANSPORT_ENV, "native")
    with pytest.raises(TransportError) as info:
        choose_transport()
    message = str(info.value)
    assert f"by {TRANSPORT_ENV}" in message
    assert "cygrpc.Server is missing" in message
    assert f"grpcio {grpc.__version__}" in message
    # Forced aio: no warning, although native cannot run.
    monkeypatch.setenv(TRANSPORT_ENV, "aio")
    with caplog.at_level(logging.WARNING, logger="gpulet"):
        assert choose_transport() == "aio"
    assert warnings(caplog) == []
    # The server's own option beats the environment.
    assert choose_transport("aio") == "aio"
    with pytest.raises(TransportError, match="by the server's transport"):
        choose_transport("native")


@pytest.mark.parametrize("value", ["grpc", "Native", "aio ", "auto"])
def test_a_bad_value_names_the_variable(value: str) -> None:
    with pytest.raises(TransportError) as info:
        transport_setting({TRANSPORT_ENV: value})
    assert isinstance(info.value, GpuletError)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == (
        f"{TRANSPORT_ENV}: must be one of native, aio (or unset); got {value!r}"
    )
    assert transport_setting({}) is None
    assert transport_setting({TRANSPORT_ENV: "aio"}) == "aio"


# --- the rules both transports share -------------------------------------------------------


class Recorded(Stream):
    """A stream whose sends are recorded; ``refuse`` makes the next send fail to start."""

    __slots__ = ("refuse", "sends")

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.refuse = False

    def send(self, data: bytes) -> bool:
        if self.refuse:
            return False
        self.sends.append(data)
        return True


def test_one_message_in_flight_and_only_the_newest_behind_it() -> None:
    hub: ListAndWatchHub[Recorded] = ListAndWatchHub("nvidia.com/gpu", 4)
    hub.publish(b"v1")
    s = Recorded()
    hub.open(s)
    assert s.sends == [b"v1"]  # the latest list at once
    for version in (b"v2", b"v3", b"v4"):
        hub.publish(version)
    assert s.sends == [b"v1"]  # v1 still in flight
    hub.sent(s, True)
    assert s.sends == [b"v1", b"v4"]  # the newest only
    hub.sent(s, True)
    hub.publish(b"v4")  # nothing twice in a row
    assert s.sends == [b"v1", b"v4"]
    hub.publish(b"v5")
    assert s.sends == [b"v1", b"v4", b"v5"]
    # A failed send ends the stream: nothing more is sent on it.
    hub.publish(b"v6")
    hub.sent(s, False)
    hub.publish(b"v7")
    assert s.sends == [b"v1", b"v4", b"v5"]
    assert hub.count == 1  # until the transport sees it close
    hub.close(s)
    assert hub.count == 0


def test_a_send_that_cannot_start_leaves_the_stream_idle() -> None:
    hub: ListAndWatchHub[Recorded] = ListAndWatchHub("nvidia.com/gpu", 4)
    s = Recorded()
    s.refuse = True
    hub.open(s)
    assert not s.sending
    s.refuse = False
    hub.publish(b"v2")
    assert s.sends == [b"v2"]
    assert s.sending


def test_streams_beyond_the_cap_are_refused_and_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub: ListAndWatchHub[Recorded] = ListAndWatchHub("nvidia.com/gpu", 2)
    first, second = Recorded(), Recorded()
    hub.open(first)
    hub.open(second)
    with caplog.at_level(logging.WARNING, logger="gpulet"):
        for _ in range(3):
            with pytest.raises(RpcRefusal) as info:
                hub.open(Recorded())
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 2 ListAndWatch streams may be open for nvidia.com/gpu" in (
                info.value.details
            )
    assert len(warnings(caplog)) == 1
    assert set(hub.snapshot()) == {first, second}
    hub.close(first)
    hub.close(first)  # twice: no harm
    third = Recorded()
    hub.open(third)
    assert hub.count == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpulet"), pytest.raises(RpcRefusal):
        hub.open(Recorded())
    assert len(warnings(caplog)) == 1  # warned again after a stream closed


def test_publish_from_many_threads_keeps_one_in_flight() -> None:
    hub: ListAndWatchHub[Recorded] = ListAndWatchHub("nvidia.com/gpu", 4)
    s = Recorded()
    hub.open(s)

    def publisher(k: int) -> None:
        for i in range(200):
            hub.publish(b"%d-%d" % (k, i))

    threads = [threading.Thread(target=publisher, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(s.sends) == 1  # nothing completed: nothing more sent
    assert s.pending is not None
    hub.sent(s, True)
    assert len(s.sends) == 2
    assert s.pending is None


def test_unary_answers() -> None:
    def ok(data: bytes) -> bytes:
        return data[::-1]

    def refused(data: bytes) -> bytes:
        raise RpcRefusal(grpc.StatusCode.FAILED_PRECONDITION, "unhealthy")

    def broken(data: bytes) -> bytes:
        raise RuntimeError("a bug")

    assert answer("r", ok, b"ab") == (grpc.StatusCode.OK, "", b"ba")
    assert answer("r", refused, b"") == (grpc.StatusCode.FAILED_PRECONDITION, "unhealthy", None)
    assert answer("r", broken, b"") == (
        grpc.StatusCode.INTERNAL,
        "gpulet failed: see its log",
        None,
    )
