//! The pod around a service's container, and the workload around the pod:
//! a Deployment (replicas, rolling strategy) or, for a one-shot, a Job.
//! `dependsOn: {X: completed}` on a one-shot X becomes an init container
//! (X runs to its end before the service starts, as isola orders it); the
//! other conditions have no equivalent between pods and are noted.

use std::collections::{BTreeMap, BTreeSet};

use isola_supervisor::health::Condition;
use serde_json::{json, Map, Value};

use super::{container, Notes, Options, Service};

/// Fields of a service that only isola's supervisor acts on.
const SUPERVISOR_ONLY: [(&str, &str); 8] = [
    ("fdStoreMax", "a pod keeps no fds across restarts"),
    ("watchdogMs", "use a livenessProbe"),
    ("notify", "use a readinessProbe"),
    (
        "oom",
        "a container killed for memory is restarted by its restartPolicy",
    ),
    ("resourceRules", "no per-service rules on resource use"),
    ("stderr", "the runtime keeps both streams"),
    ("logging", "the cluster's log collection"),
    (
        "autoscale",
        "a HorizontalPodAutoscaler scales on metrics, not the accept queue",
    ),
];

/// The one-shots that some service waits for with `completed`.
pub(super) fn init_containers_wanted<'a>(
    all: &BTreeMap<&'a str, Service<'a>>,
) -> BTreeSet<&'a str> {
    all.values()
        .flat_map(|s| s.dependencies())
        .filter(|d| d.condition == Condition::Completed)
        .filter_map(|d| all.get_key_value(d.name.as_str()).map(|(k, _)| *k))
        .filter(|n| all.get(n).is_some_and(Service::one_shot))
        .collect()
}

/// The Deployment (or Job) of `svc`.
pub(super) fn workload(
    svc: &Service<'_>,
    all: &BTreeMap<&str, Service<'_>>,
    opts: &Options,
    notes: &mut Notes,
) -> Value {
    let template = json!({
        "metadata": metadata_of_pod(svc),
        "spec": pod_spec(svc, all, opts, notes),
    });
    let meta = json!({"name": svc.kube_name, "labels": svc.labels()});
    if svc.one_shot() {
        let mut t = template;
        t["spec"]["restartPolicy"] = json!("Never");
        return json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta,
            "spec": {"backoffLimit": 0, "template": t},
        });
    }
    let mut spec = json!({
        "replicas": replicas(svc, notes),
        "selector": {"matchLabels": svc.labels()},
        "template": template,
    });
    // overlap: the successor starts before the old one stops.
    if svc.spec.pointer("/restart/mode").and_then(Value::as_str) == Some("overlap") {
        spec["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    }
    let policy = svc.spec.pointer("/restart/policy").and_then(Value::as_str);
    if let Some(p @ ("on-failure" | "unless-stopped")) = policy {
        notes.changed(
            "restart.policy",
            &format!("{p}: a Deployment restarts on every exit (Always)"),
        );
    }
    for f in [
        "delayMs",
        "maxDelayMs",
        "jitter",
        "limit",
        "resetAfterMs",
        "readyTimeoutMs",
    ] {
        if svc.spec.get("restart").and_then(|r| r.get(f)).is_some() {
            notes.unmapped(
                &format!("restart.{f}"),
                "the kubelet's back-off is fixed (10 s doubling to 5 min)",
            );
        }
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec})
}

fn replicas(svc: &Service<'_>, notes: &mut Notes) -> u64 {
    if let Some(min) = svc.spec.pointer("/autoscale/min").and_then(Value::as_u64) {
        notes.changed("autoscale.min", &format!("{min} replicas, fixed"));
        return min.max(1);
    }
    svc.spec
        .get("replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1)
}

fn metadata_of_pod(svc: &Service<'_>) -> Value {
    let mut m = json!({"labels": svc.labels()});
    if let Some(a) = svc
        .spec
        .get("annotations")
        .filter(|a| a.as_object().is_some_and(|o| !o.is_empty()))
    {
        m["annotations"] = a.clone();
    }
    m
}

fn pod_spec(
    svc: &Service<'_>,
    all: &BTreeMap<&str, Service<'_>>,
    opts: &Options,
    notes: &mut Notes,
) -> Value {
    let (c, volumes) = container::container(svc, notes);
    let mut spec = Map::new();
    spec.insert("containers".into(), Value::from(vec![c]));
    if let Some(rc) = opts.runtime_class.as_deref().filter(|r| !r.is_empty()) {
        spec.insert("runtimeClassName".into(), json!(rc));
    }
    let (inits, more_volumes) = init_containers(svc, all, notes);
    if !inits.is_empty() {
        spec.insert("initContainers".into(), Value::from(inits));
    }
    let volumes: Vec<Value> = volumes.into_iter().chain(more_volumes).collect();
    if !volumes.is_empty() {
        spec.insert("volumes".into(), Value::from(volumes));
    }
    if !has_namespace(svc, "network") {
        spec.insert("hostNetwork".into(), json!(true));
        notes.changed(
            "linux.namespaces",
            "no network namespace: hostNetwork (the node's network)",
        );
    }
    if has_namespace(svc, "user") {
        // A user namespace of its own: the pod's (Kubernetes 1.30+).
        spec.insert("hostUsers".into(), json!(false));
    }
    if has_namespace(svc, "time") {
        notes.unmapped("linux.namespaces", "time: pods share the node's clocks");
    }
    if let Some(h) = svc.spec.get("hostname").and_then(Value::as_str) {
        spec.insert("hostname".into(), json!(super::dns_label(h, 63)));
    }
    if let Some(ms) = svc.spec.pointer("/stop/timeoutMs").and_then(Value::as_u64) {
        spec.insert(
            "terminationGracePeriodSeconds".into(),
            json!(ms.div_ceil(1000)),
        );
    }
    if let Some(sig) = svc.spec.pointer("/stop/signal") {
        let text = sig
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| sig.to_string());
        if !matches!(text.as_str(), "TERM" | "SIGTERM" | "15") {
            notes.unmapped(
                "stop.signal",
                &format!("{text}: the kubelet sends SIGTERM (or the image's STOPSIGNAL)"),
            );
        }
    }
    let sc = pod_security(svc);
    if !sc.is_empty() {
        spec.insert("securityContext".into(), Value::Object(sc));
    }
    supervisor_only(svc, notes);
    Value::Object(spec)
}

fn has_namespace(svc: &Service<'_>, kind: &str) -> bool {
    svc.spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.get("type").and_then(Value::as_str) == Some(kind))
        })
}

/// sysctls and supplementary groups: the pod's.
fn pod_security(svc: &Service<'_>) -> Map<String, Value> {
    let mut sc = Map::new();
    if let Some(s) = svc.spec.pointer("/linux/sysctl").and_then(Value::as_object) {
        let list: Vec<Value> = s
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        if !list.is_empty() {
            sc.insert("sysctls".into(), Value::from(list));
        }
    }
    if let Some(g) = svc
        .spec
        .pointer("/process/user/additionalGids")
        .filter(|g| g.as_array().is_some_and(|a| !a.is_empty()))
    {
        sc.insert("supplementalGroups".into(), g.clone());
    }
    sc
}

/// Init containers and their volumes for `svc`'s `completed` one-shots
/// (and theirs, first); each once, in dependency order.
fn init_containers(
    svc: &Service<'_>,
    all: &BTreeMap<&str, Service<'_>>,
    notes: &mut Notes,
) -> (Vec<Value>, Vec<Value>) {
    let mut made = Init::default();
    add_inits(svc, all, notes, &mut made, 0);
    (made.containers, made.volumes)
}

#[derive(Default)]
struct Init {
    containers: Vec<Value>,
    volumes: Vec<Value>,
    names: BTreeSet<String>,
}

/// A stack's dependencies have no cycles (the parser refuses them); the
/// depth bound is only a guard.
fn add_inits(
    svc: &Service<'_>,
    all: &BTreeMap<&str, Service<'_>>,
    notes: &mut Notes,
    made: &mut Init,
    depth: usize,
) {
    for d in svc.dependencies() {
        let field = format!("dependsOn.{}", d.name);
        let dep = all.get(d.name.as_str()).filter(|s| s.one_shot());
        let Some(dep) = dep.filter(|_| d.condition == Condition::Completed && depth < 16) else {
            let why = "pods start independently; a readinessProbe keeps traffic away until ready";
            notes.unmapped(&field, &format!("{}: {why}", d.condition.as_str()));
            continue;
        };
        if made.names.contains(dep.name) {
            continue;
        }
        let mut theirs = Notes::default();
        add_inits(dep, all, &mut theirs, made, depth + 1);
        let (mut c, v) = container::container(dep, &mut theirs);
        // An init container runs to its end: no probes, no ports.
        if let Some(o) = c.as_object_mut() {
            o.retain(|k, _| !k.ends_with("Probe") && k != "ports");
        }
        notes.changed(&field, "completed: its container runs first in every pod (each replica, each restart), as an init container");
        notes.absorb(&format!("initContainers.{}: ", dep.kube_name), theirs);
        made.names.insert(dep.name.to_string());
        made.containers.push(c);
        made.volumes.extend(v);
    }
}

fn supervisor_only(svc: &Service<'_>, notes: &mut Notes) {
    for (field, why) in SUPERVISOR_ONLY {
        if svc.spec.get(field).is_some() {
            notes.unmapped(field, why);
        }
    }
    if let Some(n) = svc.spec.get("networks").and_then(Value::as_array) {
        let aliases = n.iter().any(|x| x.get("aliases").is_some());
        if aliases {
            notes.unmapped(
                "networks.aliases",
                "one Service name per held socket; add more Services for other names",
            );
        }
    }
}
