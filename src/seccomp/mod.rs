//! Seccomp filters, one per thread kind, described as data and reviewed here in one place.
//!
//! Each thread installs its own filter before it touches guest-controlled input: the
//! supervisor right after the fork, each vCPU thread before its first `KVM_RUN`, the VMM
//! (monitor) thread as soon as it let the vCPUs run, before it reads anything from them. A
//! syscall outside the list raises SIGSYS; the handler prints the syscall's number and name
//! and exits with the host-error code (6): a seccomp kill is the VMM's failure, not the
//! guest's crash.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_mp_state, kvm_regs, kvm_sregs};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
};

mod tree;

include!(concat!(env!("OUT_DIR"), "/syscall_names.rs"));

/// The thread kinds, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The parent process that waits for the exit code (supervisor.rs).
    Supervisor,
    /// The VMM's main thread once the machine is built (monitor.rs).
    Vmm,
    /// A vCPU thread (vcpu/).
    Vcpu,
    /// The first vCPU thread while it creates the others (vcpu/threads.rs): the vCPU list
    /// and what creating a thread takes (`SPAWN`). Every vCPU thread then stacks the
    /// spawn guard (`compile_spawn_guard`) on it, which leaves exactly the vCPU list.
    VcpuSpawner,
    /// The thread that registers RAM above 16 MiB while the guest runs (vm/slots.rs,
    /// `DeferredRam`).
    RamRegistrar,
}

const KVMIO: u64 = 0xAE;
const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const KVM_RUN: u64 = io(0x80);
const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_regs>());
const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_sregs>());
const KVM_GET_MP_STATE: u64 = ior(0x98, std::mem::size_of::<kvm_mp_state>());
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const KVM_SET_REGS: u64 = iow(0x82, std::mem::size_of::<kvm_regs>());
const KVM_SET_SREGS: u64 = iow(0x84, std::mem::size_of::<kvm_sregs>());
const KVM_SET_FPU: u64 = iow(0x8D, std::mem::size_of::<kvm_bindings::kvm_fpu>());
const KVM_SET_LAPIC: u64 = iow(0x8F, std::mem::size_of::<kvm_bindings::kvm_lapic_state>());
const KVM_SET_MP_STATE: u64 = iow(0x99, std::mem::size_of::<kvm_mp_state>());
const KVM_SET_MSRS: u64 = iow(0x89, std::mem::size_of::<kvm_bindings::kvm_msrs>());
const KVM_SET_VCPU_EVENTS: u64 = iow(0xA0, std::mem::size_of::<kvm_bindings::kvm_vcpu_events>());
const KVM_SET_IRQCHIP: u64 = ior(0x63, std::mem::size_of::<kvm_bindings::kvm_irqchip>());
/// PAM changes (shadow.rs) remap the BIOS shadow segments from the vCPU that wrote them.
const KVM_SET_USER_MEMORY_REGION: u64 = iow(
    0x46,
    std::mem::size_of::<kvm_bindings::kvm_userspace_memory_region>(),
);
/// After the exit status is out, one ioeventfd added and removed shortens the VM's
/// teardown (vm/teardown.rs).
const KVM_IOEVENTFD: u64 = iow(0x79, std::mem::size_of::<kvm_bindings::kvm_ioeventfd>());
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;

/// What a rule checks in a syscall's arguments.
#[derive(Clone, Copy, Debug)]
pub enum Args {
    /// Any arguments.
    Any,
    /// `ioctl` with one of these request numbers.
    Ioctl(&'static [u64]),
    /// `ioctl` on fd 0 (the terminal) with one of these request numbers.
    TerminalIoctl(&'static [u64]),
    /// `mmap`/`mprotect` without PROT_EXEC: no new executable memory.
    NoExec,
    /// `fcntl` with one of these commands.
    Fcntl(&'static [u64]),
    /// `prctl` with one of these options.
    Prctl(&'static [u64]),
}

/// One allowed syscall; `name` is what the reviewed lists (and the README) show.
#[derive(Clone, Copy, Debug)]
pub struct Allowed {
    pub nr: i64,
    pub name: &'static str,
    pub args: Args,
}

const fn any(nr: i64, name: &'static str) -> Allowed {
    Allowed {
        nr,
        name,
        args: Args::Any,
    }
}

/// Memory management and thread synchronisation every thread of a Rust program needs.
const COMMON: &[Allowed] = &[
    any(libc::SYS_futex, "futex"),
    any(libc::SYS_sched_yield, "sched_yield"),
    any(libc::SYS_brk, "brk"),
    Allowed {
        nr: libc::SYS_mmap,
        name: "mmap",
        args: Args::NoExec,
    },
    Allowed {
        nr: libc::SYS_mprotect,
        name: "mprotect",
        args: Args::NoExec,
    },
    any(libc::SYS_munmap, "munmap"),
    any(libc::SYS_mremap, "mremap"),
    any(libc::SYS_madvise, "madvise"),
    any(libc::SYS_clock_gettime, "clock_gettime"),
    any(libc::SYS_rt_sigreturn, "rt_sigreturn"),
    any(libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
    any(libc::SYS_restart_syscall, "restart_syscall"),
    any(libc::SYS_write, "write"),
    // Rust's standard library checks a descriptor with F_GETFD before closing it.
    Allowed {
        nr: libc::SYS_fcntl,
        name: "fcntl",
        args: Args::Fcntl(&[libc::F_GETFD as u64]),
    },
    any(libc::SYS_exit, "exit"),
    any(libc::SYS_exit_group, "exit_group"),
];

/// The supervisor: waits for the exit code, forwards signals, and restores the terminal
/// when the VM process died without reporting.
const SUPERVISOR: &[Allowed] = &[
    any(libc::SYS_read, "read"),
    any(libc::SYS_wait4, "wait4"),
    any(libc::SYS_kill, "kill"),
    any(libc::SYS_close, "close"),
    Allowed {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        args: Args::TerminalIoctl(&[TCGETS, TCSETS]),
    },
];

/// The VMM thread: the poll loop, stdin, the guest's output, the halt detector's
/// statistics, kicks, timers.
const VMM: &[Allowed] = &[
    // Putting back the status flags of a shared output description at exit (serial.rs).
    Allowed {
        nr: libc::SYS_fcntl,
        name: "fcntl",
        args: Args::Fcntl(&[libc::F_SETFL as u64]),
    },
    any(libc::SYS_ppoll, "ppoll"),
    any(libc::SYS_read, "read"),
    any(libc::SYS_pread64, "pread64"),
    any(libc::SYS_close, "close"),
    any(libc::SYS_tgkill, "tgkill"),
    any(libc::SYS_getpid, "getpid"),
    any(libc::SYS_gettid, "gettid"),
    any(libc::SYS_timerfd_settime, "timerfd_settime"),
    any(libc::SYS_getrusage, "getrusage"),
    // The disk image's writes made durable at exit (`--disk PATH,rw`).
    any(libc::SYS_fsync, "fsync"),
    Allowed {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        args: Args::TerminalIoctl(&[TCGETS, TCSETS]),
    },
    Allowed {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        args: Args::Ioctl(&[KVM_IOEVENTFD]),
    },
];

/// A vCPU thread: KVM_RUN, the state reads of the halt check and the crash dump, device
/// side effects (eventfd writes, the RTC's timer).
const VCPU: &[Allowed] = &[
    Allowed {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        args: Args::Ioctl(&[
            KVM_RUN,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_GET_MP_STATE,
            // BIOS services (bios/) return their results in the registers, and a few in ES.
            KVM_SET_REGS,
            KVM_SET_SREGS,
            KVM_SET_USER_MEMORY_REGION,
        ]),
    },
    // INT 13h reads and writes the disk image; INT 15h AH=86h waits.
    any(libc::SYS_pread64, "pread64"),
    any(libc::SYS_pwrite64, "pwrite64"),
    any(libc::SYS_clock_nanosleep, "clock_nanosleep"),
    // A PAM write kicks the other vCPUs out of KVM_RUN (pause.rs): pthread_kill.
    any(libc::SYS_getpid, "getpid"),
    any(libc::SYS_tgkill, "tgkill"),
    // Restoring the terminal from the SIGSYS handler: glibc's tcsetattr reads the settings
    // back after setting them.
    Allowed {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        args: Args::TerminalIoctl(&[TCGETS, TCSETS]),
    },
    any(libc::SYS_timerfd_settime, "timerfd_settime"),
];

/// What creating a thread takes beyond the vCPU list: in the creating thread `clone3` (its
/// stack's `mmap`/`mprotect` are common), in the new thread glibc's and Rust's start
/// (`rseq`, `set_robust_list`, the thread's name, its malloc arena, its signal stack), and
/// stacking the guard (`no_new_privs`, `seccomp`: a filter can only add restrictions).
/// Allowed to the vCPU spawner only, forbidden again by the spawn guard.
const SPAWN: &[Allowed] = &[
    any(libc::SYS_clone3, "clone3"),
    any(libc::SYS_seccomp, "seccomp"),
    any(libc::SYS_rseq, "rseq"),
    any(libc::SYS_set_robust_list, "set_robust_list"),
    Allowed {
        nr: libc::SYS_prctl,
        name: "prctl",
        args: Args::Prctl(&[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64]),
    },
    any(libc::SYS_sched_getaffinity, "sched_getaffinity"),
    any(libc::SYS_gettid, "gettid"),
];

/// The RAM registering thread (vm/slots.rs, `DeferredRam`): its own list, without
/// `COMMON`, since it allocates nothing once sandboxed. Found by running it under this
/// filter: each entry is a call it was seen to make, or one the SIGSYS handler needs.
const RAM_REGISTRAR: &[Allowed] = &[
    // The slots. (TCGETS/TCSETS on fd 0: the SIGSYS handler restores the terminal.)
    Allowed {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        args: Args::Ioctl(&[KVM_SET_USER_MEMORY_REGION]),
    },
    Allowed {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        args: Args::TerminalIoctl(&[TCGETS, TCSETS]),
    },
    // The gate, the test delay (`--x-ram-delay-ms`, a timed park).
    any(libc::SYS_futex, "futex"),
    // `ram_ready_us` (the vDSO answers unless the host's clocksource has none).
    any(libc::SYS_clock_gettime, "clock_gettime"),
    // The eventfd that tells the monitor of a failure; the SIGSYS handler's report.
    any(libc::SYS_write, "write"),
    // Leaving the thread: glibc blocks signals and releases the stack's pages
    // (rt_sigprocmask, madvise), then exit; exit_group for the SIGSYS handler. (Threads
    // have no alternate signal stack to take down: main.rs, `main`.)
    any(libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
    any(libc::SYS_madvise, "madvise"),
    any(libc::SYS_exit, "exit"),
    any(libc::SYS_exit_group, "exit_group"),
];

/// With `--reboot`: a vCPU restores its reset state itself.
const VCPU_REBOOT: &[Allowed] = &[Allowed {
    nr: libc::SYS_ioctl,
    name: "ioctl",
    args: Args::Ioctl(&[
        KVM_SET_FPU,
        KVM_SET_LAPIC,
        KVM_SET_MP_STATE,
        KVM_SET_VCPU_EVENTS,
        KVM_SET_MSRS,
    ]),
}];

/// With `--reboot`: the VMM thread restores the interrupt controllers and the shadow areas
/// (the PIT is a user-space device, reset like the others).
const VMM_REBOOT: &[Allowed] = &[Allowed {
    nr: libc::SYS_ioctl,
    name: "ioctl",
    args: Args::Ioctl(&[KVM_SET_IRQCHIP, KVM_SET_USER_MEMORY_REGION]),
}];

/// Every syscall a thread kind may make, common ones first (the RAM registering thread has
/// its own short list instead); `reboot` adds what restoring the reset state needs.
pub fn allowed(kind: ThreadKind, reboot: bool) -> Vec<Allowed> {
    let (common, own, extra) = match kind {
        ThreadKind::Supervisor => (COMMON, SUPERVISOR, &[][..]),
        ThreadKind::Vmm => (COMMON, VMM, VMM_REBOOT),
        ThreadKind::Vcpu | ThreadKind::VcpuSpawner => (COMMON, VCPU, VCPU_REBOOT),
        ThreadKind::RamRegistrar => (&[][..], RAM_REGISTRAR, &[][..]),
    };
    let extra = if reboot { extra } else { &[] };
    let spawn = if kind == ThreadKind::VcpuSpawner {
        SPAWN
    } else {
        &[]
    };
    common
        .iter()
        .chain(own)
        .chain(extra)
        .chain(spawn)
        .copied()
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0:?} seccomp filter: {1}")]
    Build(ThreadKind, String),
    #[error("cannot install the {0:?} seccomp filter: {1}")]
    Install(ThreadKind, String),
}

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    v: u64,
) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, len, op, v).map_err(|e| e.to_string())
}

fn rules_for(a: &Allowed) -> Result<Vec<SeccompRule>, String> {
    let rule = |c: Vec<SeccompCondition>| SeccompRule::new(c).map_err(|e| e.to_string());
    // One rule per value: argument `arg` equal to it.
    let one_of = |arg: u8, values: &[u64]| -> Result<Vec<SeccompRule>, String> {
        values
            .iter()
            .map(|v| {
                rule(vec![cond(
                    arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    *v,
                )?])
            })
            .collect()
    };
    Ok(match a.args {
        Args::Any => vec![],
        Args::Ioctl(reqs) => one_of(1, reqs)?,
        Args::TerminalIoctl(reqs) => reqs
            .iter()
            .map(|r| {
                rule(vec![
                    cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)?,
                    cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *r)?,
                ])
            })
            .collect::<Result<_, _>>()?,
        Args::Prctl(options) => one_of(0, options)?,
        Args::Fcntl(cmds) => one_of(1, cmds)?,
        Args::NoExec => vec![rule(vec![cond(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?],
    })
}

/// Compiles the filter of a thread kind.
pub fn compile(kind: ThreadKind, reboot: bool) -> Result<BpfProgram, SeccompError> {
    // Listed syscalls whose rules match are allowed; anything else traps.
    to_bpf(
        kind,
        rules(kind, reboot)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
    )
}

/// The rules of a thread kind's filter, by syscall number.
fn rules(kind: ThreadKind, reboot: bool) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let err = |e: String| SeccompError::Build(kind, e);
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let list = allowed(kind, reboot);
    for a in &list {
        // A syscall allowed with any arguments keeps no conditions (an empty rule list).
        let rules = if list
            .iter()
            .any(|o| o.nr == a.nr && matches!(o.args, Args::Any))
        {
            vec![]
        } else {
            rules_for(a).map_err(err)?
        };
        map.entry(a.nr).or_default().extend(rules);
    }
    Ok(map)
}

/// Builds a filter of `kind` from its rules: `mismatch` for syscalls (or arguments) the rules
/// do not match, `matched` for those they do. The filter is a search tree over the syscall
/// numbers (tree.rs), which the kernel caches quickly at install.
fn to_bpf(
    kind: ThreadKind,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    tree::build(rules, mismatch, matched).map_err(|e| SeccompError::Build(kind, e))
}

/// The spawn guard, stacked on the vCPU spawner's filter in every vCPU thread: it traps the
/// `SPAWN` syscalls and lets the rest through to the filter below, so what remains is the
/// vCPU list. It is short, hence cheap to install (the kernel's cost grows with a filter's
/// length and with how far syscall numbers go into it), and the spawner's filter is
/// inherited, not installed again, by each new thread.
pub fn compile_spawn_guard() -> Result<BpfProgram, SeccompError> {
    let map: BTreeMap<i64, Vec<SeccompRule>> = SPAWN.iter().map(|a| (a.nr, vec![])).collect();
    to_bpf(
        ThreadKind::Vcpu,
        map,
        SeccompAction::Allow,
        SeccompAction::Trap,
    )
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
    use super::*;

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
                "tgkill",
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
                "tgkill",
                "timerfd_settime"
            ])
        );
        // Not the common list: no brk, mmap, mprotect, mremap, sched_yield, fcntl.
        assert_eq!(
            names(ThreadKind::RamRegistrar),
            [
                "clock_gettime",
                "exit",
                "exit_group",
                "futex",
                "ioctl",
                "madvise",
                "rt_sigprocmask",
                "write"
            ]
        );
        assert_eq!(
            ioctls(ThreadKind::RamRegistrar, true),
            [KVM_SET_USER_MEMORY_REGION]
        );
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
            vec![KVM_SET_IRQCHIP, KVM_SET_USER_MEMORY_REGION],
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
        for reboot in [false, true] {
            let vcpu = allowed(ThreadKind::Vcpu, reboot);
            let spawner = allowed(ThreadKind::VcpuSpawner, reboot);
            // Nothing the guard forbids is something a vCPU thread needs...
            for s in SPAWN {
                assert!(
                    vcpu.iter().all(|a| a.nr != s.nr),
                    "{} in the vCPU list",
                    s.name
                );
            }
            // ...and the spawner has nothing else beyond the vCPU list.
            let extra: Vec<&str> = spawner
                .iter()
                .filter(|a| vcpu.iter().all(|v| v.nr != a.nr))
                .map(|a| a.name)
                .collect();
            let spawn: Vec<&str> = SPAWN.iter().map(|a| a.name).collect();
            assert_eq!(extra, spawn);
        }
        // Short, so that each vCPU thread installs it cheaply.
        let guard = compile_spawn_guard().unwrap();
        assert!(guard.len() < 64, "{} instructions", guard.len());
        assert!(guard.len() * 3 < compile(ThreadKind::Vcpu, false).unwrap().len());
    }

    const KINDS: [ThreadKind; 5] = [
        ThreadKind::Supervisor,
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::VcpuSpawner,
        ThreadKind::RamRegistrar,
    ];

    /// Argument sets that reach every rule of `list`, matching and not.
    fn argument_sets(list: &[Allowed]) -> Vec<[u64; 6]> {
        let mut sets = vec![[0; 6], [u64::MAX; 6]];
        let mut at = |i: usize, v: u64| {
            for fd0 in [0, 3] {
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

    #[test]
    fn the_search_tree_decides_as_seccompiler_does() {
        use seccompiler::{SeccompFilter, TargetArch};
        let mut filters = vec![];
        for kind in KINDS {
            for reboot in [false, true] {
                let rules = rules(kind, reboot).unwrap();
                let linear: BpfProgram = SeccompFilter::new(
                    rules,
                    SeccompAction::Trap,
                    SeccompAction::Allow,
                    TargetArch::x86_64,
                )
                .unwrap()
                .try_into()
                .unwrap();
                let mut list = allowed(kind, reboot);
                if kind == ThreadKind::Vcpu {
                    list.extend_from_slice(SPAWN);
                }
                filters.push((
                    format!("{kind:?} reboot={reboot}"),
                    linear,
                    compile(kind, reboot).unwrap(),
                    list,
                ));
            }
        }
        let guard: BTreeMap<i64, Vec<SeccompRule>> = SPAWN.iter().map(|a| (a.nr, vec![])).collect();
        let guard_linear: BpfProgram = SeccompFilter::new(
            guard,
            SeccompAction::Allow,
            SeccompAction::Trap,
            TargetArch::x86_64,
        )
        .unwrap()
        .try_into()
        .unwrap();
        filters.push((
            "spawn guard".into(),
            guard_linear,
            compile_spawn_guard().unwrap(),
            SPAWN.to_vec(),
        ));

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
                walk(tree) <= 24,
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
