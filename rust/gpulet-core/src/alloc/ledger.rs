//! The ledger: who holds which GPU, MIG slice and shared replica on this node.
//!
//! One ledger per agent process; the device plugin, the DRA driver and telemetry all go through
//! it, so a device is never handed out twice. It is thread-safe (a lock inside; every method
//! takes `&self`).
//!
//! # Rules
//! - The node's GPUs are registered first (UUID, replica count, optionally the model, whose MIG
//!   profiles say which slices exist, and optionally the one path that may hold the GPU). A
//!   device on a GPU that is not registered, a replica beyond the count, or a MIG slice the
//!   model cannot place is refused ([`CoreError::InvalidArgument`]).
//! - An owner is a container or a DRA claim, tagged with its path. `allocate(owner, devices)`
//!   takes all the devices or none. Asking again for the same devices is a no-op; asking for
//!   others while holding some is refused (release first). `release(owner)` frees everything the
//!   owner holds and is a no-op for an owner that holds nothing.
//! - Against other owners ([`CoreError::Conflict`], naming the device and its holder): a whole
//!   GPU excludes any replica or MIG slice of it; replicas of one GPU may be held by many owners
//!   but each replica by one; MIG slices of one GPU may be held by many owners when their
//!   placements (memory slices) do not overlap; replicas and MIG slices are two ways of
//!   splitting a GPU and exclude each other. Whatever is held on a GPU is held through one path:
//!   a GPU with devices held by the device plugin refuses DRA owners and vice versa.
//! - Within one request: a whole GPU with any part of it, replicas with MIG slices of one GPU,
//!   and overlapping MIG slices are refused as contradictory.
//!
//! # Snapshot (schema `gpulet.ledger`, version 1)
//! The envelope is [`crate::snapshot`]'s; the body is:
//! ```json
//! {"gpus": [{"uuid": "GPU-…", "replicas": 4, "model": "A100-SXM4-40GB", "serves": "dra"}],
//!  "holdings": [
//!    {"owner": {"kind": "container", "path": "device-plugin", "namespace": "ns", "pod": "p",
//!               "container": "c", "pod_uid": null},
//!     "devices": [{"kind": "replica", "uuid": "GPU-…", "index": 0}]},
//!    {"owner": {"kind": "claim", "path": "dra", "uid": "…"},
//!     "devices": [{"kind": "gpu", "uuid": "GPU-…"},
//!                 {"kind": "mig", "parent": "GPU-…", "profile_id": 9, "start": 4}]}]}
//! ```
//! `model` (a catalog key) and `serves` may be null. GPUs are sorted by UUID, holdings by owner,
//! devices within a holding by kind then fields, so one state has one encoding. Restoring
//! re-checks every rule; a body that breaks one is refused ([`CoreError::Snapshot`]) and the
//! ledger is left as it was.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::ids::{Device, Owner, OwnerKind, Path};
use crate::catalog::{self, GpuModel, MigProfile};
use crate::error::{CoreError, Result};
use crate::snapshot;

/// The most replicas one GPU may be registered with.
pub const MAX_REPLICAS: u32 = 4096;

/// How a GPU was registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRegistration {
    pub uuid: String,
    /// Shared replicas `<uuid>::0 .. <uuid>::<replicas-1>`; 0 when the GPU is not shared.
    pub replicas: u32,
    /// The catalog key of the model, when known; it says which MIG slices exist.
    pub model: Option<String>,
    /// The one path allowed to hold the GPU's devices; `None`: either (one at a time).
    pub serves: Option<Path>,
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
    pub mig_slices_held: u32,
}

/// Node-wide counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Utilisation {
    pub gpus: usize,
    /// GPUs held whole.
    pub gpus_held_whole: usize,
    /// GPUs not held whole with at least one replica or MIG slice held.
    pub gpus_shared: usize,
    /// GPUs with nothing held.
    pub gpus_free: usize,
    pub replicas: usize,
    pub replicas_held: usize,
    pub mig_slices_held: usize,
    pub owners: usize,
    pub owners_device_plugin: usize,
    pub owners_dra: usize,
}

#[derive(Clone, Debug)]
struct HeldSlice {
    profile_id: u32,
    start: u32,
    /// One past the last memory slice.
    end: u32,
    owner: Arc<Owner>,
}

#[derive(Clone, Debug)]
struct GpuEntry {
    replicas: u32,
    model: Option<&'static GpuModel>,
    serves: Option<Path>,
    whole: Option<Arc<Owner>>,
    replica_holders: Vec<Option<Arc<Owner>>>,
    replicas_held: u32,
    slices: Vec<HeldSlice>,
}

impl GpuEntry {
    fn new(replicas: u32, model: Option<&'static GpuModel>, serves: Option<Path>) -> Self {
        GpuEntry {
            replicas,
            model,
            serves,
            whole: None,
            replica_holders: vec![None; replicas as usize],
            replicas_held: 0,
            slices: Vec::new(),
        }
    }

    fn is_free(&self) -> bool {
        self.whole.is_none() && self.replicas_held == 0 && self.slices.is_empty()
    }

    /// Some holder of a device on this GPU (all share one path).
    fn some_holder(&self) -> Option<&Arc<Owner>> {
        self.whole
            .as_ref()
            .or_else(|| self.replica_holders.iter().flatten().next())
            .or_else(|| self.slices.first().map(|s| &s.owner))
    }

    fn first_replica_held(&self) -> Option<(usize, &Arc<Owner>)> {
        self.replica_holders
            .iter()
            .enumerate()
            .find_map(|(i, h)| h.as_ref().map(|h| (i, h)))
    }

    fn registration(&self, uuid: &str) -> GpuRegistration {
        GpuRegistration {
            uuid: uuid.to_string(),
            replicas: self.replicas,
            model: self.model.map(|m| m.key.to_string()),
            serves: self.serves,
        }
    }

    /// The profile of a MIG slice on this GPU, checked against the model's placements.
    fn mig_profile(&self, uuid: &str, profile_id: u32, start: u32) -> Result<&'static MigProfile> {
        let device = Device::mig(uuid, profile_id, start);
        let model = self.model.ok_or_else(|| {
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

#[derive(Clone, Debug, Default)]
struct Inner {
    gpus: FastMap<String, GpuEntry>,
    holdings: FastMap<Arc<Owner>, Vec<Device>>,
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

    /// That the device exists on a registered GPU; for a MIG slice its memory-slice span.
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
        }
    }

    /// Every check of `allocate` for an owner that holds nothing; `devices` sorted, unique.
    fn check(&self, owner: &Owner, devices: &[Device]) -> Result<()> {
        owner.validate()?;
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
                    (Device::Replica { .. }, Device::Mig { .. })
                    | (Device::Mig { .. }, Device::Replica { .. }) => {
                        let (r, m) = if matches!(a, Device::Replica { .. }) {
                            (a, b)
                        } else {
                            (b, a)
                        };
                        return Err(CoreError::InvalidArgument(format!(
                            "the request names replica {r} and {m}; a GPU is split into \
                             replicas or into MIG slices, not both"
                        )));
                    }
                    (Device::Mig { .. }, Device::Mig { .. }) => {
                        if let (Some(sa), Some(sb)) = (spans[i], spans[j]) {
                            if overlaps(sa, sb) {
                                return Err(CoreError::InvalidArgument(format!(
                                    "the request names {a} and {b}, whose placements overlap; \
                                     MIG slices of one GPU must use disjoint memory slices"
                                )));
                            }
                        }
                    }
                    _ => {}
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
            match d {
                Device::Gpu { .. } => {
                    if let Some((i, h)) = gpu.first_replica_held() {
                        return Err(CoreError::Conflict(format!(
                            "{d} is shared: replica {uuid}::{i} is held by {h} ({} of {} \
                             replicas held)",
                            gpu.replicas_held, gpu.replicas
                        )));
                    }
                    if let Some(s) = gpu.slices.first() {
                        return Err(CoreError::Conflict(format!(
                            "{d} is split into MIG slices: {} is held by {}",
                            Device::mig(uuid, s.profile_id, s.start),
                            s.owner
                        )));
                    }
                }
                Device::Replica { index, .. } => {
                    if let Some(h) = &gpu.replica_holders[*index as usize] {
                        return Err(CoreError::Conflict(format!("{d} is held by {h}")));
                    }
                    if let Some(s) = gpu.slices.first() {
                        return Err(CoreError::Conflict(format!(
                            "{d} is not free: GPU {uuid} is split into MIG slices ({} is held by \
                             {})",
                            Device::mig(uuid, s.profile_id, s.start),
                            s.owner
                        )));
                    }
                }
                Device::Mig { start, .. } => {
                    if let Some((i, h)) = gpu.first_replica_held() {
                        return Err(CoreError::Conflict(format!(
                            "{d} is not free: GPU {uuid} is shared as replicas ({uuid}::{i} is \
                             held by {h})"
                        )));
                    }
                    let span = span.unwrap_or((*start, *start));
                    if let Some(s) = gpu.slices.iter().find(|s| overlaps(span, (s.start, s.end))) {
                        let held = Device::mig(uuid, s.profile_id, s.start);
                        return Err(CoreError::Conflict(if held == *d {
                            format!("{d} is held by {}", s.owner)
                        } else {
                            format!("{d} overlaps {held}, which is held by {}", s.owner)
                        }));
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

    /// Record a checked allocation.
    fn apply(&mut self, owner: Arc<Owner>, devices: Vec<Device>) {
        for d in &devices {
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
                    });
                }
            }
        }
        self.holdings.insert(owner, devices);
    }

    fn allocate(
        &mut self,
        owner: &Owner,
        devices: Vec<Device>,
        shared: impl FnOnce() -> Arc<Owner>,
    ) -> Result<()> {
        if let Some(held) = self.holdings.get(owner) {
            if *held == devices {
                return Ok(());
            }
            return Err(CoreError::Conflict(format!(
                "{owner} already holds [{}]; release it before allocating [{}]",
                list(held),
                list(&devices)
            )));
        }
        self.check(owner, &devices)?;
        self.apply(shared(), devices);
        Ok(())
    }

    fn release(&mut self, owner: &Owner) -> Vec<Device> {
        let Some((arc, devices)) = self.holdings.remove_entry(owner) else {
            return Vec::new();
        };
        for d in &devices {
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
            }
        }
        devices
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
        if let Some(existing) = self.gpus.get(uuid) {
            let same = existing.replicas == reg.replicas
                && existing.model.map(|m| m.key) == model.map(|m| m.key)
                && existing.serves == reg.serves;
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
            GpuEntry::new(reg.replicas, model, reg.serves),
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
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyV1 {
    gpus: Vec<GpuRegistration>,
    holdings: Vec<HoldingRecord>,
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

    /// Free what `owner` holds; returns it (empty when the owner held nothing).
    pub fn release(&self, owner: &Owner) -> Vec<Device> {
        self.inner.write().release(owner)
    }

    /// The owner holding exactly `device`.
    pub fn holder_of(&self, device: &Device) -> Result<Option<Owner>> {
        let inner = self.inner.read();
        inner.check_exists(device)?;
        let gpu = inner.gpu(device)?;
        let holder = match device {
            Device::Gpu { .. } => gpu.whole.as_ref(),
            Device::Replica { index, .. } => gpu.replica_holders[*index as usize].as_ref(),
            Device::Mig {
                profile_id, start, ..
            } => gpu
                .slices
                .iter()
                .find(|s| s.profile_id == *profile_id && s.start == *start)
                .map(|s| &s.owner),
        };
        Ok(holder.map(|h| (**h).clone()))
    }

    /// What `owner` holds, sorted (empty when nothing).
    pub fn devices_of(&self, owner: &Owner) -> Vec<Device> {
        self.inner
            .read()
            .holdings
            .get(owner)
            .cloned()
            .unwrap_or_default()
    }

    /// Every owner and its devices, sorted by owner.
    pub fn holdings(&self) -> Vec<(Owner, Vec<Device>)> {
        let inner = self.inner.read();
        let mut out: Vec<(Owner, Vec<Device>)> = inner
            .holdings
            .iter()
            .map(|(o, d)| ((**o).clone(), d.clone()))
            .collect();
        out.sort_unstable();
        out
    }

    /// Devices an owner on `path` could be given now (any path when `None`): whole GPUs with
    /// nothing held, free replicas of GPUs not held whole or split into MIG slices, and MIG
    /// slices (every profile and placement of the model) overlapping nothing held, on GPUs not
    /// held whole or shared as replicas. GPUs by UUID, then whole, replicas, slices.
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
            if gpu.slices.is_empty() {
                for (i, h) in gpu.replica_holders.iter().enumerate() {
                    if h.is_none() {
                        out.push(Device::replica(uuid, i as u32));
                    }
                }
            }
            if gpu.replicas_held == 0 {
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
        let mut held: Vec<(&Arc<Owner>, &Vec<Device>)> = inner.holdings.iter().collect();
        held.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let holdings = held
            .into_iter()
            .map(|(o, d)| HoldingRecord {
                owner: OwnerRecord::from(&**o),
                devices: d.clone(),
            })
            .collect();
        drop(inner);
        let body = serde_json::to_value(BodyV1 { gpus, holdings })
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
        let body: BodyV1 = serde_json::from_value(env.body).map_err(|e| {
            CoreError::Snapshot(format!(
                "the ledger snapshot body (version {version}) is malformed: {e}"
            ))
        })?;
        let bad =
            |e: CoreError| CoreError::Snapshot(format!("the ledger snapshot is inconsistent: {e}"));
        let mut inner = Inner::default();
        for reg in &body.gpus {
            if inner.gpus.contains_key(&reg.uuid) {
                return Err(CoreError::Snapshot(format!(
                    "the ledger snapshot lists GPU {} twice",
                    reg.uuid
                )));
            }
            inner.register(reg).map_err(bad)?;
        }
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
            inner.check(&owner, &devices).map_err(bad)?;
            inner.apply(Arc::new(owner), devices);
        }
        Ok(inner)
    }
}
