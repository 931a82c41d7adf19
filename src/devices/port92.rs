//! System Control Port A at 0x92 (PS/2 "fast A20 and reset", decoded by the PIIX3).
//!
//! | bit | name       | write                 | read                     |
//! |-----|------------|-----------------------|--------------------------|
//! | 0   | fast reset | 1 resets the machine  | 0 (cleared by the reset) |
//! | 1   | fast A20   | latched, no effect    | always 1                 |
//! | 2-7 | reserved   | latched               | what was written         |
//!
//! A20 is always enabled on this machine (KVM never masks address line 20; the i8042's gate
//! and INT 15h AX=2400h/2401h are recorded the same way), so bit 1 always reads as set: a
//! guest that reads the port to learn the A20 state (SeaBIOS's INT 15h AX=2402h does) gets
//! the truth, and one that sets the bit and reads it back (as Linux's fast-A20 path and
//! SeaBIOS's `set_a20` do) sees it set.
//!
//! Writing bit 0 = 1 is a reset request exactly like the i8042's 0xFE pulse or 0xCF9: the
//! write returns `ExitReason::Reset`, which ends the VM or, with `--reboot`, restarts it. As
//! on a PC, the reset clears bit 0 (QEMU's port 92 does the same), so after a reboot the
//! usual read-modify-write (`in al, 0x92; or al, 1; out 0x92, al`) resets again.

use crate::bus::BusDevice;
use crate::exit::ExitReason;

pub const PORT92_PORT: u64 = 0x92;
pub const PORT92_LEN: u64 = 1;

/// Bit 0: fast reset.
const FAST_RESET: u8 = 1 << 0;
/// Bit 1: fast A20 gate.
const FAST_A20: u8 = 1 << 1;

/// System Control Port A.
#[derive(Debug, Default)]
pub struct Port92 {
    latched: u8,
}

impl Port92 {
    pub fn new() -> Self {
        Self::default()
    }

    fn value(&self) -> u8 {
        self.latched | FAST_A20
    }
}

impl BusDevice for Port92 {
    /// A byte register; the bytes of a wider access above it read as unassigned ports do.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
        if let Some(b) = data.first_mut() {
            *b = self.value();
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<ExitReason> {
        let v = *data.first()?;
        // The reset the write requests clears the bit again.
        self.latched = v & !FAST_RESET;
        (v & FAST_RESET != 0).then_some(ExitReason::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &mut Port92) -> u8 {
        let mut b = [0u8];
        p.read(0, &mut b);
        b[0]
    }

    #[test]
    fn a20_reads_as_enabled_from_reset_on() {
        let mut p = Port92::new();
        assert_eq!(read(&mut p), 0x02);
        // Linux's fast A20: set bit 1, keep bit 0 clear.
        assert_eq!(p.write(0, &[0x02]), None);
        assert_eq!(read(&mut p), 0x02);
        // Disabling is recorded nowhere: A20 stays on.
        assert_eq!(p.write(0, &[0x00]), None);
        assert_eq!(read(&mut p), 0x02);
        // Reserved bits read back.
        assert_eq!(p.write(0, &[0xF0]), None);
        assert_eq!(read(&mut p), 0xF2);
    }

    #[test]
    fn bit_0_resets_like_the_i8042_and_0xcf9() {
        let mut p = Port92::new();
        assert_eq!(p.write(0, &[0x01]), Some(ExitReason::Reset));
        // The reset cleared bit 0: read-modify-write resets again.
        let v = read(&mut p);
        assert_eq!(v & 1, 0);
        assert_eq!(p.write(0, &[v | 1]), Some(ExitReason::Reset));
        assert_eq!(p.write(0, &[0x03]), Some(ExitReason::Reset));
        assert_eq!(p.write(0, &[0xFF]), Some(ExitReason::Reset));
        assert_eq!(read(&mut p), 0xFE);
    }

    #[test]
    fn wide_accesses_use_the_first_byte() {
        let mut p = Port92::new();
        let mut w = [0u8; 4];
        p.read(0, &mut w);
        assert_eq!(w, [0x02, 0xFF, 0xFF, 0xFF]);
        assert_eq!(p.write(0, &[0x00, 0x01]), None);
        assert_eq!(
            p.write(0, &[0x01, 0x00, 0x00, 0x00]),
            Some(ExitReason::Reset)
        );
        assert_eq!(p.write(0, &[]), None);
        let mut empty = [0u8; 0];
        p.read(0, &mut empty);
    }
}
