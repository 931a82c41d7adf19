//! Boot-phase timing and the `--stats` JSON line.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::exit::ExitReason;

/// When the first vCPU came back to user space for the first time: the firmware's first port
/// access, a few instructions after the reset vector.
pub static FIRST_EXIT: OnceLock<Instant> = OnceLock::new();
/// What boots, for `--stats` (`BootPlan::describe`).
pub static BOOT: OnceLock<&'static str> = OnceLock::new();
/// When the first vCPU entered KVM_RUN.
pub static FIRST_RUN: OnceLock<Instant> = OnceLock::new();

#[derive(Debug)]
pub struct Phases {
    pub start: Instant,
    pub config: Duration,
    pub kvm: Duration,
    pub memory: Duration,
    pub devices: Duration,
    pub vcpus: Duration,
    /// When the RAM registered while the guest ran was all there (`ram_gate.rs`); None when
    /// none was deferred, or it was not done by the exit.
    pub ram_ready: Option<Instant>,
    /// How many times a vCPU waited for that RAM.
    pub ram_waits: u64,
    /// How many port writes came through KVM's ring instead of an exit each
    /// (coalesced_io.rs); None without the ring.
    pub coalesced_writes: Option<u64>,
}

impl Phases {
    pub fn new(start: Instant) -> Self {
        Phases {
            start,
            config: Duration::ZERO,
            kvm: Duration::ZERO,
            memory: Duration::ZERO,
            devices: Duration::ZERO,
            vcpus: Duration::ZERO,
            ram_ready: None,
            ram_waits: 0,
            coalesced_writes: None,
        }
    }

    fn since_start(&self, t: Option<&Instant>) -> String {
        t.map(|t| {
            t.saturating_duration_since(self.start)
                .as_micros()
                .to_string()
        })
        .unwrap_or_else(|| "null".into())
    }

    /// One JSON object, times in microseconds since the VMM's `main` started.
    pub fn json(&self, reason: &ExitReason, code: i32) -> String {
        let usage = usage();
        format!(
            concat!(
                "{{\"exit_reason\":\"{}\",\"exit_code\":{},\"detail\":{},",
                "\"phases_us\":{{\"config\":{},\"kvm\":{},\"memory\":{},\"devices\":{},\"vcpus\":{}}},",
                "\"boot\":\"{}\",\"first_run_us\":{},\"first_exit_us\":{},\"handoff_us\":{},",
                "\"ram_ready_us\":{},\"ram_waits\":{},\"coalesced_writes\":{},",
                "\"total_us\":{},\"peak_rss_kib\":{},{}",
                "\"cpu_us\":{}}}"
            ),
            reason.name(),
            code,
            json_string(&reason.to_string()),
            self.config.as_micros(),
            self.kvm.as_micros(),
            self.memory.as_micros(),
            self.devices.as_micros(),
            self.vcpus.as_micros(),
            BOOT.get().copied().unwrap_or("demo"),
            self.since_start(FIRST_RUN.get()),
            self.since_start(FIRST_EXIT.get()),
            self.since_start(crate::devices::post_code::HANDOFF.get()),
            self.since_start(self.ram_ready.as_ref()),
            self.ram_waits,
            self.coalesced_writes
                .map_or_else(|| "null".to_string(), |n| n.to_string()),
            self.start.elapsed().as_micros(),
            usage.0,
            match crate::devices::post_code::STEPS_AT_HANDOFF.get() {
                Some(n) => format!("\"firmware_instructions\":{n},"),
                None => String::new(),
            },
            usage.1,
        )
    }
}

/// The peak resident set of this process in KiB, and the CPU time (user + system) all its
/// threads used, in microseconds.
fn usage() -> (i64, i64) {
    // SAFETY: rusage is plain data that getrusage fills.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (-1, -1);
    }
    let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    (ru.ru_maxrss, us(ru.ru_utime) + us(ru.ru_stime))
}

pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_escaped_and_complete() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        let p = Phases::new(Instant::now());
        let j = p.json(&ExitReason::DebugExit(1), 3);
        assert!(j.starts_with("{\"exit_reason\":\"debug-exit\",\"exit_code\":3,"));
        assert!(j.contains("\"phases_us\":{\"config\":0,"));
        assert!(j.contains("\"ram_ready_us\":null,\"ram_waits\":0,\"coalesced_writes\":null,"));
        assert!(j.ends_with('}'));
    }
}
