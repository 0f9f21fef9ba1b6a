//! gpulet-core: everything gpulet decides and counts, without Python.
//!
//! - [`catalog`]: GPU models and their MIG tables (offline truth; the real GPU wins at run time).
//! - [`topology`]: the pairwise link matrix that allocation scores.
//! - [`nvml`]: loads libnvidia-ml.so.1 at run time and discovers GPUs, topology and MIG state.
//! - [`mig`]: MIG layouts, planning and fragmentation.
//! - [`alloc`]: topology-aware preferred allocation and the ledger.
//! - [`snapshot`]: the versioned schema of ledger snapshots (embedded in the DRA checkpoint).

pub mod alloc;
pub mod catalog;
pub mod error;
pub mod mig;
#[cfg(feature = "nvml")]
pub mod nvml;
pub mod snapshot;
pub mod topology;

pub use error::{CoreError, Result};
