//! What the ledger counts (devices) and who holds them (owners).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// The separator of a shared replica id, `<UUID>::<n>`, as NVIDIA's device plugin writes it
/// and PodResources consumers parse it.
pub const REPLICA_SEPARATOR: &str = "::";

/// One allocatable device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Device {
    /// A whole GPU, by UUID.
    Gpu { uuid: String },
    /// Shared replica `index` of a GPU (`<UUID>::<index>`).
    Replica { uuid: String, index: u32 },
    /// A MIG slice: parent GPU, GPU-instance profile id, placement start (memory slices). A
    /// dynamic MIG instance has no UUID before it exists, so this is its identity.
    Mig {
        parent: String,
        profile_id: u32,
        start: u32,
    },
    /// Shared replica `index` of a MIG slice (a time-sliced MIG device, `<MIG UUID>::<index>`
    /// on the device-plugin wire). While any replica is held, the slice is held for all of
    /// them.
    MigReplica {
        parent: String,
        profile_id: u32,
        start: u32,
        index: u32,
    },
    /// A MIG device the ledger cannot place, named by its device-plugin ID (a MIG UUID or a
    /// replica of one): NVML gave no placement for it, its GPU's model is unknown, or it is a
    /// compute instance smaller than its GPU instance. It splits its GPU into MIG devices like
    /// a slice, but its memory slices are unknown, so it is checked against no other slice.
    MigUnplaced { parent: String, id: String },
}

impl Device {
    pub fn gpu(uuid: impl Into<String>) -> Self {
        Device::Gpu { uuid: uuid.into() }
    }

    pub fn replica(uuid: impl Into<String>, index: u32) -> Self {
        Device::Replica {
            uuid: uuid.into(),
            index,
        }
    }

    pub fn mig(parent: impl Into<String>, profile_id: u32, start: u32) -> Self {
        Device::Mig {
            parent: parent.into(),
            profile_id,
            start,
        }
    }

    /// Replica `index` of a MIG slice.
    pub fn mig_replica(parent: impl Into<String>, profile_id: u32, start: u32, index: u32) -> Self {
        Device::MigReplica {
            parent: parent.into(),
            profile_id,
            start,
            index,
        }
    }

    /// A MIG device without a placement, by its device-plugin ID.
    pub fn mig_unplaced(parent: impl Into<String>, id: impl Into<String>) -> Self {
        Device::MigUnplaced {
            parent: parent.into(),
            id: id.into(),
        }
    }

    /// Parse a device-plugin id: `<UUID>` is a whole GPU, `<UUID>::<n>` a replica.
    pub fn parse(id: &str) -> Result<Self> {
        match id.split_once(REPLICA_SEPARATOR) {
            None if id.is_empty() => Err(CoreError::InvalidArgument(
                "a device id must not be empty".to_string(),
            )),
            None => Ok(Device::gpu(id)),
            Some((uuid, n)) => {
                let index = n.parse::<u32>().map_err(|_| {
                    CoreError::InvalidArgument(format!(
                        "replica id {id:?} must be <UUID>::<n> with n a replica number"
                    ))
                })?;
                if uuid.is_empty() {
                    return Err(CoreError::InvalidArgument(format!(
                        "replica id {id:?} has no GPU UUID before {REPLICA_SEPARATOR:?}"
                    )));
                }
                Ok(Device::replica(uuid, index))
            }
        }
    }

    /// The UUID of the physical GPU the device is on.
    pub fn parent(&self) -> &str {
        match self {
            Device::Gpu { uuid } | Device::Replica { uuid, .. } => uuid,
            Device::Mig { parent, .. }
            | Device::MigReplica { parent, .. }
            | Device::MigUnplaced { parent, .. } => parent,
        }
    }

    /// The MIG slice a MIG replica belongs to (`None` for other devices).
    pub fn slice(&self) -> Option<Device> {
        match self {
            Device::MigReplica {
                parent,
                profile_id,
                start,
                ..
            } => Some(Device::mig(parent.clone(), *profile_id, *start)),
            _ => None,
        }
    }

    /// A part of a GPU split into MIG devices (a slice, a replica of one, or an unplaced MIG
    /// device).
    pub fn is_mig(&self) -> bool {
        matches!(
            self,
            Device::Mig { .. } | Device::MigReplica { .. } | Device::MigUnplaced { .. }
        )
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Gpu { uuid } => write!(f, "{uuid}"),
            Device::Replica { uuid, index } => write!(f, "{uuid}{REPLICA_SEPARATOR}{index}"),
            Device::Mig {
                parent,
                profile_id,
                start,
            } => {
                write!(
                    f,
                    "MIG slice (profile {profile_id}, start {start}) of {parent}"
                )
            }
            Device::MigReplica {
                parent,
                profile_id,
                start,
                index,
            } => write!(
                f,
                "replica {index} of MIG slice (profile {profile_id}, start {start}) of {parent}"
            ),
            Device::MigUnplaced { parent, id } => write!(f, "MIG device {id} of {parent}"),
        }
    }
}

/// The path that holds a device: the kubelet device plugin or the DRA driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Path {
    #[serde(rename = "device-plugin")]
    DevicePlugin,
    #[serde(rename = "dra")]
    Dra,
}

impl Path {
    pub const ALL: [Path; 2] = [Path::DevicePlugin, Path::Dra];

    pub fn name(self) -> &'static str {
        match self {
            Path::DevicePlugin => "device-plugin",
            Path::Dra => "dra",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        Path::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                CoreError::InvalidArgument(format!(
                    "unknown path {name:?}; expected \"device-plugin\" or \"dra\""
                ))
            })
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who an owner is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKind {
    /// A container of a pod (the device plugin's unit); the pod UID when known.
    Container {
        namespace: String,
        pod: String,
        container: String,
        pod_uid: Option<String>,
    },
    /// A DRA ResourceClaim, by UID.
    Claim { uid: String },
}

/// A holder of devices: who, and through which path. Two owners are the same when every field
/// is equal (a pod recreated under the same name with another UID is another owner).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub path: Path,
    pub kind: OwnerKind,
}

impl Owner {
    pub fn container(
        path: Path,
        namespace: impl Into<String>,
        pod: impl Into<String>,
        container: impl Into<String>,
        pod_uid: Option<String>,
    ) -> Self {
        Owner {
            path,
            kind: OwnerKind::Container {
                namespace: namespace.into(),
                pod: pod.into(),
                container: container.into(),
                pod_uid,
            },
        }
    }

    pub fn claim(path: Path, uid: impl Into<String>) -> Self {
        Owner {
            path,
            kind: OwnerKind::Claim { uid: uid.into() },
        }
    }

    /// Refuse empty names.
    pub fn validate(&self) -> Result<()> {
        let empty = |what: &str| {
            Err(CoreError::InvalidArgument(format!(
                "owner {self} has an empty {what}; give a non-empty {what}"
            )))
        };
        match &self.kind {
            OwnerKind::Container {
                namespace,
                pod,
                container,
                pod_uid,
            } => {
                if namespace.is_empty() {
                    return empty("namespace");
                }
                if pod.is_empty() {
                    return empty("pod name");
                }
                if container.is_empty() {
                    return empty("container name");
                }
                if pod_uid.as_deref() == Some("") {
                    return empty("pod UID");
                }
            }
            OwnerKind::Claim { uid } => {
                if uid.is_empty() {
                    return empty("claim UID");
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            OwnerKind::Container {
                namespace,
                pod,
                container,
                pod_uid,
            } => {
                write!(f, "container {namespace}/{pod}/{container}")?;
                if let Some(uid) = pod_uid {
                    write!(f, " (pod UID {uid})")?;
                }
            }
            OwnerKind::Claim { uid } => write!(f, "claim {uid}")?,
        }
        write!(f, " via {}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!(Device::parse("GPU-1").unwrap(), Device::gpu("GPU-1"));
        assert_eq!(
            Device::parse("GPU-1::3").unwrap(),
            Device::replica("GPU-1", 3)
        );
        assert_eq!(Device::replica("GPU-1", 3).to_string(), "GPU-1::3");
        assert!(Device::parse("GPU-1::x").is_err());
        assert!(Device::parse("::3").is_err());
        assert!(Device::parse("").is_err());
        assert_eq!(Device::mig("GPU-1", 9, 4).parent(), "GPU-1");
        assert_eq!(Device::mig_replica("GPU-1", 9, 4, 1).parent(), "GPU-1");
        assert_eq!(
            Device::mig_replica("GPU-1", 9, 4, 1).to_string(),
            "replica 1 of MIG slice (profile 9, start 4) of GPU-1"
        );
        assert_eq!(
            Device::mig_unplaced("GPU-1", "MIG-a").to_string(),
            "MIG device MIG-a of GPU-1"
        );
        assert!(Device::mig_unplaced("GPU-1", "MIG-a").is_mig());
        assert!(!Device::replica("GPU-1", 0).is_mig());
        let o = Owner::container(Path::DevicePlugin, "ns", "p", "c", Some("u".into()));
        assert_eq!(
            o.to_string(),
            "container ns/p/c (pod UID u) via device-plugin"
        );
        assert_eq!(Owner::claim(Path::Dra, "x").to_string(), "claim x via dra");
        assert!(Owner::claim(Path::Dra, "").validate().is_err());
        assert_eq!(Path::from_name("dra").unwrap(), Path::Dra);
        assert!(Path::from_name("kubelet").is_err());
    }

    #[test]
    fn serde_forms() {
        let d = serde_json::to_value(Device::mig("GPU-1", 9, 4)).unwrap();
        assert_eq!(
            d,
            serde_json::json!({"kind": "mig", "parent": "GPU-1", "profile_id": 9, "start": 4})
        );
        let back: Device = serde_json::from_value(d).unwrap();
        assert_eq!(back, Device::mig("GPU-1", 9, 4));
        let r = serde_json::to_value(Device::mig_replica("GPU-1", 9, 4, 2)).unwrap();
        assert_eq!(
            r,
            serde_json::json!({"kind": "mig-replica", "parent": "GPU-1", "profile_id": 9,
                               "start": 4, "index": 2})
        );
        let u = serde_json::to_value(Device::mig_unplaced("GPU-1", "MIG-a::0")).unwrap();
        assert_eq!(
            u,
            serde_json::json!({"kind": "mig-unplaced", "parent": "GPU-1", "id": "MIG-a::0"})
        );
        assert_eq!(
            serde_json::from_value::<Device>(r).unwrap().slice(),
            Some(Device::mig("GPU-1", 9, 4))
        );
        let bad = serde_json::json!({"kind": "gpu", "uuid": "GPU-1", "extra": 1});
        assert!(serde_json::from_value::<Device>(bad).is_err());
        assert_eq!(
            serde_json::to_value(Path::DevicePlugin).unwrap(),
            "device-plugin"
        );
    }
}
