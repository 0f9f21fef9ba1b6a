//! Discovery and topology classes: `Topology`, `Gpu`, `MigDevice`, `Node`, `MigProfileInfo`,
//! and the functions `discover` and `mig_profiles`.
//!
//! Every class is frozen (immutable after construction). Other binding files take a topology as
//! `&Bound<'_, PyTopology>` (or `PyRef<'_, PyTopology>`) and read `.get().inner`, an
//! `Arc<gpulet_core::topology::Topology>` they can clone into a `py.detach` closure.

use std::sync::Arc;

use gpulet_core::nvml as core_nvml;
use gpulet_core::topology::{PcieLevel, Topology};
use gpulet_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors::CoreResultExt;

fn topology_error(message: String) -> PyErr {
    crate::errors::to_py(CoreError::Topology(message))
}

/// A GPU pair key of a `nvlinks=` or `pcie=` mapping, as given (the core checks it).
fn extract_pair(key: &Bound<'_, PyAny>, what: &str) -> PyResult<(i64, i64)> {
    key.extract().map_err(|_| {
        topology_error(format!(
            "{what} key {} is not a pair of GPU indices such as (0, 1)",
            repr(key)
        ))
    })
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unprintable>".to_owned())
}

/// The items of a mapping argument, in its iteration order.
fn items<'py>(
    obj: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    let items = obj.call_method0("items").map_err(|_| {
        topology_error(format!(
            "{what} must be a mapping of GPU pairs, got {}",
            repr(obj)
        ))
    })?;
    items
        .try_iter()?
        .map(|item| item?.extract::<(Bound<'py, PyAny>, Bound<'py, PyAny>)>())
        .collect()
}

/// The link matrix between the GPUs of one node (`gpulet.Topology`).
#[pyclass(frozen, eq, hash, name = "Topology", module = "gpulet._core")]
#[derive(PartialEq, Eq, Hash)]
pub struct PyTopology {
    pub inner: Arc<Topology>,
}

impl PyTopology {
    pub fn new_from(inner: Topology) -> Self {
        PyTopology {
            inner: Arc::new(inner),
        }
    }
}

#[pymethods]
impl PyTopology {
    #[new]
    #[pyo3(signature = (gpu_count, nvlinks=None, pcie=None, numa=None, nvswitch=false))]
    fn py_new(
        py: Python<'_>,
        gpu_count: i64,
        nvlinks: Option<&Bound<'_, PyAny>>,
        pcie: Option<&Bound<'_, PyAny>>,
        numa: Option<Vec<i32>>,
        nvswitch: bool,
    ) -> PyResult<Self> {
        let mut links = Vec::new();
        if let Some(m) = nvlinks {
            for (k, v) in items(m, "nvlinks")? {
                let pair = extract_pair(&k, "nvlink")?;
                let count: u32 = v.extract().map_err(|_| {
                    topology_error(format!(
                        "nvlink pair {} has link count {}; expected a whole number 0 or more",
                        repr(&k),
                        repr(&v)
                    ))
                })?;
                links.push((pair, count));
            }
        }
        let mut levels = Vec::new();
        if let Some(m) = pcie {
            for (k, v) in items(m, "pcie")? {
                let pair = extract_pair(&k, "pcie")?;
                let name: String = v.extract().map_err(|_| {
                    topology_error(format!(
                        "pcie pair {} has level {}; expected a level name such as \"single-switch\"",
                        repr(&k),
                        repr(&v)
                    ))
                })?;
                levels.push((pair, PcieLevel::from_name(&name).py()?));
            }
        }
        let t = py
            .detach(|| Topology::from_signed(gpu_count, &links, &levels, numa, nvswitch))
            .py()?;
        Ok(PyTopology::new_from(t))
    }

    /// Number of GPUs.
    #[getter]
    fn gpu_count(&self) -> usize {
        self.inner.gpu_count()
    }

    /// Direct NVLinks between GPUs `a` and `b` (0 when a == b).
    fn nvlinks(&self, a: i64, b: i64) -> PyResult<u32> {
        self.inner.try_nvlinks(a, b).py()
    }

    /// PCIe level between two distinct GPUs, e.g. "single-switch".
    fn pcie(&self, a: i64, b: i64) -> PyResult<&'static str> {
        Ok(self.inner.try_pcie(a, b).py()?.name())
    }

    /// NUMA node of each GPU, or None when unknown.
    #[getter]
    fn numa(&self) -> Option<Vec<i32>> {
        self.inner.numa().map(<[i32]>::to_vec)
    }

    /// Whether the GPUs reach each other through NVSwitches.
    #[getter]
    fn nvswitch(&self) -> bool {
        self.inner.nvswitch()
    }

    /// Every unordered pair (a < b) with direct NVLinks, and its link count.
    fn nvlink_pairs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for ((a, b), l) in self.inner.nvlink_pairs() {
            d.set_item((a, b), l)?;
        }
        Ok(d)
    }

    /// Every unordered pair (a < b) and its PCIe level.
    fn pcie_pairs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for ((a, b), l) in self.inner.pcie_pairs() {
            d.set_item((a, b), l.name())?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let t = &self.inner;
        let links: Vec<String> = t
            .nvlink_pairs()
            .iter()
            .map(|((a, b), l)| format!("({a}, {b}): {l}"))
            .collect();
        let levels: Vec<String> = t
            .explicit_pcie_pairs()
            .iter()
            .map(|((a, b), l)| format!("({a}, {b}): {:?}", l.name()))
            .collect();
        let numa = match t.numa() {
            Some(n) => format!("{n:?}"),
            None => "None".to_owned(),
        };
        format!(
            "Topology(gpu_count={}, nvlinks={{{}}}, pcie={{{}}}, numa={numa}, nvswitch={})",
            t.gpu_count(),
            links.join(", "),
            levels.join(", "),
            if t.nvswitch() { "True" } else { "False" }
        )
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let this = slf.get();
        let links = PyDict::new(py);
        for ((a, b), l) in this.inner.nvlink_pairs() {
            links.set_item((a, b), l)?;
        }
        let levels = PyDict::new(py);
        for ((a, b), l) in this.inner.explicit_pcie_pairs() {
            levels.set_item((a, b), l.name())?;
        }
        let args = (
            this.inner.gpu_count(),
            links,
            levels,
            this.inner.numa().map(<[i32]>::to_vec),
            this.inner.nvswitch(),
        );
        Ok((slf.get_type().into_any(), args.into_pyobject(py)?))
    }
}

/// One existing MIG device.
#[pyclass(frozen, eq, name = "MigDevice", module = "gpulet._core")]
#[derive(PartialEq)]
pub struct PyMigDevice {
    inner: core_nvml::MigDevice,
}

#[pymethods]
impl PyMigDevice {
    #[getter]
    fn index(&self) -> u32 {
        self.inner.index
    }
    #[getter]
    fn uuid(&self) -> &str {
        &self.inner.uuid
    }
    #[getter]
    fn gpu_instance_id(&self) -> u32 {
        self.inner.gpu_instance_id
    }
    #[getter]
    fn compute_instance_id(&self) -> u32 {
        self.inner.compute_instance_id
    }
    #[getter]
    fn profile_id(&self) -> Option<u32> {
        self.inner.profile_id
    }
    #[getter]
    fn profile_name(&self) -> Option<&str> {
        self.inner.profile_name.as_deref()
    }
    #[getter]
    fn placement_start(&self) -> Option<u32> {
        self.inner.placement_start
    }
    #[getter]
    fn placement_size(&self) -> Option<u32> {
        self.inner.placement_size
    }
    #[getter]
    fn compute_slices(&self) -> Option<u32> {
        self.inner.compute_slices
    }
    #[getter]
    fn gpu_instance_slices(&self) -> Option<u32> {
        self.inner.gpu_instance_slices
    }
    #[getter]
    fn memory_bytes(&self) -> u64 {
        self.inner.memory_bytes
    }

    fn __repr__(&self) -> String {
        let m = &self.inner;
        format!(
            "MigDevice(uuid={:?}, profile={}, placement={}, gpu_instance_id={}, compute_instance_id={})",
            m.uuid,
            m.profile_name.as_deref().map_or("None".to_owned(), |n| format!("{n:?}")),
            match (m.placement_start, m.placement_size) {
                (Some(s), Some(z)) => format!("({s}, {z})"),
                _ => "None".to_owned(),
            },
            m.gpu_instance_id,
            m.compute_instance_id
        )
    }
}

/// One physical GPU as NVML reports it.
#[pyclass(frozen, eq, name = "Gpu", module = "gpulet._core")]
pub struct PyGpu {
    inner: core_nvml::Gpu,
    mig_devices: Vec<Py<PyMigDevice>>,
}

impl PartialEq for PyGpu {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

#[pymethods]
impl PyGpu {
    #[getter]
    fn index(&self) -> u32 {
        self.inner.index
    }
    #[getter]
    fn minor(&self) -> u32 {
        self.inner.minor
    }
    #[getter]
    fn uuid(&self) -> &str {
        &self.inner.uuid
    }
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }
    #[getter]
    fn serial(&self) -> Option<&str> {
        self.inner.serial.as_deref()
    }
    #[getter]
    fn memory_bytes(&self) -> u64 {
        self.inner.memory_bytes
    }
    #[getter]
    fn compute_capability(&self) -> (u32, u32) {
        self.inner.compute_capability
    }
    #[getter]
    fn architecture(&self) -> &str {
        &self.inner.architecture
    }
    #[getter]
    fn pci_bus_id(&self) -> &str {
        &self.inner.pci_bus_id
    }
    #[getter]
    fn pci_device_id(&self) -> u32 {
        self.inner.pci_device_id
    }
    #[getter]
    fn numa_node(&self) -> Option<i32> {
        self.inner.numa_node
    }
    #[getter]
    fn cpu_affinity(&self) -> Vec<u32> {
        self.inner.cpu_affinity.clone()
    }
    #[getter]
    fn mig_capable(&self) -> bool {
        self.inner.mig_capable
    }
    #[getter]
    fn mig_enabled(&self) -> bool {
        self.inner.mig_enabled
    }
    #[getter]
    fn mig_pending(&self) -> bool {
        self.inner.mig_pending
    }
    #[getter]
    fn mig_devices(&self, py: Python<'_>) -> Vec<Py<PyMigDevice>> {
        self.mig_devices.iter().map(|m| m.clone_ref(py)).collect()
    }
    #[getter]
    fn nvlinks(&self) -> u32 {
        self.inner.nvlinks
    }
    #[getter]
    fn nvswitch_links(&self) -> u32 {
        self.inner.nvswitch_links
    }

    fn __repr__(&self) -> String {
        let g = &self.inner;
        format!(
            "Gpu(index={}, name={:?}, uuid={:?}, pci_bus_id={:?}, mig_enabled={})",
            g.index,
            g.name,
            g.uuid,
            g.pci_bus_id,
            if g.mig_enabled { "True" } else { "False" }
        )
    }
}

/// The node: GPUs, topology and driver versions.
#[pyclass(frozen, eq, name = "Node", module = "gpulet._core")]
pub struct PyNode {
    inner: core_nvml::Node,
    gpus: Vec<Py<PyGpu>>,
    topology: Py<PyTopology>,
}

impl PartialEq for PyNode {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl PyNode {
    fn build(py: Python<'_>, node: core_nvml::Node) -> PyResult<Self> {
        let mut gpus = Vec::with_capacity(node.gpus.len());
        for g in &node.gpus {
            let mig_devices = g
                .mig_devices
                .iter()
                .map(|m| Py::new(py, PyMigDevice { inner: m.clone() }))
                .collect::<PyResult<Vec<_>>>()?;
            gpus.push(Py::new(
                py,
                PyGpu {
                    inner: g.clone(),
                    mig_devices,
                },
            )?);
        }
        let topology = Py::new(py, PyTopology::new_from(node.topology.clone()))?;
        Ok(PyNode {
            inner: node,
            gpus,
            topology,
        })
    }
}

#[pymethods]
impl PyNode {
    /// Every GPU, in NVML index order.
    #[getter]
    fn gpus(&self, py: Python<'_>) -> Vec<Py<PyGpu>> {
        self.gpus.iter().map(|g| g.clone_ref(py)).collect()
    }
    #[getter]
    fn topology(&self, py: Python<'_>) -> Py<PyTopology> {
        self.topology.clone_ref(py)
    }
    #[getter]
    fn driver_version(&self) -> &str {
        &self.inner.driver_version
    }
    /// 1000 × major + 10 × minor, as NVML reports it (12080 is CUDA 12.8).
    #[getter]
    fn cuda_driver_version(&self) -> i32 {
        self.inner.cuda_driver_version
    }
    #[getter]
    fn nvml_version(&self) -> &str {
        &self.inner.nvml_version
    }

    fn __repr__(&self) -> String {
        format!(
            "Node(gpus={}, driver_version={:?}, cuda_driver_version={}, nvml_version={:?})",
            self.gpus.len(),
            self.inner.driver_version,
            self.inner.cuda_driver_version,
            self.inner.nvml_version
        )
    }
}

/// One MIG GPU-instance profile as the GPU reports it.
#[pyclass(frozen, eq, name = "MigProfileInfo", module = "gpulet._core")]
#[derive(PartialEq)]
pub struct PyMigProfileInfo {
    inner: core_nvml::MigProfileInfo,
}

crate::mig::mig_profile_methods!(PyMigProfileInfo, inner, {
    fn __repr__(&self) -> String {
        format!(
            "MigProfileInfo({})",
            crate::mig::profile_repr_fields(&self.inner)
        )
    }
});

/// Discover the node through NVML (the real library, or the one `library_path` or
/// `GPULET_NVML_LIB` names).
#[pyfunction]
#[pyo3(signature = (library_path=None))]
fn discover(py: Python<'_>, library_path: Option<String>) -> PyResult<PyNode> {
    let node = py
        .detach(|| core_nvml::discover(library_path.as_deref()))
        .py()?;
    PyNode::build(py, node)
}

/// The MIG GPU-instance profiles GPU `gpu` supports, with their possible placements (empty for a
/// GPU without MIG). Read-only.
#[pyfunction]
#[pyo3(signature = (gpu, library_path=None))]
fn mig_profiles(
    py: Python<'_>,
    gpu: u32,
    library_path: Option<String>,
) -> PyResult<Vec<PyMigProfileInfo>> {
    let profiles = py
        .detach(|| core_nvml::mig_profiles(library_path.as_deref(), gpu))
        .py()?;
    Ok(profiles
        .into_iter()
        .map(|inner| PyMigProfileInfo { inner })
        .collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTopology>()?;
    m.add_class::<PyGpu>()?;
    m.add_class::<PyMigDevice>()?;
    m.add_class::<PyNode>()?;
    m.add_class::<PyMigProfileInfo>()?;
    m.add_function(wrap_pyfunction!(discover, m)?)?;
    m.add_function(wrap_pyfunction!(mig_profiles, m)?)?;
    Ok(())
}
