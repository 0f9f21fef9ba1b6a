//! Bundles the fake NVML with the Python package.
//!
//! With the `bundle-fakenvml` feature (pyproject.toml turns it on for every maturin build:
//! `maturin build`/`develop`, `pip install .`, `pip install` of the sdist, `pip wheel .`), this
//! script runs a nested `cargo build` of `rust/fakenvml` for the same target triple and profile,
//! and installs the library it produces as `python/gpulet/_fakenvml/libnvidia-ml.so.1`, where
//! maturin picks it up when it packs the wheel (it collects the Python files after compiling).
//!
//! Without the feature (plain `cargo build`/`clippy`/`test` of the workspace, where the fake is
//! a workspace member anyway) the script does nothing.
//!
//! The nested build uses a target directory of its own (`target/release/fakenvml-bundle`), so it
//! never waits on the lock the outer build holds, and it shares the outer build's jobserver
//! (`CARGO_MAKEFLAGS`), so both together stay within `-j`.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{self, Command};
use std::time::{Duration, SystemTime};

/// What the Python side looks for (python/gpulet/sim.py, `_PACKAGED_LIBRARY`).
const INSTALLED_NAME: &str = "libnvidia-ml.so.1";
/// What cargo names the fake's cdylib on Linux.
const BUILT_NAME: &str = "libfakenvml.so";
/// Variables that must not steer the nested build: it picks its own target directory and
/// target, and clippy's wrapper is for the outer build. RUSTFLAGS goes because cargo hands the
/// script CARGO_ENCODED_RUSTFLAGS, the flags the outer build compiles the target with, which
/// the nested cargo then uses (it takes precedence): the fake is compiled with the same flags.
/// CARGO_MAKEFLAGS stays, so the nested build draws on the outer build's jobserver.
const CLEARED_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
];

fn main() {
    // Taken before anything else: the installed file's modification time is set just before
    // it, so that cargo does not count the file this run writes as a change (see `install`).
    let started = SystemTime::now();
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_BUNDLE_FAKENVML").is_none() {
        return;
    }
    if let Err(message) = bundle(started) {
        eprintln!("error: could not bundle the fake NVML (rust/fakenvml) with gpulet: {message}");
        process::exit(1);
    }
}

fn var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|e| format!("cargo did not set {name} for the build script: {e}"))
}

fn bundle(started: SystemTime) -> Result<(), String> {
    let target_os = var("CARGO_CFG_TARGET_OS")?;
    let target = var("TARGET")?;
    if target_os != "linux" {
        println!(
            "cargo:warning=the fake NVML is Linux-only: not bundled for {target}; \
             gpulet.simulated() will need GPULET_FAKE_NVML_PATH"
        );
        return Ok(());
    }
    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} has no workspace root above it", manifest_dir.display()))?
        .to_path_buf();
    let fake_manifest = root.join("rust/fakenvml/Cargo.toml");
    let dest = root.join("python/gpulet/_fakenvml").join(INSTALLED_NAME);

    // Rebuild when the fake, the core it uses, the workspace manifest or the lock file changes,
    // or when the installed copy is removed. Finer-grained freshness is the nested cargo's.
    for path in [
        root.join("rust/fakenvml"),
        root.join("rust/gpulet-core"),
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
        dest.clone(),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    if !fake_manifest.is_file() {
        return Err(format!(
            "{} is missing (an sdist must carry rust/fakenvml: gpulet-py lists it as a \
             dev-dependency for that)",
            fake_manifest.display()
        ));
    }

    let out_dir = PathBuf::from(var("OUT_DIR")?);
    let target_dir = nested_target_dir(&out_dir);
    let release = var("PROFILE")? == "release";
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));

    // --locked: the outer build has already brought Cargo.lock up to date for the whole
    // workspace, and the nested one must not write it while the outer one runs.
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&fake_manifest)
        .args(["-p", "fakenvml", "--lib", "--locked", "--target", &target])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&root);
    if release {
        cmd.arg("--release");
    }
    for name in CLEARED_ENV {
        cmd.env_remove(name);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("could not run {}: {e}", Path::new(&cargo).display()))?;
    if !status.success() {
        return Err(format!(
            "`cargo build -p fakenvml --target {target}{}` failed ({status}); its output is above",
            if release { " --release" } else { "" }
        ));
    }

    let built = target_dir
        .join(&target)
        .join(if release { "release" } else { "debug" })
        .join(BUILT_NAME);
    install(&built, &dest, started).map_err(|e| {
        format!(
            "could not install {} as {}: {e}",
            built.display(),
            dest.display()
        )
    })
}

/// `fakenvml-bundle` in the outer build's profile directory (`target/release`, the parent of
/// the `build` directory OUT_DIR is in), so that it outlives a change of this script's hash;
/// OUT_DIR itself if the layout is not the one expected.
fn nested_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
        .unwrap_or(out_dir)
        .join("fakenvml-bundle")
}

/// Replace `dest` with a copy of `built` atomically (write beside it, then rename), unless it
/// already holds the same bytes. The copy's modification time is set to before this script
/// started: cargo compares `rerun-if-changed` files with the time the script was started, and
/// a file the script itself wrote would otherwise make every later build run it again.
fn install(built: &Path, dest: &Path, started: SystemTime) -> io::Result<()> {
    let bytes = fs::read(built)?;
    if fs::read(dest).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let dir = dest
        .parent()
        .ok_or_else(|| io::Error::other("the destination has no parent directory"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{INSTALLED_NAME}.{}.tmp", process::id()));
    let written = (|| {
        fs::write(&tmp, &bytes)?;
        let file = fs::File::options().write(true).open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(0o755))?;
        file.set_modified(started - Duration::from_secs(2))?;
        drop(file);
        fs::rename(&tmp, dest)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}
