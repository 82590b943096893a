//! The three ABIs an x86_64 kernel runs — x86_64, i386 (`int 0x80`, 32-bit
//! binaries) and x32 (x86_64's arch with `__X32_SYSCALL_BIT` in the
//! number) — each with its own syscall numbers. A profile's
//! `architectures` says which of them get its verdicts (OCI clients list
//! `SCMP_ARCH_X86_64`, `SCMP_ARCH_X86`, `SCMP_ARCH_X32`), as libseccomp
//! does: a listed ABI's calls are matched by name in its own table; i386
//! calls of a profile that does not list X86 are killed, and so are x32
//! calls when `architectures` is given without X32. Without
//! `architectures`, x32 numbers match no rule (the default action).

use std::collections::BTreeMap;

use oci_spec::runtime::{Arch, LinuxSeccomp};

use super::bpf::{Cond, Match, X32};
use super::syscalls_i386::SYSCALLS_I386;
use super::syscalls_x32::SYSCALLS_X32;
use super::syscalls_x86_64::SYSCALLS;

const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn lookup(t: &[(&str, u32)], name: &str) -> Option<u32> {
    t.binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| t[i].1)
}

/// Which ABIs a profile covers beyond x86_64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Abis {
    i386: bool,
    /// `None`: the profile names no architectures.
    x32: Option<bool>,
}

impl Abis {
    pub(crate) fn of(p: &LinuxSeccomp) -> Abis {
        match p.architectures().as_deref() {
            None | Some([]) => Abis {
                i386: false,
                x32: None,
            },
            Some(list) => Abis {
                i386: list.contains(&Arch::ScmpArchX86),
                x32: Some(list.contains(&Arch::ScmpArchX32)),
            },
        }
    }

    /// Whether `name` is a syscall of any ABI the profile covers.
    pub(crate) fn knows(self, name: &str) -> bool {
        lookup(SYSCALLS, name).is_some()
            || (self.i386 && lookup(SYSCALLS_I386, name).is_some())
            || (self.x32 == Some(true) && lookup(SYSCALLS_X32, name).is_some())
    }
}

/// Rules keyed by each ABI's numbers.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub(crate) native: BTreeMap<u32, Match>,
    i386: BTreeMap<u32, Match>,
    x32: BTreeMap<u32, Match>,
}

impl Rules {
    /// Add `name`'s rule in every covered ABI that has it.
    pub(crate) fn add(&mut self, abis: Abis, name: &str, conds: &Option<Vec<Cond>>) {
        if let Some(nr) = lookup(SYSCALLS, name) {
            add_rule(&mut self.native, nr, conds.clone());
        }
        if abis.i386 {
            if let Some(nr) = lookup(SYSCALLS_I386, name) {
                add_rule(&mut self.i386, nr, conds.clone());
            }
        }
        if abis.x32 == Some(true) {
            if let Some(nr) = lookup(SYSCALLS_X32, name) {
                add_rule(&mut self.x32, nr | X32_SYSCALL_BIT, conds.clone());
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.native.is_empty() && self.i386.is_empty() && self.x32.is_empty()
    }

    /// The other ABIs' parts of a filter: (i386, x32).
    pub(crate) fn others(&self, abis: Abis) -> (Option<BTreeMap<u32, Match>>, X32) {
        let i386 = abis.i386.then(|| self.i386.clone());
        let x32 = match abis.x32 {
            None => X32::Otherwise,
            Some(false) => X32::Kill,
            Some(true) => X32::Rules(self.x32.clone()),
        };
        (i386, x32)
    }
}

/// An unconditional rule for a syscall wins over conditional ones.
pub(crate) fn add_rule(map: &mut BTreeMap<u32, Match>, nr: u32, conds: Option<Vec<Cond>>) {
    match (map.get_mut(&nr), conds) {
        (Some(Match::Always), _) => {}
        (Some(m), None) => *m = Match::Always,
        (Some(Match::AnyOf(rules)), Some(c)) => rules.push(c),
        (None, None) => {
            map.insert(nr, Match::Always);
        }
        (None, Some(c)) => {
            map.insert(nr, Match::AnyOf(vec![c]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::bpf::{
        self, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS,
    };
    use super::X32_SYSCALL_BIT;
    use serde_json::json;

    /// AUDIT_ARCH_ARM: an ABI no x86_64 kernel runs.
    const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

    fn verdicts(profile: serde_json::Value) -> impl Fn(u32, u32) -> u32 {
        let p: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(profile).unwrap();
        // OCI's reading: names of ABIs not listed (socketcall) are skipped.
        let progs = super::super::compile(&p, true).unwrap();
        move |arch, nr| {
            // The kernel's rule for stacked filters: the most severe wins.
            progs
                .iter()
                .map(|prog| bpf::run(prog, arch, nr, [0; 6]))
                .min_by_key(|r| (r & 0xffff_0000).cast_signed())
                .unwrap()
        }
    }

    fn profile(arches: Option<&[&str]>) -> serde_json::Value {
        let mut p = json!({
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "syscalls": [
                {"names": ["read", "socketcall"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_KILL_PROCESS"}
            ]
        });
        if let Some(a) = arches {
            p["architectures"] = json!(a);
        }
        p
    }

    #[test]
    fn listed_abis_get_the_profiles_verdicts_by_their_own_numbers() {
        let v = verdicts(profile(Some(&[
            "SCMP_ARCH_X86_64",
            "SCMP_ARCH_X86",
            "SCMP_ARCH_X32",
        ])));
        let eperm = RET_ERRNO | 1;
        // read: x86_64 0, i386 3, x32 0; socketcall exists on i386 only (102).
        assert_eq!(v(AUDIT_ARCH_X86_64, 0), RET_ALLOW);
        assert_eq!(v(AUDIT_ARCH_I386, 3), RET_ALLOW);
        assert_eq!(v(AUDIT_ARCH_I386, 102), RET_ALLOW);
        assert_eq!(v(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT), RET_ALLOW);
        // write: x86_64 1, i386 4, x32 1 — the default.
        assert_eq!(v(AUDIT_ARCH_X86_64, 1), eperm);
        assert_eq!(v(AUDIT_ARCH_I386, 4), eperm);
        assert_eq!(v(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 1), eperm);
        // mount: x86_64 165, i386 21, x32 165 — the rule's kill.
        assert_eq!(v(AUDIT_ARCH_X86_64, 165), RET_KILL_PROCESS);
        assert_eq!(v(AUDIT_ARCH_I386, 21), RET_KILL_PROCESS);
        assert_eq!(
            v(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 165),
            RET_KILL_PROCESS
        );
        // i386's number 0 is restart_syscall, not read: the default.
        assert_eq!(v(AUDIT_ARCH_I386, 0), eperm);
        assert_eq!(v(AUDIT_ARCH_ARM, 3), RET_KILL_PROCESS);
    }

    #[test]
    fn unlisted_abis_are_killed_and_no_list_keeps_x32_at_the_default() {
        let v = verdicts(profile(Some(&["SCMP_ARCH_X86_64"])));
        assert_eq!(v(AUDIT_ARCH_X86_64, 0), RET_ALLOW);
        assert_eq!(v(AUDIT_ARCH_I386, 3), RET_KILL_PROCESS);
        assert_eq!(v(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT), RET_KILL_PROCESS);
        let v = verdicts(profile(None));
        assert_eq!(v(AUDIT_ARCH_I386, 3), RET_KILL_PROCESS);
        assert_eq!(v(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT), RET_ERRNO | 1);
    }
}
