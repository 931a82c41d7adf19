//! The seccomp lists, one per thread kind, as data, and their compilation into BPF (by
//! tree.rs). build.rs compiles every filter from this file at build time (it includes it
//! with tree.rs), so that the VMM only copies them at start (mod.rs, `compile`); the unit
//! tests check that both compilations agree.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_mp_state, kvm_regs, kvm_sregs};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
};

/// The thread kinds, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The parent process that waits for the exit code (supervisor.rs).
    Supervisor,
    /// The VMM's main thread once the machine is built (monitor/).
    Vmm,
    /// A vCPU thread (vcpu/).
    Vcpu,
    /// The first vCPU threads while they create the others and set the APs' CPUIDs
    /// (vcpu/threads.rs): the vCPU list and what that takes (`spawn_list`). Every vCPU thread
    /// then stacks the spawn guard (`compile_spawn_guard`) on it, which leaves exactly the
    /// vCPU list.
    VcpuSpawner,
    /// The thread that registers RAM above 16 MiB while the guest runs (vm/slots.rs,
    /// `DeferredRam`).
    RamRegistrar,
}

pub const KVMIO: u64 = 0xAE;
pub const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}
pub const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
pub const KVM_RUN: u64 = io(0x80);
pub const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_regs>());
pub const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_sregs>());
pub const KVM_GET_MP_STATE: u64 = ior(0x98, std::mem::size_of::<kvm_mp_state>());
pub const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
pub const KVM_SET_REGS: u64 = iow(0x82, std::mem::size_of::<kvm_regs>());
pub const KVM_SET_SREGS: u64 = iow(0x84, std::mem::size_of::<kvm_sregs>());
pub const KVM_SET_FPU: u64 = iow(0x8D, std::mem::size_of::<kvm_bindings::kvm_fpu>());
pub const KVM_SET_LAPIC: u64 = iow(0x8F, std::mem::size_of::<kvm_bindings::kvm_lapic_state>());
pub const KVM_SET_MP_STATE: u64 = iow(0x99, std::mem::size_of::<kvm_mp_state>());
pub const KVM_SET_MSRS: u64 = iow(0x89, std::mem::size_of::<kvm_bindings::kvm_msrs>());
pub const KVM_SET_VCPU_EVENTS: u64 =
    iow(0xA0, std::mem::size_of::<kvm_bindings::kvm_vcpu_events>());
/// An AP's CPUID, set by the thread that sets the APs up (vcpu/threads.rs).
pub const KVM_SET_CPUID2: u64 = iow(0x90, std::mem::size_of::<kvm_bindings::kvm_cpuid2>());
/// vCPUs the first vCPU thread creates while the machine is built (vm/vcpus.rs).
pub const KVM_CREATE_VCPU: u64 = io(0x41);
pub const KVM_SET_IRQCHIP: u64 = ior(0x63, std::mem::size_of::<kvm_bindings::kvm_irqchip>());
/// PAM changes (shadow.rs) remap the BIOS shadow segments from the vCPU that wrote them.
pub const KVM_SET_USER_MEMORY_REGION: u64 = iow(
    0x46,
    std::mem::size_of::<kvm_bindings::kvm_userspace_memory_region>(),
);
/// After the exit status is out, one ioeventfd added and removed shortens the VM's
/// teardown (vm/teardown.rs).
pub const KVM_IOEVENTFD: u64 = iow(0x79, std::mem::size_of::<kvm_bindings::kvm_ioeventfd>());
/// COM1's coalesced zone (coalesced_io.rs): a vCPU registers it again when the guest writes
/// to it parked; the monitor parks it, and the vCPU whose register write asked for THR-empty
/// interrupts or loopback gives it up.
pub const KVM_REGISTER_COALESCED_MMIO: u64 = iow(
    0x67,
    std::mem::size_of::<kvm_bindings::kvm_coalesced_mmio_zone>(),
);
pub const KVM_UNREGISTER_COALESCED_MMIO: u64 = iow(
    0x68,
    std::mem::size_of::<kvm_bindings::kvm_coalesced_mmio_zone>(),
);
pub const TCGETS: u64 = 0x5401;
pub const TCSETS: u64 = 0x5402;

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
    /// `clone` of a thread (CLONE_THREAD set), not of a process.
    CloneThread,
}

/// One allowed syscall; `name` is what the reviewed lists (and the README) show.
#[derive(Clone, Copy, Debug)]
pub struct Allowed {
    pub nr: i64,
    pub name: &'static str,
    pub args: Args,
}

pub const fn any(nr: i64, name: &'static str) -> Allowed {
    Allowed {
        nr,
        name,
        args: Args::Any,
    }
}

/// Memory management and thread synchronisation every thread of a Rust program needs.
pub const COMMON: &[Allowed] = &[
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
/// (and stdout's status flags) when the VM process died without reporting.
pub const SUPERVISOR: &[Allowed] = &[
    any(libc::SYS_read, "read"),
    Allowed {
        nr: libc::SYS_fcntl,
        name: "fcntl",
        args: Args::Fcntl(&[libc::F_SETFL as u64]),
    },
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
pub const VMM: &[Allowed] = &[
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
    // Kicks (pthread_kill, with `thread_kill`).
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
        args: Args::Ioctl(&[KVM_IOEVENTFD, KVM_UNREGISTER_COALESCED_MMIO]),
    },
];

/// A vCPU thread: KVM_RUN, the state reads of the halt check and the crash dump, device
/// side effects (eventfd writes, the RTC's timer).
pub const VCPU: &[Allowed] = &[
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
            KVM_REGISTER_COALESCED_MMIO,
            KVM_UNREGISTER_COALESCED_MMIO,
        ]),
    },
    // INT 13h reads and writes the disk image; INT 15h AH=86h waits.
    any(libc::SYS_pread64, "pread64"),
    any(libc::SYS_pwrite64, "pwrite64"),
    any(libc::SYS_clock_nanosleep, "clock_nanosleep"),
    // A PAM write kicks the other vCPUs out of KVM_RUN (pause.rs): pthread_kill, with
    // `thread_kill`.
    any(libc::SYS_getpid, "getpid"),
    // Restoring the terminal from the SIGSYS handler: glibc's tcsetattr reads the settings
    // back after setting them.
    Allowed {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        args: Args::TerminalIoctl(&[TCGETS, TCSETS]),
    },
    any(libc::SYS_timerfd_settime, "timerfd_settime"),
];

/// What creating a thread takes beyond the vCPU list: in the creating thread the C library's
/// thread creation (`thread_start`; its stack's `mmap`/`mprotect` are common), in the new
/// thread Rust's start (the thread's name, `sched_getaffinity`, `gettid`), and stacking the
/// guard (`no_new_privs`, `seccomp`: a filter can only add restrictions); an AP's CPUID,
/// which the thread that sets the APs up sets before the AP's thread starts; and creating
/// vCPUs, which the first vCPU thread does beside the building thread before it has any
/// vCPU of its own (its `kvm_run` mapping is a common `mmap`). Allowed to the vCPU spawner
/// only, forbidden again by the spawn guard.
const SPAWN: &[Allowed] = &[
    Allowed {
        nr: libc::SYS_ioctl,
        name: "ioctl",
        args: Args::Ioctl(&[KVM_SET_CPUID2, KVM_CREATE_VCPU]),
    },
    any(libc::SYS_seccomp, "seccomp"),
    Allowed {
        nr: libc::SYS_prctl,
        name: "prctl",
        args: Args::Prctl(&[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64]),
    },
    any(libc::SYS_sched_getaffinity, "sched_getaffinity"),
    any(libc::SYS_gettid, "gettid"),
];

/// The C library the VMM is linked with: the few calls its threads make differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Libc {
    Glibc,
    Musl,
}

impl Libc {
    /// From Rust's `target_env` (build.rs reads it from `CARGO_CFG_TARGET_ENV`).
    pub fn from_target_env(env: &str) -> Libc {
        if env == "musl" {
            Libc::Musl
        } else {
            Libc::Glibc
        }
    }

    /// `pthread_kill`: glibc's `tgkill` (after `getpid`, listed), musl's `tkill`.
    pub const fn thread_kill(self) -> Allowed {
        match self {
            Libc::Glibc => any(libc::SYS_tgkill, "tgkill"),
            Libc::Musl => any(libc::SYS_tkill, "tkill"),
        }
    }

    /// `pthread_create` in the creating thread and the new thread's first calls: glibc's
    /// `clone3`, `rseq` and `set_robust_list`; musl's `clone`, for threads only.
    pub const fn thread_start(self) -> &'static [Allowed] {
        const GLIBC: &[Allowed] = &[
            any(libc::SYS_clone3, "clone3"),
            any(libc::SYS_rseq, "rseq"),
            any(libc::SYS_set_robust_list, "set_robust_list"),
        ];
        const MUSL: &[Allowed] = &[Allowed {
            nr: libc::SYS_clone,
            name: "clone",
            args: Args::CloneThread,
        }];
        match self {
            Libc::Glibc => GLIBC,
            Libc::Musl => MUSL,
        }
    }

    /// A thread's end, beyond `rt_sigprocmask` and `exit`: glibc releases the stack's pages
    /// (`madvise`), a detached musl thread unmaps its own stack (`munmap`).
    pub const fn thread_end(self) -> Allowed {
        match self {
            Libc::Glibc => any(libc::SYS_madvise, "madvise"),
            Libc::Musl => any(libc::SYS_munmap, "munmap"),
        }
    }
}

/// What the vCPU spawner may do beyond the vCPU list, and the spawn guard takes back.
pub fn spawn_list(libc: Libc) -> Vec<Allowed> {
    SPAWN.iter().chain(libc.thread_start()).copied().collect()
}

/// The RAM registering thread (vm/slots.rs, `DeferredRam`): its own list, without
/// `COMMON`, since it allocates nothing once sandboxed. Found by running it under this
/// filter: each entry is a call it was seen to make, or one the SIGSYS handler needs.
pub const RAM_REGISTRAR: &[Allowed] = &[
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
    // Leaving the thread: the C library blocks signals, releases the stack (`thread_end`),
    // then exit; exit_group for the SIGSYS handler. (Threads have no alternate signal stack
    // to take down: main.rs, `main`.)
    any(libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
    any(libc::SYS_exit, "exit"),
    any(libc::SYS_exit_group, "exit_group"),
];

/// With `--reboot`: a vCPU restores its reset state itself.
pub const VCPU_REBOOT: &[Allowed] = &[Allowed {
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
pub const VMM_REBOOT: &[Allowed] = &[Allowed {
    nr: libc::SYS_ioctl,
    name: "ioctl",
    args: Args::Ioctl(&[
        KVM_SET_IRQCHIP,
        KVM_SET_USER_MEMORY_REGION,
        KVM_REGISTER_COALESCED_MMIO,
    ]),
}];

/// Every syscall a thread kind may make, common ones first (the RAM registering thread has
/// its own short list instead); `reboot` adds what restoring the reset state needs.
pub fn allowed(kind: ThreadKind, reboot: bool, libc: Libc) -> Vec<Allowed> {
    let (common, own, extra) = match kind {
        ThreadKind::Supervisor => (COMMON, SUPERVISOR, &[][..]),
        ThreadKind::Vmm => (COMMON, VMM, VMM_REBOOT),
        ThreadKind::Vcpu | ThreadKind::VcpuSpawner => (COMMON, VCPU, VCPU_REBOOT),
        ThreadKind::RamRegistrar => (&[][..], RAM_REGISTRAR, &[][..]),
    };
    let extra = if reboot { extra } else { &[] };
    let mut list: Vec<Allowed> = common.iter().chain(own).chain(extra).copied().collect();
    match kind {
        ThreadKind::Supervisor => {}
        ThreadKind::Vmm | ThreadKind::Vcpu => list.push(libc.thread_kill()),
        ThreadKind::VcpuSpawner => {
            list.push(libc.thread_kill());
            list.extend(spawn_list(libc));
        }
        ThreadKind::RamRegistrar => list.push(libc.thread_end()),
    }
    list
}

pub fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    v: u64,
) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, len, op, v).map_err(|e| e.to_string())
}

pub fn rules_for(a: &Allowed) -> Result<Vec<SeccompRule>, String> {
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
        Args::CloneThread => vec![rule(vec![cond(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )?])?],
        Args::NoExec => vec![rule(vec![cond(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?],
    })
}

/// Compiles the filter of a thread kind.
pub fn compile_list(kind: ThreadKind, reboot: bool, libc: Libc) -> Result<BpfProgram, String> {
    // Listed syscalls whose arguments match are allowed; anything else traps.
    super::tree::build(
        alternatives(&allowed(kind, reboot, libc)),
        SeccompAction::Trap,
        SeccompAction::Allow,
    )
}

/// What a list allows, by syscall number: the argument checks of each entry for that number,
/// any one of which allows it (`Args::Any` among them: whatever the arguments).
pub fn alternatives(list: &[Allowed]) -> BTreeMap<i64, Vec<Args>> {
    let mut map: BTreeMap<i64, Vec<Args>> = BTreeMap::new();
    for a in list {
        map.entry(a.nr).or_default().push(a.args);
    }
    map
}

/// The rules of a thread kind's filter, by syscall number, as seccompiler takes them: the
/// reference the unit tests hold the compiled filters to.
pub fn rules(
    kind: ThreadKind,
    reboot: bool,
    libc: Libc,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let list = allowed(kind, reboot, libc);
    for a in &list {
        // A syscall allowed with any arguments keeps no conditions (an empty rule list).
        let rules = if list
            .iter()
            .any(|o| o.nr == a.nr && matches!(o.args, Args::Any))
        {
            vec![]
        } else {
            rules_for(a)?
        };
        map.entry(a.nr).or_default().extend(rules);
    }
    Ok(map)
}

/// The spawn guard, stacked on the vCPU spawner's filter in every vCPU thread: it traps the
/// `spawn_list` syscalls and lets the rest through to the filter below, so what remains is the
/// vCPU list. It is short, hence cheap to install (the kernel's cost grows with a filter's
/// length and with how far syscall numbers go into it), and the spawner's filter is
/// inherited, not installed again, by each new thread.
pub fn spawn_guard(libc: Libc) -> Result<BpfProgram, String> {
    super::tree::build(
        alternatives(&spawn_list(libc)),
        SeccompAction::Allow,
        SeccompAction::Trap,
    )
}

/// The spawn guard's rules, as seccompiler takes them (the unit tests' reference): what
/// `spawn_list` adds, with its arguments (an ioctl traps only for the requests listed, not
/// for the vCPU list's).
pub fn spawn_guard_rules(libc: Libc) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for a in &spawn_list(libc) {
        map.entry(a.nr).or_default().extend(rules_for(a)?);
    }
    Ok(map)
}

/// Every thread kind.
pub const KINDS: [ThreadKind; 5] = [
    ThreadKind::Supervisor,
    ThreadKind::Vmm,
    ThreadKind::Vcpu,
    ThreadKind::VcpuSpawner,
    ThreadKind::RamRegistrar,
];
