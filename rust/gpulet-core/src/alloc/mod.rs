//! Topology-aware allocation and the ledger.
//!
//! - [`score`]: pair and set scores (go-gpuallocator's, NVSwitch aware).
//! - [`preferred`]: preferred allocation of whole GPUs, exact and prepared once per topology.
//! - [`baseline`]: go-gpuallocator's partition enumeration, for tests and benches only.
//! - [`replicas`]: choosing shared replicas or MIG devices for one request.
//! - [`ledger`]: who holds which GPU, MIG slice and replica (the device plugin's pending
//!   allocations and their attribution included), with versioned snapshots.

pub mod baseline;
pub mod ids;
pub mod ledger;
pub mod preferred;
pub mod replicas;
pub mod score;

pub use ids::{Device, Owner, OwnerKind, Path};
pub use ledger::{pending_owner, shared_owner};
pub use ledger::{
    Allocation, GpuRegistration, GpuUsage, Ledger, MigReplicas, PendingAllocation, Reconciliation,
    Utilisation, PENDING_NAMESPACE, SHARED_NAMESPACE,
};
pub use preferred::{allocator_for, preferred, preferred_with, Allocator, Policy, MAX_EXACT_GPUS};
pub use replicas::{select_replicas, ReplicaPolicy, ReplicaRequest};
pub use score::{pair_score, score};

#[cfg(test)]
mod tests;
