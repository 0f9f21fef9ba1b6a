//! gpulet._core: thin PyO3 bindings over gpulet-core. Each submodule file registers its own
//! classes and functions; errors map to Python exceptions in one place (errors.rs).

use pyo3::prelude::*;

mod alloc;
mod errors;
mod events;
mod mig;
mod nvml;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    nvml::register(m)?;
    mig::register(m)?;
    alloc::register(m)?;
    events::register(m)?;
    Ok(())
}
