//! One isola service → one Kubernetes container: image, command and args,
//! env, workingDir, resources, probes, securityContext, ports, and the
//! volumes its tmpfs and bind mounts become.

use isola_runtime::spec::shorthand::{Limits, Merge};
use serde_json::{json, Map, Value};

use super::{Notes, Service};

/// The container of `svc` (named `name`), and the pod volumes it mounts.
pub(super) fn container(svc: &Service<'_>, notes: &mut Notes) -> (Value, Vec<Value>) {
    let s = svc.spec;
    let process = s.get("process").cloned().unwrap_or_else(|| json!({}));
    let mut c = Map::new();
    c.insert("name".into(), json!(svc.kube_name));
    c.insert("image".into(), json!(image(svc, notes)));
    let args = process.get("args").filter(|a| is_nonempty(a)).cloned();
    match (s.get("image"), s.get("entrypoint")) {
        // An image: the entrypoint (when given) is `command`, args `args`:
        // both replace the image's as isola's do.
        (Some(_), entrypoint) => {
            if let Some(e) = entrypoint {
                c.insert("command".into(), e.clone());
            }
            if let Some(a) = args {
                c.insert("args".into(), a);
            }
        }
        (None, _) => {
            if let Some(a) = args {
                c.insert("command".into(), a);
            }
        }
    }
    let env: Vec<Value> = process
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|e| e.split_once('='))
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect();
    if !env.is_empty() {
        c.insert("env".into(), Value::from(env));
    }
    if let Some(cwd) = process.get("cwd").and_then(Value::as_str) {
        if cwd != "/" {
            c.insert("workingDir".into(), json!(cwd));
        }
    }
    if let Some(r) = resources(s, notes) {
        c.insert("resources".into(), r);
    }
    super::probes::map(&svc.health, &mut c, notes);
    c.insert("securityContext".into(), security(s, &process, notes));
    let ports = ports(s, notes);
    if !ports.is_empty() {
        c.insert("ports".into(), Value::from(ports));
    }
    let (mounts, volumes) = volumes(s, &svc.kube_name, notes);
    if !mounts.is_empty() {
        c.insert("volumeMounts".into(), Value::from(mounts));
    }
    (Value::Object(c), volumes)
}

fn is_nonempty(v: &Value) -> bool {
    v.as_array().is_some_and(|a| !a.is_empty())
}

/// `docker://HOST/NAME:TAG` → `HOST/NAME:TAG`; a layout or archive has no
/// name a node can pull, nor has a service without an image.
fn image(svc: &Service<'_>, notes: &mut Notes) -> String {
    use isola_images::reference::Reference;
    let placeholder = format!("REPLACE-ME/{}:latest", svc.kube_name);
    let Some(text) = svc.spec.get("image").and_then(Value::as_str) else {
        notes.unmapped(
            "root",
            "no image: the service runs from a directory or the host's root; build an image and set it",
        );
        return placeholder;
    };
    match Reference::parse(text, "image") {
        Ok(Reference::Registry(r)) => r.to_string(),
        _ => {
            notes.unmapped(
                "image",
                &format!("{text}: push it to a registry the cluster pulls from"),
            );
            placeholder
        }
    }
}

/// The service's `linux.resources` with `limits` applied (as isola
/// applies them), as `resources.limits`; requests equal limits.
fn resources(s: &Value, notes: &mut Notes) -> Option<Value> {
    let mut res = s
        .get("linux")
        .and_then(|l| l.get("resources"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(l) = s.get("limits") {
        // Validated with the stack: a failure here cannot happen.
        let limits = Limits::from_json(l, "limits").ok()?;
        limits.apply(&mut res, Merge::Override).ok()?;
    }
    let mut limits = Map::new();
    if let Some(m) = res.pointer("/memory/limit").and_then(Value::as_i64) {
        if m > 0 {
            limits.insert("memory".into(), json!(bytes(m.unsigned_abs())));
        }
    }
    let quota = res.pointer("/cpu/quota").and_then(Value::as_i64);
    let period = res
        .pointer("/cpu/period")
        .and_then(Value::as_u64)
        .unwrap_or(100_000);
    if let Some(q) = quota.filter(|q| *q > 0) {
        let milli = (q.unsigned_abs() * 1000).div_ceil(period.max(1));
        limits.insert("cpu".into(), json!(format!("{milli}m")));
    }
    for (ptr, field, why) in [
        (
            "/pids/limit",
            "pids",
            "a pod's pids limit is the kubelet's (podPidsLimit)",
        ),
        (
            "/memory/swap",
            "memory swap",
            "swap is the node's (memorySwap.swapBehavior)",
        ),
        (
            "/cpu/shares",
            "cpu weight",
            "Kubernetes derives it from requests.cpu",
        ),
        (
            "/unified/cpu.weight",
            "cpu weight",
            "Kubernetes derives it from requests.cpu",
        ),
        ("/blockIO", "io", "Kubernetes has no block I/O limits"),
    ] {
        if res.pointer(ptr).is_some() {
            notes.unmapped(&format!("limits/linux.resources {field}"), why);
        }
    }
    if limits.is_empty() {
        return None;
    }
    Some(json!({"limits": limits.clone(), "requests": limits}))
}

/// Bytes as a Kubernetes quantity: `Mi`/`Ki` when exact, else bytes.
pub(super) fn bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "Ti"),
        (1 << 30, "Gi"),
        (1 << 20, "Mi"),
        (1 << 10, "Ki"),
    ];
    for (n, unit) in UNITS {
        if b >= n && b.is_multiple_of(n) {
            return format!("{}{unit}", b / n);
        }
    }
    b.to_string()
}

/// user, capabilities (all dropped, the bounding set added back),
/// noNewPrivileges, read-only root.
fn security(s: &Value, process: &Value, notes: &mut Notes) -> Value {
    let mut sc = Map::new();
    if let Some(u) = process.pointer("/user/uid").and_then(Value::as_u64) {
        sc.insert("runAsUser".into(), json!(u));
        sc.insert("runAsNonRoot".into(), json!(u != 0));
    }
    if let Some(g) = process.pointer("/user/gid").and_then(Value::as_u64) {
        sc.insert("runAsGroup".into(), json!(g));
    }
    if process.pointer("/user/username").is_some() {
        notes.unmapped("process.user.username", "use a numeric uid (runAsUser)");
    }
    // isola gives none but the bounding set's; a pod without this would
    // get the runtime's default set.
    let add: Vec<Value> = process
        .pointer("/capabilities/bounding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|c| json!(c.trim_start_matches("CAP_")))
        .collect();
    let mut caps = json!({"drop": ["ALL"]});
    if !add.is_empty() {
        caps["add"] = Value::from(add);
    }
    sc.insert("capabilities".into(), caps);
    let nnp = process.get("noNewPrivileges").and_then(Value::as_bool) == Some(true);
    sc.insert("allowPrivilegeEscalation".into(), json!(!nnp));
    let ro = s.pointer("/root/readonly").and_then(Value::as_bool) == Some(true);
    sc.insert("readOnlyRootFilesystem".into(), json!(ro));
    for (ptr, field) in [
        ("/linux/seccomp", "linux.seccomp"),
        ("/process/rlimits", "process.rlimits"),
        ("/process/oomScoreAdj", "process.oomScoreAdj"),
        ("/linux/maskedPaths", "linux.maskedPaths"),
        ("/linux/readonlyPaths", "linux.readonlyPaths"),
    ] {
        if s.pointer(ptr).is_some() {
            notes.unmapped(field, "the cluster's defaults apply (a Localhost seccomp profile, LimitRange, the runtime's paths)");
        }
    }
    Value::Object(sc)
}

/// One container port per held TCP or UDP socket.
fn ports(s: &Value, notes: &mut Notes) -> Vec<Value> {
    super::sockets(s, notes)
        .into_iter()
        .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol}))
        .collect()
}

/// tmpfs mounts → memory-backed emptyDir volumes; binds → hostPath (said:
/// the node's path, not this host's).
fn volumes(s: &Value, owner: &str, notes: &mut Notes) -> (Vec<Value>, Vec<Value>) {
    let (mut mounts, mut volumes) = (Vec::new(), Vec::new());
    let list = s
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, m) in list.enumerate() {
        let Some(dst) = m.get("destination").and_then(Value::as_str) else {
            continue;
        };
        let kind = m.get("type").and_then(Value::as_str).unwrap_or("bind");
        let opts: Vec<&str> = m
            .get("options")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let bind = kind == "bind" || opts.iter().any(|o| *o == "bind" || *o == "rbind");
        // Unique in the pod (an init container's volumes join it).
        let name = super::dns_label(&format!("{owner}-mount-{i}"), 63);
        let volume = match (kind, bind) {
            ("tmpfs", _) => {
                let mut e = json!({"medium": "Memory"});
                if let Some(size) = opts.iter().find_map(|o| o.strip_prefix("size=")) {
                    // tmpfs sizes are written `16m` as often as `16M`.
                    let size = size.to_ascii_uppercase();
                    if let Ok(b) = isola_runtime::spec::shorthand::parse_bytes("size", &size) {
                        e["sizeLimit"] = json!(bytes(b));
                    }
                }
                json!({"name": name, "emptyDir": e})
            }
            (_, true) => {
                let src = m.get("source").and_then(Value::as_str).unwrap_or("");
                notes.changed(
                    &format!("mounts[{i}]"),
                    &format!("{src}: a hostPath volume: the node's path, not this host's"),
                );
                json!({"name": name, "hostPath": {"path": src}})
            }
            // proc, sysfs, devpts, mqueue: the runtime mounts them.
            _ => continue,
        };
        let mut mount = json!({"name": name, "mountPath": dst});
        if opts.contains(&"ro") {
            mount["readOnly"] = json!(true);
        }
        mounts.push(mount);
        volumes.push(volume);
    }
    (mounts, volumes)
}
