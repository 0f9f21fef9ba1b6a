//! Per-process runtime: the init refcount and the loaded node, the last error text, handle
//! bookkeeping, event sets, and the prologue every exported call runs (faults, delays, lost
//! GPUs).

use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, CString};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::Mutex;

use crate::abi::{self, Ret};
use crate::spec::{self, Node};
use crate::state::{call_matches, State};
use crate::store::{MutateError, Store};

/// Environment variable naming the node spec.
pub const ENV_SPEC: &str = "GPULET_FAKE_NVML_SPEC";
/// Environment variable naming the shared state file.
pub const ENV_STATE: &str = "GPULET_FAKE_NVML_STATE";

// ---------------------------------------------------------------------------------------------
// Last error.

/// Recent messages stay allocated so a pointer handed out by `gpuletFakeLastError` survives a
/// few later errors (from other threads, say).
static LAST_ERRORS: Mutex<VecDeque<CString>> = Mutex::new(VecDeque::new());
const KEPT_ERRORS: usize = 32;

pub fn set_last_error(message: impl Into<String>) {
    let text = message.into().replace('\0', " ");
    let c = CString::new(text).unwrap_or_default();
    let mut errors = LAST_ERRORS.lock();
    errors.push_back(c);
    while errors.len() > KEPT_ERRORS {
        errors.pop_front();
    }
}

pub fn last_error_ptr() -> *const c_char {
    LAST_ERRORS
        .lock()
        .back()
        .map_or(c"".as_ptr(), |c| c.as_ptr())
}

/// Run an exported call's body: turn its result into a return code and a panic into
/// NVML_ERROR_UNKNOWN, so nothing unwinds into C.
pub fn guard(name: &'static str, body: impl FnOnce() -> Result<(), Ret>) -> Ret {
    match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => abi::SUCCESS,
        Ok(Err(code)) => code,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("internal error in {name}: {what}"));
            abi::ERROR_UNKNOWN
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handles. Every handle given out is a leaked allocation that is never dereferenced: the
// address is looked up here, so a stale or foreign pointer is answered with INVALID_ARGUMENT
// rather than a crash. Handles are stable for the life of the process.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandleKey {
    /// A physical GPU (NVML index).
    Gpu(usize),
    /// A MIG device: GPU, GPU instance id, compute instance id.
    Mig(usize, u32, u32),
    GpuInstance(usize, u32),
    ComputeInstance(usize, u32, u32),
}

#[derive(Default)]
struct Handles {
    by_key: HashMap<HandleKey, usize>,
    by_addr: HashMap<usize, HandleKey>,
}

static HANDLES: LazyLock<Mutex<Handles>> = LazyLock::new(|| Mutex::new(Handles::default()));

/// The handle for `key` (always the same pointer for the same key).
pub fn handle_for<T>(key: HandleKey) -> *mut T {
    let mut h = HANDLES.lock();
    if let Some(addr) = h.by_key.get(&key) {
        return *addr as *mut T;
    }
    let addr = Box::into_raw(Box::new(key)) as usize;
    h.by_key.insert(key, addr);
    h.by_addr.insert(addr, key);
    addr as *mut T
}

/// The key behind a handle, if it is one of ours.
pub fn key_for<T>(handle: *mut T) -> Option<HandleKey> {
    HANDLES.lock().by_addr.get(&(handle as usize)).copied()
}

// ---------------------------------------------------------------------------------------------
// Session: what nvmlInit loaded.

pub struct Session {
    pub node: Arc<Node>,
    pub store: Store,
}

struct Runtime {
    refcount: u32,
    session: Option<Arc<Session>>,
}

static RUNTIME: Mutex<Runtime> = Mutex::new(Runtime {
    refcount: 0,
    session: None,
});

/// The loaded node, or NVML_ERROR_UNINITIALIZED.
pub fn session() -> Result<Arc<Session>, Ret> {
    RUNTIME
        .lock()
        .session
        .clone()
        .ok_or(abi::ERROR_UNINITIALIZED)
}

/// Load the node named by the environment.
fn load_session() -> Result<Session, (Ret, String)> {
    let spec_path = match std::env::var_os(ENV_SPEC) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            return Err((
                abi::ERROR_DRIVER_NOT_LOADED,
                format!(
                    "{ENV_SPEC} is not set: the fake NVML has no node spec to simulate \
                     (set it to a node spec file, or use gpulet.simulated())"
                ),
            ))
        }
    };
    let node = Node::load(&spec_path).map_err(|e| (abi::ERROR_UNKNOWN, e))?;
    let state_path = match std::env::var_os(ENV_STATE) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => spec::default_state_path(&spec_path).map_err(|e| (abi::ERROR_UNKNOWN, e))?,
    };
    let store = Store::open(Arc::new(node), state_path).map_err(|e| (abi::ERROR_UNKNOWN, e))?;
    let node = store.node().clone();
    Ok(Session { node, store })
}

/// `nvmlInit*`: load the spec when the refcount goes from 0 to 1.
pub fn init(call: &'static str) -> Result<(), Ret> {
    let mut rt = RUNTIME.lock();
    if rt.refcount > 0 {
        let s = rt.session.clone().ok_or(abi::ERROR_UNINITIALIZED)?;
        s.prologue(call, None)?;
        rt.refcount += 1;
        return Ok(());
    }
    let session = load_session().map_err(|(code, msg)| {
        set_last_error(msg);
        code
    })?;
    session.prologue(call, None)?;
    rt.refcount = 1;
    rt.session = Some(Arc::new(session));
    Ok(())
}

/// `nvmlShutdown`: drop the node when the refcount reaches 0.
pub fn shutdown(call: &'static str) -> Result<(), Ret> {
    let mut rt = RUNTIME.lock();
    let s = rt.session.clone().ok_or(abi::ERROR_UNINITIALIZED)?;
    s.prologue(call, None)?;
    rt.refcount = rt.refcount.saturating_sub(1);
    if rt.refcount == 0 {
        rt.session = None;
    }
    Ok(())
}

fn gpu_matches(fault_gpu: Option<u32>, call_gpu: Option<usize>) -> bool {
    match fault_gpu {
        None => true,
        Some(g) => call_gpu == Some(g as usize),
    }
}

impl Session {
    /// The current shared state. A failure of the state file is NVML_ERROR_UNKNOWN.
    pub fn state(&self) -> Result<Arc<State>, Ret> {
        self.store.load().map_err(|e| {
            set_last_error(e);
            abi::ERROR_UNKNOWN
        })
    }

    /// Apply a change to the shared state.
    pub fn mutate<T>(&self, f: impl FnOnce(&mut State) -> Result<T, Ret>) -> Result<T, Ret> {
        self.store.mutate(f).map_err(|e| match e {
            MutateError::Rejected(code) => code,
            MutateError::Io(msg) => {
                set_last_error(msg);
                abi::ERROR_UNKNOWN
            }
        })
    }

    /// What every call does first: sleep for injected delays, then fail with an injected
    /// error code if one applies. Returns the state the call should answer from.
    pub fn prologue(&self, call: &str, gpu: Option<usize>) -> Result<Arc<State>, Ret> {
        let mut st = self.state()?;
        let delay: f64 = st
            .delays
            .iter()
            .filter(|d| call_matches(&d.call, call) && gpu_matches(d.gpu, gpu))
            .map(|d| d.seconds)
            .sum();
        if delay > 0.0 && delay.is_finite() {
            std::thread::sleep(Duration::from_secs_f64(delay.min(3600.0)));
            st = self.state()?;
        }
        let matching =
            |f: &crate::state::Fault| call_matches(&f.call, call) && gpu_matches(f.gpu, gpu);
        let Some(fault) = st.faults.iter().find(|f| matching(f)) else {
            return Ok(st);
        };
        if fault.remaining.is_none() {
            return Err(fault.code);
        }
        // A counted fault: consume one use under the lock (another process may have used it).
        let code = self.mutate(|s| {
            let Some(pos) = s.faults.iter().position(matching) else {
                return Ok(None);
            };
            let f = &mut s.faults[pos];
            let code = f.code;
            if let Some(n) = f.remaining.as_mut() {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.faults.remove(pos);
                }
            }
            Ok(Some(code))
        })?;
        match code {
            Some(code) => Err(code),
            None => self.state(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resolving handles in calls.

/// A device handle resolved for one call.
#[derive(Debug, Clone, Copy)]
pub struct DevRef {
    pub gpu: usize,
    /// (GPU instance id, compute instance id) for a MIG device handle.
    pub mig: Option<(u32, u32)>,
}

impl DevRef {
    /// Refuse MIG device handles for calls that only physical GPUs answer.
    pub fn physical(&self) -> Result<usize, Ret> {
        match self.mig {
            None => Ok(self.gpu),
            Some(_) => Err(abi::ERROR_NOT_SUPPORTED),
        }
    }
}

/// Everything a device call needs.
pub struct Call {
    pub s: Arc<Session>,
    pub st: Arc<State>,
}

impl Call {
    pub fn node(&self) -> &Node {
        &self.s.node
    }
}

/// The prologue of a call that names no device.
pub fn system_call(call: &str) -> Result<Call, Ret> {
    let s = session()?;
    let st = s.prologue(call, None)?;
    Ok(Call { s, st })
}

/// The prologue of a call on a device handle (GPU or MIG device).
pub fn device_call<T>(call: &str, device: *mut T) -> Result<(Call, DevRef), Ret> {
    let s = session()?;
    let dev = match key_for(device) {
        Some(HandleKey::Gpu(g)) => DevRef { gpu: g, mig: None },
        Some(HandleKey::Mig(g, gi, ci)) => DevRef {
            gpu: g,
            mig: Some((gi, ci)),
        },
        _ => return Err(abi::ERROR_INVALID_ARGUMENT),
    };
    if dev.gpu >= s.node.gpus.len() {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    }
    let st = s.prologue(call, Some(dev.gpu))?;
    let gs = &st.gpus[dev.gpu];
    if gs.lost {
        return Err(abi::ERROR_GPU_IS_LOST);
    }
    if let Some((gi, ci)) = dev.mig {
        let alive = gs.mig_enabled
            && gs
                .gpu_instances
                .iter()
                .any(|g| g.id == gi && g.compute_instances.iter().any(|c| c.id == ci));
        if !alive {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
    }
    Ok((Call { s, st }, dev))
}

/// The prologue of a call on a GPU instance handle: (call, GPU, GPU instance id).
pub fn gpu_instance_call<T>(call: &str, gi: *mut T) -> Result<(Call, usize, u32), Ret> {
    let s = session()?;
    let Some(HandleKey::GpuInstance(gpu, id)) = key_for(gi) else {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    };
    if gpu >= s.node.gpus.len() {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    }
    let st = s.prologue(call, Some(gpu))?;
    let gs = &st.gpus[gpu];
    if gs.lost {
        return Err(abi::ERROR_GPU_IS_LOST);
    }
    if !gs.gpu_instances.iter().any(|g| g.id == id) {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    }
    Ok((Call { s, st }, gpu, id))
}

/// The prologue of a call on a compute instance handle: (call, GPU, GI id, CI id).
pub fn compute_instance_call<T>(call: &str, ci: *mut T) -> Result<(Call, usize, u32, u32), Ret> {
    let s = session()?;
    let Some(HandleKey::ComputeInstance(gpu, gi, id)) = key_for(ci) else {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    };
    if gpu >= s.node.gpus.len() {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    }
    let st = s.prologue(call, Some(gpu))?;
    let gs = &st.gpus[gpu];
    if gs.lost {
        return Err(abi::ERROR_GPU_IS_LOST);
    }
    let alive = gs
        .gpu_instances
        .iter()
        .any(|g| g.id == gi && g.compute_instances.iter().any(|c| c.id == id));
    if !alive {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    }
    Ok((Call { s, st }, gpu, gi, id))
}

// ---------------------------------------------------------------------------------------------
// Event sets.

#[derive(Debug, Clone, Copy)]
pub struct Registration {
    pub gpu: usize,
    pub mask: u64,
    /// Events up to this sequence number happened before the registration.
    pub since: u64,
}

#[derive(Default)]
pub struct EventSet {
    pub registrations: Mutex<Vec<Registration>>,
    /// The last event sequence number delivered from this set.
    pub delivered: Mutex<u64>,
}

static EVENT_SETS: LazyLock<Mutex<HashMap<usize, Arc<EventSet>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A new event set and the opaque pointer that names it.
pub fn event_set_create<T>() -> *mut T {
    // The allocation only provides a unique address; it is freed by `event_set_free`.
    let addr = Box::into_raw(Box::new(0u64)) as usize;
    EVENT_SETS
        .lock()
        .insert(addr, Arc::new(EventSet::default()));
    addr as *mut T
}

pub fn event_set<T>(set: *mut T) -> Option<Arc<EventSet>> {
    EVENT_SETS.lock().get(&(set as usize)).cloned()
}

pub fn event_set_free<T>(set: *mut T) -> bool {
    let removed = EVENT_SETS.lock().remove(&(set as usize));
    if removed.is_some() {
        // SAFETY: the address came from `Box::into_raw(Box::new(0u64))` in `event_set_create`
        // and was removed from the registry just now, so it is freed exactly once.
        drop(unsafe { Box::from_raw(set as usize as *mut u64) });
        true
    } else {
        false
    }
}

#[cfg(test)]
pub mod testing {
    //! Tests that touch the process-wide runtime take this lock so they do not interleave.
    use parking_lot::Mutex;

    pub static SERIAL: Mutex<()> = Mutex::new(());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn panics_become_unknown_errors() {
        let _serial = testing::SERIAL.lock();
        assert_eq!(guard("nvmlTest", || Ok(())), abi::SUCCESS);
        assert_eq!(
            guard("nvmlTest", || Err(abi::ERROR_TIMEOUT)),
            abi::ERROR_TIMEOUT
        );
        assert_eq!(guard("nvmlTest", || panic!("boom")), abi::ERROR_UNKNOWN);
        assert_eq!(last(), "internal error in nvmlTest: boom");
        let n = 7;
        assert_eq!(guard("nvmlTest", || panic!("boom {n}")), abi::ERROR_UNKNOWN);
        assert_eq!(last(), "internal error in nvmlTest: boom 7");
    }

    #[test]
    fn handles_are_stable_and_foreign_pointers_unknown() {
        let a: *mut u8 = handle_for(HandleKey::Gpu(3));
        let b: *mut u8 = handle_for(HandleKey::Gpu(3));
        let c: *mut u8 = handle_for(HandleKey::Mig(3, 1, 0));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(key_for(c), Some(HandleKey::Mig(3, 1, 0)));
        assert_eq!(key_for(std::ptr::null_mut::<u8>()), None);
        assert_eq!(key_for(0x10 as *mut u8), None);
    }

    #[test]
    fn error_texts_survive_later_errors() {
        let _serial = testing::SERIAL.lock();
        set_last_error("first");
        let p = last_error_ptr();
        for i in 0..(KEPT_ERRORS - 1) {
            set_last_error(format!("later {i}"));
        }
        assert_eq!(unsafe { CStr::from_ptr(p) }.to_str().unwrap(), "first");
        set_last_error("with\0nul");
        assert_eq!(last(), "with nul");
    }
}
