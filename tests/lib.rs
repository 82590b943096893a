//! Helpers for the root integration tests. These tests run only inside the
//! cgroup v2 VM (`make vm-test`); anywhere else they fail loudly in
//! [`require_vm`] rather than pass without testing anything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where `isola run` puts sandboxes by default.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/isola";

/// Panics unless we are root on a unified cgroup2 host: a root test that
/// cannot run must fail, never pass silently.
pub fn require_vm() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "integration tests must run as root inside the VM: use `make vm-test`"
    );
    let st = nix::sys::statfs::statfs("/sys/fs/cgroup").expect("statfs /sys/fs/cgroup");
    assert_eq!(
        st.filesystem_type(),
        nix::sys::statfs::CGROUP2_SUPER_MAGIC,
        "/sys/fs/cgroup is not cgroup2: run the integration tests with `make vm-test`"
    );
}

/// The `isola` binary built beside this test binary (target/<profile>/isola),
/// or `$ISOLA_BIN`.
pub fn isola_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ISOLA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/isola
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("isola"))
        .expect("test binary has no grandparent directory");
    assert!(
        bin.exists(),
        "{} missing: build it first (`cargo build -p isola`)",
        bin.display()
    );
    bin
}

/// A fresh scratch directory under /tmp, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("isola-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write scratch file");
        p
    }
}

impl Scratch {
    /// A `mounts` entry binding this directory at its own path, writable:
    /// a host-root sandbox sees the host read-only and has its own /tmp,
    /// where scratch directories live.
    pub fn shared(&self) -> serde_json::Value {
        serde_json::json!({"destination": self.0, "type": "bind", "source": self.0, "options": ["rbind"]})
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write the config.json `crun spec` writes (Debian's crun) into `dir`.
pub fn crun_spec(dir: &Path) {
    let out = Command::new("crun")
        .arg("spec")
        .current_dir(dir)
        .output()
        .expect("crun spec (Debian package crun)");
    assert!(out.status.success(), "crun spec: {out:?}");
}

/// Run `isola ARGS...` with `stdin` fed in, wait at most `limit`.
pub fn isola(args: &[&str], stdin: &str, limit: Duration) -> Output {
    let mut child = Command::new(isola_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn isola");
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin.as_bytes());
    }
    wait_output(child, limit)
}

/// Wait for a child with a deadline; kill it and panic if it overruns.
pub fn wait_output(mut child: std::process::Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("wait_with_output"),
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait_with_output");
                panic!(
                    "isola did not exit within {limit:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `isola run -` with this spec; returns (exit code, stdout, stderr).
pub fn run_spec(spec: &serde_json::Value, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.push("-");
    let out = isola(&args, &spec.to_string(), Duration::from_secs(120));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sandbox cgroups left under the default root (should be none after a run).
pub fn leftover_cgroups() -> Vec<String> {
    match std::fs::read_dir(CGROUP_ROOT) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Processes other than this test's own ancestry and kernel threads whose
/// command line mentions `needle`.
pub fn processes_matching(needle: &str) -> Vec<String> {
    let me = std::process::id();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(format!("{pid}: {cmd}"));
        }
    }
    found
}

/// The post-condition of every test: nothing isola made is still there.
pub fn assert_clean() {
    let left = leftover_cgroups();
    assert!(
        left.is_empty(),
        "cgroups left under {CGROUP_ROOT}: {left:?}"
    );
    let procs = processes_matching("isola-test-payload");
    assert!(procs.is_empty(), "payload processes left: {procs:?}");
}
pub mod load;
pub mod rootless;
pub mod up;

/// A child's pid as nix wants it (pids fit in i32: pid_max is at most 2^22).
pub fn pid_of(c: &std::process::Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid fits in i32"))
}

pub mod oci_image;
