//! The i440FX host bridge, PCI 00:00.0: identity, the PAM registers that steer accesses to
//! the 0xC0000-0xFFFFF BIOS area between ROM and RAM, and a permanently closed SMRAM.
//!
//! The bridge does not remap memory itself: every change of a segment's PAM mode is reported
//! to a callback given at construction, and the VMM moves its memory slots accordingly.

use crate::devices::pci::{command, reg, ConfigSpace, Header, PciFunction};
use crate::log;

/// Where the bridge sits on bus 0.
pub const I440FX_DEVICE: u8 = 0;
pub const I440FX_FUNCTION: u8 = 0;

const VENDOR_INTEL: u16 = 0x8086;
const DEVICE_I440FX: u16 = 0x1237;
const REVISION: u8 = 0x02;

/// Device-specific registers.
const PMCCFG: usize = 0x50;
const DRAMC: usize = 0x57;
const DRAMT: usize = 0x58;
const PAM0: usize = 0x59;
const SMRAM: usize = 0x72;

/// DRAMC at reset: DRAM refresh at the default rate.
const DRAMC_DEFAULT: u8 = 0x01;
/// SMRAM as it always reads: closed, not enabled, C-segment base (C_BASE_SEG = 010b).
const SMRAM_VALUE: u8 = 0x02;
/// SMRAM D_OPEN: a guest asking for SMRAM to be visible outside SMM.
const SMRAM_D_OPEN: u8 = 1 << 6;

/// Status at reset: fast back-to-back capable, medium DEVSEL timing.
const STATUS_DEFAULT: u16 = 0x0280;

/// How the bridge routes accesses to one PAM segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PamMode {
    /// 00: reads and writes go to the ROM (or PCI); here the segment is read-only ROM.
    Rom,
    /// 01: reads come from RAM, writes are dropped (they go to the ROM).
    ReadOnlyRam,
    /// 10: reads come from the ROM, writes go to RAM.
    WriteOnly,
    /// 11: reads and writes go to RAM.
    Ram,
}

impl PamMode {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => PamMode::Rom,
            1 => PamMode::ReadOnlyRam,
            2 => PamMode::WriteOnly,
            _ => PamMode::Ram,
        }
    }
}

/// A segment of the BIOS area and the mode it now has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PamChange {
    pub start: u64,
    pub size: u64,
    pub mode: PamMode,
}

/// Called with every segment whose mode a guest write changed, from the vCPU thread doing
/// the write, while the PCI bus and the bridge are locked.
pub type PamCallback = Box<dyn FnMut(PamChange) + Send>;

/// A PAM segment: its register, the shift of its two-bit field, and its range.
struct Segment {
    reg: usize,
    shift: u8,
    start: u64,
    size: u64,
}

const fn segment(reg: usize, shift: u8, start: u64, size: u64) -> Segment {
    Segment {
        reg,
        shift,
        start,
        size,
    }
}

const SEG: u64 = 0x4000;

/// PAM0 bits 4-5 cover 0xF0000-0xFFFFF; PAM1-PAM6 cover two 16 KiB segments each from
/// 0xC0000 up, the low nibble first.
const SEGMENTS: [Segment; 13] = [
    segment(0x59, 4, 0xF0000, 0x10000),
    segment(0x5A, 0, 0xC0000, SEG),
    segment(0x5A, 4, 0xC4000, SEG),
    segment(0x5B, 0, 0xC8000, SEG),
    segment(0x5B, 4, 0xCC000, SEG),
    segment(0x5C, 0, 0xD0000, SEG),
    segment(0x5C, 4, 0xD4000, SEG),
    segment(0x5D, 0, 0xD8000, SEG),
    segment(0x5D, 4, 0xDC000, SEG),
    segment(0x5E, 0, 0xE0000, SEG),
    segment(0x5E, 4, 0xE4000, SEG),
    segment(0x5F, 0, 0xE8000, SEG),
    segment(0x5F, 4, 0xEC000, SEG),
];

/// The host bridge function. Insert with `PciBus::add(I440FX_DEVICE, I440FX_FUNCTION, ..)`.
///
/// PAM0-PAM6 (0x59-0x5F) start at 00 (every segment ROM), as after a reset. SMRAM (0x72)
/// always reads 0x02: writes are accepted and dropped, so SMRAM is never opened or enabled
/// (there is no SMM here). PMCCFG, DETURBO (0x50-0x51), DRAMC (0x57, 0x01 at reset) and DRAMT
/// (0x58) are plain read/write bytes with no effect.
pub struct I440fx {
    config: ConfigSpace,
    on_pam: PamCallback,
}

impl I440fx {
    pub fn new(on_pam: PamCallback) -> Self {
        let mut config = ConfigSpace::new(&Header {
            vendor_id: VENDOR_INTEL,
            device_id: DEVICE_I440FX,
            class: 0x06,
            subclass: 0x00,
            prog_if: 0x00,
            revision: REVISION,
            ..Header::default()
        });
        config.set_u16(reg::COMMAND, command::MEMORY_SPACE | command::BUS_MASTER);
        config.set_u16(reg::STATUS, STATUS_DEFAULT);
        config.set_wmask_u16(PMCCFG, 0xFFFF);
        config.set_u8(DRAMC, DRAMC_DEFAULT);
        config.set_wmask_u8(DRAMC, 0xFF);
        config.set_wmask_u8(DRAMT, 0xFF);
        config.set_wmask_u8(PAM0, 0x30);
        for r in PAM0 + 1..=PAM0 + 6 {
            config.set_wmask_u8(r, 0x33);
        }
        config.set_u8(SMRAM, SMRAM_VALUE);
        I440fx { config, on_pam }
    }

    /// Every PAM segment with its current mode, 0xF0000 first, then 0xC0000 upwards.
    pub fn pam_segments(&self) -> [PamChange; 13] {
        SEGMENTS.map(|s| PamChange {
            start: s.start,
            size: s.size,
            mode: PamMode::from_bits(self.config.read_u8(s.reg) >> s.shift),
        })
    }
}

impl PciFunction for I440fx {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let smram_byte = SMRAM.checked_sub(offset).and_then(|i| data.get(i)).copied();
        if smram_byte.is_some_and(|v| v & SMRAM_D_OPEN != 0) {
            log::debug(format_args!(
                "i440fx: SMRAM stays closed (write {smram_byte:02x?})"
            ));
        }
        let before = self.pam_segments();
        self.config.write(offset, data);
        let after = self.pam_segments();
        for (old, new) in before.iter().zip(after) {
            if old.mode != new.mode {
                (self.on_pam)(new);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::devices::pci::PciBus;
    use std::sync::{Arc, Mutex};

    fn bridge() -> (I440fx, Arc<Mutex<Vec<PamChange>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let b = I440fx::new(Box::new(move |c| s.lock().unwrap().push(c)));
        (b, seen)
    }

    fn take(seen: &Arc<Mutex<Vec<PamChange>>>) -> Vec<PamChange> {
        std::mem::take(&mut *seen.lock().unwrap())
    }

    fn change(start: u64, size: u64, mode: PamMode) -> PamChange {
        PamChange { start, size, mode }
    }

    #[test]
    fn identity() {
        let (mut b, _) = bridge();
        assert_eq!(b.config_read(0), 0x1237_8086);
        assert_eq!(b.config_read(2), 0x0600_0002);
        assert_eq!(b.config_read(3) >> 16 & 0xFF, 0, "single-function header");
        assert_eq!(b.config().read_u8(DRAMC), 0x01);
    }

    #[test]
    fn every_pam_field_reports_its_range_and_mode() {
        let (mut b, seen) = bridge();
        let modes = [
            (1u8, PamMode::ReadOnlyRam),
            (2, PamMode::WriteOnly),
            (3, PamMode::Ram),
            (0, PamMode::Rom),
        ];
        for (i, s) in SEGMENTS.iter().enumerate() {
            for (bits, mode) in modes {
                // Rewrite the whole register, keeping the other nibble as it is.
                let other = b.config().read_u8(s.reg) & !(3 << s.shift);
                b.config_write(s.reg, &[other | bits << s.shift]);
                assert_eq!(
                    take(&seen),
                    vec![change(s.start, s.size, mode)],
                    "segment {i} bits {bits}"
                );
                assert_eq!(b.pam_segments()[i].mode, mode);
            }
        }
        // PAM1-6: both nibbles at once, low segment first.
        for (k, r) in (0x5Ausize..=0x5F).enumerate() {
            let lo = 0xC0000 + 0x8000 * k as u64;
            b.config_write(r, &[0x31]);
            assert_eq!(
                take(&seen),
                vec![
                    change(lo, SEG, PamMode::ReadOnlyRam),
                    change(lo + SEG, SEG, PamMode::Ram)
                ]
            );
        }
    }

    #[test]
    fn unchanged_modes_and_reserved_bits_do_not_call_back() {
        let (mut b, seen) = bridge();
        b.config_write(PAM0, &[0x30]);
        assert_eq!(take(&seen), vec![change(0xF0000, 0x10000, PamMode::Ram)]);
        b.config_write(PAM0, &[0x30]);
        b.config_write(PAM0, &[0xFF]);
        assert!(take(&seen).is_empty());
        assert_eq!(b.config().read_u8(PAM0), 0x30);
        b.config_write(0x5A, &[0xCC]);
        assert!(take(&seen).is_empty());
        assert_eq!(b.config().read_u8(0x5A), 0x00);
    }

    #[test]
    fn dword_writes_through_the_bus_cover_several_registers() {
        let (b, seen) = bridge();
        let mut bus = PciBus::new();
        bus.add(0, 0, Arc::new(Mutex::new(b))).unwrap();
        // Dword at 0x58: DRAMT, PAM0, PAM1, PAM2.
        assert_eq!(bus.write(0, &0x8000_0058u32.to_le_bytes()), None);
        assert_eq!(bus.write(4, &[0xAB, 0x10, 0x23, 0x00]), None);
        assert_eq!(
            take(&seen),
            vec![
                change(0xF0000, 0x10000, PamMode::ReadOnlyRam),
                change(0xC0000, SEG, PamMode::Ram),
                change(0xC4000, SEG, PamMode::WriteOnly),
            ]
        );
        let mut d = [0u8; 4];
        bus.read(4, &mut d);
        assert_eq!(d, [0xAB, 0x10, 0x23, 0x00]);
        // Word at 0x5E (through port 0xCFE): PAM5 and PAM6.
        assert_eq!(bus.write(0, &0x8000_005Cu32.to_le_bytes()), None);
        assert_eq!(bus.write(6, &[0x10, 0x02]), None);
        assert_eq!(
            take(&seen),
            vec![
                change(0xE4000, SEG, PamMode::ReadOnlyRam),
                change(0xE8000, SEG, PamMode::WriteOnly),
            ]
        );
    }

    #[test]
    fn smram_stays_closed() {
        let (mut b, _) = bridge();
        for v in [0x4Au8, 0x0A, 0x1A, 0xFF, 0x00] {
            b.config_write(SMRAM, &[v]);
            assert_eq!(b.config().read_u8(SMRAM), SMRAM_VALUE);
        }
        b.config_write(0x70, &[0xFF; 4]);
        assert_eq!(b.config_read(SMRAM / 4) >> 16 & 0xFF, 0x02);
    }

    #[test]
    fn starts_with_every_segment_rom() {
        let (b, _) = bridge();
        let segs = b.pam_segments();
        assert!(segs.iter().all(|s| s.mode == PamMode::Rom));
        assert_eq!(segs[0], change(0xF0000, 0x10000, PamMode::Rom));
        assert_eq!(segs[12], change(0xEC000, SEG, PamMode::Rom));
        let total: u64 = segs.iter().map(|s| s.size).sum();
        assert_eq!(total, 0x40000);
    }
}
