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
from gpulet.agent.state import AgentState
from gpulet.deviceplugin import ResponseSettings, build_inventory
from gpulet.deviceplugin.servicer import DevicePluginServicer
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
    state = AgentState(node, cfg, build_inventory(node, cfg))
    spec = state.inventory.resource(GPU)
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
