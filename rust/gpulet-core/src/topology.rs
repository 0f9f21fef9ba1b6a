//! The link matrix between the GPUs of one node, indexed by NVML index.
//!
//! Built once (from NVML discovery or by hand) and then only read: allocation scores pairs from
//! it without touching NVML again.

use crate::error::{CoreError, Result};
use serde::Serialize;

/// PCIe path between two GPUs, nearest first. The discriminants are NVML's
/// `nvmlGpuTopologyLevel_t` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PcieLevel {
    /// Same board (NVML_TOPOLOGY_INTERNAL).
    Board = 0,
    /// One PCIe switch (NVML_TOPOLOGY_SINGLE).
    SingleSwitch = 10,
    /// Several PCIe switches, no host bridge (NVML_TOPOLOGY_MULTIPLE).
    MultiSwitch = 20,
    /// Through a host bridge (NVML_TOPOLOGY_HOSTBRIDGE).
    HostBridge = 30,
    /// Same CPU / NUMA node (NVML_TOPOLOGY_NODE).
    SameCpu = 40,
    /// Across CPUs (NVML_TOPOLOGY_SYSTEM).
    CrossCpu = 50,
}

impl PcieLevel {
    pub const ALL: [PcieLevel; 6] = [
        PcieLevel::Board,
        PcieLevel::SingleSwitch,
        PcieLevel::MultiSwitch,
        PcieLevel::HostBridge,
        PcieLevel::SameCpu,
        PcieLevel::CrossCpu,
    ];

    /// The name used in the Python API and node specs.
    pub fn name(self) -> &'static str {
        match self {
            PcieLevel::Board => "board",
            PcieLevel::SingleSwitch => "single-switch",
            PcieLevel::MultiSwitch => "multi-switch",
            PcieLevel::HostBridge => "host-bridge",
            PcieLevel::SameCpu => "same-cpu",
            PcieLevel::CrossCpu => "cross-cpu",
        }
    }

    /// The short form `nvidia-smi topo -m` prints.
    pub fn smi_name(self) -> &'static str {
        match self {
            PcieLevel::Board => "PIX",
            PcieLevel::SingleSwitch => "PIX",
            PcieLevel::MultiSwitch => "PXB",
            PcieLevel::HostBridge => "PHB",
            PcieLevel::SameCpu => "NODE",
            PcieLevel::CrossCpu => "SYS",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        PcieLevel::ALL
            .into_iter()
            .find(|l| l.name() == name)
            .ok_or_else(|| {
                CoreError::Topology(format!(
                    "unknown PCIe level {name:?}; expected one of {}",
                    PcieLevel::ALL.map(|l| l.name()).join(", ")
                ))
            })
    }

    pub fn from_nvml(value: u32) -> Result<Self> {
        PcieLevel::ALL
            .into_iter()
            .find(|l| *l as u32 == value)
            .ok_or_else(|| {
                CoreError::Topology(format!("NVML returned unknown topology level {value}"))
            })
    }

    pub fn nvml_value(self) -> u32 {
        self as u32
    }
}

/// Links between the GPUs of one node. Symmetric by construction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Topology {
    gpu_count: usize,
    /// Row-major `gpu_count × gpu_count`; direct GPU-to-GPU NVLinks.
    nvlinks: Vec<u32>,
    /// Row-major `gpu_count × gpu_count`; the diagonal is unused.
    pcie: Vec<PcieLevel>,
    numa: Option<Vec<i32>>,
    nvswitch: bool,
}

/// A GPU index as a caller gives it: unsigned from Rust, signed from Python (so that a negative
/// index is named as written).
pub trait GpuIndex: Copy + std::fmt::Display + TryInto<usize> {}

impl<I: Copy + std::fmt::Display + TryInto<usize>> GpuIndex for I {}

/// `gpu` as an index below `gpu_count`, or `None`.
fn in_range<I: GpuIndex>(gpu_count: usize, gpu: I) -> Option<usize> {
    gpu.try_into().ok().filter(|&g| g < gpu_count)
}

/// The one check of a GPU pair given to a topology: both in range, and two distinct GPUs.
fn check_pair<I: GpuIndex>(gpu_count: usize, a: I, b: I, what: &str) -> Result<(usize, usize)> {
    let (Some(i), Some(j)) = (in_range(gpu_count, a), in_range(gpu_count, b)) else {
        return Err(CoreError::Topology(format!(
            "{what} pair ({a}, {b}) names a GPU outside 0..{gpu_count}"
        )));
    };
    if i == j {
        return Err(CoreError::Topology(format!(
            "{what} pair ({a}, {b}) links a GPU to itself"
        )));
    }
    Ok((i, j))
}

/// Fill a symmetric matrix from unordered pairs, refusing a pair given twice with two values.
fn fill<I: GpuIndex, T: Copy + PartialEq + std::fmt::Debug>(
    gpu_count: usize,
    matrix: &mut [T],
    given: &mut [bool],
    pairs: &[((I, I), T)],
    what: &str,
) -> Result<()> {
    for &((a, b), v) in pairs {
        let (a, b) = check_pair(gpu_count, a, b, what)?;
        for (i, j) in [(a, b), (b, a)] {
            let k = i * gpu_count + j;
            if given[k] && matrix[k] != v {
                return Err(CoreError::Topology(format!(
                    "{what} pair ({a}, {b}) given twice with different values ({:?} and {v:?}); \
                     links are unordered, give each pair once",
                    matrix[k]
                )));
            }
            matrix[k] = v;
            given[k] = true;
        }
    }
    Ok(())
}

/// The PCIe level of a pair not given: "same-cpu" when `numa` puts both GPUs on one node (or
/// `numa` is absent), else "cross-cpu".
fn default_pcie(numa: Option<&[i32]>, a: usize, b: usize) -> PcieLevel {
    match numa {
        Some(n) if n[a] != n[b] => PcieLevel::CrossCpu,
        _ => PcieLevel::SameCpu,
    }
}

impl Topology {
    /// Build a topology. Pairs are unordered; a pair given as (a, b) and (b, a) with different
    /// values is an error, and so are a GPU paired with itself and a GPU outside
    /// `0..gpu_count`. A PCIe pair not given is "same-cpu" when `numa` puts both GPUs on one
    /// node (or `numa` is absent), else "cross-cpu".
    pub fn new(
        gpu_count: usize,
        nvlinks: &[((usize, usize), u32)],
        pcie: &[((usize, usize), PcieLevel)],
        numa: Option<Vec<i32>>,
        nvswitch: bool,
    ) -> Result<Self> {
        Topology::build(gpu_count, nvlinks, pcie, numa, nvswitch)
    }

    /// [`Topology::new`] with the GPU count and indices as a caller wrote them (Python's
    /// `Topology(...)`): a negative count or index is refused, named as given.
    pub fn from_signed(
        gpu_count: i64,
        nvlinks: &[((i64, i64), u32)],
        pcie: &[((i64, i64), PcieLevel)],
        numa: Option<Vec<i32>>,
        nvswitch: bool,
    ) -> Result<Self> {
        let gpu_count = usize::try_from(gpu_count).map_err(|_| {
            CoreError::Topology(format!("gpu_count must be 0 or more, got {gpu_count}"))
        })?;
        Topology::build(gpu_count, nvlinks, pcie, numa, nvswitch)
    }

    fn build<I: GpuIndex>(
        gpu_count: usize,
        nvlinks: &[((I, I), u32)],
        pcie: &[((I, I), PcieLevel)],
        numa: Option<Vec<i32>>,
        nvswitch: bool,
    ) -> Result<Self> {
        if let Some(n) = &numa {
            if n.len() != gpu_count {
                return Err(CoreError::Topology(format!(
                    "numa lists {} GPUs but gpu_count is {gpu_count}",
                    n.len()
                )));
            }
        }
        let cells = gpu_count * gpu_count;
        let mut links = vec![0u32; cells];
        fill(
            gpu_count,
            &mut links,
            &mut vec![false; cells],
            nvlinks,
            "nvlink",
        )?;
        let mut levels = vec![PcieLevel::SameCpu; cells];
        let mut given = vec![false; cells];
        fill(gpu_count, &mut levels, &mut given, pcie, "pcie")?;
        for i in 0..gpu_count {
            for j in 0..gpu_count {
                let k = i * gpu_count + j;
                if !given[k] {
                    levels[k] = default_pcie(numa.as_deref(), i, j);
                }
            }
        }
        Ok(Topology {
            gpu_count,
            nvlinks: links,
            pcie: levels,
            numa,
            nvswitch,
        })
    }

    /// `gpu` as an index of this topology, or an error naming it.
    pub fn index<I: GpuIndex>(&self, gpu: I) -> Result<usize> {
        in_range(self.gpu_count, gpu).ok_or_else(|| {
            CoreError::Topology(format!(
                "GPU {gpu} is outside 0..{} of this topology",
                self.gpu_count
            ))
        })
    }

    /// [`Topology::nvlinks`], refusing a GPU outside the topology.
    pub fn try_nvlinks<I: GpuIndex>(&self, a: I, b: I) -> Result<u32> {
        Ok(self.nvlinks(self.index(a)?, self.index(b)?))
    }

    /// [`Topology::pcie`], refusing a GPU outside the topology and a GPU paired with itself.
    pub fn try_pcie<I: GpuIndex>(&self, a: I, b: I) -> Result<PcieLevel> {
        let (a, b) = (self.index(a)?, self.index(b)?);
        if a == b {
            return Err(CoreError::Topology(format!(
                "GPU {a} has no PCIe path to itself"
            )));
        }
        Ok(self.pcie(a, b))
    }

    pub fn gpu_count(&self) -> usize {
        self.gpu_count
    }

    /// Direct NVLinks between `a` and `b` (0 for a == b or out of range).
    pub fn nvlinks(&self, a: usize, b: usize) -> u32 {
        if a == b || a >= self.gpu_count || b >= self.gpu_count {
            return 0;
        }
        self.nvlinks[a * self.gpu_count + b]
    }

    /// PCIe level between two distinct GPUs.
    pub fn pcie(&self, a: usize, b: usize) -> PcieLevel {
        self.pcie[a * self.gpu_count + b]
    }

    pub fn numa(&self) -> Option<&[i32]> {
        self.numa.as_deref()
    }

    /// Whether the GPUs reach each other through NVSwitches.
    pub fn nvswitch(&self) -> bool {
        self.nvswitch
    }

    /// Every unordered pair with at least one direct NVLink.
    pub fn nvlink_pairs(&self) -> Vec<((usize, usize), u32)> {
        let n = self.gpu_count;
        (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
            .filter_map(|(a, b)| {
                let l = self.nvlinks(a, b);
                (l > 0).then_some(((a, b), l))
            })
            .collect()
    }

    /// Every unordered pair with its PCIe level.
    pub fn pcie_pairs(&self) -> Vec<((usize, usize), PcieLevel)> {
        let n = self.gpu_count;
        (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| ((a, b), self.pcie(a, b))))
            .collect()
    }

    /// The unordered pairs whose PCIe level is not the default that `numa` implies: what a
    /// caller must give to build this topology again.
    pub fn explicit_pcie_pairs(&self) -> Vec<((usize, usize), PcieLevel)> {
        self.pcie_pairs()
            .into_iter()
            .filter(|&((a, b), level)| level != default_pcie(self.numa(), a, b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_numa() {
        let t = Topology::new(
            4,
            &[],
            &[((0, 1), PcieLevel::SingleSwitch)],
            Some(vec![0, 0, 1, 1]),
            false,
        )
        .unwrap();
        assert_eq!(t.pcie(0, 1), PcieLevel::SingleSwitch);
        assert_eq!(t.pcie(1, 0), PcieLevel::SingleSwitch);
        assert_eq!(t.pcie(2, 3), PcieLevel::SameCpu);
        assert_eq!(t.pcie(0, 2), PcieLevel::CrossCpu);
    }

    #[test]
    fn one_way_links_that_disagree_are_refused() {
        let e = Topology::new(4, &[((0, 3), 2), ((3, 0), 1)], &[], None, false).unwrap_err();
        assert!(e.to_string().contains("(3, 0) given twice"), "{e}");
        // The same value both ways is fine.
        let t = Topology::new(4, &[((0, 3), 2), ((3, 0), 2)], &[], None, false).unwrap();
        assert_eq!(t.nvlinks(3, 0), 2);
    }

    #[test]
    fn levels_map_to_nvml_values_and_names() {
        for level in PcieLevel::ALL {
            assert_eq!(PcieLevel::from_nvml(level.nvml_value()).unwrap(), level);
            assert_eq!(PcieLevel::from_name(level.name()).unwrap(), level);
        }
        // NVML_TOPOLOGY_INTERNAL, _SINGLE, _MULTIPLE, _HOSTBRIDGE, _NODE, _SYSTEM.
        let nvml = [0, 10, 20, 30, 40, 50].map(|v| PcieLevel::from_nvml(v).unwrap());
        assert_eq!(nvml, PcieLevel::ALL);
        assert!(PcieLevel::from_nvml(35).is_err());
        assert!(
            PcieLevel::ALL.windows(2).all(|w| w[0] < w[1]),
            "nearest first"
        );
        assert_eq!(PcieLevel::MultiSwitch.smi_name(), "PXB");
        assert_eq!(PcieLevel::CrossCpu.smi_name(), "SYS");
    }

    #[test]
    fn pairs_are_listed_once_each() {
        let t = Topology::new(3, &[((2, 0), 4)], &[], None, true).unwrap();
        assert_eq!(t.nvlink_pairs(), vec![((0, 2), 4)]);
        assert_eq!(t.pcie_pairs().len(), 3);
        assert!(t.nvswitch());
        assert_eq!(t.nvlinks(0, 0), 0);
        assert_eq!(t.nvlinks(0, 7), 0);
    }

    #[test]
    fn signed_indices_are_checked_and_named_as_given() {
        let e = Topology::from_signed(4, &[((-1, 2), 1)], &[], None, false).unwrap_err();
        assert!(
            e.to_string().contains("(-1, 2) names a GPU outside 0..4"),
            "{e}"
        );
        let e =
            Topology::from_signed(4, &[], &[((2, 2), PcieLevel::Board)], None, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("pcie pair (2, 2) links a GPU to itself"),
            "{e}"
        );
        let e = Topology::from_signed(-1, &[], &[], None, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("gpu_count must be 0 or more, got -1"),
            "{e}"
        );
        let t = Topology::from_signed(2, &[((1, 0), 3)], &[], None, false).unwrap();
        assert_eq!(
            t,
            Topology::new(2, &[((0, 1), 3)], &[], None, false).unwrap()
        );
    }

    #[test]
    fn checked_accessors_refuse_what_is_not_a_pair() {
        let t = Topology::new(2, &[((0, 1), 3)], &[], None, false).unwrap();
        assert_eq!(t.try_nvlinks(1, 0).unwrap(), 3);
        assert_eq!(t.try_nvlinks(1, 1).unwrap(), 0);
        assert_eq!(t.try_pcie(0, 1).unwrap(), PcieLevel::SameCpu);
        let e = t.try_nvlinks(0, 2).unwrap_err();
        assert!(e.to_string().contains("GPU 2 is outside 0..2"), "{e}");
        let e = t.try_pcie(-1, 0).unwrap_err();
        assert!(e.to_string().contains("GPU -1 is outside 0..2"), "{e}");
        let e = t.try_pcie(1, 1).unwrap_err();
        assert!(e.to_string().contains("no PCIe path to itself"), "{e}");
    }

    #[test]
    fn explicit_pairs_rebuild_the_topology() {
        let numa = Some(vec![0, 0, 1, 1]);
        let t = Topology::new(
            4,
            &[],
            &[
                ((0, 1), PcieLevel::Board),
                ((2, 3), PcieLevel::SameCpu),
                ((1, 2), PcieLevel::HostBridge),
            ],
            numa.clone(),
            false,
        )
        .unwrap();
        // (2, 3) is same-cpu by default: not explicit.
        let explicit = t.explicit_pcie_pairs();
        assert_eq!(
            explicit,
            vec![((0, 1), PcieLevel::Board), ((1, 2), PcieLevel::HostBridge)]
        );
        assert_eq!(Topology::new(4, &[], &explicit, numa, false).unwrap(), t);
    }

    #[test]
    fn bad_pairs_are_refused() {
        assert!(Topology::new(2, &[((0, 2), 1)], &[], None, false).is_err());
        assert!(Topology::new(2, &[((1, 1), 1)], &[], None, false).is_err());
        assert!(Topology::new(2, &[], &[], Some(vec![0]), false).is_err());
        assert!(PcieLevel::from_name("near").is_err());
    }
}
