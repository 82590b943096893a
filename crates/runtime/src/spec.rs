//! Reading a service spec: an OCI runtime-spec `config.json` body (parsed by
//! oci-spec, same names and units) where `ociVersion` and `root` are
//! optional (and `process.user`, `process.cwd` default to root and `/`),
//! plus the supervision fields the supervisor reads and `limits`, the short
//! form of `linux.resources` ([`shorthand`]). Any other
//! field is a typo and is rejected with its JSON path. [`starter`] is the
//! spec `isola spec` writes.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::SpecError;

pub mod shorthand;
pub mod starter;

/// Top-level fields that belong to the supervisor (`isola up`); `isola run`
/// accepts and ignores them.
pub(crate) const SUPERVISION_FIELDS: &[&str] = &[
    "restart",
    "resourceRules",
    "oom",
    "stop",
    "dependsOn",
    "probes",
    "notify",
    "watchdogMs",
    "sockets",
    "fdStoreMax",
    "replicas",
    "autoscale",
    "stderr",
    "logging",
    "networks",
];

/// The JSON Schema an editor validates the file with; isola ignores it.
pub(crate) const SCHEMA_FIELD: &str = "$schema";

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub oci: Spec,
    /// The supervision fields, as written (validated by the supervisor).
    pub supervision: Map<String, Value>,
    /// Relative paths (`root.path`, bind sources) are resolved against this:
    /// the spec file's directory, as an OCI bundle's config.json would be.
    pub base_dir: PathBuf,
}

/// Parse spec text. Errors name the line and column for malformed JSON and
/// the JSON path for everything else.
pub fn parse_str(text: &str, base_dir: &Path) -> Result<ServiceSpec, SpecError> {
    if let Some(spec) = parse_direct(text, base_dir) {
        return Ok(spec);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        SpecError::new(
            "",
            format!(
                "malformed JSON at line {} column {}: {}",
                e.line(),
                e.column(),
                strip_position(&e.to_string())
            ),
        )
    })?;
    parse_value(value, base_dir, "")
}

/// The common case in one pass over the text, with no JSON tree in
/// between (`isola run` parses on every start). `None` sends the spec the
/// general way: a default to fill in (`process.user`, `process.cwd`),
/// supervision fields to set aside, or an error to describe.
fn parse_direct(text: &str, base_dir: &Path) -> Option<ServiceSpec> {
    let mut clean = true;
    let mut note_unknown = |_: serde_ignored::Path| clean = false;
    let mut de = serde_json::Deserializer::from_str(text);
    let oci: Spec = serde_ignored::deserialize(&mut de, &mut note_unknown).ok()?;
    de.end().ok()?;
    clean.then(|| ServiceSpec {
        oci,
        supervision: Map::new(),
        base_dir: base_dir.to_owned(),
    })
}

/// Parse an already-read JSON value; `prefix` is prepended to field paths in
/// errors (e.g. `services.web.`).
pub fn parse_value(value: Value, base_dir: &Path, prefix: &str) -> Result<ServiceSpec, SpecError> {
    let Value::Object(mut obj) = value else {
        return Err(SpecError::new(
            prefix.trim_end_matches('.'),
            "a service spec must be a JSON object",
        ));
    };
    if let Some(l) = obj.remove("limits") {
        // The short form, onto linux.resources (a wrong `linux` is left
        // for the typed parse below to name).
        let limits = shorthand::Limits::from_json(&l, &format!("{prefix}limits"))?;
        let linux = obj
            .entry("linux")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(linux) = linux {
            let res = linux
                .entry("resources")
                .or_insert_with(|| Value::Object(Map::new()));
            limits.apply(res, shorthand::Merge::Exclusive(prefix))?;
        }
    }
    // Editors pick a file's JSON Schema by its `$schema` (`isola schema`).
    obj.remove(SCHEMA_FIELD);
    let mut supervision = Map::new();
    for f in SUPERVISION_FIELDS {
        if let Some(v) = obj.remove(*f) {
            supervision.insert((*f).to_string(), v);
        }
    }
    // Two more relaxations for hand-written specs: a process runs as root in
    // `/` unless it says otherwise.
    if let Some(Value::Object(p)) = obj.get_mut("process") {
        p.entry("user")
            .or_insert_with(|| serde_json::json!({"uid": 0, "gid": 0}));
        p.entry("cwd").or_insert_with(|| Value::from("/"));
    }
    let original = Value::Object(obj);
    // oci-spec ignores unknown fields; serde_ignored reports each key the
    // deserializer skipped, so a typo is caught in the same single pass.
    let mut unknown: Option<String> = None;
    let mut note_unknown = |path: serde_ignored::Path| {
        if unknown.is_none() {
            unknown = Some(json_path(&path));
        }
    };
    let tracked = serde_ignored::Deserializer::new(&original, &mut note_unknown);
    // Only a spec that fails pays for tracking where (a String per key:
    // a third of a stack's parse at 10,000 services).
    let Ok(oci) = Spec::deserialize(tracked) else {
        return Err(describe_failure(&original, prefix));
    };
    if let Some(path) = unknown {
        return Err(SpecError::new(format!("{prefix}{path}"), "unknown field"));
    }
    Ok(ServiceSpec {
        oci,
        supervision,
        base_dir: base_dir.to_owned(),
    })
}

/// Why `spec` does not deserialize, and where (the field's path).
fn describe_failure(spec: &Value, prefix: &str) -> SpecError {
    let parsed: Result<Spec, _> = serde_path_to_error::deserialize(spec);
    let Err(e) = parsed else {
        return SpecError::new(prefix.trim_end_matches('.'), "not a valid spec");
    };
    let path = e.path().to_string();
    let field = if path == "." {
        prefix.trim_end_matches('.').to_string()
    } else {
        format!("{prefix}{path}")
    };
    SpecError::new(field, short_serde_message(&e.inner().to_string()))
}

/// `process.capabilities.bounding[0]`, the way the other errors name fields.
fn json_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", json_path(parent)),
        Path::Map { parent, key } => {
            let p = json_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => json_path(parent),
    }
}

/// serde_json's message without its " at line L column C" suffix: the
/// callers say where (a field path, or the line and column themselves).
pub fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The directory relative paths of a spec or stack file at `path` are
/// resolved against: its own, made absolute.
pub fn base_dir(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// serde's "unknown variant `X`, expected one of `A`, `B`, … (60 names)" is
/// not one readable line; keep the part that names the value.
fn short_serde_message(msg: &str) -> String {
    let msg = strip_position(msg);
    if let Some(rest) = msg.strip_prefix("no variant for ") {
        let val = rest.split(" (").next().unwrap_or(rest);
        return format!("unknown value `{val}`");
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        if let Some((val, _)) = rest.split_once(", expected") {
            return format!("unknown value {val}");
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<ServiceSpec, SpecError> {
        parse_str(t, Path::new("/"))
    }

    #[test]
    fn direct_and_general_parse_agree() {
        let text = starter::starter_spec().to_string();
        let direct = parse_direct(&text, Path::new("/")).expect("starter spec parses directly");
        let general =
            parse_value(serde_json::from_str(&text).unwrap(), Path::new("/"), "").unwrap();
        // Capability sets are hash sets: compare them in sorted order.
        let canonical = |spec: &Spec| {
            let mut v = serde_json::to_value(spec).unwrap();
            if let Some(Value::Object(caps)) = v.pointer_mut("/process/capabilities") {
                for set in caps.values_mut() {
                    if let Value::Array(a) = set {
                        a.sort_by_key(|c| c.to_string());
                    }
                }
            }
            v
        };
        assert_eq!(canonical(&direct.oci), canonical(&general.oci));
        // Anything unusual goes the general way.
        for t in [
            r#"{"process":{"args":["x"]}}"#,
            r#"{"process":{"args":["x"],"cwd":"/","user":{"uid":0,"gid":0}},"restart":{}}"#,
            r#"{"process":{"args":["x"],"cwd":"/","user":{"uid":0,"gid":0},"typo":1}}"#,
            r#"{"process":{"args":["x"],"cwd":"/","user":{"uid":0,"gid":0}}} x"#,
        ] {
            assert!(parse_direct(t, Path::new("/")).is_none(), "{t}");
        }
    }

    #[test]
    fn minimal_spec_without_version_or_root() {
        let s = parse(r#"{"process":{"args":["true"],"cwd":"/"}}"#).unwrap();
        assert!(s.oci.root().is_none());
        assert_eq!(
            s.oci.process().as_ref().unwrap().args().as_ref().unwrap(),
            &vec!["true".to_string()]
        );
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let e = parse("{\n  \"process\": {,\n}").unwrap_err();
        assert!(
            e.to_string().starts_with("malformed JSON at line 2 column"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let e = parse(r#"{"process":{"args":["true"],"cwd":"/","argz":["x"]}}"#).unwrap_err();
        assert_eq!(e.to_string(), "process.argz: unknown field");
        let e = parse(r#"{"linux":{"resources":{"memory":{"limt":1}}}}"#).unwrap_err();
        assert_eq!(e.field, "linux.resources.memory.limt");
        let e = parse(
            r#"{"mounts":[{"destination":"/tmp","type":"tmpfs"},{"destination":"/x","typo":1}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "mounts[1].typo");
        let e = parse(r#"{"restrat":{}}"#).unwrap_err();
        assert_eq!(e.field, "restrat");
        // A typo is a typo even when its value is null.
        let e = parse(r#"{"process":{"args":["true"],"cwd":"/","argz":null}}"#).unwrap_err();
        assert_eq!(e.field, "process.argz");
    }

    #[test]
    fn supervision_fields_are_set_aside() {
        let s = parse(
            r#"{"process":{"args":["true"],"cwd":"/"},"restart":{"policy":"always"},"oom":"kill"}"#,
        )
        .unwrap();
        assert_eq!(s.supervision.len(), 2);
    }

    #[test]
    fn bad_enum_values_name_the_field_and_value() {
        let e = parse(
            r#"{"process":{"args":["x"],"cwd":"/","capabilities":{"bounding":["CAP_NOPE"]}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "process.capabilities.bounding[0]");
        assert_eq!(e.message, "unknown value `CAP_NOPE`");
        let e = parse(r#"{"linux":{"namespaces":[{"type":"pidd"}]}}"#).unwrap_err();
        assert_eq!(e.field, "linux.namespaces[0].type");
        let e = parse(r#"{"process":{"args":["x"],"cwd":"/","rlimits":[{"type":"RLIMIT_NOPE","hard":1,"soft":1}]}}"#).unwrap_err();
        assert_eq!(e.field, "process.rlimits[0].type");
    }

    #[test]
    fn prefix_is_prepended() {
        let e = parse_value(
            serde_json::json!({"proces": {}}),
            Path::new("/"),
            "services.web.",
        )
        .unwrap_err();
        assert_eq!(e.field, "services.web.proces");
    }
}
