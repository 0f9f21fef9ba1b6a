//! The NVML ABI facts the fake needs: return codes, enum values and struct layouts. The types
//! come from nvml-wrapper-sys (generated from nvml.h); the few legacy layouts it does not carry
//! are declared here.

use std::ffi::{c_uint, c_ulonglong, CStr};

pub use nvml_wrapper_sys::bindings as sys;

pub type Ret = sys::nvmlReturn_t;

pub const SUCCESS: Ret = sys::nvmlReturn_enum_NVML_SUCCESS;
pub const ERROR_UNINITIALIZED: Ret = sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
pub const ERROR_INVALID_ARGUMENT: Ret = sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
pub const ERROR_NOT_SUPPORTED: Ret = sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
pub const ERROR_NOT_FOUND: Ret = sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
pub const ERROR_INSUFFICIENT_SIZE: Ret = sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
pub const ERROR_DRIVER_NOT_LOADED: Ret = sys::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED;
pub const ERROR_TIMEOUT: Ret = sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT;
pub const ERROR_GPU_IS_LOST: Ret = sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST;
pub const ERROR_IN_USE: Ret = sys::nvmlReturn_enum_NVML_ERROR_IN_USE;
pub const ERROR_INSUFFICIENT_RESOURCES: Ret =
    sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES;
pub const ERROR_ARGUMENT_VERSION_MISMATCH: Ret =
    sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
pub const ERROR_UNKNOWN: Ret = sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN;

/// Every return code NVML 12/13 define, with the text `nvmlErrorString` gives for it.
pub const RETURN_CODES: &[(Ret, &CStr)] = &[
    (0, c"Success"),
    (1, c"Uninitialized"),
    (2, c"Invalid Argument"),
    (3, c"Not Supported"),
    (4, c"Insufficient Permissions"),
    (5, c"Already Initialized"),
    (6, c"Not Found"),
    (7, c"Insufficient Size"),
    (8, c"Insufficient External Power"),
    (9, c"Driver Not Loaded"),
    (10, c"Timeout"),
    (11, c"Interrupt Request Issue"),
    (12, c"NVML Shared Library Not Found"),
    (13, c"Function Not Found"),
    (14, c"Corrupted infoROM"),
    (15, c"GPU is lost"),
    (16, c"GPU requires restart"),
    (17, c"The operating system has blocked the request"),
    (18, c"RM has detected an NVML/RM version mismatch"),
    (19, c"In use by another client"),
    (20, c"Insufficient Memory"),
    (21, c"No data"),
    (
        22,
        c"The requested vGPU operation is not available on target device, because ECC is enabled",
    ),
    (23, c"Insufficient resources"),
    (24, c"Frequency not supported"),
    (25, c"Argument version mismatch"),
    (26, c"Deprecated"),
    (27, c"Not Ready"),
    (28, c"GPU not found"),
    (29, c"Invalid state"),
    (30, c"Reset type not supported"),
    (999, c"Unknown Error"),
];

/// The NUL-terminated text for a return code (static, as `nvmlErrorString` promises).
pub fn error_cstring(code: Ret) -> &'static CStr {
    RETURN_CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(c"Unknown Error", |(_, t)| t)
}

/// Whether `code` is a return code NVML defines (for control commands that inject one).
pub fn is_known_return_code(code: Ret) -> bool {
    RETURN_CODES.iter().any(|(c, _)| *c == code)
}

// Flags and enum values.
pub const DEVICE_MIG_DISABLE: c_uint = sys::NVML_DEVICE_MIG_DISABLE;
pub const DEVICE_MIG_ENABLE: c_uint = sys::NVML_DEVICE_MIG_ENABLE;
pub const EVENT_SBE: u64 = sys::nvmlEventTypeSingleBitEccError as u64;
pub const EVENT_DBE: u64 = sys::nvmlEventTypeDoubleBitEccError as u64;
pub const EVENT_PSTATE: u64 = sys::nvmlEventTypePState as u64;
pub const EVENT_XID: u64 = sys::nvmlEventTypeXidCriticalError as u64;
pub const EVENT_CLOCK: u64 = sys::nvmlEventTypeClock as u64;
pub const EVENT_MIG_CONFIG_CHANGE: u64 = sys::nvmlEventMigConfigChange as u64;
/// `gpuInstanceId` / `computeInstanceId` of an event not attributable to a MIG instance.
pub const NO_INSTANCE: c_uint = 0xFFFF_FFFF;
pub const NVLINK_DEVICE_TYPE_GPU: c_uint =
    sys::nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_GPU;
pub const NVLINK_DEVICE_TYPE_SWITCH: c_uint =
    sys::nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_SWITCH;
pub const NVLINK_CAP_COUNT: c_uint = sys::nvmlNvLinkCapability_enum_NVML_NVLINK_CAP_COUNT;
pub const AFFINITY_SCOPE_NODE: c_uint = sys::NVML_AFFINITY_SCOPE_NODE;
pub const AFFINITY_SCOPE_SOCKET: c_uint = sys::NVML_AFFINITY_SCOPE_SOCKET;
pub const GPU_INSTANCE_PROFILE_COUNT: c_uint = 0x12;
pub const COMPUTE_INSTANCE_PROFILE_COUNT: c_uint = 0x9;
pub const COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED: c_uint = 0x0;
pub const BRAND_TESLA: c_uint = sys::nvmlBrandType_enum_NVML_BRAND_TESLA;
pub const BRAND_NVIDIA: c_uint = sys::nvmlBrandType_enum_NVML_BRAND_NVIDIA;

// Versioned structs (NVML_STRUCT_VERSION).
pub const MEMORY_V2: c_uint = crate::util::struct_version_of::<sys::nvmlMemory_v2_t>(2);
pub const TEMPERATURE_V1: c_uint = crate::util::struct_version_of::<sys::nvmlTemperature_v1_t>(1);
pub const GI_PROFILE_INFO_V2: c_uint =
    crate::util::struct_version_of::<sys::nvmlGpuInstanceProfileInfo_v2_t>(2);
pub const GI_PROFILE_INFO_V3: c_uint =
    crate::util::struct_version_of::<sys::nvmlGpuInstanceProfileInfo_v3_t>(3);
pub const CI_PROFILE_INFO_V2: c_uint =
    crate::util::struct_version_of::<sys::nvmlComputeInstanceProfileInfo_v2_t>(2);
pub const CI_PROFILE_INFO_V3: c_uint =
    crate::util::struct_version_of::<sys::nvmlComputeInstanceProfileInfo_v3_t>(3);

/// `nvmlEventData_t` as the unversioned `nvmlEventSetWait` (NVML before 11) fills it: without
/// the instance ids that `_v2` added.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EventDataV1 {
    pub device: sys::nvmlDevice_t,
    pub event_type: c_ulonglong,
    pub event_data: c_ulonglong,
}

/// `nvmlComputeInstanceInfo_t` as the unversioned `nvmlComputeInstanceGetInfo` fills it:
/// without the placement that `_v2` added.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ComputeInstanceInfoV1 {
    pub device: sys::nvmlDevice_t,
    pub gpu_instance: sys::nvmlGpuInstance_t,
    pub id: c_uint,
    pub profile_id: c_uint,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_versions_match_the_headers() {
        // The values pynvml and nvml.h spell out.
        assert_eq!(MEMORY_V2, 0x0200_0028);
        assert_eq!(TEMPERATURE_V1, 0x0100_000C);
        assert_eq!(GI_PROFILE_INFO_V2, 0x0200_0098);
        assert_eq!(GI_PROFILE_INFO_V3, 0x0300_0098);
        assert_eq!(CI_PROFILE_INFO_V2, 0x0200_0088);
        assert_eq!(CI_PROFILE_INFO_V3, 0x0300_008C);
        assert_eq!(std::mem::size_of::<sys::nvmlFieldValue_t>(), 40);
        assert_eq!(std::mem::size_of::<sys::nvmlProcessInfo_t>(), 24);
        assert_eq!(std::mem::size_of::<sys::nvmlProcessInfo_v1_t>(), 16);
        assert_eq!(std::mem::size_of::<sys::nvmlEventData_t>(), 32);
        assert_eq!(std::mem::size_of::<EventDataV1>(), 24);
        assert_eq!(std::mem::size_of::<sys::nvmlPciInfo_t>(), 68);
    }

    #[test]
    fn every_code_has_text() {
        for (code, text) in RETURN_CODES {
            assert_eq!(error_cstring(*code), *text);
        }
        assert_eq!(error_cstring(12345).to_str().unwrap(), "Unknown Error");
    }
}
