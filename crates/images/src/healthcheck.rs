//! A Docker `HEALTHCHECK` (the image config's `Healthcheck`) as an isola
//! liveness probe: `["CMD", args…]` runs args, `["CMD-SHELL", "…"]` runs
//! `/bin/sh -c "…"`, `["NONE"]` (or nothing) is no probe. Docker's
//! durations are nanoseconds, 0 meaning its default; its Retries are the
//! failures in a row that count.

use serde_json::{json, Map, Value};

const NS_PER_MS: u64 = 1_000_000;

/// The liveness probe `h` describes, if any.
pub fn probe(h: &Value) -> Option<Value> {
    let test: Vec<String> = h
        .get("Test")?
        .as_array()?
        .iter()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    let exec = match test.split_first()? {
        (kind, rest) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        (kind, [line]) if kind == "CMD-SHELL" => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        _ => return None,
    };
    let mut p = Map::new();
    p.insert("exec".into(), json!(exec));
    let ms = |k: &str| {
        h.get(k)
            .and_then(Value::as_u64)
            .filter(|n| *n >= NS_PER_MS)
            .map(|n| n / NS_PER_MS)
    };
    if let Some(v) = ms("Interval") {
        p.insert("periodMs".into(), json!(v));
    }
    if let Some(v) = ms("Timeout") {
        p.insert("timeoutMs".into(), json!(v));
    }
    if let Some(v) = ms("StartPeriod") {
        p.insert("initialDelayMs".into(), json!(v));
    }
    if let Some(v) = h.get("Retries").and_then(Value::as_u64).filter(|n| *n > 0) {
        p.insert("failureThreshold".into(), json!(v));
    }
    Some(Value::Object(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_healthchecks_become_liveness_probes() {
        let p = probe(&json!({"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 5_000_000_000u64, "Retries": 2})).unwrap();
        assert_eq!(
            p,
            json!({"exec": ["/bin/sh", "-c", "wget -q localhost"], "periodMs": 5000, "failureThreshold": 2})
        );
        let p = probe(&json!({"Test": ["CMD", "/bin/check", "-q"]})).unwrap();
        assert_eq!(p, json!({"exec": ["/bin/check", "-q"]}));
        assert!(probe(&json!({"Test": ["NONE"]})).is_none());
        assert!(probe(&json!({})).is_none());
    }
}
