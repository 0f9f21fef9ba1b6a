//! MIG geometry, layouts, planning and fragmentation, computed from the catalog's tables.
//!
//! # Model
//!
//! A MIG-capable GPU has `C` compute slices and `M` memory slices (7 × 8 on A100/H100/H200/
//! B200/GB200, 4 × 4 on A30). A GPU-instance profile takes `c` compute slices and `m`
//! contiguous memory slices starting at one of its allowed placements (NVML's
//! `nvmlGpuInstancePlacement_t`, in memory slices). A [`Layout`] is a set of placed instances
//! ([`Placement`]: profile name and start memory slice). It is valid on a model when every
//! profile exists on it, every start is one of the profile's placements, no two instances share
//! a memory slice, the compute slices add up to at most `C`, and no profile (nor the GPU as a
//! whole) exceeds its instance limit.
//!
//! The state that matters for the future of a GPU is tiny: the memory-slice occupancy bitmask,
//! the number of compute slices in use, and the instance counts of the few profiles whose limit
//! is not already implied by occupancy (the `+me` profiles). Every search here works on that
//! state.
//!
//! # Fragmentation
//!
//! For a valid layout with `F` free memory slices and `K` free compute slices, let `Fmax` be the
//! most memory slices and `Kmax` the most compute slices that any set of further instances
//! (of any of the model's profiles, respecting placements, overlaps, compute and instance
//! limits) can still take. Then
//!
//! - stranded memory slices `Sm = F - Fmax`: free memory no completion of the layout can use;
//! - stranded compute slices `Sc = K - Kmax`: free compute left without usable memory;
//! - `fragmentation = (Sm / M + Sc / C) / 2`, in `[0, 1]`; `0.0` means nothing is stranded.
//!
//! Examples on a 7 × 8 GPU: the empty layout, `7g@0`, and `4g@0 + 3g@4` score 0; seven
//! single-slice `1g` instances strand memory slice 7 (no 1g placement starts there): `1/16`;
//! `3g@0` alone strands one compute slice, because the memory left (slices 4-7) can feed at
//! most 3 more compute slices: `1/14`; four double-memory `1g` instances strand 3 compute
//! slices: `3/14`.
//!
//! # Planning
//!
//! [`plan`] places a multiset of profiles on one GPU, keeping the existing instances. It is
//! exact: it enumerates every placement-distinct completion (the space is a few thousand layouts
//! at most), so it finds a fit whenever one exists, and returns the one with the least
//! stranded capacity (lowest fragmentation). Ties go to the first completion in canonical order:
//! profiles big first (memory slices, then compute slices, descending), each profile's
//! instances at the lowest starts.
//!
//! [`plan_node`] assigns requests to the GPUs of a node. Each GPU's possible additions (every
//! multiset of instances it can still hold, each at its best placement) are enumerated once per
//! distinct GPU state and cached. A dynamic program over the GPUs, most constrained first,
//! memoised on (GPU position, requests still unplaced) and pruned by branch and bound (lower
//! bounds from free compute/memory and per-GPU least costs), then finds the assignment with the
//! least total stranded capacity. It is complete: pruning only drops branches that provably
//! cannot beat the best found or cannot fit, so it fails only when no assignment exists. Ties
//! go to the first GPU decided (fewest options, then lowest index) taking its cheapest
//! addition, and the one with the most compute slices among equally cheap ones.
//!
//! [`first_fit`] and [`first_fit_node`] are the naive baselines (each request in the given order
//! at its lowest free placement), kept for comparisons and benchmarks.

mod layout;
mod model;
mod node;
mod plan;

pub use layout::{Layout, Placement};
pub use model::{model, MigModel, Stranded};
pub use node::{first_fit_node, plan_node, NodeGpu};

use crate::catalog::MigProfile;
use crate::error::Result;

/// The MIG profiles of `model` (catalog key, alias, NVML product name or PCI device id).
pub fn profiles(model_name: &str) -> Result<&'static [MigProfile]> {
    Ok(model(model_name)?.profiles())
}

/// Check `layout` against `model`'s geometry; the error names the first clash found.
pub fn validate(model_name: &str, layout: &Layout) -> Result<()> {
    model(model_name)?.validate(layout)
}

/// Every valid layout of `model` built from `profiles` (all of the model's when `None`),
/// placement-distinct, including the empty layout; with `maximal`, only those to which no
/// further instance of those profiles can be added. Deterministic order.
pub fn layouts<S: AsRef<str>>(
    model_name: &str,
    profiles: Option<&[S]>,
    maximal: bool,
) -> Result<Vec<Layout>> {
    model(model_name)?.layouts(profiles, maximal)
}

/// Place `requests` (profile names, repeats allowed) on one GPU of `model` beside `existing`.
pub fn plan<S: AsRef<str>>(
    model_name: &str,
    requests: &[S],
    existing: Option<&Layout>,
) -> Result<Layout> {
    model(model_name)?.plan(requests, existing)
}

/// The naive baseline: each request in order at its lowest free placement.
pub fn first_fit<S: AsRef<str>>(
    model_name: &str,
    requests: &[S],
    existing: Option<&Layout>,
) -> Result<Layout> {
    model(model_name)?.first_fit(requests, existing)
}

/// The fragmentation of `layout` on `model` (see the module docs), in `[0, 1]`.
pub fn fragmentation(model_name: &str, layout: &Layout) -> Result<f64> {
    model(model_name)?.fragmentation(layout)
}

/// Stranded memory and compute slices of `layout` on `model` (see the module docs).
pub fn stranded(model_name: &str, layout: &Layout) -> Result<Stranded> {
    model(model_name)?.stranded(layout)
}

#[cfg(test)]
mod tests;
