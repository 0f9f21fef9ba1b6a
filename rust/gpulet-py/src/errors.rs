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

use gpulet_core::CoreError;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
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

/// A representative error of each core variant, for the tests of this mapping.
fn sample(variant: &str) -> PyResult<CoreError> {
    Ok(match variant {
        "LibraryNotFound" => CoreError::LibraryNotFound {
            path: "/nonexistent/libnvidia-ml.so.1".into(),
            reason: "cannot open shared object file: No such file or directory".into(),
        },
        "Nvml" => CoreError::Nvml {
            call: "nvmlDeviceGetUUID".into(),
            gpu: Some(3),
            code: 15,
            message: "device fell off the bus".into(),
        },
        "Topology" => CoreError::Topology("nvlink pair (0, 9) names a GPU outside 0..8".into()),
        "UnknownModel" => CoreError::UnknownModel {
            name: "H100-81GB".into(),
            known: "H100-80GB".into(),
        },
        "MigLayout" => CoreError::MigLayout("7g.80gb does not fit beside 1g.10gb".into()),
        "Infeasible" => CoreError::Infeasible("3 GPUs requested, 2 available".into()),
        "InvalidArgument" => CoreError::InvalidArgument("size must be at least 1".into()),
        "Conflict" => CoreError::Conflict("GPU-0 is held by the DRA driver".into()),
        "Snapshot" => CoreError::Snapshot("unknown schema version 99".into()),
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown CoreError variant {other:?}"
            )));
        }
    })
}

/// `_core._core_error(variant)`: the exception a sample `CoreError` of `variant` maps to.
#[pyfunction]
fn _core_error(py: Python<'_>, variant: &str) -> PyResult<Py<PyAny>> {
    Ok(to_py(sample(variant)?).into_value(py).into_any())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_core_error, m)?)?;
    Ok(())
}
