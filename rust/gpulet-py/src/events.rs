//! Health events: `Event`, `EventRegistration`, `EventWatcher`, and `probe`.
//!
//! `EventWatcher.wait` and `probe` release the GIL while NVML runs (`py.detach`), so the health
//! monitor's thread never holds up the rest of the agent.

use std::sync::Arc;

use gpulet_core::nvml::events as core_events;
use gpulet_core::nvml::events::{EventKind, Registration};
use gpulet_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::errors::{to_py, CoreResultExt};

fn invalid(message: String) -> PyErr {
    to_py(CoreError::InvalidArgument(message))
}

/// One NVML event (or a GPU found lost).
#[pyclass(frozen, eq, name = "Event", module = "gpulet._core")]
#[derive(Clone, PartialEq)]
pub struct PyEvent {
    inner: core_events::Event,
}

#[pymethods]
impl PyEvent {
    #[new]
    #[pyo3(signature = (
        kind, gpu=None, uuid=None, data=0, gpu_instance_id=None, compute_instance_id=None,
        timestamp=None, event_type=None, detail=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        kind: &str,
        gpu: Option<u32>,
        uuid: Option<String>,
        data: u64,
        gpu_instance_id: Option<u32>,
        compute_instance_id: Option<u32>,
        timestamp: Option<f64>,
        event_type: Option<u64>,
        detail: Option<String>,
    ) -> PyResult<Self> {
        let k = EventKind::from_name(kind).ok_or_else(|| {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
            invalid(format!(
                "unknown event kind {kind:?}; expected one of {}",
                known.join(", ")
            ))
        })?;
        let timestamp_us = match timestamp {
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            Some(t) if t.is_finite() && t >= 0.0 => (t * 1e6).round() as u64,
            Some(t) => {
                return Err(invalid(format!(
                    "timestamp must be seconds since the epoch (0 or more), got {t}"
                )))
            }
        };
        Ok(PyEvent {
            inner: core_events::Event {
                kind: k,
                event_type: event_type.unwrap_or_else(|| k.event_type()),
                gpu,
                uuid,
                data,
                gpu_instance_id,
                compute_instance_id,
                timestamp_us,
                detail,
            },
        })
    }

    /// "xid", "double-bit-ecc", "single-bit-ecc", "mig-config-change", "gpu-lost" or "other".
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.name()
    }

    /// The raw nvmlEventType* value (0 for "gpu-lost").
    #[getter]
    fn event_type(&self) -> u64 {
        self.inner.event_type
    }

    /// NVML index of the GPU (None when NVML named a device the watcher could not place).
    #[getter]
    fn gpu(&self) -> Option<u32> {
        self.inner.gpu
    }

    /// UUID of the (physical) GPU, when known.
    #[getter]
    fn uuid(&self) -> Option<&str> {
        self.inner.uuid.as_deref()
    }

    /// NVML's eventData: the XID for "xid" events (999 = unknown XID).
    #[getter]
    fn data(&self) -> u64 {
        self.inner.data
    }

    /// The XID of an "xid" event, else None.
    #[getter]
    fn xid(&self) -> Option<u64> {
        self.inner.xid()
    }

    /// The MIG GPU instance the event is attributed to, if any.
    #[getter]
    fn gpu_instance_id(&self) -> Option<u32> {
        self.inner.gpu_instance_id
    }

    /// The MIG compute instance the event is attributed to, if any.
    #[getter]
    fn compute_instance_id(&self) -> Option<u32> {
        self.inner.compute_instance_id
    }

    /// When the event was received, in seconds since the Unix epoch.
    #[getter]
    fn timestamp(&self) -> f64 {
        self.inner.timestamp_us as f64 / 1e6
    }

    /// For "gpu-lost": the NVML call that found the GPU lost.
    #[getter]
    fn detail(&self) -> Option<&str> {
        self.inner.detail.as_deref()
    }

    fn __repr__(&self) -> String {
        let e = &self.inner;
        let opt = |v: Option<u32>| v.map_or_else(|| "None".to_owned(), |v| v.to_string());
        format!(
            "Event(kind={:?}, gpu={}, uuid={}, data={}, gpu_instance_id={}, compute_instance_id={})",
            e.kind.name(),
            opt(e.gpu),
            e.uuid
                .as_deref()
                .map_or_else(|| "None".to_owned(), |u| format!("{u:?}")),
            e.data,
            opt(e.gpu_instance_id),
            opt(e.compute_instance_id),
        )
    }
}

/// What registering one GPU for events came to.
#[pyclass(
    frozen,
    eq,
    get_all,
    name = "EventRegistration",
    module = "gpulet._core"
)]
#[derive(Clone, PartialEq)]
pub struct PyEventRegistration {
    /// NVML index.
    gpu: u32,
    /// UUID, once the GPU has answered it.
    uuid: Option<String>,
    /// The nvmlEventType* bits registered (0 unless status is "registered").
    mask: u64,
    /// "registered", "not-supported", "lost" or "failed".
    status: &'static str,
    /// Why the GPU is not registered, if it is not.
    error: Option<String>,
}

impl From<Registration> for PyEventRegistration {
    fn from(r: Registration) -> Self {
        PyEventRegistration {
            gpu: r.gpu,
            uuid: r.uuid,
            mask: r.mask,
            status: r.status.name(),
            error: r.error,
        }
    }
}

#[pymethods]
impl PyEventRegistration {
    fn __repr__(&self) -> String {
        format!(
            "EventRegistration(gpu={}, uuid={:?}, mask={:#x}, status={:?})",
            self.gpu, self.uuid, self.mask, self.status
        )
    }
}

/// Watches GPUs for XID, ECC and MIG-change events (one NVML event set).
#[pyclass(frozen, name = "EventWatcher", module = "gpulet._core")]
pub struct PyEventWatcher {
    inner: Arc<core_events::EventWatcher>,
}

#[pymethods]
impl PyEventWatcher {
    #[new]
    #[pyo3(signature = (library_path=None, gpus=None))]
    fn py_new(
        py: Python<'_>,
        library_path: Option<String>,
        gpus: Option<Vec<u32>>,
    ) -> PyResult<Self> {
        let watcher = py
            .detach(|| core_events::EventWatcher::open(library_path.as_deref(), gpus.as_deref()))
            .py()?;
        Ok(PyEventWatcher {
            inner: Arc::new(watcher),
        })
    }

    /// Wait up to `timeout_ms` milliseconds; every event available then (empty on timeout).
    fn wait(&self, py: Python<'_>, timeout_ms: u32) -> PyResult<Vec<PyEvent>> {
        let watcher = Arc::clone(&self.inner);
        let events = py.detach(move || watcher.wait(timeout_ms)).py()?;
        Ok(events.into_iter().map(|inner| PyEvent { inner }).collect())
    }

    /// Register GPU `gpu` again now (e.g. after a reset).
    fn rearm(&self, py: Python<'_>, gpu: u32) -> PyResult<PyEventRegistration> {
        let watcher = Arc::clone(&self.inner);
        let reg = py.detach(move || watcher.rearm(gpu)).py()?;
        Ok(reg.into())
    }

    /// What registering each watched GPU came to.
    fn registrations(&self) -> Vec<PyEventRegistration> {
        self.inner
            .registrations()
            .into_iter()
            .map(PyEventRegistration::from)
            .collect()
    }

    /// Close the watcher without waiting: the event set is freed now, or, while a wait is in
    /// flight (however long NVML holds it), when that wait returns. Idempotent.
    fn close(&self, py: Python<'_>) {
        let watcher = Arc::clone(&self.inner);
        py.detach(move || watcher.close());
    }

    /// Whether close() was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        let regs = self.inner.registrations();
        let watched = regs
            .iter()
            .filter(|r| r.status == core_events::RegistrationStatus::Registered)
            .count();
        format!(
            "EventWatcher(gpus={}, registered={watched}, closed={})",
            regs.len(),
            self.inner.is_closed()
        )
    }
}

/// Re-probe GPU `gpu` with cheap read-only NVML calls; raises NvmlError naming the failing call
/// (code 15 for a GPU that fell off the bus).
#[pyfunction]
#[pyo3(signature = (gpu, library_path=None))]
fn probe(py: Python<'_>, gpu: u32, library_path: Option<String>) -> PyResult<()> {
    py.detach(|| core_events::probe_gpu(library_path.as_deref(), gpu))
        .py()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEvent>()?;
    m.add_class::<PyEventRegistration>()?;
    m.add_class::<PyEventWatcher>()?;
    m.add_function(wrap_pyfunction!(probe, m)?)?;
    Ok(())
}
