"""Device-plugin RPC latency over the unix socket, and re-registration after a kubelet restart.

The agent runs as its own process (``gpulet simulate --spec dgx-h100``: 8 GPUs on the fake NVML,
NVIDIA's default config); kubelet-side clients in threads of the bench process call it over its
real socket, each call timed end to end (client send to response decoded).

Full run (numbers in benches/RESULTS.md, "Device plugin"):
    pytest benches/test_bench_deviceplugin.py --benchmark-only -s
Smoke run (the test command): ``pytest benches/ --benchmark-disable`` makes a handful of calls.

Callers: 1 and 16 threads, each with its own channel (connection), all started together.
Baseline: GetDevicePluginOptions, an RPC that does no work, in the same run (the floor that
Python gRPC on both ends sets). Allocate: every call names devices other than the previous
call's, so each one records a new allocation (and the kubelet-reassignment path releases the
old holder), as when pods come and go; GetPreferredAllocation: all 8 GPUs available, one
required, sizes 2 and 4.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "integration"))

import gpulet
from gpulet import alloc, config
from gpulet._proto.deviceplugin.v1beta1 import api_pb2 as dp
from gpulet._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from gpulet.deviceplugin import ResponseSettings, build_resources
from gpulet.deviceplugin.servicer import DevicePluginServicer
from gpulet.deviceplugin.state import DevicePluginState
from gpulet.testing.kubelet import KubeletStandin

Benchmark = Any  # pytest-benchmark's fixture has no public type

GPU = "nvidia.com/gpu"


class Plugin:
    def __init__(self, root: pathlib.Path, kubelet: KubeletStandin, ids: list[str]) -> None:
        self.root = root
        self.kubelet = kubelet
        self.ids = ids
        self.socket = root / "device-plugins" / kubelet.registered()[GPU].endpoint


@pytest.fixture(scope="module")
def plugin() -> Iterator[Plugin]:
    root = pathlib.Path(tempfile.mkdtemp(prefix="gpl-bench-", dir="/tmp"))
    config_file = root / "config.yaml"
    config_file.write_text("version: v1\n", encoding="utf-8")  # NVIDIA's defaults
    try:
        with gpulet.simulated("dgx-h100") as sim, KubeletStandin(root) as kubelet:
            env = {
                **sim.env,
                "PYTHONPATH": os.pathsep.join(sys.path),
                "GPULET_LOG_LEVEL": "WARNING",
            }
            command = [sys.executable, "-m", "gpulet", "simulate", "--spec", "dgx-h100"]
            command += ["--root", str(root), "--config", str(config_file), "--metrics-port", "0"]
            proc = subprocess.Popen(command, env=env)
            try:
                kubelet.wait_for_registrations([GPU], timeout=120)
                with kubelet.plugin(GPU) as p:
                    ids = [d.ID for d in p.devices()]
                yield Plugin(root, kubelet, ids)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_callers(
    socket: pathlib.Path,
    callers: int,
    calls: int,
    make_call: Callable[[dp_grpc.DevicePluginStub, int, int], None],
) -> list[float]:
    """``callers`` threads, each making ``calls`` timed calls on its own channel."""
    latencies: list[list[float]] = [[] for _ in range(callers)]
    barrier = threading.Barrier(callers)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                stub = dp_grpc.DevicePluginStub(channel)
                make_call(stub, k, -1)  # connect and warm up, untimed
                barrier.wait()
                out = latencies[k]
                for i in range(calls):
                    t = time.perf_counter()
                    make_call(stub, k, i)
                    out.append(time.perf_counter() - t)
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [x for per in latencies for x in per]


def report(name: str, callers: int, samples: list[float]) -> dict[str, float]:
    p50, p99 = percentile(samples, 0.50), percentile(samples, 0.99)
    mean = statistics.fmean(samples)
    print(
        f"\n{name}, {callers} caller(s), {len(samples)} calls: p50 {p50 * 1e6:.0f} µs, "
        f"p99 {p99 * 1e6:.0f} µs, mean {mean * 1e6:.0f} µs, max {max(samples) * 1e6:.0f} µs"
    )
    return {"p50": p50, "p99": p99, "mean": mean}


def calls_for(benchmark: Benchmark, callers: int) -> int:
    if benchmark.disabled:
        return 3
    return 3000 if callers == 1 else 300


@pytest.mark.parametrize("callers", [1, 16])
def test_baseline_empty_rpc_latency(benchmark: Benchmark, plugin: Plugin, callers: int) -> None:
    """The transport's floor in the same run: GetDevicePluginOptions, which does no work."""

    def options(stub: dp_grpc.DevicePluginStub, k: int, i: int) -> None:
        stub.GetDevicePluginOptions(dp.Empty(), timeout=30)

    calls = calls_for(benchmark, callers)
    result: dict[str, list[float]] = {}

    def measure() -> None:
        result["samples"] = run_callers(plugin.socket, callers, calls, options)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    report("GetDevicePluginOptions (baseline)", callers, result["samples"])
    assert len(result["samples"]) == callers * calls


@pytest.mark.parametrize("callers", [1, 16])
def test_allocate_latency(benchmark: Benchmark, plugin: Plugin, callers: int) -> None:
    ids = plugin.ids
    n = len(ids)

    def allocate(stub: dp_grpc.DevicePluginStub, k: int, i: int) -> None:
        # Caller k, call i: one GPU, a different one from this caller's previous call.
        first = (k + (i + 1) * 3) % n
        request = dp.AllocateRequest(
            container_requests=[dp.ContainerAllocateRequest(devices_ids=[ids[first]])]
        )
        stub.Allocate(request, timeout=30)

    calls = calls_for(benchmark, callers)
    result: dict[str, list[float]] = {}

    def measure() -> None:
        result["samples"] = run_callers(plugin.socket, callers, calls, allocate)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    stats = report("Allocate", callers, result["samples"])
    assert len(result["samples"]) == callers * calls
    assert stats["p50"] > 0


@pytest.mark.parametrize("callers", [1, 16])
@pytest.mark.parametrize("size", [2, 4])
def test_get_preferred_allocation_latency(
    benchmark: Benchmark, plugin: Plugin, callers: int, size: int
) -> None:
    ids = plugin.ids

    def preferred(stub: dp_grpc.DevicePluginStub, k: int, i: int) -> None:
        request = dp.PreferredAllocationRequest(
            container_requests=[
                dp.ContainerPreferredAllocationRequest(
                    available_deviceIDs=ids,
                    must_include_deviceIDs=[ids[(k + i) % len(ids)]],
                    allocation_size=size,
                )
            ]
        )
        response = stub.GetPreferredAllocation(request, timeout=30)
        assert len(response.container_responses[0].deviceIDs) == size

    calls = calls_for(benchmark, callers)
    result: dict[str, list[float]] = {}

    def measure() -> None:
        result["samples"] = run_callers(plugin.socket, callers, calls, preferred)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    report(f"GetPreferredAllocation size {size}", callers, result["samples"])
    assert len(result["samples"]) == callers * calls


@pytest.fixture(scope="module")
def servicer() -> tuple[DevicePluginServicer, list[str]]:
    """The Allocate servicer of a simulated DGX H100, without any transport."""
    cfg = config.parse({"version": "v1"})
    with gpulet.simulated("dgx-h100"):
        node = gpulet.discover()
    state = DevicePluginState(node, cfg, build_resources(node, cfg))
    spec = state.resources.resource(GPU)
    alloc.prepare(node.topology)
    return (
        DevicePluginServicer(state, spec, ResponseSettings.from_config(cfg)),
        [d.id for d in spec.devices],
    )


@pytest.mark.parametrize("rpc", ["Allocate", "GetPreferredAllocation"])
def test_servicer_in_process(
    benchmark: Benchmark, servicer: tuple[DevicePluginServicer, list[str]], rpc: str
) -> None:
    """What gpulet itself adds per call: the servicer's function of the request's bytes, called
    directly (no transport, no event loop): decoding, the state's call, the encoded answer."""
    svc, ids = servicer
    counter = itertools.count()
    allocations = [
        dp.AllocateRequest(
            container_requests=[dp.ContainerAllocateRequest(devices_ids=[ids[(i * 3 + 1) % 8]])]
        ).SerializeToString()
        for i in range(8)
    ]
    preferences = [
        dp.PreferredAllocationRequest(
            container_requests=[
                dp.ContainerPreferredAllocationRequest(
                    available_deviceIDs=ids, must_include_deviceIDs=[ids[i]], allocation_size=4
                )
            ]
        ).SerializeToString()
        for i in range(8)
    ]

    def allocate() -> None:
        svc.allocate(allocations[next(counter) % 8])

    def preferred() -> None:
        svc.get_preferred_allocation(preferences[next(counter) % 8])

    benchmark(allocate if rpc == "Allocate" else preferred)


# --- server flavours ------------------------------------------------------------------------

#: Serves the servicer of a simulated DGX H100 in one flavour: ``python -c FLAVOUR_SERVER NAME
#: DIRECTORY`` prints the socket's path once it serves. ``grpc.aio`` and ``grpc.server`` (a
#: pool of 4 threads) run the servicer's byte functions as generic handlers (no (de)serializer,
#: so the transport alone differs); ``gpulet`` is PluginServer on its native transport,
#: ``gpulet (aio)`` PluginServer on its stock one (``grpc.aio``, and gpulet's stream rules).
FLAVOUR_SERVER = """
import asyncio, pathlib, sys
from concurrent import futures
import grpc
import gpulet
from gpulet import config
from gpulet.deviceplugin.state import DevicePluginState
from gpulet.deviceplugin import ResponseSettings, build_resources
from gpulet.deviceplugin.server import SERVER_OPTIONS, PluginServer
from gpulet.deviceplugin.servicer import SERVICE, DevicePluginServicer

name, directory = sys.argv[1], pathlib.Path(sys.argv[2])
cfg = config.parse({"version": "v1"})
node = gpulet.discover()
state = DevicePluginState(node, cfg, build_resources(node, cfg))
spec = state.resources.resource("nvidia.com/gpu")
settings = ResponseSettings.from_config(cfg)
socket = directory / spec.socket_name
prefix = f"/{SERVICE}/".encode()

def generic(wrap):
    svc = DevicePluginServicer(state, spec, settings)
    return grpc.method_handlers_generic_handler(SERVICE, {
        path[len(prefix):].decode(): grpc.unary_unary_rpc_method_handler(wrap(fn))
        for path, fn in svc.unary.items()
    })

async def serve_aio():
    def wrap(fn):
        async def handler(request, context):
            return fn(request)
        return handler
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((generic(wrap),))
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    print(socket, flush=True)
    await server.wait_for_termination()

def serve_sync():
    server = grpc.server(futures.ThreadPoolExecutor(4), options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((generic(lambda fn: lambda request, context: fn(request)),))
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    print(socket, flush=True)
    server.wait_for_termination()

async def serve_gpulet(transport):
    server = PluginServer(
        state, spec, directory, settings, on_allocate=lambda: None, transport=transport
    )
    await server.start()
    print(server.path, flush=True)
    await asyncio.Event().wait()

if name == "grpc.aio":
    asyncio.run(serve_aio())
elif name == "grpc.server":
    serve_sync()
elif name == "gpulet (aio)":
    asyncio.run(serve_gpulet("aio"))
else:
    asyncio.run(serve_gpulet("native"))
"""

FLAVOURS = ("grpc.aio", "grpc.server", "gpulet", "gpulet (aio)")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_server_flavours(benchmark: Benchmark) -> None:
    """The same servicer behind each flavour of gRPC server, each in its own process, called in
    turn by one client thread (the flavour that goes first rotates every call): the empty RPC
    (GetDevicePluginOptions, the floor each server sets) and Allocate (one GPU, GPU ``i mod 8``),
    p50 / p99 and the server process's CPU time per call."""
    calls = 3 if benchmark.disabled else 2000
    warmup = 2 if benchmark.disabled else 200
    root = pathlib.Path(tempfile.mkdtemp(prefix="gpl-fl-", dir="/tmp"))
    procs: dict[str, subprocess.Popen[str]] = {}
    result: dict[tuple[str, str], tuple[list[float], float]] = {}
    try:
        with gpulet.simulated("dgx-h100") as sim, contextlib.ExitStack() as stack:
            ids = sorted(g.uuid for g in gpulet.discover().gpus)
            env = {**sim.env, "PYTHONPATH": os.pathsep.join(sys.path)}
            stubs: dict[str, dp_grpc.DevicePluginStub] = {}
            for name in FLAVOURS:
                directory = root / f"f{FLAVOURS.index(name)}"
                directory.mkdir()
                proc = subprocess.Popen(
                    [sys.executable, "-c", FLAVOUR_SERVER, name, str(directory)],
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                procs[name] = proc
                assert proc.stdout is not None
                socket = proc.stdout.readline().strip()
                assert socket, f"{name} did not start"
                channel = stack.enter_context(grpc.insecure_channel(f"unix://{socket}"))
                stubs[name] = dp_grpc.DevicePluginStub(channel)
            requests = [
                dp.AllocateRequest(
                    container_requests=[dp.ContainerAllocateRequest(devices_ids=[g])]
                )
                for g in ids
            ]

            def call(name: str, rpc: str, i: int) -> None:
                if rpc == "GetDevicePluginOptions":
                    stubs[name].GetDevicePluginOptions(dp.Empty(), timeout=30)
                else:
                    stubs[name].Allocate(requests[i % 8], timeout=30)

            def measure() -> None:
                for rpc in ("GetDevicePluginOptions", "Allocate"):
                    for i in range(warmup):
                        for name in FLAVOURS:
                            call(name, rpc, i)
                    samples: dict[str, list[float]] = {n: [] for n in FLAVOURS}
                    cpu = {n: cpu_seconds(procs[n].pid) for n in FLAVOURS}
                    for i in range(calls):
                        k = i % len(FLAVOURS)
                        for name in FLAVOURS[k:] + FLAVOURS[:k]:
                            t = time.perf_counter()
                            call(name, rpc, i)
                            samples[name].append(time.perf_counter() - t)
                    for name in FLAVOURS:
                        used = (cpu_seconds(procs[name].pid) - cpu[name]) / calls
                        result[(name, rpc)] = (samples[name], used)

            benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{calls} calls per flavour and RPC after {warmup}; load {load_average()}")
    print("| RPC | server | p50 | p99 | server CPU per call |\n|---|---|---|---|---|")
    for (name, rpc), (samples, used) in result.items():
        print(
            f"| {rpc} | {name} | {percentile(samples, 0.5) * 1e3:.2f} ms | "
            f"{percentile(samples, 0.99) * 1e3:.2f} ms | {used * 1e6:.0f} µs |"
        )
    assert all(len(samples) == calls for samples, _ in result.values())


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def test_re_registration_after_kubelet_restart(benchmark: Benchmark, plugin: Plugin) -> None:
    kubelet = plugin.kubelet
    restarts = 2 if benchmark.disabled else 50
    samples: list[float] = []

    def measure() -> None:
        for _ in range(restarts):
            kubelet.restart()
            reg = kubelet.wait_for_registrations([GPU], server_start=kubelet.starts)[GPU]
            samples.append(reg.at - kubelet.listening_since)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    report("Re-registration after kubelet.sock is created", 1, samples)
    plugin.socket = plugin.root / "device-plugins" / kubelet.registered()[GPU].endpoint
    assert len(samples) == restarts
