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
];

/// The starter spec running the probe, with `caps` and with or without
/// its seccomp profile.
fn spec(caps: Option<&[&str]>, seccomp: bool) -> Value {
    let out = Command::new(isola_bin()).arg("spec").output().unwrap();
    let mut s: Value = serde_json::from_slice(&out.stdout).unwrap();
    s["process"]["args"] = json!(["python3", "-c", PROBE]);
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
    assert_eq!(code, 0, "{out}\n{err}");
    out.lines()
        .map(|l| {
            let (name, errno) = l.rsplit_once(' ').expect("NAME ERRNO");
            (name.to_string(), errno.parse().expect("errno"))
        })
        .collect()
}

/// The barrier a row's three results point to.
fn barrier(name: &str, a: i32, b: i32, c: i32) -> &'static str {
    const EROFS: i32 = 30;
    const EACCES: i32 = 13;
    match (a, b, c) {
        (0, ..) => "nothing: it worked",
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
