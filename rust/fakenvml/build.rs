//! Gives the shared object the soname of the real NVML, so that once a process has loaded the
//! fake by its full path, every later `dlopen("libnvidia-ml.so.1")` in that process (pynvml's
//! included) returns the same library.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
