//! The core's one error type. The Python bindings map each variant to one exception class of
//! `gpulet.errors` (in one place: gpulet-py's `errors.rs`).

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// libnvidia-ml.so.1 (or the overriding path) could not be loaded.
    #[error("NVML library not found: {path} could not be loaded ({reason}); install the NVIDIA driver, or set GPULET_NVML_LIB to the library's path")]
    LibraryNotFound { path: String, reason: String },

    /// An NVML call returned an error. `gpu` is the NVML index when the call was about one GPU.
    #[error("{call}{} failed: {message} (NVML error {code})", gpu.map(|g| format!(" on GPU {g}")).unwrap_or_default())]
    Nvml {
        call: String,
        gpu: Option<u32>,
        code: u32,
        message: String,
    },

    /// A topology given by the caller is inconsistent.
    #[error("invalid topology: {0}")]
    Topology(String),

    /// A model name, PCI id or product name that the catalog does not know.
    #[error("unknown GPU model {name:?}; known models: {known}")]
    UnknownModel { name: String, known: String },

    /// A MIG layout or request that cannot exist on the model.
    #[error("invalid MIG layout: {0}")]
    MigLayout(String),

    /// A request that no placement can satisfy.
    #[error("does not fit: {0}")]
    Infeasible(String),

    /// An argument outside its domain.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The ledger refused an operation (device held elsewhere, over-allocation).
    #[error("conflict: {0}")]
    Conflict(String),

    /// A snapshot could not be decoded.
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
