//! `isola schema service|stack`: JSON Schemas of a service spec and of a
//! stack file, for editors and linters. The service's is hand-kept beside
//! the parser (`specs/schema/service.schema.json`, compiled in); the
//! stack's is built from it. The tests (`schema/tests.rs`) hold both to
//! the parser: every example in `specs/` validates, and what the schema
//! refuses, `isola check` refuses too.

use serde_json::{json, Value};

/// The service schema as shipped.
const SERVICE: &str = include_str!("../../../specs/schema/service.schema.json");

/// Which file a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// One service: an OCI config.json body plus supervision fields.
    Service,
    /// A stack file: `{"services": {"NAME": SERVICE, …}}`.
    Stack,
}

/// The schema of `kind`.
pub(crate) fn schema(kind: Kind) -> Value {
    // Compiled in and checked by the tests: it parses.
    let service: Value = serde_json::from_str(SERVICE).unwrap_or(Value::Null);
    // In a stack file, insecure registries are named once, at its top.
    let mut defs = service["$defs"].clone();
    if let Some(p) = defs["service"]["properties"].as_object_mut() {
        p.remove("insecureRegistries");
    }
    match kind {
        Kind::Service => service,
        Kind::Stack => json!({
            "$schema": service["$schema"],
            "$id": "https://isola.dev/schema/stack.json",
            "title": "isola stack file",
            "type": "object",
            "additionalProperties": false,
            "required": ["services"],
            "properties": {
                "$schema": {
                    "description": "the schema an editor checks this file with; ignored by isola",
                    "type": "string"
                },
                "services": {
                    "description": "services by name, started in dependency order",
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": {"$ref": "#/$defs/service"}
                },
                "logging": {"$ref": "#/$defs/logging"},
                "insecureRegistries": {
                    "description": "registries (HOST:PORT) reached over plain HTTP when isola up pulls images",
                    "type": "array",
                    "items": {"type": "string"}
                },
                "networks": {
                    "description": "the stack's private networks, by name",
                    "type": "object",
                    "additionalProperties": {"$ref": "#/$defs/network"}
                }
            },
            "$defs": defs,
        }),
    }
}

/// `isola schema KIND`: the schema on stdout, as the copies in `specs/`.
pub(crate) fn print(kind: Kind) -> u8 {
    println!("{}", text(kind));
    isola_runtime::exit::OK
}

/// The schema as written to `specs/schema/` (two-space indent).
pub(crate) fn text(kind: Kind) -> String {
    serde_json::to_string_pretty(&schema(kind)).unwrap_or_default()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod validate;
