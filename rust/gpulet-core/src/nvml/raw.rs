//! NVML calls that nvml-wrapper does not wrap (or wraps incorrectly), made through the wrapper's
//! loaded symbol table (`Nvml::lib()`), and the mapping of NVML failures to [`CoreError`].
//!
//! Every function here names its C call in the error it returns, so a failure reads as
//! "nvmlDeviceGetGpuInstances on GPU 3 failed: ...".

use std::os::raw::c_uint;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings as sys;

use crate::error::{CoreError, Result};

/// `NVML_SUCCESS`.
pub(crate) const SUCCESS: u32 = sys::nvmlReturn_enum_NVML_SUCCESS;
/// `NVML_ERROR_INVALID_ARGUMENT`.
pub(crate) const ERROR_INVALID_ARGUMENT: u32 = sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
/// `NVML_ERROR_NOT_SUPPORTED`.
pub(crate) const ERROR_NOT_SUPPORTED: u32 = sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
/// `NVML_ERROR_NO_PERMISSION`.
pub(crate) const ERROR_NO_PERMISSION: u32 = sys::nvmlReturn_enum_NVML_ERROR_NO_PERMISSION;
/// `NVML_ERROR_NOT_FOUND`.
pub(crate) const ERROR_NOT_FOUND: u32 = sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
/// `NVML_ERROR_FUNCTION_NOT_FOUND`: also used when the library lacks a symbol.
pub(crate) const ERROR_FUNCTION_NOT_FOUND: u32 = sys::nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND;
/// `NVML_ERROR_UNKNOWN`.
pub(crate) const ERROR_UNKNOWN: u32 = sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN;
/// `NVML_ERROR_ARGUMENT_VERSION_MISMATCH`: a versioned struct the library does not know.
pub(crate) const ERROR_ARGUMENT_VERSION_MISMATCH: u32 =
    sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;

/// `NVML_NVLINK_DEVICE_TYPE_GPU`.
pub(crate) const NVLINK_DEVICE_TYPE_GPU: u32 =
    sys::nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_GPU;
/// `NVML_NVLINK_DEVICE_TYPE_SWITCH`.
pub(crate) const NVLINK_DEVICE_TYPE_SWITCH: u32 =
    sys::nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_SWITCH;

/// The NVML return code an nvml-wrapper error stands for. A symbol missing from the library
/// counts as `NVML_ERROR_FUNCTION_NOT_FOUND`.
pub(crate) fn code_of(e: &NvmlError) -> u32 {
    use NvmlError::*;
    #[allow(deprecated)]
    match e {
        FailedToLoadSymbol(_) => ERROR_FUNCTION_NOT_FOUND,
        Uninitialized => sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED,
        InvalidArg => ERROR_INVALID_ARGUMENT,
        NotSupported => ERROR_NOT_SUPPORTED,
        NoPermission => ERROR_NO_PERMISSION,
        AlreadyInitialized => sys::nvmlReturn_enum_NVML_ERROR_ALREADY_INITIALIZED,
        NotFound => ERROR_NOT_FOUND,
        InsufficientSize(_) => sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE,
        InsufficientPower => sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_POWER,
        DriverNotLoaded => sys::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED,
        Timeout => sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT,
        IrqIssue => sys::nvmlReturn_enum_NVML_ERROR_IRQ_ISSUE,
        LibraryNotFound => sys::nvmlReturn_enum_NVML_ERROR_LIBRARY_NOT_FOUND,
        FunctionNotFound => ERROR_FUNCTION_NOT_FOUND,
        CorruptedInfoROM => sys::nvmlReturn_enum_NVML_ERROR_CORRUPTED_INFOROM,
        GpuLost => sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST,
        ResetRequired => sys::nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED,
        OperatingSystem => sys::nvmlReturn_enum_NVML_ERROR_OPERATING_SYSTEM,
        LibRmVersionMismatch => sys::nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        InUse => sys::nvmlReturn_enum_NVML_ERROR_IN_USE,
        InsufficientMemory => sys::nvmlReturn_enum_NVML_ERROR_MEMORY,
        NoData => sys::nvmlReturn_enum_NVML_ERROR_NO_DATA,
        VgpuEccNotSupported => sys::nvmlReturn_enum_NVML_ERROR_VGPU_ECC_NOT_SUPPORTED,
        UnexpectedVariant(code) => *code,
        _ => sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN,
    }
}

/// A [`CoreError::Nvml`] for a failed nvml-wrapper call.
pub(crate) fn wrap(call: &str, gpu: Option<u32>, e: NvmlError) -> CoreError {
    CoreError::Nvml {
        call: call.to_owned(),
        gpu,
        code: code_of(&e),
        message: e.to_string(),
    }
}

/// A [`CoreError::Nvml`] for a raw return code.
pub(crate) fn from_code(call: &str, gpu: Option<u32>, code: u32) -> CoreError {
    CoreError::Nvml {
        call: call.to_owned(),
        gpu,
        code,
        message: NvmlError::from(code as sys::nvmlReturn_t).to_string(),
    }
}

/// `Ok` on `NVML_SUCCESS`, else the error naming the call.
pub(crate) fn check(call: &str, gpu: Option<u32>, code: sys::nvmlReturn_t) -> Result<()> {
    if code == SUCCESS {
        Ok(())
    } else {
        Err(from_code(call, gpu, code))
    }
}

/// A function pointer out of the loaded library, or the error naming the missing symbol.
pub(crate) fn symbol<'a, T>(
    slot: &'a std::result::Result<T, libloading::Error>,
    call: &str,
    gpu: Option<u32>,
) -> Result<&'a T> {
    slot.as_ref().map_err(|e| CoreError::Nvml {
        call: call.to_owned(),
        gpu,
        code: ERROR_FUNCTION_NOT_FOUND,
        message: format!("the NVML library does not export {call} ({e})"),
    })
}

/// A NUL-terminated C string buffer as a Rust string (lossy; `c_char` is `i8` or `u8`
/// depending on the target).
pub(crate) fn c_buf_to_string<C>(buf: &[C]) -> String {
    const {
        assert!(
            std::mem::size_of::<C>() == 1,
            "C must be a one-byte character type"
        )
    };
    // SAFETY: `C` is one byte wide (checked at compile time); the slice is valid for its length.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len()) };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `NVML_STRUCT_VERSION(name, ver)`: the struct size with the version in the top byte.
pub(crate) const fn struct_version<T>(version: u32) -> c_uint {
    (std::mem::size_of::<T>() as u32) | (version << 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_the_wrapper_error() {
        for code in [1u32, 2, 3, 4, 6, 7, 9, 12, 13, 15, 19, 999] {
            let e = NvmlError::from(code as sys::nvmlReturn_t);
            assert_eq!(code_of(&e), code, "{e}");
        }
        assert_eq!(
            code_of(&NvmlError::FailedToLoadSymbol("x".into())),
            ERROR_FUNCTION_NOT_FOUND
        );
        assert_eq!(code_of(&NvmlError::UnexpectedVariant(77)), 77);
    }

    #[test]
    fn errors_name_the_call_and_gpu() {
        let e = from_code("nvmlDeviceGetUUID", Some(3), 15);
        let text = e.to_string();
        assert!(
            text.starts_with("nvmlDeviceGetUUID on GPU 3 failed"),
            "{text}"
        );
        assert!(text.contains("NVML error 15"), "{text}");
        assert!(check("nvmlInit_v2", None, SUCCESS).is_ok());
        let e = check("nvmlInit_v2", None, 9).unwrap_err();
        assert!(e.to_string().starts_with("nvmlInit_v2 failed"), "{e}");
    }

    #[test]
    fn c_strings_stop_at_nul_on_any_char_signedness() {
        let signed: [i8; 6] = [b'1' as i8, b'g' as i8, 0, b'x' as i8, 0, 0];
        assert_eq!(c_buf_to_string(&signed), "1g");
        let unsigned: [u8; 3] = [b'a', b'b', b'c'];
        assert_eq!(c_buf_to_string(&unsigned), "abc");
    }

    #[test]
    fn struct_version_matches_nvml_macro() {
        let v = struct_version::<sys::nvmlGpuInstanceProfileInfo_v3_t>(3);
        assert_eq!(v >> 24, 3);
        assert_eq!(
            v & 0xFF_FFFF,
            std::mem::size_of::<sys::nvmlGpuInstanceProfileInfo_v3_t>() as u32
        );
    }
}
