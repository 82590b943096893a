//! A classic-BPF code generator for seccomp filters.
//!
//! seccompiler emits one linear comparison per syscall: Docker's allow list
//! became 1504 instructions, which the kernel takes ~1.2 ms to convert and
//! JIT at every sandbox start, and which every syscall then walks. Here the
//! syscall numbers are split into intervals with the same outcome and found
//! by binary search: a few dozen instructions, ~9 comparisons per syscall.

use std::collections::BTreeMap;

/// `struct seccomp_data` offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u8) -> u32 {
    16 + 8 * i as u32
}
const fn off_arg_hi(i: u8) -> u32 {
    20 + 8 * i as u32
}

pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// x32 syscalls carry this bit in their number on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

pub(crate) const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub(crate) const RET_KILL_THREAD: u32 = 0;
pub(crate) const RET_TRAP: u32 = 0x0003_0000;
pub(crate) const RET_ERRNO: u32 = 0x0005_0000;
pub(crate) const RET_TRACE: u32 = 0x7ff0_0000;
pub(crate) const RET_LOG: u32 = 0x7ffc_0000;
pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;

// BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const ALU_AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// (arg & mask) == value
    MaskedEq(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cond {
    pub(crate) arg: u8,
    pub(crate) op: Op,
    pub(crate) value: u64,
}

/// When a syscall matches: always, or when any rule's conditions all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Match {
    Always,
    AnyOf(Vec<Vec<Cond>>),
}

/// One filter: `on_match` for the listed syscalls (per their `Match`),
/// `otherwise` for everything else. `rules` are x86_64's numbers; the other
/// ABIs of an x86_64 kernel have their own.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub(crate) rules: BTreeMap<u32, Match>,
    pub(crate) on_match: u32,
    pub(crate) otherwise: u32,
    /// i386 calls (AUDIT_ARCH_I386): by these rules, or killed when `None`.
    pub(crate) i386: Option<BTreeMap<u32, Match>>,
    pub(crate) x32: X32,
}

/// What x32 calls (x86_64's arch, numbers with `__X32_SYSCALL_BIT`) get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum X32 {
    /// No rule matches them: `otherwise` (a profile that names no
    /// architectures).
    Otherwise,
    /// Killed (a profile whose architectures leave x32 out, as libseccomp).
    Kill,
    /// These rules, keyed by x32 numbers *with* the bit.
    Rules(BTreeMap<u32, Match>),
}

/// AUDIT_ARCH_I386 (linux/audit.h).
pub(crate) const AUDIT_ARCH_I386: u32 = 0x4000_0003;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Leaf {
    Ret(u32),
    Conditional(u32),
}

impl Filter {
    pub(crate) fn compile(&self) -> Vec<libc::sock_filter> {
        // The blocks after the architecture check, each assuming the
        // syscall number in the accumulator and ending in returns.
        let native = self.tree_of(&self.rules);
        let x32 = match &self.x32 {
            X32::Otherwise => vec![stmt(RET_K, self.otherwise)],
            X32::Kill => vec![stmt(RET_K, RET_KILL_PROCESS)],
            X32::Rules(r) => self.tree_of(r),
        };
        let i386 = self.i386.as_ref().map(|r| {
            let mut b = vec![stmt(LD_W_ABS, OFF_NR)];
            b.extend(self.tree_of(r));
            b
        });
        let mut p = vec![stmt(LD_W_ABS, OFF_ARCH)];
        let dispatch = p.len();
        p.push(jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, 0, 0));
        let i386_ja = if i386.is_some() {
            p.push(jump(JMP_JEQ_K, AUDIT_ARCH_I386, 0, 1));
            p.push(stmt(JMP_JA, 0));
            Some(p.len() - 1)
        } else {
            None
        };
        p.push(stmt(RET_K, RET_KILL_PROCESS));
        p[dispatch].jt = u8::try_from(p.len() - dispatch - 1).expect("a short header");
        p.push(stmt(LD_W_ABS, OFF_NR));
        p.push(jump(JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        let x32_ja = p.len();
        p.push(stmt(JMP_JA, 0));
        p.extend(native);
        p[x32_ja].k = jump_offset(p.len() - x32_ja - 1);
        p.extend(x32);
        if let (Some(at), Some(block)) = (i386_ja, i386) {
            p[at].k = jump_offset(p.len() - at - 1);
            p.extend(block);
        }
        p
    }

    /// The binary search over `rules` (this filter's actions), as a block.
    fn tree_of(&self, rules: &BTreeMap<u32, Match>) -> Vec<libc::sock_filter> {
        let f = Filter {
            rules: rules.clone(),
            on_match: self.on_match,
            otherwise: self.otherwise,
            i386: None,
            x32: X32::Otherwise,
        };
        let mut p = Vec::new();
        f.tree(&f.intervals(), &mut p);
        p
    }

    /// The number line from 0 cut where the outcome changes: (start, leaf),
    /// neighbouring numbers with the same plain return merged.
    fn intervals(&self) -> Vec<(u32, Leaf)> {
        let mut out: Vec<(u32, Leaf)> = Vec::new();
        let mut push = |start: u32, leaf: Leaf| {
            let mergeable =
                matches!(leaf, Leaf::Ret(_)) && out.last().map(|(_, l)| l) == Some(&leaf);
            if !mergeable {
                out.push((start, leaf));
            }
        };
        let mut next = 0u32;
        for (&nr, m) in &self.rules {
            if nr > next {
                push(next, Leaf::Ret(self.otherwise));
            }
            push(
                nr,
                match m {
                    Match::Always => Leaf::Ret(self.on_match),
                    Match::AnyOf(_) => Leaf::Conditional(nr),
                },
            );
            next = nr + 1;
        }
        push(next, Leaf::Ret(self.otherwise));
        out
    }

    /// Binary search over the intervals; the accumulator holds the number.
    /// Each inner node is `jge K, 0, 1; ja RIGHT; <left…>; RIGHT: <right…>`,
    /// so no jump depends on the size of a subtree fitting in 8 bits.
    fn tree(&self, iv: &[(u32, Leaf)], p: &mut Vec<libc::sock_filter>) {
        if iv.len() == 1 {
            match &iv[0].1 {
                Leaf::Ret(r) => p.push(stmt(RET_K, *r)),
                Leaf::Conditional(nr) => self.conditional(*nr, p),
            }
            return;
        }
        let mid = iv.len() / 2;
        p.push(jump(JMP_JGE_K, iv[mid].0, 0, 1));
        let ja = p.len();
        p.push(stmt(JMP_JA, 0));
        self.tree(&iv[..mid], p);
        p[ja].k = jump_offset(p.len() - ja - 1);
        self.tree(&iv[mid..], p);
    }

    /// Rules of one syscall: the first whose conditions all hold returns
    /// `on_match`; none → `otherwise`. Clobbers the accumulator, which is
    /// fine: every path ends in a return.
    fn conditional(&self, nr: u32, p: &mut Vec<libc::sock_filter>) {
        let Some(Match::AnyOf(rules)) = self.rules.get(&nr) else {
            return;
        };
        for rule in rules {
            let mut body = Vec::new();
            // Each condition jumps to FAIL (the end of this rule) when false;
            // offsets are patched once the rule's length is known.
            let mut fails = Vec::new();
            for c in rule {
                cond(c, &mut body, &mut fails);
            }
            body.push(stmt(RET_K, self.on_match));
            let end = body.len();
            for (at, which) in fails {
                // A rule is at most six conditions of a few instructions.
                let off = u8::try_from(end - at - 1).expect("a rule fits in a short jump");
                if which {
                    body[at].jt = off;
                } else {
                    body[at].jf = off;
                }
            }
            p.extend(body);
        }
        p.push(stmt(RET_K, self.otherwise));
    }
}

/// The upper 32 bits of a 64-bit argument value (BPF loads 32 at a time).
fn high(v: u64) -> u32 {
    let [a, b, c, d, ..] = (v >> 32).to_le_bytes();
    u32::from_le_bytes([a, b, c, d])
}

/// The lower 32 bits.
fn low(v: u64) -> u32 {
    let [a, b, c, d, ..] = v.to_le_bytes();
    u32::from_le_bytes([a, b, c, d])
}

/// An unconditional jump's offset; a filter is at most 4096 instructions
/// (BPF_MAXINSNS), so any offset inside one fits.
fn jump_offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Emit a 64-bit comparison as 32-bit halves. `fails` collects (index,
/// jt?) of jumps that must go to the rule's end.
fn cond(c: &Cond, b: &mut Vec<libc::sock_filter>, fails: &mut Vec<(usize, bool)>) {
    let (hi, lo) = (high(c.value), low(c.value));
    let ld_hi = stmt(LD_W_ABS, off_arg_hi(c.arg));
    let ld_lo = stmt(LD_W_ABS, off_arg_lo(c.arg));
    match c.op {
        Op::Eq | Op::MaskedEq(_) => {
            let mask = if let Op::MaskedEq(m) = c.op {
                Some(m)
            } else {
                None
            };
            b.push(ld_hi);
            if let Some(m) = mask {
                b.push(stmt(ALU_AND_K, high(m)));
            }
            fails.push((b.len(), false));
            b.push(jump(JMP_JEQ_K, hi, 0, 0));
            b.push(ld_lo);
            if let Some(m) = mask {
                b.push(stmt(ALU_AND_K, low(m)));
            }
            fails.push((b.len(), false));
            b.push(jump(JMP_JEQ_K, lo, 0, 0));
        }
        Op::Ne => {
            // hi != H → holds (skip the low check); else low must differ.
            b.push(ld_hi);
            b.push(jump(JMP_JEQ_K, hi, 0, 2));
            b.push(ld_lo);
            fails.push((b.len(), true));
            b.push(jump(JMP_JEQ_K, lo, 0, 0));
        }
        Op::Gt | Op::Ge | Op::Lt | Op::Le => {
            // Unsigned: decide on the high word unless equal, then the low.
            b.push(ld_hi);
            let greater = matches!(c.op, Op::Gt | Op::Ge);
            // hi > H: holds for Gt/Ge, fails for Lt/Le.
            if greater {
                b.push(jump(JMP_JGT_K, hi, 3, 0));
            } else {
                fails.push((b.len(), true));
                b.push(jump(JMP_JGT_K, hi, 0, 0));
            }
            // hi < H (not equal here): fails for Gt/Ge, holds for Lt/Le.
            if greater {
                fails.push((b.len(), false));
                b.push(jump(JMP_JEQ_K, hi, 0, 0));
            } else {
                b.push(jump(JMP_JEQ_K, hi, 0, 2));
            }
            b.push(ld_lo);
            match c.op {
                Op::Gt => {
                    fails.push((b.len(), false));
                    b.push(jump(JMP_JGT_K, lo, 0, 0));
                }
                Op::Ge => {
                    fails.push((b.len(), false));
                    b.push(jump(JMP_JGE_K, lo, 0, 0));
                }
                Op::Lt => {
                    fails.push((b.len(), true));
                    b.push(jump(JMP_JGE_K, lo, 0, 0));
                }
                _ => {
                    fails.push((b.len(), true));
                    b.push(jump(JMP_JGT_K, lo, 0, 0));
                }
            }
        }
    }
}

/// A classic-BPF interpreter for what [`Filter::compile`] emits, so tests
/// can check programs against the filter's meaning.
#[cfg(test)]
pub(crate) fn run(p: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            OFF_NR => nr,
            OFF_ARCH => arch,
            o if o >= 16 => {
                let i = ((o - 16) / 8) as usize;
                if (o - 16) % 8 == 0 {
                    low(args[i])
                } else {
                    high(args[i])
                }
            }
            _ => 0,
        }
    };
    let (mut pc, mut a) = (0usize, 0u32);
    loop {
        let i = p[pc];
        pc += 1;
        match i.code {
            LD_W_ABS => a = word(i.k),
            ALU_AND_K => a &= i.k,
            RET_K => return i.k,
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                let t = match i.code {
                    JMP_JEQ_K => a == i.k,
                    JMP_JGT_K => a > i.k,
                    _ => a >= i.k,
                };
                pc += if t { i.jt } else { i.jf } as usize;
            }
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = AUDIT_ARCH_X86_64;

    fn allow(nrs: &[u32]) -> Filter {
        Filter {
            rules: nrs.iter().map(|n| (*n, Match::Always)).collect(),
            on_match: RET_ALLOW,
            otherwise: RET_ERRNO | 1,
            i386: None,
            x32: X32::Otherwise,
        }
    }

    #[test]
    fn binary_search_matches_exactly_the_listed_numbers() {
        let listed: Vec<u32> = (0..460).filter(|n| n % 3 != 0 || n % 7 == 0).collect();
        let f = allow(&listed);
        let p = f.compile();
        assert!(p.len() < 1000, "{} instructions", p.len());
        for nr in 0..500 {
            let want = if listed.contains(&nr) {
                RET_ALLOW
            } else {
                RET_ERRNO | 1
            };
            assert_eq!(run(&p, A, nr, [0; 6]), want, "nr {nr}");
        }
        assert_eq!(run(&p, A, X32_SYSCALL_BIT | 1, [0; 6]), RET_ERRNO | 1);
        assert_eq!(
            run(&p, 0x4000_0003, 1, [0; 6]),
            RET_KILL_PROCESS,
            "foreign arch"
        );
    }

    #[test]
    fn contiguous_ranges_stay_small() {
        let f = allow(&(0..300).collect::<Vec<_>>());
        assert!(f.compile().len() < 16);
    }

    #[test]
    fn conditions_compare_64_bit_values() {
        let v = 0x1_0000_0005u64;
        for (op, cases) in [
            (Op::Eq, vec![(v, true), (v + 1, false), (5, false)]),
            (Op::Ne, vec![(v, false), (5, true), (v + (1 << 32), true)]),
            (
                Op::Gt,
                vec![(v, false), (v + 1, true), (v + (1 << 32), true), (6, false)],
            ),
            (Op::Ge, vec![(v, true), (v - 1, false), (u64::MAX, true)]),
            (
                Op::Lt,
                vec![(v, false), (v - 1, true), (6, true), (v + (1 << 32), false)],
            ),
            (Op::Le, vec![(v, true), (v + 1, false), (0, true)]),
            (
                Op::MaskedEq(0xff_0000_00ff),
                vec![(0x5, false), (0x1_1111_1105, true), (0x1_0000_0006, false)],
            ),
        ] {
            let f = Filter {
                rules: [(
                    56,
                    Match::AnyOf(vec![vec![Cond {
                        arg: 2,
                        op,
                        value: v,
                    }]]),
                )]
                .into(),
                on_match: RET_ALLOW,
                otherwise: RET_ERRNO | 38,
                i386: None,
                x32: X32::Otherwise,
            };
            let p = f.compile();
            for (arg, holds) in cases {
                let got = run(&p, A, 56, [0, 0, arg, 0, 0, 0]);
                assert_eq!(got == RET_ALLOW, holds, "{op:?} {v:#x} vs {arg:#x}");
            }
            assert_eq!(run(&p, A, 57, [0, 0, v, 0, 0, 0]), RET_ERRNO | 38);
        }
    }

    #[test]
    fn rules_are_or_and_conditions_and() {
        let rule = |a: u64, b: u64| {
            vec![
                Cond {
                    arg: 0,
                    op: Op::Eq,
                    value: a,
                },
                Cond {
                    arg: 1,
                    op: Op::Eq,
                    value: b,
                },
            ]
        };
        let f = Filter {
            rules: [
                (10, Match::AnyOf(vec![rule(1, 2), rule(3, 4)])),
                (11, Match::Always),
            ]
            .into(),
            on_match: RET_ALLOW,
            otherwise: RET_KILL_PROCESS,
            i386: None,
            x32: X32::Otherwise,
        };
        let p = f.compile();
        assert_eq!(run(&p, A, 10, [1, 2, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&p, A, 10, [3, 4, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&p, A, 10, [1, 4, 0, 0, 0, 0]), RET_KILL_PROCESS);
        assert_eq!(run(&p, A, 11, [9; 6]), RET_ALLOW);
        assert_eq!(run(&p, A, 9, [1, 2, 0, 0, 0, 0]), RET_KILL_PROCESS);
    }
}
