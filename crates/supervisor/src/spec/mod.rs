//! The supervision fields of a service spec and the stack file: what
//! `isola up` reads, checks and keeps (no I/O but reading the file).
//! [`policy`] gathers a service's fields, reading [`health`] (probes,
//! notify, dependencies) and [`sockets`] (held sockets, replicas) beside
//! it, and [`logging`]; [`stack`] reads the whole file.

use isola_runtime::SpecError;
use serde_json::Value;

pub mod autoscale;
pub mod health;
pub mod images;
pub mod logging;
pub mod networks;
pub mod policy;
pub mod rules;
pub mod sockets;
pub mod stack;

/// Read `v` as a `T`; errors name the JSON path under `path`.
pub(crate) fn field<T: serde::de::DeserializeOwned>(v: &Value, path: &str) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let full = if inner == "." {
            path.to_string()
        } else if inner.starts_with('[') {
            format!("{path}{inner}")
        } else {
            format!("{path}.{inner}")
        };
        let msg = e.inner().to_string();
        let msg = match msg.split_once(", expected") {
            Some((head, _)) if head.starts_with("unknown variant") => format!(
                "{}: unknown value",
                head.trim_start_matches("unknown variant ")
            ),
            _ => msg,
        };
        SpecError::new(full, msg)
    })
}
