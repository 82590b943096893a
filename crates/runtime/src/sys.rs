//! The thin syscall layer: every `unsafe` block of the runtime lives here,
//! each with the reason it is sound. Everything else uses these safe wrappers
//! or nix. Wrappers whose soundness depends on the caller (fork-like calls,
//! raw pointers, closing fds other code may own) are `unsafe fn` with a
//! `# Safety` section; their few callers allow `unsafe_code` at the call,
//! with a SAFETY comment.
#![allow(unsafe_code)]

mod arena;
mod bpf;
mod helper;
pub(crate) mod mount;
mod shared_arena;
pub(crate) use arena::{drop_inherited_heap, release_setup_memory, use_fresh_arena};
pub use arena::{release_free_memory, Allocator};
pub(crate) use bpf::{attach_device_filter, load_device_filter};
pub(crate) use helper::check_single_threaded;
pub use helper::{as_helper, fork_keeper, spawn_helper, spawn_sibling_helper, spawn_with_fds_at};
pub use shared_arena::in_shared_arena;

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

/// `struct clone_args` of clone3(2), kernel 5.7 layout (with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What clone3 returned, on each side of the fork.
pub(crate) enum Forked {
    Child,
    Parent { pid: Pid, pidfd: OwnedFd },
}

/// Fork (no shared memory: fork semantics) into new namespaces, straight into
/// `cgroup` when given, holding the child by a pidfd.
///
/// The caller must be single-threaded: the child continues in a copy of the
/// address space and may allocate.
///
/// With `sibling` the child is our parent's child (CLONE_PARENT): a spawner
/// process starts sandboxes that its parent then waits for.
///
/// # Safety
/// The calling process must be single-threaded (no other thread may hold a
/// lock the child needs, the allocator's included), and the child must
/// leave by [`exit_now`] or exec, never by returning into frames whose
/// destructors would act on the parent's resources a second time.
pub(crate) unsafe fn clone3(
    ns_flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
    sibling: bool,
) -> Result<Forked, Errno> {
    let mut pidfd: libc::c_int = -1;
    let parent = if sibling {
        libc::CLONE_PARENT as u64
    } else {
        0
    };
    let mut args = CloneArgs {
        flags: ns_flags | parent | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        // With CLONE_PARENT the kernel takes our own exit signal (SIGCHLD to
        // our parent) and refuses one given here.
        exit_signal: if sibling { 0 } else { SIGCHLD },
        ..Default::default()
    };
    if let Some(cg) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = u64::try_from(cg.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    }
    // SAFETY: args is a valid, fully initialised clone_args whose size we
    // pass; pidfd points to a live c_int the kernel fills in. Without
    // CLONE_VM the child gets its own copy of memory, like fork(2); the
    // caller guarantees no other thread holds locks the child could need.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: Pid::from_raw(i32::try_from(pid).map_err(|_| Errno::EOVERFLOW)?),
            // SAFETY: on success the kernel stored a new, owned fd here.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// clone_args.exit_signal: the usual SIGCHLD (17 on Linux).
const SIGCHLD: u64 = libc::SIGCHLD.unsigned_abs() as u64;
/// ifr_flags' IFF_UP (1), in the field's type.
const IFF_UP: libc::c_short = 1;

/// Send `sig` to the process behind `pidfd` (no pid-reuse race).
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    // SAFETY: plain syscall on a borrowed, open fd; null siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// pidfd_open(2): a pidfd for an existing process.
pub(crate) fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = RawFd::try_from(Errno::result(r)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: on success the kernel returned a new fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Mark every fd from `first` up close-on-exec except those in `keep`
/// (sorted ascending): fds passed to the payload cross the exec, nothing
/// else does. Syscalls only (it runs in a vfork child).
pub(crate) fn cloexec_from_except(first: RawFd, keep: &[RawFd]) -> Result<(), Errno> {
    let mut from = first;
    for &k in keep.iter().filter(|k| **k >= first) {
        if k > from {
            cloexec_range(from, k - 1)?;
        }
        from = k + 1;
    }
    cloexec_range(from, RawFd::MAX)
}

fn cloexec_range(first: RawFd, last: RawFd) -> Result<(), Errno> {
    let (Ok(first), Ok(last)) = (libc::c_uint::try_from(first), libc::c_uint::try_from(last))
    else {
        return Err(Errno::EBADF);
    };
    // SAFETY: with CLOSE_RANGE_CLOEXEC the kernel only sets a flag on the
    // descriptors; no fd is closed under a Rust owner.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            last,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(r).map(drop)
}

/// Put `sources[k]` at fd `targets[k]` (without close-on-exec), whatever
/// the numbers: each source is first copied above every target, so no
/// placement overwrites a source still to be placed. Each of `held` (fds
/// the init keeps for itself) is moved above the targets too when it sits
/// on one; `held` then says where they are.
///
/// # Safety
/// Only in a freshly cloned child (the init) that owns these fds by number
/// only: their Rust owners, if any, live on in the parent.
pub(crate) unsafe fn place_fds(
    sources: &[RawFd],
    targets: &[RawFd],
    held: &mut [RawFd],
) -> Result<(), Errno> {
    let above = targets.iter().copied().max().unwrap_or(2) + 1;
    let dup_above = |fd: RawFd| -> Result<RawFd, Errno> {
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor; nothing is closed.
        Errno::result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) })
    };
    let mut high = Vec::with_capacity(sources.len());
    for &s in sources {
        high.push(dup_above(s)?);
    }
    for h in held.iter_mut() {
        if targets.contains(h) {
            *h = dup_above(*h)?;
        }
    }
    for (&h, &t) in high.iter().zip(targets) {
        // SAFETY: dup2 replaces descriptor `t`, which no Rust object in this
        // child owns (our contract).
        Errno::result(unsafe { libc::dup2(h, t) })?;
    }
    for &h in &high {
        // SAFETY: `h` is a copy made above, owned by nothing else.
        unsafe { libc::close(h) };
    }
    Ok(())
}

/// Close every fd from 3 up except `keep`: the init starts with only stdio
/// and its sync socket, whatever the host process had open.
///
/// # Safety
/// Only in a freshly forked child that never uses, and never drops, the
/// Rust owners of the fds it closes (they belong to the parent's copy).
pub(crate) unsafe fn close_fds_except(keep: RawFd) -> Result<(), Errno> {
    // SAFETY: our own contract, passed on.
    unsafe { close_fds_except_all(&[keep]) }
}

/// [`close_fds_except`] keeping every fd of `keep`.
///
/// # Safety
/// As [`close_fds_except`].
pub(crate) unsafe fn close_fds_except_all(keep: &[RawFd]) -> Result<(), Errno> {
    let close = |first: libc::c_uint, last: libc::c_uint| -> Result<(), Errno> {
        if first > last {
            return Ok(());
        }
        // SAFETY: called first thing in a freshly forked child (the init,
        // a spawner) that never returns into its parent's frames, before any
        // Rust object there uses an fd other than `keep` and stdio; the
        // owners of these fds live on in the parent's copy only.
        Errno::result(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
    };
    let mut sorted: Vec<libc::c_uint> = Vec::with_capacity(keep.len());
    for &k in keep {
        sorted.push(libc::c_uint::try_from(k).map_err(|_| Errno::EBADF)?);
    }
    sorted.sort_unstable();
    let mut from: libc::c_uint = 3;
    for k in sorted.into_iter().filter(|k| *k >= 3) {
        close(from, k.saturating_sub(1))?;
        from = k + 1;
    }
    close(from, libc::c_uint::MAX)
}

/// dup2(2) onto a stdio slot in a freshly cloned child (the fds are raw
/// because the parent's owners of them live on in the parent).
pub(crate) fn dup2_raw(fd: RawFd, target: RawFd) -> Result<(), Errno> {
    if fd == target {
        return Ok(());
    }
    // SAFETY: dup2 only replaces the descriptor number `target`, which in
    // the child is stdio and owned by no Rust object.
    Errno::result(unsafe { libc::dup2(fd, target) }).map(drop)
}

/// fork(2).
///
/// # Safety
/// As [`clone3`]: a single-threaded caller, and a child that leaves by
/// [`exit_now`] or exec.
pub(crate) unsafe fn fork() -> Result<nix::unistd::ForkResult, Errno> {
    // SAFETY: the caller's contract is fork's own.
    unsafe { nix::unistd::fork() }
}

/// Run `child` in a new process that borrows our memory until it execs or
/// exits (CLONE_VM | CLONE_VFORK, what posix_spawn does); we are suspended
/// meanwhile. Unlike fork, nothing of the address space is copied and the
/// exec has no copy to tear down; both cost in proportion to the process,
/// and the init is a fork of a supervisor that may hold a thousand
/// services. `child` returns the exit code for when its exec failed.
///
/// # Safety
/// `child` runs on our memory while we are suspended: it must only make
/// syscalls — no allocation, no lock, no panic, no write to memory we use
/// after it — and end in exec or return (we `_exit` it).
pub(crate) unsafe fn vfork_exec<F: FnMut() -> i32>(mut child: F) -> Result<Pid, Errno> {
    extern "C" fn trampoline<F: FnMut() -> i32>(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `&mut F` below; the parent is suspended
        // (CLONE_VFORK) until we exec or exit, so it outlives this call.
        let f = unsafe { &mut *(arg as *mut F) };
        exit_now(f())
    }
    let mut stack = vec![0u8; 64 * 1024];
    let top = stack.as_mut_ptr_range().end as usize & !15;
    // SAFETY: the child runs `trampoline` on its own 64 KiB stack (16-byte
    // aligned top), which stays allocated until clone returns, i.e. until
    // the child has exec'd or exited; `child` is a live `&mut F`.
    let pid = unsafe {
        libc::clone(
            trampoline::<F>,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut child as *mut F as *mut libc::c_void,
        )
    };
    drop(stack);
    Errno::result(pid).map(Pid::from_raw)
}

/// execve(2) with prepared, null-terminated pointer arrays (no allocation:
/// usable in a [`vfork_exec`] child). Returns only on failure.
///
/// # Safety
/// Every pointer in `argv` and `envp` but the final null must point to a
/// NUL-terminated string that lives across the call.
pub(crate) unsafe fn execve_prepared(
    path: &std::ffi::CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> Errno {
    if argv.last() != Some(&std::ptr::null()) || envp.last() != Some(&std::ptr::null()) {
        return Errno::EINVAL;
    }
    // SAFETY: both arrays end in NULL (checked); the caller guarantees the
    // strings they point to.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::last()
}

/// Own a descriptor the kernel just installed for us from an SCM_RIGHTS
/// message (only [`crate::ipc::fdpass::receive`] calls this).
pub(crate) fn adopt_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: SCM_RIGHTS descriptors are new entries in our fd table,
    // created by the recvmsg that returned them; nothing else owns them.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Own a descriptor a freshly cloned child inherited by number.
///
/// # Safety
/// `fd` is open, and its Rust owner (if any) lives in the parent's copy of
/// memory and is never used or dropped in this process: only in a child
/// that leaves by exec or [`exit_now`] (the init).
pub(crate) unsafe fn adopt_inherited_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: our contract: nothing else in this process owns `fd`.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Make the terminal on stdin the controlling terminal of the calling
/// process, which has just become a session leader (setsid).
pub(crate) fn set_controlling_tty() -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an int argument and touches no memory of ours.
    Errno::result(unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0) }).map(drop)
}

/// Install a classic BPF seccomp filter on the calling thread.
/// Without no_new_privs the caller needs CAP_SYS_ADMIN (the OCI order when
/// `noNewPrivileges` is false).
/// `prctl(PR_CAPBSET_DROP, cap)` for a capability number the `caps` crate
/// may not name; EINVAL when the kernel has no such capability.
pub(crate) fn capbset_drop(cap: u32) -> Result<(), Errno> {
    // SAFETY: PR_CAPBSET_DROP takes a plain integer and touches no memory
    // of ours.
    Errno::result(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) })
        .map(drop)
}

pub(crate) fn seccomp_set_filter(prog: &[libc::sock_filter]) -> Result<(), Errno> {
    let len = u16::try_from(prog.len()).map_err(|_| Errno::E2BIG)?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points to `len` valid instructions that outlive the call;
    // the kernel copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    Errno::result(r).map(drop)
}

/// Bring an interface (here: `lo` of a fresh network namespace) up.
pub(crate) fn set_link_up(name: &CStr) -> Result<(), Errno> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.to_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(Errno::EINVAL);
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own; the fd is open.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the union's flags member was just written by the kernel.
    unsafe { req.ifr_ifru.ifru_flags |= IFF_UP };
    // SAFETY: as above, SIOCSIFFLAGS reads the ifreq we own.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

/// Reset every catchable signal to its default action: ignored signals stay
/// ignored across exec (Rust ignores SIGPIPE), which a payload must not inherit.
pub(crate) fn reset_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL has no memory-safety preconditions;
        // errors (invalid signal numbers) are harmless and ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// `_exit(2)`: leave a forked child without running the parent's atexit
/// handlers or flushing its copied stdio buffers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `getsockopt(fd, level, name)` into `v` (up to its size: what the
/// kernel does not fill keeps its value).
fn getsockopt_into<T: Copy>(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    v: &mut T,
) -> Result<(), Errno> {
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<T>()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `v` is a plain value of `len` bytes, borrowed for the call;
    // the kernel writes at most `len` bytes into it, and the callers' `T`
    // are integers or libc's repr(C) structs of integers, valid for any
    // bits.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_mut(v).cast(),
            &mut len,
        )
    };
    Errno::result(r).map(drop)
}

/// A TCP socket's `tcp_info` (for a listener, `tcpi_unacked` is its accept
/// queue and `tcpi_sacked` its backlog).
pub(crate) fn tcp_info(fd: BorrowedFd<'_>) -> Result<libc::tcp_info, Errno> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    getsockopt_into(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    Ok(info)
}

/// A socket's `SO_MEMINFO` counters (`SK_MEMINFO_*`, in the kernel's
/// order; the ninth is its drops).
pub(crate) fn socket_meminfo(fd: BorrowedFd<'_>) -> Result<[u32; 16], Errno> {
    let mut m = [0u32; 16];
    getsockopt_into(fd, libc::SOL_SOCKET, libc::SO_MEMINFO, &mut m)?;
    Ok(m)
}

/// Own a descriptor this process got by number across its own exec (a
/// supervisor's upgrade), after checking it is open. Only
/// [`crate::ipc::handover`] calls this, once per process, for the numbers
/// the process image before the exec wrote down, each once: they were
/// open when this image began, and they are not close-on-exec (checked),
/// which no fd this image opened is — so nothing else here owns them.
pub(crate) fn own_fd_across_exec(fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: F_GETFD only reads the fd's flags; EBADF when it is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // Inherited fds crossed the exec, so they are not close-on-exec; every
    // fd this image opened itself is (std and nix open with O_CLOEXEC):
    // one of those is never taken for an inherited one.
    if Errno::result(flags)? & libc::FD_CLOEXEC != 0 {
        return Err(Errno::EBADF);
    }
    // SAFETY: open (checked just now) and, by the contract above, owned by
    // nothing else in this process image.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Clear or set close-on-exec on an fd this process owns by number (the
/// fds an upgrade hands over, and back if the exec fails).
pub(crate) fn set_cloexec_raw(fd: RawFd, on: bool) -> Result<(), Errno> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD takes an int and touches no memory; a closed fd is EBADF.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, flag) }).map(drop)
}
