"""gpulet's device plugin against NVIDIA's own (k8s-device-plugin v0.17.4, unmodified), one run.

Both serve the same simulated DGX H100 (8 GPUs on gpulet's fake NVML, a state file each, a
kubelet root and a kubelet stand-in each) with NVIDIA's default configuration: gpulet as
``gpulet simulate --spec dgx-h100 --config <version: v1>`` with GPULET_LOG_LEVEL=WARNING,
NVIDIA's plugin with no config file in a private mount namespace (docs/benchmarks.md says how
and why). One client thread in this process holds one channel per plugin (sync stubs) and
alternates the plugins call by call, the first of each pair switching every call, so that both
see the same machine load; every call is timed end to end (request sent to response decoded).

RPCs: GetDevicePluginOptions (no work: the floor that gRPC and the transport set), Allocate of
one GPU (the i-th call takes GPU i mod 8 of the sorted IDs, the same sequence for both), and
GetPreferredAllocation with the 8 GPUs available, one required (GPU i mod 8), sizes 2 and 4.
Every answer is checked outside the timed region: Allocate must set NVIDIA_VISIBLE_DEVICES to
the requested UUID, a preferred set must hold the required GPU and the asked-for count.

Full run (1000 timed calls per plugin and RPC after 100 untimed; numbers in
benches/RESULTS.md, "Allocate against NVIDIA's device plugin"):
    pytest benches/test_bench_vs_nvidia.py --benchmark-only -s
    (or GPULET_BENCH_FULL=1 with --benchmark-disable; GPULET_BENCH_CALLS=N sets the count)
Smoke run (the test command, ``--benchmark-disable``): 5 calls each; proves both plugins answer
sanely and asserts nothing about speed. GPULET_BENCH_JSON=FILE writes every figure as JSON;
GPULET_BENCH_RUN=K puts K in the run column of the table printed at the end.

NVIDIA's binary comes from scripts/nvidia-device-plugin, which builds it into a cache outside the
checkout on first use (progress printed); without the Go module proxy that first build fails,
and so does this module. Needs root (the mount namespace).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import pathlib
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

import gpulet
from gpulet._proto.deviceplugin.v1beta1 import api_pb2 as dp
from gpulet._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from gpulet.sim import Simulation
from gpulet.testing import nvidia_plugin
from gpulet.testing.kubelet import KubeletStandin

Benchmark = Any  # pytest-benchmark's fixture has no public type

GPU = "nvidia.com/gpu"
REPO = pathlib.Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "nvidia-device-plugin"
PLUGINS = ("gpulet", "nvidia")
STATS = ("p50", "p90", "p99", "mean")


def build_nvidia_plugin(config: pytest.Config) -> pathlib.Path:
    """The cached binary, built first (output streamed past pytest's capture) if missing."""
    path = nvidia_plugin.binary_path()
    if path.is_file():
        return path
    capman = config.pluginmanager.getplugin("capturemanager")
    suspend = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    tail: collections.deque[str] = collections.deque(maxlen=25)
    with suspend:
        sys.stderr.write(
            f"\nNVIDIA's device plugin {nvidia_plugin.VERSION} is not in {path.parent}: "
            f"building it with {BUILD_SCRIPT.relative_to(REPO)} (first run only)\n"
        )
        sys.stderr.flush()
        proc = subprocess.Popen(
            [str(BUILD_SCRIPT), "build"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            sys.stderr.write(line)
            sys.stderr.flush()
        rc = proc.wait()
    if rc != 0 or not path.is_file():
        pytest.fail(
            f"could not build NVIDIA's device plugin {nvidia_plugin.VERSION} "
            f"({BUILD_SCRIPT.relative_to(REPO)} build exited {rc}). Its first build fetches "
            "github.com/NVIDIA/k8s-device-plugin and its dependencies from the Go module proxy, "
            "so it needs that network once (later runs reuse the cached binary). Last lines:\n"
            + "\n".join(tail),
            pytrace=False,
        )
    return path


@dataclass
class Peer:
    name: str
    socket: pathlib.Path
    channel: grpc.Channel
    stub: dp_grpc.DevicePluginStub


@dataclass
class Peers:
    gpulet: Peer
    nvidia: Peer
    #: The 8 GPU UUIDs, sorted (both plugins list the same set).
    ids: list[str]
    calls: int
    warmup: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def peer(self, name: str) -> Peer:
        return self.gpulet if name == "gpulet" else self.nvidia


def sizes(benchmark: Benchmark) -> tuple[int, int]:
    """(timed calls, untimed warm-up calls) per plugin and RPC."""
    override = os.environ.get("GPULET_BENCH_CALLS")
    full = os.environ.get("GPULET_BENCH_FULL") == "1" or not benchmark.disabled
    calls = int(override) if override else (1000 if full else 5)
    return calls, (100 if full else 2)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


@contextlib.contextmanager
def run_gpulet(root: pathlib.Path, sim: Simulation) -> Iterator[pathlib.Path]:
    """gpulet simulate on ``root`` with NVIDIA's default config; yields its plugin socket."""
    config_file = root / "config.yaml"
    config_file.write_text("version: v1\n", encoding="utf-8")  # NVIDIA's defaults
    env = {**sim.env, "PYTHONPATH": os.pathsep.join(sys.path), "GPULET_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "gpulet", "simulate", "--spec", "dgx-h100"]
    command += ["--root", str(root), "--config", str(config_file), "--metrics-port", "0"]
    with KubeletStandin(root) as kubelet:
        proc = subprocess.Popen(command, env=env)
        try:
            reg = kubelet.wait_for_registrations([GPU], timeout=120)[GPU]
            yield root / "device-plugins" / reg.endpoint
        finally:
            stop_process(proc)


@contextlib.contextmanager
def run_nvidia(root: pathlib.Path, sim: Simulation, binary: pathlib.Path) -> Iterator[pathlib.Path]:
    """NVIDIA's plugin on ``root`` with its defaults; yields its plugin socket."""
    with (
        KubeletStandin(root) as kubelet,
        nvidia_plugin.NvidiaDevicePlugin(binary, root, sim) as plugin,
    ):
        try:
            reg = kubelet.wait_for_registrations([GPU], timeout=120)[GPU]
        except TimeoutError:
            plugin.check_running()  # the log's tail if it died
            raise
        yield root / "device-plugins" / reg.endpoint


def first_list(stub: dp_grpc.DevicePluginStub) -> list[dp.Device]:
    stream = stub.ListAndWatch(dp.Empty(), timeout=60)
    try:
        return list(next(iter(stream)).devices)
    finally:
        stream.cancel()


@pytest.fixture(scope="module")
def peers(request: pytest.FixtureRequest) -> Iterator[Peers]:
    binary = build_nvidia_plugin(request.config)
    base = pathlib.Path(tempfile.mkdtemp(prefix="gpl-vs-", dir="/tmp"))
    (base / "g").mkdir()
    (base / "n").mkdir()
    try:
        with contextlib.ExitStack() as stack:
            gsim = stack.enter_context(gpulet.simulated("dgx-h100", state_path=base / "g.json"))
            nsim = stack.enter_context(gpulet.simulated("dgx-h100", state_path=base / "n.json"))
            g_socket = stack.enter_context(run_gpulet(base / "g", gsim))
            n_socket = stack.enter_context(run_nvidia(base / "n", nsim, binary))
            made: list[Peer] = []
            for name, socket in (("gpulet", g_socket), ("nvidia", n_socket)):
                channel = stack.enter_context(grpc.insecure_channel(f"unix://{socket}"))
                made.append(Peer(name, socket, channel, dp_grpc.DevicePluginStub(channel)))
            g_ids = sorted(d.ID for d in first_list(made[0].stub))
            n_ids = sorted(d.ID for d in first_list(made[1].stub))
            assert len(g_ids) == 8, g_ids
            assert g_ids == n_ids, f"gpulet lists {g_ids}, NVIDIA's plugin {n_ids}"
            peers = Peers(made[0], made[1], g_ids, 0, 0)
            yield peers
            summary(peers, base / "n" / "nvidia-device-plugin.log")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stats(samples: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(samples, 0.50),
        "p90": percentile(samples, 0.90),
        "p99": percentile(samples, 0.99),
        "mean": statistics.fmean(samples),
        "max": max(samples),
    }


Call = Callable[[dp_grpc.DevicePluginStub, int], Any]
Check = Callable[[str, int, Any], None]


def measure(peers: Peers, rpc: str, call: Call, check: Check, benchmark: Benchmark) -> None:
    """Warm-up, then ``calls`` timed calls per plugin, alternating; checks every answer."""
    calls, warmup = sizes(benchmark)
    peers.calls, peers.warmup = calls, warmup
    samples: dict[str, list[float]] = {name: [] for name in PLUGINS}
    answers: dict[str, list[Any]] = {name: [] for name in PLUGINS}

    def run() -> None:
        for i in range(warmup):
            for name in PLUGINS:
                check(name, i, call(peers.peer(name).stub, i))
        gc.collect()
        load_before = load_average()
        for i in range(calls):
            order = PLUGINS if i % 2 == 0 else PLUGINS[::-1]
            for name in order:
                stub = peers.peer(name).stub
                t = time.perf_counter()
                response = call(stub, i)
                samples[name].append(time.perf_counter() - t)
                answers[name].append(response)
        peers.results[rpc] = {
            "calls": calls,
            "warmup": warmup,
            "load_average_before": load_before,
            "load_average_after": load_average(),
        }

    benchmark.pedantic(run, rounds=1, iterations=1)
    for name in PLUGINS:
        assert len(samples[name]) == calls
        for i, response in enumerate(answers[name]):
            check(name, i, response)
        peers.results[rpc][name] = stats(samples[name])
    row = peers.results[rpc]
    print(f"\n{rpc}: {calls} calls per plugin, interleaved (load {row['load_average_after']})")
    for name in PLUGINS:
        s = row[name]
        print(
            f"  {name:7} p50 {s['p50'] * 1e3:6.3f} ms  p90 {s['p90'] * 1e3:6.3f} ms  "
            f"p99 {s['p99'] * 1e3:6.3f} ms  mean {s['mean'] * 1e3:6.3f} ms"
        )
    print("  gpulet/NVIDIA " + "  ".join(f"{k} {ratio(row, k):.2f}" for k in STATS))


def ratio(row: dict[str, Any], stat: str) -> float:
    return float(row["gpulet"][stat] / row["nvidia"][stat])


def test_vs_nvidia_empty_rpc(benchmark: Benchmark, peers: Peers) -> None:
    """The floor: GetDevicePluginOptions does no work in either plugin."""

    def call(stub: dp_grpc.DevicePluginStub, i: int) -> dp.DevicePluginOptions:
        return stub.GetDevicePluginOptions(dp.Empty(), timeout=30)

    def check(name: str, i: int, response: dp.DevicePluginOptions) -> None:
        assert response.get_preferred_allocation_available, name

    measure(peers, "GetDevicePluginOptions (floor)", call, check, benchmark)


def test_vs_nvidia_allocate(benchmark: Benchmark, peers: Peers) -> None:
    ids = peers.ids
    requests = [
        dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=[d])])
        for d in ids
    ]

    def call(stub: dp_grpc.DevicePluginStub, i: int) -> dp.AllocateResponse:
        return stub.Allocate(requests[i % len(ids)], timeout=30)

    def check(name: str, i: int, response: dp.AllocateResponse) -> None:
        assert len(response.container_responses) == 1, (name, response)
        envs = response.container_responses[0].envs
        assert envs.get("NVIDIA_VISIBLE_DEVICES") == ids[i % len(ids)], (name, i, dict(envs))

    measure(peers, "Allocate", call, check, benchmark)


@pytest.mark.parametrize("size", [2, 4])
def test_vs_nvidia_preferred(benchmark: Benchmark, peers: Peers, size: int) -> None:
    ids = peers.ids
    requests = [
        dp.PreferredAllocationRequest(
            container_requests=[
                dp.ContainerPreferredAllocationRequest(
                    available_deviceIDs=ids, must_include_deviceIDs=[d], allocation_size=size
                )
            ]
        )
        for d in ids
    ]

    def call(stub: dp_grpc.DevicePluginStub, i: int) -> dp.PreferredAllocationResponse:
        return stub.GetPreferredAllocation(requests[i % len(ids)], timeout=30)

    def check(name: str, i: int, response: dp.PreferredAllocationResponse) -> None:
        assert len(response.container_responses) == 1, (name, response)
        chosen = list(response.container_responses[0].deviceIDs)
        assert len(chosen) == len(set(chosen)) == size, (name, i, chosen)
        assert ids[i % len(ids)] in chosen, (name, i, chosen)
        assert set(chosen) <= set(ids), (name, i, chosen)

    measure(peers, f"GetPreferredAllocation, size {size}", call, check, benchmark)


def summary(peers: Peers, nvidia_log: pathlib.Path) -> None:
    """A markdown table of the run (benches/RESULTS.md's format), and the JSON if asked."""
    if not peers.results:
        return
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}"
    )
    print(f"\n\ngpulet {gpulet.__version__} vs NVIDIA device plugin {nvidia_plugin.VERSION}")
    print(f"{machine}; load average now {load_average()}")
    run = os.environ.get("GPULET_BENCH_RUN", "1")
    print(
        f"\n{peers.calls} timed calls per plugin and RPC after {peers.warmup} untimed; "
        "p50 / p99 in ms"
    )
    print(
        "\n| RPC | run | load (1 min) | gpulet p50 / p99 | NVIDIA p50 / p99 | p50 ratio | "
        "p99 ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for rpc, row in peers.results.items():
        g, n = row["gpulet"], row["nvidia"]
        low, high = sorted(
            float(row[k].split()[0]) for k in ("load_average_before", "load_average_after")
        )
        load = f"{low:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f}"
        print(
            f"| {rpc} | {run} | {load} | {g['p50'] * 1e3:.2f} / {g['p99'] * 1e3:.2f} | "
            f"{n['p50'] * 1e3:.2f} / {n['p99'] * 1e3:.2f} | {ratio(row, 'p50'):.2f} | "
            f"{ratio(row, 'p99'):.2f} |"
        )
    print("(ratio = gpulet / NVIDIA: below 1 means gpulet answers faster)")
    print(
        "mean ratios: " + ", ".join(f"{k} {ratio(r, 'mean'):.2f}" for k, r in peers.results.items())
    )
    lines = [ln for ln in nvidia_log.read_text(errors="replace").splitlines() if ln.strip()]
    print(f"NVIDIA's plugin logged {len(lines)} lines in the run")
    out = os.environ.get("GPULET_BENCH_JSON")
    if out:
        document = {
            "gpulet": gpulet.__version__,
            "nvidia_device_plugin": nvidia_plugin.VERSION,
            "machine": machine,
            "spec": "dgx-h100",
            "unit": "seconds",
            "results": peers.results,
        }
        pathlib.Path(out).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")


def test_sysfs_stand_in(tmp_path: pathlib.Path) -> None:
    """The NUMA files NVIDIA's plugin reads, named as it looks them up; MIG specs refused."""
    numa = nvidia_plugin.write_sysfs("dgx-h100", tmp_path)
    assert len(numa) == 8
    assert numa["0000:1b:00.0"] == 0
    assert numa["0000:df:00.0"] == 1
    assert (tmp_path / "0000:9d:00.0" / "numa_node").read_text() == "1\n"
    with pytest.raises(nvidia_plugin.NvidiaPluginError, match=r"gpus\[\d+\]\.mig_enabled"):
        nvidia_plugin.sysfs_bus_ids("hgx-h200")
