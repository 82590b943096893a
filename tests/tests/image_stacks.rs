//! Stacks of image services (`"image"` in a stack file), in the VM: a
//! root per replica whose writes outlive restarts but not the stack, a
//! killed supervisor's roots not taken up by the next stack, the image's
//! HEALTHCHECK as liveness probe, `isola exec` into them, `isola check`,
//! and the shipped `specs/image-stack.json` against a real registry.

use std::path::Path;
use std::time::Duration;

use isola_tests::oci_image::{
    entries, layout, layout_with, ok, out, run, skopeo_copy, Auth, Registry,
};
use isola_tests::{require_vm, Scratch};
use serde_json::{json, Value};

/// `sh -c` of the image's Entrypoint: count this root's starts in /srv
/// (owned by the image's user), say the count, stay up.
const COUNT_RUNS: &str =
    "echo x >> /srv/runs; set -- $(cat /srv/runs); echo runs=$#; exec sleep 1000";

fn image_service(image: &str) -> Value {
    json!({"image": image, "process": {"args": [COUNT_RUNS]},
           "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}, "replicas": 2})
}

#[test]
fn a_stack_runs_image_services_whose_writes_outlive_restarts_not_the_stack() {
    use isola_tests::up::Up;
    require_vm();
    let s = Scratch::new("img-stack");
    let image = format!("oci:{}:v1", layout(&s).display());
    let store = s.path("store");
    let st = store.to_str().unwrap();
    let roots = || entries(&store.join("roots"));
    // `isola check` pulls and shows what the image makes of the spec.
    let stack = s.write(
        "imgstack.json",
        &json!({"services": {"app": image_service(&image)}}).to_string(),
    );
    let checked = ok(&["check", "--store", st, stack.to_str().unwrap()]);
    assert!(
        checked.contains(&format!("app: {image} runs /bin/sh -c 'echo x")),
        "{checked}"
    );

    let up = Up::start(
        "imgstack",
        json!({"app": image_service(&image)}),
        &["--store", st],
    );
    up.wait_log("app.1", "runs=1");
    up.wait_log("app.2", "runs=1");
    // One root per replica, held: the image is in use.
    assert_eq!(roots(), ["imgstack.app.1", "imgstack.app.2"]);
    let o = run(&["rmi", "--store", st, &image]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    // A restart keeps the replica's writes; the other replica's are its own.
    let (code, _, err) = up.cli(&["restart", "app.1"]);
    assert_eq!(code, 0, "{err}");
    up.wait_log("app.1", "runs=2");
    let (_, logs2, _) = up.cli(&["logs", "app.2"]);
    assert!(!logs2.contains("runs=2"), "{logs2}");
    // `isola exec` joins the service's root (the image's user, its files).
    let (code, o, err) = up.cli(&[
        "exec",
        "app.1",
        "--",
        "/bin/sh",
        "-c",
        "id -u; cat /srv/runs",
    ]);
    assert_eq!((code, o.as_str()), (0, "33\nx\nx\n"), "{err}");
    up.down();
    // The stack's end takes its writes.
    assert!(roots().is_empty(), "{:?}", roots());

    // A supervisor killed outright leaves its roots; the next stack of
    // that name starts from the image, not from them.
    let mut up = Up::start(
        "imgstack",
        json!({"app": image_service(&image)}),
        &["--store", st],
    );
    up.wait_log("app.1", "runs=1");
    up.kill_keeper();
    assert_eq!(roots(), ["imgstack.app.1", "imgstack.app.2"]);
    // (A fresh log, so the count read is the new run's.)
    std::fs::remove_dir_all(up.logdir()).unwrap();
    let up = up.spawn(&["--store", st]);
    up.wait_log("app.1", "runs=1");
    let (_, logs1, _) = up.cli(&["logs", "app.1"]);
    assert!(!logs1.contains("runs=2"), "{logs1}");
    up.down();
    assert!(roots().is_empty(), "{:?}", roots());
}

#[test]
fn image_services_are_checked_before_anything_starts() {
    require_vm();
    let s = Scratch::new("img-stack-bad");
    let image = format!("oci:{}:v1", layout(&s).display());
    let store = s.path("store");
    let st = store.to_str().unwrap();
    let mut overlap = image_service(&image);
    overlap["restart"] = json!({"mode": "overlap"});
    overlap["sockets"] = json!([{"name": "web", "listen": "tcp://127.0.0.1:18081"}]);
    let mut readonly_overlap = overlap.clone();
    readonly_overlap["root"] = json!({"readonly": true});
    for (svc, want) in [
        (json!({"image": "busybox:1", "process": {"args": ["true"]}}), "services.app.image: busybox:1: not an image reference"),
        (overlap, "services.app.restart.mode: overlap: the old and new sandbox would share one writable layer"),
        (json!({"image": image, "entrypoint": "/bin/sh"}), "services.app.entrypoint: must be an array of strings"),
    ] {
        let f = s.write("bad.json", &json!({"services": {"app": svc}}).to_string());
        let o = run(&["check", "--store", st, f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", out(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
    let f = s.write(
        "ok.json",
        &json!({"services": {"app": readonly_overlap}}).to_string(),
    );
    ok(&["check", "--store", st, f.to_str().unwrap()]);
    assert!(entries(&store.join("roots")).is_empty());
}

#[test]
fn the_shipped_image_stack_runs() {
    use isola_tests::up::Up;
    require_vm();
    let s = Scratch::new("img-shipped");
    // The registry the example names, with busybox where it looks.
    let reg = Registry::start(&s.path("registry"), 5000, Auth::None);
    // Like Docker's busybox image: no Entrypoint, `sh` as the command.
    let busybox = layout_with(&s, "busybox", json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]}));
    skopeo_copy(
        &format!("oci:{}:v1", busybox.display()),
        &format!("docker://{}/library/busybox:1", reg.host),
    );
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/image-stack.json");
    let store = s.path("store");
    let st = store.to_str().unwrap();
    let checked = ok(&["check", "--store", st, example.to_str().unwrap()]);
    assert!(
        checked.contains("web: docker://127.0.0.1:5000/library/busybox:1 runs /bin/httpd"),
        "{checked}"
    );
    let text: Value = serde_json::from_slice(&std::fs::read(&example).unwrap()).unwrap();
    let up = Up::start(
        "shipped",
        text["services"].clone(),
        &["--store", st, "--insecure-registry", &reg.host],
    );
    up.wait_for(
        "web",
        "a passing liveness probe",
        Duration::from_secs(60),
        |s| s["probe"]["liveness"]["ok"] == true,
    );
    up.wait_state("worker.2", "running");
    // `root.readonly`: the root cannot be written, and the mount points
    // the image lacks (/proc, /dev, /sys) were made in the sandbox's
    // scratch layer, not in the shared layers.
    let (code, _, err) = up.cli(&["exec", "web", "--", "/bin/touch", "/etc/x"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    for l in entries(&store.join("layers")) {
        assert!(!store.join("layers").join(&l).join("proc").exists(), "{l}");
    }
    // The workers write their own layers.
    let (code, _, err) = up.cli(&["exec", "worker.1", "--", "/bin/touch", "/etc/x"]);
    assert_eq!(code, 0, "{err}");
    up.down();
}

#[test]
fn a_read_only_image_service_restarts_with_overlap() {
    use isola_tests::up::Up;
    require_vm();
    let s = Scratch::new("img-overlap");
    let image = format!("oci:{}:v1", layout(&s).display());
    let store = s.path("store");
    let st = store.to_str().unwrap();
    let svc = json!({"image": image, "process": {"args": ["exec sleep 1000"]}, "root": {"readonly": true},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
        "restart": {"policy": "always", "mode": "overlap", "delayMs": 50},
        "sockets": [{"name": "http", "listen": "tcp://127.0.0.1:18131"}]});
    let up = Up::start("imgov", json!({"web": svc}), &["--store", st]);
    let before = up.wait_state("web", "running");
    // The successor starts while the old sandbox runs, on the same
    // read-only root (nothing of it is written: the upper is a tmpfs each).
    let (code, o, err) = up.cli(&["restart", "web"]);
    assert_eq!((code, o.trim()), (0, "web: running"), "{err}");
    assert_ne!(up.service("web")["pid"], before["pid"]);
    let roots = entries(&store.join("roots"));
    assert!(
        roots.len() == 1 && roots[0].starts_with("imgov.web@"),
        "{roots:?}"
    );
    up.down();
    assert!(entries(&store.join("roots")).is_empty());
}

#[test]
fn an_upgrade_keeps_image_services_running_on_their_roots_held() {
    use isola_tests::up::Up;
    require_vm();
    let s = Scratch::new("img-upgrade");
    let image = format!("oci:{}:v1", layout(&s).display());
    let store = s.path("store");
    let st = store.to_str().unwrap();
    let up = Up::start(
        "imgup",
        json!({"app": image_service(&image)}),
        &["--store", st],
    );
    up.wait_log("app.1", "runs=1");
    up.wait_log("app.2", "runs=1");
    let pid = |name: &str| up.service(name)["pid"].as_i64();
    let before = (pid("app.1"), pid("app.2"));
    for _ in 0..3 {
        let (code, o, err) = up.cli(&["upgrade"]);
        assert_eq!(code, 0, "{o}{err}\n{}", up.stderr());
    }
    assert_eq!((pid("app.1"), pid("app.2")), before, "a replica restarted");
    // Held all along: the image is still in use, the roots still theirs.
    let o = run(&["rmi", "--store", st, &image]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let o = run(&["image", "prune", "--store", st]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(
        entries(&store.join("roots")),
        ["imgup.app.1", "imgup.app.2"]
    );
    // A restart after the upgrade is on the same root: its writes are there.
    let (code, _, err) = up.cli(&["restart", "app.1"]);
    assert_eq!(code, 0, "{err}");
    up.wait_log("app.1", "runs=2");
    up.down();
    assert!(entries(&store.join("roots")).is_empty());
}
