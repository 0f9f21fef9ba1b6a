//! gpulet's own exports: the error text, spec validation, the default state path and the
//! control entry point (used by `gpulet.sim` through ctypes).
//!
//! Return values: 0 success; 1 the spec is bad; 2 the command is wrong; 3 the state file
//! failed (or a buffer was too small). The reason is in `gpuletFakeLastError()`.

use std::ffi::{c_char, c_int, c_uint};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::control::{self, ControlError};
use crate::runtime::{self, set_last_error};
use crate::spec::{self, Node};
use crate::store::Store;
use crate::util::{read_cstr, write_cstr};

pub const OK: c_int = 0;
pub const BAD_SPEC: c_int = 1;
pub const BAD_COMMAND: c_int = 2;
pub const STATE_FAILED: c_int = 3;

/// Run `body` with panics turned into an error code.
fn guarded(name: &str, body: impl FnOnce() -> Result<(), (c_int, String)>) -> c_int {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => OK,
        Ok(Err((code, message))) => {
            set_last_error(message);
            code
        }
        Err(_) => {
            set_last_error(format!("internal error in {name}"));
            STATE_FAILED
        }
    }
}

/// # Safety
/// `p` null or a NUL-terminated string.
unsafe fn arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, (c_int, String)> {
    read_cstr(p).map_err(|_| {
        (
            BAD_COMMAND,
            format!("{what} must be a non-null UTF-8 string"),
        )
    })
}

/// The text of the last error the fake reported in this process ("" if none). The pointer
/// stays valid until many more errors have been reported.
#[no_mangle]
pub extern "C" fn gpuletFakeLastError() -> *const c_char {
    runtime::last_error_ptr()
}

/// Validate a node spec: 0 if it loads, else 1 with the reason in `gpuletFakeLastError`.
///
/// # Safety
/// `path` null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn gpuletFakeValidateSpec(path: *const c_char) -> c_int {
    guarded("gpuletFakeValidateSpec", || {
        let p = arg(path, "the spec path")?;
        Node::load(Path::new(p))
            .map(|_| ())
            .map_err(|e| (BAD_SPEC, e))
    })
}

/// Write the default state path of a spec into `buffer` (`length` bytes).
///
/// # Safety
/// `spec_path` null or a NUL-terminated string; `buffer` null or valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn gpuletFakeStatePath(
    spec_path: *const c_char,
    buffer: *mut c_char,
    length: c_uint,
) -> c_int {
    guarded("gpuletFakeStatePath", || {
        let p = arg(spec_path, "the spec path")?;
        let state = spec::default_state_path(Path::new(p)).map_err(|e| (BAD_SPEC, e))?;
        let text = state.to_string_lossy();
        write_cstr(buffer, length, &text).map_err(|_| {
            (
                STATE_FAILED,
                format!("the buffer of {length} bytes cannot hold {text}"),
            )
        })
    })
}

/// Apply one JSON control command to the node `spec_path` describes, in the state file
/// `state_path` (null: the spec's default state file).
///
/// # Safety
/// Each pointer null (only `state_path` may be) or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn gpuletFakeControl(
    spec_path: *const c_char,
    state_path: *const c_char,
    json_command: *const c_char,
) -> c_int {
    guarded("gpuletFakeControl", || {
        let spec = arg(spec_path, "the spec path")?;
        let json = arg(json_command, "the command")?;
        let node = Node::load(Path::new(spec)).map_err(|e| (BAD_SPEC, e))?;
        let state = if state_path.is_null() {
            spec::default_state_path(Path::new(spec)).map_err(|e| (BAD_SPEC, e))?
        } else {
            PathBuf::from(arg(state_path, "the state path")?)
        };
        let store = Store::new(Arc::new(node), state);
        control::run(&store, json).map_err(|e| match e {
            ControlError::Command(m) => (BAD_COMMAND, m),
            ControlError::Io(m) => (STATE_FAILED, m),
        })
    })
}
