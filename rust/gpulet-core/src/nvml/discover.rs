//! Discovery: GPUs, MIG state, NVLink and PCIe topology, read-only.

use std::collections::{BTreeMap, HashMap};
use std::os::raw::{c_uint, c_ulong};
use std::ptr;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings as sys;

use super::raw::{self, check, symbol, wrap};
use super::{Gpu, MigDevice, MigProfileInfo, Node, GPU_INSTANCE_PROFILE_COUNT};
use crate::error::{CoreError, Result};
use crate::topology::{PcieLevel, Topology};

/// Upper bound on NVLinks probed per GPU; the loop stops earlier at the first link NVML
/// refuses (`NVML_ERROR_INVALID_ARGUMENT`). NVML 13 allows 36 links per GPU (NVML 12: 18).
const MAX_NVLINKS: u32 = 64;

/// CPUs covered when asking for CPU affinity.
const MAX_CPUS: usize = 8192;

/// NUMA nodes covered when asking for memory affinity.
const MAX_NUMA_NODES: usize = 1024;

/// Whether an error only says that the GPU or the library lacks the feature.
fn unsupported(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound
    )
}

/// A PCI bus id as (domain, bus, device, function), accepting NVML's 8- and 4-digit domains.
pub(crate) fn parse_bus_id(s: &str) -> Option<(u32, u32, u32, u32)> {
    let s = s.trim();
    let mut parts = s.split(':');
    let (a, b, c) = (parts.next()?, parts.next()?, parts.next());
    let (domain, bus, devfn) = match c {
        Some(c) => (u32::from_str_radix(a, 16).ok()?, b, c),
        None => (0, a, b),
    };
    if parts.next().is_some() {
        return None;
    }
    let (dev, func) = devfn.split_once('.')?;
    Some((
        domain,
        u32::from_str_radix(bus, 16).ok()?,
        u32::from_str_radix(dev, 16).ok()?,
        u32::from_str_radix(func, 16).ok()?,
    ))
}

/// NVML's `nvmlDeviceArchitecture_t` as a family name.
pub(crate) fn architecture_name(value: u32) -> &'static str {
    match value {
        sys::NVML_DEVICE_ARCH_KEPLER => "kepler",
        sys::NVML_DEVICE_ARCH_MAXWELL => "maxwell",
        sys::NVML_DEVICE_ARCH_PASCAL => "pascal",
        sys::NVML_DEVICE_ARCH_VOLTA => "volta",
        sys::NVML_DEVICE_ARCH_TURING => "turing",
        sys::NVML_DEVICE_ARCH_AMPERE => "ampere",
        sys::NVML_DEVICE_ARCH_ADA => "ada-lovelace",
        sys::NVML_DEVICE_ARCH_HOPPER => "hopper",
        sys::NVML_DEVICE_ARCH_BLACKWELL => "blackwell",
        _ => "unknown",
    }
}

/// Set bits of an affinity mask, lowest first.
fn mask_bits(words: &[c_ulong]) -> Vec<u32> {
    let width = c_ulong::BITS;
    let mut out = Vec::new();
    for (w, &word) in words.iter().enumerate() {
        for bit in 0..width {
            if word & ((1 as c_ulong) << bit) != 0 {
                out.push(w as u32 * width + bit);
            }
        }
    }
    out
}

fn words_for(bits: usize) -> usize {
    bits.div_ceil(c_ulong::BITS as usize)
}

fn handle(nvml: &Nvml, index: u32) -> Result<Device<'_>> {
    nvml.device_by_index(index)
        .map_err(|e| wrap("nvmlDeviceGetHandleByIndex_v2", Some(index), e))
}

fn device_count(nvml: &Nvml) -> Result<u32> {
    nvml.device_count()
        .map_err(|e| wrap("nvmlDeviceGetCount_v2", None, e))
}

/// Discover the node.
pub(super) fn node(nvml: &Nvml) -> Result<Node> {
    let driver_version = nvml
        .sys_driver_version()
        .map_err(|e| wrap("nvmlSystemGetDriverVersion", None, e))?;
    let cuda_driver_version = nvml
        .sys_cuda_driver_version()
        .map_err(|e| wrap("nvmlSystemGetCudaDriverVersion_v2", None, e))?;
    let nvml_version = nvml
        .sys_nvml_version()
        .map_err(|e| wrap("nvmlSystemGetNVMLVersion", None, e))?;

    let count = device_count(nvml)?;
    let devices = (0..count)
        .map(|i| handle(nvml, i))
        .collect::<Result<Vec<_>>>()?;
    let mut gpus = Vec::with_capacity(devices.len());
    for (i, dev) in devices.iter().enumerate() {
        gpus.push(gpu(nvml, dev, i as u32)?);
    }

    // NVLinks: count each GPU's active links by their remote end.
    let bus_ids: Vec<Option<(u32, u32, u32, u32)>> =
        gpus.iter().map(|g| parse_bus_id(&g.pci_bus_id)).collect();
    let n = gpus.len();
    let mut links = vec![0u32; n * n];
    for (i, dev) in devices.iter().enumerate() {
        let l = nvlinks(nvml, dev, i as u32, &bus_ids)?;
        gpus[i].nvlinks = l.active;
        gpus[i].nvswitch_links = l.to_switch;
        for (j, c) in l.to_gpu {
            links[i * n + j] += c;
        }
    }
    let mut nvlink_pairs = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            // Both ends count the same links; take the larger should a driver disagree.
            let c = links[a * n + b].max(links[b * n + a]);
            if c > 0 {
                nvlink_pairs.push(((a, b), c));
            }
        }
    }

    // PCIe: NVML's common ancestor for every pair.
    let mut pcie_pairs = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            if let Some(level) =
                common_ancestor(nvml, &devices[a], &devices[b], (a as u32, b as u32))?
            {
                pcie_pairs.push(((a, b), level));
            }
        }
    }

    let numa: Option<Vec<i32>> = gpus.iter().map(|g| g.numa_node).collect();
    let numa = if n == 0 { None } else { numa };
    let nvswitch = gpus.iter().any(|g| g.nvswitch_links > 0);
    let topology = Topology::new(n, &nvlink_pairs, &pcie_pairs, numa, nvswitch)?;
    Ok(Node {
        driver_version,
        cuda_driver_version,
        nvml_version,
        gpus,
        topology,
    })
}

fn gpu(nvml: &Nvml, dev: &Device<'_>, index: u32) -> Result<Gpu> {
    let g = Some(index);
    let uuid = dev.uuid().map_err(|e| wrap("nvmlDeviceGetUUID", g, e))?;
    let name = dev.name().map_err(|e| wrap("nvmlDeviceGetName", g, e))?;
    let minor = dev
        .minor_number()
        .map_err(|e| wrap("nvmlDeviceGetMinorNumber", g, e))?;
    let serial = match dev.serial() {
        Ok(s) => Some(s),
        Err(e) if unsupported(&e) => None,
        Err(e) => return Err(wrap("nvmlDeviceGetSerial", g, e)),
    };
    let memory_bytes = dev
        .memory_info()
        .map_err(|e| wrap("nvmlDeviceGetMemoryInfo_v2", g, e))?
        .total;
    let cc = dev
        .cuda_compute_capability()
        .map_err(|e| wrap("nvmlDeviceGetCudaComputeCapability", g, e))?;
    let pci = dev
        .pci_info()
        .map_err(|e| wrap("nvmlDeviceGetPciInfo_v3", g, e))?;
    let architecture = architecture(nvml, dev, index)?;
    let numa_node = numa_node(dev, index)?;
    let cpu_affinity = match dev.cpu_affinity(words_for(MAX_CPUS)) {
        Ok(words) => mask_bits(&words),
        Err(e) if unsupported(&e) => Vec::new(),
        Err(e) => return Err(wrap("nvmlDeviceGetCpuAffinity", g, e)),
    };
    let (mig_capable, mig_enabled, mig_pending) = match dev.mig_mode() {
        Ok(m) => (true, m.current == 1, m.pending == 1),
        Err(e) if unsupported(&e) => (false, false, false),
        Err(e) => return Err(wrap("nvmlDeviceGetMigMode", g, e)),
    };
    let mig_devices = if mig_enabled {
        mig_devices(nvml, dev, index)?
    } else {
        Vec::new()
    };
    Ok(Gpu {
        index,
        minor,
        uuid,
        name,
        serial,
        memory_bytes,
        compute_capability: (cc.major.max(0) as u32, cc.minor.max(0) as u32),
        architecture: architecture.to_owned(),
        pci_bus_id: pci.bus_id,
        pci_device_id: pci.pci_device_id,
        numa_node,
        cpu_affinity,
        mig_capable,
        mig_enabled,
        mig_pending,
        mig_devices,
        nvlinks: 0,
        nvswitch_links: 0,
    })
}

fn architecture(nvml: &Nvml, dev: &Device<'_>, index: u32) -> Result<&'static str> {
    const CALL: &str = "nvmlDeviceGetArchitecture";
    let Ok(f) = nvml.lib().nvmlDeviceGetArchitecture.as_ref() else {
        return Ok("unknown");
    };
    let mut arch: sys::nvmlDeviceArchitecture_t = 0;
    // SAFETY: a valid device handle and an out-pointer to a local.
    let code = unsafe { f(dev.handle(), &mut arch) };
    if code == raw::ERROR_NOT_SUPPORTED {
        return Ok("unknown");
    }
    check(CALL, Some(index), code)?;
    Ok(architecture_name(arch))
}

/// `nvmlDeviceGetNumaNodeId` where GPUs are NUMA nodes or the driver reports it; else the first
/// node of `nvmlDeviceGetMemoryAffinity`; `None` when neither tells.
fn numa_node(dev: &Device<'_>, index: u32) -> Result<Option<i32>> {
    match dev.numa_node_id() {
        Ok(id) if i32::try_from(id).is_ok() => return Ok(Some(id as i32)),
        Ok(_) => {}
        Err(e) if unsupported(&e) => {}
        Err(e) => return Err(wrap("nvmlDeviceGetNumaNodeId", Some(index), e)),
    }
    match dev.memory_affinity(words_for(MAX_NUMA_NODES), sys::NVML_AFFINITY_SCOPE_NODE) {
        Ok(words) => Ok(mask_bits(&words).first().map(|&n| n as i32)),
        Err(e) if unsupported(&e) => Ok(None),
        Err(e) => Err(wrap("nvmlDeviceGetMemoryAffinity", Some(index), e)),
    }
}

fn common_ancestor(
    nvml: &Nvml,
    a: &Device<'_>,
    b: &Device<'_>,
    (index, peer): (u32, u32),
) -> Result<Option<PcieLevel>> {
    const CALL: &str = "nvmlDeviceGetTopologyCommonAncestor";
    // The error names the first GPU of the pair and, in its message, the second.
    let with_peer = |mut e: CoreError| {
        if let CoreError::Nvml { message, .. } = &mut e {
            message.push_str(&format!(" (asking about GPU {index} and GPU {peer})"));
        }
        e
    };
    let f = symbol(
        &nvml.lib().nvmlDeviceGetTopologyCommonAncestor,
        CALL,
        Some(index),
    )?;
    let mut level: sys::nvmlGpuTopologyLevel_t = 0;
    // SAFETY: valid device handles and an out-pointer to a local.
    let code = unsafe { f(a.handle(), b.handle(), &mut level) };
    if code == raw::ERROR_NOT_SUPPORTED {
        return Ok(None);
    }
    check(CALL, Some(index), code).map_err(with_peer)?;
    PcieLevel::from_nvml(level).map(Some).map_err(|_| {
        with_peer(CoreError::Nvml {
            call: CALL.to_owned(),
            gpu: Some(index),
            code: raw::ERROR_UNKNOWN,
            message: format!(
                "returned topology level {level}, which is not an nvmlGpuTopologyLevel_t"
            ),
        })
    })
}

struct Links {
    active: u32,
    to_switch: u32,
    /// Peer GPU index → links.
    to_gpu: BTreeMap<usize, u32>,
}

/// The remote end type of one link, `None` when the driver cannot tell.
fn remote_device_type(nvml: &Nvml, dev: &Device<'_>, index: u32, link: u32) -> Result<Option<u32>> {
    const CALL: &str = "nvmlDeviceGetNvLinkRemoteDeviceType";
    let Ok(f) = nvml.lib().nvmlDeviceGetNvLinkRemoteDeviceType.as_ref() else {
        return Ok(None);
    };
    let mut kind: sys::nvmlIntNvLinkDeviceType_t = 0;
    // SAFETY: a valid device handle and an out-pointer to a local.
    let code = unsafe { f(dev.handle(), link as c_uint, &mut kind) };
    if code == raw::ERROR_NOT_SUPPORTED {
        return Ok(None);
    }
    check(CALL, Some(index), code)?;
    Ok(Some(kind))
}

fn nvlinks(
    nvml: &Nvml,
    dev: &Device<'_>,
    index: u32,
    bus_ids: &[Option<(u32, u32, u32, u32)>],
) -> Result<Links> {
    let g = Some(index);
    let mut out = Links {
        active: 0,
        to_switch: 0,
        to_gpu: BTreeMap::new(),
    };
    for link in 0..MAX_NVLINKS {
        let nv = dev.link_wrapper_for(link);
        match nv.is_active() {
            Ok(true) => {}
            Ok(false) => continue,
            Err(NvmlError::InvalidArg) => break,
            Err(e) if unsupported(&e) => break,
            Err(e) => return Err(wrap("nvmlDeviceGetNvLinkState", g, e)),
        }
        out.active += 1;
        let kind = remote_device_type(nvml, dev, index, link)?;
        if kind == Some(raw::NVLINK_DEVICE_TYPE_SWITCH) {
            out.to_switch += 1;
            continue;
        }
        let remote = nv
            .remote_pci_info()
            .map_err(|e| wrap("nvmlDeviceGetNvLinkRemotePciInfo_v2", g, e))?;
        let remote = parse_bus_id(&remote.bus_id);
        let peer = remote.and_then(|r| bus_ids.iter().position(|b| *b == Some(r)));
        match (peer, kind) {
            (Some(j), None | Some(raw::NVLINK_DEVICE_TYPE_GPU)) if j != index as usize => {
                *out.to_gpu.entry(j).or_default() += 1;
            }
            // A remote end that is no GPU of this node, when the driver does not say what it
            // is, is an NVSwitch (the only other NVLink endpoint on x86 and Arm servers).
            (None, None) => out.to_switch += 1,
            _ => {}
        }
    }
    Ok(out)
}

/// What `nvmlDeviceGetGpuInstanceProfileInfoV` says about one `NVML_GPU_INSTANCE_PROFILE_*`
/// value: the profile, not on this GPU, or past the end of the enum.
enum ProfileLookup {
    Found(MigProfileInfo),
    Unsupported,
    End,
}

fn profile_info(nvml: &Nvml, dev: &Device<'_>, index: u32, profile: u32) -> Result<ProfileLookup> {
    const CALL: &str = "nvmlDeviceGetGpuInstanceProfileInfoV";
    let f = symbol(
        &nvml.lib().nvmlDeviceGetGpuInstanceProfileInfoV,
        CALL,
        Some(index),
    )?;
    let classify = |code: u32| -> Result<Option<ProfileLookup>> {
        match code {
            raw::SUCCESS => Ok(None),
            raw::ERROR_NOT_SUPPORTED | raw::ERROR_NOT_FOUND => Ok(Some(ProfileLookup::Unsupported)),
            raw::ERROR_INVALID_ARGUMENT => Ok(Some(ProfileLookup::End)),
            code => Err(raw::from_code(CALL, Some(index), code)),
        }
    };
    // The v2 and v3 structs name the fields alike; placements are filled by the caller.
    macro_rules! from_nvml {
        ($v:expr) => {
            MigProfileInfo {
                name: profile_name(&$v.name),
                profile_id: $v.id,
                nvml_profile: profile,
                compute_slices: $v.sliceCount,
                memory_slices: 0,
                memory_mib: $v.memorySizeMB,
                multiprocessors: $v.multiprocessorCount,
                copy_engines: $v.copyEngineCount,
                decoders: $v.decoderCount,
                encoders: $v.encoderCount,
                jpegs: $v.jpegCount,
                ofas: $v.ofaCount,
                max_instances: $v.instanceCount,
                placements: Vec::new(),
            }
        };
    }
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut v3: sys::nvmlGpuInstanceProfileInfo_v3_t = unsafe { std::mem::zeroed() };
    v3.version = raw::struct_version::<sys::nvmlGpuInstanceProfileInfo_v3_t>(3);
    // SAFETY: a valid handle; NVML reads `version` and fills a struct of that version.
    let code = unsafe { f(dev.handle(), profile, ptr::from_mut(&mut v3).cast()) };
    let info = if code == raw::ERROR_ARGUMENT_VERSION_MISMATCH {
        // Drivers before the v3 struct know v2 only.
        // SAFETY: as above.
        let mut v2: sys::nvmlGpuInstanceProfileInfo_v2_t = unsafe { std::mem::zeroed() };
        v2.version = raw::struct_version::<sys::nvmlGpuInstanceProfileInfo_v2_t>(2);
        // SAFETY: as above.
        let code = unsafe { f(dev.handle(), profile, &mut v2) };
        if let Some(stop) = classify(code)? {
            return Ok(stop);
        }
        from_nvml!(v2)
    } else {
        if let Some(stop) = classify(code)? {
            return Ok(stop);
        }
        from_nvml!(v3)
    };
    Ok(ProfileLookup::Found(info))
}

/// A profile name without the "MIG " NVML puts before it ("MIG 1g.10gb" → "1g.10gb").
fn profile_name<C>(buf: &[C]) -> String {
    let name = raw::c_buf_to_string(buf);
    match name.strip_prefix("MIG ") {
        Some(rest) => rest.trim().to_owned(),
        None => name.trim().to_owned(),
    }
}

/// Every GPU-instance profile of the GPU, looping the `NVML_GPU_INSTANCE_PROFILE_*` enum (one
/// id once; placements not filled).
fn profiles(nvml: &Nvml, dev: &Device<'_>, index: u32) -> Result<Vec<MigProfileInfo>> {
    let mut out: Vec<MigProfileInfo> = Vec::new();
    for profile in 0..GPU_INSTANCE_PROFILE_COUNT {
        match profile_info(nvml, dev, index, profile)? {
            ProfileLookup::Found(p) => {
                if !out.iter().any(|q| q.profile_id == p.profile_id) {
                    out.push(p);
                }
            }
            ProfileLookup::Unsupported => {}
            ProfileLookup::End => break,
        }
    }
    Ok(out)
}

/// `nvmlDeviceGetGpuInstancePossiblePlacements_v2`: (start, size) of every placement.
fn placements(
    nvml: &Nvml,
    dev: &Device<'_>,
    index: u32,
    profile_id: u32,
) -> Result<Vec<(u32, u32)>> {
    const CALL: &str = "nvmlDeviceGetGpuInstancePossiblePlacements_v2";
    let f = symbol(
        &nvml.lib().nvmlDeviceGetGpuInstancePossiblePlacements_v2,
        CALL,
        Some(index),
    )?;
    let mut count: c_uint = 0;
    // SAFETY: a NULL array asks for the count only.
    check(CALL, Some(index), unsafe {
        f(dev.handle(), profile_id, ptr::null_mut(), &mut count)
    })?;
    let mut buf = vec![sys::nvmlGpuInstancePlacement_t { start: 0, size: 0 }; count as usize];
    if count > 0 {
        // SAFETY: `buf` holds `count` placements.
        check(CALL, Some(index), unsafe {
            f(dev.handle(), profile_id, buf.as_mut_ptr(), &mut count)
        })?;
        buf.truncate(count as usize);
    }
    let mut out: Vec<(u32, u32)> = buf.iter().map(|p| (p.start, p.size)).collect();
    out.sort_unstable();
    Ok(out)
}

pub(super) fn mig_profiles(nvml: &Nvml, gpu: u32) -> Result<Vec<MigProfileInfo>> {
    let count = device_count(nvml)?;
    if gpu >= count {
        return Err(CoreError::InvalidArgument(format!(
            "gpu {gpu} does not exist; this node has GPUs 0..{count}"
        )));
    }
    let dev = handle(nvml, gpu)?;
    match dev.mig_mode() {
        Ok(_) => {}
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(wrap("nvmlDeviceGetMigMode", Some(gpu), e)),
    }
    let mut out = profiles(nvml, &dev, gpu)?;
    for p in &mut out {
        let places = placements(nvml, &dev, gpu, p.profile_id)?;
        p.memory_slices = places.first().map_or(0, |&(_, size)| size);
        p.placements = places.into_iter().map(|(start, _)| start).collect();
    }
    Ok(out)
}

/// `NVML_COMPUTE_INSTANCE_PROFILE_COUNT` of NVML 13 (one past `7_SLICE_NVL`); the loop over
/// the enum also stops at the first value the library calls out of range.
const COMPUTE_INSTANCE_PROFILE_COUNT: u32 = 0x9;

/// Where one GPU instance sits, and its handle (valid while NVML is initialised).
#[derive(Clone, Copy)]
struct GiPlacement {
    handle: sys::nvmlGpuInstance_t,
    profile_id: u32,
    start: u32,
    size: u32,
}

/// GPU instances by id; `None` when NVML refuses the query for lack of privileges.
fn gpu_instances(
    nvml: &Nvml,
    dev: &Device<'_>,
    index: u32,
    profiles: &[MigProfileInfo],
) -> Result<Option<BTreeMap<u32, GiPlacement>>> {
    const LIST: &str = "nvmlDeviceGetGpuInstances";
    const INFO: &str = "nvmlGpuInstanceGetInfo";
    let list = symbol(&nvml.lib().nvmlDeviceGetGpuInstances, LIST, Some(index))?;
    let info = symbol(&nvml.lib().nvmlGpuInstanceGetInfo, INFO, Some(index))?;
    let mut out = BTreeMap::new();
    for p in profiles {
        let mut buf: Vec<sys::nvmlGpuInstance_t> =
            vec![ptr::null_mut(); (p.max_instances as usize).max(8)];
        let mut count: c_uint = 0;
        // SAFETY: `buf` is at least `instanceCount` handles long, as NVML requires.
        let code = unsafe { list(dev.handle(), p.profile_id, buf.as_mut_ptr(), &mut count) };
        match code {
            raw::SUCCESS => {}
            raw::ERROR_NO_PERMISSION => return Ok(None),
            raw::ERROR_NOT_SUPPORTED | raw::ERROR_NOT_FOUND => continue,
            code => return Err(raw::from_code(LIST, Some(index), code)),
        }
        for &gi in buf.iter().take((count as usize).min(buf.len())) {
            // SAFETY: all-zero is a valid value of this plain C struct.
            let mut gi_info: sys::nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `gi` is a handle NVML just returned.
            check(INFO, Some(index), unsafe { info(gi, &mut gi_info) })?;
            out.insert(
                gi_info.id,
                GiPlacement {
                    handle: gi,
                    profile_id: gi_info.profileId,
                    start: gi_info.placement.start,
                    size: gi_info.placement.size,
                },
            );
        }
    }
    Ok(Some(out))
}

/// (CI profile id, compute slices) of every compute-instance profile a GPU instance offers,
/// looping the `NVML_COMPUTE_INSTANCE_PROFILE_*` enum; `None` when NVML refuses for lack of
/// privileges.
fn ci_profiles(
    nvml: &Nvml,
    gi: sys::nvmlGpuInstance_t,
    index: u32,
) -> Result<Option<Vec<(u32, u32)>>> {
    const CALL: &str = "nvmlGpuInstanceGetComputeInstanceProfileInfoV";
    let f = symbol(
        &nvml.lib().nvmlGpuInstanceGetComputeInstanceProfileInfoV,
        CALL,
        Some(index),
    )?;
    let mut out = Vec::new();
    for profile in 0..COMPUTE_INSTANCE_PROFILE_COUNT {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut info: sys::nvmlComputeInstanceProfileInfo_v2_t = unsafe { std::mem::zeroed() };
        info.version = raw::struct_version::<sys::nvmlComputeInstanceProfileInfo_v2_t>(2);
        let shared = sys::NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED;
        // SAFETY: a GPU-instance handle NVML returned; NVML reads `version` and fills the struct.
        let code = unsafe { f(gi, profile, shared, &mut info) };
        match code {
            raw::SUCCESS => {
                if !out.iter().any(|&(id, _)| id == info.id) {
                    out.push((info.id, info.sliceCount));
                }
            }
            raw::ERROR_NOT_SUPPORTED | raw::ERROR_NOT_FOUND => {}
            raw::ERROR_INVALID_ARGUMENT => break,
            raw::ERROR_NO_PERMISSION => return Ok(None),
            code => return Err(raw::from_code(CALL, Some(index), code)),
        }
    }
    Ok(Some(out))
}

/// Compute slices of compute instance `ci` of a GPU instance: its CI profile's `sliceCount`
/// (the profiles cached per GPU-instance profile). `None` when NVML refuses for lack of
/// privileges.
fn ci_slices(
    nvml: &Nvml,
    gi: &GiPlacement,
    ci: u32,
    index: u32,
    cache: &mut HashMap<u32, Option<Vec<(u32, u32)>>>,
) -> Result<Option<u32>> {
    const BY_ID: &str = "nvmlGpuInstanceGetComputeInstanceById";
    const INFO: &str = "nvmlComputeInstanceGetInfo_v2";
    let lib = nvml.lib();
    let by_id = symbol(
        &lib.nvmlGpuInstanceGetComputeInstanceById,
        BY_ID,
        Some(index),
    )?;
    let info = symbol(&lib.nvmlComputeInstanceGetInfo_v2, INFO, Some(index))?;
    let mut handle: sys::nvmlComputeInstance_t = ptr::null_mut();
    // SAFETY: a GPU-instance handle NVML returned and an out-pointer to a local.
    match unsafe { by_id(gi.handle, ci, &mut handle) } {
        raw::SUCCESS => {}
        raw::ERROR_NO_PERMISSION => return Ok(None),
        code => return Err(raw::from_code(BY_ID, Some(index), code)),
    }
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut ci_info: sys::nvmlComputeInstanceInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a compute-instance handle NVML just returned.
    match unsafe { info(handle, &mut ci_info) } {
        raw::SUCCESS => {}
        raw::ERROR_NO_PERMISSION => return Ok(None),
        code => return Err(raw::from_code(INFO, Some(index), code)),
    }
    let profiles = match cache.get(&gi.profile_id) {
        Some(known) => known.clone(),
        None => {
            let found = ci_profiles(nvml, gi.handle, index)?;
            cache.insert(gi.profile_id, found.clone());
            found
        }
    };
    let Some(profiles) = profiles else {
        return Ok(None);
    };
    match profiles.iter().find(|&&(id, _)| id == ci_info.profileId) {
        Some(&(_, slices)) => Ok(Some(slices)),
        // A profile the enum loop did not reach (a newer driver): the placement spans the
        // compute instance's slices.
        None if ci_info.placement.size > 0 => Ok(Some(ci_info.placement.size)),
        None => Err(CoreError::Nvml {
            call: INFO.to_owned(),
            gpu: Some(index),
            code: raw::ERROR_UNKNOWN,
            message: format!(
                "compute instance {ci} of GPU instance profile {} has profile {}, which no \
                 compute-instance profile of the GPU instance names",
                gi.profile_id, ci_info.profileId
            ),
        }),
    }
}

type IdFn = unsafe extern "C" fn(sys::nvmlDevice_t, *mut c_uint) -> sys::nvmlReturn_t;

/// `nvmlDeviceGetGpuInstanceId` / `nvmlDeviceGetComputeInstanceId` of a MIG device handle.
fn mig_id(
    slot: &std::result::Result<IdFn, libloading::Error>,
    call: &str,
    mig: &Device<'_>,
    index: u32,
) -> Result<u32> {
    let f = symbol(slot, call, Some(index))?;
    let mut id: c_uint = 0;
    // SAFETY: a valid MIG device handle and an out-pointer to a local.
    check(call, Some(index), unsafe { f(mig.handle(), &mut id) })?;
    Ok(id)
}

fn mig_devices(nvml: &Nvml, dev: &Device<'_>, index: u32) -> Result<Vec<MigDevice>> {
    let g = Some(index);
    let max = dev
        .mig_device_count()
        .map_err(|e| wrap("nvmlDeviceGetMaxMigDeviceCount", g, e))?;
    let profiles = profiles(nvml, dev, index)?;
    let instances = gpu_instances(nvml, dev, index, &profiles)?;
    let mut ci_profile_cache = HashMap::new();
    let mut out = Vec::new();
    for i in 0..max {
        let mig = match dev.mig_device_by_index(i) {
            Ok(m) => m,
            Err(NvmlError::NotFound) => continue,
            Err(e) => return Err(wrap("nvmlDeviceGetMigDeviceHandleByIndex", g, e)),
        };
        let uuid = mig.uuid().map_err(|e| wrap("nvmlDeviceGetUUID", g, e))?;
        let lib = nvml.lib();
        let gi = mig_id(
            &lib.nvmlDeviceGetGpuInstanceId,
            "nvmlDeviceGetGpuInstanceId",
            &mig,
            index,
        )?;
        let ci = mig_id(
            &lib.nvmlDeviceGetComputeInstanceId,
            "nvmlDeviceGetComputeInstanceId",
            &mig,
            index,
        )?;
        let memory_bytes = mig
            .memory_info()
            .map_err(|e| wrap("nvmlDeviceGetMemoryInfo_v2", g, e))?
            .total;
        let placed = instances.as_ref().and_then(|m| m.get(&gi)).copied();
        let profile_id = placed.map(|p| p.profile_id);
        let gi_profile = profile_id.and_then(|id| profiles.iter().find(|p| p.profile_id == id));
        let profile_name = gi_profile.map(|p| p.name.clone());
        let compute_slices = match &placed {
            Some(p) => ci_slices(nvml, p, ci, index, &mut ci_profile_cache)?,
            None => None,
        };
        out.push(MigDevice {
            index: i,
            uuid,
            gpu_instance_id: gi,
            compute_instance_id: ci,
            profile_id,
            profile_name,
            placement_start: placed.map(|p| p.start),
            placement_size: placed.map(|p| p.size),
            compute_slices,
            gpu_instance_slices: gi_profile.map(|p| p.compute_slices),
            memory_bytes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_parse_in_both_domain_widths() {
        assert_eq!(parse_bus_id("00000000:1B:00.0"), Some((0, 0x1b, 0, 0)));
        assert_eq!(parse_bus_id("0000:1b:00.0"), Some((0, 0x1b, 0, 0)));
        assert_eq!(parse_bus_id("00000001:C3:1f.7"), Some((1, 0xc3, 0x1f, 7)));
        assert_eq!(parse_bus_id("1B:00.0"), Some((0, 0x1b, 0, 0)));
        assert_eq!(parse_bus_id("garbage"), None);
        assert_eq!(parse_bus_id(""), None);
    }

    #[test]
    fn profile_names_lose_nvmls_prefix() {
        let with: Vec<u8> = b"MIG 1g.10gb+me\0\0".to_vec();
        assert_eq!(profile_name(&with), "1g.10gb+me");
        assert_eq!(profile_name(b"3g.40gb\0"), "3g.40gb");
    }

    #[test]
    fn masks_and_architectures() {
        let words: [c_ulong; 2] = [0b101, 1];
        assert_eq!(mask_bits(&words), vec![0, 2, c_ulong::BITS]);
        assert_eq!(architecture_name(9), "hopper");
        assert_eq!(architecture_name(12345), "unknown");
        assert_eq!(words_for(1), 1);
        assert_eq!(words_for(c_ulong::BITS as usize + 1), 2);
    }
}
