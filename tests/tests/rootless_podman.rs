//! podman rootless (as uid 1001, with a subordinate range) driving isola
//! as it drives crun.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use isola_tests::rootless::{busybox_rootfs, text, user, Delegated, UID};
use isola_tests::*;

/// podman as the user (its own user namespace from the user's ranges,
/// cgroupfs, vfs storage, no network), driving isola as it drives crun.
struct Podman {
    dir: std::path::PathBuf,
}

impl Podman {
    fn new() -> Podman {
        let u = user();
        let dir = u.dir("podman");
        for d in ["home/.config/containers", "tmp", "net"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let d = dir.display();
        let files = [
            ("containers.conf", format!("[containers]\nnetns = \"none\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime_supports_json = [\"crun\", \"runc\", \"isola\"]\n[engine.runtimes]\nisola = [\"{}\"]\n[network]\nnetwork_config_dir = \"{d}/net\"\n", isola_bin().display())),
            ("storage.conf", "[storage]\ndriver = \"vfs\"\n".to_string()),
            ("registries.conf", String::new()),
            ("home/.config/containers/policy.json", r#"{"default":[{"type":"insecureAcceptAnything"}]}"#.to_string()),
        ];
        for (f, t) in files {
            std::fs::write(dir.join(f), t).unwrap();
        }
        let root = busybox_rootfs(&dir);
        for a in ["echo", "true", "sleep", "cat", "id"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let tar = dir.join("rootfs.tar");
        let st = std::process::Command::new("tar")
            .args([
                "-C",
                &root.display().to_string(),
                "-cf",
                &tar.display().to_string(),
                ".",
            ])
            .status()
            .unwrap();
        assert!(st.success());
        let chown = std::process::Command::new("chown")
            .args(["-R", &format!("{UID}:{UID}"), &d.to_string()])
            .status()
            .unwrap();
        assert!(chown.success());
        Podman { dir }
    }

    fn run(&self, cgroup: Option<&Path>, args: &[&str]) -> std::process::Output {
        let d = &self.dir;
        let mut all = vec!["-k", "5", "120", "podman"];
        all.extend_from_slice(args);
        let mut c = user().command(cgroup, Path::new("/usr/bin/timeout"), &all);
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("HOME", d.join("home"))
            .env("TMPDIR", d.join("tmp"))
            .stdin(Stdio::null());
        c.output().expect("podman (Debian package podman)")
    }

    fn ok(&self, cgroup: Option<&Path>, args: &[&str]) -> String {
        let out = self.run(cgroup, args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    /// podman leaves its user namespace's pause process behind.
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-U", &UID.to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn podman_rootless_runs_containers_with_isola_as_with_crun() {
    require_vm();
    let p = Podman::new();
    let tar = p.dir.join("rootfs.tar").display().to_string();
    p.ok(None, &["import", &tar, "localhost/bb"]);
    let show = "id -u; cat /proc/self/uid_map";
    // crun is the control: the same container the same way.
    let want = p.ok(
        None,
        &[
            "run",
            "--rm",
            "--runtime",
            "crun",
            "localhost/bb",
            "sh",
            "-c",
            show,
        ],
    );
    let got = p.ok(
        None,
        &[
            "run",
            "--rm",
            "--runtime",
            "isola",
            "localhost/bb",
            "sh",
            "-c",
            show,
        ],
    );
    assert_eq!(got, want, "isola as crun");
    let lines: Vec<Vec<&str>> = got
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "{got}");
    assert_eq!(
        lines[1],
        ["0", &UID.to_string(), "1"],
        "podman's namespace: {got}"
    );

    let out = p.run(
        None,
        &[
            "run",
            "--rm",
            "--runtime",
            "isola",
            "localhost/bb",
            "sh",
            "-c",
            "exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));

    let id = p.ok(
        None,
        &[
            "run",
            "-d",
            "--runtime",
            "isola",
            "localhost/bb",
            "sleep",
            "100",
        ],
    );
    let running = p.ok(
        None,
        &["ps", "-q", "--no-trunc", "--filter", "status=running"],
    );
    assert!(running.contains(&id), "{running}");
    let said = p.ok(None, &["exec", &id, "sh", "-c", "echo in; id -u"]);
    assert_eq!(said, "in\n0", "podman exec");
    p.ok(None, &["stop", "-t", "2", &id]);
    let running = p.ok(
        None,
        &["ps", "-q", "--no-trunc", "--filter", "status=running"],
    );
    assert!(!running.contains(&id), "{running}");
    p.ok(None, &["rm", &id]);

    // --memory, with a subtree delegated to the user: enforced in it.
    let d = Delegated::new("podman");
    let got = p.ok(
        Some(&d.login),
        &[
            "run",
            "--rm",
            "--runtime",
            "isola",
            "--memory",
            "64m",
            "localhost/bb",
            "cat",
            "/sys/fs/cgroup/memory.max",
        ],
    );
    assert_eq!(got, "67108864");
}
