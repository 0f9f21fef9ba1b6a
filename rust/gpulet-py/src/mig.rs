//! MIG geometry and planning from the catalog: the classes `MigProfile`, `MigPlacement`,
//! `MigLayout` (re-exported by `gpulet.mig` as `Profile`, `Placement`, `Layout`), the functions
//! `mig_model_profiles`, `mig_resource_name`, `mig_validate`, `mig_layouts`, `mig_plan`,
//! `mig_plan_node`, `mig_first_fit`, `mig_first_fit_node`, `mig_fragmentation` and
//! `mig_stranded`, and the constant `RESOURCE_NAME_PREFIX`.
//!
//! Every class is frozen. Searches run with the GIL released (`py.detach`).

use gpulet_core::catalog::MigProfile;
use gpulet_core::mig::{self as core_mig, Layout, NodeGpu, Placement};
use gpulet_core::CoreError;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::errors::{to_py, CoreResultExt};

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unprintable>".to_owned())
}

/// The `#[pymethods]` of a class over one core `MigProfile` (any of its forms), held in the
/// field `$field`: one getter per profile field, then the class's own methods. Both
/// `MigProfile` (`gpulet.mig.Profile`) and `MigProfileInfo` are made with it, so the Python
/// attributes follow the core struct from one list.
macro_rules! mig_profile_methods {
    ($class:ty, $field:ident, { $($own:tt)* }) => {
        #[pymethods]
        impl $class {
            #[getter]
            fn name(&self) -> &str {
                self.$field.name.as_ref()
            }
            #[getter]
            fn profile_id(&self) -> u32 {
                self.$field.profile_id
            }
            #[getter]
            fn nvml_profile(&self) -> u32 {
                self.$field.nvml_profile
            }
            #[getter]
            fn compute_slices(&self) -> u32 {
                self.$field.compute_slices
            }
            #[getter]
            fn memory_slices(&self) -> u32 {
                self.$field.memory_slices
            }
            #[getter]
            fn memory_mib(&self) -> u64 {
                self.$field.memory_mib
            }
            #[getter]
            fn multiprocessors(&self) -> u32 {
                self.$field.multiprocessors
            }
            #[getter]
            fn copy_engines(&self) -> u32 {
                self.$field.copy_engines
            }
            #[getter]
            fn decoders(&self) -> u32 {
                self.$field.decoders
            }
            #[getter]
            fn encoders(&self) -> u32 {
                self.$field.encoders
            }
            #[getter]
            fn jpegs(&self) -> u32 {
                self.$field.jpegs
            }
            #[getter]
            fn ofas(&self) -> u32 {
                self.$field.ofas
            }
            #[getter]
            fn max_instances(&self) -> u32 {
                self.$field.max_instances
            }
            /// Start memory slices an instance may take.
            #[getter]
            fn placements(&self) -> Vec<u32> {
                AsRef::<[u32]>::as_ref(&self.$field.placements).to_vec()
            }

            $($own)*
        }
    };
}
pub(crate) use mig_profile_methods;

/// The fields a profile's `__repr__` shows, after the class name and anything before them.
pub(crate) fn profile_repr_fields<S: AsRef<str>, P: AsRef<[u32]>>(p: &MigProfile<S, P>) -> String {
    format!(
        "name={:?}, profile_id={}, compute_slices={}, memory_slices={}, memory_mib={}, \
         max_instances={}, placements={:?}",
        p.name.as_ref(),
        p.profile_id,
        p.compute_slices,
        p.memory_slices,
        p.memory_mib,
        p.max_instances,
        p.placements.as_ref()
    )
}

/// One MIG GPU-instance profile of a catalog model (`gpulet.mig.Profile`).
#[pyclass(frozen, name = "MigProfile", module = "gpulet._core")]
pub struct PyProfile {
    model: &'static str,
    p: &'static MigProfile,
}

mig_profile_methods!(PyProfile, p, {
    /// The catalog key of the model, e.g. "H100-80GB".
    #[getter]
    fn model(&self) -> &'static str {
        self.model
    }

    /// The device-plugin resource name, e.g. "nvidia.com/mig-1g.10gb.me".
    #[getter]
    fn resource_name(&self) -> String {
        self.p.resource_name()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyProfile>()
            .is_ok_and(|o| o.get().model == self.model && o.get().p.name == self.p.name)
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.model, self.p.name).hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!(
            "Profile(model={:?}, {})",
            self.model,
            profile_repr_fields(self.p)
        )
    }
});

/// One MIG GPU instance: a profile name at a start memory slice (`gpulet.mig.Placement`).
#[pyclass(frozen, eq, hash, name = "MigPlacement", module = "gpulet._core")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyPlacement {
    inner: Placement,
}

#[pymethods]
impl PyPlacement {
    #[new]
    fn py_new(profile: String, start: i64) -> PyResult<Self> {
        Ok(PyPlacement {
            inner: Placement::new(profile, start_arg(start)?),
        })
    }
    /// The profile's NVML name, e.g. "3g.40gb".
    #[getter]
    fn profile(&self) -> &str {
        &self.inner.profile
    }
    /// The first memory slice.
    #[getter]
    fn start(&self) -> u32 {
        self.inner.start
    }
    fn __repr__(&self) -> String {
        format!("Placement({:?}, {})", self.inner.profile, self.inner.start)
    }
    fn __str__(&self) -> String {
        self.inner.to_string()
    }
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let p = &slf.get().inner;
        let args = (p.profile.clone(), p.start).into_pyobject(slf.py())?;
        Ok((slf.get_type().into_any(), args))
    }
}

fn start_arg(start: i64) -> PyResult<u32> {
    u32::try_from(start).map_err(|_| {
        to_py(CoreError::InvalidArgument(format!(
            "a placement start is a memory slice index (0 or more), got {start}"
        )))
    })
}

/// A placement given as `Placement`, `(profile, start)` or `"profile@start"`.
fn placement_arg(item: &Bound<'_, PyAny>) -> PyResult<Placement> {
    if let Ok(p) = item.cast::<PyPlacement>() {
        return Ok(p.get().inner.clone());
    }
    if let Ok(s) = item.cast::<PyString>() {
        let s = s.to_str()?;
        let parsed = s
            .rsplit_once('@')
            .and_then(|(p, n)| n.trim().parse::<u32>().ok().map(|n| (p.trim(), n)));
        return match parsed {
            Some((p, n)) if !p.is_empty() => Ok(Placement::new(p, n)),
            _ => Err(to_py(CoreError::InvalidArgument(format!(
                "placement {s:?} is not of the form \"<profile>@<start>\", e.g. \"3g.40gb@4\""
            )))),
        };
    }
    if let Ok((p, n)) = item.extract::<(String, i64)>() {
        return Ok(Placement::new(p, start_arg(n)?));
    }
    Err(PyTypeError::new_err(format!(
        "a placement is a Placement, a (profile, start) pair or \"profile@start\"; got {}",
        repr(item)
    )))
}

/// A layout given as `Layout` or an iterable of placements (see [`placement_arg`]).
fn layout_arg(obj: &Bound<'_, PyAny>) -> PyResult<Layout> {
    if let Ok(l) = obj.cast::<PyLayout>() {
        return Ok(l.get().inner.clone());
    }
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "a layout is a Layout or a list of placements, not the string {}; \
             e.g. Layout([(\"3g.40gb\", 0), (\"2g.20gb\", 4)])",
            repr(obj)
        )));
    }
    let iter = obj.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "a layout is a Layout or an iterable of placements; got {}",
            repr(obj)
        ))
    })?;
    let mut v = Vec::new();
    for item in iter {
        v.push(placement_arg(&item?)?);
    }
    Ok(Layout::new(v))
}

fn names_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<String>> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} is a list of profile names, not the string {}; e.g. [\"3g.40gb\", \"1g.10gb\"]",
            repr(obj)
        )));
    }
    obj.extract::<Vec<String>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} is a list of profile names; got {}",
            repr(obj)
        ))
    })
}

/// A set of MIG instances on one GPU (`gpulet.mig.Layout`). Placements are kept sorted by
/// (start, profile), so equal sets compare equal; a layout is checked against a model by
/// `gpulet.mig.validate`.
#[pyclass(frozen, eq, hash, name = "MigLayout", module = "gpulet._core")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyLayout {
    inner: Layout,
}

impl From<Layout> for PyLayout {
    fn from(inner: Layout) -> Self {
        PyLayout { inner }
    }
}

#[pymethods]
impl PyLayout {
    #[new]
    #[pyo3(signature = (placements=None))]
    fn py_new(placements: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Ok(PyLayout {
            inner: match placements {
                Some(p) => layout_arg(p)?,
                None => Layout::empty(),
            },
        })
    }

    #[getter]
    fn placements(&self) -> Vec<PyPlacement> {
        self.inner
            .placements()
            .iter()
            .map(|p| PyPlacement { inner: p.clone() })
            .collect()
    }

    /// Instances per profile name.
    fn counts(&self) -> std::collections::BTreeMap<String, u32> {
        self.inner.counts()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __iter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let list = slf.get().placements().into_pyobject(slf.py())?;
        Ok(list.try_iter()?.into_any())
    }

    fn __contains__(&self, item: &Bound<'_, PyAny>) -> bool {
        placement_arg(item).is_ok_and(|p| self.inner.placements().contains(&p))
    }

    fn __repr__(&self) -> String {
        let items: Vec<String> = self
            .inner
            .placements()
            .iter()
            .map(|p| format!("({:?}, {})", p.profile, p.start))
            .collect();
        format!("Layout([{}])", items.join(", "))
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let items: Vec<(String, u32)> = slf
            .get()
            .inner
            .placements()
            .iter()
            .map(|p| (p.profile.clone(), p.start))
            .collect();
        let args = (items,).into_pyobject(slf.py())?;
        Ok((slf.get_type().into_any(), args))
    }
}

/// `mig_model_profiles(model)`: the catalog's MIG profiles of a model.
#[pyfunction]
fn mig_model_profiles(model: &str) -> PyResult<Vec<PyProfile>> {
    let m = core_mig::model(model).py()?;
    Ok(m.profiles()
        .iter()
        .map(|p| PyProfile { model: m.key(), p })
        .collect())
}

/// `mig_models()`: the catalog keys of the MIG-capable models.
#[pyfunction]
fn mig_models() -> Vec<&'static str> {
    gpulet_core::catalog::models()
        .iter()
        .filter(|m| m.mig_capable())
        .map(|m| m.key)
        .collect()
}

/// `mig_catalog_model(model)`: (catalog key, PCI device id as `0xDDDDVVVV`, MIG capable) for a
/// key, alias, product name or PCI id; `UnknownModelError` if the catalog does not know it.
#[pyfunction]
fn mig_catalog_model(model: &str) -> PyResult<(&'static str, u32, bool)> {
    let m = gpulet_core::catalog::lookup(model).ok_or_else(|| {
        to_py(CoreError::UnknownModel {
            name: model.to_owned(),
            known: gpulet_core::catalog::model_keys().join(", "),
        })
    })?;
    Ok((m.key, m.pci_device_id, m.mig_capable()))
}

/// `mig_resource_name(profile)`: NVIDIA's resource name of a MIG profile given by NVML name
/// ("1g.10gb+me" → "nvidia.com/mig-1g.10gb.me"); any profile name, in the catalog or not.
#[pyfunction]
fn mig_resource_name(profile: &str) -> String {
    gpulet_core::catalog::mig_resource_name(profile)
}

/// `mig_validate(model, layout)`: raise `MigLayoutError` naming the first clash.
#[pyfunction]
fn mig_validate(model: &str, layout: &Bound<'_, PyAny>) -> PyResult<()> {
    let layout = layout_arg(layout)?;
    core_mig::validate(model, &layout).py()
}

/// `mig_layouts(model, profiles=None, maximal=False)`.
#[pyfunction]
#[pyo3(signature = (model, profiles=None, maximal=false))]
fn mig_layouts(
    py: Python<'_>,
    model: &str,
    profiles: Option<&Bound<'_, PyAny>>,
    maximal: bool,
) -> PyResult<Vec<PyLayout>> {
    let profiles = profiles.map(|p| names_arg(p, "profiles")).transpose()?;
    let model = model.to_owned();
    let out = py
        .detach(move || core_mig::layouts(&model, profiles.as_deref(), maximal))
        .py()?;
    Ok(out.into_iter().map(PyLayout::from).collect())
}

/// `mig_plan(model, requests, existing=None)`.
#[pyfunction]
#[pyo3(signature = (model, requests, existing=None))]
fn mig_plan(
    py: Python<'_>,
    model: &str,
    requests: &Bound<'_, PyAny>,
    existing: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyLayout> {
    let requests = names_arg(requests, "requests")?;
    let existing = existing.map(layout_arg).transpose()?;
    let model = model.to_owned();
    py.detach(move || core_mig::plan(&model, &requests, existing.as_ref()))
        .py()
        .map(PyLayout::from)
}

/// `mig_first_fit(model, requests, existing=None)`: the naive baseline.
#[pyfunction]
#[pyo3(signature = (model, requests, existing=None))]
fn mig_first_fit(
    py: Python<'_>,
    model: &str,
    requests: &Bound<'_, PyAny>,
    existing: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyLayout> {
    let requests = names_arg(requests, "requests")?;
    let existing = existing.map(layout_arg).transpose()?;
    let model = model.to_owned();
    py.detach(move || core_mig::first_fit(&model, &requests, existing.as_ref()))
        .py()
        .map(PyLayout::from)
}

type NodeArgs = (Vec<String>, Vec<Option<Layout>>, Vec<String>);

fn node_args(
    models: &Bound<'_, PyAny>,
    requests: &Bound<'_, PyAny>,
    existing: Option<&Bound<'_, PyAny>>,
) -> PyResult<NodeArgs> {
    let models = names_arg(models, "models")?;
    let requests = names_arg(requests, "requests")?;
    let existing: Vec<Option<Layout>> = match existing {
        None => vec![None; models.len()],
        Some(e) => {
            let mut v = Vec::new();
            for item in e.try_iter()? {
                let item = item?;
                v.push(if item.is_none() {
                    None
                } else {
                    Some(layout_arg(&item)?)
                });
            }
            v
        }
    };
    if existing.len() != models.len() {
        return Err(to_py(CoreError::InvalidArgument(format!(
            "existing has {} layouts for {} GPUs; give one layout (or None) per GPU",
            existing.len(),
            models.len()
        ))));
    }
    Ok((models, existing, requests))
}

fn run_node(
    py: Python<'_>,
    args: NodeArgs,
    f: fn(&[NodeGpu<'_>], &[String]) -> gpulet_core::Result<Vec<Layout>>,
) -> PyResult<Vec<PyLayout>> {
    let (models, existing, requests) = args;
    let out = py
        .detach(move || {
            let gpus: Vec<NodeGpu<'_>> = models
                .iter()
                .zip(&existing)
                .map(|(m, e)| NodeGpu::new(m, e.as_ref()))
                .collect();
            f(&gpus, &requests)
        })
        .py()?;
    Ok(out.into_iter().map(PyLayout::from).collect())
}

/// `mig_plan_node(models, requests, existing=None)`: one model per GPU.
#[pyfunction]
#[pyo3(signature = (models, requests, existing=None))]
fn mig_plan_node(
    py: Python<'_>,
    models: &Bound<'_, PyAny>,
    requests: &Bound<'_, PyAny>,
    existing: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<PyLayout>> {
    let args = node_args(models, requests, existing)?;
    run_node(py, args, core_mig::plan_node::<String>)
}

/// `mig_first_fit_node(models, requests, existing=None)`: the naive baseline across a node.
#[pyfunction]
#[pyo3(signature = (models, requests, existing=None))]
fn mig_first_fit_node(
    py: Python<'_>,
    models: &Bound<'_, PyAny>,
    requests: &Bound<'_, PyAny>,
    existing: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<PyLayout>> {
    let args = node_args(models, requests, existing)?;
    run_node(py, args, core_mig::first_fit_node::<String>)
}

/// `mig_fragmentation(model, layout)`: stranded capacity in [0, 1].
#[pyfunction]
fn mig_fragmentation(model: &str, layout: &Bound<'_, PyAny>) -> PyResult<f64> {
    let layout = layout_arg(layout)?;
    core_mig::fragmentation(model, &layout).py()
}

/// `mig_stranded(model, layout)`: (stranded memory slices, stranded compute slices).
#[pyfunction]
fn mig_stranded(model: &str, layout: &Bound<'_, PyAny>) -> PyResult<(u32, u32)> {
    let layout = layout_arg(layout)?;
    let s = core_mig::stranded(model, &layout).py()?;
    Ok((s.memory_slices, s.compute_slices))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyProfile>()?;
    m.add_class::<PyPlacement>()?;
    m.add_class::<PyLayout>()?;
    m.add_function(wrap_pyfunction!(mig_models, m)?)?;
    m.add_function(wrap_pyfunction!(mig_catalog_model, m)?)?;
    m.add_function(wrap_pyfunction!(mig_model_profiles, m)?)?;
    m.add_function(wrap_pyfunction!(mig_resource_name, m)?)?;
    m.add(
        "RESOURCE_NAME_PREFIX",
        gpulet_core::catalog::RESOURCE_NAME_PREFIX,
    )?;
    m.add_function(wrap_pyfunction!(mig_validate, m)?)?;
    m.add_function(wrap_pyfunction!(mig_layouts, m)?)?;
    m.add_function(wrap_pyfunction!(mig_plan, m)?)?;
    m.add_function(wrap_pyfunction!(mig_first_fit, m)?)?;
    m.add_function(wrap_pyfunction!(mig_plan_node, m)?)?;
    m.add_function(wrap_pyfunction!(mig_first_fit_node, m)?)?;
    m.add_function(wrap_pyfunction!(mig_fragmentation, m)?)?;
    m.add_function(wrap_pyfunction!(mig_stranded, m)?)?;
    Ok(())
}
