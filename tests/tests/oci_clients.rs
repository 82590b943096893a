//! podman (through conmon) and containerd (through containerd-shim-runc-v2)
//! drive isola as their OCI runtime: the real clients, Debian's packages,
//! with configs of our own (nothing under /etc is touched; see
//! ../shared/notes/podman-in-a-vm.md for the pitfalls). Run in the VM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use isola_tests::{isola_bin, require_vm, Scratch};

/// One client call under TCG takes seconds: bounded, never hung.
const CALL: &str = "120";

/// A busybox rootfs tarball.
fn rootfs_tar(s: &Scratch) -> PathBuf {
    let root = s.path("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for a in [
        "sh", "sleep", "echo", "cat", "true", "seq", "yes", "head", "tty",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    let tar = s.path("rootfs.tar");
    let st = Command::new("tar")
        .args([
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(s: &Scratch) -> Podman {
        let dir = s.path("podman");
        for d in [
            "home/.config/containers",
            "run",
            "graph",
            "net",
            "tmp",
            "libpod",
            "xdg",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\nnetns = \"none\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"isola\"\nimage_copy_tmp_dir = \"{d}/tmp\"\ntmp_dir = \"{d}/libpod\"\n# podman passes --log and --log-format=json only to runtimes named here\nruntime_supports_json = [\"crun\", \"runc\", \"isola\"]\n[engine.runtimes]\nisola = [\"{}\"]\n[network]\nnetwork_config_dir = \"{d}/net\"\n",
                isola_bin().display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/run\"\ngraphroot = \"{d}/graph\"\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("registries.conf"), "").unwrap();
        std::fs::write(
            dir.join("home/.config/containers/policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        Podman { dir }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-k", "5", CALL, "podman"]).args(args);
        let d = &self.dir;
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("HOME", d.join("home"))
            .env("XDG_RUNTIME_DIR", d.join("xdg"))
            .env("TMPDIR", d.join("tmp"))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .output()
            .expect("podman (Debian package podman)")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Nothing of container `id` is left: no cgroup, no isola state, no init.
fn assert_gone(id: &str) {
    let cg = Path::new("/sys/fs/cgroup/libpod_parent").join(format!("libpod-{id}"));
    assert!(!cg.exists(), "cgroup left: {}", cg.display());
    let st = Path::new("/run/isola-oci").join(id);
    assert!(!st.exists(), "isola state left: {}", st.display());
    // isola's processes of this container (conmon and podman's own cleanup
    // may still be finishing: theirs).
    let bin = isola_bin().display().to_string();
    let ours = || -> Vec<String> {
        isola_tests::processes_matching(id)
            .into_iter()
            .filter(|p| {
                p.split_once(": ")
                    .is_some_and(|(_, cmd)| cmd.starts_with(&bin))
            })
            .collect()
    };
    let t = Instant::now();
    while !ours().is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ours().is_empty(), "processes left: {:?}", ours());
}

#[test]
fn podman_runs_containers_with_isola() {
    require_vm();
    let s = Scratch::new("podman");
    let p = Podman::new(&s);
    let tar = rootfs_tar(&s);
    p.ok(&["import", tar.to_str().unwrap(), "localhost/bb"]);

    // run --rm: true, an exit code, stdout.
    p.ok(&["run", "--rm", "localhost/bb", "true"]);
    let out = p.run(&[
        "run",
        "--rm",
        "localhost/bb",
        "sh",
        "-c",
        "echo out-through; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(text(&out).contains("out-through"), "{}", text(&out));
    // A terminal (conmon's console socket), stdin /dev/null.
    let out = p.run(&["run", "--rm", "-t", "localhost/bb", "sh", "-c", "tty"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("/dev/pts/"), "{}", text(&out));

    // run -d, ps, exec, stop -t 2 of a payload that ignores SIGTERM, rm.
    let id = p.ok(&[
        "run",
        "-d",
        "--name",
        "d1",
        "localhost/bb",
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 1; done",
    ]);
    let running = p.ok(&[
        "ps",
        "--filter",
        "status=running",
        "--format",
        "{{.ID}}",
        "--no-trunc",
    ]);
    assert!(running.contains(&id), "{running}");
    let out = p.run(&["exec", "d1", "sh", "-c", "echo exec-ok; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("exec-ok"));
    let out = p.run(&["exec", "-t", "d1", "tty"]);
    assert!(text(&out).contains("/dev/pts/"), "{}", text(&out));
    // The container's pid is in the cgroup podman asked for.
    let pid = p.ok(&["inspect", "-f", "{{.State.Pid}}", "d1"]);
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cg.contains(&format!("/libpod_parent/libpod-{id}")), "{cg}");
    let t = Instant::now();
    p.ok(&["stop", "-t", "2", "d1"]);
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "SIGTERM was ignored: the stop needed its SIGKILL"
    );
    let code = p.ok(&["inspect", "-f", "{{.State.ExitCode}}", "d1"]);
    assert_eq!(code, "137");
    p.ok(&["rm", "d1"]);
    assert_gone(&id);

    // -m 32m and a memory hog: 137, and the kernel killed it in that
    // container's group (conmon 2.1.6 and podman 4.3 disagree on where the
    // oom file goes, so podman's OOMKilled is false for every runtime).
    let name = "oom1";
    let out = p.run(&[
        "run",
        "--name",
        name,
        "-m",
        "32m",
        "--memory-swap",
        "32m",
        "localhost/bb",
        "sh",
        "-c",
        "x=$(yes | head -c 200000000); echo ${#x}",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out));
    let id = p.ok(&["inspect", "-f", "{{.Id}}", name]);
    let kmsg = Command::new("dmesg").output().unwrap();
    let kmsg = String::from_utf8_lossy(&kmsg.stdout);
    assert!(
        kmsg.contains(&format!("oom_memcg=/libpod_parent/libpod-{id}")),
        "no OOM kill in the container's group"
    );
    p.ok(&["rm", name]);
    assert_gone(&id);

    // --pids-limit holds a fork bomb (its own cgroup's counters say so).
    // The shell dies at its first failed fork; its EXIT trap (builtins
    // only: nothing can fork any more) reads the group's counters.
    let bomb = "trap 'read m < /sys/fs/cgroup/pids.max; echo pids.max=$m; read e < /sys/fs/cgroup/pids.events; echo $e' EXIT; i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done";
    let out = p.run(&[
        "run",
        "--rm",
        "--pids-limit",
        "20",
        "localhost/bb",
        "sh",
        "-c",
        bomb,
    ]);
    let t = text(&out);
    assert!(t.contains("pids.max=20"), "{t}");
    assert!(t.contains("can't fork"), "{t}");
    let max_hits: u64 = t
        .lines()
        .find_map(|l| l.split("max ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(max_hits > 0, "the fork bomb never hit pids.max: {t}");

    // rm -f of a running container: nothing left.
    let id = p.ok(&["run", "-d", "localhost/bb", "sleep", "1000"]);
    p.ok(&["rm", "-f", &id]);
    assert_gone(&id);
}

struct Containerd {
    dir: PathBuf,
    daemon: Child,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

impl Containerd {
    fn start(s: &Scratch) -> Containerd {
        let dir = s.path("containerd");
        for d in ["root", "state", "opt"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n[grpc]\n  address = \"{d}/containerd.sock\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let daemon = Command::new("containerd")
            .args(["--config", dir.join("config.toml").to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian package containerd)");
        let c = Containerd { dir, daemon };
        let t = Instant::now();
        while !c.dir.join("containerd.sock").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["-k", "5", CALL, "ctr", "--address"])
            .arg(self.dir.join("containerd.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

#[test]
fn containerd_runs_tasks_with_isola_as_its_runc_binary() {
    require_vm();
    let s = Scratch::new("containerd");
    // The image: podman imports the rootfs and saves a docker archive.
    let p = Podman::new(&s);
    let tar = rootfs_tar(&s);
    p.ok(&["import", tar.to_str().unwrap(), "localhost/bb"]);
    let archive = s.path("bb-image.tar");
    p.ok(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        archive.to_str().unwrap(),
        "localhost/bb",
    ]);
    let c = Containerd::start(&s);
    c.ok(&["images", "import", archive.to_str().unwrap()]);
    let img = "localhost/bb:latest";
    // The name docs/oci.md gives clients: always the OCI command line.
    let bin = s.path("isola-runtime");
    std::os::unix::fs::symlink(isola_bin(), &bin).unwrap();
    let bin = bin.to_str().unwrap();

    let out = c.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        bin,
        img,
        "c1",
        "sh",
        "-c",
        "echo from-shim; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("from-shim"), "{}", text(&out));

    c.ok(&[
        "run",
        "-d",
        "--runc-binary",
        bin,
        img,
        "c2",
        "sleep",
        "1000",
    ]);
    let tasks = c.ok(&["task", "ls"]);
    assert!(tasks.contains("c2") && tasks.contains("RUNNING"), "{tasks}");
    // The shim ran `isola create`: the state is isola's.
    let state = Path::new("/run/containerd/runc/default/c2/state.json");
    assert!(state.exists(), "no isola state at {}", state.display());
    c.ok(&["task", "kill", "c2"]);
    let t = Instant::now();
    loop {
        let tasks = c.ok(&["task", "ls"]);
        if tasks.contains("STOPPED") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "task never stopped: {tasks}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.ok(&["task", "rm", "c2"]);
    c.ok(&["container", "rm", "c2"]);
    assert!(!state.exists(), "isola state left after task rm");
}
