//! The state file: one JSON document per simulated node, shared by every process that loads
//! the fake with the same spec.
//!
//! - Mutations take an exclusive `flock` on a sidecar lock file (`<state>.lock`), re-read the
//!   file, apply the change and write it atomically (temp file, fsync, rename, fsync of the
//!   directory).
//! - Readers never lock: a rename is atomic, so they see the old or the new file, never half of
//!   one. A reader keeps the file it parsed open and re-reads only when the path names another
//!   file (device, inode) or the size or modification time changed. Holding the old file open
//!   keeps its inode allocated, so a later file can never reuse it and look unchanged.
//! - A missing file, or one built from another spec (digest) or by another schema (format), is
//!   (re)built from the spec.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::spec::Node;
use crate::state::{State, FORMAT};

type Key = (u64, u64, i64, i64, u64);

fn key_of(m: &std::fs::Metadata) -> Key {
    (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size())
}

struct Cached {
    /// Keeps the parsed file's inode alive (see the module docs).
    _file: File,
    key: Key,
    state: Arc<State>,
}

/// The state file of one node.
pub struct Store {
    path: PathBuf,
    lock_path: PathBuf,
    node: Arc<Node>,
    cache: Mutex<Option<Cached>>,
}

/// A mutation's own refusal, or a failure of the file itself.
#[derive(Debug)]
pub enum MutateError<E> {
    Rejected(E),
    Io(String),
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An exclusive `flock` on the sidecar lock file, released on drop.
struct LockGuard {
    _file: File,
}

impl LockGuard {
    fn acquire(path: &Path) -> Result<LockGuard, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("cannot open the state lock file {}: {e}", path.display()))?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(LockGuard { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("cannot lock {}: {err}", path.display()));
            }
        }
    }
}

/// Parse state text; `Ok(None)` when it belongs to another spec or schema (rebuild it).
fn parse_state(node: &Node, path: &Path, text: &str) -> Result<Option<State>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "the state file {} is not valid JSON ({e}); delete it or reset the simulation",
            path.display()
        )
    })?;
    let format = value.get("format").and_then(serde_json::Value::as_u64);
    let digest = value.get("spec_digest").and_then(serde_json::Value::as_str);
    if format != Some(u64::from(FORMAT)) || digest != Some(node.digest.as_str()) {
        return Ok(None);
    }
    let state: State = serde_json::from_value(value).map_err(|e| {
        format!(
            "the state file {} does not hold a simulated node's state ({e}); delete it or reset the simulation",
            path.display()
        )
    })?;
    if state.gpus.len() != node.gpus.len() {
        return Ok(None);
    }
    Ok(Some(state))
}

impl Store {
    /// The state file at `path`, not touched yet.
    pub fn new(node: Arc<Node>, path: PathBuf) -> Store {
        let mut lock_name = path.clone().into_os_string();
        lock_name.push(".lock");
        Store {
            lock_path: PathBuf::from(lock_name),
            path,
            node,
            cache: Mutex::new(None),
        }
    }

    /// Open (creating from the spec if needed) the state file at `path`.
    pub fn open(node: Arc<Node>, path: PathBuf) -> Result<Store, String> {
        let store = Store::new(node, path);
        store.load()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The current state (cheap when nothing changed: one `stat`).
    pub fn load(&self) -> Result<Arc<State>, String> {
        let mut cache = self.cache.lock();
        match std::fs::metadata(&self.path) {
            Ok(m) => {
                if let Some(c) = cache.as_ref() {
                    if c.key == key_of(&m) {
                        return Ok(c.state.clone());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot stat the state file {}: {e}",
                    self.path.display()
                ))
            }
        }
        match self.read_current()? {
            Some(c) => {
                let state = c.state.clone();
                *cache = Some(c);
                Ok(state)
            }
            None => {
                drop(cache);
                // Missing, or from another spec: build it under the lock.
                self.mutate(|_| Ok::<(), ()>(())).map_err(|e| match e {
                    MutateError::Io(m) => m,
                    MutateError::Rejected(()) => "state rebuild refused".to_string(),
                })?;
                self.cache
                    .lock()
                    .as_ref()
                    .map(|c| c.state.clone())
                    .ok_or_else(|| {
                        format!(
                            "the state file {} vanished while it was written",
                            self.path.display()
                        )
                    })
            }
        }
    }

    /// Read and parse the file now. `Ok(None)`: missing or not this spec's.
    fn read_current(&self) -> Result<Option<Cached>, String> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "cannot open the state file {}: {e}",
                    self.path.display()
                ))
            }
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat the state file {}: {e}", self.path.display()))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| format!("cannot read the state file {}: {e}", self.path.display()))?;
        Ok(
            parse_state(&self.node, &self.path, &text)?.map(|state| Cached {
                _file: file,
                key: key_of(&meta),
                state: Arc::new(state),
            }),
        )
    }

    /// Lock, re-read, apply `f`, write. Nothing is written when `f` refuses.
    pub fn mutate<T, E>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, MutateError<E>> {
        let _lock = LockGuard::acquire(&self.lock_path).map_err(MutateError::Io)?;
        let current = self.read_current().map_err(MutateError::Io)?;
        let mut state = match current {
            Some(c) => (*c.state).clone(),
            None => State::initial(&self.node),
        };
        let out = f(&mut state).map_err(MutateError::Rejected)?;
        self.write(state).map_err(MutateError::Io)?;
        Ok(out)
    }

    /// Replace the state without reading it (reset works on a damaged file too).
    pub fn replace(&self, f: impl FnOnce(Option<&State>) -> State) -> Result<(), String> {
        let _lock = LockGuard::acquire(&self.lock_path)?;
        let current = self.read_current().ok().flatten();
        let state = f(current.as_ref().map(|c| c.state.as_ref()));
        self.write(state)
    }

    fn write(&self, state: State) -> Result<(), String> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let text = serde_json::to_string(&state)
            .map_err(|e| format!("cannot encode the simulated node's state: {e}"))?;
        let mut tmp_name = self.path.clone().into_os_string();
        tmp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = PathBuf::from(tmp_name);
        let result = (|| -> std::io::Result<File> {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Ok(d) = File::open(dir) {
                // Best effort: not every filesystem can sync a directory.
                let _ = d.sync_all();
            }
            Ok(f)
        })();
        let file = match result {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(format!(
                    "cannot write the state file {}: {e}",
                    self.path.display()
                ));
            }
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat the state file {}: {e}", self.path.display()))?;
        *self.cache.lock() = Some(Cached {
            _file: file,
            key: key_of(&meta),
            state: Arc::new(state),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Arc<Node> {
        Arc::new(
            Node::parse(
                Path::new("t.yaml"),
                "version: v1\nname: t\nnuma_nodes: [{id: 0, cpus: \"0-7\"}]\ngpus:\n  - {model: A100-40GB, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0, mig_enabled: true}\n",
            )
            .unwrap(),
        )
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fakenvml-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn two_stores_share_one_file() {
        let dir = tmpdir("share");
        let path = dir.join("state.json");
        let a = Store::open(node(), path.clone()).unwrap();
        let b = Store::open(node(), path.clone()).unwrap();
        let g = a.node().gpus[0].clone();
        a.mutate(|s| s.create_gpu_instance(&g, 9, None)).unwrap();
        assert_eq!(b.load().unwrap().gpus[0].gpu_instances.len(), 1);
        // Many quick writes of equal size are all seen.
        for i in 0..50u64 {
            b.mutate(|s| s.gpus[0].metrics.set("energy_mj", Some(1000 + i)))
                .unwrap();
            assert_eq!(a.load().unwrap().gpus[0].metrics.energy_mj, 1000 + i);
        }
        let e = a
            .mutate(|s| s.create_gpu_instance(&g, 0, None))
            .unwrap_err();
        assert!(matches!(e, MutateError::Rejected(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_and_foreign_files_are_rebuilt() {
        let dir = tmpdir("rebuild");
        let path = dir.join("state.json");
        let a = Store::open(node(), path.clone()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(a.load().unwrap().gpus.len(), 1);
        assert!(path.exists());
        let mut foreign = (*a.load().unwrap()).clone();
        foreign.spec_digest = "other".into();
        foreign.gpus[0].lost = true;
        std::fs::write(&path, serde_json::to_string(&foreign).unwrap()).unwrap();
        assert!(!a.load().unwrap().gpus[0].lost);
        std::fs::write(&path, "{not json").unwrap();
        let e = a.load().unwrap_err();
        assert!(e.contains("is not valid JSON"), "{e}");
        a.replace(|_| State::initial(a.node())).unwrap();
        assert_eq!(a.load().unwrap().gpus.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_mutations_are_serialised() {
        let dir = tmpdir("concurrent");
        let path = dir.join("state.json");
        let n = node();
        Store::open(n.clone(), path.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (n, path) = (n.clone(), path.clone());
                std::thread::spawn(move || {
                    let s = Store::open(n, path).unwrap();
                    for _ in 0..25 {
                        s.mutate(|st| {
                            st.push_event(0, 8, 1, None, None);
                            Ok::<(), ()>(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = Store::open(n, path).unwrap();
        assert_eq!(s.load().unwrap().events.len(), 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_directories_are_reported() {
        let e = Store::open(node(), PathBuf::from("/proc/no-such-dir/state.json"))
            .err()
            .unwrap();
        assert!(e.contains("/proc/no-such-dir/state.json.lock"), "{e}");
    }
}
