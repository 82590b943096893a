//! OCI `linux.seccomp` → classic BPF programs ([`bpf`]), compiled once at
//! plan time.
//!
//! A BPF filter here has one match and one mismatch action, an OCI profile
//! any number; so a profile becomes stacked filters whose combined result is
//! the profile's. The kernel runs every filter and keeps the most severe
//! answer (kill > trap > errno > trace > log > allow):
//!   * a base filter returns the default action for every syscall no rule
//!     names and allows the named ones;
//!   * one filter per other action returns that action for its rules and
//!     allows everything else.
//!
//! A syscall matching rules of several actions gets the most severe of them.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction as Act, LinuxSeccompOperator as Op, LinuxSyscall,
};

use crate::error::SpecError;

mod abi;
pub(crate) mod bpf;
#[cfg(test)]
mod oracle_tests;
mod syscalls_i386;
mod syscalls_x32;
mod syscalls_x86_64;

use bpf::{Cond, Filter};

const FIELD: &str = "linux.seccomp";
const ARCH: &str = "x86_64";

/// A compiled filter, in the kernel's own instruction type.
pub(crate) type Program = Vec<libc::sock_filter>;

/// The syscall number of `name` on x86_64.
pub(crate) fn syscall_nr(name: &str) -> Option<u32> {
    let t = syscalls_x86_64::SYSCALLS;
    t.binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| t[i].1)
}

/// Whether the running architecture has this syscall.
pub(crate) fn known_syscall(name: &str) -> bool {
    syscall_nr(name).is_some()
}

/// Compile the profile into the programs to install, in order. With
/// `skip_unknown`, names this architecture lacks are left out (OCI
/// clients send one profile for every architecture, i386's calls among
/// them, as libseccomp takes it); otherwise such a name is refused as a
/// typo.
pub(crate) fn compile(
    profile: &LinuxSeccomp,
    skip_unknown: bool,
) -> Result<Vec<Program>, SpecError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SpecError::new(
            FIELD,
            "seccomp filters are only supported on x86_64",
        ));
    }
    if profile.listener_path().is_some() {
        return Err(SpecError::new(
            format!("{FIELD}.listenerPath"),
            "seccomp notify is not supported",
        ));
    }
    if profile.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(SpecError::new(
            format!("{FIELD}.flags"),
            "seccomp filter flags are not supported",
        ));
    }
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        &format!("{FIELD}.defaultAction"),
    )?;
    let syscalls: &[LinuxSyscall] = profile.syscalls().as_deref().unwrap_or(&[]);
    let abis = abi::Abis::of(profile);
    let unknown: BTreeSet<&str> = syscalls
        .iter()
        .flat_map(|s| s.names())
        .map(String::as_str)
        .filter(|n| !abis.knows(n))
        .collect();
    if !unknown.is_empty() && !skip_unknown {
        let list: Vec<&str> = unknown.into_iter().collect();
        return Err(SpecError::new(
            format!("{FIELD}.syscalls"),
            format!("unknown syscall names for {ARCH}: {}", list.join(", ")),
        ));
    }

    // Rules per action; `all` collects every rule for the base filter.
    let mut by_action: BTreeMap<u32, abi::Rules> = BTreeMap::new();
    let mut all = abi::Rules::default();
    for (i, sc) in syscalls.iter().enumerate() {
        let field = format!("{FIELD}.syscalls[{i}]");
        if sc.names().is_empty() {
            return Err(SpecError::new(
                format!("{field}.names"),
                "must name at least one syscall",
            ));
        }
        let act = action(sc.action(), sc.errno_ret(), &format!("{field}.action"))?;
        let conds = conditions(sc, &field)?;
        for name in sc.names() {
            all.add(abis, name, &conds);
            if act != bpf::RET_ALLOW {
                by_action.entry(act).or_default().add(abis, name, &conds);
            }
        }
    }

    let filter = |rules: &abi::Rules, on_match, otherwise| {
        let (i386, x32) = rules.others(abis);
        Filter {
            rules: rules.native.clone(),
            on_match,
            otherwise,
            i386,
            x32,
        }
    };
    let mut filters = Vec::new();
    if default != bpf::RET_ALLOW {
        if all.is_empty() {
            return Err(SpecError::new(
                format!("{FIELD}.syscalls"),
                "no syscall is allowed: the sandbox could not even exec its payload",
            ));
        }
        filters.push(filter(&all, bpf::RET_ALLOW, default));
    }
    // Also for an action equal to the default: the base filter allowed
    // these syscalls, so only this filter gives them their answer.
    for (act, rules) in &by_action {
        filters.push(filter(rules, *act, bpf::RET_ALLOW));
    }
    Ok(filters.iter().map(Filter::compile).collect())
}

fn action(a: Act, errno: Option<u32>, field: &str) -> Result<u32, SpecError> {
    let data = |v: u32| v & 0xffff;
    Ok(match a {
        Act::ScmpActAllow => bpf::RET_ALLOW,
        Act::ScmpActErrno => bpf::RET_ERRNO | data(errno.unwrap_or(libc::EPERM as u32)),
        Act::ScmpActKill | Act::ScmpActKillThread => bpf::RET_KILL_THREAD,
        Act::ScmpActKillProcess => bpf::RET_KILL_PROCESS,
        Act::ScmpActTrap => bpf::RET_TRAP,
        Act::ScmpActLog => bpf::RET_LOG,
        Act::ScmpActTrace => bpf::RET_TRACE | data(errno.unwrap_or(0)),
        Act::ScmpActNotify => {
            return Err(SpecError::new(field, "SCMP_ACT_NOTIFY is not supported"))
        }
    })
}

fn conditions(sc: &LinuxSyscall, field: &str) -> Result<Option<Vec<Cond>>, SpecError> {
    let Some(args) = sc.args().as_ref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    if args.len() > 6 {
        return Err(SpecError::new(
            format!("{field}.args"),
            format!("{} conditions: at most 6", args.len()),
        ));
    }
    let mut out = Vec::new();
    for (j, a) in args.iter().enumerate() {
        let arg = u8::try_from(a.index())
            .ok()
            .filter(|i| *i <= 5)
            .ok_or_else(|| {
                SpecError::new(
                    format!("{field}.args[{j}].index"),
                    format!("{}: must be 0-5", a.index()),
                )
            })?;
        let (op, value) = match a.op() {
            Op::ScmpCmpNe => (bpf::Op::Ne, a.value()),
            Op::ScmpCmpLt => (bpf::Op::Lt, a.value()),
            Op::ScmpCmpLe => (bpf::Op::Le, a.value()),
            Op::ScmpCmpEq => (bpf::Op::Eq, a.value()),
            Op::ScmpCmpGe => (bpf::Op::Ge, a.value()),
            Op::ScmpCmpGt => (bpf::Op::Gt, a.value()),
            // OCI: value is the mask, valueTwo the expected masked value.
            Op::ScmpCmpMaskedEq => (bpf::Op::MaskedEq(a.value()), a.value_two().unwrap_or(0)),
        };
        out.push(Cond { arg, op, value });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn profile(j: Value) -> LinuxSeccomp {
        serde_json::from_value(j).expect("profile parses")
    }

    fn eval(progs: &[Program], name: &str, args: [u64; 6]) -> u32 {
        // The kernel keeps the most severe answer of all filters.
        let rank = |r: u32| match r & 0xffff_0000 {
            0x8000_0000 => 0,
            0 => 1,
            bpf::RET_TRAP => 2,
            bpf::RET_ERRNO => 3,
            bpf::RET_TRACE => 4,
            bpf::RET_LOG => 5,
            _ => 6,
        };
        let nr = syscall_nr(name).expect("known");
        progs
            .iter()
            .map(|p| bpf::run(p, bpf::AUDIT_ARCH_X86_64, nr, args))
            .min_by_key(|r| rank(*r))
            .expect("a filter")
    }

    #[test]
    fn table_is_sorted_and_complete() {
        let t = syscalls_x86_64::SYSCALLS;
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_nr("read"), Some(0));
        assert_eq!(syscall_nr("clone3"), Some(435));
        assert_eq!(syscall_nr("fchmodat2"), Some(452));
        assert_eq!(syscall_nr("nope"), None);
    }

    #[test]
    fn allow_list_is_one_small_filter() {
        let p = profile(
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]}),
        );
        let progs = compile(&p, false).unwrap();
        assert_eq!(progs.len(), 1);
        assert_eq!(eval(&progs, "read", [0; 6]), bpf::RET_ALLOW);
        assert_eq!(eval(&progs, "mount", [0; 6]), bpf::RET_ERRNO | 1);
    }

    #[test]
    fn several_actions_stack_to_the_profiles_meaning() {
        let p = profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"}
        ]}));
        let progs = compile(&p, false).unwrap();
        assert_eq!(progs.len(), 3);
        assert_eq!(eval(&progs, "read", [0; 6]), bpf::RET_ALLOW);
        assert_eq!(eval(&progs, "clone3", [0; 6]), bpf::RET_ERRNO | 38);
        assert_eq!(eval(&progs, "reboot", [0; 6]), bpf::RET_KILL_PROCESS);
        assert_eq!(eval(&progs, "mount", [0; 6]), bpf::RET_ERRNO | 1);
        let p = profile(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]}),
        );
        let progs = compile(&p, false).unwrap();
        assert_eq!(progs.len(), 1);
        assert_eq!(eval(&progs, "mount", [0; 6]), bpf::RET_ERRNO | 1);
        assert_eq!(eval(&progs, "read", [0; 6]), bpf::RET_ALLOW);
    }

    #[test]
    fn unknown_names_are_all_named() {
        let p = profile(
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "frobnicate", "zork"], "action": "SCMP_ACT_ALLOW"}]}),
        );
        let e = compile(&p, false).unwrap_err();
        assert_eq!(e.field, "linux.seccomp.syscalls");
        assert_eq!(
            e.message,
            "unknown syscall names for x86_64: frobnicate, zork"
        );
        // OCI clients send every architecture's names: the others are skipped.
        let progs = compile(&p, true).unwrap();
        assert_eq!(progs.len(), 1);
    }

    #[test]
    fn arguments_are_checked() {
        let p = profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
        ]}));
        let progs = compile(&p, false).unwrap();
        assert_eq!(progs.len(), 1);
        let sigchld = libc::SIGCHLD as u64;
        assert_eq!(
            eval(&progs, "clone", [sigchld, 0, 0, 0, 0, 0]),
            bpf::RET_ALLOW
        );
        assert_eq!(
            eval(
                &progs,
                "clone",
                [sigchld | libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]
            ),
            bpf::RET_ERRNO | 1
        );
        assert_eq!(
            eval(&progs, "personality", [8, 0, 0, 0, 0, 0]),
            bpf::RET_ALLOW
        );
        assert_eq!(
            eval(&progs, "personality", [9, 0, 0, 0, 0, 0]),
            bpf::RET_ERRNO | 1
        );
    }

    #[test]
    fn nothing_allowed_is_refused() {
        let p = profile(json!({"defaultAction": "SCMP_ACT_KILL"}));
        assert!(compile(&p, false).is_err());
    }

    /// The kernel agrees with the interpreter: install a filter in a forked
    /// child (no_new_privs, so no root needed) and watch real syscalls.
    #[test]
    fn the_kernel_enforces_compiled_filters() {
        use nix::sys::wait::{waitpid, WaitStatus};
        let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["dup"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EXDEV},
            {"names": ["dup2"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOTTY,
             "args": [{"index": 1, "value": 100, "op": "SCMP_CMP_EQ"}]}
        ]}));
        let progs = compile(&p, false).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: the child only installs the filter, makes two syscalls and
        // _exits; it allocates nothing another test thread could hold.
        let forked = unsafe { crate::sys::fork() }.expect("fork");
        match forked {
            nix::unistd::ForkResult::Child => {
                let ok = nix::sys::prctl::set_no_new_privs().is_ok()
                    && progs
                        .iter()
                        .all(|p| crate::sys::seccomp_set_filter(p).is_ok());
                let stdin = std::io::stdin();
                let code = if !ok {
                    1
                } else if nix::unistd::dup(&stdin).err() != Some(nix::errno::Errno::EXDEV) {
                    2
                } else if crate::sys::dup2_raw(0, 100) != Err(nix::errno::Errno::ENOTTY) {
                    3
                } else if crate::sys::dup2_raw(0, 101).is_err() {
                    4
                } else {
                    0
                };
                crate::sys::exit_now(code)
            }
            nix::unistd::ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn the_starter_profile_is_small() {
        let spec = crate::spec::starter::starter_spec();
        let p: LinuxSeccomp = serde_json::from_value(spec["linux"]["seccomp"].clone()).unwrap();
        let progs = compile(&p, false).unwrap();
        let total: usize = progs.iter().map(Vec::len).sum();
        assert!(total < 300, "{total} instructions");
        assert_eq!(eval(&progs, "mount", [0; 6]), bpf::RET_ERRNO | 1);
        assert_eq!(eval(&progs, "clone3", [0; 6]), bpf::RET_ERRNO | 38);
        assert_eq!(eval(&progs, "openat", [0; 6]), bpf::RET_ALLOW);
    }
}
