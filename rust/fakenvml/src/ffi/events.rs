//! Events: XID errors, ECC errors and MIG configuration changes, delivered across processes.
//!
//! Events live in the shared state's log with increasing sequence numbers. A registration
//! remembers the newest sequence number at the time it was made (earlier events are not
//! delivered), and an event set remembers the last event it delivered. `nvmlEventSetWait*`
//! polls the shared state until a matching event appears or the timeout passes, so events
//! injected by another process are seen.

use std::ffi::{c_uint, c_ulonglong};
use std::time::{Duration, Instant};

use crate::abi::{self, sys, Ret};
use crate::runtime::{self, HandleKey};
use crate::state::Event;
use crate::util::out;

use super::device::gpu_spec;

/// How often a waiting call looks at the shared state.
const POLL: Duration = Duration::from_millis(5);

/// Event types a GPU supports.
pub fn supported_event_types(mig_capable: bool) -> u64 {
    let base =
        abi::EVENT_SBE | abi::EVENT_DBE | abi::EVENT_PSTATE | abi::EVENT_XID | abi::EVENT_CLOCK;
    if mig_capable {
        base | abi::EVENT_MIG_CONFIG_CHANGE
    } else {
        base
    }
}

/// Wait for the next event of `set`; NVML_ERROR_TIMEOUT when none comes in time.
fn wait(call_name: &str, set: sys::nvmlEventSet_t, timeout_ms: c_uint) -> Result<Event, Ret> {
    let session = runtime::session()?;
    let set = runtime::event_set(set).ok_or(abi::ERROR_INVALID_ARGUMENT)?;
    let mut st = session.prologue(call_name, None)?;
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    loop {
        {
            let regs = set.registrations.lock();
            let mut delivered = set.delivered.lock();
            let next = st.events.iter().find(|e| {
                e.seq > *delivered
                    && regs.iter().any(|r| {
                        r.gpu == e.gpu as usize && r.mask & e.event_type != 0 && e.seq > r.since
                    })
            });
            if let Some(e) = next {
                *delivered = e.seq;
                return Ok(e.clone());
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(abi::ERROR_TIMEOUT);
        }
        std::thread::sleep(POLL.min(deadline - now));
        st = session.state()?;
    }
}

nvml_export! {
    fn nvmlEventSetCreate(set: *mut sys::nvmlEventSet_t) {
        let _call = runtime::system_call(CALL)?;
        if set.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        out(set, runtime::event_set_create())
    }

    fn nvmlDeviceRegisterEvents(device: sys::nvmlDevice_t, event_types: c_ulonglong, set: sys::nvmlEventSet_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        let es = runtime::event_set(set).ok_or(abi::ERROR_INVALID_ARGUMENT)?;
        let supported = supported_event_types(gpu_spec(&call, gpu).model.mig.is_some());
        if event_types & !supported != 0 {
            runtime::set_last_error(format!(
                "GPU {gpu} does not support event types {:#x} (supported: {supported:#x})",
                event_types & !supported
            ));
            return Err(abi::ERROR_NOT_SUPPORTED);
        }
        // Each registration delivers its types from now on; registering more types later
        // adds a registration rather than moving the start of the earlier ones.
        es.registrations.lock().push(runtime::Registration { gpu, mask: event_types, since: call.st.last_seq() });
        Ok(())
    }

    fn nvmlDeviceGetSupportedEventTypes(device: sys::nvmlDevice_t, event_types: *mut c_ulonglong) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        out(event_types, supported_event_types(gpu_spec(&call, gpu).model.mig.is_some()))
    }

    fn nvmlEventSetWait(set: sys::nvmlEventSet_t, data: *mut abi::EventDataV1, timeout_ms: c_uint) {
        if data.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let e = wait(CALL, set, timeout_ms)?;
        out(data, abi::EventDataV1 {
            device: runtime::handle_for(HandleKey::Gpu(e.gpu as usize)),
            event_type: e.event_type,
            event_data: e.data,
        })
    }

    fn nvmlEventSetWait_v2(set: sys::nvmlEventSet_t, data: *mut sys::nvmlEventData_t, timeout_ms: c_uint) {
        if data.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let e = wait(CALL, set, timeout_ms)?;
        out(data, sys::nvmlEventData_t {
            device: runtime::handle_for(HandleKey::Gpu(e.gpu as usize)),
            eventType: e.event_type,
            eventData: e.data,
            gpuInstanceId: e.gpu_instance.unwrap_or(abi::NO_INSTANCE),
            computeInstanceId: e.compute_instance.unwrap_or(abi::NO_INSTANCE),
        })
    }

    fn nvmlEventSetFree(set: sys::nvmlEventSet_t) {
        let _call = runtime::system_call(CALL)?;
        if runtime::event_set_free(set) {
            Ok(())
        } else {
            Err(abi::ERROR_INVALID_ARGUMENT)
        }
    }
}
