//! The shared mutable state of a simulated node: MIG mode and instances, lost GPUs, metrics,
//! processes, injected faults and the event log. It lives in a JSON file (see `store`) that
//! every process simulating the same node reads; this module holds its schema and the pure
//! operations on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::abi::{self, Ret};
use crate::fields::FieldOverride;
use crate::mig::{self, Refusal};
use crate::spec::{GpuSpec, Node};
use crate::util;
use gpulet_core::catalog::MigProfile;

/// Bumped when the schema changes; a state file of another format is rebuilt from the spec.
pub const FORMAT: u32 = 1;
/// The event log keeps this many most recent events.
pub const EVENT_LOG_LIMIT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// Digest of the spec the state was built from.
    pub spec_digest: String,
    /// Sequence number the next event gets (never reused, also across `reset`).
    pub next_seq: u64,
    /// Counts MIG compute instances ever created (seeds their UUIDs).
    pub mig_generation: u64,
    pub gpus: Vec<GpuState>,
    pub faults: Vec<Fault>,
    pub delays: Vec<Delay>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuState {
    pub mig_enabled: bool,
    /// Fell off the bus: every call on it answers NVML_ERROR_GPU_IS_LOST.
    pub lost: bool,
    pub gpu_instances: Vec<GpuInstance>,
    pub metrics: Metrics,
    /// Field values set through the control interface, keyed by canonical id[":scope"].
    pub fields: BTreeMap<String, FieldOverride>,
    pub processes: Vec<Process>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInstance {
    pub id: u32,
    /// Device-unique GPU instance profile id (`nvmlGpuInstanceProfileInfo_t.id`).
    pub profile_id: u32,
    /// Start memory slice.
    pub start: u32,
    pub compute_instances: Vec<ComputeInstance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeInstance {
    pub id: u32,
    /// `NVML_COMPUTE_INSTANCE_PROFILE_*` value (also its profile id).
    pub profile_id: u32,
    /// Start compute slice inside the GPU instance.
    pub start: u32,
    /// Compute slices.
    pub size: u32,
    /// UUID of the MIG device this compute instance is.
    pub uuid: String,
}

/// Values the telemetry calls report. Names are the `set_metric` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub gpu_utilization: u64,
    pub memory_utilization: u64,
    pub encoder_utilization: u64,
    pub decoder_utilization: u64,
    /// Allocated framebuffer in MiB; `None`: the sum of the processes' memory.
    pub memory_used_mib: Option<u64>,
    pub memory_reserved_mib: u64,
    pub temperature: u64,
    pub memory_temperature: u64,
    pub power_mw: u64,
    pub power_limit_mw: u64,
    pub energy_mj: u64,
    pub sm_clock_mhz: u64,
    pub memory_clock_mhz: u64,
    pub graphics_clock_mhz: u64,
    pub video_clock_mhz: u64,
    pub pcie_replay_counter: u64,
    pub ecc_corrected_volatile: u64,
    pub ecc_uncorrected_volatile: u64,
    pub ecc_corrected_aggregate: u64,
    pub ecc_uncorrected_aggregate: u64,
    pub remapped_rows_correctable: u64,
    pub remapped_rows_uncorrectable: u64,
    pub remapped_rows_pending: u64,
    pub remapped_rows_failure: u64,
    pub performance_state: u64,
}

/// Every `set_metric` name with the largest value it accepts.
pub const METRIC_LIMITS: &[(&str, u64)] = &[
    ("gpu_utilization", 100),
    ("memory_utilization", 100),
    ("encoder_utilization", 100),
    ("decoder_utilization", 100),
    ("memory_used_mib", u64::MAX),
    ("memory_reserved_mib", u64::MAX),
    ("temperature", 200),
    ("memory_temperature", 200),
    ("power_mw", u32::MAX as u64),
    ("power_limit_mw", u32::MAX as u64),
    ("energy_mj", u64::MAX),
    ("sm_clock_mhz", u32::MAX as u64),
    ("memory_clock_mhz", u32::MAX as u64),
    ("graphics_clock_mhz", u32::MAX as u64),
    ("video_clock_mhz", u32::MAX as u64),
    ("pcie_replay_counter", u32::MAX as u64),
    ("ecc_corrected_volatile", u64::MAX),
    ("ecc_uncorrected_volatile", u64::MAX),
    ("ecc_corrected_aggregate", u64::MAX),
    ("ecc_uncorrected_aggregate", u64::MAX),
    ("remapped_rows_correctable", u32::MAX as u64),
    ("remapped_rows_uncorrectable", u32::MAX as u64),
    ("remapped_rows_pending", 1),
    ("remapped_rows_failure", 1),
    ("performance_state", 15),
];

impl Metrics {
    /// Idle values for a model.
    pub fn idle(gpu: &GpuSpec) -> Metrics {
        let m = gpu.model;
        Metrics {
            gpu_utilization: 0,
            memory_utilization: 0,
            encoder_utilization: 0,
            decoder_utilization: 0,
            memory_used_mib: None,
            memory_reserved_mib: 0,
            temperature: 34,
            memory_temperature: 38,
            power_mw: u64::from(m.power_limit_mw / 10),
            power_limit_mw: u64::from(m.power_limit_mw),
            energy_mj: 0,
            sm_clock_mhz: u64::from(m.max_sm_clock_mhz),
            memory_clock_mhz: u64::from(m.max_mem_clock_mhz),
            graphics_clock_mhz: u64::from(m.max_sm_clock_mhz),
            video_clock_mhz: u64::from(m.max_sm_clock_mhz),
            pcie_replay_counter: 0,
            ecc_corrected_volatile: 0,
            ecc_uncorrected_volatile: 0,
            ecc_corrected_aggregate: 0,
            ecc_uncorrected_aggregate: 0,
            remapped_rows_correctable: 0,
            remapped_rows_uncorrectable: 0,
            remapped_rows_pending: 0,
            remapped_rows_failure: 0,
            performance_state: 0,
        }
    }

    /// Set one metric by name. `None` is accepted only for `memory_used_mib`.
    pub fn set(&mut self, name: &str, value: Option<u64>) -> Result<(), String> {
        let Some((_, max)) = METRIC_LIMITS.iter().find(|(n, _)| *n == name) else {
            return Err(format!(
                "unknown metric {name:?}; known metrics: {}",
                METRIC_LIMITS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if name == "memory_used_mib" {
            self.memory_used_mib = value;
            return Ok(());
        }
        let v = value.ok_or_else(|| format!("metric {name:?} needs a number, not null"))?;
        if v > *max {
            return Err(format!(
                "metric {name:?} cannot be {v}; the largest value is {max}"
            ));
        }
        let slot = match name {
            "gpu_utilization" => &mut self.gpu_utilization,
            "memory_utilization" => &mut self.memory_utilization,
            "encoder_utilization" => &mut self.encoder_utilization,
            "decoder_utilization" => &mut self.decoder_utilization,
            "memory_reserved_mib" => &mut self.memory_reserved_mib,
            "temperature" => &mut self.temperature,
            "memory_temperature" => &mut self.memory_temperature,
            "power_mw" => &mut self.power_mw,
            "power_limit_mw" => &mut self.power_limit_mw,
            "energy_mj" => &mut self.energy_mj,
            "sm_clock_mhz" => &mut self.sm_clock_mhz,
            "memory_clock_mhz" => &mut self.memory_clock_mhz,
            "graphics_clock_mhz" => &mut self.graphics_clock_mhz,
            "video_clock_mhz" => &mut self.video_clock_mhz,
            "pcie_replay_counter" => &mut self.pcie_replay_counter,
            "ecc_corrected_volatile" => &mut self.ecc_corrected_volatile,
            "ecc_uncorrected_volatile" => &mut self.ecc_uncorrected_volatile,
            "ecc_corrected_aggregate" => &mut self.ecc_corrected_aggregate,
            "ecc_uncorrected_aggregate" => &mut self.ecc_uncorrected_aggregate,
            "remapped_rows_correctable" => &mut self.remapped_rows_correctable,
            "remapped_rows_uncorrectable" => &mut self.remapped_rows_uncorrectable,
            "remapped_rows_pending" => &mut self.remapped_rows_pending,
            "remapped_rows_failure" => &mut self.remapped_rows_failure,
            _ => &mut self.performance_state,
        };
        *slot = v;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub used_memory_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_instance: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_instance: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A call made to return an error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub call: String,
    pub code: Ret,
    /// Only calls about this GPU (NVML index); `None`: every call of that name.
    pub gpu: Option<u32>,
    /// How many more calls fail; `None`: until cleared.
    pub remaining: Option<u32>,
}

/// A call made slow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delay {
    pub call: String,
    pub seconds: f64,
    pub gpu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub gpu: u32,
    /// `nvmlEventType*` bit.
    pub event_type: u64,
    /// `eventData` (the XID for XID events).
    pub data: u64,
    pub gpu_instance: Option<u32>,
    pub compute_instance: Option<u32>,
}

/// Whether a fault or delay registered for `pattern` applies to the exported function `call`:
/// the same name, or `pattern` without the version suffix (`_v2`, `V`) that `call` carries.
pub fn call_matches(pattern: &str, call: &str) -> bool {
    if pattern == call {
        return true;
    }
    match call.strip_prefix(pattern) {
        Some("V") => true,
        Some(rest) => rest
            .strip_prefix("_v")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())),
        None => false,
    }
}

impl State {
    /// The state a spec describes, before anything happened.
    pub fn initial(node: &Node) -> State {
        let mut st = State {
            format: FORMAT,
            spec_digest: node.digest.clone(),
            next_seq: 1,
            mig_generation: 0,
            gpus: Vec::with_capacity(node.gpus.len()),
            faults: Vec::new(),
            delays: Vec::new(),
            events: Vec::new(),
        };
        for g in &node.gpus {
            let mut gs = GpuState {
                mig_enabled: g.mig_enabled,
                lost: false,
                gpu_instances: Vec::new(),
                metrics: Metrics::idle(g),
                fields: BTreeMap::new(),
                processes: g
                    .processes
                    .iter()
                    .map(|p| Process {
                        pid: p.pid,
                        used_memory_mib: p.used_memory_mib,
                        gpu_instance: None,
                        compute_instance: None,
                        name: p.name.clone(),
                    })
                    .collect(),
            };
            if let Some(geometry) = g.model.mig {
                for (profile, start) in &g.mig_devices {
                    let id = mig::gpu_instance_id(&geometry, profile, *start);
                    let size = profile.compute_slices;
                    let uuid = mig_uuid(&g.uuid, id, 0, st.mig_generation);
                    st.mig_generation += 1;
                    gs.gpu_instances.push(GpuInstance {
                        id,
                        profile_id: profile.profile_id,
                        start: *start,
                        compute_instances: vec![ComputeInstance {
                            id: 0,
                            profile_id: mig::ci_profile_for_slices(size),
                            start: 0,
                            size,
                            uuid,
                        }],
                    });
                }
                gs.gpu_instances.sort_by_key(|gi| gi.id);
            }
            st.gpus.push(gs);
        }
        st
    }

    /// Back to the spec's initial state, keeping the event sequence running so that event
    /// sets already waiting are not confused.
    pub fn reset(&mut self, node: &Node) {
        let next_seq = self.next_seq;
        let generation = self.mig_generation;
        *self = State::initial(node);
        self.next_seq = next_seq;
        self.mig_generation = self.mig_generation.max(generation);
    }

    /// Append an event to the log.
    pub fn push_event(
        &mut self,
        gpu: u32,
        event_type: u64,
        data: u64,
        gpu_instance: Option<u32>,
        compute_instance: Option<u32>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.push(Event {
            seq,
            gpu,
            event_type,
            data,
            gpu_instance,
            compute_instance,
        });
        if self.events.len() > EVENT_LOG_LIMIT {
            let excess = self.events.len() - EVENT_LOG_LIMIT;
            self.events.drain(..excess);
        }
        seq
    }

    /// The newest event sequence number handed out so far (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }
}

/// The UUID of a MIG device: stable for one creation, new for every re-creation.
pub fn mig_uuid(parent_uuid: &str, gi: u32, ci: u32, generation: u64) -> String {
    util::uuid_from(
        "MIG",
        &[
            parent_uuid.as_bytes(),
            &gi.to_le_bytes(),
            &ci.to_le_bytes(),
            &generation.to_le_bytes(),
        ],
    )
}

/// The MIG layout of one GPU as (profile, start) pairs.
pub fn layout(gpu: &GpuSpec, gs: &GpuState) -> Vec<(&'static MigProfile, u32)> {
    let Some(geometry) = gpu.model.mig else {
        return Vec::new();
    };
    gs.gpu_instances
        .iter()
        .filter_map(|gi| geometry.profile_by_id(gi.profile_id).map(|p| (p, gi.start)))
        .collect()
}

/// Why a MIG operation failed, as NVML reports it plus a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigError {
    pub code: Ret,
    pub message: String,
}

impl MigError {
    fn new(code: Ret, message: impl Into<String>) -> MigError {
        MigError {
            code,
            message: message.into(),
        }
    }

    fn refusal(r: Refusal) -> MigError {
        let code = if r.is_invalid_argument() {
            abi::ERROR_INVALID_ARGUMENT
        } else {
            abi::ERROR_INSUFFICIENT_RESOURCES
        };
        MigError::new(code, r.to_string())
    }
}

/// Look up the GPU's MIG geometry, refusing GPUs without MIG or with MIG disabled.
fn mig_geometry(
    gpu: &GpuSpec,
    gs: &GpuState,
) -> Result<gpulet_core::catalog::MigGeometry, MigError> {
    let Some(geometry) = gpu.model.mig else {
        return Err(MigError::new(
            abi::ERROR_NOT_SUPPORTED,
            format!("{} does not support MIG", gpu.model.key),
        ));
    };
    if !gs.mig_enabled {
        return Err(MigError::new(
            abi::ERROR_NOT_SUPPORTED,
            format!("MIG mode is disabled on GPU {}", gpu.index),
        ));
    }
    Ok(geometry)
}

impl State {
    /// Create a GPU instance; `start` `None` picks the lowest free placement. Returns its id.
    pub fn create_gpu_instance(
        &mut self,
        gpu: &GpuSpec,
        profile_id: u32,
        start: Option<u32>,
    ) -> Result<u32, MigError> {
        let gs = &self.gpus[gpu.index];
        let geometry = mig_geometry(gpu, gs)?;
        let profile = geometry.profile_by_id(profile_id).ok_or_else(|| {
            MigError::new(
                abi::ERROR_INVALID_ARGUMENT,
                format!(
                    "{} has no GPU instance profile id {profile_id}",
                    gpu.model.key
                ),
            )
        })?;
        let existing = layout(gpu, gs);
        let start = match start {
            Some(s) => {
                mig::check_gpu_instance(&geometry, &existing, profile, s)
                    .map_err(MigError::refusal)?;
                s
            }
            None => mig::first_free_placement(&geometry, &existing, profile).map_err(|r| {
                MigError::new(
                    abi::ERROR_INSUFFICIENT_RESOURCES,
                    format!("no free placement for {}: {r}", profile.name),
                )
            })?,
        };
        let id = mig::gpu_instance_id(&geometry, profile, start);
        let gs = &mut self.gpus[gpu.index];
        gs.gpu_instances.push(GpuInstance {
            id,
            profile_id,
            start,
            compute_instances: Vec::new(),
        });
        gs.gpu_instances.sort_by_key(|gi| gi.id);
        self.push_event(
            gpu.index as u32,
            abi::EVENT_MIG_CONFIG_CHANGE,
            0,
            Some(id),
            None,
        );
        Ok(id)
    }

    /// Destroy a GPU instance that has no compute instances and no processes.
    pub fn destroy_gpu_instance(&mut self, gpu: &GpuSpec, gi_id: u32) -> Result<(), MigError> {
        let gs = &mut self.gpus[gpu.index];
        let pos = gs
            .gpu_instances
            .iter()
            .position(|gi| gi.id == gi_id)
            .ok_or_else(|| {
                MigError::new(
                    abi::ERROR_INVALID_ARGUMENT,
                    format!("GPU {} has no GPU instance {gi_id}", gpu.index),
                )
            })?;
        if !gs.gpu_instances[pos].compute_instances.is_empty() {
            return Err(MigError::new(
                abi::ERROR_IN_USE,
                format!(
                    "GPU instance {gi_id} on GPU {} still has compute instances",
                    gpu.index
                ),
            ));
        }
        if gs.processes.iter().any(|p| p.gpu_instance == Some(gi_id)) {
            return Err(MigError::new(
                abi::ERROR_IN_USE,
                format!(
                    "GPU instance {gi_id} on GPU {} has running processes",
                    gpu.index
                ),
            ));
        }
        gs.gpu_instances.remove(pos);
        self.push_event(
            gpu.index as u32,
            abi::EVENT_MIG_CONFIG_CHANGE,
            0,
            Some(gi_id),
            None,
        );
        Ok(())
    }

    /// Create a compute instance of `profile` (an `NVML_COMPUTE_INSTANCE_PROFILE_*` value) in a
    /// GPU instance; `start` `None` picks the lowest free placement. Returns its id.
    pub fn create_compute_instance(
        &mut self,
        gpu: &GpuSpec,
        gi_id: u32,
        profile: u32,
        start: Option<u32>,
    ) -> Result<u32, MigError> {
        let generation = self.mig_generation;
        let gs = &mut self.gpus[gpu.index];
        let geometry = mig_geometry(gpu, gs)?;
        let gi = gs
            .gpu_instances
            .iter_mut()
            .find(|gi| gi.id == gi_id)
            .ok_or_else(|| {
                MigError::new(
                    abi::ERROR_INVALID_ARGUMENT,
                    format!("GPU {} has no GPU instance {gi_id}", gpu.index),
                )
            })?;
        let gi_profile = geometry.profile_by_id(gi.profile_id).ok_or_else(|| {
            MigError::new(
                abi::ERROR_UNKNOWN,
                format!(
                    "GPU instance {gi_id} has an unknown profile {}",
                    gi.profile_id
                ),
            )
        })?;
        let size = mig::ci_slices_for_profile(profile)
            .filter(|s| mig::ci_sizes(gi_profile.compute_slices).contains(s))
            .ok_or_else(|| {
                MigError::new(
                    abi::ERROR_INVALID_ARGUMENT,
                    format!(
                        "GPU instance {gi_id} ({}) has no compute instance profile {profile}",
                        gi_profile.name
                    ),
                )
            })?;
        let existing: Vec<(u32, u32)> = gi
            .compute_instances
            .iter()
            .map(|c| (c.start, c.size))
            .collect();
        let start = match start {
            Some(s) => {
                mig::check_compute_instance(gi_profile, &existing, size, s)
                    .map_err(MigError::refusal)?;
                s
            }
            None => mig::ci_placements(gi_profile.compute_slices, size)
                .into_iter()
                .find(|s| mig::check_compute_instance(gi_profile, &existing, size, *s).is_ok())
                .ok_or_else(|| {
                    MigError::new(
                        abi::ERROR_INSUFFICIENT_RESOURCES,
                        format!(
                            "no free placement for {} in GPU instance {gi_id}",
                            mig::ci_name(gi_profile, size)
                        ),
                    )
                })?,
        };
        let id = (0..)
            .find(|i| gi.compute_instances.iter().all(|c| c.id != *i))
            .unwrap_or(0);
        let uuid = mig_uuid(&gpu.uuid, gi_id, id, generation);
        gi.compute_instances.push(ComputeInstance {
            id,
            profile_id: profile,
            start,
            size,
            uuid,
        });
        gi.compute_instances.sort_by_key(|c| c.id);
        self.mig_generation += 1;
        self.push_event(
            gpu.index as u32,
            abi::EVENT_MIG_CONFIG_CHANGE,
            0,
            Some(gi_id),
            Some(id),
        );
        Ok(id)
    }

    /// Destroy a compute instance that runs no processes.
    pub fn destroy_compute_instance(
        &mut self,
        gpu: &GpuSpec,
        gi_id: u32,
        ci_id: u32,
    ) -> Result<(), MigError> {
        let gs = &mut self.gpus[gpu.index];
        if gs
            .processes
            .iter()
            .any(|p| p.gpu_instance == Some(gi_id) && p.compute_instance == Some(ci_id))
        {
            return Err(MigError::new(
                abi::ERROR_IN_USE,
                format!("compute instance {ci_id} of GPU instance {gi_id} on GPU {} has running processes", gpu.index),
            ));
        }
        let gi = gs
            .gpu_instances
            .iter_mut()
            .find(|gi| gi.id == gi_id)
            .ok_or_else(|| {
                MigError::new(
                    abi::ERROR_INVALID_ARGUMENT,
                    format!("GPU {} has no GPU instance {gi_id}", gpu.index),
                )
            })?;
        let pos = gi
            .compute_instances
            .iter()
            .position(|c| c.id == ci_id)
            .ok_or_else(|| {
                MigError::new(
                    abi::ERROR_INVALID_ARGUMENT,
                    format!(
                        "GPU instance {gi_id} on GPU {} has no compute instance {ci_id}",
                        gpu.index
                    ),
                )
            })?;
        gi.compute_instances.remove(pos);
        self.push_event(
            gpu.index as u32,
            abi::EVENT_MIG_CONFIG_CHANGE,
            0,
            Some(gi_id),
            Some(ci_id),
        );
        Ok(())
    }

    /// Switch MIG mode. Disabling needs every GPU instance destroyed first.
    pub fn set_mig_mode(&mut self, gpu: &GpuSpec, enabled: bool) -> Result<(), MigError> {
        if gpu.model.mig.is_none() {
            return Err(MigError::new(
                abi::ERROR_NOT_SUPPORTED,
                format!("{} does not support MIG", gpu.model.key),
            ));
        }
        let gs = &mut self.gpus[gpu.index];
        if gs.mig_enabled == enabled {
            return Ok(());
        }
        if !gs.gpu_instances.is_empty() {
            return Err(MigError::new(
                abi::ERROR_IN_USE,
                format!(
                    "GPU {} still has {} GPU instances; destroy them first",
                    gpu.index,
                    gs.gpu_instances.len()
                ),
            ));
        }
        if !gs.processes.is_empty() {
            return Err(MigError::new(
                abi::ERROR_IN_USE,
                format!(
                    "GPU {} has {} running processes",
                    gpu.index,
                    gs.processes.len()
                ),
            ));
        }
        gs.mig_enabled = enabled;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn node(gpus: &str) -> Node {
        Node::parse(
            Path::new("t.yaml"),
            &format!("version: v1\nname: t\nnuma_nodes: [{{id: 0, cpus: \"0-7\"}}]\ngpus:\n{gpus}"),
        )
        .unwrap()
    }

    #[test]
    fn initial_state_carries_spec_mig_devices() {
        let n = node("  - {model: H100-80GB, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0, mig_enabled: true, mig_devices: [{profile: 3g.40gb, start: 4}, {profile: 1g.10gb, start: 0}]}\n");
        let st = State::initial(&n);
        let gis = &st.gpus[0].gpu_instances;
        assert_eq!(gis.iter().map(|g| g.id).collect::<Vec<_>>(), vec![2, 7]);
        assert_eq!(gis[0].compute_instances[0].size, 3);
        assert_eq!(gis[0].compute_instances[0].profile_id, 2);
        assert!(util::is_uuid("MIG", &gis[0].compute_instances[0].uuid));
        assert_ne!(
            gis[0].compute_instances[0].uuid,
            gis[1].compute_instances[0].uuid
        );
        assert_eq!(st, State::initial(&n));
    }

    #[test]
    fn gpu_and_compute_instances() {
        let n = node("  - {model: H100-80GB, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0, mig_enabled: true}\n");
        let g = &n.gpus[0];
        let mut st = State::initial(&n);
        let gi = st.create_gpu_instance(g, 9, Some(4)).unwrap();
        assert_eq!(gi, 2);
        let e = st.create_gpu_instance(g, 14, Some(4)).unwrap_err();
        assert_eq!(e.code, abi::ERROR_INSUFFICIENT_RESOURCES);
        assert!(e.message.contains("overlaps"), "{}", e.message);
        assert_eq!(
            st.create_gpu_instance(g, 14, Some(3)).unwrap_err().code,
            abi::ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            st.create_gpu_instance(g, 99, None).unwrap_err().code,
            abi::ERROR_INVALID_ARGUMENT
        );
        assert_eq!(st.create_gpu_instance(g, 9, None).unwrap(), 1);
        assert_eq!(
            st.create_gpu_instance(g, 19, None).unwrap_err().code,
            abi::ERROR_INSUFFICIENT_RESOURCES
        );
        let ci = st.create_compute_instance(g, 2, 0, None).unwrap();
        assert_eq!(ci, 0);
        assert_eq!(st.create_compute_instance(g, 2, 0, None).unwrap(), 1);
        // A full-size CI no longer fits.
        assert_eq!(
            st.create_compute_instance(g, 2, 2, None).unwrap_err().code,
            abi::ERROR_INSUFFICIENT_RESOURCES
        );
        assert_eq!(
            st.create_compute_instance(g, 2, 3, None).unwrap_err().code,
            abi::ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            st.destroy_gpu_instance(g, 2).unwrap_err().code,
            abi::ERROR_IN_USE
        );
        st.destroy_compute_instance(g, 2, 0).unwrap();
        st.destroy_compute_instance(g, 2, 1).unwrap();
        st.destroy_gpu_instance(g, 2).unwrap();
        assert_eq!(
            st.destroy_gpu_instance(g, 2).unwrap_err().code,
            abi::ERROR_INVALID_ARGUMENT
        );
        // Every change was announced.
        assert_eq!(
            st.events
                .iter()
                .filter(|e| e.event_type == abi::EVENT_MIG_CONFIG_CHANGE)
                .count(),
            7
        );
        assert_eq!(
            st.set_mig_mode(g, false).unwrap_err().code,
            abi::ERROR_IN_USE
        );
        st.destroy_gpu_instance(g, 1).unwrap();
        st.set_mig_mode(g, false).unwrap();
        assert_eq!(
            st.create_gpu_instance(g, 9, None).unwrap_err().code,
            abi::ERROR_NOT_SUPPORTED
        );
    }

    #[test]
    fn non_mig_gpus_refuse_mig() {
        let n = node("  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0}\n");
        let mut st = State::initial(&n);
        assert_eq!(
            st.set_mig_mode(&n.gpus[0], true).unwrap_err().code,
            abi::ERROR_NOT_SUPPORTED
        );
        assert_eq!(
            st.create_gpu_instance(&n.gpus[0], 0, None)
                .unwrap_err()
                .code,
            abi::ERROR_NOT_SUPPORTED
        );
    }

    #[test]
    fn reset_keeps_the_event_sequence() {
        let n = node("  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0}\n");
        let mut st = State::initial(&n);
        st.push_event(0, abi::EVENT_XID, 48, None, None);
        st.push_event(0, abi::EVENT_XID, 79, None, None);
        st.gpus[0].lost = true;
        st.reset(&n);
        assert!(!st.gpus[0].lost);
        assert!(st.events.is_empty());
        assert_eq!(st.push_event(0, abi::EVENT_XID, 1, None, None), 3);
    }

    #[test]
    fn the_event_log_is_bounded() {
        let n = node("  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0}\n");
        let mut st = State::initial(&n);
        for i in 0..(EVENT_LOG_LIMIT as u64 + 10) {
            st.push_event(0, abi::EVENT_XID, i, None, None);
        }
        assert_eq!(st.events.len(), EVENT_LOG_LIMIT);
        assert_eq!(st.events[0].seq, 11);
    }

    #[test]
    fn metrics_by_name() {
        let n = node("  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0}\n");
        let mut m = Metrics::idle(&n.gpus[0]);
        m.set("gpu_utilization", Some(55)).unwrap();
        assert_eq!(m.gpu_utilization, 55);
        assert!(m
            .set("gpu_utilization", Some(101))
            .unwrap_err()
            .contains("largest value is 100"));
        assert!(m
            .set("bogus", Some(1))
            .unwrap_err()
            .contains("unknown metric \"bogus\""));
        assert!(m.set("temperature", None).is_err());
        m.set("memory_used_mib", None).unwrap();
        for (name, _) in METRIC_LIMITS {
            m.set(name, Some(1)).unwrap();
        }
        assert_eq!(m.performance_state, 1);
    }

    #[test]
    fn call_patterns() {
        assert!(call_matches(
            "nvmlDeviceGetMemoryInfo",
            "nvmlDeviceGetMemoryInfo_v2"
        ));
        assert!(call_matches(
            "nvmlDeviceGetTemperature",
            "nvmlDeviceGetTemperatureV"
        ));
        assert!(call_matches("nvmlInit", "nvmlInit_v2"));
        assert!(!call_matches("nvmlInit", "nvmlInitWithFlags"));
        assert!(!call_matches(
            "nvmlDeviceGetMemoryInfo_v2",
            "nvmlDeviceGetMemoryInfo"
        ));
        assert!(!call_matches("nvmlDeviceGetCount", "nvmlDeviceGetCount_vx"));
    }
}
