//! The escape suite: each row an attempt to get out, run three times so
//! that the row says which barrier stopped it —
//! A: the starter spec (`isola spec`: Docker's capabilities, its seccomp
//!    profile, host-root mode);
//! B: the same seccomp profile with every capability granted (a refusal
//!    that remains is not a missing capability's);
//! C: every capability and no seccomp profile (the attempt reaches the
//!    kernel: what A and B refused, something did refuse).
//! Arguments are harmless (null pointers, zero lengths): reaching the
//! kernel shows as EFAULT or EINVAL, not as an effect.

use std::collections::BTreeMap;
use std::process::Command;

use isola_tests::rootless::user;
use isola_tests::*;
use serde_json::{json, Value};

const EPERM: i32 = 1;

/// Every capability Linux 6.1 knows.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Each attempt in a child of its own (an unshare must not change the
/// next row); its exit status is the errno (0: it worked).
const PROBE: &str = r#"import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x20000
syscalls = [
    ("mount", 165, ()), ("umount2", 166, ()), ("pivot_root", 155, ()),
    ("unshare(user)", 272, (CLONE_NEWUSER,)), ("unshare(mount)", 272, (CLONE_NEWNS,)),
    ("setns", 308, (-1, 0)), ("ptrace", 101, (0,)), ("kexec_load", 246, ()),
    ("init_module", 175, ()), ("finit_module", 313, (-1, 0, 0)), ("bpf", 321, (0, 0, 0)),
    ("perf_event_open", 298, ()), ("userfaultfd", 323, (0,)), ("io_uring_setup", 425, ()),
    ("keyctl", 250, ()), ("add_key", 248, ()), ("request_key", 249, ()), ("reboot", 169, ()),
    ("swapon", 167, ()), ("settimeofday", 164, ()), ("clock_settime", 227, ()),
    ("iopl", 172, (0,)), ("ioperm", 173, (0, 0, 0)), ("acct", 163, ()),
    ("open_by_handle_at", 304, (-1, 0, 0)),
]
def attempt(f):
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(f())
        except OSError as e:
            os._exit(e.errno or 255)
        except BaseException:
            os._exit(255)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
def call(nr, args):
    def f():
        r = libc.syscall(nr, *args)
        return 0 if r != -1 else ctypes.get_errno()
    return f
def write(path):
    def f():
        fd = os.open(path, os.O_WRONLY)
        os.close(fd)
        return 0
    return f
for name, nr, args in syscalls:
    print(name, attempt(call(nr, args)))
for path in ["/proc/sys/kernel/hostname", "/proc/sysrq-trigger", "/sys/kernel/profiling",
             "/proc/1/exe", "/etc/passwd"]:
    print("write:" + path, attempt(write(path)))
# A process outside: the test runner, by its host pid.
outside = int(os.environ["OUTSIDE_PID"])
def signal0():
    os.kill(outside, 0)
    return 0
print("kill(outside, 0)", attempt(signal0))
print("ptrace(attach outside)", attempt(call(101, (16, outside, 0, 0))))
# The host's root through PID 1: a file only the host's /tmp has.
def stat():
    os.stat("/proc/1/root" + os.environ["HOST_MARKER"])
    return 0
print("stat:/proc/1/root/<host file>", attempt(stat))
"#;

/// What stops each row under the starter spec.
const EXPECTED: &[(&str, &str)] = &[
    ("mount", "seccomp"),
    ("umount2", "seccomp"),
    ("pivot_root", "seccomp"),
    ("unshare(user)", "seccomp"),
    ("unshare(mount)", "seccomp"),
    ("setns", "seccomp"),
    ("ptrace", "seccomp"),
    ("kexec_load", "seccomp"),
    ("init_module", "seccomp"),
    ("finit_module", "seccomp"),
    ("bpf", "seccomp"),
    ("perf_event_open", "seccomp"),
    ("userfaultfd", "seccomp"),
    ("io_uring_setup", "seccomp"),
    ("keyctl", "seccomp"),
    ("add_key", "seccomp"),
    ("request_key", "seccomp"),
    ("reboot", "seccomp"),
    ("swapon", "seccomp"),
    ("settimeofday", "seccomp"),
    ("clock_settime", "seccomp"),
    ("iopl", "seccomp"),
    ("ioperm", "seccomp"),
    ("acct", "seccomp"),
    ("open_by_handle_at", "seccomp"),
    // readonlyPaths /proc/sys and /proc/sysrq-trigger, the read-only
    // host (/sys, /etc): no capability opens them for writing.
    ("write:/proc/sys/kernel/hostname", "read-only mount"),
    ("write:/proc/sysrq-trigger", "read-only mount"),
    ("write:/sys/kernel/profiling", "read-only mount"),
    ("write:/etc/passwd", "read-only mount"),
    // The init is not dumpable: its /proc/1/exe is not ours to open.
    ("write:/proc/1/exe", "non-dumpable init"),
    // No process outside has a pid in the sandbox's PID namespace.
    ("kill(outside, 0)", "PID namespace"),
    ("ptrace(attach outside)", "seccomp"),
    // /proc/1 is the sandbox's own init: its root is the sandbox's.
    ("stat:/proc/1/root/<host file>", "PID namespace"),
];

/// The starter spec running the probe, with `caps` and with or without
/// its seccomp profile.
fn spec(caps: Option<&[&str]>, seccomp: bool) -> Value {
    let out = Command::new(isola_bin()).arg("spec").output().unwrap();
    let mut s: Value = serde_json::from_slice(&out.stdout).unwrap();
    s["process"]["args"] = json!(["python3", "-c", PROBE]);
    let env = s["process"]["env"].as_array_mut().unwrap();
    env.push(json!(format!("OUTSIDE_PID={}", std::process::id())));
    env.push(json!(format!("HOST_MARKER={}", host_marker().display())));
    if let Some(c) = caps {
        s["process"]["capabilities"] = json!({"bounding": c, "effective": c, "permitted": c});
    }
    if !seccomp {
        s["linux"].as_object_mut().unwrap().remove("seccomp");
    }
    s
}

fn run(spec: &Value) -> BTreeMap<String, i32> {
    let (code, out, err) = run_spec(spec, &[]);
    rows(code, &out, &err)
}

fn rows(code: i32, out: &str, err: &str) -> BTreeMap<String, i32> {
    assert_eq!(code, 0, "{out}\n{err}");
    out.lines()
        .map(|l| {
            let (name, errno) = l.rsplit_once(' ').expect("NAME ERRNO");
            (name.to_string(), errno.parse().expect("errno"))
        })
        .collect()
}

/// A file in the host's /tmp (a host-root sandbox has its own /tmp).
fn host_marker() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("isola-escape-marker-{}", std::process::id()));
    std::fs::write(&p, "host").unwrap();
    p
}

/// The barrier a row's three results point to.
fn barrier(name: &str, a: i32, b: i32, c: i32) -> &'static str {
    const EROFS: i32 = 30;
    const EACCES: i32 = 13;
    const ENOENT: i32 = 2;
    const ESRCH: i32 = 3;
    match (a, b, c) {
        (0, ..) => "nothing: it worked",
        (ESRCH, ESRCH, ESRCH) => "PID namespace",
        _ if name.starts_with("stat:/proc/1/root") && b == ENOENT && c == ENOENT => "PID namespace",
        _ if name.starts_with("write:") && a == EROFS && b == EROFS => "read-only mount",
        // With CAP_SYS_PTRACE the check passes and the read-only host
        // refuses the write instead (column B says so).
        _ if name == "write:/proc/1/exe" && a == EACCES => "non-dumpable init",
        (EPERM, EPERM, c) if c != EPERM => "seccomp",
        (_, b, _) if b != a => "capability",
        _ => "something else",
    }
}

#[test]
fn each_escape_is_stopped_by_the_barrier_the_table_names() {
    require_vm();
    let a = run(&spec(None, true));
    let b = run(&spec(Some(ALL_CAPS), true));
    let c = run(&spec(Some(ALL_CAPS), false));
    let mut table =
        String::from("| attempt | starter | + every capability | + no seccomp | barrier |\n");
    let mut wrong = Vec::new();
    for (name, want) in EXPECTED {
        let (ra, rb, rc) = (a[*name], b[*name], c[*name]);
        let got = barrier(name, ra, rb, rc);
        table += &format!("| {name} | {ra} | {rb} | {rc} | {got} |\n");
        if got != *want {
            wrong.push(format!("{name}: {got}, expected {want}"));
        }
    }
    eprintln!("{table}");
    assert!(wrong.is_empty(), "{}\n{table}", wrong.join("\n"));
    assert_eq!(a.len(), EXPECTED.len(), "rows not in the table: {a:?}");
    assert_clean();
}

/// What `/proc/kcore` is inside, and how much of it reads, with
/// CAP_SYS_RAWIO (which the real file needs): the mask is a bind of
/// /dev/null, so a character device 1:3 that reads nothing.
const KCORE: &str = r#"import os, stat
st = os.stat("/proc/kcore")
kind = "chr" if stat.S_ISCHR(st.st_mode) else "reg" if stat.S_ISREG(st.st_mode) else "other"
try:
    with open("/proc/kcore", "rb") as f:
        n = len(f.read(64))
except OSError as e:
    n = "error %d" % e.errno
print(kind, os.major(st.st_rdev), os.minor(st.st_rdev), n)
"#;

#[test]
fn the_masked_path_is_the_mask_itself_not_a_missing_capability() {
    require_vm();
    // The starter's capabilities and CAP_SYS_RAWIO.
    let mut s = spec(None, true);
    for set in ["bounding", "effective", "permitted"] {
        s["process"]["capabilities"][set]
            .as_array_mut()
            .expect("a capability set")
            .push(json!("CAP_SYS_RAWIO"));
    }
    s["process"]["args"] = json!(["python3", "-c", KCORE]);
    let (code, out, err) = run_spec(&s, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "chr 1 3 0", "{err}");
    // The control: without the mask the same capability reads the real
    // file, so the check above can tell.
    s["linux"]["maskedPaths"] = json!([]);
    let (code, out, err) = run_spec(&s, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "reg 0 0 64", "{err}");
    assert_clean();
}

/// A rootfs is the image author's, its symlinks may point anywhere: mount
/// targets and device nodes resolve inside it (as the sandbox will see
/// them), never onto the host. Without that, creating the mount points
/// makes directories and files on the host before anything is refused.
#[test]
fn rootfs_symlinks_cannot_lead_mount_targets_or_nodes_onto_the_host() {
    require_vm();
    let s = isola_tests::Scratch::new("symlink-escape");
    let host = s.path("host-side");
    std::fs::create_dir_all(&host).unwrap();
    let root = s.path("rootfs");
    for d in ["bin", "proc", "tmp", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let rel = host.strip_prefix("/").unwrap();
    std::os::unix::fs::symlink(&host, root.join("abs")).unwrap();
    let climb = std::path::Path::new("../../../../../../../../..").join(rel);
    std::os::unix::fs::symlink(&climb, root.join("climb")).unwrap();
    std::os::unix::fs::symlink(&host, root.join("dev/sub")).unwrap();
    let file = s.write("a-file", "bound\n");
    let spec = json!({
        "root": {"path": root},
        "process": {"args": ["/bin/busybox", "sh", "-c", "/bin/busybox cat /climb/file-here; /bin/busybox ls /abs"]},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/abs/tmpfs-here", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/climb/file-here", "type": "bind", "source": file, "options": ["bind", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}, {"type": "uts"}, {"type": "ipc"}],
            "devices": [{"path": "/dev/sub/escape-node", "type": "c", "major": 1, "minor": 3}]
        }
    });
    let (code, out, err) = run_spec(&spec, &[]);
    let left: Vec<_> = std::fs::read_dir(&host)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "made on the host through a rootfs symlink: {left:?}"
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("bound"), "the bind landed elsewhere: {out}");
    // Inside, the links lead where the sandbox sees their targets: the
    // /dev tmpfs, holding the mount points and the node.
    assert!(
        out.contains("tmpfs-here") && out.contains("escape-node"),
        "{out}"
    );
    assert_clean();
}

/// Rows only a rootless sandbox adds: what the device filter does for
/// root (a node of a real device), and files the user may not touch.
const USER_ROWS: &str = r#"
import stat
def mk():
    os.mknod("/tmp/blk", stat.S_IFBLK | 0o600, os.makedev(8, 0))
    return 0
print("mknod(block 8:0)", attempt(mk))
print("write:<root's file, bound writable>", attempt(write(os.environ["ROOT_FILE"])))
def read(path):
    def f():
        os.close(os.open(path, os.O_RDONLY))
        return 0
    return f
print("read:/etc/shadow", attempt(read("/etc/shadow")))
"#;

/// Rows that need a capability in the host's user namespace: with every
/// capability and no seccomp, root's sandbox reaches the kernel (the
/// harmless arguments fail there, or the call works); the user's gets
/// EPERM, because its capabilities are its own namespace's. (swapon,
/// iopl, ioperm, settimeofday and clock_settime read or check their
/// arguments before the capability: with arguments the probe does not
/// fix they cannot tell.)
const HOST_CAPABILITY_ROWS: &[&str] = &[
    "kexec_load",
    "init_module",
    "finit_module",
    "acct",
    "open_by_handle_at",
];

/// The escape suite as an unprivileged user, at its worst: every
/// capability and no seccomp profile. What stops each attempt is the
/// user's own rights (its user namespace, file permissions), never more.
#[test]
fn as_a_user_every_capability_and_no_seccomp_stays_within_the_users_rights() {
    require_vm();
    let u = user();
    let theirs = std::env::temp_dir().join(format!("isola-escape-root-{}", std::process::id()));
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("file"), "root's").unwrap();
    let mut s = spec(Some(ALL_CAPS), false);
    s["process"]["args"] = json!(["python3", "-c", format!("{PROBE}{USER_ROWS}")]);
    s["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!(format!("ROOT_FILE={}/file", theirs.display())));
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": theirs, "type": "bind", "source": theirs, "options": ["rbind", "rw"]}));
    let root = run(&s);
    // The starter's limits too, in a subtree delegated to the user.
    let d = isola_tests::rootless::Delegated::new("escape");
    let out = u.isola(
        Some(&d.login),
        &["run", "-"],
        &s.to_string(),
        std::time::Duration::from_secs(120),
    );
    let (code, stdout, stderr) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let users = rows(code, &stdout, &stderr);
    let _ = std::fs::remove_dir_all(&theirs);
    const EACCES: i32 = 13;
    const ENOENT: i32 = 2;
    const ESRCH: i32 = 3;
    let mut table = String::from("| attempt | root, every capability | user, every capability |\n");
    for (name, r) in &users {
        table += &format!(
            "| {name} | {} | {r} |\n",
            root.get(name).copied().unwrap_or(-1)
        );
    }
    eprintln!("{table}");
    let mut wrong = Vec::new();
    for name in HOST_CAPABILITY_ROWS {
        if users[*name] != EPERM || root[*name] == EPERM {
            wrong.push(format!(
                "{name}: the user's namespace should be what refuses it"
            ));
        }
    }
    let want = [
        ("mknod(block 8:0)", EPERM),
        ("write:<root's file, bound writable>", EACCES),
        ("read:/etc/shadow", EACCES),
        ("write:/proc/1/exe", EACCES),
        ("kill(outside, 0)", ESRCH),
        ("ptrace(attach outside)", ESRCH),
    ];
    for (name, errno) in want {
        if users[name] != errno {
            wrong.push(format!("{name}: {} (expected {errno})", users[name]));
        }
    }
    // The init's root is not the user's to enter (EACCES), or is the
    // sandbox's own (ENOENT).
    let init_root = users["stat:/proc/1/root/<host file>"];
    if ![EACCES, ENOENT].contains(&init_root) {
        wrong.push(format!("stat:/proc/1/root/<host file>: {init_root}"));
    }
    for name in [
        "write:/proc/sys/kernel/hostname",
        "write:/proc/sysrq-trigger",
        "write:/sys/kernel/profiling",
        "write:/etc/passwd",
    ] {
        if users[name] == 0 {
            wrong.push(format!("{name}: it worked"));
        }
    }
    assert!(wrong.is_empty(), "{}\n{table}", wrong.join("\n"));
    assert_clean();
}
