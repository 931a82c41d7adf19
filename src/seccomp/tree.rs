//! A filter laid out as a binary search over syscall numbers, with each syscall's argument
//! checks compiled from the lists' own description of them (`Args`).
//!
//! Installing a filter costs the kernel in proportion to its length (it translates and
//! JIT-compiles it) and to how far each syscall number goes into it (it runs the filter once
//! for every number, to cache those it allows whatever the arguments). seccompiler lays a
//! filter out as one comparison per syscall, in a row (about 0.8 ms here for 200
//! instructions), and each argument check as a rule of its own: a load, a comparison and a
//! return per allowed value. Here a search tree over the numbers leads to each syscall's
//! checks, which load an argument once and compare it with every allowed value, jumping
//! straight to the verdict. Any number goes through about log2(n) comparisons, and a filter
//! is about a third as long as seccompiler's would be. The unit tests (mod.rs) check that
//! every filter decides exactly as seccompiler's layout of the same rules
//! (`lists::rules_for`) does.
//!
//! A conditional jump reaches at most 255 instructions ahead. In a filter that short, the
//! tree's comparisons jump straight to their targets; a longer one goes through unconditional
//! jumps (three instructions per syscall instead of one).

use std::collections::BTreeMap;

use seccompiler::{sock_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use super::lists::Args;

/// The kernel's limit on a filter's length.
const MAX_LEN: usize = 4096;

/// Offsets in `struct seccomp_data`: the syscall number, and the low 32 bits of argument
/// `i` at `ARGS + 8 * i` (what seccompiler's 32-bit comparisons read).
const NR: u32 = 0;
const ARGS: u32 = 16;

/// Where a jump goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    /// `n` instructions past the next one (`Skip(0)` is the next).
    Skip(usize),
    /// A syscall's block of argument checks.
    Block(usize),
    /// The shared returns after the tree.
    Matched,
    Mismatch,
    /// The start of a subtree.
    Subtree(usize),
    /// Instruction `i` of the block this jump is in.
    Local(usize),
    /// Instruction `i` of the whole code.
    At(usize),
}

const NEXT: Target = Target::Skip(0);

/// One instruction before its jumps are resolved; `jt` is an unconditional jump's target.
#[derive(Clone, Copy)]
struct Insn {
    code: u32,
    k: u32,
    jt: Target,
    jf: Target,
}

fn load(offset: u32) -> Insn {
    Insn {
        code: libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        k: offset,
        jt: NEXT,
        jf: NEXT,
    }
}

fn jump(cmp: u32, k: u32, jt: Target, jf: Target) -> Insn {
    Insn {
        code: libc::BPF_JMP | cmp | libc::BPF_K,
        k,
        jt,
        jf,
    }
}

fn always(to: Target) -> Insn {
    Insn {
        code: libc::BPF_JMP | libc::BPF_JA,
        k: 0,
        jt: to,
        jf: NEXT,
    }
}

fn ret(k: u32) -> Insn {
    Insn {
        code: libc::BPF_RET | libc::BPF_K,
        k,
        jt: NEXT,
        jf: NEXT,
    }
}

/// A syscall's argument checks, for `alts` (any one of them allows it): each alternative
/// jumps to the block's matched return when it matches and goes on to the next one
/// otherwise; after the last come the block's own returns, mismatch then matched.
fn block(alts: &[Args], mismatch: u32, matched: u32) -> Result<Vec<Insn>, String> {
    /// Where the block's matched return will be, until the block's length is known.
    const MATCHED: Target = Target::Local(usize::MAX);
    let arg = |i: u32| load(ARGS + 8 * i);
    let dword = |v: u64| u32::try_from(v).map_err(|_| format!("{v:#x} is wider than 32 bits"));
    // Argument `i` equal to one of `values`.
    let one_of = |code: &mut Vec<Insn>, i: u32, values: &[u64]| -> Result<(), String> {
        code.push(arg(i));
        for v in values {
            code.push(jump(libc::BPF_JEQ, dword(*v)?, MATCHED, NEXT));
        }
        Ok(())
    };
    let mut code = Vec::new();
    for alt in alts {
        match *alt {
            Args::Any => return Err("a syscall allowed whatever its arguments has no block".into()),
            Args::Ioctl(reqs) | Args::Fcntl(reqs) => one_of(&mut code, 1, reqs)?,
            Args::Prctl(options) => one_of(&mut code, 0, options)?,
            Args::TerminalIoctl(reqs) => {
                // On fd 0 only: another fd skips the requests' comparisons.
                code.push(arg(0));
                code.push(jump(libc::BPF_JEQ, 0, NEXT, Target::Skip(reqs.len() + 1)));
                one_of(&mut code, 1, reqs)?;
            }
            Args::NoExec => {
                code.push(arg(2));
                code.push(jump(libc::BPF_JSET, libc::PROT_EXEC as u32, NEXT, MATCHED));
            }
            Args::CloneThread => {
                code.push(arg(0));
                code.push(jump(
                    libc::BPF_JSET,
                    libc::CLONE_THREAD as u32,
                    MATCHED,
                    NEXT,
                ));
            }
        }
    }
    code.push(ret(mismatch));
    code.push(ret(matched));
    let matched_at = Target::Local(code.len() - 1);
    for i in code.iter_mut() {
        for t in [&mut i.jt, &mut i.jf] {
            if *t == MATCHED {
                *t = matched_at;
            }
        }
    }
    Ok(code)
}

/// The search tree, before its jumps are resolved.
struct Tree {
    insns: Vec<Insn>,
    /// Where each subtree starts.
    subtrees: Vec<usize>,
    /// Whether comparisons jump straight to their targets, or through unconditional jumps.
    direct: bool,
}

impl Tree {
    /// Code that goes to `to[i]` when the loaded number is `nrs[i]`, and to `Mismatch`
    /// otherwise.
    fn search(&mut self, nrs: &[u32], to: &[Target]) {
        if let ([nr], [to]) = (nrs, to) {
            if self.direct {
                self.insns
                    .push(jump(libc::BPF_JEQ, *nr, *to, Target::Mismatch));
            } else {
                self.insns
                    .push(jump(libc::BPF_JEQ, *nr, NEXT, Target::Skip(1)));
                self.insns.push(always(*to));
                self.insns.push(always(Target::Mismatch));
            }
            return;
        }
        let mid = nrs.len() / 2;
        let right = self.subtrees.len();
        self.subtrees.push(0);
        // Numbers from nrs[mid] up go right; the left half follows.
        if self.direct {
            self.insns
                .push(jump(libc::BPF_JGE, nrs[mid], Target::Subtree(right), NEXT));
        } else {
            self.insns
                .push(jump(libc::BPF_JGE, nrs[mid], NEXT, Target::Skip(1)));
            self.insns.push(always(Target::Subtree(right)));
        }
        self.search(&nrs[..mid], &to[..mid]);
        self.subtrees[right] = self.insns.len();
        self.search(&nrs[mid..], &to[mid..]);
    }
}

/// Builds the filter: for a listed syscall whose arguments one of its `Args` allows,
/// `matched`; for anything else (another number, other arguments, another architecture),
/// `mismatch`. A syscall with `Args::Any` among its alternatives is allowed whatever its
/// arguments.
pub fn build(
    alts: BTreeMap<i64, Vec<Args>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    // The architecture check and the mismatch return, as seccompiler writes them: its filter
    // without rules.
    let empty: BpfProgram = SeccompFilter::new(
        BTreeMap::new(),
        mismatch.clone(),
        matched.clone(),
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| e.to_string())?;
    let (ret_mismatch, arch_check) = empty
        .split_last()
        .ok_or("seccompiler built an empty filter")?;
    if alts.is_empty() {
        return Ok(empty);
    }
    let (mismatch, matched) = (ret_mismatch.k, u32::from(matched));
    let mut nrs = Vec::with_capacity(alts.len());
    let mut targets = Vec::with_capacity(alts.len());
    let mut blocks = Vec::new();
    for (nr, alts) in alts {
        nrs.push(u32::try_from(nr).map_err(|_| format!("syscall number {nr}"))?);
        if alts.is_empty() || alts.iter().any(|a| matches!(a, Args::Any)) {
            targets.push(Target::Matched);
        } else {
            targets.push(Target::Block(blocks.len()));
            blocks.push(block(&alts, mismatch, matched)?);
        }
    }
    let code = lay_out(&nrs, &targets, &blocks, mismatch, matched, true)
        .or_else(|_| lay_out(&nrs, &targets, &blocks, mismatch, matched, false))?;
    let mut prog = arch_check.to_vec();
    prog.extend(code);
    if prog.len() >= MAX_LEN {
        return Err(format!("{} instructions (at most {MAX_LEN})", prog.len()));
    }
    Ok(prog)
}

/// The number's load, the check against the highest listed number, and the search tree.
fn tree(nrs: &[u32], targets: &[Target], direct: bool) -> Result<Tree, String> {
    let mut tree = Tree {
        insns: vec![load(NR)],
        subtrees: Vec::new(),
        direct,
    };
    // Numbers above the highest listed one (a third of them) leave at once.
    let max = *nrs.last().ok_or("no syscalls")?;
    if direct {
        tree.insns
            .push(jump(libc::BPF_JGT, max, Target::Mismatch, NEXT));
    } else {
        tree.insns
            .push(jump(libc::BPF_JGT, max, NEXT, Target::Skip(1)));
        tree.insns.push(always(Target::Mismatch));
    }
    tree.search(nrs, targets);
    Ok(tree)
}

/// The code after the architecture check: the tree, the shared returns, then the blocks.
/// Fails when a conditional jump would reach too far.
fn lay_out(
    nrs: &[u32],
    targets: &[Target],
    blocks: &[Vec<Insn>],
    mismatch: u32,
    matched: u32,
    direct: bool,
) -> Result<Vec<sock_filter>, String> {
    let Tree {
        insns: mut code,
        subtrees,
        ..
    } = tree(nrs, targets, direct)?;
    let mismatch_at = code.len();
    code.push(ret(mismatch));
    let matched_at = code.len();
    code.push(ret(matched));
    let mut block_at = Vec::with_capacity(blocks.len());
    for b in blocks {
        let start = code.len();
        block_at.push(start);
        let local = |t| match t {
            Target::Local(n) => Target::At(start + n),
            t => t,
        };
        code.extend(b.iter().map(|i| Insn {
            jt: local(i.jt),
            jf: local(i.jf),
            ..*i
        }));
    }
    Layout {
        code,
        subtrees,
        blocks: block_at,
        mismatch: mismatch_at,
        matched: matched_at,
    }
    .encode()
}

/// Laid-out code whose jumps are still symbolic, and where each target landed.
struct Layout {
    code: Vec<Insn>,
    subtrees: Vec<usize>,
    blocks: Vec<usize>,
    mismatch: usize,
    matched: usize,
}

impl Layout {
    /// How far ahead of the instruction after `at` the target `t` lies.
    fn offset(&self, at: usize, t: Target) -> Result<usize, String> {
        let to = match t {
            Target::Skip(n) => at + 1 + n,
            Target::Block(b) => self.blocks[b],
            Target::Matched => self.matched,
            Target::Mismatch => self.mismatch,
            Target::Subtree(s) => self.subtrees[s],
            Target::At(n) => n,
            Target::Local(_) => return Err("a block's jump left unresolved".into()),
        };
        // Every jump goes forward.
        to.checked_sub(at + 1)
            .ok_or_else(|| format!("a jump back from {at} to {to}"))
    }

    /// The instructions with their jumps resolved: an unconditional jump's 32-bit offset, a
    /// comparison's two 8-bit ones.
    fn encode(&self) -> Result<Vec<sock_filter>, String> {
        self.code
            .iter()
            .enumerate()
            .map(|(at, i)| {
                if i.code == libc::BPF_JMP | libc::BPF_JA {
                    let k = u32::try_from(self.offset(at, i.jt)?).map_err(|e| e.to_string())?;
                    return Ok(sock_filter {
                        code: i.code as u16,
                        jt: 0,
                        jf: 0,
                        k,
                    });
                }
                let short = |t| {
                    u8::try_from(self.offset(at, t)?)
                        .map_err(|_| format!("a jump from {at} too far"))
                };
                Ok(sock_filter {
                    code: i.code as u16,
                    jt: short(i.jt)?,
                    jf: short(i.jf)?,
                    k: i.k,
                })
            })
            .collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `struct seccomp_data` of x86_64, as a filter reads it.
    pub struct Data {
        pub nr: u32,
        pub arch: u32,
        pub args: [u64; 6],
    }

    impl Data {
        /// The 32-bit word at `offset`; None for the instruction pointer and the arguments
        /// when `args` is false.
        fn word(&self, offset: u32, args: bool) -> Option<u32> {
            match offset {
                0 => Some(self.nr),
                4 => Some(self.arch),
                16..=63 if args && offset.is_multiple_of(4) => {
                    let a = self.args[(offset as usize - 16) / 8];
                    Some(if offset.is_multiple_of(8) {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    })
                }
                _ if !args => None,
                _ => panic!("load at offset {offset}"),
            }
        }
    }

    /// Runs a classic BPF filter as the kernel does, with the instructions seccompiler and
    /// the tree use (panics on others, and on a jump out of the filter). Returns the
    /// verdict and the instructions run; with `args` false it stops (no verdict) at the
    /// first load of an argument, as the kernel's install-time walk does.
    fn eval(prog: &[sock_filter], d: &Data, args: bool) -> (Option<u32>, usize) {
        let mut a: u32 = 0;
        let mut pc = 0usize;
        let mut steps = 0;
        loop {
            let i = prog[pc].clone();
            pc += 1;
            steps += 1;
            assert!(steps <= prog.len(), "the filter loops");
            let code = u32::from(i.code);
            let cond = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => match d.word(i.k, args) {
                    Some(w) => a = w,
                    None => return (None, steps),
                },
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= i.k,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += i.k as usize,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => pc += cond(a == i.k),
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => pc += cond(a >= i.k),
                c if c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => pc += cond(a > i.k),
                c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => pc += cond(a & i.k != 0),
                c if c == libc::BPF_RET | libc::BPF_K => return (Some(i.k), steps),
                c => panic!("instruction {c:#x}"),
            }
        }
    }

    /// The filter's verdict on `d`.
    pub fn run(prog: &[sock_filter], d: &Data) -> u32 {
        let (verdict, _) = eval(prog, d, true);
        verdict.unwrap_or_else(|| panic!("no verdict"))
    }

    /// How many instructions a syscall number goes through before its verdict, or before
    /// the filter first reads an argument: what the kernel walks for it at install time.
    pub fn walked(prog: &[sock_filter], nr: u32) -> usize {
        let d = Data {
            nr,
            arch: seccompiler_arch(),
            args: [0; 6],
        };
        eval(prog, &d, false).1
    }

    /// AUDIT_ARCH_X86_64.
    pub fn seccompiler_arch() -> u32 {
        0xC000_003E
    }

    #[test]
    fn a_single_syscall_and_none() {
        let allow = SeccompAction::Allow;
        let trap = SeccompAction::Trap;
        let none = build(BTreeMap::new(), trap.clone(), allow.clone()).unwrap();
        let d = |nr| Data {
            nr,
            arch: seccompiler_arch(),
            args: [0; 6],
        };
        assert_eq!(run(&none, &d(0)), libc::SECCOMP_RET_TRAP);
        let one = build(BTreeMap::from([(39, vec![Args::Any])]), trap, allow).unwrap();
        assert_eq!(run(&one, &d(39)), libc::SECCOMP_RET_ALLOW);
        assert_eq!(run(&one, &d(38)), libc::SECCOMP_RET_TRAP);
        assert_eq!(run(&one, &d(40)), libc::SECCOMP_RET_TRAP);
    }

    /// 200 syscalls (the even numbers below 400), each allowed when its first argument is 7
    /// or 9 (the low 32 bits).
    fn long_filter() -> BpfProgram {
        let rules: BTreeMap<i64, Vec<Args>> = (0..200)
            .map(|nr| (nr * 2, vec![Args::Prctl(&[7, 9])]))
            .collect();
        build(rules, SeccompAction::Trap, SeccompAction::Allow).unwrap()
    }

    #[test]
    fn long_jumps_over_many_blocks() {
        // Jumps far beyond 8-bit offsets: the tree goes through unconditional jumps.
        let prog = long_filter();
        assert!(prog.len() > 1000, "{}", prog.len());
        for nr in 0..500 {
            for arg in [7, 8, 9, (1 << 32) | 7] {
                let d = Data {
                    nr,
                    arch: seccompiler_arch(),
                    args: [arg, 0, 0, 0, 0, 0],
                };
                let want = if nr % 2 == 0 && nr < 400 && arg != 8 {
                    libc::SECCOMP_RET_ALLOW
                } else {
                    libc::SECCOMP_RET_TRAP
                };
                assert_eq!(run(&prog, &d), want, "nr {nr} arg {arg:#x}");
            }
        }
    }

    #[test]
    fn a_short_filter_jumps_straight_to_its_targets() {
        // Ten syscalls allowed whatever the arguments, one with checks: one comparison per
        // number in the tree and no unconditional jump anywhere.
        let mut rules: BTreeMap<i64, Vec<Args>> =
            (0..10).map(|nr| (nr * 3, vec![Args::Any])).collect();
        rules.insert(100, vec![Args::Ioctl(&[1, 2, 3]), Args::NoExec]);
        let prog = build(rules, SeccompAction::Trap, SeccompAction::Allow).unwrap();
        let ja = (libc::BPF_JMP | libc::BPF_JA) as u16;
        assert!(prog.iter().all(|i| i.code != ja), "{prog:?}");
        // Arch check 3, number 2, tree 21, returns 2, block 4 + 2 + 2.
        assert_eq!(prog.len(), 36);
        let d = |nr, args| Data {
            nr,
            arch: seccompiler_arch(),
            args,
        };
        assert_eq!(run(&prog, &d(27, [5; 6])), libc::SECCOMP_RET_ALLOW);
        assert_eq!(run(&prog, &d(28, [0; 6])), libc::SECCOMP_RET_TRAP);
        assert_eq!(
            run(&prog, &d(100, [0, 2, 0, 0, 0, 0])),
            libc::SECCOMP_RET_ALLOW
        );
        // Not one of the requests, but no PROT_EXEC in argument 2: the second alternative.
        assert_eq!(
            run(&prog, &d(100, [0, 4, 1, 0, 0, 0])),
            libc::SECCOMP_RET_ALLOW
        );
        let exec = libc::PROT_EXEC as u64;
        assert_eq!(
            run(&prog, &d(100, [0, 4, exec, 0, 0, 0])),
            libc::SECCOMP_RET_TRAP
        );
        assert_eq!(
            run(&prog, &d(101, [0, 2, 0, 0, 0, 0])),
            libc::SECCOMP_RET_TRAP
        );
        // A filter too long for that goes through unconditional jumps.
        let long = long_filter();
        assert!(long.iter().any(|i| i.code == ja));
    }

    #[test]
    fn values_wider_than_32_bits_are_refused() {
        let rules = BTreeMap::from([(16, vec![Args::Ioctl(&[1 << 32])])]);
        assert!(build(rules, SeccompAction::Trap, SeccompAction::Allow).is_err());
    }
}
