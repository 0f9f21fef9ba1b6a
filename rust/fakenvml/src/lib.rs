//! The fake `libnvidia-ml.so.1`: the NVML C ABI subset that gpulet (through nvml-wrapper) and
//! pynvml (nvidia-ml-py) use, answering from a node spec file (docs/node-spec.md) and a state
//! file shared by every process that simulates the same node. See docs/fake-nvml.md.
//!
//! - [`spec`]: node specs, validated against `gpulet_core::catalog`.
//! - [`state`], [`store`]: the shared mutable state and its file.
//! - [`mig`], [`fields`]: MIG geometry rules and field values.
//! - [`control`]: commands that change a running simulated node.
//! - [`runtime`]: the per-process side (init refcount, handles, event sets, faults).
//! - [`ffi`]: the exported C functions.

pub mod abi;
pub mod control;
pub mod ffi;
pub mod fields;
pub mod mig;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod store;
pub mod util;
