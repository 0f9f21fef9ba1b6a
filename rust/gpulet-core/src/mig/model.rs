//! One model's MIG geometry in search-friendly form, built once per model and cached.

use super::layout::{slice_ranges, Layout, Placement};
use crate::catalog::{self, GpuModel, MigGeometry, MigProfile};
use crate::error::{CoreError, Result};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

/// What a GPU's future depends on: memory-slice occupancy, compute slices in use, and the
/// instance counts that occupancy does not already bound (mixed-radix packed in `extra`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct State {
    pub mask: u16,
    pub compute: u8,
    pub extra: u16,
}

/// A counter packed into `State::extra`: `(extra / weight) % (max + 1)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counter {
    weight: u16,
    max: u8,
}

impl Counter {
    fn get(self, extra: u16) -> u8 {
        ((extra / self.weight) % (u16::from(self.max) + 1)) as u8
    }
}

pub(crate) struct Prof {
    pub profile: &'static MigProfile,
    pub compute: u8,
    pub mem: u8,
    /// Set when `max_instances` is tighter than what occupancy and compute already allow.
    counter: Option<Counter>,
    /// This profile's candidates in [`MigModel::cands`].
    pub cands: Range<usize>,
}

/// One (profile, start) a new instance may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cand {
    pub prof: usize,
    pub start: u8,
    pub mask: u16,
}

/// Stranded capacity of a layout (see the module docs of [`crate::mig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stranded {
    /// Free memory slices that no completion of the layout can use.
    pub memory_slices: u32,
    /// Free compute slices that no completion of the layout can use.
    pub compute_slices: u32,
    /// The model's memory slices (`M`).
    pub total_memory_slices: u32,
    /// The model's compute slices (`C`).
    pub total_compute_slices: u32,
}

impl Stranded {
    /// `(memory_slices / M + compute_slices / C) / 2`, in `[0, 1]`.
    pub fn fraction(&self) -> f64 {
        (f64::from(self.memory_slices) / f64::from(self.total_memory_slices)
            + f64::from(self.compute_slices) / f64::from(self.total_compute_slices))
            / 2.0
    }
}

/// A small, fast hasher for the search memos (keys are small integers).
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.add(u64::from(*b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

const UNKNOWN: u16 = u16::MAX;

/// Most GPU states whose additions are kept per model.
const ADDITIONS_CACHED: usize = 1024;

/// One multiset of instances that can be added to a state, at its best placement.
#[derive(Clone, Debug)]
pub(crate) struct Addition {
    /// Instances per profile index, 4 bits each.
    pub counts: u64,
    /// [`MigModel::cost`] of the state afterwards.
    pub cost: u32,
    pub compute: u8,
    /// Candidate indices of the added instances.
    pub added: Box<[u8]>,
}

/// Depth-first walk over the placement-distinct sets of instances that can be added to a state,
/// keeping the least-cost (then first) set per multiset.
struct AdditionWalk<'m> {
    model: &'m MigModel,
    index: FxMap<u64, usize>,
    out: Vec<Addition>,
    added: Vec<u8>,
}

impl AdditionWalk<'_> {
    fn visit(&mut self, from: usize, s: State, counts: u64, compute: u8) {
        let cost = self.model.cost(s);
        match self.index.get(&counts) {
            Some(&i) if self.out[i].cost <= cost => {}
            Some(&i) => {
                self.out[i].cost = cost;
                self.out[i].added = self.added.as_slice().into();
            }
            None => {
                self.index.insert(counts, self.out.len());
                self.out.push(Addition {
                    counts,
                    cost,
                    compute,
                    added: self.added.as_slice().into(),
                });
            }
        }
        for c in from..self.model.cands.len() {
            let cand = &self.model.cands[c];
            let Some(next) = self.model.add(s, cand) else {
                continue;
            };
            let p = cand.prof;
            self.added.push(c as u8);
            self.visit(
                c + 1,
                next,
                counts + (1 << (4 * p)),
                compute + self.model.profs[p].compute,
            );
            self.added.pop();
        }
    }
}

/// A MIG-capable model with its placement tables and a table of what every reachable state can
/// still take (for fragmentation in O(1)).
pub struct MigModel {
    gpu: &'static GpuModel,
    geo: MigGeometry,
    pub(crate) profs: Vec<Prof>,
    /// Every (profile, start), profiles big first (memory, then compute slices, descending;
    /// catalog order on ties), starts ascending.
    pub(crate) cands: Vec<Cand>,
    total: Option<Counter>,
    /// Per state index: most memory slices (high byte) and compute slices (low byte) that
    /// further instances can take.
    ext: Vec<u16>,
    /// Per state seen by a node plan: every multiset it can still take, at its best placement.
    /// At most [`ADDITIONS_CACHED`] states.
    additions: Mutex<FxMap<State, Arc<[Addition]>>>,
}

/// The MIG model for a catalog key, alias, NVML product name or PCI device id.
pub fn model(name: &str) -> Result<&'static MigModel> {
    let gpu = catalog::lookup(name).ok_or_else(|| CoreError::UnknownModel {
        name: name.to_string(),
        known: catalog::model_keys().join(", "),
    })?;
    let Some(geo) = gpu.mig else {
        let capable: Vec<&str> = catalog::models()
            .iter()
            .filter(|m| m.mig_capable())
            .map(|m| m.key)
            .collect();
        return Err(CoreError::InvalidArgument(format!(
            "{} ({}) does not support MIG; MIG-capable models: {}",
            gpu.key,
            gpu.product_name,
            capable.join(", ")
        )));
    };
    static CACHE: OnceLock<Vec<OnceLock<Result<MigModel>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| catalog::models().iter().map(|_| OnceLock::new()).collect());
    let slot = catalog::models()
        .iter()
        .position(|m| std::ptr::eq(m, gpu))
        .and_then(|i| cache.get(i))
        .ok_or_else(|| CoreError::InvalidArgument(format!("{} is not in the catalog", gpu.key)))?;
    slot.get_or_init(|| MigModel::build(gpu, geo))
        .as_ref()
        .map_err(Clone::clone)
}

/// Most pairwise-disjoint placements of one profile (aligned intervals: greedy is exact).
fn max_disjoint(p: &MigProfile) -> u32 {
    let mut starts: Vec<u32> = p.placements.to_vec();
    starts.sort_unstable();
    let (mut n, mut free_from) = (0, 0);
    for s in starts {
        if s >= free_from {
            n += 1;
            free_from = s + p.memory_slices;
        }
    }
    n
}

impl MigModel {
    fn build(gpu: &'static GpuModel, geo: MigGeometry) -> Result<MigModel> {
        let bad = |what: String| Err(CoreError::InvalidArgument(format!("{}: {what}", gpu.key)));
        if geo.memory_slices == 0 || geo.memory_slices > 12 {
            return bad(format!(
                "{} memory slices (supported: 1-12)",
                geo.memory_slices
            ));
        }
        if geo.compute_slices == 0 || geo.compute_slices > 32 {
            return bad(format!(
                "{} compute slices (supported: 1-32)",
                geo.compute_slices
            ));
        }
        let mut order: Vec<usize> = (0..geo.profiles.len()).collect();
        order.sort_by_key(|&i| {
            let p = &geo.profiles[i];
            (
                std::cmp::Reverse(p.memory_slices),
                std::cmp::Reverse(p.compute_slices),
                i,
            )
        });
        let mut weight: u32 = 1;
        let mut profs = Vec::with_capacity(geo.profiles.len());
        let mut cands = Vec::new();
        for (i, p) in geo.profiles.iter().enumerate() {
            if p.compute_slices == 0 || p.memory_slices == 0 || p.max_instances == 0 {
                return bad(format!("profile {} has an empty size or limit", p.name));
            }
            let implied = max_disjoint(p).min(geo.compute_slices / p.compute_slices);
            let counter = if p.max_instances < implied {
                let c = Counter {
                    weight: weight as u16,
                    max: p.max_instances as u8,
                };
                weight *= p.max_instances + 1;
                Some(c)
            } else {
                None
            };
            profs.push(Prof {
                profile: &geo.profiles[i],
                compute: p.compute_slices as u8,
                mem: p.memory_slices as u8,
                counter,
                cands: 0..0,
            });
        }
        let total = if geo.max_instances < geo.compute_slices.min(geo.memory_slices) {
            let c = Counter {
                weight: weight as u16,
                max: geo.max_instances as u8,
            };
            weight *= geo.max_instances + 1;
            Some(c)
        } else {
            None
        };
        if weight > 64 {
            return bad("too many instance-limited profiles".to_string());
        }
        if geo.profiles.len() > 16 || geo.profiles.iter().any(|p| p.max_instances > 15) {
            return bad("more than 16 profiles or 15 instances of one profile".to_string());
        }
        for &i in &order {
            let p = &geo.profiles[i];
            let first = cands.len();
            let mut starts = p.placements.to_vec();
            starts.sort_unstable();
            for s in starts {
                if s + p.memory_slices > geo.memory_slices {
                    return bad(format!(
                        "{} placement {s} runs past the last memory slice",
                        p.name
                    ));
                }
                let mask = (((1u32 << p.memory_slices) - 1) << s) as u16;
                cands.push(Cand {
                    prof: i,
                    start: s as u8,
                    mask,
                });
            }
            profs[i].cands = first..cands.len();
        }
        let states = ((weight as usize) * (geo.compute_slices as usize + 1)) << geo.memory_slices;
        if cands.len() > usize::from(u8::MAX) {
            return bad(format!("{} placements in all (at most 255)", cands.len()));
        }
        let mut m = MigModel {
            gpu,
            geo,
            profs,
            cands,
            total,
            ext: Vec::new(),
            additions: Mutex::new(FxMap::default()),
        };
        let mut ext = vec![UNKNOWN; states];
        m.fill_ext(&mut ext, State::default());
        m.ext = ext;
        Ok(m)
    }

    fn index(&self, s: State) -> usize {
        ((usize::from(s.extra) * (self.geo.compute_slices as usize + 1) + usize::from(s.compute))
            << self.geo.memory_slices)
            | usize::from(s.mask)
    }

    fn fill_ext(&self, ext: &mut [u16], s: State) -> u16 {
        let i = self.index(s);
        if ext[i] != UNKNOWN {
            return ext[i];
        }
        let (mut mem, mut compute) = (0u16, 0u16);
        for c in &self.cands {
            if let Some(next) = self.add(s, c) {
                let e = self.fill_ext(ext, next);
                let p = &self.profs[c.prof];
                mem = mem.max(u16::from(p.mem) + (e >> 8));
                compute = compute.max(u16::from(p.compute) + (e & 0xff));
            }
        }
        ext[i] = (mem << 8) | compute;
        ext[i]
    }

    /// The state with one more instance at `c`, or `None` if it does not fit.
    #[inline]
    pub(crate) fn add(&self, s: State, c: &Cand) -> Option<State> {
        if s.mask & c.mask != 0 {
            return None;
        }
        let p = &self.profs[c.prof];
        let compute = s.compute + p.compute;
        if u32::from(compute) > self.geo.compute_slices {
            return None;
        }
        let mut extra = s.extra;
        for counter in [p.counter, self.total].into_iter().flatten() {
            if counter.get(extra) >= counter.max {
                return None;
            }
            extra += counter.weight;
        }
        Some(State {
            mask: s.mask | c.mask,
            compute,
            extra,
        })
    }

    pub(crate) fn stranded_state(&self, s: State) -> Stranded {
        let e = self.ext[self.index(s)];
        debug_assert_ne!(
            e, UNKNOWN,
            "state {s:?} not reachable from the empty layout"
        );
        let free_mem = self.geo.memory_slices - s.mask.count_ones();
        let free_compute = self.geo.compute_slices - u32::from(s.compute);
        Stranded {
            memory_slices: free_mem - u32::from(e >> 8),
            compute_slices: free_compute - u32::from(e & 0xff),
            total_memory_slices: self.geo.memory_slices,
            total_compute_slices: self.geo.compute_slices,
        }
    }

    /// Every multiset of instances `s` can still take (the empty one included), each at its best
    /// placement: least [`Self::cost`] afterwards, then the first in canonical order. Cached.
    pub(crate) fn additions(&self, s: State) -> Arc<[Addition]> {
        if let Some(a) = self.additions.lock().get(&s) {
            return Arc::clone(a);
        }
        let mut walk = AdditionWalk {
            model: self,
            index: FxMap::default(),
            out: Vec::new(),
            added: Vec::with_capacity(8),
        };
        walk.visit(0, s, 0, 0);
        let out = walk.out;
        let out: Arc<[Addition]> = out.into();
        let mut cache = self.additions.lock();
        if cache.len() >= ADDITIONS_CACHED && !cache.contains_key(&s) {
            // Bound the memory (a few KiB per state): start over rather than track recency.
            cache.clear();
        }
        Arc::clone(cache.entry(s).or_insert(out))
    }

    /// Stranded capacity as an exact integer: `fraction * cost_den()`.
    pub(crate) fn cost(&self, s: State) -> u32 {
        let st = self.stranded_state(s);
        st.memory_slices * self.geo.compute_slices + st.compute_slices * self.geo.memory_slices
    }

    /// The denominator of [`Self::cost`]: `2 * M * C`.
    pub(crate) fn cost_den(&self) -> u32 {
        2 * self.geo.memory_slices * self.geo.compute_slices
    }

    pub fn gpu(&self) -> &'static GpuModel {
        self.gpu
    }

    /// The catalog key, e.g. "H100-80GB".
    pub fn key(&self) -> &'static str {
        self.gpu.key
    }

    pub fn geometry(&self) -> &MigGeometry {
        &self.geo
    }

    pub fn profiles(&self) -> &'static [MigProfile] {
        self.geo.profiles
    }

    pub(crate) fn free_compute(&self, s: State) -> u32 {
        self.geo.compute_slices - u32::from(s.compute)
    }

    pub(crate) fn free_memory(&self, s: State) -> u32 {
        self.geo.memory_slices - s.mask.count_ones()
    }

    /// Instances that may still be added before the GPU-wide limit.
    pub(crate) fn free_instances(&self, s: State) -> u32 {
        // Every instance takes at least one compute and one memory slice.
        let bound = self.free_compute(s).min(self.free_memory(s));
        match self.total {
            Some(c) => bound.min(u32::from(c.max - c.get(s.extra))),
            None => bound,
        }
    }

    /// "free memory slices 4-7 and 3 compute slices".
    pub(crate) fn describe_free(&self, s: State) -> String {
        let free = !u32::from(s.mask) & ((1u32 << self.geo.memory_slices) - 1);
        format!(
            "free memory slices {} and {} compute slice{}",
            slice_ranges(free, self.geo.memory_slices),
            self.free_compute(s),
            if self.free_compute(s) == 1 { "" } else { "s" }
        )
    }

    /// The index of a profile given by NVML name ("1g.10gb+me") or by resource name
    /// ("1g.10gb.me", "mig-1g.10gb.me", "nvidia.com/mig-1g.10gb.me").
    pub(crate) fn find_profile(&self, name: &str) -> Option<usize> {
        let exact = self.geo.profiles.iter().position(|p| p.name == name);
        exact.or_else(|| {
            let short = name.trim();
            let short = short
                .strip_prefix(catalog::RESOURCE_NAME_PREFIX)
                .and_then(|s| s.strip_prefix('/'))
                .unwrap_or(short);
            let short = short
                .strip_prefix("mig-")
                .unwrap_or(short)
                .to_ascii_lowercase();
            self.geo
                .profiles
                .iter()
                .position(|p| p.name == short || p.resource_suffix() == short)
        })
    }

    pub(crate) fn profile_index(&self, name: &str) -> Result<usize> {
        self.find_profile(name).ok_or_else(|| {
            CoreError::MigLayout(format!(
                "unknown MIG profile {name:?} for {}; its profiles are {}",
                self.gpu.key,
                self.profile_names()
            ))
        })
    }

    fn profile_names(&self) -> String {
        self.geo
            .profiles
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The profile named `name` (NVML or resource name).
    pub fn profile(&self, name: &str) -> Result<&'static MigProfile> {
        Ok(&self.geo.profiles[self.profile_index(name)?])
    }

    pub(crate) fn placement_of(&self, cand: usize) -> Placement {
        let c = &self.cands[cand];
        Placement::new(self.profs[c.prof].profile.name, u32::from(c.start))
    }

    pub(crate) fn layout_of(&self, cands: &[usize]) -> Layout {
        cands.iter().map(|&c| self.placement_of(c)).collect()
    }

    /// Validate `layout`; return its state and its candidate indices.
    pub(crate) fn state_of(&self, layout: &Layout) -> Result<(State, Vec<usize>)> {
        let key = self.gpu.key;
        let mut slots = Vec::with_capacity(layout.len());
        for pl in layout.placements() {
            let pi = self.profile_index(&pl.profile)?;
            let prof = &self.profs[pi];
            let found = self.cands[prof.cands.clone()]
                .iter()
                .position(|c| u32::from(c.start) == pl.start)
                .map(|i| prof.cands.start + i);
            let Some(ci) = found else {
                let starts: Vec<String> =
                    prof.profile.placements.iter().map(u32::to_string).collect();
                return Err(CoreError::MigLayout(format!(
                    "{} cannot start at slice {} on {key}; placements are {}",
                    prof.profile.name,
                    pl.start,
                    starts.join(",")
                )));
            };
            slots.push(ci);
        }
        let mut counts = vec![0u32; self.profs.len()];
        for &c in &slots {
            counts[self.cands[c].prof] += 1;
        }
        for (p, &n) in self.profs.iter().zip(&counts) {
            let max = p.profile.max_instances;
            if n > max {
                return Err(CoreError::MigLayout(format!(
                    "max {max} instance{} of {} on {key}; the layout has {n}",
                    if max == 1 { "" } else { "s" },
                    p.profile.name
                )));
            }
        }
        let compute: u32 = slots
            .iter()
            .map(|&c| u32::from(self.profs[self.cands[c].prof].compute))
            .sum();
        if compute > self.geo.compute_slices {
            return Err(CoreError::MigLayout(format!(
                "compute slices {compute} > {}: {layout} needs {compute} compute slices and {key} has {}",
                self.geo.compute_slices, self.geo.compute_slices
            )));
        }
        if slots.len() as u32 > self.geo.max_instances {
            return Err(CoreError::MigLayout(format!(
                "max {} instances on {key}; the layout has {}",
                self.geo.max_instances,
                slots.len()
            )));
        }
        for (i, &a) in slots.iter().enumerate() {
            for &b in &slots[i + 1..] {
                let both = self.cands[a].mask & self.cands[b].mask;
                if both != 0 {
                    let ranges = slice_ranges(u32::from(both), self.geo.memory_slices);
                    let plural = if both.count_ones() == 1 { "" } else { "s" };
                    return Err(CoreError::MigLayout(format!(
                        "{} overlaps {} on memory slice{plural} {ranges}",
                        self.placement_of(a),
                        self.placement_of(b)
                    )));
                }
            }
        }
        let mut s = State::default();
        for &c in &slots {
            s = self
                .add(s, &self.cands[c])
                .ok_or_else(|| CoreError::MigLayout(format!("{layout} does not fit {key}")))?;
        }
        Ok((s, slots))
    }

    pub(crate) fn existing_state(&self, existing: Option<&Layout>) -> Result<(State, Vec<usize>)> {
        match existing {
            Some(l) => self.state_of(l),
            None => Ok((State::default(), Vec::new())),
        }
    }

    /// Check `layout` against this model; the error names the first clash found.
    pub fn validate(&self, layout: &Layout) -> Result<()> {
        self.state_of(layout).map(|_| ())
    }

    /// Stranded memory and compute slices of a valid `layout`.
    pub fn stranded(&self, layout: &Layout) -> Result<Stranded> {
        Ok(self.stranded_state(self.state_of(layout)?.0))
    }

    /// Fragmentation of a valid `layout`, in `[0, 1]` (0.0 = nothing stranded).
    pub fn fragmentation(&self, layout: &Layout) -> Result<f64> {
        Ok(self.stranded(layout)?.fraction())
    }

    /// Every valid layout built from `profiles` (all when `None`), including the empty one, or
    /// only the maximal ones. Order: depth-first over the candidates in canonical order.
    pub fn layouts<S: AsRef<str>>(
        &self,
        profiles: Option<&[S]>,
        maximal: bool,
    ) -> Result<Vec<Layout>> {
        let mut allowed = vec![profiles.is_none(); self.profs.len()];
        for name in profiles.unwrap_or(&[]) {
            allowed[self.profile_index(name.as_ref())?] = true;
        }
        let cands: Vec<usize> = (0..self.cands.len())
            .filter(|&c| allowed[self.cands[c].prof])
            .collect();
        let mut out = Vec::new();
        let mut stack = Vec::new();
        self.enumerate(&cands, 0, State::default(), &mut stack, maximal, &mut out);
        Ok(out)
    }

    fn enumerate(
        &self,
        cands: &[usize],
        from: usize,
        s: State,
        stack: &mut Vec<usize>,
        maximal: bool,
        out: &mut Vec<Layout>,
    ) {
        if !maximal || cands.iter().all(|&c| self.add(s, &self.cands[c]).is_none()) {
            out.push(self.layout_of(stack));
        }
        for (k, &c) in cands.iter().enumerate().skip(from) {
            if let Some(next) = self.add(s, &self.cands[c]) {
                stack.push(c);
                self.enumerate(cands, k + 1, next, stack, maximal, out);
                stack.pop();
            }
        }
    }

    /// The naive baseline: each request in the given order at its lowest free placement.
    pub fn first_fit<S: AsRef<str>>(
        &self,
        requests: &[S],
        existing: Option<&Layout>,
    ) -> Result<Layout> {
        let (mut s, mut slots) = self.existing_state(existing)?;
        let wanted = requests
            .iter()
            .map(|r| self.profile_index(r.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        for (i, &pi) in wanted.iter().enumerate() {
            let range = self.profs[pi].cands.clone();
            let Some((c, next)) = range
                .clone()
                .find_map(|c| self.add(s, &self.cands[c]).map(|n| (c, n)))
            else {
                return Err(CoreError::Infeasible(format!(
                    "first fit: {} (request {} of {}) does not fit {} after {}: {}",
                    self.profs[pi].profile.name,
                    i + 1,
                    wanted.len(),
                    self.gpu.key,
                    self.layout_of(&slots),
                    self.describe_free(s)
                )));
            };
            s = next;
            slots.push(c);
        }
        Ok(self.layout_of(&slots))
    }
}
