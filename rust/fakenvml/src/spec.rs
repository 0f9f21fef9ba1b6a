//! Node specs (docs/node-spec.md): parsing, validation and the resolved [`Node`] the fake
//! answers from. Every model fact comes from `gpulet_core::catalog`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use gpulet_core::catalog::{self, GpuModel, MigProfile};
use gpulet_core::topology::{PcieLevel, Topology};
use serde::Deserialize;

use crate::fields::FieldScheme;
use crate::mig;
use crate::util;

const DEFAULT_DRIVER_VERSION: &str = "570.124.06";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    version: Option<String>,
    name: Option<String>,
    driver_version: Option<String>,
    cuda_driver_version: Option<i64>,
    nvml_version: Option<String>,
    numa_nodes: Option<Vec<RawNuma>>,
    nvswitches: Option<u32>,
    gpus: Option<Vec<RawGpu>>,
    pcie: Option<Vec<RawPcie>>,
    nvlinks: Option<Vec<RawNvlink>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNuma {
    id: u32,
    cpus: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    model: Option<String>,
    pci_bus_id: Option<String>,
    numa_node: Option<u32>,
    uuid: Option<String>,
    serial: Option<String>,
    minor: Option<u32>,
    mig_enabled: Option<bool>,
    mig_devices: Option<Vec<RawMig>>,
    processes: Option<Vec<RawProcess>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMig {
    profile: String,
    start: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    pid: u32,
    used_memory_mib: u64,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPcie {
    gpus: Vec<usize>,
    level: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNvlink {
    gpus: Vec<usize>,
    links: u32,
}

/// A PCI address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
    pub function: u32,
}

impl PciAddr {
    /// Parse "DDDDDDDD:BB:DD.F" or the legacy "DDDD:BB:DD.F" (hex, any case).
    pub fn parse(s: &str) -> Option<PciAddr> {
        let (domain, rest) = s.trim().split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (device, function) = rest.split_once('.')?;
        let hex = |x: &str, max_len: usize| -> Option<u32> {
            if x.is_empty() || x.len() > max_len || !x.chars().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(x, 16).ok()
        };
        if domain.len() != 4 && domain.len() != 8 {
            return None;
        }
        let addr = PciAddr {
            domain: hex(domain, 8)?,
            bus: hex(bus, 2)?,
            device: hex(device, 2)?,
            function: hex(function, 1)?,
        };
        (bus.len() == 2 && device.len() == 2 && addr.device <= 0x1F && addr.function <= 7)
            .then_some(addr)
    }

    /// The `busId` form: "%08X:%02X:%02X.F".
    pub fn bus_id(&self) -> String {
        format!(
            "{:08X}:{:02X}:{:02X}.{:X}",
            self.domain, self.bus, self.device, self.function
        )
    }

    /// The `busIdLegacy` form: "%04X:%02X:%02X.F".
    pub fn bus_id_legacy(&self) -> String {
        format!(
            "{:04X}:{:02X}:{:02X}.{:X}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// One CPU NUMA node of the simulated host.
#[derive(Debug, Clone)]
pub struct NumaNode {
    pub id: u32,
    pub cpus: Vec<u32>,
}

/// A compute process given in the spec.
#[derive(Debug, Clone)]
pub struct SpecProcess {
    pub pid: u32,
    pub used_memory_mib: u64,
    pub name: Option<String>,
}

/// One GPU of the node, resolved against the catalog.
#[derive(Debug, Clone)]
pub struct GpuSpec {
    pub index: usize,
    pub model: &'static GpuModel,
    pub pci: PciAddr,
    pub numa_node: u32,
    pub uuid: String,
    pub serial: String,
    pub minor: u32,
    pub mig_enabled: bool,
    /// MIG instances present at start: (profile, start memory slice).
    pub mig_devices: Vec<(&'static MigProfile, u32)>,
    pub processes: Vec<SpecProcess>,
}

/// What one NVLink of a GPU connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd {
    /// The link exists on the model but is not connected.
    Inactive,
    /// To another GPU (NVML index).
    Gpu(usize),
    /// To an NVSwitch (index into [`Node::switches`]).
    Switch(usize),
}

/// A validated node spec.
#[derive(Debug, Clone)]
pub struct Node {
    /// The spec file as given.
    pub path: PathBuf,
    /// Digest of the spec's content: the state file records it and is rebuilt on a mismatch.
    pub digest: String,
    pub name: String,
    pub driver_version: String,
    pub cuda_driver_version: i32,
    pub nvml_version: String,
    pub field_scheme: FieldScheme,
    pub numa_nodes: Vec<NumaNode>,
    pub gpus: Vec<GpuSpec>,
    pub topology: Topology,
    /// Per GPU, per NVLink index below the model's NVLink count.
    pub links: Vec<Vec<LinkEnd>>,
    /// Fabricated PCI addresses of the NVSwitches (`nvswitches` of them).
    pub switches: Vec<PciAddr>,
    /// `pciDeviceId` the NVSwitches report.
    pub switch_pci_device_id: u32,
}

impl Node {
    /// Read and validate a spec file.
    pub fn load(path: &Path) -> Result<Node, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the node spec: {e}", path.display()))?;
        Node::parse(path, &text)
    }

    /// Validate spec text; `path` names the file in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Node, String> {
        let file = path.display().to_string();
        let err = |field: &str, msg: String| format!("{file}: {field}: {msg}");
        let raw: RawSpec = serde_yaml::from_str(text)
            .map_err(|e| format!("{file}: malformed node spec YAML: {e}"))?;

        match raw.version.as_deref() {
            Some("v1") => {}
            Some(v) => {
                return Err(err(
                    "version",
                    format!("unknown spec version {v:?}; expected \"v1\""),
                ))
            }
            None => return Err(err("version", "is required (version: v1)".into())),
        }
        let name = match raw.name {
            Some(n) if !n.trim().is_empty() => n,
            _ => return Err(err("name", "is required and must not be empty".into())),
        };

        let driver_version = raw
            .driver_version
            .unwrap_or_else(|| DEFAULT_DRIVER_VERSION.into());
        let (major, minor) = parse_driver_version(&driver_version).ok_or_else(|| {
            err(
                "driver_version",
                format!("{driver_version:?} is not a driver version like \"570.124.06\""),
            )
        })?;
        let field_scheme = FieldScheme::for_driver(major, minor);
        let nvml_major = if field_scheme == FieldScheme::V13 || major >= 580 {
            13
        } else {
            12
        };
        let cuda_driver_version = match raw.cuda_driver_version {
            None => {
                if nvml_major == 13 {
                    13000
                } else {
                    12080
                }
            }
            Some(v) if (1000..=99_990).contains(&v) => v as i32,
            Some(v) => {
                return Err(err(
                    "cuda_driver_version",
                    format!("{v} is not a CUDA version as 1000*major + 10*minor (e.g. 12080)"),
                ))
            }
        };
        let nvml_version = raw
            .nvml_version
            .unwrap_or_else(|| format!("{nvml_major}.{driver_version}"));

        // NUMA nodes.
        let raw_numa = raw.numa_nodes.ok_or_else(|| {
            err(
                "numa_nodes",
                "is required (the host's NUMA nodes and CPUs)".into(),
            )
        })?;
        if raw_numa.is_empty() {
            return Err(err("numa_nodes", "must list at least one NUMA node".into()));
        }
        let mut numa_nodes = Vec::new();
        let mut seen_cpus: BTreeMap<u32, u32> = BTreeMap::new();
        for (i, n) in raw_numa.iter().enumerate() {
            if numa_nodes.iter().any(|m: &NumaNode| m.id == n.id) {
                return Err(err(
                    &format!("numa_nodes[{i}].id"),
                    format!("NUMA node {} is listed twice", n.id),
                ));
            }
            let cpus = util::parse_cpulist(&n.cpus).map_err(|e| {
                err(
                    &format!("numa_nodes[{i}].cpus"),
                    format!("{:?}: {e}", n.cpus),
                )
            })?;
            for c in &cpus {
                if let Some(other) = seen_cpus.insert(*c, n.id) {
                    return Err(err(
                        &format!("numa_nodes[{i}].cpus"),
                        format!("CPU {c} is in NUMA node {other} and NUMA node {}", n.id),
                    ));
                }
            }
            numa_nodes.push(NumaNode { id: n.id, cpus });
        }

        // GPUs.
        let raw_gpus = raw
            .gpus
            .ok_or_else(|| err("gpus", "is required (the GPUs in NVML index order)".into()))?;
        let mut gpus = Vec::with_capacity(raw_gpus.len());
        let mut bus_ids: BTreeMap<PciAddr, usize> = BTreeMap::new();
        let mut uuids: BTreeMap<String, usize> = BTreeMap::new();
        let mut minors: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, g) in raw_gpus.into_iter().enumerate() {
            let at = |f: &str| format!("gpus[{i}].{f}");
            let model_name = g
                .model
                .ok_or_else(|| err(&at("model"), "is required".into()))?;
            let model = catalog::lookup(&model_name).ok_or_else(|| {
                err(
                    &at("model"),
                    format!(
                        "unknown GPU model {model_name:?}; known models: {}",
                        catalog::model_keys().join(", ")
                    ),
                )
            })?;
            let bus = g
                .pci_bus_id
                .ok_or_else(|| err(&at("pci_bus_id"), "is required".into()))?;
            let pci = PciAddr::parse(&bus).ok_or_else(|| {
                err(
                    &at("pci_bus_id"),
                    format!("{bus:?} is not a PCI bus id like \"00000000:1B:00.0\""),
                )
            })?;
            if let Some(j) = bus_ids.insert(pci, i) {
                return Err(err(
                    &at("pci_bus_id"),
                    format!("{} is also the PCI bus id of gpus[{j}]", pci.bus_id()),
                ));
            }
            let numa_node = g
                .numa_node
                .ok_or_else(|| err(&at("numa_node"), "is required".into()))?;
            if !numa_nodes.iter().any(|n| n.id == numa_node) {
                return Err(err(
                    &at("numa_node"),
                    format!(
                        "NUMA node {numa_node} is not in numa_nodes (ids: {})",
                        numa_nodes
                            .iter()
                            .map(|n| n.id.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            let idx = i.to_string();
            let uuid = match g.uuid {
                Some(u) if util::is_uuid("GPU", &u) => u,
                Some(u) => {
                    return Err(err(
                        &at("uuid"),
                        format!(
                        "{u:?} is not a GPU UUID like \"GPU-12345678-abcd-abcd-abcd-123456789abc\""
                    ),
                    ))
                }
                None => util::uuid_from("GPU", &[name.as_bytes(), idx.as_bytes()]),
            };
            if let Some(j) = uuids.insert(uuid.to_ascii_lowercase(), i) {
                return Err(err(
                    &at("uuid"),
                    format!("{uuid} is also the UUID of gpus[{j}]"),
                ));
            }
            let serial = match g.serial {
                Some(s)
                    if !s.is_empty()
                        && s.len() < 30
                        && s.chars().all(|c| c.is_ascii_alphanumeric()) =>
                {
                    s
                }
                Some(s) => {
                    return Err(err(
                        &at("serial"),
                        format!("{s:?} must be 1 to 29 ASCII letters or digits"),
                    ))
                }
                None => {
                    let h = util::fnv1a64(&[b"serial", name.as_bytes(), idx.as_bytes()]);
                    format!("1{:012}", h % 1_000_000_000_000)
                }
            };
            let minor = g.minor.unwrap_or(i as u32);
            if let Some(j) = minors.insert(minor, i) {
                return Err(err(
                    &at("minor"),
                    format!("minor number {minor} is also used by gpus[{j}]"),
                ));
            }
            let mig_enabled = g.mig_enabled.unwrap_or(false);
            if mig_enabled && model.mig.is_none() {
                return Err(err(
                    &at("mig_enabled"),
                    format!("{} does not support MIG", model.key),
                ));
            }
            let raw_mig = g.mig_devices.unwrap_or_default();
            let mut mig_devices: Vec<(&'static MigProfile, u32)> = Vec::new();
            if !raw_mig.is_empty() {
                let Some(geometry) = model.mig else {
                    return Err(err(
                        &at("mig_devices"),
                        format!("{} does not support MIG", model.key),
                    ));
                };
                if !mig_enabled {
                    return Err(err(
                        &at("mig_devices"),
                        "lists MIG devices but mig_enabled is not true".into(),
                    ));
                }
                for (k, m) in raw_mig.iter().enumerate() {
                    let f = at(&format!("mig_devices[{k}]"));
                    let profile = geometry.profile_by_name(&m.profile).ok_or_else(|| {
                        err(
                            &format!("{f}.profile"),
                            format!(
                                "{} has no MIG profile {:?}; its profiles: {}",
                                model.key,
                                m.profile,
                                geometry
                                    .profiles
                                    .iter()
                                    .map(|p| p.name)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?;
                    mig::check_gpu_instance(&geometry, &mig_devices, profile, m.start)
                        .map_err(|e| err(&f, e.to_string()))?;
                    mig_devices.push((profile, m.start));
                }
            }
            let mut processes: Vec<SpecProcess> = Vec::new();
            let mut total = 0u64;
            for (k, p) in g.processes.unwrap_or_default().into_iter().enumerate() {
                let f = at(&format!("processes[{k}]"));
                if processes.iter().any(|q| q.pid == p.pid) {
                    return Err(err(
                        &f,
                        format!("pid {} is listed twice on this GPU", p.pid),
                    ));
                }
                total = total.saturating_add(p.used_memory_mib);
                if total > model.memory_mib {
                    return Err(err(
                        &f,
                        format!(
                            "the processes use {total} MiB but {} has {} MiB",
                            model.key, model.memory_mib
                        ),
                    ));
                }
                processes.push(SpecProcess {
                    pid: p.pid,
                    used_memory_mib: p.used_memory_mib,
                    name: p.name,
                });
            }
            gpus.push(GpuSpec {
                index: i,
                model,
                pci,
                numa_node,
                uuid,
                serial,
                minor,
                mig_enabled,
                mig_devices,
                processes,
            });
        }

        // Topology: pairs are validated by the core's own Topology, so the fake and the core
        // agree on what a spec means.
        let n = gpus.len();
        let pair = |list: &str, i: usize, g: &[usize]| -> Result<(usize, usize), String> {
            let f = format!("{list}[{i}].gpus");
            if g.len() != 2 {
                return Err(err(&f, format!("must name exactly two GPUs, got {g:?}")));
            }
            let (a, b) = (g[0], g[1]);
            for x in [a, b] {
                if x >= n {
                    return Err(err(
                        &f,
                        format!("GPU {x} does not exist (the spec has {n} GPUs)"),
                    ));
                }
            }
            if a == b {
                return Err(err(&f, format!("names GPU {a} twice")));
            }
            Ok((a, b))
        };
        let mut pcie = Vec::new();
        for (i, p) in raw.pcie.unwrap_or_default().iter().enumerate() {
            let ab = pair("pcie", i, &p.gpus)?;
            let level = PcieLevel::from_name(&p.level)
                .map_err(|e| err(&format!("pcie[{i}].level"), e.to_string()))?;
            pcie.push((ab, level));
        }
        let nvswitches = raw.nvswitches.unwrap_or(0);
        let raw_nvlinks = raw.nvlinks.unwrap_or_default();
        if nvswitches > 0 && !raw_nvlinks.is_empty() {
            return Err(err(
                "nvlinks",
                format!(
                    "direct GPU-to-GPU NVLinks cannot be given with nvswitches: {nvswitches} \
                     (on an NVSwitch node every NVLink goes to a switch)"
                ),
            ));
        }
        let mut nvlinks = Vec::new();
        for (i, l) in raw_nvlinks.iter().enumerate() {
            let ab = pair("nvlinks", i, &l.gpus)?;
            if l.links == 0 {
                return Err(err(
                    &format!("nvlinks[{i}].links"),
                    "must be at least 1".into(),
                ));
            }
            nvlinks.push((ab, l.links));
        }
        let numa: Vec<i32> = gpus.iter().map(|g| g.numa_node as i32).collect();
        let topology = Topology::new(n, &nvlinks, &pcie, Some(numa), nvswitches > 0)
            .map_err(|e| format!("{file}: {e}"))?;

        // NVLink ends.
        let mut links: Vec<Vec<LinkEnd>> = gpus
            .iter()
            .map(|g| vec![LinkEnd::Inactive; g.model.nvlinks as usize])
            .collect();
        if nvswitches > 0 {
            for gpu_links in links.iter_mut() {
                for (l, end) in gpu_links.iter_mut().enumerate() {
                    *end = LinkEnd::Switch(l % nvswitches as usize);
                }
            }
        }
        for ((a, b), count) in topology.nvlink_pairs() {
            for (x, y) in [(a, b), (b, a)] {
                let model = gpus[x].model;
                let used = links[x].iter().filter(|e| **e != LinkEnd::Inactive).count();
                if used + count as usize > links[x].len() {
                    let total: u32 = topology
                        .nvlink_pairs()
                        .iter()
                        .filter(|((p, q), _)| *p == x || *q == x)
                        .map(|(_, c)| *c)
                        .sum();
                    return Err(err(
                        "nvlinks",
                        format!(
                            "GPU {x} ({}) is given {total} NVLinks but the model has {}",
                            model.key, model.nvlinks
                        ),
                    ));
                }
                let mut left = count;
                for end in links[x].iter_mut() {
                    if left == 0 {
                        break;
                    }
                    if *end == LinkEnd::Inactive {
                        *end = LinkEnd::Gpu(y);
                        left -= 1;
                    }
                }
            }
        }

        // NVSwitch PCI addresses: buses no GPU uses, counting down from 0xFE.
        let used_buses: HashSet<u32> = gpus.iter().map(|g| g.pci.bus).collect();
        let mut switches = Vec::new();
        let mut bus = 0xFEu32;
        while switches.len() < nvswitches as usize {
            if bus == 0 {
                return Err(err(
                    "nvswitches",
                    format!("{nvswitches} NVSwitches do not fit on one PCI domain"),
                ));
            }
            if !used_buses.contains(&bus) {
                switches.push(PciAddr {
                    domain: 0,
                    bus,
                    device: 0,
                    function: 0,
                });
            }
            bus -= 1;
        }
        let switch_pci_device_id = match gpus.first().map(|g| g.model.architecture) {
            Some(catalog::Architecture::Volta) => 0x1AC1_10DE,
            Some(catalog::Architecture::Ampere) => 0x1AF1_10DE,
            _ => 0x22A3_10DE,
        };

        let digest = format!("{:016x}", util::fnv1a64(&[text.as_bytes()]));
        Ok(Node {
            path: path.to_path_buf(),
            digest,
            name,
            driver_version,
            cuda_driver_version,
            nvml_version,
            field_scheme,
            numa_nodes,
            gpus,
            topology,
            links,
            switches,
            switch_pci_device_id,
        })
    }

    /// The CPUs of a NUMA node (empty for an unknown id).
    pub fn cpus_of(&self, numa_node: u32) -> &[u32] {
        self.numa_nodes
            .iter()
            .find(|n| n.id == numa_node)
            .map_or(&[], |n| n.cpus.as_slice())
    }

    /// PCIe topology level between two GPUs (NVML's `nvmlGpuTopologyLevel_t` value).
    pub fn pcie_level(&self, a: usize, b: usize) -> u32 {
        if a == b {
            return PcieLevel::Board.nvml_value();
        }
        self.topology.pcie(a, b).nvml_value()
    }

    /// Index of the GPU with this PCI address.
    pub fn gpu_by_pci(&self, addr: &PciAddr) -> Option<usize> {
        self.gpus.iter().position(|g| {
            g.pci.domain == addr.domain && g.pci.bus == addr.bus && g.pci.device == addr.device
        })
    }
}

/// "570.124.06" → (570, 124).
pub fn parse_driver_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse::<u32>().ok()?;
    let minor = parts.next()?.parse::<u32>().ok()?;
    for p in parts {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
    }
    Some((major, minor))
}

/// Default state path for a spec: `${TMPDIR:-/tmp}/gpulet-fakenvml-<hash>.json`, the hash taken
/// over the spec's canonical path and its content.
pub fn default_state_path(spec_path: &Path) -> Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(spec_path).map_err(|e| {
        format!(
            "{}: cannot resolve the node spec path: {e}",
            spec_path.display()
        )
    })?;
    let content = std::fs::read(&canonical)
        .map_err(|e| format!("{}: cannot read the node spec: {e}", canonical.display()))?;
    let h = util::fnv1a64(&[canonical.as_os_str().as_encoded_bytes(), &content]);
    let dir = std::env::var_os("TMPDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    Ok(dir.join(format!("gpulet-fakenvml-{h:016x}.json")))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const H100_2: &str = r#"
version: v1
name: test-node
driver_version: "570.124.06"
numa_nodes:
  - {id: 0, cpus: "0-3"}
  - {id: 1, cpus: "4-7"}
gpus:
  - {model: H100-80GB, pci_bus_id: "00000000:1B:00.0", numa_node: 0}
  - {model: H100-80GB, pci_bus_id: "00000000:43:00.0", numa_node: 1}
"#;

    fn parse(text: &str) -> Result<Node, String> {
        Node::parse(Path::new("spec.yaml"), text)
    }

    fn refused(text: &str, needle: &str) {
        match parse(text) {
            Ok(_) => panic!("spec accepted, expected a refusal mentioning {needle:?}:\n{text}"),
            Err(e) => {
                assert!(
                    e.contains(needle),
                    "message {e:?} does not mention {needle:?}"
                );
                assert!(
                    e.starts_with("spec.yaml: "),
                    "message {e:?} does not name the file"
                );
            }
        }
    }

    fn with_gpus(gpus: &str) -> String {
        format!(
            "version: v1\nname: n\nnuma_nodes:\n  - {{id: 0, cpus: \"0-3\"}}\n  - {{id: 1, cpus: \"4-7\"}}\ngpus:\n{gpus}"
        )
    }

    #[test]
    fn the_shipped_dgx_h100_spec_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/gpulet/specs/dgx-h100.yaml");
        let node = Node::load(&path).unwrap();
        assert_eq!(node.gpus.len(), 8);
        assert_eq!(node.switches.len(), 4);
        assert!(node
            .links
            .iter()
            .all(|l| l.len() == 18 && l.iter().all(|e| matches!(e, LinkEnd::Switch(_)))));
        assert_eq!(node.pcie_level(0, 1), 40);
        assert_eq!(node.pcie_level(0, 7), 50);
        assert_eq!(node.field_scheme, FieldScheme::V12);
        assert_eq!(node.nvml_version, "12.570.124.06");
    }

    #[test]
    fn defaults_are_derived() {
        let n = parse(H100_2).unwrap();
        assert_eq!(n.gpus[0].minor, 0);
        assert_eq!(n.gpus[1].minor, 1);
        assert!(util::is_uuid("GPU", &n.gpus[0].uuid));
        assert_ne!(n.gpus[0].uuid, n.gpus[1].uuid);
        assert_eq!(n.gpus[0].serial.len(), 13);
        assert_eq!(n.cuda_driver_version, 12080);
        // Stable across parses.
        assert_eq!(parse(H100_2).unwrap().gpus[0].uuid, n.gpus[0].uuid);
    }

    #[test]
    fn driver_580_82_uses_nvml_13_numbering() {
        let text = H100_2.replace("570.124.06", "580.82.07");
        let n = parse(&text).unwrap();
        assert_eq!(n.field_scheme, FieldScheme::V13);
        assert_eq!(n.nvml_version, "13.580.82.07");
        assert_eq!(n.cuda_driver_version, 13000);
        let n = parse(&H100_2.replace("570.124.06", "580.65.06")).unwrap();
        assert_eq!(n.field_scheme, FieldScheme::V12);
    }

    #[test]
    fn a_missing_file() {
        let e = Node::load(Path::new("/nonexistent/dir/node.yaml")).unwrap_err();
        assert!(
            e.starts_with("/nonexistent/dir/node.yaml: cannot read the node spec"),
            "{e}"
        );
        let e = default_state_path(Path::new("/nonexistent/dir/node.yaml")).unwrap_err();
        assert!(e.contains("cannot resolve the node spec path"), "{e}");
    }

    #[test]
    fn malformed_yaml_and_missing_fields() {
        refused("version: v1\nname: [unclosed", "malformed node spec YAML");
        refused("version: v2\nname: n\n", "unknown spec version \"v2\"");
        refused("name: n\n", "version: is required");
        refused("version: v1\n", "name: is required");
        refused("version: v1\nname: n\nbogus: 1\n", "unknown field `bogus`");
        refused(
            "version: v1\nname: n\ngpus: []\n",
            "numa_nodes: is required",
        );
        refused(
            "version: v1\nname: n\nnuma_nodes: [{id: 0, cpus: \"0\"}]\n",
            "gpus: is required",
        );
        refused(
            &with_gpus("  - {pci_bus_id: \"00000000:1B:00.0\", numa_node: 0}\n"),
            "gpus[0].model: is required",
        );
    }

    #[test]
    fn unknown_model() {
        refused(
            &with_gpus("  - {model: H100-81GB, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0}\n"),
            "gpus[0].model: unknown GPU model \"H100-81GB\"; known models: H100-80GB",
        );
    }

    #[test]
    fn bad_and_duplicate_pci_bus_ids() {
        refused(
            &with_gpus("  - {model: T4, pci_bus_id: \"1B:00.0\", numa_node: 0}\n"),
            "is not a PCI bus id",
        );
        refused(
            &with_gpus("  - {model: T4, pci_bus_id: \"00000000:1B:20.0\", numa_node: 0}\n"),
            "is not a PCI bus id",
        );
        refused(
            &with_gpus(
                "  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0}\n  - {model: T4, pci_bus_id: \"0000:1b:00.0\", numa_node: 0}\n",
            ),
            "gpus[1].pci_bus_id: 00000000:1B:00.0 is also the PCI bus id of gpus[0]",
        );
    }

    #[test]
    fn numa_node_not_listed() {
        refused(
            &with_gpus("  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 2}\n"),
            "gpus[0].numa_node: NUMA node 2 is not in numa_nodes",
        );
        refused(
            "version: v1\nname: n\nnuma_nodes: [{id: 0, cpus: \"0-3\"}, {id: 0, cpus: \"4\"}]\ngpus: []\n",
            "NUMA node 0 is listed twice",
        );
        refused(
            "version: v1\nname: n\nnuma_nodes: [{id: 0, cpus: \"0-3\"}, {id: 1, cpus: \"3-4\"}]\ngpus: []\n",
            "CPU 3 is in NUMA node 0 and NUMA node 1",
        );
        refused(
            "version: v1\nname: n\nnuma_nodes: [{id: 0, cpus: \"x\"}]\ngpus: []\n",
            "numa_nodes[0].cpus",
        );
    }

    fn two_t4(extra: &str) -> String {
        with_gpus(&format!(
            "  - {{model: V100, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0}}\n  - {{model: V100, pci_bus_id: \"00000000:43:00.0\", numa_node: 0}}\n{extra}"
        ))
    }

    #[test]
    fn pairs_naming_missing_gpus_or_one_gpu_twice() {
        refused(
            &two_t4("nvlinks:\n  - {gpus: [0, 2], links: 1}\n"),
            "nvlinks[0].gpus: GPU 2 does not exist",
        );
        refused(
            &two_t4("pcie:\n  - {gpus: [1, 5], level: board}\n"),
            "pcie[0].gpus: GPU 5 does not exist",
        );
        refused(
            &two_t4("nvlinks:\n  - {gpus: [1, 1], links: 1}\n"),
            "names GPU 1 twice",
        );
        refused(
            &two_t4("pcie:\n  - {gpus: [0], level: board}\n"),
            "must name exactly two GPUs",
        );
        refused(
            &two_t4("pcie:\n  - {gpus: [0, 1], level: near}\n"),
            "unknown PCIe level \"near\"",
        );
        refused(
            &two_t4("nvlinks:\n  - {gpus: [0, 1], links: 0}\n"),
            "must be at least 1",
        );
    }

    #[test]
    fn a_pair_given_twice_with_two_values() {
        refused(
            &two_t4("pcie:\n  - {gpus: [0, 1], level: board}\n  - {gpus: [1, 0], level: single-switch}\n"),
            "given twice",
        );
        refused(
            &two_t4("nvlinks:\n  - {gpus: [0, 1], links: 2}\n  - {gpus: [1, 0], links: 1}\n"),
            "given twice",
        );
        // The same value twice is one pair.
        let n = parse(&two_t4(
            "nvlinks:\n  - {gpus: [0, 1], links: 2}\n  - {gpus: [1, 0], links: 2}\n",
        ))
        .unwrap();
        assert_eq!(
            n.links[0].iter().filter(|e| **e == LinkEnd::Gpu(1)).count(),
            2
        );
    }

    #[test]
    fn more_nvlinks_than_the_model_has() {
        refused(
            &two_t4("nvlinks:\n  - {gpus: [0, 1], links: 7}\n"),
            "GPU 0 (V100-SXM2-16GB) is given 7 NVLinks but the model has 6",
        );
        refused(
            &with_gpus("  - {model: L4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0}\n  - {model: L4, pci_bus_id: \"00000000:43:00.0\", numa_node: 0}\nnvlinks:\n  - {gpus: [0, 1], links: 1}\n"),
            "the model has 0",
        );
        refused(
            &two_t4("nvswitches: 2\nnvlinks:\n  - {gpus: [0, 1], links: 1}\n"),
            "cannot be given with nvswitches",
        );
    }

    #[test]
    fn direct_links_are_assigned_in_order() {
        let n = parse(&with_gpus(
            "  - {model: V100, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0}\n  - {model: V100, pci_bus_id: \"00000000:43:00.0\", numa_node: 0}\n  - {model: V100, pci_bus_id: \"00000000:52:00.0\", numa_node: 1}\nnvlinks:\n  - {gpus: [0, 1], links: 2}\n  - {gpus: [0, 2], links: 1}\npcie:\n  - {gpus: [0, 1], level: single-switch}\n",
        ))
        .unwrap();
        assert_eq!(
            &n.links[0][..4],
            &[
                LinkEnd::Gpu(1),
                LinkEnd::Gpu(1),
                LinkEnd::Gpu(2),
                LinkEnd::Inactive
            ]
        );
        assert_eq!(&n.links[2][..2], &[LinkEnd::Gpu(0), LinkEnd::Inactive]);
        assert_eq!(n.pcie_level(1, 0), 10);
        assert_eq!(n.pcie_level(0, 2), 50);
        assert_eq!(n.pcie_level(1, 1), 0);
    }

    fn mig_gpu(model: &str, enabled: &str, devices: &str) -> String {
        with_gpus(&format!(
            "  - {{model: {model}, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0{enabled}, mig_devices: [{devices}]}}\n"
        ))
    }

    #[test]
    fn mig_refusals() {
        refused(
            &mig_gpu("T4", ", mig_enabled: true", ""),
            "gpus[0].mig_enabled: T4-16GB does not support MIG",
        );
        refused(
            &mig_gpu("T4", "", "{profile: 1g.5gb, start: 0}"),
            "does not support MIG",
        );
        refused(
            &mig_gpu("H100-80GB", "", "{profile: 1g.10gb, start: 0}"),
            "mig_enabled is not true",
        );
        refused(
            &mig_gpu(
                "H100-80GB",
                ", mig_enabled: true",
                "{profile: 1g.5gb, start: 0}",
            ),
            "H100-80GB has no MIG profile \"1g.5gb\"; its profiles: 1g.10gb",
        );
        refused(
            &mig_gpu(
                "H100-80GB",
                ", mig_enabled: true",
                "{profile: 3g.40gb, start: 2}",
            ),
            "start 2 is not a placement of 3g.40gb (placements: 0, 4)",
        );
        refused(
            &mig_gpu("H100-80GB", ", mig_enabled: true", "{profile: 3g.40gb, start: 4}, {profile: 2g.20gb, start: 4}"),
            "gpus[0].mig_devices[1]: 2g.20gb at memory slices 4-5 overlaps 3g.40gb at memory slices 4-7",
        );
        refused(
            &mig_gpu(
                "H100-80GB",
                ", mig_enabled: true",
                "{profile: 4g.40gb, start: 0}, {profile: 3g.40gb, start: 4}, {profile: 1g.10gb, start: 6}",
            ),
            "overlaps",
        );
        refused(
            &mig_gpu(
                "A30",
                ", mig_enabled: true",
                "{profile: 2g.12gb, start: 0}, {profile: 1g.6gb, start: 2}, {profile: 1g.6gb, start: 3}, {profile: 1g.6gb+me, start: 1}",
            ),
            "overlaps",
        );
        refused(
            &mig_gpu(
                "H100-80GB",
                ", mig_enabled: true",
                "{profile: 1g.10gb+me, start: 0}, {profile: 1g.10gb+me, start: 1}",
            ),
            "at most 1 instance of 1g.10gb+me",
        );
    }

    #[test]
    fn full_layouts_are_accepted() {
        let ok = parse(&mig_gpu(
            "H100-80GB",
            ", mig_enabled: true",
            "{profile: 4g.40gb, start: 0}, {profile: 3g.40gb, start: 4}",
        ))
        .unwrap();
        assert_eq!(ok.gpus[0].mig_devices.len(), 2);
        parse(&mig_gpu(
            "H100-80GB",
            ", mig_enabled: true",
            "{profile: 2g.20gb, start: 0}, {profile: 2g.20gb, start: 2}, {profile: 2g.20gb, start: 4}, {profile: 1g.20gb, start: 6}",
        ))
        .unwrap();
        // Seven 1g instances fill every compute slice; an eighth instance has nowhere to go.
        refused(
            &mig_gpu(
                "H100-80GB",
                ", mig_enabled: true",
                "{profile: 1g.10gb, start: 0}, {profile: 1g.10gb, start: 1}, {profile: 1g.10gb, start: 2}, {profile: 1g.10gb, start: 3}, {profile: 1g.10gb, start: 4}, {profile: 1g.10gb, start: 5}, {profile: 1g.10gb, start: 6}, {profile: 1g.10gb+me, start: 0}",
            ),
            "overlaps",
        );
    }

    #[test]
    fn identities_are_checked() {
        refused(
            &with_gpus(
                "  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0, uuid: GPU-1}\n",
            ),
            "is not a GPU UUID",
        );
        refused(
            &with_gpus("  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0, minor: 3}\n  - {model: T4, pci_bus_id: \"00000000:1C:00.0\", numa_node: 0, minor: 3}\n"),
            "minor number 3 is also used by gpus[0]",
        );
        refused(
            &with_gpus("  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0, uuid: GPU-12345678-1234-1234-1234-123456789abc}\n  - {model: T4, pci_bus_id: \"00000000:1C:00.0\", numa_node: 0, uuid: GPU-12345678-1234-1234-1234-123456789ABC}\n"),
            "is also the UUID of gpus[0]",
        );
        refused(&with_gpus("  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0, serial: \"a b\"}\n"), "serial");
    }

    #[test]
    fn processes_are_checked() {
        refused(
            &with_gpus("  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0, processes: [{pid: 1, used_memory_mib: 1}, {pid: 1, used_memory_mib: 2}]}\n"),
            "pid 1 is listed twice",
        );
        refused(
            &with_gpus("  - {model: T4, pci_bus_id: \"00000000:1B:00.0\", numa_node: 0, processes: [{pid: 1, used_memory_mib: 99999}]}\n"),
            "the processes use 99999 MiB but T4-16GB has 15360 MiB",
        );
    }

    #[test]
    fn versions_are_checked() {
        refused(
            &H100_2.replace("570.124.06", "r570"),
            "driver_version: \"r570\" is not a driver version",
        );
        refused(
            &format!("{H100_2}cuda_driver_version: 12\n"),
            "cuda_driver_version: 12 is not a CUDA version",
        );
    }

    #[test]
    fn pci_addresses() {
        let a = PciAddr::parse("0000:1b:00.0").unwrap();
        assert_eq!(a.bus_id(), "00000000:1B:00.0");
        assert_eq!(a.bus_id_legacy(), "0000:1B:00.0");
        assert_eq!(PciAddr::parse("00000000:1B:00.0"), Some(a));
        assert!(PciAddr::parse("000:1B:00.0").is_none());
        assert!(PciAddr::parse("00000000:1B:00.8").is_none());
    }

    #[test]
    fn default_state_path_depends_on_path_and_content() {
        let dir = std::env::temp_dir().join(format!("fakenvml-spec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.yaml");
        let b = dir.join("b.yaml");
        std::fs::write(&a, H100_2).unwrap();
        std::fs::write(&b, H100_2).unwrap();
        let pa = default_state_path(&a).unwrap();
        assert_ne!(pa, default_state_path(&b).unwrap());
        assert_eq!(pa, default_state_path(&a).unwrap());
        std::fs::write(&a, format!("{H100_2}\n# changed\n")).unwrap();
        assert_ne!(pa, default_state_path(&a).unwrap());
        assert!(pa
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("gpulet-fakenvml-"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
