//! Small helpers: stable hashing, identifier formatting, CPU lists, and the only code that
//! writes through pointers handed in by C callers.

use std::ffi::{c_char, c_uint, CStr};

use crate::abi::{Ret, ERROR_INSUFFICIENT_SIZE, ERROR_INVALID_ARGUMENT};

/// FNV-1a, 64 bits. Stable across processes, builds and Rust releases (unlike `DefaultHasher`),
/// which matters because UUIDs and state-file names derived from it must agree between
/// processes.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate the parts so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// 128 bits of stable hash, as two FNV-1a runs with different salts.
pub fn hash128(parts: &[&[u8]]) -> [u8; 16] {
    let mut salted: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    salted.push(b"gpulet-fakenvml/1");
    salted.extend_from_slice(parts);
    let a = fnv1a64(&salted);
    salted[0] = b"gpulet-fakenvml/2";
    let b = fnv1a64(&salted);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

/// `PREFIX-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, the form NVML gives GPU and MIG UUIDs.
pub fn uuid_from(prefix: &str, parts: &[&[u8]]) -> String {
    let b = hash128(parts);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{prefix}-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `s` is `PREFIX-` followed by an 8-4-4-4-12 hexadecimal UUID.
pub fn is_uuid(prefix: &str, s: &str) -> bool {
    let Some(rest) = s.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let groups: Vec<&str> = rest.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Parse a Linux cpulist ("0-55,112-167", "3", "0,2,4-7") into sorted, distinct CPU numbers.
pub fn parse_cpulist(list: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    if list.trim().is_empty() {
        return Err("the CPU list is empty".into());
    }
    for item in list.split(',') {
        let item = item.trim();
        let parse = |s: &str| -> Result<u32, String> {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("{s:?} is not a CPU number"))
        };
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    return Err(format!("the range {item:?} runs backwards"));
                }
                if b - a > 65_535 {
                    return Err(format!("the range {item:?} is implausibly large"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(parse(item)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Read a C string argument. Null or non-UTF-8 → `NVML_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string that outlives the call.
pub unsafe fn read_cstr<'a>(p: *const c_char) -> Result<&'a str, Ret> {
    if p.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| ERROR_INVALID_ARGUMENT)
}

/// Copy `s` and a NUL into the caller's buffer of `len` bytes. Null → INVALID_ARGUMENT; too
/// small → INSUFFICIENT_SIZE (nothing written), as NVML does.
///
/// # Safety
/// `buf` must be null or valid for `len` bytes of writes.
pub unsafe fn write_cstr(buf: *mut c_char, len: c_uint, s: &str) -> Result<(), Ret> {
    if buf.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    let bytes = s.as_bytes();
    if bytes.len() + 1 > len as usize {
        return Err(ERROR_INSUFFICIENT_SIZE);
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, bytes.len());
    *buf.add(bytes.len()) = 0;
    Ok(())
}

/// Copy `s` into a fixed-size `c_char` array inside a struct, truncating to leave room for NUL.
pub fn fill_chars(dst: &mut [c_char], s: &str) {
    let n = s.len().min(dst.len().saturating_sub(1));
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as c_char;
    }
    for d in dst.iter_mut().skip(n) {
        *d = 0;
    }
}

/// Write one value through an out-pointer. Null → INVALID_ARGUMENT.
///
/// # Safety
/// `p` must be null or valid for one write of `T`.
pub unsafe fn out<T>(p: *mut T, v: T) -> Result<(), Ret> {
    if p.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    p.write(v);
    Ok(())
}

/// Read the `version` field that opens every versioned NVML struct. Null → INVALID_ARGUMENT.
///
/// # Safety
/// `p` must be null or point to a struct that starts with a `c_uint`.
pub unsafe fn struct_version<T>(p: *const T) -> Result<c_uint, Ret> {
    if p.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    Ok(p.cast::<c_uint>().read())
}

/// Turn the caller's array pointer and element count into a slice. Null with a non-zero length
/// → INVALID_ARGUMENT.
///
/// # Safety
/// `p` must be null or valid for `len` elements of reads and writes.
pub unsafe fn slice_mut<'a, T>(p: *mut T, len: usize) -> Result<&'a mut [T], Ret> {
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    Ok(std::slice::from_raw_parts_mut(p, len))
}

/// The NVML `NVML_STRUCT_VERSION(T, v)` encoding.
pub const fn struct_version_of<T>(version: u32) -> u32 {
    (std::mem::size_of::<T>() as u32) | (version << 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_is_stable() {
        // Pinned: UUIDs derived from this must not change between releases.
        assert_eq!(fnv1a64(&[b"abc"]), fnv1a64(&[b"abc"]));
        assert_ne!(fnv1a64(&[b"ab", b"c"]), fnv1a64(&[b"a", b"bc"]));
        let u = uuid_from("GPU", &[b"dgx-h100", b"0"]);
        assert!(is_uuid("GPU", &u), "{u}");
        assert_eq!(u, uuid_from("GPU", &[b"dgx-h100", b"0"]));
        assert_ne!(u, uuid_from("GPU", &[b"dgx-h100", b"1"]));
    }

    #[test]
    fn uuid_shape_is_checked() {
        assert!(is_uuid("GPU", "GPU-12345678-1234-1234-1234-123456789abc"));
        assert!(!is_uuid("GPU", "MIG-12345678-1234-1234-1234-123456789abc"));
        assert!(!is_uuid("GPU", "GPU-12345678-1234-1234-1234-123456789ab"));
        assert!(!is_uuid("GPU", "GPU-1234567g-1234-1234-1234-123456789abc"));
    }

    #[test]
    fn cpulists() {
        assert_eq!(
            parse_cpulist("0-3,8,6-7").unwrap(),
            vec![0, 1, 2, 3, 6, 7, 8]
        );
        assert_eq!(parse_cpulist(" 5 ").unwrap(), vec![5]);
        assert!(parse_cpulist("").is_err());
        assert!(parse_cpulist("3-1").is_err());
        assert!(parse_cpulist("a-b").is_err());
    }

    #[test]
    fn c_strings() {
        let mut buf = [1 as c_char; 4];
        unsafe {
            assert_eq!(
                write_cstr(buf.as_mut_ptr(), 4, "abcd"),
                Err(ERROR_INSUFFICIENT_SIZE)
            );
            assert_eq!(write_cstr(buf.as_mut_ptr(), 4, "abc"), Ok(()));
            assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), "abc");
            assert_eq!(
                write_cstr(std::ptr::null_mut(), 4, "a"),
                Err(ERROR_INVALID_ARGUMENT)
            );
        }
        let mut arr = [7 as c_char; 5];
        fill_chars(&mut arr, "abcdefgh");
        assert_eq!(arr, [97, 98, 99, 100, 0]);
    }
}
