//! Initialisation, system queries and device enumeration.

use std::ffi::{c_char, c_int, c_uint};

use crate::abi::{self, sys, Ret};
use crate::runtime::{self, HandleKey};
use crate::spec::PciAddr;
use crate::util::{out, read_cstr, write_cstr};

/// The handle of GPU `index`, refusing lost GPUs as NVML does.
fn gpu_handle(call: &runtime::Call, index: usize) -> Result<sys::nvmlDevice_t, Ret> {
    if call.st.gpus[index].lost {
        return Err(abi::ERROR_GPU_IS_LOST);
    }
    Ok(runtime::handle_for(HandleKey::Gpu(index)))
}

fn by_index(call_name: &str, index: c_uint, device: *mut sys::nvmlDevice_t) -> Result<(), Ret> {
    let call = runtime::system_call(call_name)?;
    if device.is_null() || index as usize >= call.node().gpus.len() {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    }
    let h = gpu_handle(&call, index as usize)?;
    // SAFETY: checked non-null above; NVML's contract makes it valid for one write.
    unsafe { out(device, h) }
}

fn by_pci(
    call_name: &str,
    bus_id: *const c_char,
    device: *mut sys::nvmlDevice_t,
) -> Result<(), Ret> {
    let call = runtime::system_call(call_name)?;
    // SAFETY: NVML's contract: a NUL-terminated string or null.
    let text = unsafe { read_cstr(bus_id) }?;
    let addr = PciAddr::parse(text).ok_or(abi::ERROR_INVALID_ARGUMENT)?;
    let index = call.node().gpu_by_pci(&addr).ok_or(abi::ERROR_NOT_FOUND)?;
    let h = gpu_handle(&call, index)?;
    // SAFETY: as above.
    unsafe { out(device, h) }
}

fn count(call_name: &str, count: *mut c_uint) -> Result<(), Ret> {
    let call = runtime::system_call(call_name)?;
    // SAFETY: NVML's contract: null or valid for one write.
    unsafe { out(count, call.node().gpus.len() as c_uint) }
}

/// `nvmlErrorString`: a static description of a return code (works before init).
#[no_mangle]
pub extern "C" fn nvmlErrorString(result: Ret) -> *const c_char {
    abi::error_cstring(result).as_ptr()
}

nvml_export! {
    fn nvmlInit() {
        runtime::init(CALL)
    }

    fn nvmlInit_v2() {
        runtime::init(CALL)
    }

    fn nvmlInitWithFlags(flags: c_uint) {
        // NVML_INIT_FLAG_NO_GPUS and NVML_INIT_FLAG_NO_ATTACH change nothing here: a node
        // without GPUs initialises either way, and nothing needs attaching.
        let _ = flags;
        runtime::init(CALL)
    }

    fn nvmlShutdown() {
        runtime::shutdown(CALL)
    }

    fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) {
        let call = runtime::system_call(CALL)?;
        write_cstr(version, length, &call.node().driver_version)
    }

    fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) {
        let call = runtime::system_call(CALL)?;
        write_cstr(version, length, &call.node().nvml_version)
    }

    fn nvmlSystemGetCudaDriverVersion(cuda_driver_version: *mut c_int) {
        let call = runtime::system_call(CALL)?;
        out(cuda_driver_version, call.node().cuda_driver_version)
    }

    fn nvmlSystemGetCudaDriverVersion_v2(cuda_driver_version: *mut c_int) {
        let call = runtime::system_call(CALL)?;
        out(cuda_driver_version, call.node().cuda_driver_version)
    }

    fn nvmlSystemGetProcessName(pid: c_uint, name: *mut c_char, length: c_uint) {
        let call = runtime::system_call(CALL)?;
        let found = call
            .st
            .gpus
            .iter()
            .flat_map(|g| g.processes.iter())
            .find(|p| p.pid == pid)
            .ok_or(abi::ERROR_NOT_FOUND)?;
        let text = found.name.clone().unwrap_or_else(|| format!("process-{pid}"));
        write_cstr(name, length, &text)
    }

    fn nvmlDeviceGetCount(device_count: *mut c_uint) {
        count(CALL, device_count)
    }

    fn nvmlDeviceGetCount_v2(device_count: *mut c_uint) {
        count(CALL, device_count)
    }

    fn nvmlDeviceGetHandleByIndex(index: c_uint, device: *mut sys::nvmlDevice_t) {
        by_index(CALL, index, device)
    }

    fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut sys::nvmlDevice_t) {
        by_index(CALL, index, device)
    }

    fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut sys::nvmlDevice_t) {
        let call = runtime::system_call(CALL)?;
        let wanted = read_cstr(uuid)?.trim();
        if device.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        if let Some(i) = call.node().gpus.iter().position(|g| g.uuid.eq_ignore_ascii_case(wanted)) {
            return out(device, gpu_handle(&call, i)?);
        }
        for (i, gs) in call.st.gpus.iter().enumerate() {
            if !gs.mig_enabled {
                continue;
            }
            for gi in &gs.gpu_instances {
                for ci in &gi.compute_instances {
                    if ci.uuid.eq_ignore_ascii_case(wanted) {
                        if gs.lost {
                            return Err(abi::ERROR_GPU_IS_LOST);
                        }
                        return out(device, runtime::handle_for(HandleKey::Mig(i, gi.id, ci.id)));
                    }
                }
            }
        }
        Err(abi::ERROR_NOT_FOUND)
    }

    fn nvmlDeviceGetHandleByPciBusId(pci_bus_id: *const c_char, device: *mut sys::nvmlDevice_t) {
        by_pci(CALL, pci_bus_id, device)
    }

    fn nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id: *const c_char, device: *mut sys::nvmlDevice_t) {
        by_pci(CALL, pci_bus_id, device)
    }
}
