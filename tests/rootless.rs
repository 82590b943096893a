//! Running isola as an unprivileged user inside the VM: a user the tests
//! make (passwd, group, subuid and subgid entries bound over the VM's
//! read-only /etc, once per VM), commands run as it through `setpriv`,
//! and a cgroup subtree delegated to it the way systemd delegates one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The test user.
pub const UID: u32 = 1001;
pub const NAME: &str = "isolatest";
/// Its /etc/subuid and /etc/subgid range.
pub const SUB_START: u32 = 200_000;
pub const SUB_COUNT: u32 = 65_536;

pub struct User {
    /// HOME, XDG_RUNTIME_DIR: directories of the user's own.
    pub home: PathBuf,
    pub runtime: PathBuf,
}

/// The test user, made on first use.
pub fn user() -> &'static User {
    static USER: OnceLock<User> = OnceLock::new();
    USER.get_or_init(|| {
        let base = PathBuf::from(format!("/tmp/isola-rootless-{}", std::process::id()));
        let etc = base.join("etc");
        std::fs::create_dir_all(&etc).expect("mkdir etc");
        add_line(
            &etc,
            "passwd",
            &format!(
                "{NAME}:x:{UID}:{UID}::{}:/bin/sh",
                base.join("home").display()
            ),
        );
        add_line(&etc, "group", &format!("{NAME}:x:{UID}:"));
        add_line(&etc, "subuid", &format!("{NAME}:{SUB_START}:{SUB_COUNT}"));
        add_line(&etc, "subgid", &format!("{NAME}:{SUB_START}:{SUB_COUNT}"));
        let user = User {
            home: base.join("home"),
            runtime: base.join("run"),
        };
        for d in [&base, &user.home, &user.runtime] {
            std::fs::create_dir_all(d).expect("mkdir");
            give(d);
        }
        std::fs::set_permissions(&user.runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        user
    })
}

/// `/etc/NAME` with `line` added, bound over the original (unless a test
/// binary before us in this VM did it).
fn add_line(etc: &Path, name: &str, line: &str) {
    let real = Path::new("/etc").join(name);
    let text = std::fs::read_to_string(&real).unwrap_or_default();
    if text.lines().any(|l| l.starts_with(&format!("{NAME}:"))) {
        return;
    }
    let copy = etc.join(name);
    std::fs::write(&copy, format!("{text}{line}\n")).expect("write etc copy");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    if !real.exists() {
        std::fs::write(&real, "").ok();
    }
    nix::mount::mount(
        Some(&copy),
        &real,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("bind {} over {}: {e}", copy.display(), real.display()));
}

/// Make `p` the test user's.
pub fn give(p: &Path) {
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(UID)),
        Some(nix::unistd::Gid::from_raw(UID)),
    )
    .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

impl User {
    /// A scratch directory of the user's.
    pub fn dir(&self, tag: &str) -> PathBuf {
        let d = self.home.join(tag);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        give(&d);
        d
    }

    /// `PROGRAM ARGS` as the user (a clean environment: HOME,
    /// XDG_RUNTIME_DIR, PATH), first moved into cgroup `cgroup` when given
    /// (by root, as a login manager places a session).
    pub fn command(&self, cgroup: Option<&Path>, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        let into = cgroup.map(|g| g.display().to_string()).unwrap_or_default();
        c.args([
            "-c",
            r#"[ -z "$1" ] || echo $$ > "$1/cgroup.procs" || exit 99; shift; exec "$@""#,
            "sh",
            &into,
            "setpriv",
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--clear-groups",
            "--",
        ]);
        c.arg(program).args(args);
        c.env_clear()
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .current_dir(&self.home);
        c
    }

    /// `isola up STACK` as the user (in `cgroup` when given), its output
    /// piped: read it once it ended.
    pub fn spawn_up(&self, cgroup: Option<&Path>, stack: &str) -> std::process::Child {
        self.command(cgroup, &crate::isola_bin(), &["up", stack])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn isola up as the user")
    }

    /// `isola ARGS` as the user, `stdin` fed in, at most `limit`.
    pub fn isola(
        &self,
        cgroup: Option<&Path>,
        args: &[&str],
        stdin: &str,
        limit: Duration,
    ) -> Output {
        let mut child = self
            .command(cgroup, &crate::isola_bin(), args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn isola as the user");
        if let Some(mut si) = child.stdin.take() {
            use std::io::Write;
            let _ = si.write_all(stdin.as_bytes());
        }
        crate::wait_output(child, limit)
    }
}

/// A cgroup subtree delegated to the user as systemd delegates one: a
/// group of root's with cpu, memory and pids (not io) for its children,
/// and below it the user's group (the directory and its `cgroup.procs`,
/// `cgroup.subtree_control` and `cgroup.threads` chowned), holding the
/// user's session in `login`. Killed and removed on drop.
pub struct Delegated {
    top: PathBuf,
    /// The user's group.
    pub user: PathBuf,
    /// Where the user's commands run.
    pub login: PathBuf,
}

impl Delegated {
    pub fn new(tag: &str) -> Delegated {
        let cg = Path::new("/sys/fs/cgroup");
        std::fs::write(cg.join("cgroup.subtree_control"), "+cpu +memory +pids")
            .expect("enable controllers at the root");
        let top = cg.join(format!("isola-rootless-{tag}-{}", std::process::id()));
        let user = top.join("user");
        let login = user.join("login");
        std::fs::create_dir(&top).expect("mkdir top");
        std::fs::write(top.join("cgroup.subtree_control"), "+cpu +memory +pids")
            .expect("controllers for the user");
        std::fs::create_dir(&user).expect("mkdir user");
        for f in [
            "",
            "cgroup.procs",
            "cgroup.subtree_control",
            "cgroup.threads",
        ] {
            give(&user.join(f));
        }
        std::fs::create_dir(&login).expect("mkdir login");
        for f in ["", "cgroup.procs"] {
            give(&login.join(f));
        }
        Delegated { top, user, login }
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        let _ = std::fs::write(self.top.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(200));
        remove_tree(&self.top);
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Panics with its output when `isola up` has ended (it should not have).
pub fn assert_up(up: &mut std::process::Child) {
    if up.try_wait().expect("try_wait").is_some() {
        let out = std::mem::replace(up, Command::new("true").spawn().expect("spawn true"));
        let out = out.wait_with_output().expect("wait isola up");
        panic!(
            "isola up exited: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// Wait (10 s at most) until no process of the test user is left.
pub fn wait_no_user_processes() {
    let t = std::time::Instant::now();
    while !user_processes().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            user_processes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Processes of the test user (its uid or its subordinate ids) still
/// alive: none should be, after a test.
pub fn user_processes() -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next().map(str::to_string));
        let ours = uid
            .and_then(|u| u.parse::<u32>().ok())
            .is_some_and(|u| u == UID || (SUB_START..SUB_START + SUB_COUNT).contains(&u));
        if ours {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            found.push(format!("{pid}: {cmd} ({})", stat.trim()));
        }
    }
    found
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `GET /` over HTTP/1.0 on 127.0.0.1:`port`: the whole answer.
pub fn http_get(port: u16) -> String {
    try_http_get(port).expect("GET /")
}

/// [`http_get`], or why not (while a stack comes up: pasta accepts on the
/// host's side before anything in the stack's namespace answers).
pub fn try_http_get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    Ok(s)
}

/// An uplink for pasta to copy: the VM has no network device, and pasta
/// takes the host's addresses and routes from its default route. Removed
/// on drop.
pub struct Uplink(());

impl Uplink {
    pub fn up() -> Uplink {
        let ip = |args: &str| {
            let st = std::process::Command::new("sh")
                .args(["-c", &format!("ip {args}")])
                .status()
                .unwrap();
            assert!(st.success(), "ip {args}");
        };
        ip("link add isola-up0 type veth peer name isola-up1");
        ip("addr add 10.250.0.2/24 dev isola-up0");
        ip("link set isola-up0 up");
        ip("link set isola-up1 up");
        ip("route add default via 10.250.0.1");
        Uplink(())
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", "isola-up0"])
            .status();
    }
}

/// A busybox rootfs in `dir` (`bin/busybox`, `bin/sh`).
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    root
}
