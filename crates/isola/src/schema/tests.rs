//! The schemas against the parser: the shipped copies are current, every
//! example in `specs/` (and the starter) validates, and each file the
//! schema refuses is refused by `isola check` too, naming the field.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{schema, text, validate, Kind};

fn specs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../specs")
}

fn valid(kind: Kind, v: &Value) -> Result<(), String> {
    let s = schema(kind);
    validate::check(&s, &s, v, "")
}

/// What `isola check` says of `v` (a stack when it has `services`).
fn isola_check(v: &Value) -> Result<(), String> {
    let text = v.to_string();
    let base = Path::new("/");
    if v.get("services").is_some() {
        return isola_supervisor::stack::parse(&text, base)
            .map(drop)
            .map_err(|e| e.to_string());
    }
    let svc = isola_runtime::spec::parse_str(&text, base).map_err(|e| e.to_string())?;
    crate::cmd::common::plan_of(&svc, "test")
        .map(drop)
        .map_err(|e| e.1)
}

#[test]
fn the_copies_in_specs_are_current() {
    for (kind, file) in [
        (Kind::Service, "service.schema.json"),
        (Kind::Stack, "stack.schema.json"),
    ] {
        let path = specs_dir().join("schema").join(file);
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            shipped.trim_end(),
            text(kind),
            "{} is stale: isola schema {kind:?} > it",
            path.display()
        );
    }
}

#[test]
fn every_example_spec_and_the_starter_validate() {
    let mut seen = 0;
    for entry in std::fs::read_dir(specs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let kind = if v.get("services").is_some() {
            Kind::Stack
        } else {
            Kind::Service
        };
        if let Err(e) = valid(kind, &v) {
            panic!("{}: {e}", path.display());
        }
        seen += 1;
    }
    assert!(seen >= 6, "only {seen} examples");
    valid(Kind::Service, &isola_runtime::starter::starter_spec()).unwrap();
}

/// A service with every supervision field set, valid for both.
fn base() -> Value {
    json!({
        "process": {
            "args": ["/bin/true"],
            "env": ["A=1"],
            "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true,
            "oomScoreAdj": 100,
            "capabilities": {"bounding": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
        },
        "root": {"path": "/", "readonly": true},
        "hostname": "b",
        "mounts": [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}],
            "resources": {"pids": {"limit": 10}},
            "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []},
            "rootfsPropagation": "private",
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
        },
        "restart": {"policy": "always", "jitter": 0.1, "limit": {"burst": 3}},
        "oom": "kill",
        "stop": {"signal": "SIGINT", "timeoutMs": 500},
        "dependsOn": {},
        "probes": {"liveness": {"tcp": {"port": 80}}},
        "notify": "systemd",
        "watchdogMs": 1000,
        "sockets": [{"name": "http", "listen": "tcp://127.0.0.1:8080"}],
        "replicas": 2,
        "stderr": "stdout",
        "limits": {"memory": "64M", "cpus": 0.5, "cpuWeight": 50}
    })
}

/// `v` with the value at `pointer` replaced (`None`: removed).
fn with(mut v: Value, pointer: &str, new: Option<Value>) -> Value {
    let (parent, leaf) = pointer.rsplit_once('/').unwrap();
    let p = v.pointer_mut(parent).unwrap_or_else(|| panic!("{pointer}"));
    match (p, new) {
        (Value::Object(m), Some(x)) => {
            m.insert(leaf.to_string(), x);
        }
        (Value::Object(m), None) => {
            m.remove(leaf);
        }
        (Value::Array(a), Some(x)) => a[leaf.parse::<usize>().unwrap()] = x,
        _ => panic!("{pointer}"),
    }
    v
}

#[test]
fn the_base_service_passes_both() {
    valid(Kind::Service, &base()).unwrap();
    isola_check(&base()).unwrap();
    // Editors' `$schema` is taken by both, in both kinds of file.
    let mut b = base();
    b["$schema"] = json!("service.schema.json");
    valid(Kind::Service, &b).unwrap();
    isola_check(&b).unwrap();
    let stack = json!({"$schema": "stack.schema.json", "services": {"a": b}});
    valid(Kind::Stack, &stack).unwrap();
    isola_check(&stack).unwrap();
}

#[test]
fn what_the_schema_refuses_isola_check_refuses_naming_the_field() {
    let cases: &[(&str, Option<Value>, &str)] = &[
        ("/restrat", Some(json!({})), "restrat"),
        ("/process/args", Some(json!([])), "process.args"),
        ("/process/args", None, "process.args"),
        ("/process/user/uid", Some(json!(-1)), "process.user.uid"),
        ("/process/env", Some(json!("A=1")), "env"),
        (
            "/process/noNewPrivileges",
            Some(json!("yes")),
            "noNewPrivileges",
        ),
        ("/process/oomScoreAdj", Some(json!(5000)), "oomScoreAdj"),
        (
            "/process/capabilities/bounding",
            Some(json!("CAP_KILL")),
            "bounding",
        ),
        (
            "/process/rlimits/0/hard",
            Some(json!("lots")),
            "process.rlimits[0].hard",
        ),
        ("/process/color", Some(json!(1)), "color"),
        ("/root", Some(json!({"readonly": true})), "root.path"),
        ("/mounts/0/destination", None, "missing field `destination`"),
        ("/hooks", Some(json!({})), "hooks"),
        ("/process/terminal", Some(json!(true)), "terminal"),
        ("/linux/intelRdt", Some(json!({})), "intelRdt"),
        ("/linux/cgroupsPath", Some(json!("/x")), "cgroupsPath"),
        ("/linux/namespaces/0/type", Some(json!("clock")), "clock"),
        (
            "/linux/seccomp/listenerPath",
            Some(json!("/x")),
            "listenerPath",
        ),
        (
            "/linux/resources/memory",
            Some(json!({"swappiness": 1})),
            "memory.swappiness",
        ),
        ("/mounts/0/uidMappings", Some(json!([])), "uidMappings"),
        ("/linux/namespaces/0/type", Some(json!("pidd")), "pidd"),
        (
            "/linux/resources/pids/limit",
            Some(json!("ten")),
            "linux.resources.pids.limit",
        ),
        (
            "/linux/seccomp/defaultAction",
            None,
            "missing field `defaultAction`",
        ),
        (
            "/linux/seccomp/defaultAction",
            Some(json!("SCMP_ACT_MAYBE")),
            "SCMP_ACT_MAYBE",
        ),
        (
            "/linux/rootfsPropagation",
            Some(json!("sideways")),
            "sideways",
        ),
        ("/linux/devices/0/type", None, "missing field `type`"),
        ("/restart/policy", Some(json!("sometimes")), "sometimes"),
        ("/restart/jitter", Some(json!(2)), "jitter"),
        ("/restart/limit/burst", Some(json!(0)), "burst"),
        ("/oom", Some(json!("explode")), "explode"),
        ("/stop/timeoutMs", Some(json!(-1)), "timeoutMs"),
        ("/dependsOn", Some(json!({"db": "ready"})), "ready"),
        (
            "/probes/liveness",
            Some(json!({"periodMs": 1000})),
            "probes.liveness",
        ),
        (
            "/probes/liveness/tcp/port",
            Some(json!(0)),
            "probes.liveness.tcp.port",
        ),
        ("/probes/liveness/exec", Some(json!(["x"])), "not several"),
        (
            "/probes/warmup",
            Some(json!({"tcp": {"port": 80}})),
            "warmup",
        ),
        ("/notify", Some(json!("sd")), "notify"),
        ("/notify", Some(json!({"fd": 2})), "notify.fd"),
        ("/watchdogMs", Some(json!(0)), "watchdogMs"),
        ("/sockets/0/listen", None, "missing field `listen`"),
        ("/replicas", Some(json!(0)), "replicas"),
        ("/autoscale", Some(json!({"max": 0})), "autoscale"),
        (
            "/autoscale",
            Some(json!({"max": 2, "step": 1})),
            "autoscale",
        ),
        ("/stderr", Some(json!("null")), "null"),
        ("/limits/memory", Some(json!(-1)), "memory"),
        ("/limits/cpus", Some(json!(0)), "cpus"),
        ("/limits/pids", Some(json!(0)), "pids"),
        ("/limits/cpuWeight", Some(json!(20000)), "cpuWeight"),
        ("/limits/disk", Some(json!(1)), "disk"),
    ];
    for (pointer, new, names) in cases {
        let v = with(base(), pointer, new.clone());
        assert!(
            valid(Kind::Service, &v).is_err(),
            "{pointer}: the schema takes {new:?}"
        );
        match isola_check(&v) {
            Ok(()) => panic!("{pointer}: isola check takes {new:?}"),
            Err(e) => assert!(e.contains(names), "{pointer}: {e}"),
        }
    }
    let stacks = [
        json!({"services": {}}),
        json!({}),
        json!({"services": {"a": base()}, "version": 1}),
        json!({"services": {"a": "x"}}),
    ];
    for v in stacks {
        assert!(valid(Kind::Stack, &v).is_err(), "the schema takes {v}");
        assert!(isola_check(&v).is_err(), "isola check takes {v}");
    }
}
