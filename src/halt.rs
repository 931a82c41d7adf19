//! Noticing that the guest has halted for good.
//!
//! With the in-kernel LAPIC, KVM keeps `HLT` inside `KVM_RUN`: no exit reaches user space, so
//! a guest that ends with `cli; hlt` would sit there forever. Each vCPU's binary statistics
//! file (`KVM_GET_STATS_FD`) has a `blocking` counter that becomes 1 within microseconds of
//! the vCPU halting, and it can be read with `pread` while the vCPU is inside `KVM_RUN`.
//!
//! The monitor reads `blocking` for every vCPU on a short tick (one `pread` per vCPU; the tick
//! lengthens as the guest ages, see `tick`). When
//! all of them block, it kicks each vCPU out of `KVM_RUN` (see `vcpu.rs`); each one then
//! reports its MP state and RFLAGS.IF. Halted with IF clear (or waiting for a SIPI that no
//! running vCPU can send) on every vCPU means nothing can ever wake the guest: it is dead,
//! and the VM exits 0. Otherwise the guest is only idle (a Linux idle loop halts with IF set):
//! the vCPUs resume and the next kick waits twice as long (up to `MAX_BACKOFF`); the monitor
//! does not sample before then, so an idle guest costs a few wake-ups a second.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use kvm_ioctls::VcpuFd;

/// KVM_GET_STATS_FD = _IO(KVMIO, 0xce).
const KVM_GET_STATS_FD: libc::c_ulong = 0xAECE;

/// How often `blocking` is sampled, by the guest's age: every `TICK_MIN` at first (the first
/// 20 ms), then 1/`TICK_FRACTION` of the age, up to `TICK_MAX`. A guest that halts is noticed
/// within that share of its run (a short-lived test within half a millisecond); a guest that
/// runs costs the monitor a wake-up per tick, about 45 µs of CPU here, so the share keeps
/// that cost near 1% of a core in the first second and far below after. The minimum is not
/// shorter because the wake-ups also slow a guest that has just started: with 200 µs, a
/// guest that prints a line and halts ended later (4.05 against 3.93 ms, 60 alternating
/// runs), though its halt was noticed sooner.
pub fn tick(age: Duration) -> Duration {
    (age / TICK_FRACTION).clamp(TICK_MIN, TICK_MAX)
}
pub const TICK_MIN: Duration = Duration::from_micros(500);
pub const TICK_MAX: Duration = Duration::from_millis(20);
const TICK_FRACTION: u32 = 40;
/// The first wait after a kick that found the guest alive; it doubles up to `MAX_BACKOFF`.
pub const MIN_BACKOFF: Duration = Duration::from_millis(1);
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Without a statistics fd (older kernels), vCPUs are kicked at least this often instead.
pub const FALLBACK_PERIOD: Duration = Duration::from_millis(20);

/// One vCPU's statistics the halt detector reads: `blocking` (the vCPU waits in KVM for an
/// event), and `exits` (how many times it left guest mode) where KVM has it.
pub struct BlockingStat {
    file: File,
    offset: u64,
    exits_offset: Option<u64>,
}

impl BlockingStat {
    /// Opens every vCPU's statistics fd and finds `blocking`; None if the kernel has neither.
    /// Every vCPU of a VM has the same statistics, so their layout is read from the first.
    pub fn open_all(vcpus: &[VcpuFd]) -> Option<Vec<BlockingStat>> {
        let mut stats: Vec<BlockingStat> = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let file = stats_fd(vcpu)?;
            let (offset, exits_offset) = match stats.first() {
                Some(first) => (first.offset, first.exits_offset),
                None => (find_stat(&file, "blocking")?, find_stat(&file, "exits")),
            };
            stats.push(BlockingStat {
                file,
                offset,
                exits_offset,
            });
        }
        Some(stats)
    }

    pub fn blocking(&self) -> bool {
        self.read(self.offset).is_some_and(|v| v != 0)
    }

    /// How many times the vCPU left guest mode; None where KVM does not count it.
    pub fn exits(&self) -> Option<u64> {
        self.read(self.exits_offset?)
    }

    fn read(&self, offset: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        matches!(self.file.read_at(&mut b, offset), Ok(8)).then(|| u64::from_ne_bytes(b))
    }
}

/// Whether every vCPU stayed out of guest mode between two readings of its `exits` (taken
/// before a halt check's kicks and after its last answer): then the "dead" answers, read one
/// vCPU after another, describe one moment. A vCPU that ran in between (an interrupt woke it
/// and it woke another with an IPI, then halted again) left guest mode at least once, at its
/// HLT or at its kick. Without the counter the answers are taken as they are.
pub fn still_since(before: &[Option<u64>], after: &[Option<u64>]) -> bool {
    before == after
}

/// The vCPU's binary statistics file.
fn stats_fd(vcpu: &VcpuFd) -> Option<File> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor that we own from here on.
    Some(unsafe { File::from_raw_fd(fd) })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Finds the file offset of a statistic's first value in a KVM binary statistics file.
fn find_stat(file: &File, name: &str) -> Option<u64> {
    let mut header = [0u8; 24];
    file.read_exact_at(&mut header, 0).ok()?;
    let name_size = u32_at(&header, 4)? as usize;
    let num_desc = u32_at(&header, 8)? as usize;
    let desc_offset = u32_at(&header, 16)? as u64;
    let data_offset = u32_at(&header, 20)? as u64;
    let stride = 16 + name_size;
    if num_desc > 4096 || name_size > 4096 {
        return None;
    }
    let mut descs = vec![0u8; stride * num_desc];
    file.read_exact_at(&mut descs, desc_offset).ok()?;
    parse_descriptors(&descs, stride, name).map(|off| data_offset + off as u64)
}

/// Descriptors: `{ u32 flags, s16 exponent, u16 size, u32 offset, u32 bucket_size, name }`.
fn parse_descriptors(descs: &[u8], stride: usize, name: &str) -> Option<u32> {
    descs.chunks_exact(stride).find_map(|d| {
        let n = &d[16..];
        let len = n.iter().position(|b| *b == 0).unwrap_or(n.len());
        (&n[..len] == name.as_bytes())
            .then(|| u32_at(d, 8))
            .flatten()
    })
}

/// When to sample and when to kick.
pub struct Backoff {
    pub next_kick_after: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff {
            next_kick_after: Duration::ZERO,
        }
    }
    /// The guest was found alive: wait longer before the next kick.
    pub fn alive(&mut self) {
        self.next_kick_after = (self.next_kick_after * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
    }

    /// How long after a check that found the guest alive the next kick may come. Without
    /// statistics every vCPU counts as blocking, so each kick is a real check: at most
    /// `FALLBACK_PERIOD` apart, or a halt would go unnoticed for up to `MAX_BACKOFF`.
    pub fn wait(&self, stats: bool) -> Duration {
        if stats {
            self.next_kick_after
        } else {
            self.next_kick_after.min(FALLBACK_PERIOD)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, offset: u32, name_size: usize) -> Vec<u8> {
        let mut d = vec![0u8; 16 + name_size];
        d[8..12].copy_from_slice(&offset.to_ne_bytes());
        d[16..16 + name.len()].copy_from_slice(name.as_bytes());
        d
    }

    #[test]
    fn descriptors_are_found_by_exact_name() {
        let mut all = desc("halt_exits", 0, 48);
        all.extend(desc("blocking_x", 8, 48));
        all.extend(desc("blocking", 16, 48));
        assert_eq!(parse_descriptors(&all, 64, "blocking"), Some(16));
        assert_eq!(parse_descriptors(&all, 64, "nothing"), None);
    }

    #[test]
    fn answers_stand_only_if_no_vcpu_ran_during_the_check() {
        assert!(still_since(&[Some(5), Some(9)], &[Some(5), Some(9)]));
        assert!(!still_since(&[Some(5), Some(9)], &[Some(5), Some(10)]));
        // A counter that could not be read both times stands for an unchanged one.
        assert!(still_since(&[None, Some(9)], &[None, Some(9)]));
        assert!(!still_since(&[None, Some(9)], &[Some(3), Some(9)]));
        assert!(!still_since(&[Some(1)], &[Some(1), Some(1)]));
    }

    #[test]
    fn tick_slows_down_with_age() {
        let ms = Duration::from_millis;
        // A short-lived guest is sampled every 500 µs, a 100 ms old one every 2.5 ms (its halt
        // noticed within 2.5% of its run), one older than 0.8 s every 20 ms.
        assert_eq!(tick(Duration::ZERO), TICK_MIN);
        assert_eq!(tick(ms(8)), TICK_MIN);
        assert_eq!(tick(ms(20)), TICK_MIN);
        assert_eq!(tick(ms(40)), ms(1));
        assert_eq!(tick(ms(100)), Duration::from_micros(2500));
        assert!(tick(ms(100)) < tick(ms(500)));
        assert_eq!(tick(ms(800)), TICK_MAX);
        assert_eq!(tick(Duration::from_secs(3600)), TICK_MAX);
    }

    #[test]
    fn backoff_doubles_and_saturates() {
        let mut b = Backoff::new();
        b.alive();
        assert_eq!(b.next_kick_after, MIN_BACKOFF);
        b.alive();
        assert_eq!(b.next_kick_after, MIN_BACKOFF * 2);
        for _ in 0..20 {
            b.alive();
        }
        assert_eq!(b.next_kick_after, MAX_BACKOFF);
        assert_eq!(b.wait(true), MAX_BACKOFF);
        // Without statistics, the kicks never drift further apart than the fallback period.
        assert_eq!(b.wait(false), FALLBACK_PERIOD);
        let mut young = Backoff::new();
        young.alive();
        assert_eq!(young.wait(false), MIN_BACKOFF);
    }
}
