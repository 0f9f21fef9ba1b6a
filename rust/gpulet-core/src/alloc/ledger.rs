//! The ledger: who holds which GPU, MIG slice and shared replica on this node.
//!
//! One ledger per agent process; the device plugin, the DRA driver and telemetry all go through
//! it, so a device is never handed out twice. It is the only record of who holds what: the
//! device plugin's pending allocations, their attribution to containers and the holders of
//! shared MIG replicas live here, not in the callers. It is thread-safe (a lock inside; every
//! method takes `&self`).
//!
//! # Rules
//! - The node's GPUs are registered first (UUID, replica count, optionally the model, whose MIG
//!   profiles say which slices exist, the replica count of MIG slices shared as replicas, and
//!   optionally the one path that may hold the GPU). A device on a GPU that is not registered,
//!   a replica beyond the count, or a MIG slice the model cannot place is refused
//!   ([`CoreError::InvalidArgument`]).
//! - An owner is a container or a DRA claim, tagged with its path. `allocate(owner, devices)`
//!   takes all the devices or none. Asking again for the same devices is a no-op; asking for
//!   others while holding some is refused (release first). `release(owner)` frees everything the
//!   owner holds and is a no-op for an owner that holds nothing. Every allocation gets the next
//!   number of one ledger-wide sequence.
//! - Against other owners ([`CoreError::Conflict`], naming the device and its holder): a whole
//!   GPU excludes any replica or MIG device of it; replicas of one GPU may be held by many owners
//!   but each replica by one; MIG slices of one GPU may be held by many owners when their
//!   placements (memory slices) do not overlap; replicas of a MIG slice may be held by many
//!   owners, each replica by one, and while any is held the slice is held for all of them (by
//!   the shared owner `gpulet-shared/<GPU UUID>/mig-<profile id>-<start>`, which no caller can
//!   allocate as or release); a MIG device without a placement excludes only itself among MIG
//!   devices; replicas and MIG devices are two ways of splitting a GPU and exclude each other.
//!   Whatever is held on a GPU is held through one path: a GPU with devices held by the device
//!   plugin refuses DRA owners and vice versa.
//! - Within one request: a whole GPU with any part of it, replicas with MIG devices of one GPU,
//!   a MIG slice with a replica of it, and overlapping MIG slices are refused as contradictory.
//!
//! # The device plugin's allocations
//! The kubelet's Allocate names no pod. [`Ledger::allocate_pending`] records each container's
//! devices for a new *pending* owner, `gpulet-pending/allocate-<n>/<resource>` with `n` its
//! sequence number, all containers of a call or none; a device-plugin owner holding one of the
//! devices is released first (the kubelet gave the device to another container, so that owner
//! is gone), while a DRA owner holding one is a conflict. Devices all held by one pending owner
//! already are a repeat (the kubelet calls again, or an init container's devices are reused)
//! and record nothing. [`Ledger::reconcile`] then applies the kubelet's PodResources List,
//! taken after [`Ledger::mark`]: listed containers get their devices (attribution), pending
//! owners up to the mark that the list does not name are released, and so are containers no
//! longer listed; pending owners after the mark are kept, with their devices.
//!
//! # Snapshot (schema `gpulet.ledger`, version 2)
//! The envelope is [`crate::snapshot`]'s; the body is:
//! ```json
//! {"seq": 7,
//!  "gpus": [{"uuid": "GPU-…", "replicas": 4, "model": "A100-SXM4-40GB", "serves": "dra",
//!            "mig_replicas": [{"profile_id": 9, "start": 4, "replicas": 2}]}],
//!  "holdings": [
//!    {"owner": {"kind": "container", "path": "device-plugin", "namespace": "ns", "pod": "p",
//!               "container": "c", "pod_uid": null},
//!     "devices": [{"kind": "replica", "uuid": "GPU-…", "index": 0},
//!                 {"kind": "mig-replica", "parent": "GPU-…", "profile_id": 9, "start": 4,
//!                  "index": 1},
//!                 {"kind": "mig-unplaced", "parent": "GPU-…", "id": "MIG-…"}],
//!     "seq": 5, "pending": false},
//!    {"owner": {"kind": "claim", "path": "dra", "uid": "…"},
//!     "devices": [{"kind": "gpu", "uuid": "GPU-…"},
//!                 {"kind": "mig", "parent": "GPU-…", "profile_id": 9, "start": 4}],
//!     "seq": 7, "pending": false}]}
//! ```
//! `seq` is the last sequence number given; each holding has its own (unique, at most `seq`)
//! and says whether its owner is pending (only device-plugin containers are). `model` (a catalog
//! key) and `serves` may be null; `mig_replicas` is left out when empty. Shared MIG slices are
//! not written: their replicas' holdings say it all. GPUs are sorted by UUID, holdings by owner,
//! devices within a holding by kind then fields, so one state has one encoding. Restoring
//! re-checks every rule; a body that breaks one is refused ([`CoreError::Snapshot`]) and the
//! ledger is left as it was. A version 1 body (no sequence numbers, no pending flags) is read
//! with its holdings numbered in the order listed and none pending; one that holds a MIG slice
//! for the shared owner of version 1 (`gpulet-shared/<MIG UUID>/replicas`, whose replicas'
//! holders were not recorded) is refused.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::ids::{Device, Owner, OwnerKind, Path};
use crate::catalog::{self, GpuModel, MigProfile};
use crate::error::{CoreError, Result};
use crate::snapshot;

/// The most replicas one GPU or MIG slice may be registered with.
pub const MAX_REPLICAS: u32 = 4096;

/// Namespace of the owners that hold the device plugin's allocations until the kubelet's
/// PodResources names their containers.
pub const PENDING_NAMESPACE: &str = "gpulet-pending";

/// Namespace of the owner that holds a MIG slice for all of its held replicas (reserved: no
/// caller allocates in it).
pub const SHARED_NAMESPACE: &str = "gpulet-shared";

/// A MIG slice shared as replicas `0 .. replicas-1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigReplicas {
    pub profile_id: u32,
    pub start: u32,
    pub replicas: u32,
}

/// How a GPU was registered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRegistration {
    pub uuid: String,
    /// Shared replicas `<uuid>::0 .. <uuid>::<replicas-1>`; 0 when the GPU is not shared.
    pub replicas: u32,
    /// The catalog key of the model, when known; it says which MIG slices exist.
    pub model: Option<String>,
    /// The one path allowed to hold the GPU's devices; `None`: either (one at a time).
    pub serves: Option<Path>,
    /// MIG slices shared as replicas, sorted (registering needs the model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig_replicas: Vec<MigReplicas>,
}

impl GpuRegistration {
    /// A GPU with `replicas` replicas (0: not shared), no model, either path.
    pub fn new(uuid: impl Into<String>, replicas: u32) -> Self {
        GpuRegistration {
            uuid: uuid.into(),
            replicas,
            ..GpuRegistration::default()
        }
    }
}

/// One GPU's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuUsage {
    pub uuid: String,
    pub replicas: u32,
    pub model: Option<String>,
    pub serves: Option<Path>,
    /// The path through which its devices are held, if any are.
    pub held_path: Option<Path>,
    /// The owner of the whole GPU.
    pub whole: Option<Owner>,
    pub replicas_held: u32,
    /// MIG slices held, shared ones (some replica held) included.
    pub mig_slices_held: u32,
    /// Replicas of its MIG slices, over every slice registered as shared.
    pub mig_replicas: u32,
    pub mig_replicas_held: u32,
}

/// Node-wide counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Utilisation {
    pub gpus: usize,
    /// GPUs held whole.
    pub gpus_held_whole: usize,
    /// GPUs not held whole with at least one replica or MIG device held.
    pub gpus_shared: usize,
    /// GPUs with nothing held.
    pub gpus_free: usize,
    pub replicas: usize,
    pub replicas_held: usize,
    pub mig_slices_held: usize,
    pub mig_replicas_held: usize,
    pub owners: usize,
    pub owners_device_plugin: usize,
    pub owners_dra: usize,
}

/// One owner's holding, with its place in the allocation sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub owner: Owner,
    /// Sorted.
    pub devices: Vec<Device>,
    /// Sequence number of the allocation (ledger-wide, increasing).
    pub seq: u64,
    /// Held by a pending owner (the device plugin's, until PodResources names the container).
    pub pending: bool,
}

/// What [`Ledger::allocate_pending`] did for one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingAllocation {
    /// The pending owner now holding the devices (the one already holding them: a repeat).
    pub owner: Arc<Owner>,
    pub seq: u64,
    /// Every device was held by this pending owner already: nothing was recorded.
    pub repeat: bool,
    /// Device-plugin owners released because the kubelet gave their devices to this one.
    pub released: Vec<(Owner, Vec<Device>)>,
}

/// What [`Ledger::reconcile`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Listed containers given their devices, by owner name.
    pub attributed: Vec<(Owner, Vec<Device>)>,
    /// Owners released as gone: containers no longer listed, and pending owners up to the mark
    /// none of whose devices the list names.
    pub released: Vec<(Owner, Vec<Device>)>,
    /// Device-plugin owners released because the list gives their devices to another container.
    pub reassigned: Vec<(Owner, Vec<Device>)>,
    /// Listed containers that could not be given their devices, and why (nothing changed for
    /// them).
    pub conflicts: Vec<(Owner, Vec<Device>, CoreError)>,
}

/// The pending owner with sequence number `seq`.
pub fn pending_owner(resource: &str, seq: u64) -> Owner {
    Owner::container(
        Path::DevicePlugin,
        PENDING_NAMESPACE,
        format!("allocate-{seq}"),
        resource,
        None,
    )
}

/// The owner that holds a MIG slice for its replicas.
pub fn shared_owner(path: Path, parent: &str, profile_id: u32, start: u32) -> Owner {
    Owner::container(
        path,
        SHARED_NAMESPACE,
        parent,
        format!("mig-{profile_id}-{start}"),
        None,
    )
}

/// Who holds the replicas of a shared MIG slice.
#[derive(Clone, Debug)]
struct SharedSlice {
    holders: Vec<Option<Arc<Owner>>>,
    held: u32,
}

impl SharedSlice {
    fn first_held(&self) -> Option<(usize, &Arc<Owner>)> {
        self.holders
            .iter()
            .enumerate()
            .find_map(|(i, h)| h.as_ref().map(|h| (i, h)))
    }
}

#[derive(Clone, Debug)]
struct HeldSlice {
    profile_id: u32,
    start: u32,
    /// One past the last memory slice.
    end: u32,
    /// The holder; for a shared slice, the shared owner.
    owner: Arc<Owner>,
    /// Set when the slice is held for its replicas.
    shared: Option<SharedSlice>,
}

impl HeldSlice {
    fn device(&self, uuid: &str) -> Device {
        Device::mig(uuid, self.profile_id, self.start)
    }

    /// Who holds it, in words: "is held by X" or "is shared as replicas (R is held by X)".
    fn held_by(&self, uuid: &str) -> String {
        match self.shared.as_ref().and_then(SharedSlice::first_held) {
            Some((i, h)) => format!(
                "is shared as replicas ({} is held by {h})",
                Device::mig_replica(uuid, self.profile_id, self.start, i as u32)
            ),
            None => format!("is held by {}", self.owner),
        }
    }

    /// A real holder (for a shared slice, a replica's).
    fn some_holder(&self) -> &Arc<Owner> {
        self.shared
            .as_ref()
            .and_then(SharedSlice::first_held)
            .map_or(&self.owner, |(_, h)| h)
    }
}

#[derive(Clone, Debug)]
struct GpuEntry {
    replicas: u32,
    model: Option<&'static GpuModel>,
    serves: Option<Path>,
    mig_replicas: Vec<MigReplicas>,
    whole: Option<Arc<Owner>>,
    replica_holders: Vec<Option<Arc<Owner>>>,
    replicas_held: u32,
    slices: Vec<HeldSlice>,
    /// Held MIG devices without a placement: (device-plugin ID, holder).
    unplaced: Vec<(String, Arc<Owner>)>,
}

impl GpuEntry {
    fn new(
        replicas: u32,
        model: Option<&'static GpuModel>,
        serves: Option<Path>,
        mig_replicas: Vec<MigReplicas>,
    ) -> Self {
        GpuEntry {
            replicas,
            model,
            serves,
            mig_replicas,
            whole: None,
            replica_holders: vec![None; replicas as usize],
            replicas_held: 0,
            slices: Vec::new(),
            unplaced: Vec::new(),
        }
    }

    fn is_free(&self) -> bool {
        self.whole.is_none()
            && self.replicas_held == 0
            && self.slices.is_empty()
            && self.unplaced.is_empty()
    }

    fn is_mig_split(&self) -> bool {
        !self.slices.is_empty() || !self.unplaced.is_empty()
    }

    /// Some holder of a device on this GPU (all share one path).
    fn some_holder(&self) -> Option<&Arc<Owner>> {
        self.whole
            .as_ref()
            .or_else(|| self.replica_holders.iter().flatten().next())
            .or_else(|| self.slices.first().map(HeldSlice::some_holder))
            .or_else(|| self.unplaced.first().map(|(_, o)| o))
    }

    fn first_replica_held(&self) -> Option<(usize, &Arc<Owner>)> {
        self.replica_holders
            .iter()
            .enumerate()
            .find_map(|(i, h)| h.as_ref().map(|h| (i, h)))
    }

    /// A held MIG device in words ("X is held by Y"), for a GPU split into MIG devices.
    fn some_mig_held(&self, uuid: &str) -> Option<String> {
        if let Some(s) = self.slices.first() {
            return Some(format!("{} {}", s.device(uuid), s.held_by(uuid)));
        }
        self.unplaced
            .first()
            .map(|(id, h)| format!("{} is held by {h}", Device::mig_unplaced(uuid, id.as_str())))
    }

    fn mig_replica_count(&self, profile_id: u32, start: u32) -> Option<u32> {
        self.mig_replicas
            .iter()
            .find(|m| m.profile_id == profile_id && m.start == start)
            .map(|m| m.replicas)
    }

    /// The held slice at exactly (profile id, start).
    fn slice_at(&self, profile_id: u32, start: u32) -> Option<usize> {
        self.slices
            .iter()
            .position(|s| s.profile_id == profile_id && s.start == start)
    }

    fn registration(&self, uuid: &str) -> GpuRegistration {
        GpuRegistration {
            uuid: uuid.to_string(),
            replicas: self.replicas,
            model: self.model.map(|m| m.key.to_string()),
            serves: self.serves,
            mig_replicas: self.mig_replicas.clone(),
        }
    }

    /// The profile of a MIG slice on this GPU, checked against the model's placements.
    fn mig_profile(&self, uuid: &str, profile_id: u32, start: u32) -> Result<&'static MigProfile> {
        mig_profile(self.model, uuid, profile_id, start)
    }
}

/// The profile of a MIG slice of a GPU of `model`, checked against the model's placements.
fn mig_profile(
    model: Option<&'static GpuModel>,
    uuid: &str,
    profile_id: u32,
    start: u32,
) -> Result<&'static MigProfile> {
    let device = Device::mig(uuid, profile_id, start);
    let model = model.ok_or_else(|| {
        CoreError::InvalidArgument(format!(
            "{device}: GPU {uuid} was registered without its model, so its MIG slices are \
             unknown; register it with its model"
        ))
    })?;
    let geometry = model.mig.as_ref().ok_or_else(|| {
        CoreError::InvalidArgument(format!(
            "{device}: GPU {uuid} is a {}, which does not support MIG",
            model.key
        ))
    })?;
    let profile = geometry.profile_by_id(profile_id).ok_or_else(|| {
        CoreError::InvalidArgument(format!(
            "{device}: the {} has no MIG profile id {profile_id}; its profile ids are {}",
            model.key,
            geometry
                .profiles
                .iter()
                .map(|p| format!("{} ({})", p.profile_id, p.name))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if !profile.placements.contains(&start) {
        return Err(CoreError::InvalidArgument(format!(
            "{device}: profile {} cannot start at memory slice {start}; it can start at {:?}",
            profile.name, profile.placements
        )));
    }
    Ok(profile)
}

/// A fast non-cryptographic hash for the ledger's maps (keys are UUIDs and owner names the
/// node's own components supply, not untrusted input): the multiply-rotate hash of rustc's
/// `FxHasher`.
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// One owner's devices and its place in the allocation sequence.
#[derive(Clone, Debug)]
struct Holding {
    /// Sorted, unique.
    devices: Vec<Device>,
    seq: u64,
    pending: bool,
}

/// How to undo one step of an operation that is all or nothing.
enum Undo {
    /// An owner was given its devices: release it.
    Applied(Arc<Owner>),
    /// An owner was released: give it back its holding.
    Released(Arc<Owner>, Holding),
}

/// The undo log of one all-or-nothing operation.
struct Txn {
    seq: u64,
    undo: Vec<Undo>,
}

#[derive(Clone, Debug, Default)]
struct Inner {
    gpus: FastMap<String, GpuEntry>,
    holdings: FastMap<Arc<Owner>, Holding>,
    /// The last sequence number given.
    seq: u64,
}

fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn sorted_devices(devices: &[Device]) -> Vec<Device> {
    let mut v = devices.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn list(devices: &[Device]) -> String {
    devices
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// (profile id, start) of a MIG slice or of a replica of one.
fn slice_key(d: &Device) -> Option<(u32, u32)> {
    match d {
        Device::Mig {
            profile_id, start, ..
        }
        | Device::MigReplica {
            profile_id, start, ..
        } => Some((*profile_id, *start)),
        _ => None,
    }
}

impl Inner {
    /// The registered GPUs by UUID.
    fn sorted_gpus(&self) -> Vec<(&str, &GpuEntry)> {
        let mut v: Vec<(&str, &GpuEntry)> =
            self.gpus.iter().map(|(u, g)| (u.as_str(), g)).collect();
        v.sort_unstable_by_key(|(u, _)| *u);
        v
    }

    fn gpu(&self, device: &Device) -> Result<&GpuEntry> {
        let uuid = device.parent();
        self.gpus.get(uuid).ok_or_else(|| {
            let known: Vec<&str> = self
                .sorted_gpus()
                .into_iter()
                .map(|(u, _)| u)
                .take(16)
                .collect();
            CoreError::InvalidArgument(format!(
                "unknown device {device}: GPU {uuid} is not registered (registered: {}); \
                 register the node's GPUs first",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    /// That the device exists on a registered GPU; for a MIG slice or a replica of one, its
    /// memory-slice span.
    fn check_exists(&self, device: &Device) -> Result<Option<(u32, u32)>> {
        let gpu = self.gpu(device)?;
        match device {
            Device::Gpu { .. } => Ok(None),
            Device::Replica { uuid, index } => {
                if gpu.replicas == 0 {
                    return Err(CoreError::InvalidArgument(format!(
                        "unknown device {device}: GPU {uuid} is not shared (registered with no \
                         replicas); allocate {uuid} whole or register it with replicas"
                    )));
                }
                if *index >= gpu.replicas {
                    return Err(CoreError::InvalidArgument(format!(
                        "unknown device {device}: GPU {uuid} has replicas {uuid}::0 to \
                         {uuid}::{}",
                        gpu.replicas - 1
                    )));
                }
                Ok(None)
            }
            Device::Mig {
                parent,
                profile_id,
                start,
            } => {
                let p = gpu.mig_profile(parent, *profile_id, *start)?;
                Ok(Some((*start, start + p.memory_slices)))
            }
            Device::MigReplica {
                parent,
                profile_id,
                start,
                index,
            } => {
                let p = gpu.mig_profile(parent, *profile_id, *start)?;
                let slice = Device::mig(parent.as_str(), *profile_id, *start);
                let Some(n) = gpu.mig_replica_count(*profile_id, *start) else {
                    return Err(CoreError::InvalidArgument(format!(
                        "unknown device {device}: {slice} is not shared (registered with no \
                         replicas); allocate the slice or register GPU {parent} with replicas \
                         of it"
                    )));
                };
                if *index >= n {
                    return Err(CoreError::InvalidArgument(format!(
                        "unknown device {device}: {slice} has replicas 0 to {}",
                        n - 1
                    )));
                }
                Ok(Some((*start, start + p.memory_slices)))
            }
            Device::MigUnplaced { parent, id } => {
                if id.is_empty() {
                    return Err(CoreError::InvalidArgument(format!(
                        "a MIG device of GPU {parent} without a placement needs its \
                         device-plugin ID; it was empty"
                    )));
                }
                Ok(None)
            }
        }
    }

    /// The owner holding exactly `device` (for a shared MIG slice, the shared owner); `None`
    /// for a free device or one that does not exist.
    fn exact_holder(&self, device: &Device) -> Option<&Arc<Owner>> {
        let gpu = self.gpus.get(device.parent())?;
        match device {
            Device::Gpu { .. } => gpu.whole.as_ref(),
            Device::Replica { index, .. } => gpu.replica_holders.get(*index as usize)?.as_ref(),
            Device::Mig {
                profile_id, start, ..
            } => gpu
                .slice_at(*profile_id, *start)
                .map(|i| &gpu.slices[i].owner),
            Device::MigReplica {
                profile_id,
                start,
                index,
                ..
            } => {
                let s = &gpu.slices[gpu.slice_at(*profile_id, *start)?];
                s.shared.as_ref()?.holders.get(*index as usize)?.as_ref()
            }
            Device::MigUnplaced { id, .. } => {
                gpu.unplaced.iter().find(|(i, _)| i == id).map(|(_, o)| o)
            }
        }
    }

    /// Every check of `allocate` for an owner that holds nothing; `devices` sorted, unique.
    fn check(&self, owner: &Owner, devices: &[Device]) -> Result<()> {
        owner.validate()?;
        if let OwnerKind::Container { namespace, .. } = &owner.kind {
            if namespace == SHARED_NAMESPACE {
                return Err(CoreError::InvalidArgument(format!(
                    "{owner}: the namespace {SHARED_NAMESPACE} is reserved for the ledger's \
                     holders of MIG slices shared as replicas"
                )));
            }
        }
        if devices.is_empty() {
            return Err(CoreError::InvalidArgument(format!(
                "allocate for {owner} names no device; give at least one"
            )));
        }
        // Existence, then the request's own consistency per physical GPU.
        let spans = devices
            .iter()
            .map(|d| self.check_exists(d))
            .collect::<Result<Vec<_>>>()?;
        for (i, a) in devices.iter().enumerate() {
            for (j, b) in devices.iter().enumerate().skip(i + 1) {
                if a.parent() != b.parent() {
                    continue;
                }
                match (a, b) {
                    (Device::Gpu { uuid }, part) | (part, Device::Gpu { uuid }) => {
                        return Err(CoreError::InvalidArgument(format!(
                            "the request names GPU {uuid} whole and also {part}; ask for the \
                             whole GPU or for parts of it"
                        )));
                    }
                    (r @ Device::Replica { .. }, m) | (m, r @ Device::Replica { .. })
                        if m.is_mig() =>
                    {
                        return Err(CoreError::InvalidArgument(format!(
                            "the request names replica {r} and {m}; a GPU is split into \
                             replicas or into MIG slices, not both"
                        )));
                    }
                    _ => {
                        let (Some(sa), Some(sb)) = (spans[i], spans[j]) else {
                            continue;
                        };
                        if slice_key(a) == slice_key(b) {
                            if let (s @ Device::Mig { .. }, r) | (r, s @ Device::Mig { .. }) =
                                (a, b)
                            {
                                return Err(CoreError::InvalidArgument(format!(
                                    "the request names {s} and its {r}; ask for the slice or \
                                     for replicas of it"
                                )));
                            }
                        } else if overlaps(sa, sb) {
                            return Err(CoreError::InvalidArgument(format!(
                                "the request names {a} and {b}, whose placements overlap; \
                                 MIG slices of one GPU must use disjoint memory slices"
                            )));
                        }
                    }
                }
            }
        }
        // Against the current holders (all of them other owners).
        for (d, span) in devices.iter().zip(&spans) {
            let gpu = self.gpu(d)?;
            let uuid = d.parent();
            if let Some(h) = &gpu.whole {
                return Err(CoreError::Conflict(if matches!(d, Device::Gpu { .. }) {
                    format!("{d} is held by {h}")
                } else {
                    format!("{d} is not free: GPU {uuid} is held whole by {h}")
                }));
            }
            if d.is_mig() {
                if let Some((i, h)) = gpu.first_replica_held() {
                    return Err(CoreError::Conflict(format!(
                        "{d} is not free: GPU {uuid} is shared as replicas ({uuid}::{i} is \
                         held by {h})"
                    )));
                }
            }
            match d {
                Device::Gpu { .. } => {
                    if let Some((i, h)) = gpu.first_replica_held() {
                        return Err(CoreError::Conflict(format!(
                            "{d} is shared: replica {uuid}::{i} is held by {h} ({} of {} \
                             replicas held)",
                            gpu.replicas_held, gpu.replicas
                        )));
                    }
                    if let Some(held) = gpu.some_mig_held(uuid) {
                        return Err(CoreError::Conflict(format!(
                            "{d} is split into MIG slices: {held}"
                        )));
                    }
                }
                Device::Replica { index, .. } => {
                    if let Some(h) = &gpu.replica_holders[*index as usize] {
                        return Err(CoreError::Conflict(format!("{d} is held by {h}")));
                    }
                    if let Some(held) = gpu.some_mig_held(uuid) {
                        return Err(CoreError::Conflict(format!(
                            "{d} is not free: GPU {uuid} is split into MIG slices ({held})"
                        )));
                    }
                }
                Device::Mig {
                    profile_id, start, ..
                } => {
                    let span = span.unwrap_or((*start, *start));
                    if let Some(s) = gpu.slices.iter().find(|s| overlaps(span, (s.start, s.end))) {
                        let held = s.device(uuid);
                        let by = s.held_by(uuid);
                        return Err(CoreError::Conflict(
                            if (s.profile_id, s.start) == (*profile_id, *start) {
                                format!("{d} {by}")
                            } else {
                                format!("{d} overlaps {held}, which {by}")
                            },
                        ));
                    }
                }
                Device::MigReplica {
                    profile_id,
                    start,
                    index,
                    ..
                } => {
                    let span = span.unwrap_or((*start, *start));
                    for s in gpu
                        .slices
                        .iter()
                        .filter(|s| overlaps(span, (s.start, s.end)))
                    {
                        let held = s.device(uuid);
                        if (s.profile_id, s.start) != (*profile_id, *start) {
                            return Err(CoreError::Conflict(format!(
                                "{d} overlaps {held}, which {}",
                                s.held_by(uuid)
                            )));
                        }
                        match &s.shared {
                            None => {
                                return Err(CoreError::Conflict(format!(
                                    "{d} is not free: {held} is held by {}",
                                    s.owner
                                )));
                            }
                            Some(shared) => {
                                if let Some(h) = &shared.holders[*index as usize] {
                                    return Err(CoreError::Conflict(format!("{d} is held by {h}")));
                                }
                            }
                        }
                    }
                }
                Device::MigUnplaced { id, .. } => {
                    if let Some((_, h)) = gpu.unplaced.iter().find(|(i, _)| i == id) {
                        return Err(CoreError::Conflict(format!("{d} is held by {h}")));
                    }
                }
            }
            if let Some(p) = gpu.serves {
                if p != owner.path {
                    return Err(CoreError::Conflict(format!(
                        "GPU {uuid} is served by the {p} path only; {owner} cannot hold {d}"
                    )));
                }
            }
            if let Some(h) = gpu.some_holder() {
                if h.path != owner.path {
                    return Err(CoreError::Conflict(format!(
                        "GPU {uuid} is in use through the {} path ({h} holds part of it); a GPU \
                         serves one path at a time, so {owner} cannot hold {d}",
                        h.path
                    )));
                }
            }
        }
        Ok(())
    }

    /// Record a checked holding.
    fn apply(&mut self, owner: Arc<Owner>, holding: Holding) {
        for d in &holding.devices {
            let gpu = self.gpus.get_mut(d.parent()).expect("checked: registered");
            match d {
                Device::Gpu { .. } => gpu.whole = Some(owner.clone()),
                Device::Replica { index, .. } => {
                    gpu.replica_holders[*index as usize] = Some(owner.clone());
                    gpu.replicas_held += 1;
                }
                Device::Mig {
                    parent,
                    profile_id,
                    start,
                } => {
                    let span = gpu
                        .mig_profile(parent, *profile_id, *start)
                        .expect("checked: valid placement")
                        .memory_slices;
                    gpu.slices.push(HeldSlice {
                        profile_id: *profile_id,
                        start: *start,
                        end: start + span,
                        owner: owner.clone(),
                        shared: None,
                    });
                }
                Device::MigReplica {
                    parent,
                    profile_id,
                    start,
                    index,
                } => {
                    let at = match gpu.slice_at(*profile_id, *start) {
                        Some(at) => at,
                        None => {
                            let span = gpu
                                .mig_profile(parent, *profile_id, *start)
                                .expect("checked: valid placement")
                                .memory_slices;
                            let n = gpu
                                .mig_replica_count(*profile_id, *start)
                                .expect("checked: registered as shared");
                            gpu.slices.push(HeldSlice {
                                profile_id: *profile_id,
                                start: *start,
                                end: start + span,
                                owner: Arc::new(shared_owner(
                                    owner.path,
                                    parent,
                                    *profile_id,
                                    *start,
                                )),
                                shared: Some(SharedSlice {
                                    holders: vec![None; n as usize],
                                    held: 0,
                                }),
                            });
                            gpu.slices.len() - 1
                        }
                    };
                    let shared = gpu.slices[at]
                        .shared
                        .as_mut()
                        .expect("checked: the slice is shared");
                    shared.holders[*index as usize] = Some(owner.clone());
                    shared.held += 1;
                }
                Device::MigUnplaced { id, .. } => gpu.unplaced.push((id.clone(), owner.clone())),
            }
        }
        self.holdings.insert(owner, holding);
    }

    /// Free what `owner` holds; its holding, if it held anything.
    fn release_entry(&mut self, owner: &Owner) -> Option<(Arc<Owner>, Holding)> {
        let (arc, holding) = self.holdings.remove_entry(owner)?;
        for d in &holding.devices {
            let Some(gpu) = self.gpus.get_mut(d.parent()) else {
                continue;
            };
            match d {
                Device::Gpu { .. } => gpu.whole = None,
                Device::Replica { index, .. } => {
                    if gpu.replica_holders[*index as usize].take().is_some() {
                        gpu.replicas_held -= 1;
                    }
                }
                Device::Mig {
                    profile_id, start, ..
                } => gpu.slices.retain(|s| {
                    !(s.profile_id == *profile_id
                        && s.start == *start
                        && Arc::ptr_eq(&s.owner, &arc))
                }),
                Device::MigReplica {
                    profile_id,
                    start,
                    index,
                    ..
                } => {
                    let Some(at) = gpu.slice_at(*profile_id, *start) else {
                        continue;
                    };
                    let Some(shared) = gpu.slices[at].shared.as_mut() else {
                        continue;
                    };
                    if let Some(slot) = shared.holders.get_mut(*index as usize) {
                        if slot.take().is_some() {
                            shared.held -= 1;
                        }
                    }
                    if shared.held == 0 {
                        gpu.slices.remove(at);
                    }
                }
                Device::MigUnplaced { id, .. } => gpu
                    .unplaced
                    .retain(|(i, o)| !(i == id && Arc::ptr_eq(o, &arc))),
            }
        }
        Some((arc, holding))
    }

    fn release(&mut self, owner: &Owner) -> Vec<Device> {
        self.release_entry(owner)
            .map(|(_, h)| h.devices)
            .unwrap_or_default()
    }

    fn allocate(
        &mut self,
        owner: &Owner,
        devices: Vec<Device>,
        shared: impl FnOnce() -> Arc<Owner>,
    ) -> Result<()> {
        if let Some(held) = self.holdings.get(owner) {
            if held.devices == devices {
                return Ok(());
            }
            return Err(CoreError::Conflict(format!(
                "{owner} already holds [{}]; release it before allocating [{}]",
                list(&held.devices),
                list(&devices)
            )));
        }
        self.check(owner, &devices)?;
        self.seq += 1;
        let seq = self.seq;
        self.apply(
            shared(),
            Holding {
                devices,
                seq,
                pending: false,
            },
        );
        Ok(())
    }

    /// Give `devices` (sorted, unique, existing) to `owner`, which holds nothing, with sequence
    /// number `seq`, first releasing the device-plugin owners holding any of them; returns
    /// those. Logged in `txn`; on an error the caller rolls back.
    fn assign(
        &mut self,
        owner: Arc<Owner>,
        devices: Vec<Device>,
        seq: u64,
        pending: bool,
        txn: &mut Txn,
    ) -> Result<Vec<(Owner, Vec<Device>)>> {
        let mut gone: Vec<Arc<Owner>> = Vec::new();
        for d in &devices {
            if let Some(h) = self.exact_holder(d) {
                if h.path == Path::DevicePlugin
                    && self.holdings.contains_key(&**h)
                    && !gone.iter().any(|g| Arc::ptr_eq(g, h))
                {
                    gone.push(h.clone());
                }
            }
        }
        let mut released = Vec::with_capacity(gone.len());
        for g in gone {
            if let Some((arc, h)) = self.release_entry(&g) {
                released.push(((*arc).clone(), h.devices.clone()));
                txn.undo.push(Undo::Released(arc, h));
            }
        }
        self.check(&owner, &devices)?;
        self.seq = self.seq.max(seq);
        self.apply(
            owner.clone(),
            Holding {
                devices,
                seq,
                pending,
            },
        );
        txn.undo.push(Undo::Applied(owner));
        Ok(released)
    }

    /// Undo what `txn` logged, last step first.
    fn rollback(&mut self, txn: Txn) {
        for step in txn.undo.into_iter().rev() {
            match step {
                Undo::Applied(owner) => {
                    self.release_entry(&owner);
                }
                Undo::Released(owner, holding) => self.apply(owner, holding),
            }
        }
        self.seq = txn.seq;
    }

    /// The pending owner holding every one of `devices` (a repeat), if there is one.
    fn repeat_of(&self, devices: &[Device]) -> Option<&Arc<Owner>> {
        let first = self.exact_holder(devices.first()?)?;
        if !self.holdings.get(&**first)?.pending {
            return None;
        }
        devices[1..]
            .iter()
            .all(|d| self.exact_holder(d).is_some_and(|h| Arc::ptr_eq(h, first)))
            .then_some(first)
    }

    fn pending_one(
        &mut self,
        resource: &str,
        mut devices: Vec<Device>,
        txn: &mut Txn,
    ) -> Result<PendingAllocation> {
        devices.sort_unstable();
        devices.dedup();
        if devices.is_empty() {
            return Err(CoreError::InvalidArgument(format!(
                "an allocation of {resource} names no device; give at least one"
            )));
        }
        for d in &devices {
            self.check_exists(d)?;
        }
        if let Some(h) = self.repeat_of(&devices) {
            return Ok(PendingAllocation {
                owner: h.clone(),
                seq: self.holdings[&**h].seq,
                repeat: true,
                released: Vec::new(),
            });
        }
        let seq = self.seq + 1;
        let owner = Arc::new(pending_owner(resource, seq));
        if self.holdings.contains_key(&*owner) {
            return Err(CoreError::Conflict(format!(
                "{owner} holds devices already (allocated outside the device plugin's \
                 sequence); release it"
            )));
        }
        let released = self.assign(owner.clone(), devices, seq, true, txn)?;
        Ok(PendingAllocation {
            owner,
            seq,
            repeat: false,
            released,
        })
    }

    fn allocate_pending(
        &mut self,
        resource: &str,
        requests: Vec<Vec<Device>>,
    ) -> Result<Vec<PendingAllocation>> {
        if resource.is_empty() {
            return Err(CoreError::InvalidArgument(
                "a pending allocation needs the resource name; it was empty".to_string(),
            ));
        }
        let mut txn = Txn {
            seq: self.seq,
            undo: Vec::new(),
        };
        let mut out = Vec::with_capacity(requests.len());
        for devices in requests {
            match self.pending_one(resource, devices, &mut txn) {
                Ok(p) => out.push(p),
                Err(e) => {
                    self.rollback(txn);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn reconcile(
        &mut self,
        listed: Vec<(Owner, Vec<Device>)>,
        mark: u64,
    ) -> Result<Reconciliation> {
        // The list, one entry per owner, devices sorted; nothing changes on a bad entry.
        let mut index: HashMap<Owner, usize> = HashMap::new();
        let mut desired: Vec<(Owner, Vec<Device>)> = Vec::new();
        for (owner, devices) in listed {
            owner.validate()?;
            if owner.path != Path::DevicePlugin {
                return Err(CoreError::InvalidArgument(format!(
                    "the kubelet's list names device-plugin containers only; {owner} is not one"
                )));
            }
            match index.get(&owner) {
                Some(&i) => desired[i].1.extend(devices),
                None => {
                    index.insert(owner.clone(), desired.len());
                    desired.push((owner, devices));
                }
            }
        }
        for (_, devices) in &mut desired {
            devices.sort_unstable();
            devices.dedup();
        }
        let named: HashSet<&Device> = desired.iter().flat_map(|(_, d)| d).collect();
        let mut out = Reconciliation::default();

        // Release the pending owners up to the mark and the containers whose devices changed
        // or that are gone; keep the devices of pending owners after the mark.
        let mut owners: Vec<(u64, Arc<Owner>)> = self
            .holdings
            .iter()
            .filter(|(o, _)| o.path == Path::DevicePlugin)
            .map(|(o, h)| (h.seq, o.clone()))
            .collect();
        owners.sort_unstable();
        let mut kept: HashSet<Device> = HashSet::new();
        for (_, owner) in owners {
            let h = &self.holdings[&*owner];
            let wanted = index.get(&*owner).map(|&i| &desired[i].1);
            if h.pending {
                if h.seq > mark {
                    kept.extend(h.devices.iter().cloned());
                    continue;
                }
                let named_any = h.devices.iter().any(|d| named.contains(d));
                let (arc, h) = self.release_entry(&owner).expect("held");
                if !named_any {
                    out.released.push(((*arc).clone(), h.devices));
                }
            } else if wanted != Some(&h.devices) {
                let (arc, h) = self.release_entry(&owner).expect("held");
                if wanted.is_none() {
                    out.released.push(((*arc).clone(), h.devices));
                }
            }
        }

        // Attribute, by owner name.
        let mut order: Vec<usize> = (0..desired.len()).collect();
        order.sort_by_cached_key(|&i| desired[i].0.to_string());
        for i in order {
            let owner = &desired[i].0;
            let devices: Vec<Device> = desired[i]
                .1
                .iter()
                .filter(|d| !kept.contains(*d))
                .cloned()
                .collect();
            if devices.is_empty() || self.holdings.contains_key(owner) {
                continue;
            }
            let mut txn = Txn {
                seq: self.seq,
                undo: Vec::new(),
            };
            let result = devices
                .iter()
                .try_for_each(|d| self.check_exists(d).map(drop))
                .and_then(|()| {
                    let seq = self.seq + 1;
                    self.assign(
                        Arc::new(owner.clone()),
                        devices.clone(),
                        seq,
                        false,
                        &mut txn,
                    )
                });
            match result {
                Ok(reassigned) => {
                    out.attributed.push((owner.clone(), devices));
                    out.reassigned.extend(reassigned);
                }
                Err(e) => {
                    self.rollback(txn);
                    out.conflicts.push((owner.clone(), devices, e));
                }
            }
        }
        Ok(out)
    }

    fn register(&mut self, reg: &GpuRegistration) -> Result<()> {
        let uuid = reg.uuid.as_str();
        if uuid.is_empty() || uuid.contains(super::ids::REPLICA_SEPARATOR) {
            return Err(CoreError::InvalidArgument(format!(
                "GPU UUID {uuid:?} must be non-empty and must not contain \"::\""
            )));
        }
        if reg.replicas > MAX_REPLICAS {
            return Err(CoreError::InvalidArgument(format!(
                "GPU {uuid}: {} replicas is more than the {MAX_REPLICAS} a GPU may be shared into",
                reg.replicas
            )));
        }
        let model = match &reg.model {
            None => None,
            Some(name) => Some(
                catalog::lookup(name).ok_or_else(|| CoreError::UnknownModel {
                    name: name.clone(),
                    known: catalog::model_keys().join(", "),
                })?,
            ),
        };
        let mut mig_replicas = reg.mig_replicas.clone();
        mig_replicas.sort_unstable();
        for (i, m) in mig_replicas.iter().enumerate() {
            let slice = Device::mig(uuid, m.profile_id, m.start);
            mig_profile(model, uuid, m.profile_id, m.start).map_err(|e| match e {
                CoreError::InvalidArgument(why) => CoreError::InvalidArgument(format!(
                    "GPU {uuid}: mig_replicas names a slice that cannot exist: {why}"
                )),
                other => other,
            })?;
            if m.replicas == 0 || m.replicas > MAX_REPLICAS {
                return Err(CoreError::InvalidArgument(format!(
                    "GPU {uuid}: mig_replicas gives {slice} {} replicas; a shared slice has 1 \
                     to {MAX_REPLICAS}",
                    m.replicas
                )));
            }
            if i > 0
                && (mig_replicas[i - 1].profile_id, mig_replicas[i - 1].start)
                    == (m.profile_id, m.start)
            {
                return Err(CoreError::InvalidArgument(format!(
                    "GPU {uuid}: mig_replicas names {slice} twice"
                )));
            }
        }
        if let Some(existing) = self.gpus.get(uuid) {
            let same = existing.replicas == reg.replicas
                && existing.model.map(|m| m.key) == model.map(|m| m.key)
                && existing.serves == reg.serves
                && existing.mig_replicas == mig_replicas;
            if same {
                return Ok(());
            }
            if !existing.is_free() {
                return Err(CoreError::Conflict(format!(
                    "GPU {uuid} has devices held (by {}); release them before registering it \
                     with other settings",
                    existing
                        .some_holder()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                )));
            }
        }
        self.gpus.insert(
            uuid.to_string(),
            GpuEntry::new(reg.replicas, model, reg.serves, mig_replicas),
        );
        Ok(())
    }
}

/// Owner as the snapshot writes it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum OwnerRecord {
    Container {
        path: Path,
        namespace: String,
        pod: String,
        container: String,
        #[serde(default)]
        pod_uid: Option<String>,
    },
    Claim {
        path: Path,
        uid: String,
    },
}

impl From<&Owner> for OwnerRecord {
    fn from(o: &Owner) -> Self {
        match &o.kind {
            OwnerKind::Container {
                namespace,
                pod,
                container,
                pod_uid,
            } => OwnerRecord::Container {
                path: o.path,
                namespace: namespace.clone(),
                pod: pod.clone(),
                container: container.clone(),
                pod_uid: pod_uid.clone(),
            },
            OwnerKind::Claim { uid } => OwnerRecord::Claim {
                path: o.path,
                uid: uid.clone(),
            },
        }
    }
}

impl From<OwnerRecord> for Owner {
    fn from(r: OwnerRecord) -> Self {
        match r {
            OwnerRecord::Container {
                path,
                namespace,
                pod,
                container,
                pod_uid,
            } => Owner::container(path, namespace, pod, container, pod_uid),
            OwnerRecord::Claim { path, uid } => Owner::claim(path, uid),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldingRecord {
    owner: OwnerRecord,
    devices: Vec<Device>,
    seq: u64,
    pending: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    seq: u64,
    gpus: Vec<GpuRegistration>,
    holdings: Vec<HoldingRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldingRecordV1 {
    owner: OwnerRecord,
    devices: Vec<Device>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyV1 {
    gpus: Vec<GpuRegistration>,
    holdings: Vec<HoldingRecordV1>,
}

/// Who holds what on this node. See the module documentation.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: RwLock<Inner>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register (or re-register with the same settings) a GPU. Changing the settings of a GPU
    /// with devices held is refused.
    pub fn register_gpu(&self, reg: &GpuRegistration) -> Result<()> {
        self.inner.write().register(reg)
    }

    /// Forget a GPU; refused while any of its devices is held.
    pub fn unregister_gpu(&self, uuid: &str) -> Result<()> {
        let mut inner = self.inner.write();
        let Some(gpu) = inner.gpus.get(uuid) else {
            return Err(CoreError::InvalidArgument(format!(
                "GPU {uuid} is not registered"
            )));
        };
        if let Some(h) = gpu.some_holder() {
            return Err(CoreError::Conflict(format!(
                "GPU {uuid} has devices held (by {h}); release them before unregistering it"
            )));
        }
        inner.gpus.remove(uuid);
        Ok(())
    }

    /// The registered GPUs, by UUID.
    pub fn gpus(&self) -> Vec<GpuRegistration> {
        self.inner
            .read()
            .sorted_gpus()
            .into_iter()
            .map(|(u, g)| g.registration(u))
            .collect()
    }

    /// Give `devices` to `owner`, all or none. The same devices again is a no-op.
    pub fn allocate(&self, owner: &Owner, devices: &[Device]) -> Result<()> {
        self.allocate_owned(owner, devices.to_vec())
    }

    /// [`Ledger::allocate`] taking the device list by value (no copy).
    pub fn allocate_owned(&self, owner: &Owner, mut devices: Vec<Device>) -> Result<()> {
        devices.sort_unstable();
        devices.dedup();
        self.inner
            .write()
            .allocate(owner, devices, || Arc::new(owner.clone()))
    }

    /// [`Ledger::allocate_owned`] for an owner already shared (kept without a copy).
    pub fn allocate_shared(&self, owner: &Arc<Owner>, mut devices: Vec<Device>) -> Result<()> {
        devices.sort_unstable();
        devices.dedup();
        self.inner
            .write()
            .allocate(owner, devices, || owner.clone())
    }

    /// Record the kubelet's Allocate of `resource`: one request of devices per container, all
    /// or none (see the module documentation). Each request is held by a new pending owner,
    /// unless its devices are all held by one pending owner already (a repeat, recorded
    /// nothing); device-plugin owners of its devices are released first, DRA owners of them
    /// are a conflict.
    pub fn allocate_pending(
        &self,
        resource: &str,
        requests: Vec<Vec<Device>>,
    ) -> Result<Vec<PendingAllocation>> {
        self.inner.write().allocate_pending(resource, requests)
    }

    /// The last sequence number given: pass it to [`Ledger::reconcile`] with a PodResources
    /// List asked for after this call.
    pub fn mark(&self) -> u64 {
        self.inner.read().seq
    }

    /// Apply the kubelet's PodResources List (the device-plugin containers and their devices),
    /// asked for after `mark` (see the module documentation). A listed owner that is not a
    /// device-plugin owner, or whose name is invalid, is refused and nothing changes; a listed
    /// container that cannot be given its devices is reported in `conflicts`.
    pub fn reconcile(
        &self,
        listed: Vec<(Owner, Vec<Device>)>,
        mark: u64,
    ) -> Result<Reconciliation> {
        self.inner.write().reconcile(listed, mark)
    }

    /// Free what `owner` holds; returns it (empty when the owner held nothing).
    pub fn release(&self, owner: &Owner) -> Vec<Device> {
        self.inner.write().release(owner)
    }

    /// Release every owner on `path`; returns them with what they held, by owner.
    pub fn release_path(&self, path: Path) -> Vec<(Owner, Vec<Device>)> {
        let mut inner = self.inner.write();
        let owners: Vec<Arc<Owner>> = inner
            .holdings
            .keys()
            .filter(|o| o.path == path)
            .cloned()
            .collect();
        let mut out: Vec<(Owner, Vec<Device>)> = owners
            .into_iter()
            .filter_map(|o| inner.release_entry(&o))
            .map(|(o, h)| ((*o).clone(), h.devices))
            .collect();
        out.sort_unstable();
        out
    }

    /// The owner holding exactly `device` (for a MIG slice shared as replicas, the shared
    /// owner).
    pub fn holder_of(&self, device: &Device) -> Result<Option<Owner>> {
        let inner = self.inner.read();
        inner.check_exists(device)?;
        Ok(inner.exact_holder(device).map(|h| (**h).clone()))
    }

    /// What `owner` holds, sorted (empty when nothing).
    pub fn devices_of(&self, owner: &Owner) -> Vec<Device> {
        self.inner
            .read()
            .holdings
            .get(owner)
            .map(|h| h.devices.clone())
            .unwrap_or_default()
    }

    /// Every owner and its devices, sorted by owner.
    pub fn holdings(&self) -> Vec<(Owner, Vec<Device>)> {
        let inner = self.inner.read();
        let mut out: Vec<(Owner, Vec<Device>)> = inner
            .holdings
            .iter()
            .map(|(o, h)| ((**o).clone(), h.devices.clone()))
            .collect();
        out.sort_unstable();
        out
    }

    /// Every holding (of the owners on `path`, or all), in the order of the allocation
    /// sequence.
    pub fn allocations(&self, path: Option<Path>) -> Vec<Allocation> {
        let inner = self.inner.read();
        let mut out: Vec<Allocation> = inner
            .holdings
            .iter()
            .filter(|(o, _)| path.is_none_or(|p| o.path == p))
            .map(|(o, h)| Allocation {
                owner: (**o).clone(),
                devices: h.devices.clone(),
                seq: h.seq,
                pending: h.pending,
            })
            .collect();
        out.sort_unstable_by(|a, b| (a.seq, &a.owner).cmp(&(b.seq, &b.owner)));
        out
    }

    /// How many of `devices` are held (by owners on `path`, or by any), per GPU UUID; GPUs with
    /// none held are left out, and so are devices that do not exist.
    pub fn held_per_gpu(&self, devices: &[Device], path: Option<Path>) -> Vec<(String, u32)> {
        let inner = self.inner.read();
        let mut counts: FastMap<&str, u32> = FastMap::default();
        for d in devices {
            if let Some(h) = inner.exact_holder(d) {
                if path.is_none_or(|p| h.path == p) {
                    *counts.entry(d.parent()).or_default() += 1;
                }
            }
        }
        let mut out: Vec<(String, u32)> = counts
            .into_iter()
            .map(|(g, n)| (g.to_string(), n))
            .collect();
        out.sort_unstable();
        out
    }

    /// Devices an owner on `path` could be given now (any path when `None`): whole GPUs with
    /// nothing held; free replicas of GPUs not held whole or split into MIG devices; MIG slices
    /// (every profile and placement of the model) overlapping nothing held, and free replicas of
    /// the slices registered as shared whose slice is free or shared, on GPUs not held whole or
    /// shared as replicas. GPUs by UUID, then whole, replicas, slices, slice replicas. (MIG
    /// devices without a placement are not listed: the ledger does not know them before they
    /// are held.)
    pub fn free_devices(&self, path: Option<Path>) -> Vec<Device> {
        let inner = self.inner.read();
        let mut out = Vec::new();
        for (uuid, gpu) in inner.sorted_gpus() {
            if let Some(p) = path {
                let held_path = gpu.some_holder().map(|h| h.path);
                if gpu.serves.is_some_and(|s| s != p) || held_path.is_some_and(|h| h != p) {
                    continue;
                }
            }
            if gpu.whole.is_some() {
                continue;
            }
            if gpu.is_free() {
                out.push(Device::gpu(uuid));
            }
            if !gpu.is_mig_split() {
                for (i, h) in gpu.replica_holders.iter().enumerate() {
                    if h.is_none() {
                        out.push(Device::replica(uuid, i as u32));
                    }
                }
            }
            if gpu.replicas_held > 0 {
                continue;
            }
            if let Some(geometry) = gpu.model.and_then(|m| m.mig.as_ref()) {
                for p in geometry.profiles {
                    for &start in p.placements {
                        let span = (start, start + p.memory_slices);
                        if !gpu.slices.iter().any(|s| overlaps(span, (s.start, s.end))) {
                            out.push(Device::mig(uuid, p.profile_id, start));
                        }
                    }
                }
            }
            for m in &gpu.mig_replicas {
                match gpu.slice_at(m.profile_id, m.start) {
                    Some(at) => {
                        if let Some(shared) = &gpu.slices[at].shared {
                            for (i, h) in shared.holders.iter().enumerate() {
                                if h.is_none() {
                                    out.push(Device::mig_replica(
                                        uuid,
                                        m.profile_id,
                                        m.start,
                                        i as u32,
                                    ));
                                }
                            }
                        }
                    }
                    None => {
                        let Ok(p) = gpu.mig_profile(uuid, m.profile_id, m.start) else {
                            continue;
                        };
                        let span = (m.start, m.start + p.memory_slices);
                        if !gpu.slices.iter().any(|s| overlaps(span, (s.start, s.end))) {
                            out.extend(
                                (0..m.replicas)
                                    .map(|i| Device::mig_replica(uuid, m.profile_id, m.start, i)),
                            );
                        }
                    }
                }
            }
        }
        out
    }

    /// Per-GPU state, by UUID.
    pub fn usage(&self) -> Vec<GpuUsage> {
        let inner = self.inner.read();
        inner
            .sorted_gpus()
            .into_iter()
            .map(|(uuid, g)| GpuUsage {
                uuid: uuid.to_string(),
                replicas: g.replicas,
                model: g.model.map(|m| m.key.to_string()),
                serves: g.serves,
                held_path: g.some_holder().map(|h| h.path),
                whole: g.whole.as_ref().map(|h| (**h).clone()),
                replicas_held: g.replicas_held,
                mig_slices_held: g.slices.len() as u32,
                mig_replicas: g.mig_replicas.iter().map(|m| m.replicas).sum(),
                mig_replicas_held: g
                    .slices
                    .iter()
                    .filter_map(|s| s.shared.as_ref())
                    .map(|s| s.held)
                    .sum(),
            })
            .collect()
    }

    /// Node-wide counts.
    pub fn utilisation(&self) -> Utilisation {
        let inner = self.inner.read();
        let mut u = Utilisation {
            gpus: inner.gpus.len(),
            ..Utilisation::default()
        };
        for g in inner.gpus.values() {
            if g.whole.is_some() {
                u.gpus_held_whole += 1;
            } else if g.is_free() {
                u.gpus_free += 1;
            } else {
                u.gpus_shared += 1;
            }
            u.replicas += g.replicas as usize;
            u.replicas_held += g.replicas_held as usize;
            u.mig_slices_held += g.slices.len();
            u.mig_replicas_held += g
                .slices
                .iter()
                .filter_map(|s| s.shared.as_ref())
                .map(|s| s.held as usize)
                .sum::<usize>();
        }
        u.owners = inner.holdings.len();
        u.owners_device_plugin = inner
            .holdings
            .keys()
            .filter(|o| o.path == Path::DevicePlugin)
            .count();
        u.owners_dra = u.owners - u.owners_device_plugin;
        u
    }

    /// The state as a versioned snapshot (see the module documentation).
    pub fn snapshot(&self) -> Vec<u8> {
        let inner = self.inner.read();
        let gpus = inner
            .sorted_gpus()
            .into_iter()
            .map(|(u, g)| g.registration(u))
            .collect();
        let mut held: Vec<(&Arc<Owner>, &Holding)> = inner.holdings.iter().collect();
        held.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let holdings = held
            .into_iter()
            .map(|(o, h)| HoldingRecord {
                owner: OwnerRecord::from(&**o),
                devices: h.devices.clone(),
                seq: h.seq,
                pending: h.pending,
            })
            .collect();
        let seq = inner.seq;
        drop(inner);
        let body = serde_json::to_value(Body {
            seq,
            gpus,
            holdings,
        })
        .expect("the snapshot body always serialises");
        snapshot::encode(body)
    }

    /// Replace the state with a snapshot's. On any error the ledger is unchanged.
    pub fn restore(&self, bytes: &[u8]) -> Result<()> {
        let fresh = Self::decode(bytes)?;
        *self.inner.write() = fresh;
        Ok(())
    }

    /// A ledger holding a snapshot's state.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self> {
        Ok(Ledger {
            inner: RwLock::new(Self::decode(bytes)?),
        })
    }

    fn decode(bytes: &[u8]) -> Result<Inner> {
        let env = snapshot::decode(bytes)?;
        let version = env.version;
        let malformed = |e: serde_json::Error| {
            CoreError::Snapshot(format!(
                "the ledger snapshot body (version {version}) is malformed: {e}"
            ))
        };
        let body = if version == 1 {
            let v1: BodyV1 = serde_json::from_value(env.body).map_err(malformed)?;
            Self::upgrade_v1(v1)?
        } else {
            serde_json::from_value::<Body>(env.body).map_err(malformed)?
        };
        let bad =
            |e: CoreError| CoreError::Snapshot(format!("the ledger snapshot is inconsistent: {e}"));
        let mut inner = Inner {
            seq: body.seq,
            ..Inner::default()
        };
        for reg in &body.gpus {
            if inner.gpus.contains_key(&reg.uuid) {
                return Err(CoreError::Snapshot(format!(
                    "the ledger snapshot lists GPU {} twice",
                    reg.uuid
                )));
            }
            inner.register(reg).map_err(bad)?;
        }
        let mut seqs = HashSet::new();
        for h in body.holdings {
            let owner = Owner::from(h.owner);
            if inner.holdings.contains_key(&owner) {
                return Err(CoreError::Snapshot(format!(
                    "the ledger snapshot lists {owner} twice"
                )));
            }
            let devices = sorted_devices(&h.devices);
            if devices.len() != h.devices.len() {
                return Err(CoreError::Snapshot(format!(
                    "the ledger snapshot lists a device twice for {owner}"
                )));
            }
            if h.seq == 0 || h.seq > body.seq || !seqs.insert(h.seq) {
                return Err(CoreError::Snapshot(format!(
                    "the ledger snapshot gives {owner} sequence number {}; each holding has its \
                     own, from 1 to the snapshot's seq ({})",
                    h.seq, body.seq
                )));
            }
            let container = matches!(owner.kind, OwnerKind::Container { .. });
            if h.pending && !(container && owner.path == Path::DevicePlugin) {
                return Err(CoreError::Snapshot(format!(
                    "the ledger snapshot marks {owner} pending; only device-plugin containers \
                     are"
                )));
            }
            inner.check(&owner, &devices).map_err(bad)?;
            inner.apply(
                Arc::new(owner),
                Holding {
                    devices,
                    seq: h.seq,
                    pending: h.pending,
                },
            );
        }
        Ok(inner)
    }

    /// A version 1 body as a version 2 one: holdings numbered in the order listed, none
    /// pending.
    fn upgrade_v1(v1: BodyV1) -> Result<Body> {
        let mut holdings = Vec::with_capacity(v1.holdings.len());
        for (i, h) in v1.holdings.into_iter().enumerate() {
            if let OwnerRecord::Container { namespace, pod, .. } = &h.owner {
                if namespace == SHARED_NAMESPACE {
                    return Err(CoreError::Snapshot(format!(
                        "the version 1 ledger snapshot holds MIG slices for shared replicas \
                         ({namespace}/{pod}), and version 1 did not record who holds each \
                         replica; it cannot be restored (reconcile with the kubelet instead)"
                    )));
                }
            }
            holdings.push(HoldingRecord {
                owner: h.owner,
                devices: h.devices,
                seq: i as u64 + 1,
                pending: false,
            });
        }
        Ok(Body {
            seq: holdings.len() as u64,
            gpus: v1.gpus,
            holdings,
        })
    }
}
