//! The one place where the core's [`CoreError`] becomes a Python exception.
//!
//! The exception classes are plain Python classes in `gpulet.errors` (so users can subclass,
//! pickle and document them); they are imported once and cached. Other binding files convert
//! with [`to_py`] or, on a whole result, [`CoreResultExt::py`]:
//!
//! ```ignore
//! use crate::errors::CoreResultExt;
//! let plan = py.detach(|| gpulet_core::mig::plan(model, &requests)).py()?;
//! ```
//!
//! The mapping is tested through real calls that fail with each variant
//! (`tests/unit/test_errors.py`); the module exports nothing of its own.

use gpulet_core::CoreError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The exception classes of `gpulet.errors`.
struct Classes {
    nvml: Py<PyType>,
    library_not_found: Py<PyType>,
    topology: Py<PyType>,
    unknown_model: Py<PyType>,
    mig_layout: Py<PyType>,
    infeasible: Py<PyType>,
    invalid_argument: Py<PyType>,
    conflict: Py<PyType>,
    snapshot: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || {
        let m = py.import("gpulet.errors")?;
        let class = |name: &str| -> PyResult<Py<PyType>> {
            Ok(m.getattr(name)?.cast_into::<PyType>()?.unbind())
        };
        Ok(Classes {
            nvml: class("NvmlError")?,
            library_not_found: class("NvmlLibraryNotFound")?,
            topology: class("TopologyError")?,
            unknown_model: class("UnknownModelError")?,
            mig_layout: class("MigLayoutError")?,
            infeasible: class("InfeasibleError")?,
            invalid_argument: class("InvalidArgumentError")?,
            conflict: class("ConflictError")?,
            snapshot: class("SnapshotError")?,
        })
    })
}

fn build(py: Python<'_>, e: CoreError) -> PyErr {
    let message = e.to_string();
    let c = match classes(py) {
        Ok(c) => c,
        Err(import_error) => {
            // gpulet.errors could not be imported (a broken installation): still say what failed.
            let err = PyRuntimeError::new_err(message);
            err.set_cause(py, Some(import_error));
            return err;
        }
    };
    let of = |t: &Py<PyType>| t.bind(py).clone();
    match e {
        CoreError::Nvml {
            call, gpu, code, ..
        } => PyErr::from_type(of(&c.nvml), (message, call, gpu, code)),
        CoreError::LibraryNotFound { path, .. } => {
            PyErr::from_type(of(&c.library_not_found), (message, path))
        }
        CoreError::Topology(_) => PyErr::from_type(of(&c.topology), (message,)),
        CoreError::UnknownModel { .. } => PyErr::from_type(of(&c.unknown_model), (message,)),
        CoreError::MigLayout(_) => PyErr::from_type(of(&c.mig_layout), (message,)),
        CoreError::Infeasible(_) => PyErr::from_type(of(&c.infeasible), (message,)),
        CoreError::InvalidArgument(_) => PyErr::from_type(of(&c.invalid_argument), (message,)),
        CoreError::Conflict(_) => PyErr::from_type(of(&c.conflict), (message,)),
        CoreError::Snapshot(_) => PyErr::from_type(of(&c.snapshot), (message,)),
    }
}

/// The Python exception for a core error (an instance of a `gpulet.errors` class).
pub fn to_py(e: CoreError) -> PyErr {
    Python::attach(|py| build(py, e))
}

/// `.py()` on a core result: the same result with the error as a Python exception.
pub trait CoreResultExt<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> CoreResultExt<T> for Result<T, CoreError> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
