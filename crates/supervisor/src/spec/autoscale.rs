//! `autoscale`: how many replicas a service runs, decided by the supervisor
//! from the accept queue of the sockets it holds for the service (and,
//! when asked, the replicas' CPU) instead of a fixed `replicas`.
//!
//! ```json
//! "autoscale": {"min": 0, "max": 8, "backlog": 4, "cpu": "70%",
//!               "upAfterMs": 500, "downAfterMs": 30000, "idleMs": 60000}
//! ```

use std::time::Duration;

use isola_runtime::SpecError;
use serde::Deserialize;
use serde_json::Value;

use super::field;
use super::rules::{percent, MAX_CPU_PERCENT};
use super::sockets::{Address, SocketDef, MAX_REPLICAS};
use super::stack::ServiceDef;

/// The longest of the durations: a day.
const MAX_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct Autoscale {
    pub min: u32,
    pub max: u32,
    /// Connections waiting in the held sockets' accept queues above which
    /// the service is short of replicas.
    pub backlog: u32,
    /// The replicas' average CPU above which it is short of replicas, in
    /// percent of one CPU (`None`: the queue alone decides).
    pub cpu: Option<f64>,
    pub up_after: Duration,
    pub down_after: Duration,
    /// With `min` 0: no connection and an empty queue this long → none run.
    pub idle: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AutoscaleJson {
    #[serde(default = "one")]
    min: u32,
    max: u32,
    #[serde(default = "four")]
    backlog: u32,
    cpu: Option<String>,
    #[serde(default = "up_after")]
    up_after_ms: u64,
    #[serde(default = "down_after")]
    down_after_ms: u64,
    #[serde(default = "idle")]
    idle_ms: u64,
}

fn one() -> u32 {
    1
}
fn four() -> u32 {
    4
}
fn up_after() -> u64 {
    500
}
fn down_after() -> u64 {
    30_000
}
fn idle() -> u64 {
    60_000
}

/// `autoscale`, checked against the service's other fields: `path` is
/// `services.web.autoscale`.
pub fn parse(
    v: &Value,
    path: &str,
    sockets: &[SocketDef],
    replicas: bool,
) -> Result<Autoscale, SpecError> {
    let a: AutoscaleJson = field(v, path)?;
    let err = |f: &str, msg: String| Err(SpecError::new(format!("{path}{f}"), msg));
    if replicas {
        return err(
            "",
            "and \"replicas\": give one of them (autoscale decides how many replicas run)".into(),
        );
    }
    if !sockets
        .iter()
        .any(|s| matches!(s.address, Address::Tcp(_) | Address::Unix(_)))
    {
        return err("", "needs \"sockets\" with a tcp or unix listener: their accept queue is what it scales on".into());
    }
    check_numbers(&a, path)?;
    let cpu = match &a.cpu {
        Some(c) => Some(percent(c, MAX_CPU_PERCENT, &format!("{path}.cpu"))?),
        None => None,
    };
    Ok(Autoscale {
        min: a.min,
        max: a.max,
        backlog: a.backlog,
        cpu,
        up_after: Duration::from_millis(a.up_after_ms),
        down_after: Duration::from_millis(a.down_after_ms),
        idle: Duration::from_millis(a.idle_ms),
    })
}

/// The counts and durations in range.
fn check_numbers(a: &AutoscaleJson, path: &str) -> Result<(), SpecError> {
    let err = |f: &str, msg: String| Err(SpecError::new(format!("{path}{f}"), msg));
    if a.max == 0 || a.max > MAX_REPLICAS {
        return err(".max", format!("{}: must be 1 to {MAX_REPLICAS}", a.max));
    }
    if a.min > a.max {
        return err(".min", format!("{}: above max {}", a.min, a.max));
    }
    if a.backlog == 0 {
        return err(
            ".backlog",
            "0: must be 1 or more (connections waiting)".into(),
        );
    }
    for (f, ms) in [
        (".upAfterMs", a.up_after_ms),
        (".downAfterMs", a.down_after_ms),
        (".idleMs", a.idle_ms),
    ] {
        if !(1..=MAX_MS).contains(&ms) {
            return err(f, format!("{ms}: must be 1 to {MAX_MS} (a day)"));
        }
    }
    Ok(())
}

/// Nothing may wait for a service that may have no replica at all.
pub(crate) fn check_waiting_on_zero(
    autoscaled: &[ServiceDef],
    defs: &[ServiceDef],
) -> Result<(), SpecError> {
    let at_zero = |name: &str| {
        autoscaled
            .iter()
            .any(|a| a.name == name && a.policy.autoscale.as_ref().is_some_and(|s| s.min == 0))
    };
    for d in defs.iter().chain(autoscaled) {
        if let Some(dep) = d.policy.depends_on.iter().find(|dep| at_zero(&dep.name)) {
            return Err(SpecError::new(
                format!("services.{}.dependsOn", d.group_name()),
                format!(
                    "{}: autoscales from 0 replicas, nothing to wait for (give it autoscale.min 1)",
                    dep.name
                ),
            ));
        }
    }
    Ok(())
}

/// What an autoscaled service waits for exists (the file's services are
/// checked when they are ordered; these are not ordered).
pub(crate) fn check_dependencies(
    autoscaled: &[ServiceDef],
    defs: &[ServiceDef],
) -> Result<(), SpecError> {
    for a in autoscaled {
        for dep in &a.policy.depends_on {
            // Its own name, or one of its replicas' (`web.3`).
            let own = dep.name == a.name
                || dep
                    .name
                    .strip_prefix(&format!("{}.", a.name))
                    .is_some_and(|k| k.parse::<u32>().is_ok());
            let why = if own {
                "depends on itself"
            } else if !defs.iter().any(|d| d.name == dep.name) {
                "no such service"
            } else {
                continue;
            };
            return Err(SpecError::new(
                format!("services.{}.dependsOn", a.name),
                format!("{}: {why}", dep.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tcp() -> Vec<SocketDef> {
        crate::spec::sockets::parse(
            json!({"sockets": [{"name": "http", "listen": "tcp://127.0.0.1:8080"}]})
                .as_object()
                .unwrap(),
            "",
        )
        .unwrap()
    }

    fn p(v: Value) -> Result<Autoscale, String> {
        parse(&v, "services.web.autoscale", &tcp(), false).map_err(|e| e.to_string())
    }

    #[test]
    fn the_contracts_example_and_the_defaults() {
        let a = p(json!({"min": 0, "max": 8, "backlog": 4, "cpu": "70%",
            "upAfterMs": 500, "downAfterMs": 30000, "idleMs": 60000}))
        .unwrap();
        assert_eq!((a.min, a.max, a.backlog, a.cpu), (0, 8, 4, Some(70.0)));
        assert_eq!(a.idle, Duration::from_secs(60));
        let d = p(json!({"max": 3})).unwrap();
        assert_eq!((d.min, d.backlog, d.cpu), (1, 4, None));
        assert_eq!(d.up_after, Duration::from_millis(500));
        assert_eq!(d.down_after, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_name_their_field() {
        let w = "services.web.autoscale";
        for (v, msg) in [
            (
                json!({"min": 5, "max": 2}),
                format!("{w}.min: 5: above max 2"),
            ),
            (
                json!({"max": 1001}),
                format!("{w}.max: 1001: must be 1 to 1000"),
            ),
            (json!({"max": 0}), format!("{w}.max: 0: must be 1 to 1000")),
            (
                json!({"max": 2, "backlog": 0}),
                format!("{w}.backlog: 0: must be 1 or more (connections waiting)"),
            ),
            (
                json!({"max": 2, "cpu": "lots"}),
                format!("{w}.cpu: \"lots\": use a percentage (e.g. 90%)"),
            ),
            (
                json!({"max": 2, "upAfterMs": 0}),
                format!("{w}.upAfterMs: 0: must be 1 to 86400000 (a day)"),
            ),
            (
                json!({"max": 2, "downAfterMs": 0}),
                format!("{w}.downAfterMs: 0: must be 1 to 86400000 (a day)"),
            ),
            (
                json!({"max": 2, "idleMs": 0}),
                format!("{w}.idleMs: 0: must be 1 to 86400000 (a day)"),
            ),
        ] {
            assert_eq!(p(v).unwrap_err(), msg);
        }
        assert!(p(json!({"max": 2, "step": 1}))
            .unwrap_err()
            .contains("unknown field"));
        let none = parse(&json!({"max": 2}), w, &[], false)
            .unwrap_err()
            .to_string();
        assert!(
            none.starts_with(&format!("{w}: needs \"sockets\"")),
            "{none}"
        );
        let both = parse(&json!({"max": 2}), w, &tcp(), true)
            .unwrap_err()
            .to_string();
        assert!(
            both.starts_with(&format!("{w}: and \"replicas\"")),
            "{both}"
        );
    }

    fn stack(services: Value) -> Result<crate::spec::stack::Stack, String> {
        let text = json!({ "services": services }).to_string();
        crate::spec::stack::parse(&text, std::path::Path::new("/")).map_err(|e| e.to_string())
    }

    fn web(autoscale: Value) -> Value {
        json!({"process": {"args": ["true"]}, "autoscale": autoscale,
            "sockets": [{"name": "http", "listen": "unix:///run/web.sock"}]})
    }

    #[test]
    fn a_stack_starts_min_replicas_and_keeps_the_definition() {
        let s = stack(json!({"web": web(json!({"min": 2, "max": 5}))})).unwrap();
        let names: Vec<&str> = s.services.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["web.1", "web.2"]);
        assert_eq!(s.autoscaled.len(), 1);
        assert_eq!(s.autoscaled[0].group_name(), "web");
        // None at first is a stack still.
        let s = stack(json!({"web": web(json!({"min": 0, "max": 5}))})).unwrap();
        assert!(s.services.is_empty() && s.autoscaled.len() == 1);
        // Bounds are not what a replica is: the same fingerprint.
        let a = stack(json!({"web": web(json!({"min": 1, "max": 5}))})).unwrap();
        let b = stack(json!({"web": web(json!({"min": 1, "max": 9}))})).unwrap();
        assert_eq!(a.services[0].fingerprint, b.services[0].fingerprint);
    }

    #[test]
    fn nothing_waits_for_a_service_that_may_have_no_replica() {
        let api = json!({"process": {"args": ["true"]}, "dependsOn": ["web"]});
        let e = stack(json!({"web": web(json!({"min": 0, "max": 5})), "api": api})).unwrap_err();
        assert!(
            e.starts_with("services.api.dependsOn: web: autoscales from 0 replicas"),
            "{e}"
        );
        let s = stack(json!({"web": web(json!({"min": 1, "max": 5})), "api": api})).unwrap();
        let api = s.services.iter().find(|d| d.name == "api").unwrap();
        assert_eq!(api.policy.depends_on[0].name, "web.1");
    }

    #[test]
    fn the_definition_as_written_is_checked_and_completed_as_its_replicas() {
        let mut w = web(json!({"min": 0, "max": 5}));
        w["dependsOn"] = json!(["nope"]);
        let e = stack(json!({"web": w})).unwrap_err();
        assert_eq!(e, "services.web.dependsOn: nope: no such service");
        let mut w = web(json!({"min": 0, "max": 5}));
        w["linux"] = json!({"namespaces": [{"type": "network"}]});
        w["networks"] = json!(["nope"]);
        let e = stack(json!({"web": w})).unwrap_err();
        assert_eq!(e, "services.web.networks[0]: nope: no such network");
        // On a network: the same networks fingerprint as a replica from
        // the file (a reload compares them).
        let mut w = web(json!({"min": 1, "max": 5}));
        w["linux"] = json!({"namespaces": [{"type": "network"}]});
        w["networks"] = json!(["back"]);
        let text = json!({"networks": {"back": {}}, "services": {"web": w}}).to_string();
        let s = crate::spec::stack::parse(&text, std::path::Path::new("/")).unwrap();
        let replica = s.autoscaled[0].replica(1).unwrap();
        assert_ne!(replica.networks_fingerprint, 0);
        assert_eq!(
            replica.networks_fingerprint,
            s.services[0].networks_fingerprint
        );
        // A replicated dependency is one on each replica, for replicas
        // made later too.
        let mut w = web(json!({"min": 0, "max": 5}));
        w["dependsOn"] = json!(["db"]);
        let db = json!({"process": {"args": ["true"]}, "replicas": 2});
        let s = stack(json!({"web": w, "db": db})).unwrap();
        let deps: Vec<&str> = s.autoscaled[0]
            .policy
            .depends_on
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(deps, ["db.1", "db.2"]);
    }
}
