//! `isola kube generate`: a stack file as Kubernetes objects. A Deployment
//! per service (a Job for a one-shot, `restart.policy: no`), a Service per
//! held TCP or UDP socket; what has no Kubernetes equivalent is said, per
//! field, in a comment above the object and on stderr. docs/oci.md has
//! the table of what maps to what.

use std::collections::BTreeMap;

use isola_supervisor::health::{self, Health};
use serde_json::{json, Map, Value};

mod container;
mod pod;
mod probes;
pub(crate) mod yaml;

#[cfg(test)]
mod tests;

/// The label every object of a service carries, and selects by.
const APP_LABEL: &str = "app.kubernetes.io/name";

pub(crate) struct Options {
    /// `runtimeClassName` of every pod; None: none.
    pub(crate) runtime_class: Option<String>,
}

/// The YAML stream, and the notes as warning lines.
pub(crate) struct Generated {
    pub(crate) yaml: String,
    pub(crate) warnings: Vec<String>,
}

/// What a service's mapping changed or left out, per isola field.
#[derive(Default)]
pub(crate) struct Notes {
    lines: Vec<String>,
}

impl Notes {
    fn unmapped(&mut self, field: &str, why: &str) {
        self.lines
            .push(format!("{field}: no Kubernetes equivalent: {why}"));
    }
    fn changed(&mut self, field: &str, how: &str) {
        self.lines.push(format!("{field}: {how}"));
    }
    /// Another service's notes, as `PREFIX…` lines of this one.
    fn absorb(&mut self, prefix: &str, other: Notes) {
        self.lines
            .extend(other.lines.into_iter().map(|l| format!("{prefix}{l}")));
    }
}

/// One service of the stack, as the mapping reads it.
pub(crate) struct Service<'a> {
    pub(crate) name: &'a str,
    /// A DNS-1123 label made of `name`.
    pub(crate) kube_name: String,
    /// The service's object in the stack file.
    pub(crate) spec: &'a Value,
    /// Probes with isola's defaults filled in.
    pub(crate) health: Health,
}

/// A held socket Kubernetes can serve: TCP or UDP with a port.
pub(crate) struct Port {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) protocol: &'static str,
}

/// The objects of `stack` (a stack file that `isola check` accepts).
pub(crate) fn generate(stack: &Value, opts: &Options) -> Generated {
    let empty = Map::new();
    let services = stack
        .get("services")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    // Names made DNS-1123 labels can meet (`api_server`, `api-server`):
    // the later one gets `-2`, …
    let mut used = std::collections::BTreeSet::new();
    let all: BTreeMap<&str, Service<'_>> = services
        .iter()
        .filter(|(_, v)| v.is_object())
        .map(|(name, v)| {
            let mut s = service(name, v);
            s.kube_name = unique(&s.kube_name, &mut used);
            (name.as_str(), s)
        })
        .collect();
    let mut out = Generated {
        yaml: String::new(),
        warnings: Vec::new(),
    };
    let mut top = Notes::default();
    for (key, why) in [
        ("networks", "every pod reaches every Service on the cluster network; isolate with NetworkPolicy objects"),
        ("logging", "the cluster's log collection takes the containers' output"),
        ("insecureRegistries", "the nodes' container runtime configuration"),
    ] {
        if stack.get(key).is_some() {
            top.unmapped(key, why);
        }
    }
    emit(&mut out, "", top, None);
    let run_before = pod::init_containers_wanted(&all);
    for svc in all.values() {
        // A one-shot only ever run before others is their init container.
        if run_before.contains(svc.name) && svc.one_shot() {
            continue;
        }
        let mut notes = Notes::default();
        let workload = pod::workload(svc, &all, opts, &mut notes);
        // (Its unix sockets were noted with the container's ports.)
        let ports = sockets(svc.spec, &mut Notes::default());
        let services: Vec<Value> = ports
            .iter()
            .map(|p| service_object(svc, p, ports.len()))
            .collect();
        emit(&mut out, svc.name, notes, Some(workload));
        for s in services {
            out.yaml.push_str(&yaml::document(&[], &s));
        }
    }
    out
}

fn service<'a>(name: &'a str, spec: &'a Value) -> Service<'a> {
    let health = spec
        .as_object()
        // Checked with the stack before (cmd::kube::validate).
        .and_then(|o| health::parse(o, &format!("services.{name}.")).ok())
        .unwrap_or_default();
    Service {
        name,
        kube_name: dns_label(name, 63),
        spec,
        health,
    }
}

impl Service<'_> {
    /// `restart.policy: no`: runs once (a Job, or an init container).
    pub(crate) fn one_shot(&self) -> bool {
        self.spec.pointer("/restart/policy").and_then(Value::as_str) == Some("no")
    }

    pub(crate) fn dependencies(&self) -> Vec<health::Dependency> {
        let path = format!("services.{}.dependsOn", self.name);
        self.spec
            .get("dependsOn")
            .and_then(|d| health::parse_dependencies(d, &path).ok())
            .unwrap_or_default()
    }

    pub(crate) fn labels(&self) -> Value {
        json!({ APP_LABEL: self.kube_name })
    }
}

/// Notes of `service` (empty: the stack's own) as comments and warnings,
/// then the object.
fn emit(out: &mut Generated, service: &str, notes: Notes, object: Option<Value>) {
    let prefix = if service.is_empty() {
        String::new()
    } else {
        format!("services.{service}.")
    };
    let lines: Vec<String> = notes
        .lines
        .iter()
        .map(|l| format!("isola: {prefix}{l}"))
        .collect();
    out.warnings.extend(lines.iter().cloned());
    match object {
        Some(o) => out.yaml.push_str(&yaml::document(&lines, &o)),
        None if !lines.is_empty() => {
            for l in &lines {
                out.yaml.push_str(&format!("# {l}\n"));
            }
        }
        None => {}
    }
}

/// `name`, or `name-2`, `name-3`, … the first not in `used` (63 at most).
fn unique(name: &str, used: &mut std::collections::BTreeSet<String>) -> String {
    let mut candidate = name.to_string();
    let mut k = 2;
    while used.contains(&candidate) {
        let suffix = format!("-{k}");
        let stem: String = name.chars().take(63 - suffix.len()).collect();
        candidate = format!("{}{suffix}", stem.trim_end_matches('-'));
        k += 1;
    }
    used.insert(candidate.clone());
    candidate
}

fn service_object(svc: &Service<'_>, p: &Port, count: usize) -> Value {
    let name = if count == 1 {
        svc.kube_name.clone()
    } else {
        dns_label(&format!("{}-{}", svc.kube_name, p.name), 63)
    };
    // A Service's name is a DNS-1035 label: it starts with a letter.
    let name = if name.starts_with(|c: char| c.is_ascii_digit()) {
        dns_label(&format!("svc-{name}"), 63)
    } else {
        name
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": svc.labels()},
        "spec": {
            "selector": svc.labels(),
            "ports": [{"name": p.name, "port": p.port, "targetPort": p.port, "protocol": p.protocol}]
        }
    })
}

/// The held sockets Kubernetes can serve; others are noted.
pub(crate) fn sockets(s: &Value, notes: &mut Notes) -> Vec<Port> {
    let mut out = Vec::new();
    let list = s
        .get("sockets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, sock) in list.enumerate() {
        let listen = sock.get("listen").and_then(Value::as_str).unwrap_or("");
        let name = sock.get("name").and_then(Value::as_str).unwrap_or("port");
        let (protocol, rest) = match listen.split_once("://") {
            Some(("tcp", r)) => ("TCP", r),
            Some(("udp", r)) => ("UDP", r),
            _ => {
                notes.unmapped(
                    &format!("sockets[{i}]"),
                    &format!("{listen}: a unix socket has no Service"),
                );
                continue;
            }
        };
        let Some((host, port)) = rest
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        else {
            notes.unmapped(&format!("sockets[{i}]"), &format!("{listen}: no port"));
            continue;
        };
        if is_loopback(host) {
            notes.changed(
                &format!("sockets[{i}]"),
                &format!(
                    "{listen}: a loopback address; its Service reaches it from the whole cluster"
                ),
            );
        }
        // Port names are unique in a pod: `name`, `name-2`, … (15 at most).
        let mut unique = port_name(name);
        let mut k = 2;
        while out.iter().any(|p: &Port| p.name == unique) {
            unique = port_name(&format!(
                "{}-{k}",
                port_name(name).get(..12).unwrap_or(name)
            ));
            k += 1;
        }
        out.push(Port {
            name: unique,
            port,
            protocol,
        });
    }
    if !out.is_empty() {
        notes.changed(
            "sockets",
            "isola binds them and passes the fds (LISTEN_FDS); in a pod the container binds its ports itself",
        );
    }
    out
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Lowercase letters, digits and `-`, starting and ending alphanumeric,
/// at most `max` long (Kubernetes object names, DNS-1123 labels).
pub(crate) fn dns_label(name: &str, max: usize) -> String {
    let mapped: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let cut: String = mapped.chars().take(max).collect();
    let trimmed = cut.trim_matches('-');
    if trimmed.is_empty() {
        "x".into()
    } else {
        trimmed.into()
    }
}

/// A port name: a DNS-1123 label of at most 15, with a letter in it.
fn port_name(name: &str) -> String {
    let n = dns_label(name, 15);
    if n.chars().any(|c| c.is_ascii_lowercase()) {
        n
    } else {
        dns_label(&format!("p-{n}"), 15)
    }
}
