//! The JSON Schema keywords our schemas use, checked by hand (tests only):
//! `type`, `enum`, `properties`, `additionalProperties`, `required`,
//! `items`, `minItems`, `minProperties`, `minimum`, `maximum`,
//! `exclusiveMinimum`, `anyOf`, `oneOf` and local `$ref`s. A keyword the
//! schema uses that is not here fails the check, so the schema cannot
//! quietly say more than is tested.

use serde_json::Value;

const KNOWN: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "enum",
    "properties",
    "additionalProperties",
    "required",
    "items",
    "minItems",
    "minProperties",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "anyOf",
    "oneOf",
];

/// The first way `v` breaks `schema` (`root` holds the `$defs`), as
/// `path: reason`; `Ok` when it does not.
pub(super) fn check(root: &Value, schema: &Value, v: &Value, path: &str) -> Result<(), String> {
    let Some(s) = schema.as_object() else {
        return Err(format!("{path}: schema is not an object"));
    };
    if let Some(k) = s.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!("{path}: schema keyword {k} is not checked"));
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        let target = &root["$defs"][name];
        if target.is_null() {
            return Err(format!("{path}: no $defs/{name}"));
        }
        check(root, target, v, path)?;
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            _ => return Err(format!("{path}: unknown type {t}")),
        };
        if !ok {
            return Err(format!("{path}: {v} is not of type {t}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{path}: {v} is not one of {e:?}"));
        }
    }
    bounds(s, v, path)?;
    if let Some(o) = v.as_object() {
        object(root, s, o, path)?;
    }
    if let (Some(items), Some(a)) = (s.get("items"), v.as_array()) {
        if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
            if (a.len() as u64) < min {
                return Err(format!("{path}: fewer than {min} items"));
            }
        }
        for (k, x) in a.iter().enumerate() {
            check(root, items, x, &format!("{path}[{k}]"))?;
        }
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(|x| check(root, x, v, path).is_ok()) {
            return Err(format!("{path}: {v} matches none of anyOf"));
        }
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let n = one
            .iter()
            .filter(|x| check(root, x, v, path).is_ok())
            .count();
        if n != 1 {
            return Err(format!("{path}: {v} matches {n} of oneOf"));
        }
    }
    Ok(())
}

fn bounds(s: &serde_json::Map<String, Value>, v: &Value, path: &str) -> Result<(), String> {
    let Some(x) = v.as_f64() else { return Ok(()) };
    let limit = |k: &str| s.get(k).and_then(Value::as_f64);
    if limit("minimum").is_some_and(|m| x < m) || limit("maximum").is_some_and(|m| x > m) {
        return Err(format!("{path}: {v} is out of range"));
    }
    if limit("exclusiveMinimum").is_some_and(|m| x <= m) {
        return Err(format!("{path}: {v} is not above the minimum"));
    }
    Ok(())
}

fn object(
    root: &Value,
    s: &serde_json::Map<String, Value>,
    o: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    let props = s.get("properties").and_then(Value::as_object);
    for r in s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let r = r.as_str().unwrap_or_default();
        if !o.contains_key(r) {
            return Err(format!("{path}: {r} is required"));
        }
    }
    if let Some(min) = s.get("minProperties").and_then(Value::as_u64) {
        if (o.len() as u64) < min {
            return Err(format!("{path}: fewer than {min} properties"));
        }
    }
    for (k, x) in o {
        let p = format!("{path}.{k}");
        match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
            (Some(sub), _) => check(root, sub, x, &p)?,
            (None, Some(Value::Bool(false))) => return Err(format!("{p}: not allowed")),
            (None, Some(sub)) if sub.is_object() => check(root, sub, x, &p)?,
            (None, _) => {}
        }
    }
    Ok(())
}
