//! MIG planning benchmarks.
//!
//! `cargo bench -p gpulet-core --no-default-features --bench mig` runs, before criterion's
//! own measurements:
//! - a percentile loop (p50/p99 of single calls) for the full-node plan, and
//! - a seeded arrival/release stream on an 8 × H100 node, counting how many requests gpulet's
//!   planner accepts against first fit.
//!
//! `GPULET_BENCH_QUICK=1` shrinks everything to a smoke run (used by tests).

use criterion::{criterion_group, Criterion};
use gpulet_core::mig::{self, Layout, NodeGpu, Placement};
use std::hint::black_box;
use std::time::{Duration, Instant};

const H100: &str = "H100-80GB";

fn quick() -> bool {
    std::env::var_os("GPULET_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// A full node's worth of mixed requests: 51 of 56 compute slices on 8 × H100.
fn mixed_full_node() -> Vec<&'static str> {
    let mut r = vec!["1g.10gb"; 10];
    r.extend(["1g.20gb"; 6]);
    r.extend(["2g.20gb"; 6]);
    r.extend(["3g.40gb"; 4]);
    r.extend(["4g.40gb"; 2]);
    r.extend(["1g.10gb+me"; 3]);
    r
}

/// A node where half the GPUs already hold instances.
fn busy_node() -> Vec<Layout> {
    let l = |v: &[(&str, u32)]| {
        v.iter()
            .map(|(p, s)| Placement::new(*p, *s))
            .collect::<Layout>()
    };
    vec![
        l(&[("3g.40gb", 4)]),
        l(&[("1g.10gb", 0), ("2g.20gb", 2)]),
        Layout::empty(),
        l(&[("4g.40gb", 0)]),
        l(&[("1g.20gb", 6), ("1g.10gb", 1)]),
        Layout::empty(),
        Layout::empty(),
        l(&[("2g.20gb", 4)]),
    ]
}

fn gpus<'a>(existing: &'a [Layout]) -> Vec<NodeGpu<'a>> {
    existing
        .iter()
        .map(|l| NodeGpu::new(H100, Some(l)))
        .collect()
}

/// splitmix64: a tiny deterministic generator (no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

fn percentile_report() {
    let iters = if quick() { 20 } else { 2000 };
    let empty = vec![Layout::empty(); 8];
    let busy = busy_node();
    let reqs = mixed_full_node();
    let busy_reqs = [
        "3g.40gb", "3g.40gb", "2g.20gb", "2g.20gb", "1g.10gb", "1g.20gb", "4g.40gb",
    ];
    let cases: [(&str, &[Layout], &[&str]); 2] = [
        ("plan_node 8xH100 empty, 31 mixed requests", &empty, &reqs),
        ("plan_node 8xH100 busy, 7 mixed requests", &busy, &busy_reqs),
    ];
    for (name, existing, r) in cases {
        let g = gpus(existing);
        let samples: Vec<Duration> = (0..iters)
            .map(|_| {
                let t = Instant::now();
                black_box(mig::plan_node(&g, black_box(r)).expect("fits"));
                t.elapsed()
            })
            .collect();
        let (p50, p99) = percentiles(samples);
        println!("{name}: p50 {p50:?}, p99 {p99:?} over {iters} calls (target p99 <= 1 ms)");
    }
}

/// Seeded random full-node request sets: profiles drawn from [`MIX`] until their compute
/// slices reach a target between 40 and 60 (of 56), so some do not fit.
fn random_node_requests(seed: u64, n: usize) -> Vec<Vec<&'static str>> {
    let mut rng = Rng(seed);
    let total: u64 = MIX.iter().map(|m| m.1).sum();
    (0..n)
        .map(|_| {
            let target = 40 + rng.below(21) as u32;
            let mut reqs = Vec::new();
            let mut compute = 0;
            while compute < target {
                let mut x = rng.below(total);
                let (p, _) = *MIX
                    .iter()
                    .find(|(_, w)| {
                        let hit = x < *w;
                        if !hit {
                            x -= w;
                        }
                        hit
                    })
                    .unwrap_or(&MIX[0]);
                compute += p.as_bytes()[0].saturating_sub(b'0') as u32;
                reqs.push(p);
            }
            reqs
        })
        .collect()
}

fn random_node_report() {
    let n = if quick() { 20 } else { 2000 };
    let empty = vec![Layout::empty(); 8];
    let g = gpus(&empty);
    let mut samples = Vec::with_capacity(n);
    let (mut fits, mut first_fits) = (0, 0);
    for reqs in random_node_requests(7, n) {
        let t = Instant::now();
        let r = black_box(mig::plan_node(&g, black_box(&reqs)));
        samples.push(t.elapsed());
        fits += usize::from(r.is_ok());
        first_fits += usize::from(mig::first_fit_node(&g, &reqs).is_ok());
    }
    let max = samples.iter().max().copied().unwrap_or_default();
    let (p50, p99) = percentiles(samples);
    println!(
        "plan_node 8xH100 empty, {n} random request sets of 40-60 compute slices: \
         p50 {p50:?}, p99 {p99:?}, max {max:?} (target p99 <= 1 ms); \
         plan_node fits {fits}, first fit {first_fits}"
    );
}

/// Profiles drawn by weight: small ones common, big ones rare.
const MIX: [(&str, u64); 7] = [
    ("1g.10gb", 30),
    ("1g.20gb", 15),
    ("2g.20gb", 20),
    ("3g.40gb", 15),
    ("4g.40gb", 10),
    ("7g.80gb", 5),
    ("1g.10gb+me", 5),
];

struct Arrival {
    profile: &'static str,
    /// Arrivals later that this one leaves (if it was admitted).
    lifetime: usize,
}

/// `n` arrivals with lifetimes uniform in 1..=`max_life` arrivals (the longer, the fuller the
/// node).
fn stream(seed: u64, n: usize, max_life: u64) -> Vec<Arrival> {
    let mut rng = Rng(seed);
    let total: u64 = MIX.iter().map(|m| m.1).sum();
    (0..n)
        .map(|_| {
            let mut x = rng.below(total);
            let profile = MIX
                .iter()
                .find(|(_, w)| {
                    if x < *w {
                        true
                    } else {
                        x -= w;
                        false
                    }
                })
                .map_or(MIX[0].0, |m| m.0);
            Arrival {
                profile,
                lifetime: 1 + rng.below(max_life) as usize,
            }
        })
        .collect()
}

/// Replay arrivals on an 8 × H100 node; each admitted request leaves `lifetime` arrivals later.
/// Returns how many were admitted.
fn replay(
    arrivals: &[Arrival],
    planner: fn(&[NodeGpu<'_>], &[&str]) -> gpulet_core::Result<Vec<Layout>>,
) -> usize {
    type Live = (usize, usize, Placement); // (leaves at, gpu, placement)
    let mut node = vec![Layout::empty(); 8];
    let mut live: Vec<Live> = Vec::new();
    let mut admitted = 0;
    for (t, a) in arrivals.iter().enumerate() {
        live.retain(|(leave, gpu, p)| {
            if *leave > t {
                return true;
            }
            let rest: Vec<Placement> = node[*gpu]
                .placements()
                .iter()
                .filter(|q| *q != p)
                .cloned()
                .collect();
            node[*gpu] = Layout::new(rest);
            false
        });
        if let Ok(next) = planner(&gpus(&node), &[a.profile]) {
            for (g, l) in next.iter().enumerate() {
                for p in l.minus(&node[g]).placements() {
                    live.push((t + a.lifetime, g, p.clone()));
                }
            }
            node = next;
            admitted += 1;
        }
    }
    admitted
}

fn stream_report() {
    let n = if quick() { 100 } else { 3000 };
    let seeds: &[u64] = if quick() { &[1] } else { &[1, 2, 3, 4, 5] };
    for max_life in [40, 120] {
        let (mut planned, mut first) = (0, 0);
        for &seed in seeds {
            let arrivals = stream(seed, n, max_life);
            planned += replay(&arrivals, |g, r| mig::plan_node(g, r));
            first += replay(&arrivals, |g, r| mig::first_fit_node(g, r));
        }
        println!(
            "stream, {} seeds x {n} arrivals, lifetimes 1-{max_life}: gpulet admits {planned}, \
             first fit {first} ({:+}, {:+.2}%)",
            seeds.len(),
            planned as i64 - first as i64,
            100.0 * (planned as f64 - first as f64) / first as f64
        );
    }
}

fn benches(c: &mut Criterion) {
    let empty = vec![Layout::empty(); 8];
    let busy = busy_node();
    let reqs = mixed_full_node();
    let g_empty = gpus(&empty);
    let g_busy = gpus(&busy);
    let busy_reqs = [
        "3g.40gb", "3g.40gb", "2g.20gb", "2g.20gb", "1g.10gb", "1g.20gb", "4g.40gb",
    ];
    c.bench_function("plan 1xH100 [3g,2g,1g,1g]", |b| {
        b.iter(|| {
            mig::plan(
                H100,
                black_box(&["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]),
                None,
            )
        })
    });
    let existing: Layout = [Placement::new("2g.20gb", 2)].into_iter().collect();
    c.bench_function("plan 1xH100 beside 2g@2 [3g,1g,1g]", |b| {
        b.iter(|| {
            mig::plan(
                H100,
                black_box(&["3g.40gb", "1g.10gb", "1g.10gb"]),
                Some(&existing),
            )
        })
    });
    c.bench_function("plan_node 8xH100 empty, 31 mixed", |b| {
        b.iter(|| mig::plan_node(&g_empty, black_box(&reqs)))
    });
    c.bench_function("plan_node 8xH100 busy, 7 mixed", |b| {
        b.iter(|| mig::plan_node(&g_busy, black_box(&busy_reqs)))
    });
    c.bench_function("first_fit_node 8xH100 empty, 31 mixed", |b| {
        b.iter(|| mig::first_fit_node(&g_empty, black_box(&reqs)))
    });
    c.bench_function("fragmentation H100 3-instance layout", |b| {
        b.iter(|| mig::fragmentation(H100, black_box(&busy[1])))
    });
}

criterion_group! {
    name = group;
    config = if quick() {
        Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(10))
            .measurement_time(Duration::from_millis(50))
    } else {
        Criterion::default()
    };
    targets = benches
}

fn main() {
    percentile_report();
    random_node_report();
    stream_report();
    group();
    Criterion::default().configure_from_args().final_summary();
}
