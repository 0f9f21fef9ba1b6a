//! go-gpuallocator's best-effort policy as upstream computes it: enumerate every partition of
//! the padded available list. Written from the algorithm's description for tests and benches,
//! which check [`super::preferred`] against it; it is exponential (about 2·10⁷ partitions for
//! 16 GPUs in sets of 3) and never used to serve requests.
//!
//! Faithful to upstream except that:
//! - `available` and `required` are taken in ascending index order, duplicates dropped (the
//!   fast allocator's contract; upstream takes the caller's order);
//! - the final pick skips sets that hold padding (upstream's issue #80);
//! - an index outside the topology yields an empty answer instead of a crash.
//!
//! Like upstream it returns an empty list when it cannot answer.

use super::score::pair_matrix;
use crate::topology::Topology;

/// A slot of the padded list: a GPU index, or padding.
type Slot = Option<usize>;

struct Scorer {
    n: usize,
    pair: Vec<i64>,
}

impl Scorer {
    fn pair(&self, a: Slot, b: Slot) -> i64 {
        match (a, b) {
            (Some(a), Some(b)) if a != b => self.pair[a * self.n + b],
            _ => 0,
        }
    }

    fn set(&self, set: &[Slot]) -> i64 {
        let mut total = 0;
        for (i, &a) in set.iter().enumerate() {
            for &b in &set[i + 1..] {
                total += self.pair(a, b);
            }
        }
        total
    }

    fn partition(&self, partition: &[Vec<Slot>]) -> i64 {
        partition.iter().map(|s| self.set(s)).sum()
    }
}

fn contains_all(set: &[Slot], subset: &[Slot]) -> bool {
    subset.iter().all(|g| set.contains(g))
}

fn padding(set: &[Slot]) -> usize {
    set.iter().filter(|g| g.is_none()).count()
}

/// Whether some set holds all of `required` and no padding.
fn has_set_with_all(partition: &[Vec<Slot>], required: &[Slot]) -> bool {
    partition
        .iter()
        .any(|s| contains_all(s, required) && padding(s) == 0)
}

/// Every partition of `devices` into sets of `size`, in upstream's order.
fn iterate_partitions(devices: &[Slot], size: usize, callback: &mut dyn FnMut(&[Vec<Slot>])) {
    if size == 0 || size > devices.len() {
        return;
    }
    if size == 1 {
        for &d in devices {
            callback(&[vec![d]]);
        }
        return;
    }
    let mut padded = devices.to_vec();
    while padded.len() % size != 0 {
        padded.push(None);
    }
    let pad = padding(&padded);
    let mut accum = Vec::new();
    iterate(&padded, size, pad, &mut accum, callback);
}

fn iterate(
    devices: &[Slot],
    size: usize,
    pad: usize,
    accum: &mut Vec<Vec<Slot>>,
    callback: &mut dyn FnMut(&[Vec<Slot>]),
) {
    if size > devices.len() {
        return;
    }
    if size == devices.len() {
        accum.push(devices.to_vec());
        callback(accum);
        accum.pop();
        return;
    }
    // devices[0] plus every (size-1)-combination of devices[1..], in lexicographic order.
    let rest = &devices[1..];
    let j = size - 1;
    let mut idx: Vec<usize> = (0..j).collect();
    loop {
        let mut set = Vec::with_capacity(size);
        set.push(devices[0]);
        set.extend(idx.iter().map(|&i| rest[i]));
        let p = padding(&set);
        if p == 0 || p == pad {
            let remaining: Vec<Slot> = devices
                .iter()
                .copied()
                .filter(|g| !set.contains(g))
                .collect();
            accum.push(set);
            iterate(&remaining, size, pad, accum, callback);
            accum.pop();
        }
        let mut i = j;
        loop {
            if i == 0 {
                return;
            }
            i -= 1;
            if idx[i] < rest.len() - j + i {
                break;
            }
        }
        idx[i] += 1;
        for t in i + 1..j {
            idx[t] = idx[t - 1] + 1;
        }
    }
}

/// Upstream's best-effort answer (sorted ascending), or empty when it has none.
pub fn best_effort(
    topo: &Topology,
    available: &[usize],
    required: &[usize],
    size: usize,
) -> Vec<usize> {
    let n = topo.gpu_count();
    let mut available = available.to_vec();
    available.sort_unstable();
    available.dedup();
    let mut required = required.to_vec();
    required.sort_unstable();
    required.dedup();
    if available.iter().chain(&required).any(|&g| g >= n) {
        return Vec::new();
    }
    if size == 0 || available.len() < size || required.len() > size {
        return Vec::new();
    }
    let scorer = Scorer {
        n,
        pair: pair_matrix(topo),
    };
    let devices: Vec<Slot> = available.iter().map(|&g| Some(g)).collect();
    let required: Vec<Slot> = required.iter().map(|&g| Some(g)).collect();

    let mut best: Option<Vec<Vec<Slot>>> = None;
    let mut best_score = 0;
    iterate_partitions(&devices, size, &mut |candidate| {
        if !has_set_with_all(candidate, &required) {
            return;
        }
        let score = scorer.partition(candidate);
        if score > best_score || best.is_none() {
            best = Some(candidate.to_vec());
            best_score = score;
        }
    });

    let Some(best) = best else { return Vec::new() };
    let mut chosen: Option<(&Vec<Slot>, i64)> = None;
    for set in &best {
        if !contains_all(set, &required) || padding(set) != 0 {
            continue;
        }
        let score = scorer.set(set);
        let better = match chosen {
            None => true,
            Some((_, best)) => score > best,
        };
        if better {
            chosen = Some((set, score));
        }
    }
    let Some((set, _)) = chosen else {
        return Vec::new();
    };
    let mut out: Vec<usize> = set.iter().flatten().copied().collect();
    out.sort_unstable();
    out
}

/// Number of partitions upstream enumerates for `n` available GPUs in sets of `size` (for
/// reports).
pub fn partition_count(n: usize, size: usize) -> u128 {
    if size == 0 || size > n {
        return 0;
    }
    if size == 1 {
        return n as u128;
    }
    let padded = n.div_ceil(size) * size;
    let pad = padded - n;
    // The padded set holds all padding plus size - pad real GPUs, or there is no padding.
    fn pairings(m: usize, k: usize) -> u128 {
        // m!/((k!)^(m/k) (m/k)!) computed as a product of binomials C(m-1, k-1) ...
        let mut total = 1u128;
        let mut left = m;
        while left > 0 {
            total *= binom(left - 1, k - 1);
            left -= k;
        }
        total
    }
    fn binom(n: usize, k: usize) -> u128 {
        if k > n {
            return 0;
        }
        let mut r = 1u128;
        for i in 0..k {
            r = r * (n - i) as u128 / (i + 1) as u128;
        }
        r
    }
    if pad == 0 {
        pairings(n, size)
    } else {
        binom(n, size - pad) * pairings(n - (size - pad), size)
    }
}
