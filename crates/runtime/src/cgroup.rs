//! cgroup v2, written through its files. Two halves: [`limits`] turns OCI
//! resources into (file, value) writes (pure, unit-tested), and [`Cgroup`]
//! owns one sandbox's directory: create, write, kill, remove.

use std::fs;
use std::io::{ErrorKind, Read, Seek};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::error::SpecError;

mod controllers;
pub mod delegated;
mod stats;
pub use stats::{StatFiles, Stats};

pub(crate) mod devices;
pub mod limits;
use controllers::make_parents;
use limits::CgroupFile;

pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup/isola";
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// Controllers every sandbox gets so its usage can be read, limits or not.
const BASE_CONTROLLERS: &[&str] = &["cpu", "memory", "io", "pids"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{0} is not a cgroup v2 (unified) hierarchy: this host uses cgroup v1 or hybrid; isola needs cgroup v2 for resource limits (run with --no-cgroup and no linux.resources to skip cgroups)")]
    NotUnified(PathBuf),
    #[error("--cgroup-root {0}: must be an absolute path inside {CGROUP_MOUNT}")]
    BadRoot(PathBuf),
    #[error("a sandbox named {0:?} is already running (cgroup {1} is populated)")]
    InUse(String, PathBuf),
    #[error(
        "controller {controller} is not available in {path} (cgroup.controllers: {available:?})"
    )]
    Controller {
        controller: String,
        path: PathBuf,
        available: String,
    },
    #[error("controller {controllers} is not delegated to this user: enabling it takes a write to {path}, which is not theirs (delegate it too, e.g. systemd's Delegate=yes on a unit that has it)")]
    NotDelegated { controllers: String, path: PathBuf },
    #[error("{path}: device filter (BPF_PROG_TYPE_CGROUP_DEVICE): {step}: {source}")]
    DeviceFilter {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} still has processes after cgroup.kill")]
    Busy(PathBuf),
}

impl CgroupError {
    /// The errno behind a failed file operation, if that is what it was.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            CgroupError::Io { source, .. } | CgroupError::Write { source, .. } => {
                source.raw_os_error().map(Errno::from_raw)
            }
            _ => None,
        }
    }

    /// Problems the user can fix by changing the command line.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            CgroupError::NotUnified(_)
                | CgroupError::BadRoot(_)
                | CgroupError::InUse(..)
                | CgroupError::NotDelegated { .. }
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Refuse a v1 or hybrid host: `/sys/fs/cgroup` itself must be cgroup2.
pub fn check_unified() -> Result<(), CgroupError> {
    let mount = Path::new(CGROUP_MOUNT);
    match nix::sys::statfs::statfs(mount) {
        Ok(st) if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Ok(()),
        _ => Err(CgroupError::NotUnified(mount.to_owned())),
    }
}

/// Check a `--cgroup-root` without touching the filesystem: a group below
/// `/sys/fs/cgroup` (a supervisor owns its root group and all below it).
pub fn check_root(root: &Path) -> Result<(), CgroupError> {
    if root == Path::new(CGROUP_MOUNT) {
        return Err(CgroupError::BadRoot(root.to_owned()));
    }
    check_parent(root)
}

/// Check the parent of one sandbox's group: `/sys/fs/cgroup` itself too
/// (an OCI `cgroupsPath` of `/name`, as runc and crun take it).
fn check_parent(root: &Path) -> Result<(), CgroupError> {
    let ok = root.is_absolute()
        && root.starts_with(CGROUP_MOUNT)
        && !root
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if ok {
        Ok(())
    } else {
        Err(CgroupError::BadRoot(root.to_owned()))
    }
}

/// One sandbox's cgroup directory, held open so the sandbox can be cloned
/// straight into it (CLONE_INTO_CGROUP).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// Held only until the sandbox was cloned into it: a supervisor of many
    /// sandboxes must not spend an fd per group.
    dir: Option<OwnedFd>,
}

impl Cgroup {
    /// Create `root/name`, enable the controllers it needs in every parent
    /// between `/sys/fs/cgroup` and it, and write `files`. On any failure the
    /// new directory is removed again.
    pub fn create(root: &Path, name: &str, files: &[CgroupFile]) -> Result<Cgroup, CgroupError> {
        check_unified()?;
        check_parent(root)?;
        let mut controllers: Vec<String> = BASE_CONTROLLERS.iter().map(|s| s.to_string()).collect();
        for f in files {
            if let Some(c) = f.controller() {
                if c != "cgroup" && !controllers.iter().any(|x| x == c) {
                    controllers.push(c.to_string());
                }
            }
        }
        make_parents(root, &controllers, files)?;
        let path = root.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // Left by a run that was killed before it could clean up?
                if populated(&path)? {
                    return Err(CgroupError::InUse(name.to_string(), path));
                }
                fs::remove_dir(&path).map_err(io_err(&path))?;
                fs::create_dir(&path).map_err(io_err(&path))?;
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        let dir = match open_dir(&path) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = fs::remove_dir(&path);
                return Err(e);
            }
        };
        let cg = Cgroup {
            path,
            dir: Some(dir),
        };
        for f in files {
            if let Err(e) = cg.write(&f.file, &f.value) {
                let _ = fs::remove_dir(&cg.path);
                return Err(e);
            }
        }
        Ok(cg)
    }

    /// Take over an existing group, e.g. one a killed supervisor left.
    pub fn open(path: &Path) -> Result<Cgroup, CgroupError> {
        if !path.is_dir() {
            return Err(io_err(path)(std::io::Error::from(ErrorKind::NotFound)));
        }
        Ok(Cgroup {
            path: path.to_owned(),
            dir: None,
        })
    }

    /// Kill and remove every group directly below `parent` (stale sandboxes
    /// of a supervisor that died), then `parent` itself when asked. Returns
    /// the names removed.
    pub fn remove_children(parent: &Path, and_parent: bool) -> Result<Vec<String>, CgroupError> {
        let mut removed = Vec::new();
        let entries = match fs::read_dir(parent) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(io_err(parent)(e)),
        };
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                Cgroup::open(&e.path())?.destroy()?;
                removed.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        if and_parent {
            match fs::remove_dir(parent) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(parent)(e)),
            }
        }
        Ok(removed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory fd for CLONE_INTO_CGROUP, until [`Cgroup::release_dir`].
    pub fn dir_fd(&self) -> Option<BorrowedFd<'_>> {
        self.dir.as_ref().map(|d| d.as_fd())
    }

    /// Attach the device filter (see [`devices`]): from now on a
    /// process in this group opens or creates only the device nodes the
    /// program allows. Before any process is in the group.
    pub(crate) fn attach_device_filter(&self, prog: &[devices::Insn]) -> Result<(), CgroupError> {
        let fail = |step: &'static str| {
            move |e: Errno| CgroupError::DeviceFilter {
                path: self.path.clone(),
                step,
                source: e,
            }
        };
        let dir = self.dir_fd().ok_or(Errno::EBADF).map_err(fail("attach"))?;
        let prog = crate::sys::load_device_filter(prog).map_err(fail("load"))?;
        crate::sys::attach_device_filter(prog.as_fd(), dir).map_err(fail("attach"))
    }

    pub fn release_dir(&mut self) {
        self.dir = None;
    }

    pub fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let p = self.path.join(file);
        fs::write(&p, value).map_err(|source| CgroupError::Write {
            path: p,
            value: value.to_string(),
            source,
        })
    }

    pub fn read(&self, file: &str) -> Result<String, CgroupError> {
        let p = self.path.join(file);
        fs::read_to_string(&p).map_err(io_err(&p))
    }

    /// A `key value` line of a flat-keyed file such as memory.events.
    pub fn read_key(&self, file: &str, key: &str) -> Option<u64> {
        let text = self.read(file).ok()?;
        flat_key(&text, key)
    }

    /// Number of processes the kernel's OOM killer killed in this group.
    pub fn oom_kills(&self) -> u64 {
        self.read_key("memory.events", "oom_kill").unwrap_or(0)
    }

    pub fn memory_max(&self) -> Option<String> {
        self.read("memory.max").ok().map(|s| s.trim().to_string())
    }

    /// Add a process (fallback when clone3 cannot place the child itself).
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// SIGKILL every process in the group (and its descendants), without
    /// waiting for them to die (see [`Cgroup::events_path`]).
    pub fn kill(&self) -> Result<(), CgroupError> {
        self.write("cgroup.kill", "1")
    }

    /// `cgroup.events`: its `populated` line says whether any process is
    /// left; the kernel signals every change (POLLPRI, inotify IN_MODIFY).
    pub fn events_path(&self) -> PathBuf {
        self.path.join("cgroup.events")
    }

    /// `memory.events`: its `oom_kill` count changes with every OOM kill
    /// (inotify IN_MODIFY, rate-limited by the kernel).
    pub fn memory_events_path(&self) -> PathBuf {
        self.path.join("memory.events")
    }

    pub fn is_populated(&self) -> Result<bool, CgroupError> {
        populated(&self.path)
    }

    /// One attempt to remove the (empty) directory: `Ok(false)` while the
    /// kernel still calls it busy (the last task can still be on its way
    /// out after `populated 0`), for the caller to try again.
    pub fn try_remove(&self) -> Result<bool, CgroupError> {
        match fs::remove_dir(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
            Err(e) => Err(io_err(&self.path)(e)),
        }
    }

    /// SIGKILL every process in the group, then wait (event-driven) until it
    /// is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        if !populated(&self.path)? {
            return Ok(());
        }
        self.kill()?;
        wait_unpopulated(&self.path, timeout)
    }

    /// Kill what is left and remove the directory, waiting for it (for
    /// `isola run` and error paths; the supervisor waits by event instead).
    pub fn destroy(self) -> Result<(), CgroupError> {
        self.kill_all(DESTROY_PATIENCE)?;
        let deadline = Instant::now() + DESTROY_PATIENCE;
        loop {
            if self.try_remove()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Busy(self.path.clone()));
            }
            self.kill_all(Duration::from_secs(1))?;
            std::thread::sleep(REMOVE_RETRY);
        }
    }
}

/// How long [`Cgroup::destroy`] waits for the group to empty, and then
/// for the kernel to let it be removed.
const DESTROY_PATIENCE: Duration = Duration::from_secs(10);
/// Pause between removal attempts of a group the kernel still calls busy.
pub const REMOVE_RETRY: Duration = Duration::from_millis(5);

/// A cgroup's directory, for `CLONE_INTO_CGROUP`.
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd, CgroupError> {
    open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(|e| io_err(path)(e.into()))
}

/// Create `root` (a parent of sandbox groups, such as a stack's group) and
/// its ancestors, with the base controllers delegated.
pub fn create_parents(root: &Path) -> Result<(), CgroupError> {
    check_unified()?;
    check_root(root)?;
    let controllers: Vec<String> = BASE_CONTROLLERS.iter().map(|s| s.to_string()).collect();
    make_parents(root, &controllers, &[])
}

fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

fn populated(path: &Path) -> Result<bool, CgroupError> {
    let p = path.join("cgroup.events");
    let text = fs::read_to_string(&p).map_err(io_err(&p))?;
    Ok(flat_key(&text, "populated").unwrap_or(0) != 0)
}

/// cgroup.events signals POLLPRI on every change: wait on it, no polling loop.
fn wait_unpopulated(path: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let p = path.join("cgroup.events");
    let mut f = fs::File::open(&p).map_err(io_err(&p))?;
    let deadline = Instant::now() + timeout;
    let mut buf = String::new();
    loop {
        buf.clear();
        f.rewind().map_err(io_err(&p))?;
        f.read_to_string(&mut buf).map_err(io_err(&p))?;
        if flat_key(&buf, "populated").unwrap_or(0) == 0 {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CgroupError::Busy(path.to_owned()));
        }
        let mut fds = [nix::poll::PollFd::new(
            f.as_fd(),
            nix::poll::PollFlags::POLLPRI,
        )];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(io_err(&p)(e.into())),
        }
    }
}

/// `raw` with every character a cgroup directory name may not hold
/// replaced by `_` (stack names from file stems, default sandbox names).
pub fn sanitize_name(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The longest directory name cgroupfs takes (NAME_MAX): OCI clients name
/// groups after 64-character container ids with a prefix.
const NAME_MAX: usize = 255;

/// Validate a name used as a cgroup directory (and in messages).
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            "name",
            format!("{name:?}: use 1-{NAME_MAX} characters of A-Z a-z 0-9 - _ ."),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keys() {
        let t = "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n";
        assert_eq!(flat_key(t, "oom_kill"), Some(1));
        assert_eq!(flat_key(t, "oom"), Some(2));
        assert_eq!(flat_key(t, "nope"), None);
    }

    #[test]
    fn roots_must_be_inside_the_mount() {
        assert!(check_root(Path::new("/sys/fs/cgroup/isola")).is_ok());
        assert!(check_root(Path::new("/sys/fs/cgroup")).is_err());
        assert!(check_root(Path::new("isola")).is_err());
        assert!(check_root(Path::new("/tmp/x")).is_err());
        assert!(check_root(Path::new("/sys/fs/cgroup/../x")).is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("web-1_a.b").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"x".repeat(NAME_MAX)).is_ok());
        assert!(check_name(&"x".repeat(NAME_MAX + 1)).is_err());
    }
}
