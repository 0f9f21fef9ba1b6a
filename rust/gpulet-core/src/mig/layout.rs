//! Placed instances and layouts: plain data, checked against a model by
//! [`MigModel::validate`](super::MigModel::validate).

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// One MIG GPU instance: a profile (NVML's name, e.g. "3g.40gb") at a start memory slice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Placement {
    pub profile: String,
    /// First memory slice (NVML's `nvmlGpuInstancePlacement_t.start`).
    pub start: u32,
}

impl Placement {
    pub fn new(profile: impl Into<String>, start: u32) -> Self {
        Placement {
            profile: profile.into(),
            start,
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.profile, self.start)
    }
}

/// A set of placed instances on one GPU, kept sorted by (start, profile) so that equal sets
/// compare equal. Duplicates are kept (validation reports them as overlaps).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Layout {
    placements: Vec<Placement>,
}

impl Layout {
    pub fn new(mut placements: Vec<Placement>) -> Self {
        placements.sort_by(|a, b| (a.start, &a.profile).cmp(&(b.start, &b.profile)));
        Layout { placements }
    }

    pub fn empty() -> Self {
        Layout::default()
    }

    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    pub fn len(&self) -> usize {
        self.placements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.placements.is_empty()
    }

    /// Instances per profile name.
    pub fn counts(&self) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for p in &self.placements {
            *counts.entry(p.profile.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// The placements of `self` that are not in `other` (multiset difference).
    pub fn minus(&self, other: &Layout) -> Layout {
        let mut rest = other.placements.clone();
        let mut out = Vec::new();
        for p in &self.placements {
            if let Some(i) = rest.iter().position(|q| q == p) {
                rest.swap_remove(i);
            } else {
                out.push(p.clone());
            }
        }
        Layout::new(out)
    }
}

impl From<Vec<Placement>> for Layout {
    fn from(v: Vec<Placement>) -> Self {
        Layout::new(v)
    }
}

impl FromIterator<Placement> for Layout {
    fn from_iter<I: IntoIterator<Item = Placement>>(iter: I) -> Self {
        Layout::new(iter.into_iter().collect())
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.placements.is_empty() {
            return f.write_str("(empty)");
        }
        for (i, p) in self.placements.iter().enumerate() {
            if i > 0 {
                f.write_str(" + ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// "2-3", "5", "0-1,4-7" or "none" for a slice bitmask.
pub(crate) fn slice_ranges(mask: u32, slices: u32) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < slices {
        if mask & (1 << i) != 0 {
            let start = i;
            while i + 1 < slices && mask & (1 << (i + 1)) != 0 {
                i += 1;
            }
            parts.push(if start == i {
                format!("{start}")
            } else {
                format!("{start}-{i}")
            });
        }
        i += 1;
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_compare_as_sets() {
        let a = Layout::new(vec![
            Placement::new("3g.40gb", 4),
            Placement::new("4g.40gb", 0),
        ]);
        let b = Layout::new(vec![
            Placement::new("4g.40gb", 0),
            Placement::new("3g.40gb", 4),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "4g.40gb@0 + 3g.40gb@4");
        assert_eq!(Layout::empty().to_string(), "(empty)");
        assert_eq!(a.counts().get("3g.40gb"), Some(&1));
        assert_eq!(
            a.minus(&Layout::new(vec![Placement::new("4g.40gb", 0)]))
                .len(),
            1
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(slice_ranges(0b1111_0011, 8), "0-1,4-7");
        assert_eq!(slice_ranges(0b0000_0100, 8), "2");
        assert_eq!(slice_ranges(0, 8), "none");
        assert_eq!(slice_ranges(0b1000_0000, 8), "7");
    }
}
