"""A kubelet stand-in for tests: the two kubelet servers gpulet talks to, and a plugin client.

- :class:`KubeletStandin` serves ``v1beta1.Registration`` on ``ROOT/device-plugins/kubelet.sock``
  (built from the generated stubs; like the kubelet it checks the version, dials the plugin's
  socket and asks its options before accepting) and ``v1.PodResourcesLister`` on
  ``ROOT/pod-resources/kubelet.sock`` (answering with pods the test sets). ``restart()`` does
  what a restarting kubelet does: stop, remove every socket in ``device-plugins/``, listen on a
  new ``kubelet.sock``.
- :class:`PluginClient` dials a plugin socket: options, a ListAndWatch reader that waits for a
  condition, GetPreferredAllocation, Allocate.
- :class:`AgentThread` runs a :class:`gpulet.agent.Agent` on its own event loop in a thread, so
  a synchronous test can drive it.

Every wait has a limit (30 s by default) and wakes on the event it waits for; none sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from gpulet._proto.deviceplugin.v1beta1 import api_pb2 as dp
from gpulet._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from gpulet._proto.podresources.v1 import api_pb2 as pr
from gpulet._proto.podresources.v1 import api_pb2_grpc as pr_grpc

T = TypeVar("T")

WAIT = 30.0
CHECKPOINT = "kubelet_internal_checkpoint"


@dataclass(frozen=True)
class Registration:
    """One Register call the stand-in accepted."""

    resource: str
    endpoint: str
    version: str
    options: dp.DevicePluginOptions
    #: ``time.monotonic()`` when it was accepted.
    at: float
    #: Which start of the registration server received it (1, 2, ...).
    server_start: int


class _Registration(dp_grpc.RegistrationServicer):
    def __init__(self, kubelet: KubeletStandin) -> None:
        self.kubelet = kubelet

    def Register(self, request: dp.RegisterRequest, context: Any) -> dp.Empty:
        if request.version != "v1beta1":
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"unsupported version {request.version}"
            )
        socket = self.kubelet.plugin_dir / request.endpoint
        if self.kubelet.dial:
            try:
                with grpc.insecure_channel(f"unix://{socket}") as channel:
                    options = dp_grpc.DevicePluginStub(channel).GetDevicePluginOptions(
                        dp.Empty(), timeout=10
                    )
            except grpc.RpcError as e:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot dial {socket}: {e}")
            if options != request.options:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "options differ from the plugin's")
        self.kubelet._record(
            Registration(
                resource=request.resource_name,
                endpoint=request.endpoint,
                version=request.version,
                options=request.options,
                at=time.monotonic(),
                server_start=self.kubelet.starts,
            )
        )
        return dp.Empty()


class _PodResources(pr_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: KubeletStandin) -> None:
        self.kubelet = kubelet

    def List(
        self, request: pr.ListPodResourcesRequest, context: Any
    ) -> pr.ListPodResourcesResponse:
        with self.kubelet._cond:
            self.kubelet.list_calls += 1
            self.kubelet._cond.notify_all()
            return pr.ListPodResourcesResponse(pod_resources=list(self.kubelet.pods))

    def GetAllocatableResources(self, request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the stand-in")

    def Get(self, request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the stand-in")


def pod(
    namespace: str, name: str, containers: dict[str, dict[str, Sequence[str]]]
) -> pr.PodResources:
    """A PodResources entry: ``containers`` maps container name -> resource -> device IDs."""
    return pr.PodResources(
        name=name,
        namespace=namespace,
        containers=[
            pr.ContainerResources(
                name=c,
                devices=[
                    pr.ContainerDevices(resource_name=r, device_ids=list(ids))
                    for r, ids in resources.items()
                ],
            )
            for c, resources in containers.items()
        ],
    )


class KubeletStandin:
    """The kubelet's registration and PodResources servers under ``root``."""

    def __init__(self, root: str | os.PathLike[str], *, dial: bool = True) -> None:
        self.root = pathlib.Path(root)
        self.plugin_dir = self.root / "device-plugins"
        self.socket = self.plugin_dir / "kubelet.sock"
        self.pod_resources_socket = self.root / "pod-resources" / "kubelet.sock"
        self.dial = dial
        self.registrations: list[Registration] = []
        self.pods: list[pr.PodResources] = []
        self.list_calls = 0
        self.starts = 0
        #: ``time.monotonic()`` when the registration socket last appeared.
        self.listening_since = 0.0
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None
        self._pr_server: grpc.Server | None = None

    def _record(self, r: Registration) -> None:
        with self._cond:
            self.registrations.append(r)
            self._cond.notify_all()

    def start(self, *, cleanup: bool = True) -> None:
        """Listen on ``device-plugins/kubelet.sock`` (removing every other socket there first,
        as a starting kubelet does, unless ``cleanup`` is false)."""
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        if cleanup:
            for entry in self.plugin_dir.iterdir():
                if entry.name != CHECKPOINT and not entry.is_dir():
                    entry.unlink()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        dp_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        with self._cond:
            self.starts += 1
            self.listening_since = time.monotonic()
        self._server = server
        if self._pr_server is None:
            self.pod_resources_socket.parent.mkdir(parents=True, exist_ok=True)
            pr_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            pr_grpc.add_PodResourcesListerServicer_to_server(_PodResources(self), pr_server)
            pr_server.add_insecure_port(f"unix://{self.pod_resources_socket}")
            pr_server.start()
            self._pr_server = pr_server

    def stop(self) -> None:
        """Stop the registration server; its socket goes away."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(None).wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def restart(self) -> None:
        """What a kubelet restart does to the device-plugins directory."""
        self.stop()
        self.start(cleanup=True)

    def close(self) -> None:
        self.stop()
        pr_server, self._pr_server = self._pr_server, None
        if pr_server is not None:
            pr_server.stop(None).wait()

    def __enter__(self) -> KubeletStandin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_pods(self, pods: Iterable[pr.PodResources]) -> None:
        with self._cond:
            self.pods = list(pods)

    def registered(self) -> dict[str, Registration]:
        """The latest registration of each resource."""
        with self._cond:
            return {r.resource: r for r in self.registrations}

    def wait_for_registrations(
        self, resources: Iterable[str], *, server_start: int | None = None, timeout: float = WAIT
    ) -> dict[str, Registration]:
        """Wait until each resource registered (with the given server start, default the
        current one); returns the registrations."""
        wanted = set(resources)
        deadline = time.monotonic() + timeout
        with self._cond:
            start = self.starts if server_start is None else server_start
            while True:
                got = {r.resource: r for r in self.registrations if r.server_start == start}
                if wanted <= set(got):
                    return {name: got[name] for name in wanted}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"registrations of {sorted(wanted - set(got))} not seen within "
                        f"{timeout}s (seen: {sorted(got)})"
                    )
                self._cond.wait(left)

    def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until ``condition()`` holds, re-checked on every registration and List call."""
        with self._cond:
            if not self._cond.wait_for(condition, timeout=timeout):
                raise TimeoutError(f"condition not met within {timeout}s")

    def plugin(self, resource: str) -> PluginClient:
        """A client of the plugin that registered ``resource`` (last registration)."""
        reg = self.registered()[resource]
        return PluginClient(self.plugin_dir / reg.endpoint)


class ListWatch:
    """An open ListAndWatch stream; a thread reads it into a queue."""

    def __init__(self, stub: dp_grpc.DevicePluginStub) -> None:
        self._call = stub.ListAndWatch(dp.Empty())
        self._queue: queue.Queue[dp.ListAndWatchResponse | BaseException | None] = queue.Queue()
        self.latest: dp.ListAndWatchResponse | None = None
        self.count = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self._queue.put(response)
        except grpc.RpcError as e:
            self._queue.put(e)
            return
        self._queue.put(None)

    def next(self, timeout: float = WAIT) -> dp.ListAndWatchResponse:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no ListAndWatch response within {timeout}s") from None
        if item is None:
            raise EOFError("the ListAndWatch stream ended")
        if isinstance(item, BaseException):
            raise item
        self.latest = item
        self.count += 1
        return item

    def wait_for(
        self, condition: Callable[[dp.ListAndWatchResponse], bool], timeout: float = WAIT
    ) -> dp.ListAndWatchResponse:
        """The first list (the latest one read, then new ones) that meets ``condition``."""
        if self.latest is not None and condition(self.latest):
            return self.latest
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no ListAndWatch list met the condition within {timeout}s")
            response = self.next(left)
            if condition(response):
                return response

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(timeout=WAIT)


class PluginClient:
    """A kubelet-side client of one plugin socket."""

    def __init__(self, socket: str | os.PathLike[str]) -> None:
        self.socket = pathlib.Path(socket)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.stub = dp_grpc.DevicePluginStub(self.channel)
        self._watches: list[ListWatch] = []

    def options(self) -> dp.DevicePluginOptions:
        return self.stub.GetDevicePluginOptions(dp.Empty(), timeout=WAIT)

    def watch(self) -> ListWatch:
        w = ListWatch(self.stub)
        self._watches.append(w)
        return w

    def devices(self) -> list[dp.Device]:
        """The first list ListAndWatch sends."""
        w = self.watch()
        try:
            return list(w.next().devices)
        finally:
            w.close()
            self._watches.remove(w)

    def preferred(self, available: Sequence[str], required: Sequence[str], size: int) -> list[str]:
        request = dp.PreferredAllocationRequest(
            container_requests=[
                dp.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(required),
                    allocation_size=size,
                )
            ]
        )
        response = self.stub.GetPreferredAllocation(request, timeout=WAIT)
        return list(response.container_responses[0].deviceIDs)

    def allocate(self, *containers: Sequence[str]) -> dp.AllocateResponse:
        request = dp.AllocateRequest(
            container_requests=[
                dp.ContainerAllocateRequest(devices_ids=list(c)) for c in containers
            ]
        )
        return self.stub.Allocate(request, timeout=WAIT)

    def close(self) -> None:
        for w in self._watches:
            w.close()
        self._watches.clear()
        self.channel.close()

    def __enter__(self) -> PluginClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AgentThread:
    """Runs an agent's event loop in a thread (``agent`` is a :class:`gpulet.agent.Agent`)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._started = False

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
        """Run a coroutine on the agent's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], T], timeout: float = WAIT) -> T:
        """Run a plain function on the agent's loop (as its servicers do)."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper(), timeout)

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        self._started = True
        self.call(self.agent.start(), timeout)

    def stop(self, timeout: float = WAIT) -> None:
        if not self._started:
            return
        try:
            self.call(self.agent.stop(), timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            self.loop.close()
            self._started = False

    def __enter__(self) -> AgentThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
