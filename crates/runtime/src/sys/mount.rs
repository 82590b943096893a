//! mount_setattr(2): change a mount's flags, recursively if asked, in one
//! call (a remount of each mount of a tree would race with the tree).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

/// `MOUNT_ATTR_RDONLY` of `struct mount_attr`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `AT_RECURSIVE`: the mount and every mount below it.
const AT_RECURSIVE: libc::c_uint = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Make the mount at `path` read-only (`readonly`) or writable, with every
/// mount below it when `recursive`. ENOSYS before Linux 5.12.
pub(crate) fn set_readonly(path: &Path, readonly: bool, recursive: bool) -> Result<(), Errno> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let attr = MountAttr {
        attr_set: if readonly { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if readonly { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `c` is a NUL-terminated path and `attr` a valid mount_attr of
    // the size passed; both outlive the call, which only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}
