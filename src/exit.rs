//! Why a VM stopped, and the process exit code each reason maps to (see the README).
//!
//! Odd codes belong to the guest (debug-exit writes `(v << 1) | 1`); every code the VMM
//! chooses itself is even, so a script can tell a guest's verdict from the VMM's.

use std::fmt;

/// Exit codes scripts can rely on.
pub mod code {
    /// Powered off, halted with interrupts off on every vCPU, or reset.
    pub const OK: i32 = 0;
    /// Bad configuration or input file; nothing was started.
    pub const BAD_CONFIG: i32 = 2;
    /// The guest crashed: triple fault, KVM internal error, unhandled exit.
    pub const CRASH: i32 = 4;
    /// The host failed: KVM missing or failing, a forbidden syscall (seccomp), the
    /// supervisor's own failures. Not the guest's doing.
    pub const HOST_ERROR: i32 = 6;
    /// `--timeout` expired.
    pub const TIMEOUT: i32 = 124;
    /// Stopped by signal n: `SIGNAL_BASE + n`, the shell's convention.
    pub const SIGNAL_BASE: i32 = 128;
}

/// The reason a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// Every vCPU halted with interrupts disabled (or waits for a SIPI nobody can send).
    Halted,
    /// The guest asked for power-off.
    PowerOff,
    /// The guest asked for a reset.
    Reset,
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u32),
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM could not run the guest (KVM_EXIT_INTERNAL_ERROR, FAIL_ENTRY, ...).
    InternalError(String),
    /// An exit this VMM does not handle.
    UnhandledExit(String),
    /// `--timeout` expired.
    Timeout,
    /// A stop signal: SIGINT, SIGTERM, SIGHUP or SIGQUIT (monitor/signals.rs).
    Signal(i32),
    /// The VMM failed on the host side (an ioctl or thread start failed).
    HostError(String),
}

impl ExitReason {
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Halted | ExitReason::PowerOff | ExitReason::Reset => code::OK,
            ExitReason::DebugExit(v) => (((*v as u64) << 1 | 1) & 0xFF) as i32,
            ExitReason::TripleFault
            | ExitReason::InternalError(_)
            | ExitReason::UnhandledExit(_) => code::CRASH,
            ExitReason::Timeout => code::TIMEOUT,
            ExitReason::Signal(sig) => code::SIGNAL_BASE + sig,
            ExitReason::HostError(_) => code::HOST_ERROR,
        }
    }

    /// A short machine-readable name, used by `--stats`.
    pub fn name(&self) -> &'static str {
        match self {
            ExitReason::Halted => "halted",
            ExitReason::PowerOff => "poweroff",
            ExitReason::Reset => "reset",
            ExitReason::DebugExit(_) => "debug-exit",
            ExitReason::TripleFault => "triple-fault",
            ExitReason::InternalError(_) => "internal-error",
            ExitReason::UnhandledExit(_) => "unhandled-exit",
            ExitReason::Timeout => "timeout",
            ExitReason::Signal(_) => "signal",
            ExitReason::HostError(_) => "host-error",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Halted => write!(f, "guest halted with interrupts disabled"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest requested a reset"),
            ExitReason::DebugExit(v) => write!(f, "guest wrote {v:#x} to the debug-exit port"),
            ExitReason::TripleFault => write!(f, "guest triple-faulted (KVM shutdown)"),
            ExitReason::InternalError(s) => write!(f, "KVM internal error: {s}"),
            ExitReason::UnhandledExit(s) => write!(f, "unhandled VM exit: {s}"),
            ExitReason::Timeout => write!(f, "timeout expired"),
            ExitReason::Signal(s) => write!(f, "stopped by signal {s}"),
            ExitReason::HostError(s) => write!(f, "host error: {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_exit_codes_follow_isa_debug_exit() {
        assert_eq!(ExitReason::DebugExit(0).exit_code(), 1);
        assert_eq!(ExitReason::DebugExit(1).exit_code(), 3);
        assert_eq!(ExitReason::DebugExit(0x10).exit_code(), 0x21);
        // The process exit status keeps the low 8 bits, as the shell would see them.
        assert_eq!(ExitReason::DebugExit(0x7F).exit_code(), 0xFF);
        assert_eq!(ExitReason::DebugExit(0xFFFF_FFFF).exit_code(), 0xFF);
    }

    #[test]
    fn crash_and_timeout_codes() {
        assert_eq!(ExitReason::TripleFault.exit_code(), 4);
        assert_eq!(ExitReason::InternalError("x".into()).exit_code(), 4);
        assert_eq!(ExitReason::UnhandledExit("x".into()).exit_code(), 4);
        assert_eq!(ExitReason::HostError("x".into()).exit_code(), 6);
        assert_eq!(ExitReason::Timeout.exit_code(), 124);
        assert_eq!(ExitReason::Halted.exit_code(), 0);
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
        assert_eq!(ExitReason::Signal(1).exit_code(), 129);
    }

    /// Every code the VMM picks itself is even; only debug-exit makes odd ones.
    #[test]
    fn vmm_codes_are_even() {
        for c in [
            code::OK,
            code::BAD_CONFIG,
            code::CRASH,
            code::HOST_ERROR,
            code::TIMEOUT,
            code::SIGNAL_BASE,
        ] {
            assert_eq!(c % 2, 0, "{c}");
        }
        for r in [
            ExitReason::Halted,
            ExitReason::PowerOff,
            ExitReason::Reset,
            ExitReason::TripleFault,
            ExitReason::InternalError(String::new()),
            ExitReason::UnhandledExit(String::new()),
            ExitReason::Timeout,
            ExitReason::HostError(String::new()),
        ] {
            assert_eq!(r.exit_code() % 2, 0, "{r}");
        }
        for v in [0u32, 1, 0x7F, 0x80, 0xFFFF_FFFF] {
            assert_eq!(ExitReason::DebugExit(v).exit_code() % 2, 1);
        }
    }
}
