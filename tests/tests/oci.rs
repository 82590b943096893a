//! The OCI command line driven directly, as conmon and containerd's shim
//! drive it: `create`/`start`/`state`/`kill`/`delete`/`exec`/`pause`/
//! `resume`/`update`/`ps`/`list`, the exit status through a subreaper, the
//! console socket, hooks, and the stock `crun spec` / `runc spec` configs.
//! Run in the VM (`make vm-test`).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use isola_tests::{crun_spec, isola_bin, require_vm, Scratch};
use serde_json::{json, Value};

#[path = "oci/conformance.rs"]
mod conformance;

const LIMIT: Duration = Duration::from_secs(60);

/// A bundle: busybox rootfs and the config `crun spec` writes, with
/// terminal off and our command.
fn bundle(s: &Scratch, name: &str, args: &[&str]) -> PathBuf {
    let dir = s.path(name);
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for a in ["sh", "sleep", "echo", "cat", "tty", "id", "true"] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
    }
    crun_spec(&dir);
    edit_config(&dir, |c| {
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(args);
    });
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(&p, c.to_string()).unwrap();
}

struct Oci {
    root: PathBuf,
}

impl Oci {
    fn new(s: &Scratch) -> Oci {
        Oci {
            root: s.path("state"),
        }
    }

    /// Output to files, not pipes: a container created by mistake would
    /// hold a pipe open (and the test hung) as long as it lives.
    fn cmd(&self, args: &[&str]) -> (i32, String, String) {
        let dir = self.root.with_extension("out");
        std::fs::create_dir_all(&dir).unwrap();
        let (out, err) = (dir.join("stdout"), dir.join("stderr"));
        let mut child = Command::new(isola_bin())
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > LIMIT {
                let _ = child.kill();
                panic!("isola {args:?} did not exit within {LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (
            status.code().unwrap_or(-1),
            std::fs::read_to_string(&out).unwrap(),
            std::fs::read_to_string(&err).unwrap(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cmd(args);
        assert_eq!(code, 0, "isola {args:?}: {err}");
        out
    }

    fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    /// `create`, its stdio (which the container inherits, as conmon's
    /// pipes) in files: a pipe would stay open as long as the container.
    fn create(&self, bundle: &Path, id: &str, pid_file: &Path) -> i32 {
        let out = pid_file.with_extension("out");
        let st = Command::new(isola_bin())
            .args(["--root", self.root.to_str().unwrap(), "create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
            .status()
            .unwrap();
        let err = std::fs::read_to_string(out.with_extension("err")).unwrap_or_default();
        assert!(st.success(), "isola create {id}: {err}");
        std::fs::read_to_string(pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// Make this test process a subreaper, as conmon and the shim are: the
/// init `create` leaves behind becomes our child.
fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

/// Wait for an adopted child and return its status as a shell would.
fn wait_adopted(pid: i32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    match waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap() {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        other => panic!("unexpected wait status {other:?}"),
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn create_start_state_delete_and_the_exit_status_through_a_subreaper() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-life");
    let oci = Oci::new(&s);
    let b = bundle(&s, "b", &["sh", "-c", "exit 7"]);
    let pid = oci.create(&b, "c1", &s.path("pid"));
    let st = oci.state("c1");
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["pid"], pid);
    assert_eq!(st["id"], "c1");
    assert_eq!(st["ociVersion"], "1.0.2");
    assert_eq!(st["bundle"], b.to_str().unwrap());
    assert!(st["created"].as_str().unwrap().ends_with('Z'), "{st}");
    // Created means set up and waiting: the init lives, no payload yet
    // (the init has no child).
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    assert!(
        children.trim().is_empty(),
        "payload started before start: {children}"
    );
    let cg = "/sys/fs/cgroup/isola-oci/c1";
    let procs = std::fs::read_to_string(format!("{cg}/cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    assert!(oci.ok(&["list", "-q"]).lines().any(|l| l == "c1"));

    oci.ok(&["start", "c1"]);
    assert_eq!(
        wait_adopted(pid),
        7,
        "the payload's exit code is the init's"
    );
    assert_eq!(oci.state("c1")["status"], "stopped");
    // start twice: refused, naming the state.
    let (code, _, err) = oci.cmd(&["start", "c1"]);
    assert_ne!(code, 0);
    assert!(err.contains("c1") && err.contains("stopped"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    oci.ok(&["delete", "c1"]);
    assert!(!Path::new(&cg).exists(), "cgroup left: {cg}");
    assert!(!oci.root.join("c1").exists());
    let (code, _, err) = oci.cmd(&["state", "c1"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("c1") && err.contains("does not exist"),
        "{err}"
    );

    // A signal: 128+N.
    let b2 = bundle(&s, "b2", &["sleep", "1000"]);
    let pid = oci.create(&b2, "c2", &s.path("pid2"));
    oci.ok(&["start", "c2"]);
    assert_eq!(oci.state("c2")["status"], "running");
    // delete of a running container without --force: refused, it runs on.
    let (code, _, err) = oci.cmd(&["delete", "c2"]);
    assert_ne!(code, 0);
    assert!(err.contains("c2") && err.contains("running"), "{err}");
    assert_eq!(oci.state("c2")["status"], "running");
    let (code, _, err) = oci.cmd(&["kill", "c2", "NOPE"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("NOPE"), "{err}");
    oci.ok(&["kill", "c2", "KILL"]);
    assert_eq!(wait_adopted(pid), 128 + 9);
    oci.ok(&["delete", "c2"]);
    // delete --force of an unknown id succeeds; without --force it fails.
    oci.ok(&["delete", "--force", "nope"]);
    let (code, _, err) = oci.cmd(&["delete", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn preserve_fds_passes_the_callers_fds_on() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-fds");
    let oci = Oci::new(&s);
    let b = bundle(&s, "b", &["sh", "-c", "echo via-fd3 >&3; echo via-fd4 >&4"]);
    let (three, four, pf) = (s.path("three"), s.path("four"), s.path("pid"));
    // The caller's fds 3 and 4, as conmon's LISTEN_FDS would be.
    let script = format!(
        "exec 3>{} 4>{}; exec {} --root {} create --bundle {} --pid-file {} --preserve-fds 2 f </dev/null >/dev/null 2>{}",
        three.display(),
        four.display(),
        isola_bin().display(),
        oci.root.display(),
        b.display(),
        pf.display(),
        s.path("err").display()
    );
    let st = Command::new("sh").args(["-c", &script]).status().unwrap();
    let err = std::fs::read_to_string(s.path("err")).unwrap_or_default();
    assert!(st.success(), "{err}");
    let pid: i32 = std::fs::read_to_string(&pf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    oci.ok(&["start", "f"]);
    assert_eq!(wait_adopted(pid), 0);
    assert_eq!(std::fs::read_to_string(&three).unwrap(), "via-fd3\n");
    assert_eq!(std::fs::read_to_string(&four).unwrap(), "via-fd4\n");
    oci.ok(&["delete", "f"]);
}

#[test]
fn a_signal_to_a_created_container_ends_it_and_delete_force_cleans_up() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-force");
    let oci = Oci::new(&s);
    let b = bundle(&s, "b", &["sleep", "1000"]);
    let pid = oci.create(&b, "c", &s.path("pid"));
    oci.ok(&["kill", "c", "TERM"]);
    assert_eq!(wait_adopted(pid), 128 + 15);
    oci.ok(&["delete", "c"]);
    // A running one, removed by force: processes and cgroup gone.
    let pid = oci.create(&b, "d", &s.path("pid"));
    oci.ok(&["start", "d"]);
    oci.ok(&["delete", "--force", "d"]);
    assert_eq!(wait_adopted(pid), 128 + 9);
    assert!(!Path::new("/sys/fs/cgroup/isola-oci/d").exists());
    assert!(!oci.root.join("d").exists());
}

#[test]
fn bad_input_gets_one_line_and_leaves_nothing() {
    require_vm();
    let s = Scratch::new("oci-bad");
    let oci = Oci::new(&s);
    let missing = s.path("missing");
    let (code, _, err) = oci.cmd(&["create", "--bundle", missing.to_str().unwrap(), "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing"), "{err}");
    let b = bundle(&s, "b", &["/bin/nope"]);
    let (code, _, err) = oci.cmd(&["create", "--bundle", b.to_str().unwrap(), "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
    let b = bundle(&s, "t", &["true"]);
    edit_config(&b, |c| c["process"]["terminal"] = json!(true));
    let (code, _, err) = oci.cmd(&["create", "--bundle", b.to_str().unwrap(), "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("process.terminal") && err.contains("--console-socket"),
        "{err}"
    );
    let (code, _, err) = oci.cmd(&["create", "--bundle", b.to_str().unwrap(), "a/b"]);
    assert_eq!(code, 2, "{err}");
    for (args, needle) in [
        (vec!["start", "ghost"], "ghost"),
        (vec!["kill", "ghost"], "ghost"),
        (vec!["exec", "ghost", "true"], "ghost"),
        (vec!["pause", "ghost"], "ghost"),
        (vec!["ps", "ghost"], "ghost"),
    ] {
        let (code, _, err) = oci.cmd(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    // Nothing was made: no state, no cgroup.
    let left: Vec<_> = std::fs::read_dir(&oci.root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "state left: {left:?}");
    assert!(!Path::new("/sys/fs/cgroup/isola-oci/x").exists());
    // --log-format json writes the error to --log as well.
    let log = s.path("log.json");
    let (code, _, err) = oci.cmd(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format=json",
        "state",
        "ghost",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("ghost"));
    let line: Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("ghost"), "{line}");
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
}

#[test]
fn exec_pause_resume_update_ps() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-exec");
    let oci = Oci::new(&s);
    // crun spec's root is read-only; /dev/shm is a tmpfs.
    let b = bundle(
        &s,
        "b",
        &["sh", "-c", "echo $$ > /dev/shm/me; exec sleep 1000"],
    );
    let pid = oci.create(&b, "e", &s.path("pid"));
    oci.ok(&["start", "e"]);
    // exec joins the container: its files, its PID namespace.
    wait_for("the payload's file", || {
        oci.cmd(&["exec", "e", "cat", "/dev/shm/me"]).1.trim() == "2"
    });
    let (code, out, _) = oci.cmd(&["exec", "e", "sh", "-c", "echo $$; exit 3"]);
    assert_eq!(code, 3);
    assert_ne!(out.trim(), "", "exec printed nothing");
    // --process (runc's process.json), --detach and --pid-file, as conmon.
    let proc_json = s.write(
        "process.json",
        &json!({"args": ["sh", "-c", "exit 5"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]}).to_string(),
    );
    let pf = s.path("exec.pid");
    oci.ok(&[
        "exec",
        "--detach",
        "--pid-file",
        pf.to_str().unwrap(),
        "--process",
        proc_json.to_str().unwrap(),
        "e",
    ]);
    let exec_pid: i32 = std::fs::read_to_string(&pf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        wait_adopted(exec_pid),
        5,
        "exec --detach: the pid file's process has the command's status"
    );
    // ps: the container's processes (json: host pids, the init among them).
    let pids: Vec<i32> = serde_json::from_str(&oci.ok(&["ps", "--format", "json", "e"])).unwrap();
    assert!(pids.contains(&pid) && pids.len() >= 2, "{pids:?}");
    // pause: frozen; resume: thawed.
    oci.ok(&["pause", "e"]);
    assert_eq!(oci.state("e")["status"], "paused");
    let frozen = std::fs::read_to_string("/sys/fs/cgroup/isola-oci/e/cgroup.events").unwrap();
    assert!(frozen.contains("frozen 1"), "{frozen}");
    let (code, _, err) = oci.cmd(&["pause", "e"]);
    assert_ne!(code, 0, "pause twice");
    assert!(err.contains("paused"), "{err}");
    oci.ok(&["resume", "e"]);
    assert_eq!(oci.state("e")["status"], "running");
    // update: live limits in the cgroup.
    let res = s.write(
        "res.json",
        r#"{"pids": {"limit": 77}, "memory": {"limit": 67108864}}"#,
    );
    oci.ok(&["update", "--resources", res.to_str().unwrap(), "e"]);
    let cg = Path::new("/sys/fs/cgroup/isola-oci/e");
    assert_eq!(
        std::fs::read_to_string(cg.join("pids.max")).unwrap().trim(),
        "77"
    );
    assert_eq!(
        std::fs::read_to_string(cg.join("memory.max"))
            .unwrap()
            .trim(),
        "67108864"
    );
    let bad = s.write("bad.json", r#"{"pids": {"limit": "lots"}}"#);
    let (code, _, err) = oci.cmd(&["update", "--resources", bad.to_str().unwrap(), "e"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        std::fs::read_to_string(cg.join("pids.max")).unwrap().trim(),
        "77"
    );
    // kill --all reaches every process of the cgroup.
    oci.ok(&["kill", "--all", "e", "KILL"]);
    assert_eq!(wait_adopted(pid), 128 + 9);
    oci.ok(&["delete", "e"]);
}

/// Receive the pty master a console socket gets (SCM_RIGHTS).
fn receive_fd(listener: &UnixListener) -> OwnedFd {
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the fd was just installed for us by recvmsg.
            #[allow(unsafe_code)]
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd on the console socket");
}

#[test]
fn a_console_socket_gets_the_pty_master_and_the_payload_a_terminal() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-tty");
    let oci = Oci::new(&s);
    let b = bundle(
        &s,
        "b",
        &["sh", "-c", "tty; [ -t 0 ] && echo stdin-is-a-tty; exit 4"],
    );
    edit_config(&b, |c| c["process"]["terminal"] = json!(true));
    let sock = s.path("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let pf = s.path("pid");
    let oci_root = oci.root.clone();
    let (b2, pf2, sock2) = (b.clone(), pf.clone(), sock.clone());
    let creator = std::thread::spawn(move || {
        isola_tests::isola(
            &[
                "--root",
                oci_root.to_str().unwrap(),
                "create",
                "--bundle",
                b2.to_str().unwrap(),
                "--pid-file",
                pf2.to_str().unwrap(),
                "--console-socket",
                sock2.to_str().unwrap(),
                "t",
            ],
            "",
            LIMIT,
        )
    });
    let master = receive_fd(&listener);
    let out = creator.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = std::fs::read_to_string(&pf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    oci.ok(&["start", "t"]);
    assert_eq!(wait_adopted(pid), 4);
    let mut text = String::new();
    let mut f = std::fs::File::from(master);
    let mut buf = [0u8; 4096];
    // EIO once the slave side is closed: the end of the output.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("stdin-is-a-tty"), "{text:?}");
    oci.ok(&["delete", "t"]);
}

#[test]
fn hooks_get_the_state_on_stdin() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-hooks");
    let oci = Oci::new(&s);
    // The payload says whether startContainer ran before it.
    let b = bundle(
        &s,
        "b",
        &[
            "sh",
            "-c",
            "test -f /started-by-hook && echo hook-ran-first",
        ],
    );
    edit_config(&b, |c| c["root"]["readonly"] = json!(false));
    let out = s.path("hooks");
    std::fs::create_dir_all(&out).unwrap();
    let hook = |stage: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{stage}", out.display())]});
    edit_config(&b, |c| {
        c["hooks"] = json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
            // In the container's namespaces, before pivot_root: the host's
            // /bin/sh and files, the container's mount namespace.
            "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {0}/createContainer; readlink /proc/self/ns/mnt > {0}/createContainer.mnt", out.display())]}],
            // In the container, after start: the container's /bin/sh.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /started-by-hook"]}],
        })
    });
    let pid = oci.create(&b, "h", &s.path("pid"));
    let st: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("createContainer")).unwrap())
            .unwrap();
    assert_eq!(st["id"], "h");
    assert_eq!(st["pid"], pid, "the init's host pid");
    let mnt = std::fs::read_to_string(out.join("createContainer.mnt")).unwrap();
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        mnt.trim(),
        ours.to_str().unwrap(),
        "createContainer ran in the host's mount namespace"
    );
    assert!(
        !b.join("rootfs/started-by-hook").exists(),
        "startContainer ran before start"
    );
    for stage in ["prestart", "createRuntime"] {
        let st: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(stage)).unwrap()).unwrap();
        assert_eq!(st["id"], "h");
        assert_eq!(st["pid"], pid);
        assert_eq!(st["status"], "created");
    }
    assert!(!out.join("poststart").exists());
    oci.ok(&["start", "h"]);
    assert!(out.join("poststart").exists());
    wait_adopted(pid);
    let st: Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("rootfs/started-by-hook")).unwrap())
            .unwrap();
    assert_eq!(st["id"], "h");
    let printed = std::fs::read_to_string(s.path("pid.out")).unwrap();
    assert!(printed.contains("hook-ran-first"), "{printed:?}");
    oci.ok(&["delete", "h"]);
    let st: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("poststop")).unwrap()).unwrap();
    assert_eq!(st["status"], "stopped");
    // A failing prestart hook fails create and leaves nothing.
    edit_config(&b, |c| {
        c["hooks"] = json!({"prestart": [{"path": "/bin/false"}]})
    });
    let (code, _, err) = oci.cmd(&["create", "--bundle", b.to_str().unwrap(), "h2"]);
    assert_ne!(code, 0);
    assert!(err.contains("prestart"), "{err}");
    assert!(!oci.root.join("h2").exists());
    assert!(!Path::new("/sys/fs/cgroup/isola-oci/h2").exists());
}

#[test]
fn stock_crun_and_runc_spec_configs_run_unchanged() {
    require_vm();
    become_subreaper();
    let s = Scratch::new("oci-stock");
    let oci = Oci::new(&s);
    for tool in ["crun", "runc"] {
        let b = bundle(&s, tool, &["true"]);
        // The tool's own file (`runc spec` will not overwrite one).
        std::fs::remove_file(b.join("config.json")).unwrap();
        let out = Command::new(tool)
            .arg("spec")
            .current_dir(&b)
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool} spec: {out:?}");
        // Terminal off (no console here) and a command the rootfs has:
        // nothing else changed.
        edit_config(&b, |c| {
            c["process"]["terminal"] = json!(false);
            c["process"]["args"] = json!(["sh", "-c", "echo stock-ok; exit 6"]);
        });
        let id = format!("stock-{tool}");
        let pid = oci.create(&b, &id, &s.path("pid"));
        oci.ok(&["start", &id]);
        assert_eq!(wait_adopted(pid), 6, "{tool} spec under isola create/start");
        oci.ok(&["delete", &id]);
        let out = Command::new(isola_bin())
            .args(["run", b.join("config.json").to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(6),
            "{tool} spec under isola run: {out:?}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("stock-ok"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("ambient"),
            "the ambient caps left out are said: {err}"
        );
    }
}
