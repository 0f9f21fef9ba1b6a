//! NVML events for the health engine: XID critical errors, ECC errors and MIG configuration
//! changes, delivered by an [`EventWatcher`], plus the cheap read-only [`probe`] the engine uses
//! to decide that a GPU is well again.
//!
//! The watcher creates one event set (`nvmlEventSetCreate`), registers
//! `XidCriticalError | DoubleBitEccError | SingleBitEccError | MigConfigChange` on every GPU, as
//! far as `nvmlDeviceGetSupportedEventTypes` says each GPU supports them, and waits on the set
//! with `nvmlEventSetWait_v2`. What each GPU's registration came to is kept
//! ([`EventWatcher::registrations`]): a GPU that supports none of the types is
//! [`RegistrationStatus::NotSupported`] (it is still probed, just not watched), one that had
//! fallen off the bus is [`RegistrationStatus::Lost`] and one whose registration failed otherwise
//! is [`RegistrationStatus::Failed`]; lost and failed GPUs are registered again, at most every
//! [`RETRY_INTERVAL`], at the start of a later wait.
//!
//! A GPU found lost (`NVML_ERROR_GPU_IS_LOST` while registering it, or from a wait, after which
//! every GPU is asked for its UUID to find which one went) becomes an event of its own,
//! [`EventKind::GpuLost`], once per loss.
//!
//! The calls are made through nvml-wrapper's symbol table, not its `EventSet`: that type borrows
//! the `Nvml` (so a watcher could not own its session) and its `EventData` drops the GPU and
//! compute instance ids that attribute an XID to one MIG device.

use std::collections::VecDeque;
use std::os::raw::{c_uint, c_ulonglong};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings as sys;
use parking_lot::Mutex;
use serde::Serialize;

use super::raw::{self, check, symbol, wrap};
use super::Session;
use crate::error::{CoreError, Result};

/// `nvmlEventTypeSingleBitEccError`.
pub const EVENT_SINGLE_BIT_ECC: u64 = sys::nvmlEventTypeSingleBitEccError as u64;
/// `nvmlEventTypeDoubleBitEccError`.
pub const EVENT_DOUBLE_BIT_ECC: u64 = sys::nvmlEventTypeDoubleBitEccError as u64;
/// `nvmlEventTypeXidCriticalError`.
pub const EVENT_XID: u64 = sys::nvmlEventTypeXidCriticalError as u64;
/// `nvmlEventMigConfigChange`.
pub const EVENT_MIG_CONFIG_CHANGE: u64 = sys::nvmlEventMigConfigChange as u64;
/// Every type the watcher registers (where the GPU supports it).
pub const WATCHED_EVENTS: u64 =
    EVENT_XID | EVENT_DOUBLE_BIT_ECC | EVENT_SINGLE_BIT_ECC | EVENT_MIG_CONFIG_CHANGE;
/// `gpuInstanceId` / `computeInstanceId` of an event NVML does not attribute to an instance.
pub const NO_INSTANCE: u32 = 0xFFFF_FFFF;
/// The `eventData` NVML reports for an XID it cannot name.
pub const XID_UNKNOWN: u64 = 999;
/// How often a GPU whose registration failed (or that was lost) is registered again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Most events one [`EventWatcher::wait`] returns (the rest wait for the next call).
pub const MAX_BATCH: usize = 256;

const ERROR_TIMEOUT: u32 = sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT;
/// `NVML_ERROR_GPU_IS_LOST`.
pub const ERROR_GPU_IS_LOST: u32 = sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST;

/// What an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// `nvmlEventTypeXidCriticalError`; `data` is the XID.
    Xid,
    /// `nvmlEventTypeDoubleBitEccError`.
    DoubleBitEcc,
    /// `nvmlEventTypeSingleBitEccError`.
    SingleBitEcc,
    /// `nvmlEventMigConfigChange`: a GPU or compute instance was created or destroyed.
    MigConfigChange,
    /// The GPU fell off the bus (`NVML_ERROR_GPU_IS_LOST`); made by the watcher, not NVML.
    GpuLost,
    /// Any other event type NVML delivered.
    Other,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 6] = [
        EventKind::Xid,
        EventKind::DoubleBitEcc,
        EventKind::SingleBitEcc,
        EventKind::MigConfigChange,
        EventKind::GpuLost,
        EventKind::Other,
    ];

    /// The kind's name: "xid", "double-bit-ecc", "single-bit-ecc", "mig-config-change",
    /// "gpu-lost" or "other".
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Xid => "xid",
            EventKind::DoubleBitEcc => "double-bit-ecc",
            EventKind::SingleBitEcc => "single-bit-ecc",
            EventKind::MigConfigChange => "mig-config-change",
            EventKind::GpuLost => "gpu-lost",
            EventKind::Other => "other",
        }
    }

    /// The kind named `name` (see [`EventKind::name`]).
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind of an `nvmlEventType*` value. NVML sets one bit per event; should it set more,
    /// the most serious wins.
    pub fn from_type(event_type: u64) -> EventKind {
        if event_type & EVENT_XID != 0 {
            EventKind::Xid
        } else if event_type & EVENT_DOUBLE_BIT_ECC != 0 {
            EventKind::DoubleBitEcc
        } else if event_type & EVENT_SINGLE_BIT_ECC != 0 {
            EventKind::SingleBitEcc
        } else if event_type & EVENT_MIG_CONFIG_CHANGE != 0 {
            EventKind::MigConfigChange
        } else {
            EventKind::Other
        }
    }

    /// The `nvmlEventType*` bit of the kind (0 for [`EventKind::GpuLost`] and
    /// [`EventKind::Other`]).
    pub fn event_type(self) -> u64 {
        match self {
            EventKind::Xid => EVENT_XID,
            EventKind::DoubleBitEcc => EVENT_DOUBLE_BIT_ECC,
            EventKind::SingleBitEcc => EVENT_SINGLE_BIT_ECC,
            EventKind::MigConfigChange => EVENT_MIG_CONFIG_CHANGE,
            EventKind::GpuLost | EventKind::Other => 0,
        }
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub kind: EventKind,
    /// The raw `nvmlEventType*` value (0 for [`EventKind::GpuLost`]).
    pub event_type: u64,
    /// NVML index of the GPU; `None` only when NVML named a device the watcher cannot place.
    pub gpu: Option<u32>,
    /// UUID of the GPU (the physical one, also for MIG-attributed events), when known.
    pub uuid: Option<String>,
    /// `eventData`: the XID for [`EventKind::Xid`] ([`XID_UNKNOWN`] when NVML cannot name it).
    pub data: u64,
    /// GPU instance the event is attributed to (MIG), if any.
    pub gpu_instance_id: Option<u32>,
    /// Compute instance the event is attributed to (MIG), if any.
    pub compute_instance_id: Option<u32>,
    /// When the watcher received the event: microseconds since the Unix epoch. (NVML's event
    /// data carries no time.)
    pub timestamp_us: u64,
    /// For [`EventKind::GpuLost`], the failed call, e.g. "nvmlDeviceGetUUID on GPU 2 failed:
    /// ... (NVML error 15)".
    pub detail: Option<String>,
}

impl Event {
    /// The XID of an [`EventKind::Xid`] event.
    pub fn xid(&self) -> Option<u64> {
        (self.kind == EventKind::Xid).then_some(self.data)
    }

    fn lost(gpu: u32, uuid: Option<String>, error: &CoreError) -> Event {
        Event {
            kind: EventKind::GpuLost,
            event_type: 0,
            gpu: Some(gpu),
            uuid,
            data: 0,
            gpu_instance_id: None,
            compute_instance_id: None,
            timestamp_us: now_us(),
            detail: Some(error.to_string()),
        }
    }
}

/// The current time in microseconds since the Unix epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `Some(id)` unless NVML says "no instance".
fn instance(id: c_uint) -> Option<u32> {
    (id != NO_INSTANCE).then_some(id)
}

/// What registering one GPU came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistrationStatus {
    /// Watched for `mask`.
    Registered,
    /// The GPU supports none of [`WATCHED_EVENTS`] (or refuses registration as unsupported).
    NotSupported,
    /// The GPU is lost (`NVML_ERROR_GPU_IS_LOST`); registered again once it answers.
    Lost,
    /// Registration failed otherwise; tried again later.
    Failed,
}

impl RegistrationStatus {
    /// "registered", "not-supported", "lost" or "failed".
    pub fn name(self) -> &'static str {
        match self {
            RegistrationStatus::Registered => "registered",
            RegistrationStatus::NotSupported => "not-supported",
            RegistrationStatus::Lost => "lost",
            RegistrationStatus::Failed => "failed",
        }
    }
}

/// The registration of one GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Registration {
    /// NVML index.
    pub gpu: u32,
    /// UUID, once the GPU has answered it.
    pub uuid: Option<String>,
    /// The event types registered (0 unless [`RegistrationStatus::Registered`]).
    pub mask: u64,
    pub status: RegistrationStatus,
    /// Why the GPU is not registered (the failed NVML call), if it is not.
    pub error: Option<String>,
}

/// An NVML device handle, kept as the opaque pointer NVML hands out (valid for the session).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Handle(sys::nvmlDevice_t);

// SAFETY: NVML device handles are opaque, immutable tokens valid for the whole NVML session and
// usable from any thread (NVML is thread-safe).
unsafe impl Send for Handle {}

/// An NVML event set.
struct RawSet(sys::nvmlEventSet_t);

// SAFETY: as for `Handle`; the watcher serialises every use of the set behind its mutex.
unsafe impl Send for RawSet {}

struct Watched {
    reg: Registration,
    handle: Option<Handle>,
    last_attempt: Instant,
}

struct Inner {
    session: Arc<Session>,
    set: RawSet,
    gpus: Vec<Watched>,
    pending: VecDeque<Event>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(free) = self.session.nvml().lib().nvmlEventSetFree.as_ref() {
            // SAFETY: the set came from nvmlEventSetCreate on this (still live) session and is
            // freed once, here.
            unsafe {
                free(self.set.0);
            }
        }
    }
}

/// Whether an error only says that the GPU or the library lacks the feature.
fn unsupported_code(code: u32) -> bool {
    matches!(
        code,
        raw::ERROR_NOT_SUPPORTED | raw::ERROR_FUNCTION_NOT_FOUND | raw::ERROR_NO_PERMISSION
    )
}

fn code(e: &CoreError) -> Option<u32> {
    match e {
        CoreError::Nvml { code, .. } => Some(*code),
        _ => None,
    }
}

/// Whether `e` is `NVML_ERROR_GPU_IS_LOST`.
pub fn is_gpu_lost(e: &CoreError) -> bool {
    code(e) == Some(ERROR_GPU_IS_LOST)
}

fn gpu_handle(nvml: &Nvml, index: u32) -> Result<Handle> {
    let dev = nvml
        .device_by_index(index)
        .map_err(|e| wrap("nvmlDeviceGetHandleByIndex_v2", Some(index), e))?;
    // SAFETY: the raw handle is only passed back to NVML calls of this session.
    Ok(Handle(unsafe { dev.handle() }))
}

fn uuid_of(nvml: &Nvml, handle: Handle, index: u32) -> Result<String> {
    const CALL: &str = "nvmlDeviceGetUUID";
    let f = symbol(&nvml.lib().nvmlDeviceGetUUID, CALL, Some(index))?;
    let mut buf = [0 as std::os::raw::c_char; sys::NVML_DEVICE_UUID_V2_BUFFER_SIZE as usize];
    // SAFETY: a valid handle and a buffer of the size NVML documents for UUIDs.
    check(CALL, Some(index), unsafe {
        f(handle.0, buf.as_mut_ptr(), buf.len() as c_uint)
    })?;
    Ok(raw::c_buf_to_string(&buf))
}

/// The event types GPU `index` supports, or `None` when the library cannot tell (the symbol is
/// missing): then the watcher simply tries to register what it wants.
fn supported_types(nvml: &Nvml, handle: Handle, index: u32) -> Result<Option<u64>> {
    const CALL: &str = "nvmlDeviceGetSupportedEventTypes";
    let Ok(f) = nvml.lib().nvmlDeviceGetSupportedEventTypes.as_ref() else {
        return Ok(None);
    };
    let mut types: c_ulonglong = 0;
    // SAFETY: a valid handle and an out-pointer to a local.
    let code = unsafe { f(handle.0, &mut types) };
    if code == raw::ERROR_NOT_SUPPORTED {
        return Ok(Some(0));
    }
    check(CALL, Some(index), code)?;
    Ok(Some(types))
}

impl Inner {
    fn nvml(&self) -> &Nvml {
        self.session.nvml()
    }

    /// Register GPU `i` (an index into `self.gpus`) on the set, updating its registration. A
    /// GPU found lost queues a [`EventKind::GpuLost`] event, once per loss.
    fn register(&mut self, i: usize) {
        let index = self.gpus[i].reg.gpu;
        self.gpus[i].last_attempt = Instant::now();
        let outcome = self.try_register(i);
        let was_lost = self.gpus[i].reg.status == RegistrationStatus::Lost;
        let w = &mut self.gpus[i];
        match outcome {
            Ok(0) => {
                w.reg.status = RegistrationStatus::NotSupported;
                w.reg.mask = 0;
                w.reg.error = Some(format!(
                    "GPU {index} supports none of the event types gpulet watches \
                     (XID, ECC errors, MIG changes)"
                ));
            }
            Ok(mask) => {
                w.reg.status = RegistrationStatus::Registered;
                w.reg.mask = mask;
                w.reg.error = None;
            }
            Err(e) if code(&e).is_some_and(|c| c == raw::ERROR_NOT_SUPPORTED) => {
                w.reg.status = RegistrationStatus::NotSupported;
                w.reg.mask = 0;
                w.reg.error = Some(e.to_string());
            }
            Err(e) if is_gpu_lost(&e) => {
                w.reg.status = RegistrationStatus::Lost;
                w.reg.mask = 0;
                w.reg.error = Some(e.to_string());
                if !was_lost {
                    let event = Event::lost(index, w.reg.uuid.clone(), &e);
                    self.pending.push_back(event);
                }
            }
            Err(e) => {
                w.reg.status = RegistrationStatus::Failed;
                w.reg.mask = 0;
                w.reg.error = Some(e.to_string());
            }
        }
    }

    /// The mask registered for GPU `i` (0: none of the watched types is supported).
    fn try_register(&mut self, i: usize) -> Result<u64> {
        const CALL: &str = "nvmlDeviceRegisterEvents";
        let index = self.gpus[i].reg.gpu;
        let handle = match self.gpus[i].handle {
            Some(h) => h,
            None => {
                let h = gpu_handle(self.nvml(), index)?;
                self.gpus[i].handle = Some(h);
                h
            }
        };
        if self.gpus[i].reg.uuid.is_none() {
            let uuid = uuid_of(self.nvml(), handle, index)?;
            self.gpus[i].reg.uuid = Some(uuid);
        }
        let mask = match supported_types(self.nvml(), handle, index)? {
            Some(supported) => WATCHED_EVENTS & supported,
            None => WATCHED_EVENTS,
        };
        if mask == 0 {
            return Ok(0);
        }
        let f = symbol(
            &self.nvml().lib().nvmlDeviceRegisterEvents,
            CALL,
            Some(index),
        )?;
        // SAFETY: a valid handle and the set this session created.
        check(CALL, Some(index), unsafe { f(handle.0, mask, self.set.0) })?;
        Ok(mask)
    }

    /// Register again the GPUs that were lost or failed, when their retry is due.
    fn retry_registrations(&mut self) {
        for i in 0..self.gpus.len() {
            let w = &self.gpus[i];
            let due = matches!(
                w.reg.status,
                RegistrationStatus::Lost | RegistrationStatus::Failed
            ) && w.last_attempt.elapsed() >= RETRY_INTERVAL;
            if due {
                self.register(i);
            }
        }
    }

    /// After a wait reported `NVML_ERROR_GPU_IS_LOST`: ask every registered GPU for its UUID
    /// and mark those that fail so as lost. Returns how many GPUs are lost now (new or known).
    fn find_lost(&mut self) -> usize {
        let mut lost = 0;
        for i in 0..self.gpus.len() {
            let status = self.gpus[i].reg.status;
            if status == RegistrationStatus::Lost {
                lost += 1;
                continue;
            }
            let Some(handle) = self.gpus[i].handle else {
                continue;
            };
            let index = self.gpus[i].reg.gpu;
            if let Err(e) = uuid_of(self.nvml(), handle, index) {
                if is_gpu_lost(&e) {
                    lost += 1;
                    let w = &mut self.gpus[i];
                    w.reg.status = RegistrationStatus::Lost;
                    w.reg.mask = 0;
                    w.reg.error = Some(e.to_string());
                    w.last_attempt = Instant::now();
                    let event = Event::lost(index, w.reg.uuid.clone(), &e);
                    self.pending.push_back(event);
                }
            }
        }
        lost
    }

    /// The GPU NVML names in an event: by handle, else by `nvmlDeviceGetIndex`.
    fn place(&self, handle: Handle) -> (Option<u32>, Option<String>) {
        if let Some(w) = self.gpus.iter().find(|w| w.handle == Some(handle)) {
            return (Some(w.reg.gpu), w.reg.uuid.clone());
        }
        let Ok(f) = self.nvml().lib().nvmlDeviceGetIndex.as_ref() else {
            return (None, None);
        };
        let mut index: c_uint = 0;
        // SAFETY: NVML handed out this handle in the event; an out-pointer to a local.
        if unsafe { f(handle.0, &mut index) } != raw::SUCCESS {
            return (None, None);
        }
        let uuid = self
            .gpus
            .iter()
            .find(|w| w.reg.gpu == index)
            .and_then(|w| w.reg.uuid.clone());
        (Some(index), uuid)
    }

    /// One `nvmlEventSetWait_v2`: `Ok(None)` on timeout.
    fn wait_one(&mut self, timeout_ms: u32) -> Result<Option<Event>> {
        const CALL: &str = "nvmlEventSetWait_v2";
        let f = symbol(&self.nvml().lib().nvmlEventSetWait_v2, CALL, None)?;
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut data: sys::nvmlEventData_t = unsafe { std::mem::zeroed() };
        // SAFETY: the set this session created and an out-pointer to a local.
        let rc = unsafe { f(self.set.0, &mut data, timeout_ms as c_uint) };
        if rc == ERROR_TIMEOUT {
            return Ok(None);
        }
        check(CALL, None, rc)?;
        let (gpu, uuid) = self.place(Handle(data.device));
        let event_type = data.eventType;
        Ok(Some(Event {
            kind: EventKind::from_type(event_type),
            event_type,
            gpu,
            uuid,
            data: data.eventData,
            gpu_instance_id: instance(data.gpuInstanceId),
            compute_instance_id: instance(data.computeInstanceId),
            timestamp_us: now_us(),
            detail: None,
        }))
    }

    fn registrations(&self) -> Vec<Registration> {
        self.gpus.iter().map(|w| w.reg.clone()).collect()
    }
}

/// Watches every GPU of a session (or the ones chosen) for health events.
///
/// All methods take `&self` and may be called from any thread. [`EventWatcher::wait`] holds the
/// event set for as long as it waits (which is as long as NVML takes, should NVML hang), so
/// [`EventWatcher::close`] never waits for it: it marks the watcher closed and, when a call is
/// in flight, leaves freeing the set to that call once it returns.
pub struct EventWatcher {
    inner: Mutex<Option<Inner>>,
    /// The registrations as of the last change, readable while a wait is in flight.
    registrations: Mutex<Vec<Registration>>,
    /// Set by [`EventWatcher::close`]; whoever holds `inner` next frees the set.
    closing: AtomicBool,
}

impl std::fmt::Debug for EventWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWatcher")
            .field("registrations", &*self.registrations.lock())
            .finish_non_exhaustive()
    }
}

fn closed() -> CoreError {
    CoreError::InvalidArgument("the event watcher is closed".to_owned())
}

impl EventWatcher {
    /// Create an event set on `session` and register the GPUs `gpus` (NVML indices; `None`:
    /// every GPU). GPUs that do not support the watched events, are lost, or fail to register
    /// do not fail the watcher; see [`EventWatcher::registrations`]. Lost GPUs are reported by
    /// the first [`EventWatcher::wait`] as [`EventKind::GpuLost`] events.
    pub fn new(session: Arc<Session>, gpus: Option<&[u32]>) -> Result<EventWatcher> {
        const CREATE: &str = "nvmlEventSetCreate";
        let nvml = session.nvml();
        let count = nvml
            .device_count()
            .map_err(|e| wrap("nvmlDeviceGetCount_v2", None, e))?;
        let indices: Vec<u32> = match gpus {
            None => (0..count).collect(),
            Some(list) => {
                let mut v = Vec::with_capacity(list.len());
                for &g in list {
                    if g >= count {
                        return Err(CoreError::InvalidArgument(format!(
                            "gpu {g} does not exist; this node has GPUs 0..{count}"
                        )));
                    }
                    if !v.contains(&g) {
                        v.push(g);
                    }
                }
                v
            }
        };
        let create = symbol(&nvml.lib().nvmlEventSetCreate, CREATE, None)?;
        let mut set: sys::nvmlEventSet_t = ptr::null_mut();
        // SAFETY: an out-pointer to a local.
        check(CREATE, None, unsafe { create(&mut set) })?;
        let now = Instant::now();
        let mut inner = Inner {
            session,
            set: RawSet(set),
            gpus: indices
                .into_iter()
                .map(|gpu| Watched {
                    reg: Registration {
                        gpu,
                        uuid: None,
                        mask: 0,
                        status: RegistrationStatus::Failed,
                        error: None,
                    },
                    handle: None,
                    last_attempt: now,
                })
                .collect(),
            pending: VecDeque::new(),
        };
        for i in 0..inner.gpus.len() {
            inner.register(i);
        }
        let registrations = inner.registrations();
        Ok(EventWatcher {
            inner: Mutex::new(Some(inner)),
            registrations: Mutex::new(registrations),
            closing: AtomicBool::new(false),
        })
    }

    /// [`EventWatcher::new`] on the process-wide session for the library `path`.
    pub fn open(path: Option<&str>, gpus: Option<&[u32]>) -> Result<EventWatcher> {
        EventWatcher::new(Session::shared(path)?, gpus)
    }

    /// Wait up to `timeout_ms` for events and return every event available then (at most
    /// [`MAX_BATCH`]); empty on timeout.
    ///
    /// Events queued earlier (lost GPUs) come back at once, without waiting. A wait that fails
    /// with `NVML_ERROR_GPU_IS_LOST` is answered with a [`EventKind::GpuLost`] event for each GPU
    /// newly found lost; when only GPUs already known lost explain it, the call waits out its
    /// timeout and returns nothing (rather than spinning). Any other failure is the error
    /// naming `nvmlEventSetWait_v2`.
    pub fn wait(&self, timeout_ms: u32) -> Result<Vec<Event>> {
        let started = Instant::now();
        if self.is_closed() {
            return Err(closed());
        }
        let result = {
            let mut guard = self.inner.lock();
            let inner = guard.as_mut().ok_or_else(closed)?;
            inner.retry_registrations();
            let result = Self::collect(inner, timeout_ms, started);
            *self.registrations.lock() = inner.registrations();
            result
        };
        self.finish_close();
        result
    }

    fn collect(inner: &mut Inner, timeout_ms: u32, started: Instant) -> Result<Vec<Event>> {
        let mut out: Vec<Event> = inner.pending.drain(..).collect();
        if !out.is_empty() {
            return Ok(out);
        }
        match inner.wait_one(timeout_ms) {
            Ok(Some(e)) => out.push(e),
            Ok(None) => return Ok(out),
            Err(e) if is_gpu_lost(&e) => {
                let known = inner
                    .gpus
                    .iter()
                    .filter(|w| w.reg.status == RegistrationStatus::Lost)
                    .count();
                let lost = inner.find_lost();
                if lost == 0 {
                    return Err(e);
                }
                if lost == known && inner.pending.is_empty() {
                    let budget = Duration::from_millis(u64::from(timeout_ms));
                    if let Some(rest) = budget.checked_sub(started.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
                return Ok(inner.pending.drain(..).collect());
            }
            Err(e) => return Err(e),
        }
        // Drain what else is ready, without waiting.
        while out.len() < MAX_BATCH {
            match inner.wait_one(0) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => break,
                Err(e) => {
                    if is_gpu_lost(&e) {
                        inner.find_lost();
                    }
                    break;
                }
            }
        }
        out.extend(inner.pending.drain(..));
        Ok(out)
    }

    /// Register GPU `gpu` again now (for instance after it was reset). Returns its registration.
    pub fn rearm(&self, gpu: u32) -> Result<Registration> {
        if self.is_closed() {
            return Err(closed());
        }
        let reg = {
            let mut guard = self.inner.lock();
            let inner = guard.as_mut().ok_or_else(closed)?;
            let i = inner
                .gpus
                .iter()
                .position(|w| w.reg.gpu == gpu)
                .ok_or_else(|| {
                    CoreError::InvalidArgument(format!("GPU {gpu} is not watched by this watcher"))
                })?;
            inner.register(i);
            let reg = inner.gpus[i].reg.clone();
            *self.registrations.lock() = inner.registrations();
            reg
        };
        self.finish_close();
        Ok(reg)
    }

    /// What registering each watched GPU came to, in the order the GPUs were given.
    pub fn registrations(&self) -> Vec<Registration> {
        self.registrations.lock().clone()
    }

    /// Close the watcher: every later call is [`CoreError::InvalidArgument`]. Never waits for
    /// NVML: with no call in flight the event set is freed (and the NVML session let go of)
    /// here; with a [`EventWatcher::wait`] or [`EventWatcher::rearm`] in flight, that call
    /// frees it when it returns, however long NVML keeps it. Closing twice is harmless.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.finish_close();
    }

    /// Free the event set if [`EventWatcher::close`] was called and nobody holds it. Every
    /// holder of `inner` calls this after letting go, so the last one frees it: `close` sets
    /// `closing` before trying the lock, and a holder checks it after releasing.
    fn finish_close(&self) {
        if !self.closing.load(Ordering::SeqCst) {
            return;
        }
        let Some(mut guard) = self.inner.try_lock() else {
            return;
        };
        let inner = guard.take();
        drop(guard);
        drop(inner);
    }

    /// Whether [`EventWatcher::close`] was called (the set may still be held by a wait that has
    /// not returned).
    pub fn is_closed(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// Re-probe GPU `gpu`: cheap read-only calls that a healthy GPU answers — handle by index,
/// UUID, memory information, temperature and power draw. Calls the GPU does not support or
/// the caller may not make (`NOT_SUPPORTED`, `NO_PERMISSION`, a missing symbol) count as
/// answered; any other failure is returned, naming the call
/// (`NVML_ERROR_GPU_IS_LOST` = 15 for a GPU that fell off the bus).
pub fn probe(session: &Session, gpu: u32) -> Result<()> {
    let nvml = session.nvml();
    let g = Some(gpu);
    let dev = nvml
        .device_by_index(gpu)
        .map_err(|e| wrap("nvmlDeviceGetHandleByIndex_v2", g, e))?;
    dev.uuid().map_err(|e| wrap("nvmlDeviceGetUUID", g, e))?;
    let optional = |call: &str, r: std::result::Result<(), NvmlError>| -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = wrap(call, g, e);
                if code(&err).is_some_and(unsupported_code) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    };
    optional("nvmlDeviceGetMemoryInfo_v2", dev.memory_info().map(|_| ()))?;
    optional(
        "nvmlDeviceGetTemperature",
        dev.temperature(TemperatureSensor::Gpu).map(|_| ()),
    )?;
    optional("nvmlDeviceGetPowerUsage", dev.power_usage().map(|_| ()))?;
    Ok(())
}

/// [`probe`] on the process-wide session for the library `path`.
pub fn probe_gpu(path: Option<&str>, gpu: u32) -> Result<()> {
    let session = Session::shared(path)?;
    let count = session
        .nvml()
        .device_count()
        .map_err(|e| wrap("nvmlDeviceGetCount_v2", None, e))?;
    if gpu >= count {
        return Err(CoreError::InvalidArgument(format!(
            "gpu {gpu} does not exist; this node has GPUs 0..{count}"
        )));
    }
    probe(&session, gpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name_and_type() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_name(k.name()), Some(k));
        }
        assert_eq!(EventKind::from_name("XID"), None);
        assert_eq!(EventKind::from_type(0x8), EventKind::Xid);
        assert_eq!(EventKind::from_type(0x2), EventKind::DoubleBitEcc);
        assert_eq!(EventKind::from_type(0x1), EventKind::SingleBitEcc);
        assert_eq!(EventKind::from_type(0x100), EventKind::MigConfigChange);
        assert_eq!(EventKind::from_type(0x4), EventKind::Other);
        assert_eq!(EventKind::from_type(0x8 | 0x1), EventKind::Xid);
        for k in [
            EventKind::Xid,
            EventKind::DoubleBitEcc,
            EventKind::SingleBitEcc,
            EventKind::MigConfigChange,
        ] {
            assert_eq!(EventKind::from_type(k.event_type()), k);
        }
    }

    #[test]
    fn watched_mask_matches_nvml_h() {
        assert_eq!(WATCHED_EVENTS, 0x8 | 0x2 | 0x1 | 0x100);
        assert_eq!(ERROR_GPU_IS_LOST, 15);
        assert_eq!(instance(NO_INSTANCE), None);
        assert_eq!(instance(3), Some(3));
    }

    #[test]
    fn lost_events_carry_the_error() {
        let err = raw::from_code("nvmlDeviceGetUUID", Some(2), ERROR_GPU_IS_LOST);
        assert!(is_gpu_lost(&err));
        let e = Event::lost(2, Some("GPU-x".into()), &err);
        assert_eq!(e.kind, EventKind::GpuLost);
        assert_eq!(e.gpu, Some(2));
        assert_eq!(e.xid(), None);
        assert!(e.detail.unwrap().contains("NVML error 15"));
        assert!(e.timestamp_us > 0);
    }

    #[test]
    fn a_missing_library_fails_to_open() {
        assert!(matches!(
            EventWatcher::open(Some("/nonexistent/libnvidia-ml.so.1"), None),
            Err(CoreError::LibraryNotFound { .. })
        ));
        assert!(matches!(
            probe_gpu(Some("/nonexistent/libnvidia-ml.so.1"), 0),
            Err(CoreError::LibraryNotFound { .. })
        ));
    }
}
