//! The POST diagnostic port 0x80. The embedded firmware writes its hand-off code here just
//! before it jumps to a loaded guest, which `--stats` reports as `handoff_us`; Linux writes
//! here for I/O delays. Reads return the last value written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::bus::BusDevice;
use crate::exit::ExitReason;

pub const POST_CODE_PORT: u64 = 0x80;
pub const POST_CODE_LEN: u64 = 1;
/// The codes the firmware writes at the hand-off: 0xB0 + the boot kind.
pub const HANDOFF_CODES: std::ops::RangeInclusive<u8> = 0xB0..=0xBF;

/// When the firmware handed off to the guest (its first hand-off code).
pub static HANDOFF: OnceLock<Instant> = OnceLock::new();
/// Instructions vCPU 0 ran, when it is single-stepped (`--x-count-instructions`).
pub static STEPS: AtomicU64 = AtomicU64::new(0);
/// STEPS at the hand-off, or where the embedded firmware halts for good (vcpu/mod.rs).
pub static STEPS_AT_HANDOFF: OnceLock<u64> = OnceLock::new();

/// Keeps STEPS as the firmware's count: at the hand-off, or where it halts for good. Counted
/// only while vCPU 0 is single-stepped.
pub fn keep_steps() {
    let steps = STEPS.load(Ordering::Relaxed);
    if steps > 0 {
        let _ = STEPS_AT_HANDOFF.set(steps);
    }
}

#[derive(Default)]
pub struct PostCode {
    last: u8,
}

impl BusDevice for PostCode {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.last);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<ExitReason> {
        if let Some(v) = data.first() {
            self.last = *v;
            if HANDOFF_CODES.contains(v) {
                let _ = HANDOFF.set(Instant::now());
                keep_steps();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_code_and_the_first_handoff() {
        let mut p = PostCode::default();
        p.write(0, &[0x12]);
        let mut r = [0u8; 1];
        p.read(0, &mut r);
        assert_eq!(r, [0x12]);
        p.write(0, &[0xB3]);
        let first = HANDOFF.get().copied();
        assert!(first.is_some());
        p.write(0, &[0xB1]);
        assert_eq!(HANDOFF.get().copied(), first);
    }
}
