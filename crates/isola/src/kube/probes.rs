//! isola's probes → a container's `startupProbe`, `livenessProbe`,
//! `readinessProbe`: the same three, the same meaning, the same thresholds;
//! milliseconds become whole seconds (rounded up, at least 1 where
//! Kubernetes requires it), which a note says when it changes a value.

use std::net::IpAddr;
use std::time::Duration;

use isola_supervisor::health::{Check, Health, Probe, ProbeKind};
use serde_json::{json, Map, Value};

use super::Notes;

/// The probes of `health` into `container`.
pub(super) fn map(health: &Health, container: &mut Map<String, Value>, notes: &mut Notes) {
    for kind in ProbeKind::ALL {
        let Some(p) = health.probe(kind) else {
            continue;
        };
        let key = format!("{}Probe", kind.as_str());
        container.insert(key, probe(p, kind, notes));
    }
}

fn probe(p: &Probe, kind: ProbeKind, notes: &mut Notes) -> Value {
    let field = |f: &str| format!("probes.{}.{f}", kind.as_str());
    let mut o = Map::new();
    match &p.check {
        Check::Exec(argv) => {
            o.insert("exec".into(), json!({ "command": argv }));
        }
        Check::Tcp { host, port } => {
            let mut t = json!({ "port": port });
            host_of(&mut t, host, &field("tcp.host"), notes);
            o.insert("tcpSocket".into(), t);
        }
        Check::Http {
            host,
            port,
            path,
            headers,
        } => {
            let mut h = json!({"port": port, "path": path, "scheme": "HTTP"});
            host_of(&mut h, host, &field("http.host"), notes);
            if !headers.is_empty() {
                let list: Vec<Value> = headers
                    .iter()
                    .map(|(n, v)| json!({"name": n, "value": v}))
                    .collect();
                h["httpHeaders"] = Value::from(list);
            }
            o.insert("httpGet".into(), h);
        }
    }
    let secs = [
        ("initialDelaySeconds", p.initial_delay, 0, "initialDelayMs"),
        ("periodSeconds", p.period, 1, "periodMs"),
        ("timeoutSeconds", p.timeout, 1, "timeoutMs"),
    ];
    for (key, d, min, ours) in secs {
        let s = seconds(d, min);
        if Duration::from_secs(s) != d {
            notes.changed(&field(ours), &format!("{} ms → {key} {s}", d.as_millis()));
        }
        o.insert(key.into(), json!(s));
    }
    o.insert("failureThreshold".into(), json!(p.failure_threshold));
    o.insert("successThreshold".into(), json!(p.success_threshold));
    Value::Object(o)
}

/// Whole seconds, rounded up, at least `min`.
fn seconds(d: Duration, min: u64) -> u64 {
    let s = d.as_millis().div_ceil(1000);
    u64::try_from(s).unwrap_or(u64::MAX).max(min)
}

/// isola probes the service's own loopback; the kubelet probes the pod's
/// IP, which a payload listening only on a loopback address does not
/// answer (said). Another host is the kubelet's `host` field.
fn host_of(target: &mut Value, host: &IpAddr, field: &str, notes: &mut Notes) {
    if host.is_loopback() {
        notes.changed(
            field,
            &format!("{host}: the kubelet probes the pod's IP: the payload must listen there"),
        );
    } else {
        target["host"] = json!(host.to_string());
        notes.changed(
            field,
            &format!("{host}: the kubelet connects to it from the node"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_up_with_a_floor() {
        assert_eq!(seconds(Duration::from_millis(0), 1), 1);
        assert_eq!(seconds(Duration::from_millis(0), 0), 0);
        assert_eq!(seconds(Duration::from_millis(1500), 1), 2);
        assert_eq!(seconds(Duration::from_secs(3), 1), 3);
    }
}
