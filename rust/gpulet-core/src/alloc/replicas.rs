//! Choosing shared replicas (`<UUID>::<n>`) or MIG devices for one request.
//!
//! As NVIDIA's device plugin does for replicas and MIG devices: a greedy pick, one device per
//! step, each from the physical GPU the policy ranks first:
//! - `distributed` (NVIDIA's default): the GPU with the fewest replicas allocated, counting
//!   those already allocated to others and those picked (or required) in this request;
//! - `packed`: the GPU with the most allocated;
//! - `spread`: the GPU picked least in this request, then the fewest allocated.
//!
//! Ties go to the GPU picked fewest times in this request, then (unlike upstream, whose heap
//! order is arbitrary) to the smaller GPU id; within a GPU the lowest replica number is taken.
//! So the answer is deterministic. `strict` takes at most one device per physical GPU in the
//! request, required ones included, and refuses a request that cannot be met that way.
//!
//! The physical GPU of `<UUID>::<n>` is `<UUID>`; of any other id, the id itself unless the
//! caller maps it (a MIG device to its parent GPU, say).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::ids::REPLICA_SEPARATOR;
use crate::error::{CoreError, Result};

/// How replicas are spread over physical GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaPolicy {
    Distributed,
    Packed,
    Spread,
}

impl ReplicaPolicy {
    pub const ALL: [ReplicaPolicy; 3] = [
        ReplicaPolicy::Distributed,
        ReplicaPolicy::Packed,
        ReplicaPolicy::Spread,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReplicaPolicy::Distributed => "distributed",
            ReplicaPolicy::Packed => "packed",
            ReplicaPolicy::Spread => "spread",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        ReplicaPolicy::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                CoreError::InvalidArgument(format!(
                    "unknown replica policy {name:?}; expected one of {}",
                    ReplicaPolicy::ALL.map(|p| p.name()).join(", ")
                ))
            })
    }
}

/// One replica request.
#[derive(Clone, Debug)]
pub struct ReplicaRequest<'a> {
    /// Ids the kubelet offers (`<UUID>::<n>` replicas, MIG device ids, ...).
    pub available: &'a [String],
    /// Ids that must be in the answer; each must be available.
    pub required: &'a [String],
    /// How many ids to return.
    pub size: usize,
    pub policy: ReplicaPolicy,
    /// At most one id per physical GPU.
    pub strict: bool,
    /// Replicas already allocated on each physical GPU, by GPU id (absent: none).
    pub allocated: &'a HashMap<String, usize>,
    /// Physical GPU of ids that are not `<UUID>::<n>` (absent: the id itself).
    pub parents: &'a HashMap<String, String>,
}

fn parent_of<'a>(id: &'a str, parents: &'a HashMap<String, String>) -> &'a str {
    if let Some(p) = parents.get(id) {
        return p;
    }
    id.split_once(REPLICA_SEPARATOR)
        .map_or(id, |(uuid, _)| uuid)
}

/// Sort key within a GPU: replica number first (numerically), then the id.
fn ordinal(id: &str) -> (u64, &str) {
    let n = id
        .rsplit_once(REPLICA_SEPARATOR)
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    (n, id)
}

/// Choose `size` ids: the required ones (in the order given) then the picks, in pick order.
pub fn select_replicas(req: &ReplicaRequest<'_>) -> Result<Vec<String>> {
    if req.size == 0 {
        return Err(CoreError::InvalidArgument(
            "size must be at least 1 device".to_string(),
        ));
    }
    let available: HashSet<&str> = req.available.iter().map(String::as_str).collect();
    let mut required: Vec<&str> = Vec::with_capacity(req.required.len());
    for id in req.required {
        if !available.contains(id.as_str()) {
            return Err(CoreError::InvalidArgument(format!(
                "required device {id:?} is not among the available devices; required devices \
                 must also be available"
            )));
        }
        if !required.contains(&id.as_str()) {
            required.push(id);
        }
    }
    if required.len() > req.size {
        return Err(CoreError::InvalidArgument(format!(
            "{} devices are required but only {} asked for; size must be at least the number \
             of required devices",
            required.len(),
            req.size
        )));
    }

    // Picked from each physical GPU in this request, seeded with the required ids.
    let mut picked: HashMap<&str, usize> = HashMap::new();
    for id in &required {
        let gpu = parent_of(id, req.parents);
        let count = picked.entry(gpu).or_default();
        *count += 1;
        if req.strict && *count > 1 {
            return Err(CoreError::Infeasible(format!(
                "the required devices hold two on GPU {gpu}; strict allocation takes at most \
                 one device per physical GPU"
            )));
        }
    }

    // Candidates by physical GPU, each GPU's ids in pick order (reversed, popped from the end).
    let mut by_gpu: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for id in req.available {
        if required.contains(&id.as_str()) || !seen.insert(id) {
            continue;
        }
        by_gpu
            .entry(parent_of(id, req.parents))
            .or_default()
            .push(id);
    }
    for ids in by_gpu.values_mut() {
        ids.sort_unstable_by(|a, b| ordinal(b).cmp(&ordinal(a)));
    }
    if req.strict {
        by_gpu.retain(|gpu, _| !picked.contains_key(gpu));
    }

    let needed = req.size - required.len();
    let offer: usize = if req.strict {
        by_gpu.len()
    } else {
        by_gpu.values().map(Vec::len).sum()
    };
    if offer < needed {
        let what = if req.strict {
            format!(
                "only {offer} further physical GPUs offer a device, and strict allocation takes \
                 one per GPU"
            )
        } else {
            format!("only {offer} further devices are available")
        };
        return Err(CoreError::Infeasible(format!(
            "{} devices asked for, {} required: {what}",
            req.size,
            required.len()
        )));
    }

    let mut out: Vec<String> = required.iter().map(|s| s.to_string()).collect();
    for _ in 0..needed {
        let allocated = |gpu: &str| {
            req.allocated.get(gpu).copied().unwrap_or(0) + picked.get(gpu).copied().unwrap_or(0)
        };
        let taken = |gpu: &str| picked.get(gpu).copied().unwrap_or(0);
        let candidates = by_gpu
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(g, _)| *g);
        let best = match req.policy {
            ReplicaPolicy::Distributed => candidates.min_by_key(|g| (allocated(g), taken(g), *g)),
            ReplicaPolicy::Packed => {
                candidates.min_by_key(|g| (Reverse(allocated(g)), taken(g), *g))
            }
            ReplicaPolicy::Spread => candidates.min_by_key(|g| (taken(g), allocated(g), *g)),
        };
        let Some(gpu) = best else { break };
        let ids = by_gpu.get_mut(gpu).expect("chosen from the map");
        let id = ids.pop().expect("chosen GPUs have ids left");
        if req.strict {
            ids.clear();
        }
        *picked.entry(gpu).or_default() += 1;
        out.push(id.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(gpus: &[&str], n: usize) -> Vec<String> {
        gpus.iter()
            .flat_map(|g| (0..n).map(move |i| format!("{g}::{i}")))
            .collect()
    }

    fn select(
        available: &[String],
        required: &[String],
        size: usize,
        policy: ReplicaPolicy,
        strict: bool,
        allocated: &[(&str, usize)],
    ) -> Result<Vec<String>> {
        let allocated = allocated.iter().map(|(g, n)| (g.to_string(), *n)).collect();
        select_replicas(&ReplicaRequest {
            available,
            required,
            size,
            policy,
            strict,
            allocated: &allocated,
            parents: &HashMap::new(),
        })
    }

    #[test]
    fn distributed_spreads_and_packed_fills() {
        let avail = ids(&["A", "B"], 4);
        let d = select(&avail, &[], 4, ReplicaPolicy::Distributed, false, &[]).unwrap();
        assert_eq!(d, ["A::0", "B::0", "A::1", "B::1"]);
        let p = select(&avail, &[], 3, ReplicaPolicy::Packed, false, &[("B", 1)]).unwrap();
        assert_eq!(p, ["B::0", "B::1", "B::2"]);
        // Distributed prefers the GPU with fewer replicas allocated to others.
        let d = select(
            &avail,
            &[],
            2,
            ReplicaPolicy::Distributed,
            false,
            &[("A", 3)],
        )
        .unwrap();
        assert_eq!(d, ["B::0", "B::1"]);
        // Spread takes new GPUs first even when one is busier.
        let s = select(&avail, &[], 2, ReplicaPolicy::Spread, false, &[("A", 3)]).unwrap();
        assert_eq!(s, ["B::0", "A::0"]);
    }

    #[test]
    fn strict_takes_one_per_gpu() {
        let avail = ids(&["A", "B", "C"], 2);
        let s = select(
            &avail,
            &["B::1".into()],
            3,
            ReplicaPolicy::Packed,
            true,
            &[],
        )
        .unwrap();
        assert_eq!(s, ["B::1", "A::0", "C::0"]);
        let e = select(&avail, &[], 4, ReplicaPolicy::Distributed, true, &[]).unwrap_err();
        assert!(matches!(e, CoreError::Infeasible(_)), "{e}");
        let e = select(
            &avail,
            &["A::0".into(), "A::1".into()],
            2,
            ReplicaPolicy::Distributed,
            true,
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("GPU A"), "{e}");
    }

    #[test]
    fn refusals() {
        let avail = ids(&["A"], 2);
        assert!(select(&avail, &[], 0, ReplicaPolicy::Distributed, false, &[]).is_err());
        assert!(select(&avail, &[], 3, ReplicaPolicy::Distributed, false, &[]).is_err());
        assert!(select(
            &avail,
            &["Z::0".into()],
            1,
            ReplicaPolicy::Distributed,
            false,
            &[]
        )
        .is_err());
        let two = ids(&["A"], 2);
        assert!(select(&avail, &two, 1, ReplicaPolicy::Distributed, false, &[]).is_err());
        assert!(ReplicaPolicy::from_name("random").is_err());
    }

    #[test]
    fn mig_devices_map_to_parents() {
        let avail: Vec<String> = ["MIG-a", "MIG-b", "MIG-c"].map(String::from).to_vec();
        let parents: HashMap<String, String> =
            [("MIG-a", "GPU-0"), ("MIG-b", "GPU-0"), ("MIG-c", "GPU-1")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .into_iter()
                .collect();
        let req = ReplicaRequest {
            available: &avail,
            required: &[],
            size: 2,
            policy: ReplicaPolicy::Distributed,
            strict: true,
            allocated: &HashMap::new(),
            parents: &parents,
        };
        assert_eq!(select_replicas(&req).unwrap(), ["MIG-a", "MIG-c"]);
    }
}
