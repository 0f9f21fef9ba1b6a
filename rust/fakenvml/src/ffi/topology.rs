//! Topology: PCIe common ancestors, NVLinks, CPU and memory affinity.
//!
//! NVLink indices run below the model's NVLink count; a higher index is
//! NVML_ERROR_INVALID_ARGUMENT (clients loop to NVML_NVLINK_MAX_LINKS, 18 in NVML 12 and 36 in
//! NVML 13, and stop at errors), and a model without NVLink answers NVML_ERROR_NOT_SUPPORTED.

use std::ffi::{c_uint, c_ulong, c_ulonglong};

use crate::abi::{self, sys, Ret};
use crate::fields;
use crate::runtime::{self, Call, DevRef, HandleKey};
use crate::spec::LinkEnd;
use crate::util::{out, slice_mut};

use super::device::{gpu_spec, gpu_state};

/// Bits per `unsigned long` word of an affinity mask.
const WORD_BITS: usize = c_ulong::BITS as usize;

/// What link `link` of the device connects to.
fn link_end(call: &Call, dev: &DevRef, link: c_uint) -> Result<LinkEnd, Ret> {
    let gpu = dev.physical()?;
    let links = &call.node().links[gpu];
    if links.is_empty() {
        return Err(abi::ERROR_NOT_SUPPORTED);
    }
    links
        .get(link as usize)
        .copied()
        .ok_or(abi::ERROR_INVALID_ARGUMENT)
}

/// Which field holds NVLink error counter `counter` (`nvmlNvLinkErrorCounter_t`) of `link`:
/// replay, recovery and CRC-flit errors are the link-scoped fields 161-163; CRC-data and
/// ECC-data errors have per-lane fields for links 0-11 only (`Some(None)`: the counter has no
/// field for this link and reads 0). `None`: not a counter.
fn error_counter_field(counter: c_uint, link: c_uint) -> Option<Option<(u32, u32)>> {
    Some(match counter {
        0..=2 => Some((161 + counter, link)),
        3 if link < 6 => Some((39 + link, 0)),
        3 if link < 12 => Some((102 + link - 6, 0)),
        4 if link < 12 => Some((148 + link, 0)),
        3 | 4 => None,
        _ => return None,
    })
}

/// Write a bitmask of `bits` into `words` `unsigned long`s.
fn write_mask(words: &mut [c_ulong], bits: impl Iterator<Item = u32>) {
    words.iter_mut().for_each(|w| *w = 0);
    for b in bits {
        let b = b as usize;
        if let Some(w) = words.get_mut(b / WORD_BITS) {
            *w |= 1 << (b % WORD_BITS);
        }
    }
}

nvml_export! {
    fn nvmlDeviceGetTopologyCommonAncestor(
        device1: sys::nvmlDevice_t,
        device2: sys::nvmlDevice_t,
        path_info: *mut sys::nvmlGpuTopologyLevel_t,
    ) {
        let (call, a) = runtime::device_call(CALL, device1)?;
        let (_, b) = runtime::device_call(CALL, device2)?;
        out(path_info, call.node().pcie_level(a.gpu, b.gpu))
    }

    fn nvmlDeviceGetTopologyNearestGpus(
        device: sys::nvmlDevice_t,
        level: sys::nvmlGpuTopologyLevel_t,
        count: *mut c_uint,
        device_array: *mut sys::nvmlDevice_t,
    ) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let gpu = dev.physical()?;
        if count.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let near: Vec<usize> = (0..call.node().gpus.len())
            .filter(|&j| j != gpu && call.node().pcie_level(gpu, j) <= level)
            .collect();
        if device_array.is_null() {
            *count = near.len() as c_uint;
            return Ok(());
        }
        let room = *count as usize;
        *count = near.len() as c_uint;
        if room < near.len() {
            return Err(abi::ERROR_INSUFFICIENT_SIZE);
        }
        let dst = slice_mut(device_array, near.len())?;
        for (d, j) in dst.iter_mut().zip(near) {
            *d = runtime::handle_for(HandleKey::Gpu(j));
        }
        Ok(())
    }

    fn nvmlDeviceGetNvLinkState(device: sys::nvmlDevice_t, link: c_uint, is_active: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let end = link_end(&call, &dev, link)?;
        out(is_active, c_uint::from(end != LinkEnd::Inactive))
    }

    fn nvmlDeviceGetNvLinkVersion(device: sys::nvmlDevice_t, link: c_uint, version: *mut c_uint) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        link_end(&call, &dev, link)?;
        out(version, fields::nvlink_version(gpu_spec(&call, dev.gpu).model.architecture))
    }

    fn nvmlDeviceGetNvLinkCapability(
        device: sys::nvmlDevice_t,
        link: c_uint,
        capability: c_uint,
        cap_result: *mut c_uint,
    ) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let end = link_end(&call, &dev, link)?;
        if capability >= abi::NVLINK_CAP_COUNT {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let active = end != LinkEnd::Inactive;
        let value = match capability {
            sys::nvmlNvLinkCapability_enum_NVML_NVLINK_CAP_P2P_SUPPORTED
            | sys::nvmlNvLinkCapability_enum_NVML_NVLINK_CAP_P2P_ATOMICS
            | sys::nvmlNvLinkCapability_enum_NVML_NVLINK_CAP_VALID => active,
            // System-memory access over NVLink needs an NVLink-attached CPU; SLI is for GeForce.
            _ => false,
        };
        out(cap_result, c_uint::from(value))
    }

    fn nvmlDeviceGetNvLinkRemotePciInfo_v2(device: sys::nvmlDevice_t, link: c_uint, pci: *mut sys::nvmlPciInfo_t) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let info = match link_end(&call, &dev, link)? {
            LinkEnd::Inactive => return Err(abi::ERROR_NOT_SUPPORTED),
            LinkEnd::Gpu(j) => {
                let g = gpu_spec(&call, j);
                super::pci_info(&g.pci, g.model.pci_device_id, g.model.pci_subsystem_id)
            }
            LinkEnd::Switch(s) => {
                let node = call.node();
                super::pci_info(&node.switches[s], node.switch_pci_device_id, 0)
            }
        };
        out(pci, info)
    }

    fn nvmlDeviceGetNvLinkRemoteDeviceType(
        device: sys::nvmlDevice_t,
        link: c_uint,
        device_type: *mut sys::nvmlIntNvLinkDeviceType_t,
    ) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        let t = match link_end(&call, &dev, link)? {
            LinkEnd::Inactive => return Err(abi::ERROR_NOT_SUPPORTED),
            LinkEnd::Gpu(_) => abi::NVLINK_DEVICE_TYPE_GPU,
            LinkEnd::Switch(_) => abi::NVLINK_DEVICE_TYPE_SWITCH,
        };
        out(device_type, t)
    }

    fn nvmlDeviceGetNvLinkErrorCounter(
        device: sys::nvmlDevice_t,
        link: c_uint,
        counter: c_uint,
        counter_value: *mut c_ulonglong,
    ) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        link_end(&call, &dev, link)?;
        let Some((field, scope)) = error_counter_field(counter, link).ok_or(abi::ERROR_INVALID_ARGUMENT)? else {
            return out(counter_value, 0);
        };
        let cx = fields::FieldContext {
            gpu: gpu_spec(&call, dev.gpu),
            state: gpu_state(&call, dev.gpu),
            links: &call.node().links[dev.gpu],
            nvswitch: !call.node().switches.is_empty(),
        };
        let scheme = call.node().field_scheme;
        let (_, value) = fields::read_field(scheme, scheme.from_canonical(field), scope, &cx)?;
        let v = value.encode(fields::ValueType::UnsignedLongLong);
        out(counter_value, v.ullVal)
    }

    fn nvmlDeviceGetCpuAffinity(device: sys::nvmlDevice_t, cpu_set_size: c_uint, cpu_set: *mut c_ulong) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        if cpu_set_size == 0 {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let words = slice_mut(cpu_set, cpu_set_size as usize)?;
        let node = gpu_spec(&call, dev.gpu).numa_node;
        write_mask(words, call.node().cpus_of(node).iter().copied());
        Ok(())
    }

    fn nvmlDeviceGetCpuAffinityWithinScope(
        device: sys::nvmlDevice_t,
        cpu_set_size: c_uint,
        cpu_set: *mut c_ulong,
        scope: sys::nvmlAffinityScope_t,
    ) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        if cpu_set_size == 0 || (scope != abi::AFFINITY_SCOPE_NODE && scope != abi::AFFINITY_SCOPE_SOCKET) {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        // The simulated host has one NUMA node per socket, so both scopes name the same CPUs.
        let words = slice_mut(cpu_set, cpu_set_size as usize)?;
        let node = gpu_spec(&call, dev.gpu).numa_node;
        write_mask(words, call.node().cpus_of(node).iter().copied());
        Ok(())
    }

    fn nvmlDeviceGetMemoryAffinity(
        device: sys::nvmlDevice_t,
        node_set_size: c_uint,
        node_set: *mut c_ulong,
        scope: sys::nvmlAffinityScope_t,
    ) {
        let (call, dev) = runtime::device_call(CALL, device)?;
        if node_set_size == 0 || (scope != abi::AFFINITY_SCOPE_NODE && scope != abi::AFFINITY_SCOPE_SOCKET) {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        let words = slice_mut(node_set, node_set_size as usize)?;
        write_mask(words, std::iter::once(gpu_spec(&call, dev.gpu).numa_node));
        Ok(())
    }

    fn nvmlDeviceGetNumaNodeId(device: sys::nvmlDevice_t, node: *mut c_uint) {
        // NVML answers this only where the GPU's memory is itself a NUMA node (coherent
        // CPU-GPU systems); the simulated nodes attach GPUs over PCIe, so like a real driver
        // on such a node the fake says NOT_SUPPORTED. Clients find the CPU-side NUMA node with
        // nvmlDeviceGetMemoryAffinity.
        let (_call, _dev) = runtime::device_call(CALL, device)?;
        if node.is_null() {
            return Err(abi::ERROR_INVALID_ARGUMENT);
        }
        Err(abi::ERROR_NOT_SUPPORTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_counter_fields() {
        assert_eq!(error_counter_field(0, 17), Some(Some((161, 17))));
        assert_eq!(error_counter_field(2, 3), Some(Some((163, 3))));
        assert_eq!(error_counter_field(3, 1), Some(Some((40, 0))));
        assert_eq!(error_counter_field(3, 6), Some(Some((102, 0))));
        assert_eq!(error_counter_field(4, 3), Some(Some((151, 0))));
        assert_eq!(error_counter_field(4, 12), Some(None));
        assert_eq!(error_counter_field(5, 0), None);
    }

    #[test]
    fn masks() {
        let mut w = [0 as c_ulong; 2];
        write_mask(&mut w, [0u32, 3, 64, 200].into_iter());
        assert_eq!(w, [0b1001, 1]);
    }
}
