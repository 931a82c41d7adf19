//! Why a VM stopped, and the process exit code each reason maps to (see the README).

use std::fmt;

/// Exit codes scripts can rely on.
pub mod code {
    /// Powered off, halted with interrupts off on every vCPU, or reset.
    pub const OK: i32 = 0;
    /// Bad configuration or input file; nothing was started.
    pub const BAD_CONFIG: i32 = 2;
    /// The guest crashed: triple fault, KVM internal error, unhandled exit, forbidden syscall.
    pub const CRASH: i32 = 3;
    /// `--timeout` expired.
    pub const TIMEOUT: i32 = 124;
    /// The VMM itself failed to build or run the machine (a host problem, not the guest's).
    pub const HOST_ERROR: i32 = 1;
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
    /// SIGINT or SIGTERM.
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
            ExitReason::Signal(sig) => 128 + sig,
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
        assert_eq!(ExitReason::TripleFault.exit_code(), 3);
        assert_eq!(ExitReason::InternalError("x".into()).exit_code(), 3);
        assert_eq!(ExitReason::Timeout.exit_code(), 124);
        assert_eq!(ExitReason::Halted.exit_code(), 0);
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
    }
}
