//! The versioned envelope of ledger snapshots.
//!
//! A snapshot is JSON: `{"schema": "gpulet.ledger", "version": N, "body": {...}}`. The DRA
//! checkpoint embeds it, so the schema is versioned from the first release: a reader accepts
//! every version up to [`SCHEMA_VERSION`] and refuses newer ones with a message, and the body
//! of each version is decoded by the ledger that owns it.

use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};

pub const SCHEMA_NAME: &str = "gpulet.ledger";
/// The version this build writes. 2: sequence numbers and pending owners, replicas of MIG
/// slices, MIG devices without a placement (the ledger reads version 1 too).
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub schema: String,
    pub version: u32,
    pub body: serde_json::Value,
}

/// Wrap a body in the current envelope.
pub fn encode(body: serde_json::Value) -> Vec<u8> {
    let env = Envelope {
        schema: SCHEMA_NAME.to_string(),
        version: SCHEMA_VERSION,
        body,
    };
    serde_json::to_vec(&env).expect("a JSON value always serialises")
}

/// Open an envelope, checking the schema name and that the version is one this build reads.
pub fn decode(bytes: &[u8]) -> Result<Envelope> {
    let env: Envelope = serde_json::from_slice(bytes)
        .map_err(|e| CoreError::Snapshot(format!("not a gpulet ledger snapshot: {e}")))?;
    if env.schema != SCHEMA_NAME {
        return Err(CoreError::Snapshot(format!(
            "schema is {:?}, expected {SCHEMA_NAME:?}",
            env.schema
        )));
    }
    if env.version == 0 || env.version > SCHEMA_VERSION {
        return Err(CoreError::Snapshot(format!(
            "schema version {} is not readable by this build (reads 1..={SCHEMA_VERSION}); \
             upgrade gpulet or restore from an older checkpoint",
            env.version
        )));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let body = serde_json::json!({"gpus": {"GPU-1": {"owner": "ns/pod/c"}}});
        let env = decode(&encode(body.clone())).unwrap();
        assert_eq!(env.body, body);
        assert_eq!(env.version, SCHEMA_VERSION);
    }

    #[test]
    fn refuses_newer_and_foreign() {
        let newer = br#"{"schema":"gpulet.ledger","version":99,"body":{}}"#;
        assert!(decode(newer)
            .unwrap_err()
            .to_string()
            .contains("version 99"));
        let foreign = br#"{"schema":"other","version":1,"body":{}}"#;
        let zero = br#"{"schema":"gpulet.ledger","version":0,"body":{}}"#;
        assert!(decode(zero).is_err());
        let old = br#"{"schema":"gpulet.ledger","version":1,"body":{}}"#;
        assert_eq!(decode(old).unwrap().version, 1);
        assert!(decode(foreign).is_err());
        assert!(decode(b"{half").is_err());
    }
}
