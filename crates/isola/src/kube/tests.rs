//! The mapping field for field, and the round trip: every generated object
//! read back by the official Kubernetes models (scripts/kube-validate.py).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{generate, Generated, Options};

/// One service of each kind the mapping knows.
fn fixture() -> Value {
    json!({
        "networks": {"back": {"internal": true}},
        "services": {
            "api_server": {
                "image": "docker://registry.example:5000/team/api:1.2",
                "entrypoint": ["/bin/api"],
                "process": {
                    "args": ["--port", "8080"],
                    "env": ["MODE=prod", "EMPTY="],
                    "cwd": "/srv",
                    "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
                    "capabilities": {"bounding": ["CAP_NET_BIND_SERVICE"]},
                    "noNewPrivileges": true
                },
                "root": {"readonly": true},
                "hostname": "api",
                "limits": {"memory": "512M", "cpus": 1.5, "pids": 64},
                "replicas": 3,
                "restart": {"mode": "overlap", "delayMs": 200},
                "sockets": [
                    {"name": "http", "listen": "tcp://0.0.0.0:8080"},
                    {"name": "metrics-endpoint-long", "listen": "udp://0.0.0.0:9125"},
                    {"name": "admin", "listen": "unix:///run/api.sock"}
                ],
                "probes": {
                    "startup": {"exec": ["/bin/check"], "periodMs": 250, "failureThreshold": 40},
                    "liveness": {"tcp": {"port": 8080}, "initialDelayMs": 2000, "periodMs": 3000, "timeoutMs": 1500},
                    "readiness": {"http": {"port": 8080, "path": "/ready", "headers": {"X-Probe": "1"}}, "successThreshold": 2}
                },
                "dependsOn": {"migrate": "completed", "cache": "healthy"},
                "stop": {"signal": "SIGINT", "timeoutMs": 2500},
                "fdStoreMax": 4,
                "watchdogMs": 1000,
                "notify": "systemd",
                "mounts": [
                    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=16m"]},
                    {"destination": "/data", "type": "bind", "source": "/etc", "options": ["rbind", "ro"]}
                ],
                "linux": {
                    "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}, {"type": "uts"}],
                    "sysctl": {"net.ipv4.ip_local_port_range": "1024 65000"}
                },
                "networks": [{"name": "back", "aliases": ["api"]}],
                "annotations": {"team": "core"}
            },
            "migrate": {
                "process": {"args": ["/bin/true", "migrate"]},
                "restart": {"policy": "no"}
            },
            "cache": {"process": {"args": ["/bin/sleep", "1000"]}, "sockets": [{"name": "c", "listen": "tcp://0.0.0.0:6379"}]},
            "batch": {"process": {"args": ["/bin/echo", "once"]}, "restart": {"policy": "no"}}
        }
    })
}

fn objects(g: &Generated) -> Vec<Value> {
    g.yaml
        .split("---\n")
        .filter(|d| d.lines().any(|l| !l.starts_with('#') && !l.is_empty()))
        .map(yaml_to_json)
        .collect()
}

/// The documents read back through Python's YAML (the emitter's output is
/// what a YAML reader makes of it, not what we meant).
fn yaml_to_json(doc: &str) -> Value {
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().map(|mut i| i.write_all(doc.as_bytes()));
            c.wait_with_output()
        })
        .expect("python3 of scripts/kube-deps.sh");
    serde_json::from_slice(&out.stdout).expect("one YAML document")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv scripts/kube-deps.sh makes (`make unit` runs it first).
fn python() -> PathBuf {
    let p = repo().join("target/kube-venv/bin/python3");
    assert!(
        p.exists(),
        "{}: missing; run scripts/kube-deps.sh (make unit does)",
        p.display()
    );
    p
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {objs:#?}"))
}

fn isola_class() -> Options {
    Options {
        runtime_class: Some("isola".into()),
    }
}

#[test]
fn a_service_maps_field_for_field() {
    let g = generate(&fixture(), &isola_class());
    let objs = objects(&g);
    let d = find(&objs, "Deployment", "api-server");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": 1, "maxUnavailable": 0})
    );
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["runtimeClassName"], "isola");
    assert_eq!(pod["hostname"], "api");
    assert_eq!(pod["terminationGracePeriodSeconds"], 3);
    assert_eq!(pod["securityContext"]["supplementalGroups"], json!([5]));
    assert_eq!(
        pod["securityContext"]["sysctls"][0]["name"],
        "net.ipv4.ip_local_port_range"
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["team"],
        "core"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example:5000/team/api:1.2");
    assert_eq!(c["command"], json!(["/bin/api"]));
    assert_eq!(c["args"], json!(["--port", "8080"]));
    assert_eq!(
        c["env"],
        json!([{"name": "MODE", "value": "prod"}, {"name": "EMPTY", "value": ""}])
    );
    assert_eq!(c["workingDir"], "/srv");
    assert_eq!(
        c["resources"]["limits"],
        json!({"memory": "512Mi", "cpu": "1500m"})
    );
    assert_eq!(c["resources"]["requests"], c["resources"]["limits"]);
    let sc = &c["securityContext"];
    assert_eq!(
        (sc["runAsUser"].clone(), sc["runAsGroup"].clone()),
        (json!(1000), json!(1000))
    );
    assert_eq!(
        sc["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(c["startupProbe"]["exec"]["command"], json!(["/bin/check"]));
    assert_eq!(c["startupProbe"]["failureThreshold"], 40);
    assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], 8080);
    assert_eq!(c["livenessProbe"]["initialDelaySeconds"], 2);
    assert_eq!(c["livenessProbe"]["periodSeconds"], 3);
    assert_eq!(c["livenessProbe"]["timeoutSeconds"], 2);
    let http = &c["readinessProbe"]["httpGet"];
    assert_eq!(
        (http["path"].clone(), http["httpHeaders"][0]["name"].clone()),
        (json!("/ready"), json!("X-Probe"))
    );
    assert_eq!(c["readinessProbe"]["successThreshold"], 2);
    assert_eq!(
        c["ports"].as_array().map(Vec::len),
        Some(2),
        "unix sockets have no port"
    );
    assert_eq!(
        c["ports"][1],
        json!({"name": "metrics-endpoin", "containerPort": 9125, "protocol": "UDP"})
    );
    let vols = &pod["volumes"];
    assert_eq!(
        vols[0]["emptyDir"],
        json!({"medium": "Memory", "sizeLimit": "16Mi"})
    );
    assert_eq!(vols[1]["hostPath"]["path"], "/etc");
    assert_eq!(
        c["volumeMounts"][1],
        json!({"name": "api-server-mount-1", "mountPath": "/data", "readOnly": true})
    );
    // The one-shot it waits for runs first in its pod, and has no Job.
    assert_eq!(
        pod["initContainers"][0]["command"],
        json!(["/bin/true", "migrate"])
    );
    assert!(objs.iter().all(|o| o["metadata"]["name"] != "migrate"));
    // A one-shot nobody waits for is a Job; the rest are Deployments.
    assert_eq!(
        find(&objs, "Job", "batch")["spec"]["template"]["spec"]["restartPolicy"],
        "Never"
    );
    assert_eq!(
        find(&objs, "Deployment", "cache")["spec"]["template"]["spec"]["hostNetwork"],
        true
    );
}

#[test]
fn a_service_per_held_socket() {
    let objs = objects(&generate(&fixture(), &isola_class()));
    let http = find(&objs, "Service", "api-server-http");
    assert_eq!(
        http["spec"]["ports"][0],
        json!({"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"})
    );
    assert_eq!(
        http["spec"]["selector"]["app.kubernetes.io/name"],
        "api-server"
    );
    assert_eq!(
        find(&objs, "Service", "api-server-metrics-endpoin")["spec"]["ports"][0]["protocol"],
        "UDP"
    );
    // One socket: the Service takes the service's name (`cache:6379`).
    assert_eq!(
        find(&objs, "Service", "cache")["spec"]["ports"][0]["port"],
        6379
    );
}

#[test]
fn what_does_not_map_is_named_per_field() {
    let g = generate(&fixture(), &isola_class());
    let all = g.warnings.join("\n");
    for field in [
        "networks:",
        "services.api_server.fdStoreMax:",
        "services.api_server.watchdogMs:",
        "services.api_server.notify:",
        "services.api_server.stop.signal:",
        "services.api_server.dependsOn.cache:",
        "services.api_server.restart.delayMs:",
        "services.api_server.networks.aliases:",
        "services.api_server.sockets[2]:",
        "services.api_server.limits/linux.resources pids:",
        "services.api_server.probes.startup.periodMs:",
        "services.api_server.mounts[1]:",
        "services.cache.root:",
    ] {
        assert!(all.contains(field), "a note on {field} in:\n{all}");
        assert!(
            g.yaml.contains(&format!("# isola: {field}")),
            "{field} as a comment"
        );
    }
}

#[test]
fn no_runtime_class_when_told_so() {
    let g = generate(
        &fixture(),
        &Options {
            runtime_class: None,
        },
    );
    assert!(!g.yaml.contains("runtimeClassName"));
}

/// The fixture and every example stack, through the official models.
#[test]
fn the_output_is_what_the_kubernetes_models_read() {
    let mut stacks = vec![("fixture".to_string(), fixture())];
    for e in std::fs::read_dir(repo().join("specs")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("stack.json") {
            let text = std::fs::read_to_string(e.path()).unwrap();
            stacks.push((name, serde_json::from_str(&text).unwrap()));
        }
    }
    assert!(stacks.len() > 3, "the example stacks were found");
    for (name, stack) in stacks {
        assert_models_read(&name, &generate(&stack, &isola_class()).yaml);
    }
}

/// `yaml` through scripts/kube-validate.py (the Kubernetes models).
fn assert_models_read(name: &str, yaml: &str) {
    let file = std::env::temp_dir().join(format!("isola-kube-{}-{name}.yaml", std::process::id()));
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(python())
        .arg(repo().join("scripts/kube-validate.py"))
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fixture is a stack isola itself accepts; bad input is refused in
/// one line naming the field (exit 2).
#[test]
fn the_stack_is_checked_first() {
    let path = std::env::temp_dir().join(format!("isola-kube-{}.json", std::process::id()));
    let check = |v: &Value| crate::cmd::kube::validate(v, &path).map_err(|e| (e.0, e.1));
    assert_eq!(check(&fixture()), Ok(()));
    let mut bare = fixture();
    bare["services"]["api_server"]["image"] = json!("team/api:1.2");
    let (code, msg) = check(&bare).unwrap_err();
    assert_eq!(code, 2);
    assert!(
        msg.contains("services.api_server.image: team/api:1.2:"),
        "{msg}"
    );
    let mut unknown = fixture();
    unknown["services"]["cache"]["replicaz"] = json!(2);
    let (_, msg) = check(&unknown).unwrap_err();
    assert!(
        msg.ends_with("services.cache.replicaz: unknown field"),
        "{msg}"
    );
}

/// Names that meet once made labels, chains of one-shots, capabilities a
/// spec leaves out.
#[test]
fn names_stay_unique_and_one_shot_chains_run_in_order() {
    let stack = json!({"services": {
        "web_1": {"process": {"args": ["/bin/true"]}, "sockets": [
            {"name": "metrics-endpoint-a", "listen": "tcp://0.0.0.0:9001"},
            {"name": "metrics-endpoint-b", "listen": "tcp://0.0.0.0:9002"}
        ]},
        "web-1": {"process": {"args": ["/bin/true"]}},
        "9lives": {"process": {"args": ["/bin/true"]}, "sockets": [{"name": "x", "listen": "tcp://127.0.0.1:7"}]},
        "seed": {"process": {"args": ["/bin/true", "seed"]}, "restart": {"policy": "no"},
                 "probes": {"liveness": {"exec": ["/bin/true"]}}},
        "migrate": {"process": {"args": ["/bin/true", "migrate"]}, "restart": {"policy": "no"},
                    "dependsOn": {"seed": "completed"}},
        "app": {"process": {"args": ["/bin/true"]}, "dependsOn": {"migrate": "completed"},
                "linux": {"namespaces": [{"type": "network"}, {"type": "user"}, {"type": "time"}]}}
    }});
    let g = generate(&stack, &isola_class());
    let objs = objects(&g);
    find(&objs, "Deployment", "web-1");
    find(&objs, "Deployment", "web-1-2");
    let web = find(&objs, "Deployment", "web-1-2");
    let ports = &web["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert_ne!(ports[0]["name"], ports[1]["name"], "{ports}");
    find(&objs, "Service", "svc-9lives");
    assert!(g
        .warnings
        .iter()
        .any(|w| w.contains("127.0.0.1:7: a loopback address")));
    let app = &find(&objs, "Deployment", "app")["spec"]["template"]["spec"];
    let names: Vec<&Value> = app["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(
        names,
        [&json!("seed"), &json!("migrate")],
        "the chain, in order"
    );
    assert!(
        app["initContainers"][0].get("livenessProbe").is_none(),
        "no probes on init containers"
    );
    assert!(
        objs.iter().all(|o| o["kind"] != "Job"),
        "each one-shot ran as an init container"
    );
    assert_eq!(
        app["containers"][0]["securityContext"]["capabilities"],
        json!({"drop": ["ALL"]})
    );
    assert_eq!(app["hostUsers"], false, "its own user namespace");
    assert!(g
        .warnings
        .iter()
        .any(|w| w.contains("services.app.linux.namespaces: no Kubernetes equivalent: time")));
    assert_models_read("names", &g.yaml);
}
