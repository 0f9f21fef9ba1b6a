//! Preferred allocation of whole GPUs.
//!
//! # The answer (policy `best-effort`)
//!
//! It is go-gpuallocator's best-effort answer, computed exactly and fast. Upstream pads the
//! available GPUs (taken here in ascending index order; the order callers give does not matter)
//! with empty slots up to a multiple of `size`, enumerates every partition of the padded list
//! into sets of `size` in which the padding sits in one set, keeps the partitions in which one
//! set holds all of `required` and no padding, takes the first one with the highest total score
//! and returns its highest-scoring set that holds `required` (the first such set on a tie).
//! "First" is upstream's enumeration order: partitions written as their sets ordered by
//! smallest member, each set ascending with the padding last, compared lexicographically.
//! Upstream's final pick may return the padded set when `required` is empty (its issue #80);
//! here the pick is among sets without padding. Size 1 is upstream's short-circuit: the required
//! GPU, else the lowest-index available one.
//!
//! A partition of the padded list is a partition of the real GPUs into sets of `size` plus one
//! set of `n mod size` GPUs (the padded one). So for every subset `S` of the node's GPUs (at
//! most [`MAX_EXACT_GPUS`]) and every size `k`, a table holds
//! `F(S) = max over blocks B ∋ min(S) of score(B) + F(S \ B)`, where `B` has `k` GPUs or, when
//! `|S| mod k` is not zero, `|S| mod k` GPUs, together with the lexicographically smallest best
//! block. Comparing blocks needs no enumeration: of two blocks, the lexicographically smaller
//! is the one holding the smallest GPU in which they differ (padding, being last, never wins).
//! Following best blocks from `S` yields `S`'s first best partition. The tables are built once
//! per topology and size (a few tens of milliseconds at 16 GPUs) and cached; a call then costs:
//! - no `required`: one walk down the first best partition of `available` (at most `n / k`
//!   lookups);
//! - with `required`: one lookup per candidate set `T ⊇ required` to find the best value and the
//!   optimal candidates, then one walk that keeps the candidates whose first best partition
//!   agrees with the lexicographically first one, block by block (for a fixed `T`, the first
//!   best partition containing `T` is `T` plus the first best partition of `available \ T`).
//!
//! Topologies of more than [`MAX_EXACT_GPUS`] GPUs are served exactly when at most that many are
//! available, by building the tables over the available GPUs for the call (tens of
//! milliseconds); more available GPUs than that are refused.
//!
//! # Policy `simple`
//!
//! Upstream's simple policy: `required` plus the lowest-index available GPUs; topology ignored.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::score::pair_matrix;
use crate::error::{CoreError, Result};
use crate::topology::Topology;

/// The most GPUs the prepared tables cover (2^16 subsets).
pub const MAX_EXACT_GPUS: usize = 16;

/// How many prepared topologies the process-wide cache keeps. A 16-GPU topology with the
/// tables of every size built holds about 12 MB (768 KB per size, 512 KB of subset scores).
const CACHE_CAPACITY: usize = 4;

/// A preferred-allocation policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// go-gpuallocator's best-effort policy (the default; what NVIDIA's device plugin uses).
    BestEffort,
    /// go-gpuallocator's simple policy: `required` plus the lowest-index available GPUs.
    Simple,
}

impl Policy {
    pub const ALL: [Policy; 2] = [Policy::BestEffort, Policy::Simple];

    pub fn name(self) -> &'static str {
        match self {
            Policy::BestEffort => "best-effort",
            Policy::Simple => "simple",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                CoreError::InvalidArgument(format!(
                    "unknown allocation policy {name:?}; expected one of {}",
                    Policy::ALL.map(|p| p.name()).join(", ")
                ))
            })
    }
}

/// Best partition value and first best block of every subset, for one set size.
struct Tables {
    value: Vec<i64>,
    first: Vec<u32>,
}

/// Score tables over an index space of at most [`MAX_EXACT_GPUS`] GPUs.
struct Space {
    n: usize,
    /// Score of every subset.
    set_score: Vec<i64>,
    /// Per set size `k` (index `k`), built on first use.
    tables: Vec<OnceLock<Tables>>,
}

/// Whether block `a` comes before block `b` in upstream's order (sets ascending, padding last).
#[inline]
fn lex_less(a: u32, b: u32) -> bool {
    let d = a ^ b;
    d != 0 && a & d & d.wrapping_neg() != 0
}

#[inline]
fn popcount(x: u32) -> usize {
    x.count_ones() as usize
}

/// Call `f` with the mask of every `j`-subset of `bits` (bit positions).
#[inline]
fn for_each_combo(bits: &[u32], j: usize, mut f: impl FnMut(u32)) {
    let len = bits.len();
    if j > len {
        return;
    }
    if j == 0 {
        f(0);
        return;
    }
    // idx: chosen positions in `bits`, ascending; prefix[i]: mask of the first i chosen.
    let mut idx = [0usize; MAX_EXACT_GPUS];
    let mut prefix = [0u32; MAX_EXACT_GPUS + 1];
    for i in 0..j {
        idx[i] = i;
        prefix[i + 1] = prefix[i] | 1 << bits[i];
    }
    loop {
        f(prefix[j]);
        // Advance the rightmost index that can move.
        let mut i = j;
        loop {
            if i == 0 {
                return;
            }
            i -= 1;
            if idx[i] < len - j + i {
                break;
            }
        }
        idx[i] += 1;
        prefix[i + 1] = prefix[i] | 1 << bits[idx[i]];
        for t in i + 1..j {
            idx[t] = idx[t - 1] + 1;
            prefix[t + 1] = prefix[t] | 1 << bits[idx[t]];
        }
    }
}

/// Bit positions of `mask`, ascending.
#[inline]
fn bits_of(mask: u32, out: &mut [u32; MAX_EXACT_GPUS]) -> usize {
    let mut n = 0;
    let mut x = mask;
    while x != 0 {
        out[n] = x.trailing_zeros();
        n += 1;
        x &= x - 1;
    }
    n
}

impl Space {
    /// `pair` is row-major `n × n`.
    fn new(n: usize, pair: &[i64]) -> Self {
        debug_assert!(n <= MAX_EXACT_GPUS);
        let full = 1usize << n;
        let mut set_score = vec![0i64; full];
        for s in 1..full {
            let h = usize::BITS - 1 - s.leading_zeros();
            let h = h as usize;
            let rest = s & !(1 << h);
            let mut add = 0;
            let mut x = rest;
            while x != 0 {
                let j = x.trailing_zeros() as usize;
                add += pair[h * n + j];
                x &= x - 1;
            }
            set_score[s] = set_score[rest] + add;
        }
        Space {
            n,
            set_score,
            tables: (0..=n).map(|_| OnceLock::new()).collect(),
        }
    }

    fn tables(&self, k: usize) -> &Tables {
        self.tables[k].get_or_init(|| self.build(k))
    }

    fn build(&self, k: usize) -> Tables {
        let full = 1usize << self.n;
        let mut value = vec![0i64; full];
        let mut first = vec![0u32; full];
        let mut bits = [0u32; MAX_EXACT_GPUS];
        for s in 1..full {
            let s32 = s as u32;
            let c = popcount(s32);
            let r = c % k;
            let m = s32 & s32.wrapping_neg();
            let nb = bits_of(s32 ^ m, &mut bits);
            let mut best_v = i64::MIN;
            let mut best_b = 0u32;
            let mut consider = |b: u32| {
                let v = self.set_score[b as usize] + value[(s32 ^ b) as usize];
                if v > best_v || (v == best_v && lex_less(b, best_b)) {
                    best_v = v;
                    best_b = b;
                }
            };
            if c >= k {
                for_each_combo(&bits[..nb], k - 1, |cm| consider(m | cm));
            }
            if r > 0 {
                for_each_combo(&bits[..nb], r - 1, |cm| consider(m | cm));
            }
            value[s] = best_v;
            first[s] = best_b;
        }
        Tables { value, first }
    }

    /// The best-effort block for available `a` and required `r` (masks in this space), sets of
    /// `k` (2 ≤ k ≤ |a|, r ⊆ a, |r| < k).
    fn best_effort(&self, a: u32, r: u32, k: usize) -> u32 {
        let t = self.tables(k);
        if r == 0 {
            // The highest-scoring full set of the first best partition of `a`.
            let mut s = a;
            let mut best = 0u32;
            let mut best_score = i64::MIN;
            while s != 0 {
                let b = t.first[s as usize];
                if popcount(b) == k && self.set_score[b as usize] > best_score {
                    best = b;
                    best_score = self.set_score[b as usize];
                }
                s ^= b;
            }
            return best;
        }

        // Candidates: every k-set T ⊇ r within a, valued score(T) + F(a \ T); keep the best.
        let mut bits = [0u32; MAX_EXACT_GPUS];
        let nb = bits_of(a & !r, &mut bits);
        let mut goal = i64::MIN;
        let mut cands: Vec<u32> = Vec::new();
        for_each_combo(&bits[..nb], k - popcount(r), |c| {
            let tt = r | c;
            let v = self.set_score[tt as usize] + t.value[(a ^ tt) as usize];
            if v > goal {
                goal = v;
                cands.clear();
                cands.push(tt);
            } else if v == goal {
                cands.push(tt);
            }
        });

        // Walk the lexicographically first best partition block by block.
        let mut s = a;
        loop {
            if cands.len() == 1 {
                return cands[0];
            }
            let m = s & s.wrapping_neg();
            if m & r != 0 {
                // Every candidate holds `m`: the first block is the candidate itself.
                return cands
                    .iter()
                    .copied()
                    .reduce(|x, y| if lex_less(y, x) { y } else { x })
                    .unwrap_or(0);
            }
            let first_block = |tt: u32| {
                if tt & m != 0 {
                    tt
                } else {
                    t.first[(s ^ tt) as usize]
                }
            };
            let b1 = cands
                .iter()
                .map(|&tt| first_block(tt))
                .reduce(|x, y| if lex_less(y, x) { y } else { x })
                .unwrap_or(0);
            if b1 & r != 0 {
                return b1;
            }
            cands.retain(|&tt| tt & m == 0 && t.first[(s ^ tt) as usize] == b1);
            s ^= b1;
        }
    }
}

/// Preferred allocation over one topology, with its score tables prepared once.
pub struct Allocator {
    n: usize,
    pair: Vec<i64>,
    /// Tables over the node's GPUs, when it has at most [`MAX_EXACT_GPUS`].
    space: Option<Space>,
}

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocator")
            .field("gpu_count", &self.n)
            .finish_non_exhaustive()
    }
}

/// A validated request: available and required ascending and deduplicated.
struct Request {
    available: Vec<usize>,
    required: Vec<usize>,
    size: usize,
}

fn sorted_unique(gpus: &[usize]) -> Vec<usize> {
    let mut v = gpus.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn validate(n: usize, available: &[usize], required: &[usize], size: usize) -> Result<Request> {
    if size == 0 {
        return Err(CoreError::InvalidArgument(
            "size must be at least 1 GPU".to_string(),
        ));
    }
    let available = sorted_unique(available);
    let required = sorted_unique(required);
    for (what, list) in [("available", &available), ("required", &required)] {
        if let Some(&g) = list.iter().find(|&&g| g >= n) {
            return Err(CoreError::InvalidArgument(format!(
                "{what} names GPU {g}, but the topology has GPUs 0..{n}"
            )));
        }
    }
    if let Some(&g) = required
        .iter()
        .find(|g| available.binary_search(g).is_err())
    {
        return Err(CoreError::InvalidArgument(format!(
            "required GPU {g} is not among the available GPUs {available:?}; \
             required GPUs must also be available"
        )));
    }
    if required.len() > size {
        return Err(CoreError::InvalidArgument(format!(
            "{} GPUs are required but only {size} asked for; size must be at least the number \
             of required GPUs",
            required.len()
        )));
    }
    if size > available.len() {
        return Err(CoreError::InvalidArgument(format!(
            "size {size} is more than the {} available GPUs; ask for at most {}",
            available.len(),
            available.len()
        )));
    }
    Ok(Request {
        available,
        required,
        size,
    })
}

fn mask_of(gpus: &[usize]) -> u32 {
    gpus.iter().fold(0, |m, &g| m | 1 << g)
}

fn gpus_of(mask: u32) -> Vec<usize> {
    let mut out = Vec::with_capacity(popcount(mask));
    let mut x = mask;
    while x != 0 {
        out.push(x.trailing_zeros() as usize);
        x &= x - 1;
    }
    out
}

impl Allocator {
    pub fn new(topo: &Topology) -> Self {
        Self::from_pair_matrix(topo.gpu_count(), pair_matrix(topo))
    }

    fn from_pair_matrix(n: usize, pair: Vec<i64>) -> Self {
        let space = (n <= MAX_EXACT_GPUS).then(|| Space::new(n, &pair));
        Allocator { n, pair, space }
    }

    pub fn gpu_count(&self) -> usize {
        self.n
    }

    /// Build the tables for `size` now instead of on the first call that needs them.
    pub fn prepare(&self, size: usize) {
        if let Some(space) = &self.space {
            if (2..=self.n).contains(&size) {
                space.tables(size);
            }
        }
    }

    /// Score of a set of GPUs (each index once, all below the GPU count).
    pub fn score(&self, gpus: &[usize]) -> Result<i64> {
        if let Some(&g) = gpus.iter().find(|&&g| g >= self.n) {
            return Err(CoreError::InvalidArgument(format!(
                "the set names GPU {g}, but the topology has GPUs 0..{}",
                self.n
            )));
        }
        let unique = sorted_unique(gpus);
        if unique.len() != gpus.len() {
            return Err(CoreError::InvalidArgument(
                "the set names a GPU twice; give each GPU once".to_string(),
            ));
        }
        let mut total = 0;
        for (i, &a) in unique.iter().enumerate() {
            for &b in &unique[i + 1..] {
                total += self.pair[a * self.n + b];
            }
        }
        Ok(total)
    }

    /// The best-effort preferred allocation; see the module documentation. Returns `size` GPU
    /// indices, ascending, including every required one.
    pub fn preferred(
        &self,
        available: &[usize],
        required: &[usize],
        size: usize,
    ) -> Result<Vec<usize>> {
        self.preferred_with(Policy::BestEffort, available, required, size)
    }

    pub fn preferred_with(
        &self,
        policy: Policy,
        available: &[usize],
        required: &[usize],
        size: usize,
    ) -> Result<Vec<usize>> {
        let req = validate(self.n, available, required, size)?;
        match policy {
            Policy::BestEffort => self.best_effort(&req),
            Policy::Simple => Ok(simple(&req)),
        }
    }

    fn best_effort(&self, req: &Request) -> Result<Vec<usize>> {
        let k = req.size;
        if k == 1 {
            // Upstream short-circuits size 1: the first available GPU that holds `required`.
            return Ok(vec![req
                .required
                .first()
                .copied()
                .unwrap_or(req.available[0])]);
        }
        if req.required.len() == k {
            return Ok(req.required.clone());
        }
        if req.available.len() == k {
            return Ok(req.available.clone());
        }
        if let Some(space) = &self.space {
            let block = space.best_effort(mask_of(&req.available), mask_of(&req.required), k);
            return Ok(gpus_of(block));
        }
        // A node of more GPUs than the tables cover: build them over the available GPUs.
        let m = req.available.len();
        if m > MAX_EXACT_GPUS {
            return Err(CoreError::InvalidArgument(format!(
                "best-effort allocation considers at most {MAX_EXACT_GPUS} available GPUs, got \
                 {m}; pass a smaller available list or use the \"simple\" policy"
            )));
        }
        let mut local = vec![0i64; m * m];
        for (i, &a) in req.available.iter().enumerate() {
            for (j, &b) in req.available.iter().enumerate() {
                local[i * m + j] = self.pair[a * self.n + b];
            }
        }
        let space = Space::new(m, &local);
        let pos = |g: &usize| req.available.binary_search(g).unwrap_or(0);
        let r = req.required.iter().fold(0u32, |acc, g| acc | 1 << pos(g));
        let block = space.best_effort((1u32 << m) - 1, r, k);
        Ok(gpus_of(block)
            .into_iter()
            .map(|i| req.available[i])
            .collect())
    }
}

fn simple(req: &Request) -> Vec<usize> {
    let mut out = req.required.clone();
    for &g in &req.available {
        if out.len() == req.size {
            break;
        }
        if req.required.binary_search(&g).is_err() {
            out.push(g);
        }
    }
    out.sort_unstable();
    out
}

static CACHE: Mutex<Vec<Arc<Allocator>>> = parking_lot::const_mutex(Vec::new());

/// The prepared allocator for `topo`, from a process-wide cache keyed by the pair scores (the
/// only thing allocation reads), so a topology is prepared once however often it is rebuilt.
pub fn allocator_for(topo: &Topology) -> Arc<Allocator> {
    let n = topo.gpu_count();
    let pair = pair_matrix(topo);
    let mut cache = CACHE.lock();
    if let Some(i) = cache.iter().position(|a| a.n == n && a.pair == pair) {
        let hit = cache.remove(i);
        cache.insert(0, hit.clone());
        return hit;
    }
    let fresh = Arc::new(Allocator::from_pair_matrix(n, pair));
    cache.insert(0, fresh.clone());
    cache.truncate(CACHE_CAPACITY);
    fresh
}

/// Best-effort preferred allocation of `size` whole GPUs from `available`, including all of
/// `required`; GPU indices ascending. See the module documentation.
pub fn preferred(
    topo: &Topology,
    available: &[usize],
    required: &[usize],
    size: usize,
) -> Result<Vec<usize>> {
    allocator_for(topo).preferred(available, required, size)
}

/// [`preferred`] under a named policy.
pub fn preferred_with(
    topo: &Topology,
    policy: Policy,
    available: &[usize],
    required: &[usize],
    size: usize,
) -> Result<Vec<usize>> {
    allocator_for(topo).preferred_with(policy, available, required, size)
}
