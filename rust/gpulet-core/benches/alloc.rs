//! Preferred-allocation benchmarks: gpulet against go-gpuallocator's enumeration (the
//! baseline, `gpulet_core::alloc::baseline`) measured in the same run.
//!
//! `cargo bench -p gpulet-core --no-default-features --bench alloc` runs, before criterion's
//! own measurements, a percentile loop: for every topology and size 1-8, a fixed set of requests
//! (whole node free, a required GPU, a fragmented node) is answered by gpulet many times (p50
//! and p99 of single calls through the public `preferred`, which includes the topology-cache
//! lookup) and by the baseline a few times (it takes seconds at 16 GPUs); every answer is
//! checked equal to the baseline's. It also times preparing the tables of a fresh topology.
//!
//! `GPULET_BENCH_QUICK=1` shrinks everything to a smoke run (8 GPUs, sizes 1-4, few calls, no
//! criterion). `GPULET_BENCH_BASELINE_RUNS=N` sets the baseline calls per request (default 3
//! at 8 GPUs, 1 at 16).

use criterion::{criterion_group, Criterion};
use gpulet_core::alloc::{baseline, preferred, Allocator};
use gpulet_core::topology::{PcieLevel, Topology};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn quick() -> bool {
    std::env::var_os("GPULET_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// DGX-1 with Volta: hybrid cube-mesh NVLinks, one PCIe switch per pair, two sockets.
const DGX1V_LINKS: [((usize, usize), u32); 16] = [
    ((0, 1), 1),
    ((0, 2), 1),
    ((0, 3), 2),
    ((0, 4), 2),
    ((1, 2), 2),
    ((1, 3), 1),
    ((1, 5), 2),
    ((2, 3), 2),
    ((2, 6), 1),
    ((3, 7), 1),
    ((4, 5), 1),
    ((4, 6), 1),
    ((4, 7), 2),
    ((5, 6), 2),
    ((5, 7), 1),
    ((6, 7), 2),
];

/// PCIe of `boards` DGX-1-style boards of 8: pairs share a switch, quads a host bridge, each
/// quad its own NUMA node.
fn board_pcie(gpus: usize) -> Vec<((usize, usize), PcieLevel)> {
    let mut pcie = Vec::new();
    for a in 0..gpus {
        for b in a + 1..gpus {
            if a / 2 == b / 2 {
                pcie.push(((a, b), PcieLevel::SingleSwitch));
            } else if a / 4 == b / 4 {
                pcie.push(((a, b), PcieLevel::HostBridge));
            }
        }
    }
    pcie
}

fn dgx1v() -> Topology {
    Topology::new(
        8,
        &DGX1V_LINKS,
        &board_pcie(8),
        Some(vec![0, 0, 0, 0, 1, 1, 1, 1]),
        false,
    )
    .expect("valid topology")
}

/// Two DGX-1V boards in one node (no NVLink between boards): 16 GPUs, four NUMA nodes.
fn two_boards() -> Topology {
    let mut links = DGX1V_LINKS.to_vec();
    links.extend(DGX1V_LINKS.iter().map(|&((a, b), l)| ((a + 8, b + 8), l)));
    let numa = (0..16).map(|g: i32| g / 4).collect();
    Topology::new(16, &links, &board_pcie(16), Some(numa), false).expect("valid topology")
}

/// DGX-2-like: 16 GPUs on NVSwitches; PCIe switch per pair, switch tree per quad, two sockets.
fn dgx2() -> Topology {
    let mut pcie = Vec::new();
    for a in 0..16usize {
        for b in a + 1..16 {
            if a / 2 == b / 2 {
                pcie.push(((a, b), PcieLevel::SingleSwitch));
            } else if a / 4 == b / 4 {
                pcie.push(((a, b), PcieLevel::MultiSwitch));
            }
        }
    }
    let numa = (0..16).map(|g: i32| g / 8).collect();
    Topology::new(16, &[], &pcie, Some(numa), true).expect("valid topology")
}

struct Case {
    name: &'static str,
    available: Vec<usize>,
    required: Vec<usize>,
}

/// The requests benched at `size` on an `n`-GPU node.
fn cases(n: usize, size: usize) -> Vec<Case> {
    let all: Vec<usize> = (0..n).collect();
    // A fragmented node: a quarter of the GPUs already taken, scattered.
    let fragmented: Vec<usize> = all.iter().copied().filter(|g| g % 4 != 1).collect();
    let mut out = vec![Case {
        name: "free node",
        available: all.clone(),
        required: vec![],
    }];
    if size >= 2 {
        out.push(Case {
            name: "free node, 1 required",
            available: all,
            required: vec![n / 2 + 1],
        });
    }
    if fragmented.len() >= size {
        out.push(Case {
            name: "fragmented",
            available: fragmented.clone(),
            required: vec![],
        });
        if size >= 2 {
            out.push(Case {
                name: "fragmented, 1 required",
                available: fragmented,
                required: vec![n - 2],
            });
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 10_000_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} s", ns as f64 / 1e9)
    }
}

fn ratio(a: Duration, b: Duration) -> String {
    let r = a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    if r >= 100.0 {
        format!("{:.0}×", r)
    } else {
        format!("{:.1}×", r)
    }
}

fn report(name: &str, topo: &Topology, sizes: &[usize], calls: usize, baseline_runs: usize) {
    let n = topo.gpu_count();
    println!("\n### {name} ({n} GPUs): {calls} gpulet calls per size, {baseline_runs} baseline call(s) per request\n");
    println!("| size | requests | gpulet p50 | gpulet p99 | baseline p50 | baseline p99 | p50 ratio | p99 ratio | same answers |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &size in sizes {
        let cases = cases(n, size);
        // Answers must equal the baseline's on every request benched.
        let mut base = Vec::new();
        for c in &cases {
            let want = baseline::best_effort(topo, &c.available, &c.required, size);
            for _ in 0..baseline_runs {
                let t = Instant::now();
                let got = baseline::best_effort(black_box(topo), &c.available, &c.required, size);
                base.push(t.elapsed());
                assert_eq!(got, want);
            }
            let fast = preferred(topo, &c.available, &c.required, size).expect("valid request");
            assert_eq!(
                fast, want,
                "{name}, size {size}, {}: gpulet differs from baseline",
                c.name
            );
        }
        let mut fast = Vec::with_capacity(calls);
        for i in 0..calls {
            let c = &cases[i % cases.len()];
            let t = Instant::now();
            let got = preferred(black_box(topo), &c.available, &c.required, size);
            fast.push(t.elapsed());
            black_box(got).expect("valid request");
        }
        fast.sort_unstable();
        base.sort_unstable();
        let (f50, f99) = (percentile(&fast, 0.5), percentile(&fast, 0.99));
        let (b50, b99) = (percentile(&base, 0.5), percentile(&base, 0.99));
        println!(
            "| {size} | {} | {} | {} | {} | {} | {} | {} | yes |",
            cases.len(),
            fmt(f50),
            fmt(f99),
            fmt(b50),
            fmt(b99),
            ratio(b50, f50),
            ratio(b99, f99)
        );
    }
}

/// Time to prepare a fresh topology's tables for every size.
fn report_preparation(name: &str, topo: &Topology, sizes: &[usize]) {
    let t = Instant::now();
    let a = Allocator::new(topo);
    let base = t.elapsed();
    let mut line = format!("- {name}: subset scores {}", fmt(base));
    for &k in sizes {
        let t = Instant::now();
        a.prepare(k);
        line.push_str(&format!(", size {k} {}", fmt(t.elapsed())));
    }
    println!("{line}");
}

fn runs(default: usize) -> usize {
    std::env::var("GPULET_BENCH_BASELINE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentiles() {
    if quick() {
        report("DGX-1V", &dgx1v(), &[1, 2, 3, 4], 200, 1);
        return;
    }
    let sizes: Vec<usize> = (1..=8).collect();
    println!("\n## Table preparation (once per topology and size)\n");
    report_preparation("DGX-1V", &dgx1v(), &sizes);
    report_preparation("two DGX-1V boards", &two_boards(), &sizes);
    report_preparation("DGX-2-like", &dgx2(), &sizes);
    report("DGX-1V", &dgx1v(), &sizes, 20_000, runs(3));
    report("two DGX-1V boards", &two_boards(), &sizes, 20_000, runs(1));
    report("DGX-2-like (NVSwitch)", &dgx2(), &sizes, 20_000, runs(1));
}

fn bench_preferred(c: &mut Criterion) {
    for (name, topo) in [
        ("dgx1v", dgx1v()),
        ("two-boards", two_boards()),
        ("dgx2", dgx2()),
    ] {
        let n = topo.gpu_count();
        let mut group = c.benchmark_group(format!("preferred/{name}"));
        for size in 1..=8 {
            let all: Vec<usize> = (0..n).collect();
            let req = [n / 2 + 1];
            let required: &[usize] = if size >= 2 { &req } else { &[] };
            group.bench_function(format!("gpulet/size-{size}"), |b| {
                b.iter(|| preferred(black_box(&topo), black_box(&all), black_box(required), size))
            });
            // The baseline only where one call takes well under a second.
            if baseline::partition_count(n, size) <= 10_000 {
                group.bench_function(format!("baseline/size-{size}"), |b| {
                    b.iter(|| {
                        baseline::best_effort(
                            black_box(&topo),
                            black_box(&all),
                            black_box(required),
                            size,
                        )
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_preferred);

fn main() {
    percentiles();
    if quick() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
