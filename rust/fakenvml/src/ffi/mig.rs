//! MIG: mode, GPU instance and compute instance profiles, placements, creation and
//! destruction, and MIG device handles.
//!
//! Profile and placement queries answer whether or not MIG mode is on (as GPUs that are "MIG
//! mode independent query capable" do, field 199); listing, creating and destroying instances
//! needs MIG mode. Profile enums past the model's are NVML_ERROR_NOT_SUPPORTED, enums past
//! NVML's range NVML_ERROR_INVALID_ARGUMENT, so clients that loop over the enum stop cleanly.

use std::ffi::c_uint;

use gpulet_core::catalog::{MigGeometry, MigProfile};

use crate::abi::{self, sys, Ret};
use crate::mig;
use crate::runtime::{self, Call, HandleKey};
use crate::state::{GpuInstance, MigError};
use crate::util::{fill_chars, out, struct_version};

use super::device::{gpu_spec, gpu_state, list_out, mig_devices};

fn geometry(call: &Call, gpu: usize) -> Result<MigGeometry, Ret> {
    gpu_spec(call, gpu)
        .model
        .mig
        .ok_or(abi::ERROR_NOT_SUPPORTED)
}

fn geometry_in_mig_mode(call: &Call, gpu: usize) -> Result<MigGeometry, Ret> {
    let g = geometry(call, gpu)?;
    if !gpu_state(call, gpu).mig_enabled {
        return Err(abi::ERROR_NOT_SUPPORTED);
    }
    Ok(g)
}

fn profile_by_enum(call: &Call, gpu: usize, profile: c_uint) -> Result<&'static MigProfile, Ret> {
    if profile >= abi::GPU_INSTANCE_PROFILE_COUNT {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    }
    let g = geometry(call, gpu)?;
    g.profiles
        .iter()
        .find(|p| p.nvml_profile == profile)
        .ok_or(abi::ERROR_NOT_SUPPORTED)
}

fn profile_by_id(call: &Call, gpu: usize, profile_id: c_uint) -> Result<&'static MigProfile, Ret> {
    let g = geometry(call, gpu)?;
    g.profiles
        .iter()
        .find(|p| p.profile_id == profile_id)
        .ok_or(abi::ERROR_INVALID_ARGUMENT)
}

fn mig_failure(e: MigError) -> Ret {
    runtime::set_last_error(e.message);
    e.code
}

fn gi_handle(gpu: usize, id: u32) -> sys::nvmlGpuInstance_t {
    runtime::handle_for(HandleKey::GpuInstance(gpu, id))
}

fn ci_handle(gpu: usize, gi: u32, id: u32) -> sys::nvmlComputeInstance_t {
    runtime::handle_for(HandleKey::ComputeInstance(gpu, gi, id))
}

fn find_gpu_instance(
    call: &Call,
    gpu: usize,
    id: u32,
) -> Result<(&GpuInstance, &'static MigProfile), Ret> {
    let gi = gpu_state(call, gpu)
        .gpu_instances
        .iter()
        .find(|g| g.id == id)
        .ok_or(abi::ERROR_INVALID_ARGUMENT)?;
    let p = geometry(call, gpu)?
        .profile_by_id(gi.profile_id)
        .ok_or(abi::ERROR_INVALID_ARGUMENT)?;
    Ok((gi, p))
}

fn gi_info_v1(p: &MigProfile) -> sys::nvmlGpuInstanceProfileInfo_t {
    sys::nvmlGpuInstanceProfileInfo_t {
        id: p.profile_id,
        isP2pSupported: 0,
        sliceCount: p.compute_slices,
        instanceCount: p.max_instances,
        multiprocessorCount: p.multiprocessors,
        copyEngineCount: p.copy_engines,
        decoderCount: p.decoders,
        encoderCount: p.encoders,
        jpegCount: p.jpegs,
        ofaCount: p.ofas,
        memorySizeMB: p.memory_mib,
    }
}

/// Fill a versioned GPU instance profile info struct (v2 or v3, by its version field).
///
/// # Safety
/// `info` null or valid for a write of the struct its version names.
unsafe fn write_gi_info_versioned(
    info: *mut sys::nvmlGpuInstanceProfileInfo_v2_t,
    p: &MigProfile,
) -> Result<(), Ret> {
    let name = format!("MIG {}", p.name);
    match struct_version(info)? {
        abi::GI_PROFILE_INFO_V2 => {
            let mut v = sys::nvmlGpuInstanceProfileInfo_v2_t {
                version: abi::GI_PROFILE_INFO_V2,
                id: p.profile_id,
                isP2pSupported: 0,
                sliceCount: p.compute_slices,
                instanceCount: p.max_instances,
                multiprocessorCount: p.multiprocessors,
                copyEngineCount: p.copy_engines,
                decoderCount: p.decoders,
                encoderCount: p.encoders,
                jpegCount: p.jpegs,
                ofaCount: p.ofas,
                memorySizeMB: p.memory_mib,
                name: [0; 96],
            };
            fill_chars(&mut v.name, &name);
            out(info, v)
        }
        abi::GI_PROFILE_INFO_V3 => {
            let mut v = sys::nvmlGpuInstanceProfileInfo_v3_t {
                version: abi::GI_PROFILE_INFO_V3,
                id: p.profile_id,
                sliceCount: p.compute_slices,
                instanceCount: p.max_instances,
                multiprocessorCount: p.multiprocessors,
                copyEngineCount: p.copy_engines,
                decoderCount: p.decoders,
                encoderCount: p.encoders,
                jpegCount: p.jpegs,
                ofaCount: p.ofas,
                memorySizeMB: p.memory_mib,
                name: [0; 96],
                capabilities: 0,
            };
            fill_chars(&mut v.name, &name);
            out(info.cast::<sys::nvmlGpuInstanceProfileInfo_v3_t>(), v)
        }
        _ => Err(abi::ERROR_ARGUMENT_VERSION_MISMATCH),
    }
}

/// Compute-instance profile `profile` inside a GPU instance of `gi_profile`: its size.
fn ci_size(gi_profile: &MigProfile, profile: c_uint, eng_profile: c_uint) -> Result<u32, Ret> {
    if profile >= abi::COMPUTE_INSTANCE_PROFILE_COUNT
        || eng_profile != abi::COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
    {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    }
    mig::ci_slices_for_profile(profile)
        .filter(|s| mig::ci_sizes(gi_profile.compute_slices).contains(s))
        .ok_or(abi::ERROR_NOT_SUPPORTED)
}

fn ci_info_v1(
    gi_profile: &MigProfile,
    profile: c_uint,
    size: u32,
) -> sys::nvmlComputeInstanceProfileInfo_t {
    sys::nvmlComputeInstanceProfileInfo_t {
        id: profile,
        sliceCount: size,
        instanceCount: mig::ci_placements(gi_profile.compute_slices, size).len() as c_uint,
        multiprocessorCount: gi_profile.multiprocessors * size / gi_profile.compute_slices.max(1),
        sharedCopyEngineCount: gi_profile.copy_engines,
        sharedDecoderCount: gi_profile.decoders,
        sharedEncoderCount: gi_profile.encoders,
        sharedJpegCount: gi_profile.jpegs,
        sharedOfaCount: gi_profile.ofas,
    }
}

/// Placements answered the NVML way: null array → only the count; too small → INSUFFICIENT_SIZE.
///
/// # Safety
/// `count` null or valid for read and write; `array` null or valid for `*count` elements.
unsafe fn placements_out<T: Copy>(
    array: *mut T,
    count: *mut c_uint,
    items: &[T],
) -> Result<(), Ret> {
    if count.is_null() {
        return Err(abi::ERROR_INVALID_ARGUMENT);
    }
    if array.is_null() {
        *count = items.len() as c_uint;
        return Ok(());
    }
    list_out(count, array, items)
}

nvml_export! {
    fn nvmlDeviceGetMigMode(device: sys::nvmlDevice_t, current_mode: *mut c_uint, pending_mode: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        geometry(&call, gpu)?;
        if current_mode.is_null() || pending_mode.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let mode = if gpu_state(&call, gpu).mig_enabled { abi::DEVICE_MIG_ENABLE } else { abi::DEVICE_MIG_DISABLE };
        out(current_mode, mode)?;
        out(pending_mode, mode)
    }

    fn nvmlDeviceSetMigMode(device: sys::nvmlDevice_t, mode: c_uint, activation_status: *mut sys::nvmlReturn_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        geometry(&call, gpu)?;
        if activation_status.is_null() || (mode != abi::DEVICE_MIG_ENABLE && mode != abi::DEVICE_MIG_DISABLE) {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let spec = gpu_spec(&call, gpu).clone();
        call.s.mutate(|st| st.set_mig_mode(&spec, mode == abi::DEVICE_MIG_ENABLE).map_err(mig_failure))?;
        out(activation_status, abi::SUCCESS)
    }

    fn nvmlDeviceGetGpuInstanceProfileInfo(device: sys::nvmlDevice_t, profile: c_uint, info: *mut sys::nvmlGpuInstanceProfileInfo_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let p = profile_by_enum(&call, dev.physical()?, profile)?;
        out(info, gi_info_v1(p))
    }

    fn nvmlDeviceGetGpuInstanceProfileInfoV(device: sys::nvmlDevice_t, profile: c_uint, info: *mut sys::nvmlGpuInstanceProfileInfo_v2_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let p = profile_by_enum(&call, dev.physical()?, profile)?;
        write_gi_info_versioned(info, p)
    }

    fn nvmlDeviceGetGpuInstanceProfileInfoByIdV(device: sys::nvmlDevice_t, profile_id: c_uint, info: *mut sys::nvmlGpuInstanceProfileInfo_v2_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let p = profile_by_id(&call, dev.physical()?, profile_id)?;
        write_gi_info_versioned(info, p)
    }

    fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(
        device: sys::nvmlDevice_t,
        profile_id: c_uint,
        placements: *mut sys::nvmlGpuInstancePlacement_t,
        count: *mut c_uint,
    ) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let p = profile_by_id(&call, dev.physical()?, profile_id)?;
        let items: Vec<sys::nvmlGpuInstancePlacement_t> = p
            .placements
            .iter()
            .map(|&start| sys::nvmlGpuInstancePlacement_t { start, size: p.memory_slices })
            .collect();
        placements_out(placements, count, &items)
    }

    fn nvmlDeviceGetGpuInstanceRemainingCapacity(device: sys::nvmlDevice_t, profile_id: c_uint, count: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        let g = geometry_in_mig_mode(&call, gpu)?;
        let p = profile_by_id(&call, gpu, profile_id)?;
        let existing = crate::state::layout(gpu_spec(&call, gpu), gpu_state(&call, gpu));
        out(count, mig::remaining_capacity(&g, &existing, p))
    }

    fn nvmlDeviceCreateGpuInstance(device: sys::nvmlDevice_t, profile_id: c_uint, gpu_instance: *mut sys::nvmlGpuInstance_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        geometry(&call, gpu)?;
        if gpu_instance.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let spec = gpu_spec(&call, gpu).clone();
        let id = call.s.mutate(|st| st.create_gpu_instance(&spec, profile_id, None).map_err(mig_failure))?;
        out(gpu_instance, gi_handle(gpu, id))
    }

    fn nvmlDeviceCreateGpuInstanceWithPlacement(
        device: sys::nvmlDevice_t,
        profile_id: c_uint,
        placement: *const sys::nvmlGpuInstancePlacement_t,
        gpu_instance: *mut sys::nvmlGpuInstance_t,
    ) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        geometry(&call, gpu)?;
        if gpu_instance.is_null() || placement.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let want = placement.read();
        if gpu_state(&call, gpu).mig_enabled {
            let p = profile_by_id(&call, gpu, profile_id)?;
            if want.size != p.memory_slices {
                runtime::set_last_error(format!(
                    "{} occupies {} memory slices, not {}",
                    p.name, p.memory_slices, want.size
                ));
                return Err(abi::ERROR_INVALID_ARGUMENT);
            }
        }
        let spec = gpu_spec(&call, gpu).clone();
        let id = call.s.mutate(|st| st.create_gpu_instance(&spec, profile_id, Some(want.start)).map_err(mig_failure))?;
        out(gpu_instance, gi_handle(gpu, id))
    }

    fn nvmlGpuInstanceDestroy(gpu_instance: sys::nvmlGpuInstance_t) {
        let (call, gpu, id) = runtime::gpu_instance_call(CALL, gpu_instance)?;
        let spec = gpu_spec(&call, gpu).clone();
        call.s.mutate(|st| st.destroy_gpu_instance(&spec, id).map_err(mig_failure))
    }

    fn nvmlDeviceGetGpuInstances(
        device: sys::nvmlDevice_t,
        profile_id: c_uint,
        gpu_instances: *mut sys::nvmlGpuInstance_t,
        count: *mut c_uint,
    ) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        geometry_in_mig_mode(&call, gpu)?;
        let p = profile_by_id(&call, gpu, profile_id)?;
        if count.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let items: Vec<sys::nvmlGpuInstance_t> = gpu_state(&call, gpu)
            .gpu_instances
            .iter()
            .filter(|gi| gi.profile_id == p.profile_id)
            .map(|gi| gi_handle(gpu, gi.id))
            .collect();
        // The array holds room for the profile's instance count (NVML's contract); `*count`
        // only reports how many were written.
        let room = items.len().max(p.max_instances as usize);
        *count = room as c_uint;
        list_out(count, gpu_instances, &items)
    }

    fn nvmlDeviceGetGpuInstanceById(device: sys::nvmlDevice_t, id: c_uint, gpu_instance: *mut sys::nvmlGpuInstance_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        geometry_in_mig_mode(&call, gpu)?;
        if gpu_instance.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        if !gpu_state(&call, gpu).gpu_instances.iter().any(|g| g.id == id) {
            return Err(abi::ERROR_NOT_FOUND);
        }
        out(gpu_instance, gi_handle(gpu, id))
    }

    fn nvmlGpuInstanceGetInfo(gpu_instance: sys::nvmlGpuInstance_t, info: *mut sys::nvmlGpuInstanceInfo_t) {
        let (call, gpu, id) = runtime::gpu_instance_call(CALL, gpu_instance)?;
        let (gi, p) = find_gpu_instance(&call, gpu, id)?;
        out(info, sys::nvmlGpuInstanceInfo_t {
            device: runtime::handle_for(HandleKey::Gpu(gpu)),
            id: gi.id,
            profileId: gi.profile_id,
            placement: sys::nvmlGpuInstancePlacement_t { start: gi.start, size: p.memory_slices },
        })
    }

    fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
        gpu_instance: sys::nvmlGpuInstance_t,
        profile: c_uint,
        eng_profile: c_uint,
        info: *mut sys::nvmlComputeInstanceProfileInfo_t,
    ) {
        let (call, gpu, id) = runtime::gpu_instance_call(CALL, gpu_instance)?;
        let (_, p) = find_gpu_instance(&call, gpu, id)?;
        let size = ci_size(p, profile, eng_profile)?;
        out(info, ci_info_v1(p, profile, size))
    }

    fn nvmlGpuInstanceGetComputeInstanceProfileInfoV(
        gpu_instance: sys::nvmlGpuInstance_t,
        profile: c_uint,
        eng_profile: c_uint,
        info: *mut sys::nvmlComputeInstanceProfileInfo_v2_t,
    ) {
        let (call, gpu, id) = runtime::gpu_instance_call(CALL, gpu_instance)?;
        let (_, p) = find_gpu_instance(&call, gpu, id)?;
        let size = ci_size(p, profile, eng_profile)?;
        let v1 = ci_info_v1(p, profile, size);
        let name = format!("MIG {}", mig::ci_name(p, size));
        match struct_version(info)? {
            abi::CI_PROFILE_INFO_V2 => {
                let mut v = sys::nvmlComputeInstanceProfileInfo_v2_t {
                    version: abi::CI_PROFILE_INFO_V2,
                    id: v1.id,
                    sliceCount: v1.sliceCount,
                    instanceCount: v1.instanceCount,
                    multiprocessorCount: v1.multiprocessorCount,
                    sharedCopyEngineCount: v1.sharedCopyEngineCount,
                    sharedDecoderCount: v1.sharedDecoderCount,
                    sharedEncoderCount: v1.sharedEncoderCount,
                    sharedJpegCount: v1.sharedJpegCount,
                    sharedOfaCount: v1.sharedOfaCount,
                    name: [0; 96],
                };
                fill_chars(&mut v.name, &name);
                out(info, v)
            }
            abi::CI_PROFILE_INFO_V3 => {
                let mut v = sys::nvmlComputeInstanceProfileInfo_v3_t {
                    version: abi::CI_PROFILE_INFO_V3,
                    id: v1.id,
                    sliceCount: v1.sliceCount,
                    instanceCount: v1.instanceCount,
                    multiprocessorCount: v1.multiprocessorCount,
                    sharedCopyEngineCount: v1.sharedCopyEngineCount,
                    sharedDecoderCount: v1.sharedDecoderCount,
                    sharedEncoderCount: v1.sharedEncoderCount,
                    sharedJpegCount: v1.sharedJpegCount,
                    sharedOfaCount: v1.sharedOfaCount,
                    name: [0; 96],
                    capabilities: 0,
                };
                fill_chars(&mut v.name, &name);
                out(info.cast::<sys::nvmlComputeInstanceProfileInfo_v3_t>(), v)
            }
            _ => Err(abi::ERROR_ARGUMENT_VERSION_MISMATCH),
        }
    }

    fn nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gpu_instance: sys::nvmlGpuInstance_t, profile_id: c_uint, count: *mut c_uint) {
        let (call, gpu, id) = runtime::gpu_instance_call(CALL, gpu_instance)?;
        let (gi, p) = find_gpu_instance(&call, gpu, id)?;
        let size = ci_size(p, profile_id, abi::COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)?;
        let mut taken: Vec<(u32, u32)> = gi.compute_instances.iter().map(|c| (c.start, c.size)).collect();
        let mut n = 0;
        for start in mig::ci_placements(p.compute_slices, size) {
            if mig::check_compute_instance(p, &taken, size, start).is_ok() {
                taken.push((start, size));
                n += 1;
            }
        }
        out(count, n)
    }

    fn nvmlGpuInstanceGetComputeInstancePossiblePlacements(
        gpu_instance: sys::nvmlGpuInstance_t,
        profile_id: c_uint,
        placements: *mut sys::nvmlComputeInstancePlacement_t,
        count: *mut c_uint,
    ) {
        let (call, gpu, id) = runtime::gpu_instance_call(CALL, gpu_instance)?;
        let (_, p) = find_gpu_instance(&call, gpu, id)?;
        let size = ci_size(p, profile_id, abi::COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)?;
        let items: Vec<sys::nvmlComputeInstancePlacement_t> = mig::ci_placements(p.compute_slices, size)
            .into_iter()
            .map(|start| sys::nvmlComputeInstancePlacement_t { start, size })
            .collect();
        placements_out(placements, count, &items)
    }

    fn nvmlGpuInstanceCreateComputeInstance(
        gpu_instance: sys::nvmlGpuInstance_t,
        profile_id: c_uint,
        compute_instance: *mut sys::nvmlComputeInstance_t,
    ) {
        let (call, gpu, id) = runtime::gpu_instance_call(CALL, gpu_instance)?;
        if compute_instance.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let spec = gpu_spec(&call, gpu).clone();
        let ci = call.s.mutate(|st| st.create_compute_instance(&spec, id, profile_id, None).map_err(mig_failure))?;
        out(compute_instance, ci_handle(gpu, id, ci))
    }

    fn nvmlGpuInstanceCreateComputeInstanceWithPlacement(
        gpu_instance: sys::nvmlGpuInstance_t,
        profile_id: c_uint,
        placement: *const sys::nvmlComputeInstancePlacement_t,
        compute_instance: *mut sys::nvmlComputeInstance_t,
    ) {
        let (call, gpu, id) = runtime::gpu_instance_call(CALL, gpu_instance)?;
        if compute_instance.is_null() || placement.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let want = placement.read();
        let (_, p) = find_gpu_instance(&call, gpu, id)?;
        let size = ci_size(p, profile_id, abi::COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)?;
        if want.size != size {
            runtime::set_last_error(format!(
                "{} spans {size} compute slices, not {}",
                mig::ci_name(p, size),
                want.size
            ));
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let spec = gpu_spec(&call, gpu).clone();
        let ci = call
            .s
            .mutate(|st| st.create_compute_instance(&spec, id, profile_id, Some(want.start)).map_err(mig_failure))?;
        out(compute_instance, ci_handle(gpu, id, ci))
    }

    fn nvmlComputeInstanceDestroy(compute_instance: sys::nvmlComputeInstance_t) {
        let (call, gpu, gi, id) = runtime::compute_instance_call(CALL, compute_instance)?;
        let spec = gpu_spec(&call, gpu).clone();
        call.s.mutate(|st| st.destroy_compute_instance(&spec, gi, id).map_err(mig_failure))
    }

    fn nvmlGpuInstanceGetComputeInstances(
        gpu_instance: sys::nvmlGpuInstance_t,
        profile_id: c_uint,
        compute_instances: *mut sys::nvmlComputeInstance_t,
        count: *mut c_uint,
    ) {
        let (call, gpu, id) = runtime::gpu_instance_call(CALL, gpu_instance)?;
        let (gi, p) = find_gpu_instance(&call, gpu, id)?;
        let size = ci_size(p, profile_id, abi::COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)?;
        if count.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let items: Vec<sys::nvmlComputeInstance_t> = gi
            .compute_instances
            .iter()
            .filter(|c| c.profile_id == profile_id)
            .map(|c| ci_handle(gpu, id, c.id))
            .collect();
        let room = items.len().max(mig::ci_placements(p.compute_slices, size).len());
        *count = room as c_uint;
        list_out(count, compute_instances, &items)
    }

    fn nvmlGpuInstanceGetComputeInstanceById(
        gpu_instance: sys::nvmlGpuInstance_t,
        id: c_uint,
        compute_instance: *mut sys::nvmlComputeInstance_t,
    ) {
        let (call, gpu, gi_id) = runtime::gpu_instance_call(CALL, gpu_instance)?;
        let (gi, _) = find_gpu_instance(&call, gpu, gi_id)?;
        if compute_instance.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        if !gi.compute_instances.iter().any(|c| c.id == id) {
            return Err(abi::ERROR_NOT_FOUND);
        }
        out(compute_instance, ci_handle(gpu, gi_id, id))
    }

    fn nvmlComputeInstanceGetInfo(compute_instance: sys::nvmlComputeInstance_t, info: *mut abi::ComputeInstanceInfoV1) {
        let (call, gpu, gi, id) = runtime::compute_instance_call(CALL, compute_instance)?;
        let (g, _) = find_gpu_instance(&call, gpu, gi)?;
        let ci = g.compute_instances.iter().find(|c| c.id == id).ok_or(abi::ERROR_INVALID_ARGUMENT)?;
        out(info, abi::ComputeInstanceInfoV1 {
            device: runtime::handle_for(HandleKey::Gpu(gpu)),
            gpu_instance: gi_handle(gpu, gi),
            id: ci.id,
            profile_id: ci.profile_id,
        })
    }

    fn nvmlComputeInstanceGetInfo_v2(compute_instance: sys::nvmlComputeInstance_t, info: *mut sys::nvmlComputeInstanceInfo_t) {
        let (call, gpu, gi, id) = runtime::compute_instance_call(CALL, compute_instance)?;
        let (g, _) = find_gpu_instance(&call, gpu, gi)?;
        let ci = g.compute_instances.iter().find(|c| c.id == id).ok_or(abi::ERROR_INVALID_ARGUMENT)?;
        out(info, sys::nvmlComputeInstanceInfo_t {
            device: runtime::handle_for(HandleKey::Gpu(gpu)),
            gpuInstance: gi_handle(gpu, gi),
            id: ci.id,
            profileId: ci.profile_id,
            placement: sys::nvmlComputeInstancePlacement_t { start: ci.start, size: ci.size },
        })
    }

    fn nvmlDeviceGetMaxMigDeviceCount(device: sys::nvmlDevice_t, count: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        let g = geometry(&call, gpu)?;
        out(count, if gpu_state(&call, gpu).mig_enabled { g.max_instances } else { 0 })
    }

    fn nvmlDeviceGetMigDeviceHandleByIndex(device: sys::nvmlDevice_t, index: c_uint, mig_device: *mut sys::nvmlDevice_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        let g = geometry_in_mig_mode(&call, gpu)?;
        if mig_device.is_null() || index >= g.max_instances {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let (gi, ci) = *mig_devices(gpu_state(&call, gpu)).get(index as usize).ok_or(abi::ERROR_NOT_FOUND)?;
        out(mig_device, runtime::handle_for(HandleKey::Mig(gpu, gi, ci)))
    }

    fn nvmlDeviceIsMigDeviceHandle(device: sys::nvmlDevice_t, is_mig_device: *mut c_uint) {
        let (_call, dev) = runtime::device_call(CALL, device)?;
        out(is_mig_device, c_uint::from(dev.mig.is_some()))
    }

    fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig_device: sys::nvmlDevice_t, device: *mut sys::nvmlDevice_t) {
        let (_call, dev) = runtime::device_call(CALL, mig_device)?;
        if dev.mig.is_none() {
            return Err(abi::ERROR_NOT_SUPPORTED);
        }
        out(device, runtime::handle_for(HandleKey::Gpu(dev.gpu)))
    }

    fn nvmlDeviceGetGpuInstanceId(device: sys::nvmlDevice_t, id: *mut c_uint) {
        let (_call, dev) = runtime::device_call(CALL, device)?;
        let (gi, _) = dev.mig.ok_or(abi::ERROR_NOT_SUPPORTED)?;
        out(id, gi)
    }

    fn nvmlDeviceGetComputeInstanceId(device: sys::nvmlDevice_t, id: *mut c_uint) {
        let (_call, dev) = runtime::device_call(CALL, device)?;
        let (_, ci) = dev.mig.ok_or(abi::ERROR_NOT_SUPPORTED)?;
        out(id, ci)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_of_placements() {
        let mut count: c_uint = 0;
        let items = [sys::nvmlGpuInstancePlacement_t { start: 0, size: 4 }; 2];
        unsafe {
            placements_out(std::ptr::null_mut(), &mut count, &items).unwrap();
            assert_eq!(count, 2);
            let mut buf = [sys::nvmlGpuInstancePlacement_t { start: 9, size: 9 }; 1];
            count = 1;
            assert_eq!(
                placements_out(buf.as_mut_ptr(), &mut count, &items),
                Err(abi::ERROR_INSUFFICIENT_SIZE)
            );
            assert_eq!(count, 2);
        }
    }
}
