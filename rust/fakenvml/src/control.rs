//! Control commands: how tests and `gpulet simulate` change a running simulated node from
//! outside. Each command is a JSON object with a `command` field; it is applied to the shared
//! state file under its lock, so every process using the node sees it.

use std::sync::Arc;

use serde::Deserialize;

use crate::abi;
use crate::ffi;
use crate::ffi::events::supported_event_types;
use crate::fields::{override_key, FieldOverride, Num, ValueType};
use crate::spec::Node;
use crate::state::{Delay, Fault, Process, State};
use crate::store::{MutateError, Store};

/// The XID NVIDIA drivers report when a GPU has fallen off the bus.
pub const XID_FALLEN_OFF_BUS: u64 = 79;

#[derive(Debug, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// An XID critical error event (`nvmlEventTypeXidCriticalError`, eventData = xid).
    InjectXid {
        gpu: u32,
        xid: u64,
        #[serde(default)]
        gpu_instance: Option<u32>,
        #[serde(default)]
        compute_instance: Option<u32>,
    },
    /// Any event type the GPU supports (one `nvmlEventType*` bit).
    InjectEvent {
        gpu: u32,
        event_type: u64,
        #[serde(default)]
        data: u64,
        #[serde(default)]
        gpu_instance: Option<u32>,
        #[serde(default)]
        compute_instance: Option<u32>,
    },
    /// The GPU falls off the bus: calls on it answer NVML_ERROR_GPU_IS_LOST; XID 79 is emitted.
    FallOffBus { gpu: u32 },
    /// The GPU answers again.
    RestoreGpu { gpu: u32 },
    /// Make `call` return `code` (only for `gpu` if given; only `times` times if given).
    Fail {
        call: String,
        code: u32,
        #[serde(default)]
        gpu: Option<u32>,
        #[serde(default)]
        times: Option<u32>,
    },
    /// Make `call` sleep `seconds` before answering (only for `gpu` if given).
    Delay {
        call: String,
        seconds: f64,
        #[serde(default)]
        gpu: Option<u32>,
    },
    /// Set a metric; `null` is allowed for `memory_used_mib` (back to the processes' sum).
    SetMetric {
        gpu: u32,
        name: String,
        value: Option<u64>,
    },
    /// Set (or with `value: null` clear) a field value, by the id clients of this driver use.
    SetField {
        gpu: u32,
        field: u32,
        value: Option<Num>,
        #[serde(default)]
        scope: Option<u32>,
        #[serde(default)]
        value_type: Option<ValueType>,
    },
    /// Replace the GPU's compute processes.
    SetProcesses { gpu: u32, processes: Vec<Process> },
    /// Drop injected errors and delays, and bring lost GPUs back.
    ClearFaults {},
    /// Back to the spec's initial state.
    Reset {},
}

/// A control failure: the command itself was wrong, or the state file failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    Command(String),
    Io(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Command(m) | ControlError::Io(m) => f.write_str(m),
        }
    }
}

fn check_gpu(node: &Node, gpu: u32) -> Result<usize, String> {
    let n = node.gpus.len();
    if (gpu as usize) < n {
        Ok(gpu as usize)
    } else {
        Err(format!("GPU {gpu} does not exist (the node has {n} GPUs)"))
    }
}

fn check_call(call: &str) -> Result<(), String> {
    if ffi::is_known_call(call) {
        Ok(())
    } else {
        Err(format!(
            "{call:?} is not an NVML function the fake exports; use an exported name such as \
             \"nvmlDeviceGetPowerUsage\" (a name without its _vN suffix covers every version)"
        ))
    }
}

fn check_instances(gpu_instance: Option<u32>, compute_instance: Option<u32>) -> Result<(), String> {
    if compute_instance.is_some() && gpu_instance.is_none() {
        return Err("compute_instance needs gpu_instance".into());
    }
    Ok(())
}

fn check_processes(
    node: &Node,
    st: &State,
    gpu: usize,
    processes: &[Process],
) -> Result<(), String> {
    let spec = &node.gpus[gpu];
    let gs = &st.gpus[gpu];
    let mut total = 0u64;
    for (i, p) in processes.iter().enumerate() {
        if processes[..i].iter().any(|q| q.pid == p.pid) {
            return Err(format!("processes[{i}]: pid {} is listed twice", p.pid));
        }
        total = total.saturating_add(p.used_memory_mib);
        check_instances(p.gpu_instance, p.compute_instance)
            .map_err(|e| format!("processes[{i}]: {e}"))?;
        if let Some(gi) = p.gpu_instance {
            if !gs.mig_enabled {
                return Err(format!(
                    "processes[{i}]: GPU {gpu} is not in MIG mode, so no GPU instance {gi}"
                ));
            }
            let Some(g) = gs.gpu_instances.iter().find(|g| g.id == gi) else {
                return Err(format!(
                    "processes[{i}]: GPU {gpu} has no GPU instance {gi}"
                ));
            };
            if let Some(ci) = p.compute_instance {
                if !g.compute_instances.iter().any(|c| c.id == ci) {
                    return Err(format!(
                        "processes[{i}]: GPU instance {gi} has no compute instance {ci}"
                    ));
                }
            }
        }
    }
    if total > spec.model.memory_mib {
        return Err(format!(
            "the processes use {total} MiB but GPU {gpu} ({}) has {} MiB",
            spec.model.key, spec.model.memory_mib
        ));
    }
    Ok(())
}

/// Apply a command to the state in place.
fn apply(node: &Node, st: &mut State, cmd: Command) -> Result<(), String> {
    match cmd {
        Command::InjectXid {
            gpu,
            xid,
            gpu_instance,
            compute_instance,
        } => {
            check_gpu(node, gpu)?;
            check_instances(gpu_instance, compute_instance)?;
            st.push_event(gpu, abi::EVENT_XID, xid, gpu_instance, compute_instance);
        }
        Command::InjectEvent {
            gpu,
            event_type,
            data,
            gpu_instance,
            compute_instance,
        } => {
            let g = check_gpu(node, gpu)?;
            check_instances(gpu_instance, compute_instance)?;
            let supported = supported_event_types(node.gpus[g].model.mig.is_some());
            if event_type.count_ones() != 1 || event_type & supported == 0 {
                return Err(format!(
                    "event_type {event_type:#x} is not one event type GPU {gpu} supports (supported mask: {supported:#x})"
                ));
            }
            st.push_event(gpu, event_type, data, gpu_instance, compute_instance);
        }
        Command::FallOffBus { gpu } => {
            let g = check_gpu(node, gpu)?;
            if !st.gpus[g].lost {
                st.gpus[g].lost = true;
                st.push_event(gpu, abi::EVENT_XID, XID_FALLEN_OFF_BUS, None, None);
            }
        }
        Command::RestoreGpu { gpu } => {
            let g = check_gpu(node, gpu)?;
            st.gpus[g].lost = false;
        }
        Command::Fail {
            call,
            code,
            gpu,
            times,
        } => {
            check_call(&call)?;
            if let Some(g) = gpu {
                check_gpu(node, g)?;
            }
            if code == abi::SUCCESS || !abi::is_known_return_code(code) {
                return Err(format!(
                    "code {code} is not an NVML error code (use 1-30 or 999, e.g. 15 for GPU_IS_LOST)"
                ));
            }
            if times == Some(0) {
                return Err("times must be at least 1 (leave it out to fail until cleared)".into());
            }
            st.faults.push(Fault {
                call,
                code,
                gpu,
                remaining: times,
            });
        }
        Command::Delay { call, seconds, gpu } => {
            check_call(&call)?;
            if let Some(g) = gpu {
                check_gpu(node, g)?;
            }
            if !seconds.is_finite() || !(0.0..=3600.0).contains(&seconds) {
                return Err(format!("seconds must be between 0 and 3600, not {seconds}"));
            }
            st.delays.push(Delay { call, seconds, gpu });
        }
        Command::SetMetric { gpu, name, value } => {
            let g = check_gpu(node, gpu)?;
            st.gpus[g].metrics.set(&name, value)?;
        }
        Command::SetField {
            gpu,
            field,
            value,
            scope,
            value_type,
        } => {
            let g = check_gpu(node, gpu)?;
            let scheme = node.field_scheme;
            let canonical = scheme.to_canonical(field).ok_or_else(|| {
                format!(
                    "field {field} does not exist for driver {} (field ids run below {})",
                    node.driver_version,
                    scheme.max()
                )
            })?;
            let key = override_key(canonical, scope);
            match value {
                Some(value) => {
                    st.gpus[g]
                        .fields
                        .insert(key, FieldOverride { value, value_type });
                }
                None => {
                    st.gpus[g].fields.remove(&key);
                }
            }
        }
        Command::SetProcesses { gpu, processes } => {
            let g = check_gpu(node, gpu)?;
            check_processes(node, st, g, &processes)?;
            st.gpus[g].processes = processes;
        }
        Command::ClearFaults {} => {
            st.faults.clear();
            st.delays.clear();
            for g in &mut st.gpus {
                g.lost = false;
            }
        }
        Command::Reset {} => st.reset(node),
    }
    Ok(())
}

/// Parse and run one JSON command against the state file at `store`.
pub fn run(store: &Store, json: &str) -> Result<(), ControlError> {
    let cmd: Command = serde_json::from_str(json)
        .map_err(|e| ControlError::Command(format!("invalid control command {json}: {e}")))?;
    let node: Arc<Node> = store.node().clone();
    if let Command::Reset {} = cmd {
        // Works on a damaged state file too.
        return store
            .replace(|old| {
                let mut st = State::initial(&node);
                if let Some(old) = old {
                    st.next_seq = st.next_seq.max(old.next_seq);
                    st.mig_generation = st.mig_generation.max(old.mig_generation);
                }
                st
            })
            .map_err(ControlError::Io);
    }
    store
        .mutate(|st| apply(&node, st, cmd))
        .map_err(|e| match e {
            MutateError::Rejected(m) => ControlError::Command(m),
            MutateError::Io(m) => ControlError::Io(m),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn store(tag: &str, gpus: &str) -> (Store, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("fakenvml-control-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let node = Node::parse(
            Path::new("t.yaml"),
            &format!("version: v1\nname: t\nnuma_nodes: [{{id: 0, cpus: \"0-7\"}}]\ngpus:\n{gpus}"),
        )
        .unwrap();
        (
            Store::open(Arc::new(node), dir.join("state.json")).unwrap(),
            dir,
        )
    }

    const TWO: &str = "  - {model: H100-80GB, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0, mig_enabled: true}\n  - {model: T4, pci_bus_id: \"00000000:43:00.0\", numa_node: 0}\n";

    fn err(s: &Store, json: &str) -> String {
        match run(s, json) {
            Err(ControlError::Command(m)) => m,
            other => panic!("{json}: expected a command error, got {other:?}"),
        }
    }

    #[test]
    fn events_and_lost_gpus() {
        let (s, dir) = store("events", TWO);
        run(&s, r#"{"command": "inject_xid", "gpu": 0, "xid": 48}"#).unwrap();
        run(&s, r#"{"command": "inject_xid", "gpu": 0, "xid": 94, "gpu_instance": 1, "compute_instance": 0}"#).unwrap();
        run(&s, r#"{"command": "fall_off_bus", "gpu": 1}"#).unwrap();
        run(&s, r#"{"command": "fall_off_bus", "gpu": 1}"#).unwrap();
        let st = s.load().unwrap();
        assert!(st.gpus[1].lost);
        let xids: Vec<u64> = st.events.iter().map(|e| e.data).collect();
        assert_eq!(xids, vec![48, 94, 79]);
        assert_eq!(st.events[1].gpu_instance, Some(1));
        run(&s, r#"{"command": "restore_gpu", "gpu": 1}"#).unwrap();
        assert!(!s.load().unwrap().gpus[1].lost);
        run(
            &s,
            r#"{"command": "inject_event", "gpu": 0, "event_type": 2, "data": 0}"#,
        )
        .unwrap();
        assert!(err(
            &s,
            r#"{"command": "inject_event", "gpu": 1, "event_type": 256}"#
        )
        .contains("not one event type"));
        assert!(err(&s, r#"{"command": "inject_xid", "gpu": 5, "xid": 1}"#)
            .contains("GPU 5 does not exist (the node has 2 GPUs)"));
        assert!(err(
            &s,
            r#"{"command": "inject_xid", "gpu": 0, "xid": 1, "compute_instance": 0}"#
        )
        .contains("needs gpu_instance"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn faults_and_delays() {
        let (s, dir) = store("faults", TWO);
        run(&s, r#"{"command": "fail", "call": "nvmlDeviceGetPowerUsage", "code": 15, "gpu": 1, "times": 2}"#).unwrap();
        run(
            &s,
            r#"{"command": "delay", "call": "nvmlDeviceGetMemoryInfo", "seconds": 0.5}"#,
        )
        .unwrap();
        let st = s.load().unwrap();
        assert_eq!(st.faults[0].remaining, Some(2));
        assert_eq!(st.delays[0].seconds, 0.5);
        assert!(err(
            &s,
            r#"{"command": "fail", "call": "nvmlBogus", "code": 15}"#
        )
        .contains("not an NVML function"));
        assert!(
            err(&s, r#"{"command": "fail", "call": "nvmlInit", "code": 0}"#)
                .contains("not an NVML error code")
        );
        assert!(
            err(&s, r#"{"command": "fail", "call": "nvmlInit", "code": 77}"#)
                .contains("not an NVML error code")
        );
        assert!(err(
            &s,
            r#"{"command": "fail", "call": "nvmlInit", "code": 9, "times": 0}"#
        )
        .contains("at least 1"));
        assert!(err(
            &s,
            r#"{"command": "delay", "call": "nvmlInit", "seconds": -1}"#
        )
        .contains("between 0 and 3600"));
        run(&s, r#"{"command": "fall_off_bus", "gpu": 0}"#).unwrap();
        run(&s, r#"{"command": "clear_faults"}"#).unwrap();
        let st = s.load().unwrap();
        assert!(st.faults.is_empty() && st.delays.is_empty() && !st.gpus[0].lost);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn metrics_fields_and_processes() {
        let (s, dir) = store("metrics", TWO);
        run(
            &s,
            r#"{"command": "set_metric", "gpu": 0, "name": "power_mw", "value": 123000}"#,
        )
        .unwrap();
        run(
            &s,
            r#"{"command": "set_field", "gpu": 0, "field": 138, "scope": 3, "value": 42}"#,
        )
        .unwrap();
        run(&s, r#"{"command": "set_field", "gpu": 0, "field": 251, "value": 7, "value_type": "unsigned_long_long"}"#).unwrap();
        let st = s.load().unwrap();
        assert_eq!(st.gpus[0].metrics.power_mw, 123000);
        assert_eq!(st.gpus[0].fields["138:3"].value, Num::U(42));
        assert!(st.gpus[0].fields.contains_key("251"));
        run(
            &s,
            r#"{"command": "set_field", "gpu": 0, "field": 138, "scope": 3, "value": null}"#,
        )
        .unwrap();
        assert!(!s.load().unwrap().gpus[0].fields.contains_key("138:3"));
        assert!(err(
            &s,
            r#"{"command": "set_field", "gpu": 0, "field": 300, "value": 1}"#
        )
        .contains("does not exist for driver"));
        assert!(err(
            &s,
            r#"{"command": "set_metric", "gpu": 0, "name": "watts", "value": 1}"#
        )
        .contains("unknown metric"));
        run(&s, r#"{"command": "set_processes", "gpu": 1, "processes": [{"pid": 7, "used_memory_mib": 100, "name": "train"}]}"#).unwrap();
        assert_eq!(s.load().unwrap().gpus[1].processes[0].pid, 7);
        assert!(err(&s, r#"{"command": "set_processes", "gpu": 1, "processes": [{"pid": 7, "used_memory_mib": 1}, {"pid": 7, "used_memory_mib": 1}]}"#).contains("listed twice"));
        assert!(err(&s, r#"{"command": "set_processes", "gpu": 1, "processes": [{"pid": 7, "used_memory_mib": 1, "gpu_instance": 1}]}"#).contains("not in MIG mode"));
        assert!(err(&s, r#"{"command": "set_processes", "gpu": 0, "processes": [{"pid": 7, "used_memory_mib": 1, "gpu_instance": 1}]}"#).contains("has no GPU instance 1"));
        assert!(err(&s, r#"{"command": "set_processes", "gpu": 1, "processes": [{"pid": 7, "used_memory_mib": 999999}]}"#).contains("MiB"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_json_and_unknown_commands() {
        let (s, dir) = store("json", TWO);
        assert!(err(&s, "{").contains("invalid control command"));
        assert!(err(&s, r#"{"command": "explode"}"#).contains("unknown variant `explode`"));
        assert!(
            err(&s, r#"{"command": "fall_off_bus", "gpu": 0, "extra": 1}"#)
                .contains("unknown field `extra`")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reset_restores_the_spec_and_survives_damage() {
        let (s, dir) = store("reset", TWO);
        let g = s.node().gpus[0].clone();
        s.mutate(|st| st.create_gpu_instance(&g, 0, None)).unwrap();
        std::fs::write(s.path(), "garbage").unwrap();
        run(&s, r#"{"command": "reset"}"#).unwrap();
        assert!(s.load().unwrap().gpus[0].gpu_instances.is_empty());
        // With a readable file the event sequence carries on across a reset.
        run(&s, r#"{"command": "inject_xid", "gpu": 0, "xid": 13}"#).unwrap();
        let next = s.load().unwrap().next_seq;
        run(&s, r#"{"command": "reset"}"#).unwrap();
        let st = s.load().unwrap();
        assert_eq!(st.next_seq, next);
        assert!(st.events.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
