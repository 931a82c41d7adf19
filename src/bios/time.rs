//! INT 1Ah: the tick count (the BDA's, which the firmware's IRQ 0 handler advances) and the
//! CMOS clock, in BCD whatever mode the guest set the RTC to.

use kvm_bindings::kvm_regs;

use super::bda;
use super::*;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_B: u8 = 0x0B;
const REG_CENTURY: u8 = 0x32;
const B_SET: u8 = 0x80;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const B_DST: u8 = 0x01;
const HOUR_PM: u8 = 0x80;

impl Bios {
    /// A clock register as BCD.
    pub(super) fn clock_bcd(&self, b: u8, reg: u8) -> u8 {
        let v = self.clock.register(reg);
        if reg == REG_HOURS && b & B_24H == 0 {
            // 12-hour mode: 12 AM is 0, PM adds 12.
            let h = if b & B_BINARY != 0 {
                v & 0x7F
            } else {
                from_bcd(v & 0x7F)
            };
            return bcd(h % 12 + if v & HOUR_PM != 0 { 12 } else { 0 });
        }
        if b & B_BINARY != 0 {
            bcd(v)
        } else {
            v
        }
    }

    /// Writes a BCD value to a clock register in the RTC's mode.
    fn set_clock_bcd(&self, b: u8, reg: u8, v: u8) {
        let n = from_bcd(v);
        let raw = if reg == REG_HOURS && b & B_24H == 0 {
            let h12 = if n.is_multiple_of(12) { 12 } else { n % 12 };
            let pm = if n >= 12 { HOUR_PM } else { 0 };
            (if b & B_BINARY != 0 { h12 } else { bcd(h12) }) | pm
        } else if b & B_BINARY != 0 {
            n
        } else {
            v
        };
        self.clock.set_register(reg, raw);
    }

    /// Sets clock registers as a BIOS does: the clock stopped (SET) while they change.
    fn set_clock(&self, values: &[(u8, u8)], dst: Option<bool>) {
        let b = self.clock.register(REG_B);
        self.clock.set_register(REG_B, b | B_SET);
        for (reg, v) in values {
            self.set_clock_bcd(b, *reg, *v);
        }
        let b = match dst {
            Some(true) => b | B_DST,
            Some(false) => b & !B_DST,
            None => b,
        };
        self.clock.set_register(REG_B, b & !B_SET);
    }

    pub(super) fn time(&self, r: &mut kvm_regs) -> Outcome {
        match ah(r) {
            0x00 => {
                let ticks = self.read_u32(bda::TICKS);
                set16(&mut r.rcx, (ticks >> 16) as u16);
                set16(&mut r.rdx, ticks as u16);
                set_al(r, self.read_u8(bda::MIDNIGHT));
                self.write_u8(bda::MIDNIGHT, 0);
                ok()
            }
            0x01 => {
                let ticks = u32::from(cx(r)) << 16 | u32::from(dx(r));
                self.write_u32(bda::TICKS, ticks % bda::TICKS_PER_DAY);
                self.write_u8(bda::MIDNIGHT, 0);
                ok()
            }
            0x02 => {
                let b = self.clock.register(REG_B);
                let (h, m, s) = (
                    self.clock_bcd(b, REG_HOURS),
                    self.clock_bcd(b, REG_MINUTES),
                    self.clock_bcd(b, REG_SECONDS),
                );
                set16(&mut r.rcx, u16::from(h) << 8 | u16::from(m));
                set16(&mut r.rdx, u16::from(s) << 8 | u16::from(b & B_DST));
                ok()
            }
            0x03 => {
                self.set_clock(
                    &[
                        (REG_HOURS, ch(r)),
                        (REG_MINUTES, cl(r)),
                        (REG_SECONDS, dh(r)),
                    ],
                    Some(dl(r) & 1 != 0),
                );
                ok()
            }
            0x04 => {
                let b = self.clock.register(REG_B);
                let (c, y, m, d) = (
                    self.clock_bcd(b, REG_CENTURY),
                    self.clock_bcd(b, REG_YEAR),
                    self.clock_bcd(b, REG_MONTH),
                    self.clock_bcd(b, REG_DAY),
                );
                set16(&mut r.rcx, u16::from(c) << 8 | u16::from(y));
                set16(&mut r.rdx, u16::from(m) << 8 | u16::from(d));
                ok()
            }
            0x05 => {
                self.set_clock(
                    &[
                        (REG_CENTURY, ch(r)),
                        (REG_YEAR, cl(r)),
                        (REG_MONTH, dh(r)),
                        (REG_DAY, dl(r)),
                    ],
                    None,
                );
                ok()
            }
            _ => fail(r, 0x86),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::memory::MIB;

    fn time_call(t: &TestBios, rax: u64, rcx: u64, rdx: u64) -> kvm_regs {
        let mut r = kvm_regs {
            rax,
            rcx,
            rdx,
            ..Default::default()
        };
        assert_eq!(call(&t.bios, Service::Time, &mut r) & CF, 0, "{rax:#x}");
        r
    }

    #[test]
    fn ticks_come_from_the_bda_and_the_midnight_flag_clears() {
        let t = bios(64 * MIB);
        let r = time_call(&t, 0x0000, 0, 0);
        assert_eq!((cx(&r), dx(&r), al(&r)), (0, 0x1234, 0));
        t.bios.write_u8(bda::MIDNIGHT, 1);
        let r = time_call(&t, 0x0000, 0, 0);
        assert_eq!(al(&r), 1);
        assert_eq!(t.bios.read_u8(bda::MIDNIGHT), 0);
        time_call(&t, 0x0100, 0x0017, 0xFFFF);
        let r = time_call(&t, 0x0000, 0, 0);
        assert_eq!((cx(&r), dx(&r)), (0x0017, 0xFFFF));
    }

    #[test]
    fn time_and_date_read_and_set_in_bcd() {
        let t = bios(64 * MIB);
        let r = time_call(&t, 0x0200, 0, 0);
        assert_eq!((cx(&r), dx(&r)), (0x1345, 0x3000));
        let r = time_call(&t, 0x0400, 0, 0);
        assert_eq!((cx(&r), dx(&r)), (0x2024, 0x0229));
        time_call(&t, 0x0300, 0x2359, 0x5801);
        let r = time_call(&t, 0x0200, 0, 0);
        assert_eq!((cx(&r), dx(&r)), (0x2359, 0x5801));
        time_call(&t, 0x0500, 0x1999, 0x1231);
        let r = time_call(&t, 0x0400, 0, 0);
        assert_eq!((cx(&r), dx(&r)), (0x1999, 0x1231));
        // The clock runs again after the set.
        assert_eq!(t.clock.register(REG_B) & B_SET, 0);
    }

    #[test]
    fn binary_and_12_hour_modes_are_converted() {
        let t = bios(64 * MIB);
        // Binary, 12-hour: 1 PM is 0x81.
        t.clock.set_register(REG_B, B_BINARY);
        t.clock.set_register(REG_HOURS, 0x81);
        t.clock.set_register(REG_MINUTES, 45);
        t.clock.set_register(REG_SECONDS, 30);
        let r = time_call(&t, 0x0200, 0, 0);
        assert_eq!((cx(&r), dx(&r)), (0x1345, 0x3000));
        // 00:05 is 12 AM.
        time_call(&t, 0x0300, 0x0005, 0);
        assert_eq!(t.clock.register(REG_HOURS), 12);
        assert_eq!(t.clock.register(REG_MINUTES), 5);
        // BCD, 12-hour: 23h is 11 PM.
        t.clock.set_register(REG_B, 0);
        time_call(&t, 0x0300, 0x2300, 0);
        assert_eq!(t.clock.register(REG_HOURS), 0x91);
        let mut r = regs(0x0600);
        assert_ne!(call(&t.bios, Service::Time, &mut r) & CF, 0);
    }
}
