//! MIG geometry rules the fake enforces: where GPU instances may go, what they refuse, and the
//! compute instances inside them. Profile tables come from `gpulet_core::catalog`.

use std::fmt;

use gpulet_core::catalog::{MigGeometry, MigProfile};

/// Why a GPU or compute instance cannot be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The start is not one of the profile's placements (NVML: INVALID_ARGUMENT).
    NotAPlacement {
        profile: String,
        start: u32,
        placements: Vec<u32>,
    },
    /// Memory (or, for compute instances, compute) slices already taken.
    Overlap {
        profile: String,
        what: &'static str,
        range: (u32, u32),
        other: String,
        other_range: (u32, u32),
    },
    /// Not enough free compute slices.
    ComputeSlices {
        profile: String,
        need: u32,
        free: u32,
        total: u32,
    },
    /// The profile's own instance limit.
    InstanceLimit { profile: String, max: u32 },
    /// The GPU's instance limit.
    TotalLimit { max: u32 },
}

impl Refusal {
    /// Whether NVML reports this as a bad argument rather than a lack of resources.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, Refusal::NotAPlacement { .. })
    }
}

fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotAPlacement {
                profile,
                start,
                placements,
            } => {
                write!(
                    f,
                    "start {start} is not a placement of {profile} (placements: {})",
                    join(placements)
                )
            }
            Refusal::Overlap {
                profile,
                what,
                range,
                other,
                other_range,
            } => write!(
                f,
                "{profile} at {what} slices {}-{} overlaps {other} at {what} slices {}-{}",
                range.0, range.1, other_range.0, other_range.1
            ),
            Refusal::ComputeSlices {
                profile,
                need,
                free,
                total,
            } => write!(
                f,
                "{profile} needs {need} compute slices but only {free} of {total} are free"
            ),
            Refusal::InstanceLimit { profile, max } => {
                write!(
                    f,
                    "the GPU allows at most {max} instance{} of {profile}",
                    if *max == 1 { "" } else { "s" }
                )
            }
            Refusal::TotalLimit { max } => write!(f, "the GPU allows at most {max} GPU instances"),
        }
    }
}

/// Check that a GPU instance of `profile` at memory slice `start` can join `existing`.
pub fn check_gpu_instance(
    geometry: &MigGeometry,
    existing: &[(&MigProfile, u32)],
    profile: &MigProfile,
    start: u32,
) -> Result<(), Refusal> {
    if !profile.placements.contains(&start) {
        return Err(Refusal::NotAPlacement {
            profile: profile.name.into(),
            start,
            placements: profile.placements.to_vec(),
        });
    }
    let end = start + profile.memory_slices;
    for (other, other_start) in existing {
        let other_end = other_start + other.memory_slices;
        if start < other_end && *other_start < end {
            return Err(Refusal::Overlap {
                profile: profile.name.into(),
                what: "memory",
                range: (start, end - 1),
                other: other.name.into(),
                other_range: (*other_start, other_end - 1),
            });
        }
    }
    let same = existing
        .iter()
        .filter(|(p, _)| p.profile_id == profile.profile_id)
        .count() as u32;
    if same >= profile.max_instances {
        return Err(Refusal::InstanceLimit {
            profile: profile.name.into(),
            max: profile.max_instances,
        });
    }
    if existing.len() as u32 >= geometry.max_instances {
        return Err(Refusal::TotalLimit {
            max: geometry.max_instances,
        });
    }
    let used: u32 = existing.iter().map(|(p, _)| p.compute_slices).sum();
    let free = geometry.compute_slices.saturating_sub(used);
    if profile.compute_slices > free {
        return Err(Refusal::ComputeSlices {
            profile: profile.name.into(),
            need: profile.compute_slices,
            free,
            total: geometry.compute_slices,
        });
    }
    Ok(())
}

/// The lowest placement where a new instance of `profile` fits, if any.
pub fn first_free_placement(
    geometry: &MigGeometry,
    existing: &[(&MigProfile, u32)],
    profile: &MigProfile,
) -> Result<u32, Refusal> {
    let mut last = None;
    for &start in profile.placements {
        match check_gpu_instance(geometry, existing, profile, start) {
            Ok(()) => return Ok(start),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(Refusal::InstanceLimit {
        profile: profile.name.into(),
        max: 0,
    }))
}

/// How many more instances of `profile` fit together next to `existing`. Placements of one
/// profile are aligned blocks of one size, so taking them greedily in order is optimal.
pub fn remaining_capacity(
    geometry: &MigGeometry,
    existing: &[(&'static MigProfile, u32)],
    profile: &'static MigProfile,
) -> u32 {
    let mut layout: Vec<(&MigProfile, u32)> = existing.to_vec();
    let mut count = 0;
    for &start in profile.placements {
        if check_gpu_instance(geometry, &layout, profile, start).is_ok() {
            layout.push((profile, start));
            count += 1;
        }
    }
    count
}

/// The GPU instance id NVML gives an instance: the driver numbers the memory-slice blocks as a
/// binary tree (whole GPU 0; halves 1-2; quarters 3-6; eighths 7-14 on an 8-slice GPU).
pub fn gpu_instance_id(geometry: &MigGeometry, profile: &MigProfile, start: u32) -> u32 {
    let size = profile.memory_slices.max(1);
    (geometry.memory_slices / size).saturating_sub(1) + start / size
}

/// Compute slices of a `NVML_COMPUTE_INSTANCE_PROFILE_*` value the fake simulates.
pub fn ci_slices_for_profile(profile: u32) -> Option<u32> {
    match profile {
        0x0 => Some(1),
        0x1 => Some(2),
        0x2 => Some(3),
        0x3 => Some(4),
        0x4 => Some(7),
        0x5 => Some(8),
        0x6 => Some(6),
        _ => None,
    }
}

/// The `NVML_COMPUTE_INSTANCE_PROFILE_*` value (which NVML also uses as the profile id) of a
/// compute instance with `slices` compute slices.
pub fn ci_profile_for_slices(slices: u32) -> u32 {
    match slices {
        1 => 0x0,
        2 => 0x1,
        3 => 0x2,
        4 => 0x3,
        7 => 0x4,
        8 => 0x5,
        _ => 0x6,
    }
}

/// Compute-instance sizes a GPU instance with `slices` compute slices offers (as `nvidia-smi
/// mig -lcip` lists them: a 4g instance has 1c, 2c and 4c, no 3c).
pub fn ci_sizes(slices: u32) -> &'static [u32] {
    match slices {
        1 => &[1],
        2 => &[1, 2],
        3 => &[1, 2, 3],
        4 => &[1, 2, 4],
        7 => &[1, 2, 3, 4, 7],
        _ => &[],
    }
}

/// Start compute slices of a `size`-slice compute instance inside a `gi_slices` GPU instance.
pub fn ci_placements(gi_slices: u32, size: u32) -> Vec<u32> {
    if size == 0 || !ci_sizes(gi_slices).contains(&size) {
        return Vec::new();
    }
    (0..gi_slices)
        .step_by(size as usize)
        .filter(|s| s + size <= gi_slices)
        .collect()
}

/// The name NVML gives a compute-instance profile: "1c.3g.40gb", or the GPU instance's own
/// name when the compute instance spans it.
pub fn ci_name(gi: &MigProfile, size: u32) -> String {
    if size == gi.compute_slices {
        gi.name.to_string()
    } else {
        format!("{size}c.{}", gi.name)
    }
}

/// Check that a compute instance of `size` slices at `start` fits in a GPU instance of
/// `gi_slices` slices next to `existing` (start, size) compute instances.
pub fn check_compute_instance(
    gi: &MigProfile,
    existing: &[(u32, u32)],
    size: u32,
    start: u32,
) -> Result<(), Refusal> {
    let name = ci_name(gi, size);
    let placements = ci_placements(gi.compute_slices, size);
    if !placements.contains(&start) {
        return Err(Refusal::NotAPlacement {
            profile: name,
            start,
            placements,
        });
    }
    for &(other_start, other_size) in existing {
        if start < other_start + other_size && other_start < start + size {
            return Err(Refusal::Overlap {
                profile: name,
                what: "compute",
                range: (start, start + size - 1),
                other: ci_name(gi, other_size),
                other_range: (other_start, other_start + other_size - 1),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpulet_core::catalog;

    fn h100() -> MigGeometry {
        catalog::lookup("H100-80GB").unwrap().mig.unwrap()
    }

    #[test]
    fn placement_overlap_and_limits() {
        let g = h100();
        let p3 = g.profile_by_name("3g.40gb").unwrap();
        let p2 = g.profile_by_name("2g.20gb").unwrap();
        let p1 = g.profile_by_name("1g.10gb").unwrap();
        let me = g.profile_by_name("1g.10gb+me").unwrap();
        assert!(check_gpu_instance(&g, &[], p3, 2)
            .unwrap_err()
            .is_invalid_argument());
        let layout = vec![(p3, 4)];
        let e = check_gpu_instance(&g, &layout, p2, 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "2g.20gb at memory slices 4-5 overlaps 3g.40gb at memory slices 4-7"
        );
        assert!(!e.is_invalid_argument());
        assert!(check_gpu_instance(&g, &layout, p2, 2).is_ok());
        let e = check_gpu_instance(&g, &[(me, 0)], me, 1).unwrap_err();
        assert_eq!(
            e,
            Refusal::InstanceLimit {
                profile: "1g.10gb+me".into(),
                max: 1
            }
        );
        assert_eq!(first_free_placement(&g, &layout, p1).unwrap(), 0);
        assert_eq!(first_free_placement(&g, &layout, p3).unwrap(), 0);
        assert!(first_free_placement(&g, &[(p3, 0), (p3, 4)], p1).is_err());
    }

    #[test]
    fn compute_slices_run_out_before_memory() {
        // A synthetic GPU with fewer compute slices than its memory suggests.
        static PROFILES: [MigProfile; 1] = [MigProfile {
            name: "2g.x",
            profile_id: 14,
            nvml_profile: 1,
            compute_slices: 2,
            memory_slices: 2,
            memory_mib: 1,
            multiprocessors: 2,
            copy_engines: 1,
            decoders: 0,
            encoders: 0,
            jpegs: 0,
            ofas: 0,
            max_instances: 4,
            placements: &[0, 2, 4, 6],
        }];
        let g = MigGeometry {
            compute_slices: 5,
            memory_slices: 8,
            max_instances: 7,
            profiles: &PROFILES,
        };
        let p = &PROFILES[0];
        let layout = vec![(p, 0), (p, 2)];
        let e = check_gpu_instance(&g, &layout, p, 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "2g.x needs 2 compute slices but only 1 of 5 are free"
        );
        assert_eq!(remaining_capacity(&g, &[], p), 2);
    }

    #[test]
    fn remaining_capacity_counts_what_still_fits() {
        let g = h100();
        let p1 = g.profile_by_name("1g.10gb").unwrap();
        let p3 = g.profile_by_name("3g.40gb").unwrap();
        let p7 = g.profile_by_name("7g.80gb").unwrap();
        assert_eq!(remaining_capacity(&g, &[], p1), 7);
        assert_eq!(remaining_capacity(&g, &[], p3), 2);
        assert_eq!(remaining_capacity(&g, &[(p3, 4)], p1), 4);
        assert_eq!(remaining_capacity(&g, &[(p3, 4)], p7), 0);
    }

    #[test]
    fn gpu_instance_ids_follow_the_slice_tree() {
        let g = h100();
        let id = |name: &str, start| gpu_instance_id(&g, g.profile_by_name(name).unwrap(), start);
        assert_eq!(id("7g.80gb", 0), 0);
        assert_eq!(id("3g.40gb", 0), 1);
        assert_eq!(id("3g.40gb", 4), 2);
        assert_eq!(id("2g.20gb", 4), 5);
        assert_eq!(id("1g.20gb", 6), 6);
        assert_eq!(id("1g.10gb", 0), 7);
        assert_eq!(id("1g.10gb", 6), 13);
        let a30 = catalog::lookup("A30").unwrap().mig.unwrap();
        assert_eq!(
            gpu_instance_id(&a30, a30.profile_by_name("4g.24gb").unwrap(), 0),
            0
        );
        assert_eq!(
            gpu_instance_id(&a30, a30.profile_by_name("1g.6gb").unwrap(), 3),
            6
        );
    }

    #[test]
    fn compute_instances() {
        let g = h100();
        let p3 = g.profile_by_name("3g.40gb").unwrap();
        assert_eq!(ci_placements(7, 1), vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(ci_placements(7, 2), vec![0, 2, 4]);
        assert_eq!(ci_placements(7, 3), vec![0, 3]);
        assert_eq!(ci_placements(4, 3), Vec::<u32>::new());
        assert_eq!(ci_placements(3, 2), vec![0]);
        assert_eq!(ci_name(p3, 1), "1c.3g.40gb");
        assert_eq!(ci_name(p3, 3), "3g.40gb");
        assert!(check_compute_instance(p3, &[], 3, 0).is_ok());
        let e = check_compute_instance(p3, &[(0, 1)], 3, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "3g.40gb at compute slices 0-2 overlaps 1c.3g.40gb at compute slices 0-0"
        );
        assert!(check_compute_instance(p3, &[], 4, 0)
            .unwrap_err()
            .is_invalid_argument());
        for s in [1, 2, 3, 4, 7, 8, 6] {
            assert_eq!(ci_slices_for_profile(ci_profile_for_slices(s)), Some(s));
        }
        assert_eq!(ci_slices_for_profile(0x7), None);
    }
}
