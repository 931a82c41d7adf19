//! Seccomp filters, one per thread kind, described as data and reviewed here in one place.
//!
//! Each thread installs its own filter before it touches guest-controlled input: the
//! supervisor right after the fork, each vCPU thread before its first `KVM_RUN`, the VMM
//! (monitor) thread as soon as it let the vCPUs run, before it reads anything from them. A
//! syscall outside the list raises SIGSYS; the handler prints the syscall's number and name
//! and exits with the host-error code (6): a seccomp kill is the VMM's failure, not the
//! guest's crash.

use seccompiler::{sock_filter, BpfProgram};

// The VMM reads the lists (names for the log); their compilation into BPF runs in build.rs,
// which includes these two files, and in the unit tests, which check both agree.
#[cfg_attr(not(test), allow(dead_code))]
mod lists;
#[cfg_attr(not(test), allow(dead_code))]
mod tree;

pub use lists::{Allowed, Libc, ThreadKind, KVM_CREATE_VCPU};

/// The C library this build links with (build.rs, from the build target).
pub const LIBC: Libc = BUILT_FOR;

/// Every syscall a thread kind may make in this build (lists.rs).
pub fn allowed(kind: ThreadKind, reboot: bool) -> Vec<Allowed> {
    lists::allowed(kind, reboot, LIBC)
}

/// A BPF instruction as build.rs writes it: code, jt, jf, k.
type Insn = (u16, u8, u8, u32);
/// A filter build.rs compiled: its thread kind, with `--reboot` or not, its instructions.
type Prebuilt = (ThreadKind, bool, &'static [Insn]);

include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

include!(concat!(env!("OUT_DIR"), "/syscall_names.rs"));

/// The filter of a thread kind, as build.rs compiled it from lists.rs.
pub fn compile(kind: ThreadKind, reboot: bool) -> Result<BpfProgram, SeccompError> {
    PREBUILT
        .iter()
        .find(|(k, r, _)| *k == kind && *r == reboot)
        .map(|(_, _, p)| program(p))
        .ok_or_else(|| SeccompError::Build(kind, "not built by build.rs".into()))
}

/// The spawn guard (lists.rs, `spawn_guard`), stacked on the vCPU spawner's filter in every
/// vCPU thread: it traps the `spawn_list` syscalls and lets the rest through to the filter below,
/// so what remains is the vCPU list. It is short, hence cheap to install, and the spawner's
/// filter is inherited, not installed again, by each new thread.
pub fn compile_spawn_guard() -> Result<BpfProgram, SeccompError> {
    Ok(program(PREBUILT_SPAWN_GUARD))
}

fn program(insns: &[Insn]) -> BpfProgram {
    insns
        .iter()
        .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0:?} seccomp filter: {1}")]
    Build(ThreadKind, String),
    #[error("cannot install the {0:?} seccomp filter: {1}")]
    Install(ThreadKind, String),
}

/// Installs a compiled filter in the calling thread.
pub fn install(kind: ThreadKind, prog: &BpfProgram) -> Result<(), SeccompError> {
    if crate::log::enabled(crate::log::Level::Debug) {
        let names: Vec<&str> = allowed(kind, false).iter().map(|a| a.name).collect();
        crate::log::debug(format_args!(
            "seccomp: {kind:?} thread allows {}",
            names.join(", ")
        ));
    }
    seccompiler::apply_filter(prog).map_err(|e| SeccompError::Install(kind, e.to_string()))
}

/// The name of a syscall number, from the system's headers at build time.
pub fn syscall_name(nr: i64) -> &'static str {
    SYSCALL_NAMES
        .iter()
        .find(|(n, _)| *n == nr)
        .map_or("unknown", |(_, name)| name)
}

/// Appends `n` in decimal to `buf` at `len`; async-signal-safe.
fn push_num(buf: &mut [u8], len: &mut usize, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    push(buf, len, &digits[i..]);
}

fn push(buf: &mut [u8], len: &mut usize, s: &[u8]) {
    let n = s.len().min(buf.len() - *len);
    buf[*len..*len + n].copy_from_slice(&s[..n]);
    *len += n;
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // The SIGSYS part of siginfo: { void *call_addr; int syscall; unsigned arch } at offset 16.
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGSYS the syscall
    // number is at this offset on x86_64.
    let nr = unsafe { *((info as *const u8).add(24) as *const libc::c_int) } as i64;
    let mut buf = [0u8; 192];
    let mut len = 0;
    push(&mut buf, &mut len, b"minipc: seccomp: forbidden syscall ");
    push_num(&mut buf, &mut len, nr as u64);
    push(&mut buf, &mut len, b" (");
    push(&mut buf, &mut len, syscall_name(nr).as_bytes());
    push(&mut buf, &mut len, b"); the VM is stopped (exit code ");
    push_num(&mut buf, &mut len, crate::exit::code::HOST_ERROR as u64);
    push(&mut buf, &mut len, b")\n");
    crate::terminal::restore_from_signal();
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, buf.as_ptr() as *const libc::c_void, len);
        libc::_exit(crate::exit::code::HOST_ERROR);
    }
}

/// Installs the SIGSYS handler that reports a forbidden syscall (process-wide, once).
pub fn install_sigsys_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

#[cfg(test)]
mod tests {
    use super::lists::{
        compile_list, rules, spawn_guard, spawn_guard_rules, spawn_list, Args, KINDS,
        KVM_GET_MP_STATE, KVM_GET_REGS, KVM_GET_SREGS, KVM_IOEVENTFD, KVM_REGISTER_COALESCED_MMIO,
        KVM_RUN, KVM_SET_CPUID2, KVM_SET_FPU, KVM_SET_IRQCHIP, KVM_SET_LAPIC, KVM_SET_MP_STATE,
        KVM_SET_REGS, KVM_SET_SREGS, KVM_SET_USER_MEMORY_REGION, KVM_UNREGISTER_COALESCED_MMIO,
    };
    use super::*;
    use seccompiler::{SeccompAction, SeccompRule};
    use std::collections::BTreeMap;

    fn names(kind: ThreadKind) -> Vec<&'static str> {
        let mut v: Vec<_> = allowed(kind, true).iter().map(|a| a.name).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The reviewed lists: a change to a filter must change this test too.
    #[test]
    fn each_thread_kind_allows_exactly_these_syscalls() {
        let common = [
            "brk",
            "clock_gettime",
            "exit",
            "exit_group",
            "fcntl",
            "futex",
            "madvise",
            "mmap",
            "mprotect",
            "mremap",
            "munmap",
            "restart_syscall",
            "rt_sigprocmask",
            "rt_sigreturn",
            "sched_yield",
            "write",
        ];
        // pthread_kill, and a thread's end in the RAM registering thread (lists.rs, `Libc`).
        let (kill, end) = match LIBC {
            Libc::Glibc => ("tgkill", "madvise"),
            Libc::Musl => ("tkill", "munmap"),
        };
        let with = |extra: &[&'static str]| {
            let mut v: Vec<&str> = common.iter().chain(extra).copied().collect();
            v.sort();
            v
        };
        assert_eq!(
            names(ThreadKind::Supervisor),
            with(&["close", "ioctl", "kill", "read", "wait4"])
        );
        assert_eq!(
            names(ThreadKind::Vmm),
            with(&[
                "close",
                "fsync",
                "getpid",
                "getrusage",
                "gettid",
                "ioctl",
                "ppoll",
                "pread64",
                "read",
                kill,
                "timerfd_settime"
            ])
        );
        assert_eq!(
            names(ThreadKind::Vcpu),
            with(&[
                "clock_nanosleep",
                "getpid",
                "ioctl",
                "pread64",
                "pwrite64",
                kill,
                "timerfd_settime"
            ])
        );
        // Not the common list: no brk, mmap, mprotect, mremap, sched_yield, fcntl.
        let mut ram = vec![
            "clock_gettime",
            "exit",
            "exit_group",
            "futex",
            "ioctl",
            end,
            "rt_sigprocmask",
            "write",
        ];
        ram.sort();
        assert_eq!(names(ThreadKind::RamRegistrar), ram);
        assert_eq!(
            ioctls(ThreadKind::RamRegistrar, true),
            [KVM_SET_USER_MEMORY_REGION]
        );
    }

    #[test]
    fn the_filters_are_built_for_this_c_library() {
        let env = if cfg!(target_env = "musl") {
            "musl"
        } else {
            "gnu"
        };
        assert_eq!(LIBC, Libc::from_target_env(env));
        assert_eq!(Libc::from_target_env("musl"), Libc::Musl);
        assert_eq!(Libc::from_target_env("gnu"), Libc::Glibc);
    }

    #[test]
    fn names_match_numbers() {
        // build.rs writes an empty table when the system's syscall header is missing.
        if !crate::testing::precondition(
            !SYSCALL_NAMES.is_empty(),
            "no syscall names: /usr/include/x86_64-linux-gnu/asm/unistd_64.h was missing at \
             build time (apt-get install linux-libc-dev)",
        ) {
            return;
        }
        for kind in [
            ThreadKind::Supervisor,
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::VcpuSpawner,
            ThreadKind::RamRegistrar,
        ] {
            for a in allowed(kind, true) {
                assert_eq!(syscall_name(a.nr), a.name);
            }
        }
        assert_eq!(syscall_name(libc::SYS_getppid), "getppid");
        assert_eq!(syscall_name(-1), "unknown");
    }

    #[test]
    fn kvm_ioctl_numbers() {
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_GET_MP_STATE, 0x8004_AE98);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_AE46);
        assert_eq!(KVM_IOEVENTFD, 0x4040_AE79);
        assert_eq!(KVM_UNREGISTER_COALESCED_MMIO, 0x4010_AE68);
        assert!(ioctls(ThreadKind::Vcpu, false).contains(&KVM_UNREGISTER_COALESCED_MMIO));
        assert_eq!(KVM_REGISTER_COALESCED_MMIO, 0x4010_AE67);
        assert!(ioctls(ThreadKind::Vcpu, false).contains(&KVM_REGISTER_COALESCED_MMIO));
        assert!(ioctls(ThreadKind::Vmm, false).contains(&KVM_UNREGISTER_COALESCED_MMIO));
        assert!(!ioctls(ThreadKind::Vmm, false).contains(&KVM_REGISTER_COALESCED_MMIO));
    }

    #[test]
    fn filters_compile() {
        for kind in [
            ThreadKind::Supervisor,
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::VcpuSpawner,
            ThreadKind::RamRegistrar,
        ] {
            for reboot in [false, true] {
                assert!(!compile(kind, reboot).unwrap().is_empty());
            }
        }
    }

    fn ioctls(kind: ThreadKind, reboot: bool) -> Vec<u64> {
        allowed(kind, reboot)
            .iter()
            .flat_map(|a| match a.args {
                Args::Ioctl(r) => r.to_vec(),
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn state_setting_ioctls_only_with_reboot() {
        let set = [KVM_SET_LAPIC, KVM_SET_MP_STATE, KVM_SET_FPU];
        assert!(set
            .iter()
            .all(|r| !ioctls(ThreadKind::Vcpu, false).contains(r)));
        assert!(set
            .iter()
            .all(|r| ioctls(ThreadKind::Vcpu, true).contains(r)));
        assert!(!ioctls(ThreadKind::Vmm, false).contains(&KVM_SET_IRQCHIP));
        let vmm_reboot: Vec<u64> = ioctls(ThreadKind::Vmm, true)
            .into_iter()
            .filter(|r| !ioctls(ThreadKind::Vmm, false).contains(r))
            .collect();
        assert_eq!(
            vmm_reboot,
            vec![
                KVM_SET_IRQCHIP,
                KVM_SET_USER_MEMORY_REGION,
                KVM_REGISTER_COALESCED_MMIO
            ],
            "no KVM_SET_PIT2 (0x4070_AEA0): the PIT is in user space"
        );
        assert_eq!(KVM_SET_REGS, 0x4090_AE82);
        assert!(ioctls(ThreadKind::Vcpu, false).contains(&KVM_SET_REGS));
        // BIOS services that return a segment (ES:DI, ES:BX).
        assert!(ioctls(ThreadKind::Vcpu, false).contains(&KVM_SET_SREGS));
        assert_eq!(KVM_SET_IRQCHIP, 0x8208_AE63);
    }

    #[test]
    fn the_spawn_guard_leaves_exactly_the_vcpu_list() {
        // The kernel runs every stacked filter and takes the most restrictive verdict (the
        // lowest action value: TRAP before ALLOW).
        let guard = compile_spawn_guard().unwrap();
        for reboot in [false, true] {
            let vcpu = compile(ThreadKind::Vcpu, reboot).unwrap();
            let spawner = compile(ThreadKind::VcpuSpawner, reboot).unwrap();
            let mut list = allowed(ThreadKind::VcpuSpawner, reboot);
            list.extend(spawn_list(LIBC));
            let arg_sets = argument_sets(&list);
            let mut widened = 0;
            for nr in 0..=470 {
                for args in &arg_sets {
                    let d = tree::tests::Data {
                        nr,
                        arch: tree::tests::seccompiler_arch(),
                        args: *args,
                    };
                    let alone = tree::tests::run(&vcpu, &d);
                    let stacked = tree::tests::run(&guard, &d).min(tree::tests::run(&spawner, &d));
                    assert_eq!(stacked, alone, "nr {nr} args {args:x?} reboot={reboot}");
                    widened += usize::from(tree::tests::run(&spawner, &d) != alone);
                }
            }
            // The spawner does allow more (clone3, SET_CPUID2, ...), which the guard takes back.
            assert!(widened >= spawn_list(LIBC).len(), "{widened}");
        }
        // An AP's CPUID is the spawner's alone: a vCPU thread cannot change it.
        assert!(!ioctls(ThreadKind::Vcpu, true).contains(&KVM_SET_CPUID2));
        assert!(ioctls(ThreadKind::VcpuSpawner, false).contains(&KVM_SET_CPUID2));
        assert_eq!(KVM_SET_CPUID2, 0x4008_AE90);
        // So is creating vCPUs (the first vCPU thread's share of the build, vm/vcpus.rs).
        for reboot in [false, true] {
            assert!(!ioctls(ThreadKind::Vcpu, reboot).contains(&KVM_CREATE_VCPU));
            assert!(!ioctls(ThreadKind::Vmm, reboot).contains(&KVM_CREATE_VCPU));
            assert!(ioctls(ThreadKind::VcpuSpawner, reboot).contains(&KVM_CREATE_VCPU));
        }
        assert_eq!(KVM_CREATE_VCPU, 0xAE41);
        // Short, so that each vCPU thread installs it cheaply.
        assert!(guard.len() < 80, "{} instructions", guard.len());
        assert!(guard.len() * 2 < compile(ThreadKind::Vcpu, false).unwrap().len());
    }

    #[test]
    fn the_filters_built_with_the_vmm_are_the_lists_compiled_now() {
        assert_eq!(PREBUILT.len(), KINDS.len() * 2);
        for kind in KINDS {
            for reboot in [false, true] {
                assert_eq!(
                    compile(kind, reboot).unwrap(),
                    compile_list(kind, reboot, LIBC).unwrap(),
                    "{kind:?} reboot={reboot}"
                );
            }
        }
        assert_eq!(compile_spawn_guard().unwrap(), spawn_guard(LIBC).unwrap());
    }

    /// Argument sets that reach every rule of `list`, matching and not.
    fn argument_sets(list: &[Allowed]) -> Vec<[u64; 6]> {
        let mut sets = vec![[0; 6], [u64::MAX; 6]];
        let mut at = |i: usize, v: u64| {
            // The first argument also takes the value itself: a check of one argument must
            // never be satisfied by another.
            for fd0 in [0, 3, v] {
                for high in [0, 1 << 32] {
                    let mut a = [0; 6];
                    a[0] = fd0;
                    a[i] = v | high;
                    sets.push(a);
                }
            }
        };
        for a in list {
            match a.args {
                Args::Any => {}
                Args::Ioctl(v) | Args::TerminalIoctl(v) | Args::Fcntl(v) => {
                    v.iter().for_each(|v| at(1, *v))
                }
                Args::Prctl(v) => v.iter().for_each(|v| at(0, *v)),
                Args::CloneThread => {
                    // A thread, a thread with more flags, a process.
                    let thread = (libc::CLONE_VM | libc::CLONE_THREAD) as u64;
                    for flags in [
                        thread,
                        thread | libc::CLONE_SETTLS as u64,
                        libc::SIGCHLD as u64,
                    ] {
                        at(0, flags);
                    }
                }
                Args::NoExec => {
                    for prot in [
                        libc::PROT_READ,
                        libc::PROT_EXEC,
                        libc::PROT_READ | libc::PROT_EXEC,
                    ] {
                        at(2, prot as u64);
                    }
                }
            }
        }
        sets
    }

    /// seccompiler's own layout of `rules`: one comparison per syscall, in a row.
    fn linear(
        rules: BTreeMap<i64, Vec<SeccompRule>>,
        mismatch: SeccompAction,
        matched: SeccompAction,
    ) -> BpfProgram {
        use seccompiler::{SeccompFilter, TargetArch};
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// Every filter the VMM installs, with its name, seccompiler's layout of the same rules
    /// and the syscalls its rules name.
    fn filters_and_their_rows() -> Vec<(String, BpfProgram, BpfProgram, Vec<Allowed>)> {
        let mut filters = vec![];
        for kind in KINDS {
            for reboot in [false, true] {
                let rules = rules(kind, reboot, LIBC).unwrap();
                let mut list = allowed(kind, reboot);
                if kind == ThreadKind::Vcpu {
                    list.extend(spawn_list(LIBC));
                }
                filters.push((
                    format!("{kind:?} reboot={reboot}"),
                    linear(rules, SeccompAction::Trap, SeccompAction::Allow),
                    compile(kind, reboot).unwrap(),
                    list,
                ));
            }
        }
        let guard = spawn_guard_rules(LIBC).unwrap();
        filters.push((
            "spawn guard".into(),
            linear(guard, SeccompAction::Allow, SeccompAction::Trap),
            compile_spawn_guard().unwrap(),
            spawn_list(LIBC),
        ));
        filters
    }

    #[test]
    fn the_search_tree_decides_as_seccompiler_does() {
        let filters = filters_and_their_rows();
        let x32 = 0x4000_0000;
        let mut checked = 0;
        for (name, linear, tree, list) in &filters {
            let arg_sets = argument_sets(list);
            let nrs = (0..=470).chain([x32, x32 + 1, x32 + 16, x32 + 59, u32::MAX]);
            for nr in nrs {
                let listed = list.iter().any(|a| a.nr == i64::from(nr));
                let sets = if listed {
                    &arg_sets[..]
                } else {
                    &arg_sets[..2]
                };
                for arch in [tree::tests::seccompiler_arch(), 0x4000_0003] {
                    for args in sets {
                        let d = tree::tests::Data {
                            nr,
                            arch,
                            args: *args,
                        };
                        let want = tree::tests::run(linear, &d);
                        assert_eq!(
                            tree::tests::run(tree, &d),
                            want,
                            "{name}: nr {nr} arch {arch:#x} args {args:x?}"
                        );
                        checked += 1;
                    }
                }
            }
            // What the kernel walks for each number at install: a few comparisons, not the
            // whole list.
            let walk = |p: &[seccompiler::sock_filter]| {
                (0..512).map(|nr| tree::tests::walked(p, nr)).max().unwrap()
            };
            assert!(
                walk(tree) <= 14,
                "{name}: {} instructions walked, {} in a row",
                walk(tree),
                walk(linear)
            );
        }
        assert!(checked > 40_000, "{checked} cases");
    }

    #[test]
    fn numbers_format_without_allocation() {
        let mut buf = [0u8; 8];
        let mut len = 0;
        push_num(&mut buf, &mut len, 1234);
        push(&mut buf, &mut len, b"xxxxxx");
        assert_eq!(&buf, b"1234xxxx");
    }
}
