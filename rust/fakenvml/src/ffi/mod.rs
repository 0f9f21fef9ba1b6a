//! The exported C ABI.
//!
//! Every `nvml*` function follows NVML's contract: pointer arguments are either null (answered
//! with NVML_ERROR_INVALID_ARGUMENT) or valid for the access NVML documents for them; handles
//! are the ones this library gave out (anything else is NVML_ERROR_INVALID_ARGUMENT). No
//! function unwinds into its caller.

use crate::abi::sys;
use crate::spec::PciAddr;
use crate::util::fill_chars;

/// Define exported NVML functions. Each body runs inside [`crate::runtime::guard`] and sees
/// `CALL`, its own exported name (used to match injected faults and delays).
macro_rules! nvml_export {
    ($(
        $(#[$meta:meta])*
        fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block
    )*) => {
        $(
            $(#[$meta])*
            #[no_mangle]
            #[allow(clippy::missing_safety_doc)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $crate::abi::Ret {
                #[allow(dead_code)]
                const CALL: &str = stringify!($name);
                $crate::runtime::guard(CALL, move || -> Result<(), $crate::abi::Ret> { $body })
            }
        )*
    };
}

#[cfg(test)]
mod abi_tests;
pub mod control;
pub mod device;
pub mod events;
pub mod mig;
pub mod system;
pub mod topology;

/// Every NVML function the fake exports; control commands may name these (or their names
/// without the `_vN`/`V` suffix) in `fail` and `delay`.
pub const EXPORTED_CALLS: &[&str] = &[
    // system
    "nvmlInit",
    "nvmlInit_v2",
    "nvmlInitWithFlags",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetNVMLVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlSystemGetProcessName",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetHandleByPciBusId",
    "nvmlDeviceGetHandleByPciBusId_v2",
    // device
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetSerial",
    "nvmlDeviceGetMinorNumber",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetPciInfo_v2",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetTemperatureV",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetPowerManagementLimit",
    "nvmlDeviceGetPowerManagementDefaultLimit",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetMaxClockInfo",
    "nvmlDeviceGetPcieReplayCounter",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetEccMode",
    "nvmlDeviceGetEncoderUtilization",
    "nvmlDeviceGetDecoderUtilization",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetArchitecture",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetBrand",
    "nvmlDeviceGetPersistenceMode",
    "nvmlDeviceGetComputeMode",
    "nvmlDeviceGetPerformanceState",
    "nvmlDeviceGetAttributes",
    "nvmlDeviceGetAttributes_v2",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetMPSComputeRunningProcesses_v3",
    // topology
    "nvmlDeviceGetTopologyCommonAncestor",
    "nvmlDeviceGetTopologyNearestGpus",
    "nvmlDeviceGetNvLinkState",
    "nvmlDeviceGetNvLinkVersion",
    "nvmlDeviceGetNvLinkCapability",
    "nvmlDeviceGetNvLinkRemotePciInfo_v2",
    "nvmlDeviceGetNvLinkRemoteDeviceType",
    "nvmlDeviceGetNvLinkErrorCounter",
    "nvmlDeviceGetCpuAffinity",
    "nvmlDeviceGetCpuAffinityWithinScope",
    "nvmlDeviceGetMemoryAffinity",
    "nvmlDeviceGetNumaNodeId",
    // MIG
    "nvmlDeviceGetMigMode",
    "nvmlDeviceSetMigMode",
    "nvmlDeviceGetGpuInstanceProfileInfo",
    "nvmlDeviceGetGpuInstanceProfileInfoV",
    "nvmlDeviceGetGpuInstanceProfileInfoByIdV",
    "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
    "nvmlDeviceGetGpuInstanceRemainingCapacity",
    "nvmlDeviceCreateGpuInstance",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlGpuInstanceDestroy",
    "nvmlDeviceGetGpuInstances",
    "nvmlDeviceGetGpuInstanceById",
    "nvmlGpuInstanceGetInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
    "nvmlGpuInstanceGetComputeInstanceRemainingCapacity",
    "nvmlGpuInstanceGetComputeInstancePossiblePlacements",
    "nvmlGpuInstanceCreateComputeInstance",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
    "nvmlComputeInstanceDestroy",
    "nvmlGpuInstanceGetComputeInstances",
    "nvmlGpuInstanceGetComputeInstanceById",
    "nvmlComputeInstanceGetInfo",
    "nvmlComputeInstanceGetInfo_v2",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    // events
    "nvmlEventSetCreate",
    "nvmlDeviceRegisterEvents",
    "nvmlDeviceGetSupportedEventTypes",
    "nvmlEventSetWait",
    "nvmlEventSetWait_v2",
    "nvmlEventSetFree",
];

/// Whether a control command's `call` names an exported function (exactly, or without its
/// version suffix).
pub fn is_known_call(call: &str) -> bool {
    EXPORTED_CALLS
        .iter()
        .any(|c| crate::state::call_matches(call, c))
}

/// `nvmlPciInfo_t` for an address.
pub fn pci_info(addr: &PciAddr, device_id: u32, subsystem_id: u32) -> sys::nvmlPciInfo_t {
    let mut info = sys::nvmlPciInfo_t {
        busIdLegacy: [0; 16],
        domain: addr.domain,
        bus: addr.bus,
        device: addr.device,
        pciDeviceId: device_id,
        pciSubSystemId: subsystem_id,
        busId: [0; 32],
    };
    fill_chars(&mut info.busIdLegacy, &addr.bus_id_legacy());
    fill_chars(&mut info.busId, &addr.bus_id());
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list above and the functions defined with `nvml_export!` must agree.
    #[test]
    fn exported_call_list_matches_the_sources() {
        let sources = [
            include_str!("system.rs"),
            include_str!("device.rs"),
            include_str!("topology.rs"),
            include_str!("mig.rs"),
            include_str!("events.rs"),
        ];
        let mut defined = Vec::new();
        for src in sources {
            for line in src.lines() {
                let t = line.trim_start();
                if let Some(rest) = t.strip_prefix("fn nvml") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    defined.push(format!("nvml{name}"));
                }
            }
        }
        let mut listed: Vec<String> = EXPORTED_CALLS.iter().map(|s| s.to_string()).collect();
        // nvmlErrorString is exported outside the macro (it returns a string, not a code).
        defined.sort();
        listed.sort();
        assert_eq!(defined, listed);
        assert!(is_known_call("nvmlDeviceGetMemoryInfo"));
        assert!(is_known_call("nvmlInit"));
        assert!(!is_known_call("nvmlDeviceGetBogus"));
    }
}
