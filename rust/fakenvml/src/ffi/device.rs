//! Per-device queries: identity, memory, telemetry, field values and processes.
//!
//! MIG device handles answer what belongs to the MIG device (name, UUID, memory, attributes,
//! processes) or to its physical GPU (PCI, minor number, compute capability, architecture);
//! telemetry on a MIG handle is NVML_ERROR_NOT_SUPPORTED, as on real drivers, and so are
//! utilisation and encoder/decoder utilisation on a GPU in MIG mode.

use std::ffi::{c_char, c_int, c_uint, c_ulonglong};
use std::time::{SystemTime, UNIX_EPOCH};

use gpulet_core::catalog::MigProfile;

use crate::abi::{self, sys, Ret};
use crate::fields::{self, FieldContext};
use crate::runtime::{self, Call, DevRef};
use crate::spec::GpuSpec;
use crate::state::{ComputeInstance, GpuInstance, GpuState, Process};
use crate::util::{out, slice_mut, struct_version, write_cstr};

const MIB: u64 = 1024 * 1024;
/// Encoder/decoder sampling period reported, in microseconds.
const SAMPLING_PERIOD_US: c_uint = 166_666;

/// The MIG device behind a MIG handle.
pub struct MigView<'a> {
    pub gi: &'a GpuInstance,
    pub ci: &'a ComputeInstance,
    pub gi_profile: &'static MigProfile,
}

pub fn gpu_spec(call: &Call, gpu: usize) -> &GpuSpec {
    &call.node().gpus[gpu]
}

pub fn gpu_state(call: &Call, gpu: usize) -> &GpuState {
    &call.st.gpus[gpu]
}

/// Resolve a MIG handle's instances (`None` for a physical GPU handle).
pub fn mig_view<'a>(call: &'a Call, dev: &DevRef) -> Result<Option<MigView<'a>>, Ret> {
    let Some((gi_id, ci_id)) = dev.mig else {
        return Ok(None);
    };
    let geometry = gpu_spec(call, dev.gpu)
        .model
        .mig
        .ok_or(abi::ERROR_INVALID_ARGUMENT)?;
    let gi = gpu_state(call, dev.gpu)
        .gpu_instances
        .iter()
        .find(|g| g.id == gi_id)
        .ok_or(abi::ERROR_INVALID_ARGUMENT)?;
    let ci = gi
        .compute_instances
        .iter()
        .find(|c| c.id == ci_id)
        .ok_or(abi::ERROR_INVALID_ARGUMENT)?;
    let gi_profile = geometry
        .profile_by_id(gi.profile_id)
        .ok_or(abi::ERROR_INVALID_ARGUMENT)?;
    Ok(Some(MigView { gi, ci, gi_profile }))
}

/// MIG devices of a GPU in `nvmlDeviceGetMigDeviceHandleByIndex` order.
pub fn mig_devices(gs: &GpuState) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = gs
        .gpu_instances
        .iter()
        .flat_map(|gi| gi.compute_instances.iter().map(move |ci| (gi.id, ci.id)))
        .collect();
    v.sort_unstable();
    v
}

fn process_memory(processes: &[Process], keep: impl Fn(&Process) -> bool) -> u64 {
    processes
        .iter()
        .filter(|p| keep(p))
        .map(|p| p.used_memory_mib)
        .sum()
}

/// (total, reserved, used including reserved) in bytes.
fn memory_of(call: &Call, dev: &DevRef) -> Result<(u64, u64, u64), Ret> {
    let gs = gpu_state(call, dev.gpu);
    if let Some(m) = mig_view(call, dev)? {
        let total = m.gi_profile.memory_mib * MIB;
        let used = process_memory(&gs.processes, |p| p.gpu_instance == Some(m.gi.id)) * MIB;
        return Ok((total, 0, used.min(total)));
    }
    let total = gpu_spec(call, dev.gpu).model.memory_mib * MIB;
    let reserved = gs
        .metrics
        .memory_reserved_mib
        .saturating_mul(MIB)
        .min(total);
    let allocated = gs
        .metrics
        .memory_used_mib
        .unwrap_or_else(|| process_memory(&gs.processes, |_| true))
        .saturating_mul(MIB);
    Ok((
        total,
        reserved,
        allocated.saturating_add(reserved).min(total),
    ))
}

fn physical_not_in_mig_mode(call: &Call, dev: &DevRef) -> Result<usize, Ret> {
    let gpu = dev.physical()?;
    if gpu_state(call, gpu).mig_enabled {
        return Err(abi::ERROR_NOT_SUPPORTED);
    }
    Ok(gpu)
}

fn running_processes(call: &Call, dev: &DevRef) -> Result<Vec<Process>, Ret> {
    let gs = gpu_state(call, dev.gpu);
    Ok(match dev.mig {
        None => gs.processes.clone(),
        Some((gi, ci)) => gs
            .processes
            .iter()
            .filter(|p| p.gpu_instance == Some(gi) && p.compute_instance.is_none_or(|c| c == ci))
            .cloned()
            .collect(),
    })
}

/// NVML's list convention: `*count` is the room in `array` on the way in and the number of
/// entries on the way out; too little room → NVML_ERROR_INSUFFICIENT_SIZE.
///
/// # Safety
/// `count` null or valid for read and write; `array` null or valid for `*count` elements.
pub unsafe fn list_out<T>(count: *mut c_uint, array: *mut T, items: &[T]) -> Result<(), Ret>
where
    T: Copy,
{
    if count.is_null() {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    }
    let room = *count as usize;
    *count = items.len() as c_uint;
    if items.is_empty() {
        return Ok(());
    }
    if room < items.len() {
        return Err(abi::ERROR_INSUFFICIENT_SIZE);
    }
    let dst = slice_mut(array, items.len())?;
    dst.copy_from_slice(items);
    Ok(())
}

fn process_v2(p: &Process) -> sys::nvmlProcessInfo_t {
    sys::nvmlProcessInfo_t {
        pid: p.pid,
        usedGpuMemory: p.used_memory_mib * MIB,
        gpuInstanceId: p.gpu_instance.unwrap_or(abi::NO_INSTANCE),
        computeInstanceId: p.compute_instance.unwrap_or(abi::NO_INSTANCE),
    }
}

fn timestamp_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn attributes(call: &Call, dev: &DevRef) -> Result<sys::nvmlDeviceAttributes_t, Ret> {
    let model = gpu_spec(call, dev.gpu).model;
    if let Some(m) = mig_view(call, dev)? {
        let p = m.gi_profile;
        return Ok(sys::nvmlDeviceAttributes_t {
            multiprocessorCount: p.multiprocessors * m.ci.size / p.compute_slices.max(1),
            sharedCopyEngineCount: p.copy_engines,
            sharedDecoderCount: p.decoders,
            sharedEncoderCount: p.encoders,
            sharedJpegCount: p.jpegs,
            sharedOfaCount: p.ofas,
            gpuInstanceSliceCount: p.compute_slices,
            computeInstanceSliceCount: m.ci.size,
            memorySizeMB: p.memory_mib,
        });
    }
    // The whole GPU: engine counts of the profile that spans it, where the model has MIG.
    let full = model.mig.and_then(|g| {
        g.profiles
            .iter()
            .find(|p| p.compute_slices == g.compute_slices)
    });
    Ok(sys::nvmlDeviceAttributes_t {
        multiprocessorCount: model.multiprocessors,
        sharedCopyEngineCount: full.map_or(0, |p| p.copy_engines),
        sharedDecoderCount: full.map_or(0, |p| p.decoders),
        sharedEncoderCount: full.map_or(0, |p| p.encoders),
        sharedJpegCount: full.map_or(0, |p| p.jpegs),
        sharedOfaCount: full.map_or(0, |p| p.ofas),
        gpuInstanceSliceCount: model.mig.map_or(0, |g| g.compute_slices),
        computeInstanceSliceCount: model.mig.map_or(0, |g| g.compute_slices),
        memorySizeMB: model.memory_mib,
    })
}

fn pci(call: &Call, gpu: usize) -> sys::nvmlPciInfo_t {
    let g = gpu_spec(call, gpu);
    super::pci_info(&g.pci, g.model.pci_device_id, g.model.pci_subsystem_id)
}

nvml_export! {
    fn nvmlDeviceGetName(device: sys::nvmlDevice_t, name: *mut c_char, length: c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let product = gpu_spec(&call, dev.gpu).model.product_name;
        let text = match mig_view(&call, &dev)? {
            Some(m) => format!("{product} MIG {}", crate::mig::ci_name(m.gi_profile, m.ci.size)),
            None => product.to_string(),
        };
        write_cstr(name, length, &text)
    }

    fn nvmlDeviceGetUUID(device: sys::nvmlDevice_t, uuid: *mut c_char, length: c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let text = match mig_view(&call, &dev)? {
            Some(m) => m.ci.uuid.clone(),
            None => gpu_spec(&call, dev.gpu).uuid.clone(),
        };
        write_cstr(uuid, length, &text)
    }

    fn nvmlDeviceGetSerial(device: sys::nvmlDevice_t, serial: *mut c_char, length: c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        write_cstr(serial, length, &gpu_spec(&call, dev.gpu).serial)
    }

    fn nvmlDeviceGetMinorNumber(device: sys::nvmlDevice_t, minor_number: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(minor_number, gpu_spec(&call, dev.gpu).minor)
    }

    fn nvmlDeviceGetIndex(device: sys::nvmlDevice_t, index: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let i = match dev.mig {
            None => dev.gpu,
            Some(key) => mig_devices(gpu_state(&call, dev.gpu))
                .iter()
                .position(|k| *k == key)
                .ok_or(abi::ERROR_INVALID_ARGUMENT)?,
        };
        out(index, i as c_uint)
    }

    fn nvmlDeviceGetPciInfo_v2(device: sys::nvmlDevice_t, pci_info: *mut sys::nvmlPciInfo_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(pci_info, pci(&call, dev.gpu))
    }

    fn nvmlDeviceGetPciInfo_v3(device: sys::nvmlDevice_t, pci_info: *mut sys::nvmlPciInfo_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(pci_info, pci(&call, dev.gpu))
    }

    fn nvmlDeviceGetMemoryInfo(device: sys::nvmlDevice_t, memory: *mut sys::nvmlMemory_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let (total, _, used) = memory_of(&call, &dev)?;
        out(memory, sys::nvmlMemory_t { total, free: total - used, used })
    }

    fn nvmlDeviceGetMemoryInfo_v2(device: sys::nvmlDevice_t, memory: *mut sys::nvmlMemory_v2_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        if struct_version(memory)? != abi::MEMORY_V2 {
            return Err(abi::ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let (total, reserved, used) = memory_of(&call, &dev)?;
        out(memory, sys::nvmlMemory_v2_t { version: abi::MEMORY_V2, total, reserved, free: total - used, used })
    }

    fn nvmlDeviceGetUtilizationRates(device: sys::nvmlDevice_t, utilization: *mut sys::nvmlUtilization_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = physical_not_in_mig_mode(&call, &dev)?;
        let m = &gpu_state(&call, gpu).metrics;
        out(utilization, sys::nvmlUtilization_t { gpu: m.gpu_utilization as c_uint, memory: m.memory_utilization as c_uint })
    }

    fn nvmlDeviceGetTemperature(device: sys::nvmlDevice_t, sensor_type: c_uint, temp: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        if sensor_type != sys::nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        out(temp, gpu_state(&call, gpu).metrics.temperature as c_uint)
    }

    fn nvmlDeviceGetTemperatureV(device: sys::nvmlDevice_t, temperature: *mut sys::nvmlTemperature_v1_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        if struct_version(temperature)? != abi::TEMPERATURE_V1 {
            return Err(abi::ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let t = &mut *temperature;
        if t.sensorType != sys::nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        t.temperature = gpu_state(&call, gpu).metrics.temperature as c_int;
        Ok(())
    }

    fn nvmlDeviceGetPowerUsage(device: sys::nvmlDevice_t, power: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(power, gpu_state(&call, dev.physical()?).metrics.power_mw as c_uint)
    }

    fn nvmlDeviceGetPowerManagementLimit(device: sys::nvmlDevice_t, limit: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(limit, gpu_state(&call, dev.physical()?).metrics.power_limit_mw as c_uint)
    }

    fn nvmlDeviceGetPowerManagementDefaultLimit(device: sys::nvmlDevice_t, default_limit: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(default_limit, gpu_spec(&call, dev.physical()?).model.power_limit_mw)
    }

    fn nvmlDeviceGetEnforcedPowerLimit(device: sys::nvmlDevice_t, limit: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(limit, gpu_state(&call, dev.physical()?).metrics.power_limit_mw as c_uint)
    }

    fn nvmlDeviceGetTotalEnergyConsumption(device: sys::nvmlDevice_t, energy: *mut c_ulonglong) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(energy, gpu_state(&call, dev.physical()?).metrics.energy_mj)
    }

    fn nvmlDeviceGetClockInfo(device: sys::nvmlDevice_t, clock_type: c_uint, clock: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let m = &gpu_state(&call, dev.physical()?).metrics;
        let mhz = match clock_type {
            sys::nvmlClockType_enum_NVML_CLOCK_GRAPHICS => m.graphics_clock_mhz,
            sys::nvmlClockType_enum_NVML_CLOCK_SM => m.sm_clock_mhz,
            sys::nvmlClockType_enum_NVML_CLOCK_MEM => m.memory_clock_mhz,
            sys::nvmlClockType_enum_NVML_CLOCK_VIDEO => m.video_clock_mhz,
            _ => return Err(abi::ERROR_INVALID_ARGUMENT),
        };
        out(clock, mhz as c_uint)
    }

    fn nvmlDeviceGetMaxClockInfo(device: sys::nvmlDevice_t, clock_type: c_uint, clock: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let model = gpu_spec(&call, dev.physical()?).model;
        let mhz = match clock_type {
            sys::nvmlClockType_enum_NVML_CLOCK_GRAPHICS
            | sys::nvmlClockType_enum_NVML_CLOCK_SM
            | sys::nvmlClockType_enum_NVML_CLOCK_VIDEO => model.max_sm_clock_mhz,
            sys::nvmlClockType_enum_NVML_CLOCK_MEM => model.max_mem_clock_mhz,
            _ => return Err(abi::ERROR_INVALID_ARGUMENT),
        };
        out(clock, mhz)
    }

    fn nvmlDeviceGetPcieReplayCounter(device: sys::nvmlDevice_t, value: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(value, gpu_state(&call, dev.physical()?).metrics.pcie_replay_counter as c_uint)
    }

    fn nvmlDeviceGetTotalEccErrors(
        device: sys::nvmlDevice_t,
        error_type: c_uint,
        counter_type: c_uint,
        ecc_counts: *mut c_ulonglong,
    ) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let m = &gpu_state(&call, dev.physical()?).metrics;
        let v = match (error_type, counter_type) {
            (0, 0) => m.ecc_corrected_volatile,
            (1, 0) => m.ecc_uncorrected_volatile,
            (0, 1) => m.ecc_corrected_aggregate,
            (1, 1) => m.ecc_uncorrected_aggregate,
            _ => return Err(abi::ERROR_INVALID_ARGUMENT),
        };
        out(ecc_counts, v)
    }

    fn nvmlDeviceGetEccMode(device: sys::nvmlDevice_t, current: *mut c_uint, pending: *mut c_uint) {
        let (_call, dev) = runtime::device_call(CALL, device)?;
        dev.physical()?;
        if current.is_null() || pending.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        out(current, sys::nvmlEnableState_enum_NVML_FEATURE_ENABLED)?;
        out(pending, sys::nvmlEnableState_enum_NVML_FEATURE_ENABLED)
    }

    fn nvmlDeviceGetEncoderUtilization(device: sys::nvmlDevice_t, utilization: *mut c_uint, sampling_period_us: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = physical_not_in_mig_mode(&call, &dev)?;
        if utilization.is_null() || sampling_period_us.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        out(utilization, gpu_state(&call, gpu).metrics.encoder_utilization as c_uint)?;
        out(sampling_period_us, SAMPLING_PERIOD_US)
    }

    fn nvmlDeviceGetDecoderUtilization(device: sys::nvmlDevice_t, utilization: *mut c_uint, sampling_period_us: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = physical_not_in_mig_mode(&call, &dev)?;
        if utilization.is_null() || sampling_period_us.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        out(utilization, gpu_state(&call, gpu).metrics.decoder_utilization as c_uint)?;
        out(sampling_period_us, SAMPLING_PERIOD_US)
    }

    fn nvmlDeviceGetFieldValues(device: sys::nvmlDevice_t, values_count: c_int, values: *mut sys::nvmlFieldValue_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        if values_count <= 0 {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let values = slice_mut(values, values_count as usize)?;
        let cx = FieldContext {
            gpu: gpu_spec(&call, gpu),
            state: gpu_state(&call, gpu),
            links: &call.node().links[gpu],
            nvswitch: !call.node().switches.is_empty(),
        };
        let now = timestamp_us();
        for v in values.iter_mut() {
            v.timestamp = now;
            v.latencyUsec = 0;
            match fields::read_field(call.node().field_scheme, v.fieldId, v.scopeId, &cx) {
                Ok((ty, num)) => {
                    v.valueType = ty.nvml_value();
                    v.nvmlReturn = abi::SUCCESS;
                    v.value = num.encode(ty);
                }
                Err(code) => {
                    v.nvmlReturn = code;
                    v.value = sys::nvmlValue_t { ullVal: 0 };
                }
            }
        }
        Ok(())
    }

    fn nvmlDeviceGetArchitecture(device: sys::nvmlDevice_t, arch: *mut sys::nvmlDeviceArchitecture_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(arch, gpu_spec(&call, dev.gpu).model.architecture.nvml_value())
    }

    fn nvmlDeviceGetCudaComputeCapability(device: sys::nvmlDevice_t, major: *mut c_int, minor: *mut c_int) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        if major.is_null() || minor.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let (a, b) = gpu_spec(&call, dev.gpu).model.compute_capability;
        out(major, a as c_int)?;
        out(minor, b as c_int)
    }

    fn nvmlDeviceGetBrand(device: sys::nvmlDevice_t, brand: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let product = gpu_spec(&call, dev.gpu).model.product_name;
        out(brand, if product.starts_with("Tesla") { abi::BRAND_TESLA } else { abi::BRAND_NVIDIA })
    }

    fn nvmlDeviceGetPersistenceMode(device: sys::nvmlDevice_t, mode: *mut c_uint) {
        let (_call, dev) = runtime::device_call(CALL, device)?;
        dev.physical()?;
        out(mode, sys::nvmlEnableState_enum_NVML_FEATURE_ENABLED)
    }

    fn nvmlDeviceGetComputeMode(device: sys::nvmlDevice_t, mode: *mut c_uint) {
        let (_call, dev) = runtime::device_call(CALL, device)?;
        dev.physical()?;
        out(mode, sys::nvmlComputeMode_enum_NVML_COMPUTEMODE_DEFAULT)
    }

    fn nvmlDeviceGetPerformanceState(device: sys::nvmlDevice_t, p_state: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(p_state, gpu_state(&call, dev.physical()?).metrics.performance_state as c_uint)
    }

    fn nvmlDeviceGetAttributes(device: sys::nvmlDevice_t, attributes: *mut sys::nvmlDeviceAttributes_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(attributes, self::attributes(&call, &dev)?)
    }

    fn nvmlDeviceGetAttributes_v2(device: sys::nvmlDevice_t, attributes: *mut sys::nvmlDeviceAttributes_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        out(attributes, self::attributes(&call, &dev)?)
    }

    fn nvmlDeviceGetComputeRunningProcesses(device: sys::nvmlDevice_t, info_count: *mut c_uint, infos: *mut sys::nvmlProcessInfo_v1_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let items: Vec<sys::nvmlProcessInfo_v1_t> = running_processes(&call, &dev)?
            .iter()
            .map(|p| sys::nvmlProcessInfo_v1_t { pid: p.pid, usedGpuMemory: p.used_memory_mib * MIB })
            .collect();
        list_out(info_count, infos, &items)
    }

    fn nvmlDeviceGetComputeRunningProcesses_v2(device: sys::nvmlDevice_t, info_count: *mut c_uint, infos: *mut sys::nvmlProcessInfo_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let items: Vec<_> = running_processes(&call, &dev)?.iter().map(process_v2).collect();
        list_out(info_count, infos, &items)
    }

    fn nvmlDeviceGetComputeRunningProcesses_v3(device: sys::nvmlDevice_t, info_count: *mut c_uint, infos: *mut sys::nvmlProcessInfo_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let items: Vec<_> = running_processes(&call, &dev)?.iter().map(process_v2).collect();
        list_out(info_count, infos, &items)
    }

    fn nvmlDeviceGetGraphicsRunningProcesses_v3(device: sys::nvmlDevice_t, info_count: *mut c_uint, infos: *mut sys::nvmlProcessInfo_t) {
        // A simulated node runs no graphics work.
        let (_call, _dev) = runtime::device_call(CALL, device)?;
        list_out::<sys::nvmlProcessInfo_t>(info_count, infos, &[])
    }

    fn nvmlDeviceGetMPSComputeRunningProcesses_v3(device: sys::nvmlDevice_t, info_count: *mut c_uint, infos: *mut sys::nvmlProcessInfo_t) {
        // Simulated processes are plain CUDA processes, none under MPS.
        let (_call, _dev) = runtime::device_call(CALL, device)?;
        list_out::<sys::nvmlProcessInfo_t>(info_count, infos, &[])
    }
}
