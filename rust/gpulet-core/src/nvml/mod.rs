//! The NVML layer: loads `libnvidia-ml.so.1` at run time (nvml-wrapper over libloading) and
//! discovers the node: GPUs, their MIG state, and the link topology between them.
//!
//! The library path is, in order: the path a caller passes, the `GPULET_NVML_LIB` environment
//! variable, then `libnvidia-ml.so.1` from the loader's search path. The fake NVML
//! (`rust/fakenvml`) is loaded the same way, so tests exercise this code unchanged.
//!
//! A [`Session`] is one initialised NVML (`nvmlInit_v2` … `nvmlShutdown`). [`Session::shared`]
//! hands out one session per library path per process for as long as anyone holds it, which is
//! what a long-running agent wants; when nobody holds it, the next call initialises NVML afresh
//! (so a process can look at a real node, then a simulated one, in turn). Nothing here knows
//! about Python; the bindings call these functions with the GIL released.

mod discover;
pub mod events;
mod raw;

use std::ffi::OsStr;
use std::os::raw::c_char;
use std::sync::{Arc, Weak};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use parking_lot::Mutex;
use serde::Serialize;

use crate::error::{CoreError, Result};
use crate::topology::Topology;

/// The environment variable that overrides the NVML library path.
pub const LIBRARY_ENV: &str = "GPULET_NVML_LIB";

/// The library the NVIDIA driver installs (found through the loader's search path).
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// One past the highest `NVML_GPU_INSTANCE_PROFILE_*` value NVML 12 and 13 define.
pub const GPU_INSTANCE_PROFILE_COUNT: u32 = crate::catalog::nvml_profile::COUNT;

/// The library path to load: `explicit`, else `GPULET_NVML_LIB` when set and not empty, else
/// [`DEFAULT_LIBRARY`].
pub fn library_path(explicit: Option<&str>) -> String {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    match std::env::var(LIBRARY_ENV) {
        Ok(p) if !p.trim().is_empty() => p,
        _ => DEFAULT_LIBRARY.to_owned(),
    }
}

/// The whole node as NVML reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    /// `nvmlSystemGetDriverVersion`, e.g. "570.124.06".
    pub driver_version: String,
    /// `nvmlSystemGetCudaDriverVersion_v2`: 1000 × major + 10 × minor (12080 is CUDA 12.8).
    pub cuda_driver_version: i32,
    /// `nvmlSystemGetNVMLVersion`, e.g. "12.570.124.06".
    pub nvml_version: String,
    /// Every GPU, in NVML index order.
    pub gpus: Vec<Gpu>,
    /// Links between the GPUs, indexed like `gpus`.
    pub topology: Topology,
}

/// One physical GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gpu {
    /// NVML index (enumeration order).
    pub index: u32,
    /// Minor number: the GPU's device node is `/dev/nvidia<minor>`.
    pub minor: u32,
    pub uuid: String,
    /// Product name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Board serial number; `None` where the board has none (consumer parts).
    pub serial: Option<String>,
    /// Total framebuffer memory in bytes.
    pub memory_bytes: u64,
    /// CUDA compute capability (major, minor).
    pub compute_capability: (u32, u32),
    /// Architecture family, e.g. "hopper" ("unknown" when NVML cannot tell).
    pub architecture: String,
    /// PCI bus id as NVML prints it, e.g. "00000000:1B:00.0".
    pub pci_bus_id: String,
    /// `pciDeviceId`: device id in the high 16 bits, vendor 0x10DE in the low.
    pub pci_device_id: u32,
    /// The NUMA node the GPU is attached to, when known.
    pub numa_node: Option<i32>,
    /// CPUs ideal for this GPU (`nvmlDeviceGetCpuAffinity`), ascending; empty when unknown.
    pub cpu_affinity: Vec<u32>,
    /// Whether the GPU supports MIG.
    pub mig_capable: bool,
    /// Current MIG mode.
    pub mig_enabled: bool,
    /// MIG mode after the next GPU reset.
    pub mig_pending: bool,
    /// Existing MIG devices (empty unless MIG is enabled).
    pub mig_devices: Vec<MigDevice>,
    /// Active NVLinks (to GPUs and to NVSwitches).
    pub nvlinks: u32,
    /// Active NVLinks whose remote end is an NVSwitch.
    pub nvswitch_links: u32,
}

/// One existing MIG device (a GPU instance with one compute instance).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MigDevice {
    /// Index under the parent (`nvmlDeviceGetMigDeviceHandleByIndex`).
    pub index: u32,
    /// "MIG-…" UUID.
    pub uuid: String,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
    /// GPU-instance profile id; the profile and placement fields are `None` only when NVML
    /// refuses the GPU-instance query for lack of privileges.
    pub profile_id: Option<u32>,
    /// Profile name, e.g. "3g.40gb".
    pub profile_name: Option<String>,
    /// First memory slice of the GPU instance.
    pub placement_start: Option<u32>,
    /// Memory slices the GPU instance occupies.
    pub placement_size: Option<u32>,
    /// Compute slices of the MIG device's compute instance (its CI profile's `sliceCount`).
    /// `None` only when NVML refuses the instance queries for lack of privileges.
    pub compute_slices: Option<u32>,
    /// Compute slices of the GPU instance the MIG device belongs to (its GI profile's
    /// `sliceCount`); equal to [`Self::compute_slices`] unless the GPU instance is split into
    /// smaller compute instances. `None` as for [`Self::profile_id`].
    pub gpu_instance_slices: Option<u32>,
    /// Memory of the MIG device in bytes.
    pub memory_bytes: u64,
}

/// One GPU-instance profile as the GPU reports it: the catalog's
/// [`MigProfile`](crate::catalog::MigProfile) with an owned name and placements. `memory_slices`
/// is the placements' size (0 when NVML lists none).
pub type MigProfileInfo = crate::catalog::MigProfile<String, Vec<u32>>;

/// One initialised NVML library.
pub struct Session {
    nvml: Nvml,
    path: String,
    /// A second handle on the library, held so that the library stays loaded for as long as
    /// the session lives (the fake's error text is read through it).
    _library: libloading::Library,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The exported error text of the fake NVML, when the library is the fake and has one.
fn fake_last_error(library: &libloading::Library) -> Option<String> {
    // SAFETY: the fake exports `const char *gpuletFakeLastError(void)`, returning NULL or a
    // NUL-terminated string that stays valid until the next call. Real NVML lacks the symbol.
    unsafe {
        let f = library
            .get::<unsafe extern "C" fn() -> *const c_char>(b"gpuletFakeLastError\0")
            .ok()?;
        let p = f();
        if p.is_null() {
            return None;
        }
        let text = std::ffi::CStr::from_ptr(p)
            .to_string_lossy()
            .trim()
            .to_owned();
        (!text.is_empty()).then_some(text)
    }
}

/// [`CoreError::LibraryNotFound`], without the path the loader repeats in its reason.
fn not_found(path: &str, reason: &str) -> CoreError {
    let reason = reason
        .strip_prefix(path)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(reason);
    CoreError::LibraryNotFound {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

static SHARED: Mutex<Vec<(String, Weak<Session>)>> = Mutex::new(Vec::new());

impl Session {
    /// Load the library (see [`library_path`]) and initialise NVML.
    ///
    /// A library that cannot be loaded is [`CoreError::LibraryNotFound`]; a library whose
    /// `nvmlInit_v2` fails is [`CoreError::Nvml`] naming that call.
    pub fn open(path: Option<&str>) -> Result<Session> {
        let path = library_path(path);
        // SAFETY: loading a shared library runs its initialisers; NVML's (and the fake's) are
        // sound to run in any process.
        let library = unsafe { libloading::Library::new(&path) }
            .map_err(|e| not_found(&path, &e.to_string()))?;
        let nvml = Nvml::builder()
            .lib_path(OsStr::new(&path))
            .init()
            .map_err(|e| match e {
                NvmlError::LibloadingError(e) => not_found(&path, &e.to_string()),
                e => {
                    let mut err = raw::wrap("nvmlInit_v2", None, e);
                    if let (CoreError::Nvml { message, .. }, Some(text)) =
                        (&mut err, fake_last_error(&library))
                    {
                        *message = text;
                    }
                    err
                }
            })?;
        Ok(Session {
            nvml,
            path,
            _library: library,
        })
    }

    /// The process-wide session for this library path: the one already open if anyone still
    /// holds it, else a newly initialised one.
    pub fn shared(path: Option<&str>) -> Result<Arc<Session>> {
        let resolved = library_path(path);
        let mut cache = SHARED.lock();
        cache.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(session) = cache
            .iter()
            .find(|(p, _)| *p == resolved)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(session);
        }
        let session = Arc::new(Session::open(Some(&resolved))?);
        cache.push((resolved, Arc::downgrade(&session)));
        Ok(session)
    }

    /// The library path this session loaded.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The nvml-wrapper handle, for callers that need calls this module does not make.
    pub fn nvml(&self) -> &Nvml {
        &self.nvml
    }

    /// Discover every GPU, its MIG devices and the topology between them.
    pub fn discover(&self) -> Result<Node> {
        discover::node(&self.nvml)
    }

    /// The GPU-instance profiles GPU `gpu` supports, with their possible placements; empty for
    /// a GPU without MIG. Read-only.
    pub fn mig_profiles(&self, gpu: u32) -> Result<Vec<MigProfileInfo>> {
        discover::mig_profiles(&self.nvml, gpu)
    }
}

/// [`Session::discover`] on the shared session for `path`.
pub fn discover(path: Option<&str>) -> Result<Node> {
    Session::shared(path)?.discover()
}

/// [`Session::mig_profiles`] on the shared session for `path`.
pub fn mig_profiles(path: Option<&str>, gpu: u32) -> Result<Vec<MigProfileInfo>> {
    Session::shared(path)?.mig_profiles(gpu)
}

/// Format CPU ids in Linux cpulist syntax ("0-55,112-167"); `cpus` must be ascending.
pub fn format_cpulist(cpus: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_one_clear_sentence() {
        let e = Session::open(Some("/nonexistent/libnvidia-ml.so.1")).unwrap_err();
        let CoreError::LibraryNotFound { path, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(path, "/nonexistent/libnvidia-ml.so.1");
        let text = e.to_string();
        assert!(
            text.starts_with("NVML library not found: /nonexistent/libnvidia-ml.so.1"),
            "{text}"
        );
        assert!(text.contains("GPULET_NVML_LIB"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(matches!(
            discover(Some("/nonexistent/x.so")),
            Err(CoreError::LibraryNotFound { .. })
        ));
    }

    #[test]
    fn a_library_that_is_not_nvml_fails_at_init() {
        // libc loads but exports no nvmlInit_v2.
        let e = Session::open(Some("libc.so.6")).unwrap_err();
        match e {
            CoreError::Nvml {
                call, gpu, code, ..
            } => {
                assert_eq!(call, "nvmlInit_v2");
                assert_eq!(gpu, None);
                assert_eq!(code, raw::ERROR_FUNCTION_NOT_FOUND);
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn explicit_path_wins() {
        assert_eq!(library_path(Some("/x/lib.so")), "/x/lib.so");
    }

    #[test]
    fn cpulists() {
        assert_eq!(format_cpulist(&[]), "");
        assert_eq!(format_cpulist(&[3]), "3");
        assert_eq!(format_cpulist(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }
}
