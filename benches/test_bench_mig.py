"""MIG planning benchmarks called from Python (pytest-benchmark and percentile loops).

Full run (numbers in benches/RESULTS.md; the percentile and stream reports print with -s):
    GPULET_BENCH_FULL=1 pytest benches/test_bench_mig.py --benchmark-only -s \\
        --benchmark-columns=min,median,mean,max,rounds
Smoke run (the test command): ``pytest benches/ --benchmark-disable`` runs each bench once and
the loops at a tiny size.

``test_percentiles_*`` time single calls with ``time.perf_counter_ns`` and report p50/p99 (the
target for a full-node plan is p99 <= 1 ms); ``test_stream_*`` replays a seeded stream of
arrivals and departures on an 8 x H100 node and counts how many requests gpulet's planner admits
against first fit. The Rust-side numbers come from ``rust/gpulet-core/benches/mig.rs``.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from gpulet import _core, mig
from gpulet.errors import InfeasibleError
from gpulet.mig import Layout

Benchmark = Any  # pytest-benchmark's fixture has no public type

H100 = "H100-80GB"
FULL = os.environ.get("GPULET_BENCH_FULL", "") not in ("", "0")

# 31 requests, 51 of the node's 56 compute slices.
MIXED_FULL_NODE = (
    ["1g.10gb"] * 10
    + ["1g.20gb"] * 6
    + ["2g.20gb"] * 6
    + ["3g.40gb"] * 4
    + ["4g.40gb"] * 2
    + ["1g.10gb+me"] * 3
)
BUSY_NODE: list[Layout | None] = [
    Layout([("3g.40gb", 4)]),
    Layout([("1g.10gb", 0), ("2g.20gb", 2)]),
    None,
    Layout([("4g.40gb", 0)]),
    Layout([("1g.20gb", 6), ("1g.10gb", 1)]),
    None,
    None,
    Layout([("2g.20gb", 4)]),
]
BUSY_REQUESTS = ["3g.40gb", "3g.40gb", "2g.20gb", "2g.20gb", "1g.10gb", "1g.20gb", "4g.40gb"]
# Profiles by weight: small ones common, big ones rare.
MIX = {
    "1g.10gb": 30,
    "1g.20gb": 15,
    "2g.20gb": 20,
    "3g.40gb": 15,
    "4g.40gb": 10,
    "7g.80gb": 5,
    "1g.10gb+me": 5,
}


def test_plan_one_gpu(benchmark: Benchmark) -> None:
    out = benchmark(mig.plan, H100, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"])
    assert len(out) == 4


def test_plan_node_full(benchmark: Benchmark) -> None:
    out = benchmark(mig.plan_node, H100, MIXED_FULL_NODE, gpus=8)
    assert sum(len(x) for x in out) == len(MIXED_FULL_NODE)


def test_plan_node_busy(benchmark: Benchmark) -> None:
    out = benchmark(mig.plan_node, H100, BUSY_REQUESTS, BUSY_NODE)
    assert sum(len(x) for x in out) == len(BUSY_REQUESTS) + 7


def test_fragmentation(benchmark: Benchmark) -> None:
    layout = Layout([("1g.10gb", 0), ("2g.20gb", 2)])
    assert 0.0 <= benchmark(mig.fragmentation, H100, layout) <= 1.0


def percentiles(samples_ns: Sequence[int]) -> tuple[float, float, float]:
    """(p50, p99, max) in microseconds."""
    s = sorted(samples_ns)

    def at(q: float) -> float:
        return s[round((len(s) - 1) * q)] / 1000

    return at(0.5), at(0.99), s[-1] / 1000


def time_calls(call: Callable[[], object], n: int) -> list[int]:
    samples = []
    for _ in range(n):
        t = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - t)
    return samples


def random_requests(rng: random.Random, target: int) -> list[str]:
    """Profiles drawn from MIX until their compute slices reach ``target``."""
    names, weights = list(MIX), list(MIX.values())
    out: list[str] = []
    compute = 0
    while compute < target:
        name = rng.choices(names, weights)[0]
        out.append(name)
        compute += int(name[0])
    return out


def test_percentiles_full_node_plan(benchmark: Benchmark) -> None:
    """One round of timed single calls (a benchmark, so ``--benchmark-only`` runs it too)."""
    benchmark.pedantic(percentile_report, rounds=1, iterations=1)


def percentile_report() -> None:
    n = 2000 if FULL else 10
    p50, p99, worst = percentiles(
        time_calls(lambda: mig.plan_node(H100, MIXED_FULL_NODE, gpus=8), n)
    )
    print(f"\nplan_node 8xH100, 31 mixed requests, {n} calls: p50 {p50:.1f} us, p99 {p99:.1f} us")
    rng = random.Random(7)
    sets = [random_requests(rng, rng.randint(40, 60)) for _ in range(n)]

    def fits(planner: Callable[..., object], requests: list[str]) -> bool:
        try:
            planner([H100] * 8, requests)
        except InfeasibleError:
            return False
        return True

    samples = []
    for requests in sets:
        samples.extend(time_calls(functools.partial(fits, _core.mig_plan_node, requests), 1))
    p50, p99, worst = percentiles(samples)
    planned = sum(fits(_core.mig_plan_node, r) for r in sets)
    first = sum(fits(_core.mig_first_fit_node, r) for r in sets)
    print(
        f"plan_node 8xH100, {n} random request sets of 40-60 compute slices: "
        f"p50 {p50:.1f} us, p99 {p99:.1f} us, max {worst:.1f} us (target p99 <= 1000 us); "
        f"plan_node fits {planned}, first fit {first}"
    )
    assert planned >= first


def replay(
    arrivals: Sequence[tuple[str, int]],
    planner: Callable[[list[str], list[Layout]], list[Layout]],
    gpus: int = 8,
) -> int:
    """Admitted requests when each arrival (profile, lifetime) is placed by ``planner`` on the
    node as it is, and leaves ``lifetime`` arrivals later."""
    node = [Layout()] * gpus
    live: list[tuple[int, int, tuple[str, int]]] = []  # (leaves at, gpu, placement)
    admitted = 0
    for t, (profile, lifetime) in enumerate(arrivals):
        for _, g, p in [x for x in live if x[0] <= t]:
            node[g] = Layout([q for q in node[g] if (q.profile, q.start) != p])
        live = [x for x in live if x[0] > t]
        try:
            after = planner([profile], node)
        except InfeasibleError:
            continue
        for g, (old, new) in enumerate(zip(node, after, strict=True)):
            for q in set(new) - set(old):
                live.append((t + lifetime, g, (q.profile, q.start)))
        node = after
        admitted += 1
    return admitted


@pytest.mark.parametrize("max_life", [40, 120])
def test_stream_planner_vs_first_fit(benchmark: Benchmark, max_life: int) -> None:
    """Arrivals live 1..max_life arrivals: the longer, the fuller the node."""
    benchmark.pedantic(stream_report, (max_life,), rounds=1, iterations=1)


def stream_report(max_life: int) -> None:
    n, seeds = (3000, [1, 2, 3]) if FULL else (60, [1])
    names, weights = list(MIX), list(MIX.values())
    models = [H100] * 8
    planned = first = 0
    for seed in seeds:
        rng = random.Random(seed)
        arrivals = [(rng.choices(names, weights)[0], rng.randint(1, max_life)) for _ in range(n)]
        planned += replay(arrivals, lambda r, node: mig.plan_node(models, r, node))
        first += replay(arrivals, lambda r, node: _core.mig_first_fit_node(models, r, node))
    print(
        f"\nstream, {len(seeds)} seeds x {n} arrivals, lifetimes 1-{max_life}: gpulet admits "
        f"{planned}, first fit {first} ({planned - first:+d}, "
        f"{100 * (planned - first) / max(first, 1):+.2f}%)"
    )
    assert planned >= 1
    assert first >= 1
