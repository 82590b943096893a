//! bpf(2) for the device cgroup filter: load a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program and attach it to a cgroup.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::cgroup::devices::Insn;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const LICENSE: &std::ffi::CStr = c"GPL";

/// The fields of `union bpf_attr` that BPF_PROG_LOAD reads (the kernel
/// wants the rest of what it knows zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The fields of `union bpf_attr` that BPF_PROG_ATTACH reads.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn fd_u32(fd: RawFd) -> Result<u32, Errno> {
    u32::try_from(fd).map_err(|_| Errno::EBADF)
}

/// Load a device filter program; the verifier checks it here.
pub(crate) fn load_device_filter(prog: &[Insn]) -> Result<OwnedFd, Errno> {
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len()).map_err(|_| Errno::E2BIG)?,
        insns: prog.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        ..ProgLoad::default()
    };
    let size = std::mem::size_of::<ProgLoad>();
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute of `size` bytes whose
    // pointers (the program, the license) outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoad, size) };
    let fd = RawFd::try_from(Errno::result(r)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: on success the kernel returned a new fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attach `prog` to the cgroup `cgroup` (a directory fd) as its only
/// device filter. It stays attached when `prog` is closed, until the cgroup
/// is removed.
pub(crate) fn attach_device_filter(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
) -> Result<(), Errno> {
    let attr = ProgAttach {
        target_fd: fd_u32(cgroup.as_raw_fd())?,
        attach_bpf_fd: fd_u32(prog.as_raw_fd())?,
        attach_type: BPF_CGROUP_DEVICE,
        ..ProgAttach::default()
    };
    let size = std::mem::size_of::<ProgAttach>();
    // SAFETY: `attr` is a valid BPF_PROG_ATTACH attribute of `size` bytes with
    // integer fields only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttach,
            size,
        )
    };
    Errno::result(r).map(drop)
}
