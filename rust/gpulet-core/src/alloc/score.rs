//! Pair and set scores, as go-gpuallocator's best-effort policy computes them.
//!
//! A pair of GPUs scores its PCIe path plus 100 per NVLink between them; both count:
//!
//! | PCIe path       | points |
//! |-----------------|--------|
//! | cross-cpu       | 10     |
//! | same-cpu        | 20     |
//! | host-bridge     | 30     |
//! | multi-switch    | 40     |
//! | single-switch   | 50     |
//! | board           | 60     |
//!
//! A set scores the sum of its pairs; a partition the sum of its sets.
//!
//! Two departures from upstream, both deliberate:
//! - Upstream's switch stops at twelve links (a pair with 13..18 direct links scores no NVLink
//!   points at all). Here every link counts 100.
//! - NVSwitch. Upstream counts only links whose remote end is the peer GPU, so on an NVSwitch
//!   node no pair gets NVLink credit (its `TODO: Handle NVSwitch semantics`). Here, when
//!   [`Topology::nvswitch`] is set, every pair scores as [`NVSWITCH_PAIR_LINKS`] links (or its
//!   direct links, if more): every GPU reaches every other GPU through all its links, and the
//!   topology does not carry per-GPU switch-link counts, so every pair is put in the fullest
//!   link class. Because every pair of the node gets the same credit, every partition of `n`
//!   GPUs into sets of `k` gains the same total, so the choice among sets is decided by the PCIe
//!   tree exactly as it would be with the true per-GPU link counts; only absolute scores differ.

use crate::error::{CoreError, Result};
use crate::topology::{PcieLevel, Topology};

/// Points per NVLink between a pair.
pub const NVLINK_POINTS: i64 = 100;

/// Links every pair counts on an NVSwitch node: `NVML_NVLINK_MAX_LINKS` (18), the NVLinks of a
/// Hopper or Blackwell GPU, all of which reach the switch fabric.
pub const NVSWITCH_PAIR_LINKS: u32 = 18;

/// Points for the PCIe path between a pair.
pub fn pcie_points(level: PcieLevel) -> i64 {
    match level {
        PcieLevel::CrossCpu => 10,
        PcieLevel::SameCpu => 20,
        PcieLevel::HostBridge => 30,
        PcieLevel::MultiSwitch => 40,
        PcieLevel::SingleSwitch => 50,
        PcieLevel::Board => 60,
    }
}

/// NVLinks a pair counts: direct links, or on an NVSwitch node at least
/// [`NVSWITCH_PAIR_LINKS`].
pub fn counted_nvlinks(topo: &Topology, a: usize, b: usize) -> u32 {
    let direct = topo.nvlinks(a, b);
    if topo.nvswitch() {
        direct.max(NVSWITCH_PAIR_LINKS)
    } else {
        direct
    }
}

/// Score of one pair of distinct GPUs (0 for `a == b`). Both must be below `gpu_count`.
pub fn pair_score(topo: &Topology, a: usize, b: usize) -> i64 {
    if a == b {
        return 0;
    }
    pcie_points(topo.pcie(a, b)) + NVLINK_POINTS * i64::from(counted_nvlinks(topo, a, b))
}

/// The full pair-score matrix, row-major `n × n`, zero diagonal.
pub fn pair_matrix(topo: &Topology) -> Vec<i64> {
    let n = topo.gpu_count();
    let mut m = vec![0; n * n];
    for a in 0..n {
        for b in 0..n {
            m[a * n + b] = pair_score(topo, a, b);
        }
    }
    m
}

/// Check that every index names a GPU of the topology and none is given twice.
pub(crate) fn check_gpus(topo: &Topology, gpus: &[usize], what: &str) -> Result<()> {
    let n = topo.gpu_count();
    let mut seen = vec![false; n];
    for &g in gpus {
        if g >= n {
            return Err(CoreError::InvalidArgument(format!(
                "{what} names GPU {g}, but the topology has GPUs 0..{n}"
            )));
        }
        if seen[g] {
            return Err(CoreError::InvalidArgument(format!(
                "{what} names GPU {g} twice; give each GPU once"
            )));
        }
        seen[g] = true;
    }
    Ok(())
}

/// Score of a set of GPUs: the sum of its pair scores. Every index must name a GPU of the
/// topology, each once.
pub fn score(topo: &Topology, gpus: &[usize]) -> Result<i64> {
    check_gpus(topo, gpus, "the set")?;
    let mut total = 0;
    for (i, &a) in gpus.iter().enumerate() {
        for &b in &gpus[i + 1..] {
            total += pair_score(topo, a, b);
        }
    }
    Ok(total)
}
