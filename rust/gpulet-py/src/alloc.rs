//! Allocation and ledger bindings: `preferred`, `score`, `select_replicas`, `Ledger`,
//! `ContainerOwner`, `ClaimOwner`, `GpuUsage`, `Utilisation`, `Allocation`, `Reconciliation`.
//!
//! Devices cross the boundary as NVIDIA writes them: a whole GPU is its UUID (`str`), a shared
//! replica `"<UUID>::<n>"` (`str`), a MIG slice the tuple `(parent UUID, profile id, start)`,
//! a replica of one `(parent UUID, profile id, start, replica)`, a MIG device without a
//! placement `(parent UUID, device ID)`. The ledger's operations that the kubelet's calls wait
//! on (`allocate`, `allocate_pending`, `reconcile`) run with the GIL released.

use std::collections::HashMap;
use std::sync::Arc;

use gpulet_core::alloc::{
    self as core_alloc, Device, GpuRegistration, Ledger, MigReplicas, Owner, OwnerKind, Path,
    Policy, ReplicaPolicy, ReplicaRequest, PENDING_NAMESPACE, SHARED_NAMESPACE,
};
use gpulet_core::CoreError;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::errors::{to_py, CoreResultExt};
use crate::nvml::PyTopology;

fn invalid(message: String) -> PyErr {
    to_py(CoreError::InvalidArgument(message))
}

fn gpu_indices(values: &[i64], what: &str) -> PyResult<Vec<usize>> {
    values
        .iter()
        .map(|&v| {
            usize::try_from(v)
                .map_err(|_| invalid(format!("{what} names GPU {v}; GPU indices are 0 or more")))
        })
        .collect()
}

fn count(value: i64, what: &str) -> PyResult<usize> {
    usize::try_from(value).map_err(|_| invalid(format!("{what} must be 0 or more, got {value}")))
}

/// Preferred allocation of `size` whole GPUs (see `gpulet.alloc.preferred`).
#[pyfunction]
#[pyo3(signature = (topo, available, required = Vec::new(), *, size, policy = "best-effort"))]
fn preferred(
    py: Python<'_>,
    topo: PyRef<'_, PyTopology>,
    available: Vec<i64>,
    required: Vec<i64>,
    size: i64,
    policy: &str,
) -> PyResult<Vec<usize>> {
    let policy = Policy::from_name(policy).py()?;
    let available = gpu_indices(&available, "available")?;
    let required = gpu_indices(&required, "required")?;
    let size = count(size, "size")?;
    let topo = topo.inner.clone();
    py.detach(move || core_alloc::preferred_with(&topo, policy, &available, &required, size))
        .py()
}

/// Build the preferred-allocation tables of `topo` for `sizes` (default: every size) now, so
/// that no later call pays for them.
#[pyfunction]
#[pyo3(signature = (topo, sizes = None))]
fn prepare(py: Python<'_>, topo: PyRef<'_, PyTopology>, sizes: Option<Vec<i64>>) -> PyResult<()> {
    let n = topo.inner.gpu_count();
    let sizes = match sizes {
        Some(s) => s
            .iter()
            .map(|&k| count(k, "size"))
            .collect::<PyResult<Vec<_>>>()?,
        None => (1..=n).collect(),
    };
    let topo = topo.inner.clone();
    py.detach(move || {
        let a = core_alloc::allocator_for(&topo);
        for k in sizes {
            a.prepare(k);
        }
    });
    Ok(())
}

/// Score of a set of GPUs: the sum of its pair scores.
#[pyfunction]
fn score(topo: PyRef<'_, PyTopology>, gpus: Vec<i64>) -> PyResult<i64> {
    let gpus = gpu_indices(&gpus, "the set")?;
    core_alloc::score(&topo.inner, &gpus).py()
}

/// Choose `size` replica (or MIG device) ids (see `gpulet.alloc.select_replicas`).
#[pyfunction]
#[pyo3(signature = (available, size, required = Vec::new(), *, policy = "distributed", strict = false, allocated = None, parents = None))]
#[allow(clippy::too_many_arguments)]
fn select_replicas(
    available: Vec<String>,
    size: i64,
    required: Vec<String>,
    policy: &str,
    strict: bool,
    allocated: Option<HashMap<String, i64>>,
    parents: Option<HashMap<String, String>>,
) -> PyResult<Vec<String>> {
    let policy = ReplicaPolicy::from_name(policy).py()?;
    let size = count(size, "size")?;
    let allocated = allocated
        .unwrap_or_default()
        .into_iter()
        .map(|(gpu, n)| Ok((gpu.clone(), count(n, &format!("allocated[{gpu:?}]"))?)))
        .collect::<PyResult<HashMap<String, usize>>>()?;
    let parents = parents.unwrap_or_default();
    core_alloc::select_replicas(&ReplicaRequest {
        available: &available,
        required: &required,
        size,
        policy,
        strict,
        allocated: &allocated,
        parents: &parents,
    })
    .py()
}

fn path_from(name: &str) -> PyResult<Path> {
    Path::from_name(name).py()
}

fn opt_repr(s: Option<&str>) -> String {
    s.map_or_else(|| "None".to_string(), |s| format!("{s:?}"))
}

/// A container holding devices (the device plugin's unit of attribution).
#[pyclass(frozen, eq, hash, name = "ContainerOwner", module = "gpulet._core")]
#[derive(PartialEq, Eq, Hash)]
pub struct PyContainerOwner {
    inner: Arc<Owner>,
}

#[pymethods]
impl PyContainerOwner {
    #[new]
    #[pyo3(signature = (namespace, pod, container, pod_uid = None, path = "device-plugin"))]
    fn new(
        namespace: String,
        pod: String,
        container: String,
        pod_uid: Option<String>,
        path: &str,
    ) -> PyResult<Self> {
        let inner = Owner::container(path_from(path)?, namespace, pod, container, pod_uid);
        inner.validate().py()?;
        Ok(PyContainerOwner {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn namespace(&self) -> &str {
        match &self.inner.kind {
            OwnerKind::Container { namespace, .. } => namespace,
            OwnerKind::Claim { .. } => unreachable!("a ContainerOwner holds a container"),
        }
    }

    #[getter]
    fn pod(&self) -> &str {
        match &self.inner.kind {
            OwnerKind::Container { pod, .. } => pod,
            OwnerKind::Claim { .. } => unreachable!("a ContainerOwner holds a container"),
        }
    }

    #[getter]
    fn container(&self) -> &str {
        match &self.inner.kind {
            OwnerKind::Container { container, .. } => container,
            OwnerKind::Claim { .. } => unreachable!("a ContainerOwner holds a container"),
        }
    }

    #[getter]
    fn pod_uid(&self) -> Option<&str> {
        match &self.inner.kind {
            OwnerKind::Container { pod_uid, .. } => pod_uid.as_deref(),
            OwnerKind::Claim { .. } => unreachable!("a ContainerOwner holds a container"),
        }
    }

    #[getter]
    fn path(&self) -> &'static str {
        self.inner.path.name()
    }

    fn __repr__(&self) -> String {
        format!(
            "ContainerOwner(namespace={:?}, pod={:?}, container={:?}, pod_uid={}, path={:?})",
            self.namespace(),
            self.pod(),
            self.container(),
            opt_repr(self.pod_uid()),
            self.path()
        )
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }
}

/// A DRA ResourceClaim holding devices.
#[pyclass(frozen, eq, hash, name = "ClaimOwner", module = "gpulet._core")]
#[derive(PartialEq, Eq, Hash)]
pub struct PyClaimOwner {
    inner: Arc<Owner>,
}

#[pymethods]
impl PyClaimOwner {
    #[new]
    #[pyo3(signature = (uid, path = "dra"))]
    fn new(uid: String, path: &str) -> PyResult<Self> {
        let inner = Owner::claim(path_from(path)?, uid);
        inner.validate().py()?;
        Ok(PyClaimOwner {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn uid(&self) -> &str {
        match &self.inner.kind {
            OwnerKind::Claim { uid } => uid,
            OwnerKind::Container { .. } => unreachable!("a ClaimOwner holds a claim"),
        }
    }

    #[getter]
    fn path(&self) -> &'static str {
        self.inner.path.name()
    }

    fn __repr__(&self) -> String {
        format!("ClaimOwner(uid={:?}, path={:?})", self.uid(), self.path())
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }
}

/// Call `f` with the core owner behind a Python owner object.
fn with_owner<T>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&Arc<Owner>) -> T) -> PyResult<T> {
    if let Ok(c) = obj.cast::<PyContainerOwner>() {
        return Ok(f(&c.get().inner));
    }
    if let Ok(c) = obj.cast::<PyClaimOwner>() {
        return Ok(f(&c.get().inner));
    }
    Err(PyTypeError::new_err(format!(
        "owner must be a ContainerOwner or a ClaimOwner, got {}",
        obj.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    )))
}

fn owner_to_py(py: Python<'_>, owner: Owner) -> PyResult<Py<PyAny>> {
    Ok(match owner.kind {
        OwnerKind::Container { .. } => Py::new(
            py,
            PyContainerOwner {
                inner: Arc::new(owner),
            },
        )?
        .into_any(),
        OwnerKind::Claim { .. } => Py::new(
            py,
            PyClaimOwner {
                inner: Arc::new(owner),
            },
        )?
        .into_any(),
    })
}

fn device_from(obj: &Bound<'_, PyAny>) -> PyResult<Device> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Device::parse(s.to_str()?).py();
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        let slice = |profile_id: i64, start: i64| -> PyResult<(u32, u32)> {
            let id = u32::try_from(profile_id)
                .map_err(|_| invalid(format!("MIG profile id {profile_id} is out of range")))?;
            let start = u32::try_from(start)
                .map_err(|_| invalid(format!("MIG placement start {start} is out of range")))?;
            Ok((id, start))
        };
        match t.len() {
            3 => {
                if let Ok((parent, profile_id, start)) = t.extract::<(String, i64, i64)>() {
                    let (id, start) = slice(profile_id, start)?;
                    return Ok(Device::mig(parent, id, start));
                }
            }
            4 => {
                if let Ok((parent, profile_id, start, index)) =
                    t.extract::<(String, i64, i64, i64)>()
                {
                    let (id, start) = slice(profile_id, start)?;
                    let index = u32::try_from(index)
                        .map_err(|_| invalid(format!("MIG replica {index} is out of range")))?;
                    return Ok(Device::mig_replica(parent, id, start, index));
                }
            }
            2 => {
                if let Ok((parent, id)) = t.extract::<(String, String)>() {
                    return Ok(Device::mig_unplaced(parent, id));
                }
            }
            _ => {}
        }
    }
    Err(PyTypeError::new_err(format!(
        "a device is a GPU UUID, a replica \"<UUID>::<n>\", a MIG slice (parent UUID, profile \
         id, start), a replica of one (parent UUID, profile id, start, replica) or a MIG device \
         without a placement (parent UUID, device ID), got {}",
        obj.repr().map(|r| r.to_string()).unwrap_or_default()
    )))
}

fn devices_from(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Device>> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "devices must be a sequence of devices, not one string; wrap it in a list",
        ));
    }
    obj.try_iter()?.map(|d| device_from(&d?)).collect()
}

fn device_to_py(py: Python<'_>, d: &Device) -> PyResult<Py<PyAny>> {
    Ok(match d {
        Device::Gpu { uuid } => PyString::new(py, uuid).into_any().unbind(),
        Device::Replica { .. } => PyString::new(py, &d.to_string()).into_any().unbind(),
        Device::Mig {
            parent,
            profile_id,
            start,
        } => (parent.as_str(), *profile_id, *start)
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Device::MigReplica {
            parent,
            profile_id,
            start,
            index,
        } => (parent.as_str(), *profile_id, *start, *index)
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Device::MigUnplaced { parent, id } => (parent.as_str(), id.as_str())
            .into_pyobject(py)?
            .into_any()
            .unbind(),
    })
}

fn devices_to_py(py: Python<'_>, ds: &[Device]) -> PyResult<Vec<Py<PyAny>>> {
    ds.iter().map(|d| device_to_py(py, d)).collect()
}

/// One GPU's state in the ledger.
#[pyclass(frozen, get_all, name = "GpuUsage", module = "gpulet._core")]
pub struct PyGpuUsage {
    uuid: String,
    replicas: u32,
    model: Option<String>,
    serves: Option<&'static str>,
    held_path: Option<&'static str>,
    whole: Option<Py<PyAny>>,
    replicas_held: u32,
    mig_slices_held: u32,
    mig_replicas: u32,
    mig_replicas_held: u32,
}

#[pymethods]
impl PyGpuUsage {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let whole = match &self.whole {
            Some(o) => o.bind(py).repr()?.to_string(),
            None => "None".to_string(),
        };
        Ok(format!(
            "GpuUsage(uuid={:?}, replicas={}, model={}, serves={}, held_path={}, whole={whole}, \
             replicas_held={}, mig_slices_held={}, mig_replicas={}, mig_replicas_held={})",
            self.uuid,
            self.replicas,
            opt_repr(self.model.as_deref()),
            opt_repr(self.serves),
            opt_repr(self.held_path),
            self.replicas_held,
            self.mig_slices_held,
            self.mig_replicas,
            self.mig_replicas_held
        ))
    }
}

/// Node-wide counts of the ledger.
#[pyclass(frozen, eq, get_all, name = "Utilisation", module = "gpulet._core")]
#[derive(PartialEq)]
pub struct PyUtilisation {
    gpus: usize,
    gpus_held_whole: usize,
    gpus_shared: usize,
    gpus_free: usize,
    replicas: usize,
    replicas_held: usize,
    mig_slices_held: usize,
    mig_replicas_held: usize,
    owners: usize,
    owners_device_plugin: usize,
    owners_dra: usize,
}

#[pymethods]
impl PyUtilisation {
    fn __repr__(&self) -> String {
        format!(
            "Utilisation(gpus={}, gpus_held_whole={}, gpus_shared={}, gpus_free={}, replicas={}, \
             replicas_held={}, mig_slices_held={}, mig_replicas_held={}, owners={}, \
             owners_device_plugin={}, owners_dra={})",
            self.gpus,
            self.gpus_held_whole,
            self.gpus_shared,
            self.gpus_free,
            self.replicas,
            self.replicas_held,
            self.mig_slices_held,
            self.mig_replicas_held,
            self.owners,
            self.owners_device_plugin,
            self.owners_dra
        )
    }
}

/// An owner and its devices, as Python objects.
type Holding = (Py<PyAny>, Vec<Py<PyAny>>);

fn holdings_to_py(py: Python<'_>, hs: Vec<(Owner, Vec<Device>)>) -> PyResult<Vec<Holding>> {
    hs.into_iter()
        .map(|(o, ds)| Ok((owner_to_py(py, o)?, devices_to_py(py, &ds)?)))
        .collect()
}

/// One owner's holding in the ledger, with its place in the allocation sequence.
#[pyclass(frozen, get_all, name = "Allocation", module = "gpulet._core")]
pub struct PyAllocation {
    owner: Py<PyAny>,
    devices: Vec<Py<PyAny>>,
    seq: u64,
    pending: bool,
}

#[pymethods]
impl PyAllocation {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let devices = self
            .devices
            .iter()
            .map(|d| Ok(d.bind(py).repr()?.to_string()))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(format!(
            "Allocation(owner={}, devices=[{}], seq={}, pending={})",
            self.owner.bind(py).repr()?,
            devices.join(", "),
            self.seq,
            if self.pending { "True" } else { "False" }
        ))
    }
}

/// What one reconciliation with the kubelet's PodResources List changed.
#[pyclass(frozen, get_all, name = "Reconciliation", module = "gpulet._core")]
pub struct PyReconciliation {
    attributed: Vec<Holding>,
    released: Vec<Holding>,
    reassigned: Vec<Holding>,
    conflicts: Vec<(Py<PyAny>, Vec<Py<PyAny>>, String)>,
}

#[pymethods]
impl PyReconciliation {
    fn __repr__(&self) -> String {
        format!(
            "Reconciliation(attributed={}, released={}, reassigned={}, conflicts={})",
            self.attributed.len(),
            self.released.len(),
            self.reassigned.len(),
            self.conflicts.len()
        )
    }
}

fn mig_replicas_from(
    uuid: &str,
    mig_replicas: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<MigReplicas>> {
    let Some(d) = mig_replicas else {
        return Ok(Vec::new());
    };
    d.iter()
        .map(|(k, v)| {
            let (profile_id, start) = k.extract::<(i64, i64)>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "GPU {uuid}: mig_replicas maps (profile id, start) to a replica count; got \
                     the key {}",
                    k.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?;
            let replicas: i64 = v.extract()?;
            let field = |what: &str, n: i64| {
                u32::try_from(n).map_err(|_| {
                    invalid(format!(
                        "GPU {uuid}: mig_replicas[({profile_id}, {start})] has {what} {n} out of \
                         range"
                    ))
                })
            };
            Ok(MigReplicas {
                profile_id: field("profile id", profile_id)?,
                start: field("start", start)?,
                replicas: field("replica count", replicas)?,
            })
        })
        .collect()
}

fn listed_from(obj: &Bound<'_, PyAny>) -> PyResult<Vec<(Owner, Vec<Device>)>> {
    obj.try_iter()?
        .map(|item| {
            let item = item?;
            let t = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err("each listed entry is a tuple (owner, devices)")
            })?;
            if t.len() != 2 {
                return Err(PyTypeError::new_err(
                    "each listed entry is a tuple (owner, devices)",
                ));
            }
            let owner = with_owner(&t.get_item(0)?, |o| (**o).clone())?;
            Ok((owner, devices_from(&t.get_item(1)?)?))
        })
        .collect()
}

/// Who holds which GPU, MIG slice and replica (see `gpulet.alloc.Ledger`).
#[pyclass(frozen, name = "Ledger", module = "gpulet._core")]
pub struct PyLedger {
    inner: Ledger,
}

#[pymethods]
impl PyLedger {
    #[new]
    fn new() -> Self {
        PyLedger {
            inner: Ledger::new(),
        }
    }

    #[pyo3(signature = (uuid, replicas = 0, model = None, serves = None, mig_replicas = None))]
    fn register_gpu(
        &self,
        uuid: String,
        replicas: i64,
        model: Option<String>,
        serves: Option<&str>,
        mig_replicas: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let mig_replicas = mig_replicas_from(&uuid, mig_replicas)?;
        let replicas = u32::try_from(replicas).map_err(|_| {
            invalid(format!(
                "GPU {uuid}: replicas must be 0 or more, got {replicas}"
            ))
        })?;
        let serves = serves.map(path_from).transpose()?;
        self.inner
            .register_gpu(&GpuRegistration {
                uuid,
                replicas,
                model,
                serves,
                mig_replicas,
            })
            .py()
    }

    fn unregister_gpu(&self, uuid: &str) -> PyResult<()> {
        self.inner.unregister_gpu(uuid).py()
    }

    fn allocate(
        &self,
        py: Python<'_>,
        owner: &Bound<'_, PyAny>,
        devices: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let devices = devices_from(devices)?;
        let owner = with_owner(owner, Arc::clone)?;
        py.detach(|| self.inner.allocate_shared(&owner, devices))
            .py()
    }

    /// Returns the device-plugin owners released because the kubelet gave their devices to
    /// the new pending owners.
    fn allocate_pending(
        &self,
        py: Python<'_>,
        resource: &str,
        requests: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Holding>> {
        if requests.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "requests must be a sequence of device sequences, one per container",
            ));
        }
        let requests = requests
            .try_iter()?
            .map(|r| devices_from(&r?))
            .collect::<PyResult<Vec<_>>>()?;
        let done = py
            .detach(|| self.inner.allocate_pending(resource, requests))
            .py()?;
        let released: Vec<(Owner, Vec<Device>)> =
            done.into_iter().flat_map(|p| p.released).collect();
        if released.is_empty() {
            return Ok(Vec::new());
        }
        holdings_to_py(py, released)
    }

    fn mark(&self) -> u64 {
        self.inner.mark()
    }

    fn reconcile(
        &self,
        py: Python<'_>,
        listed: &Bound<'_, PyAny>,
        mark: i64,
    ) -> PyResult<PyReconciliation> {
        let mark = u64::try_from(mark)
            .map_err(|_| invalid(format!("mark must be 0 or more, got {mark}")))?;
        let listed = listed_from(listed)?;
        let r = py.detach(|| self.inner.reconcile(listed, mark)).py()?;
        Ok(PyReconciliation {
            attributed: holdings_to_py(py, r.attributed)?,
            released: holdings_to_py(py, r.released)?,
            reassigned: holdings_to_py(py, r.reassigned)?,
            conflicts: r
                .conflicts
                .into_iter()
                .map(|(o, ds, e)| Ok((owner_to_py(py, o)?, devices_to_py(py, &ds)?, e.to_string())))
                .collect::<PyResult<Vec<_>>>()?,
        })
    }

    fn release(&self, py: Python<'_>, owner: &Bound<'_, PyAny>) -> PyResult<Vec<Py<PyAny>>> {
        let released = with_owner(owner, |o| self.inner.release(o))?;
        devices_to_py(py, &released)
    }

    fn release_path(&self, py: Python<'_>, path: &str) -> PyResult<Vec<Holding>> {
        let path = path_from(path)?;
        holdings_to_py(py, self.inner.release_path(path))
    }

    #[pyo3(signature = (path = None))]
    fn allocations(&self, py: Python<'_>, path: Option<&str>) -> PyResult<Vec<PyAllocation>> {
        let path = path.map(path_from).transpose()?;
        self.inner
            .allocations(path)
            .into_iter()
            .map(|a| {
                Ok(PyAllocation {
                    owner: owner_to_py(py, a.owner)?,
                    devices: devices_to_py(py, &a.devices)?,
                    seq: a.seq,
                    pending: a.pending,
                })
            })
            .collect()
    }

    #[pyo3(signature = (devices, path = None))]
    fn held_per_gpu(
        &self,
        devices: &Bound<'_, PyAny>,
        path: Option<&str>,
    ) -> PyResult<HashMap<String, u32>> {
        let path = path.map(path_from).transpose()?;
        let devices = devices_from(devices)?;
        Ok(self
            .inner
            .held_per_gpu(&devices, path)
            .into_iter()
            .collect())
    }

    fn holder_of(&self, py: Python<'_>, device: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let d = device_from(device)?;
        self.inner
            .holder_of(&d)
            .py()?
            .map(|o| owner_to_py(py, o))
            .transpose()
    }

    fn devices_of(&self, py: Python<'_>, owner: &Bound<'_, PyAny>) -> PyResult<Vec<Py<PyAny>>> {
        let ds = with_owner(owner, |o| self.inner.devices_of(o))?;
        devices_to_py(py, &ds)
    }

    fn holdings(&self, py: Python<'_>) -> PyResult<Vec<Holding>> {
        holdings_to_py(py, self.inner.holdings())
    }

    #[pyo3(signature = (path = None))]
    fn free_devices(&self, py: Python<'_>, path: Option<&str>) -> PyResult<Vec<Py<PyAny>>> {
        let path = path.map(path_from).transpose()?;
        devices_to_py(py, &self.inner.free_devices(path))
    }

    fn usage(&self, py: Python<'_>) -> PyResult<Vec<PyGpuUsage>> {
        self.inner
            .usage()
            .into_iter()
            .map(|u| {
                Ok(PyGpuUsage {
                    uuid: u.uuid,
                    replicas: u.replicas,
                    model: u.model,
                    serves: u.serves.map(Path::name),
                    held_path: u.held_path.map(Path::name),
                    whole: u.whole.map(|o| owner_to_py(py, o)).transpose()?,
                    replicas_held: u.replicas_held,
                    mig_slices_held: u.mig_slices_held,
                    mig_replicas: u.mig_replicas,
                    mig_replicas_held: u.mig_replicas_held,
                })
            })
            .collect()
    }

    fn utilisation(&self) -> PyUtilisation {
        let u = self.inner.utilisation();
        PyUtilisation {
            gpus: u.gpus,
            gpus_held_whole: u.gpus_held_whole,
            gpus_shared: u.gpus_shared,
            gpus_free: u.gpus_free,
            replicas: u.replicas,
            replicas_held: u.replicas_held,
            mig_slices_held: u.mig_slices_held,
            mig_replicas_held: u.mig_replicas_held,
            owners: u.owners,
            owners_device_plugin: u.owners_device_plugin,
            owners_dra: u.owners_dra,
        }
    }

    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes = py.detach(|| self.inner.snapshot());
        PyBytes::new(py, &bytes)
    }

    fn restore(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        py.detach(|| self.inner.restore(data)).py()
    }

    #[staticmethod]
    fn from_snapshot(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = py.detach(|| Ledger::from_snapshot(data)).py()?;
        Ok(PyLedger { inner })
    }

    fn __repr__(&self) -> String {
        let u = self.inner.utilisation();
        format!("Ledger(gpus={}, owners={})", u.gpus, u.owners)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add(
        "REPLICA_SEPARATOR",
        gpulet_core::alloc::ids::REPLICA_SEPARATOR,
    )?;
    m.add("PENDING_NAMESPACE", PENDING_NAMESPACE)?;
    m.add("SHARED_NAMESPACE", SHARED_NAMESPACE)?;
    m.add_function(wrap_pyfunction!(preferred, m)?)?;
    m.add_function(wrap_pyfunction!(prepare, m)?)?;
    m.add_function(wrap_pyfunction!(score, m)?)?;
    m.add_function(wrap_pyfunction!(select_replicas, m)?)?;
    m.add_class::<PyContainerOwner>()?;
    m.add_class::<PyClaimOwner>()?;
    m.add_class::<PyGpuUsage>()?;
    m.add_class::<PyUtilisation>()?;
    m.add_class::<PyLedger>()?;
    m.add_class::<PyAllocation>()?;
    m.add_class::<PyReconciliation>()?;
    Ok(())
}
