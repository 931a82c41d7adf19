//! The ACPI power-management I/O block of the PIIX4-style PM function, at a fixed port:
//! PM1a event (status/enable) and control registers, the 24-bit PM timer, and GPE0.
//!
//! | offset | register  | width | notes                                                   |
//! |--------|-----------|-------|---------------------------------------------------------|
//! | 0x00   | PM1a_STS  | 2     | write-1-to-clear: TMR_STS, GBL_STS, PWRBTN_STS, WAK_STS |
//! | 0x02   | PM1a_EN   | 2     | TMR_EN, GBL_EN, PWRBTN_EN                               |
//! | 0x04   | PM1a_CNT  | 2     | SCI_EN reads 1; SLP_TYP bits 10-12; SLP_EN (write-only) |
//! | 0x08   | PM_TMR    | 4     | read-only 24-bit counter at 3.579545 MHz                |
//! | 0x20   | GPE0_STS  | 2     | write-1-to-clear; no GPE sources                        |
//! | 0x22   | GPE0_EN   | 2     |                                                         |
//!
//! Every register takes any access width at any offset: accesses are split into bytes.
//! Other offsets in the block read 0 and drop writes. Setting SLP_EN with SLP_TYP 0 (S5,
//! as the DSDT's \_S5 says) powers off; no other sleep state exists.
//!
//! The SCI (IRQ 9) is level-triggered on real hardware: asserted while any status bit is
//! set together with its enable bit. Here it is an edge: the eventfd is written once each
//! time that condition goes from false to true (an enabled status bit becomes set, or an
//! enable bit is set while its status is pending). `sci_level` reports the condition, so a
//! KVM irqfd with a resample eventfd can re-assert the line while it holds.

use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::ExitReason;
use crate::log;

/// Where the block goes on the port-I/O bus, and its length.
pub const PM_BASE: u16 = 0x600;
pub const PM_LEN: u64 = 0x40;
/// The SCI's ISA IRQ.
pub const SCI_IRQ: u32 = 9;
/// The PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;

const PM1_STS: u64 = 0x00;
const PM1_EN: u64 = 0x02;
const PM1_CNT: u64 = 0x04;
const PM_TMR: u64 = 0x08;
const GPE0_STS: u64 = 0x20;
const GPE0_EN: u64 = 0x22;

/// PM1 status and enable bits.
pub const TMR_STS: u16 = 1 << 0;
pub const GBL_STS: u16 = 1 << 5;
pub const PWRBTN_STS: u16 = 1 << 8;
pub const WAK_STS: u16 = 1 << 15;
const PM1_STS_BITS: u16 = TMR_STS | GBL_STS | PWRBTN_STS | WAK_STS;
pub const TMR_EN: u16 = 1 << 0;
pub const GBL_EN: u16 = 1 << 5;
pub const PWRBTN_EN: u16 = 1 << 8;
const PM1_EN_BITS: u16 = TMR_EN | GBL_EN | PWRBTN_EN;

/// PM1 control bits.
pub const SCI_EN: u16 = 1 << 0;
const BM_RLD: u16 = 1 << 1;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 7 << SLP_TYP_SHIFT;
pub const SLP_EN: u16 = 1 << 13;
/// The SLP_TYP value for S5 (soft off).
pub const SLP_TYP_S5: u16 = 0;
/// Control bits that are stored and read back.
const PM1_CNT_RW: u16 = BM_RLD | SLP_TYP_MASK;

/// The PM timer counts 24 bits; TMR_STS is set whenever bit 23 changes.
const TIMER_MASK: u64 = (1 << 24) - 1;
const TIMER_OVERFLOW_SHIFT: u32 = 23;

const NS_PER_SEC: u128 = 1_000_000_000;

/// A monotonic time source for the PM timer.
pub trait MonotonicClock: Send {
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn now(&self) -> Duration;
}

/// The host's monotonic clock, measured from its creation.
pub struct HostMonotonicClock {
    origin: Instant,
}

impl Default for HostMonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl HostMonotonicClock {
    pub fn new() -> Self {
        HostMonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl MonotonicClock for HostMonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// The PM register block. Insert at `PM_BASE` with length `PM_LEN`.
pub struct AcpiPm {
    clock: Box<dyn MonotonicClock>,
    /// Clock reading at which the PM timer read 0.
    origin: Duration,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0_sts: u16,
    gpe0_en: u16,
    /// Number of bit-23 changes of the timer (ticks >> 23) already reflected in TMR_STS.
    timer_overflows: u64,
    sci: Option<EventFd>,
    sci_level: bool,
}

impl AcpiPm {
    /// The block with the PM timer on the host's monotonic clock; `sci` is IRQ 9's irqfd.
    pub fn new(sci: Option<EventFd>) -> Self {
        Self::with_clock(Box::new(HostMonotonicClock::new()), sci)
    }

    /// The block with the PM timer counting from `clock`'s current reading.
    pub fn with_clock(clock: Box<dyn MonotonicClock>, sci: Option<EventFd>) -> Self {
        let origin = clock.now();
        AcpiPm {
            clock,
            origin,
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            gpe0_sts: 0,
            gpe0_en: 0,
            timer_overflows: 0,
            sci,
            sci_level: false,
        }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// The power button was pressed: sets PWRBTN_STS and raises the SCI if PWRBTN_EN is set.
    pub fn press_power_button(&mut self) {
        self.pm1_sts |= PWRBTN_STS;
        self.update_sci();
    }

    /// How long until the PM timer's next bit-23 change would raise the SCI (zero if it is
    /// already due); None while TMR_EN is clear or TMR_STS is still pending (the event could
    /// not raise another SCI). Guest accesses change the answer, so query it again after
    /// each one, and call `tick` when the time has come.
    pub fn next_timer_overflow(&self) -> Option<Duration> {
        if self.pm1_en & TMR_EN == 0 || self.pm1_sts & TMR_STS != 0 {
            return None;
        }
        let next_tick = u128::from(self.timer_overflows.saturating_add(1)) << TIMER_OVERFLOW_SHIFT;
        // Ceiling division: the first nanosecond at which the tick count has reached it.
        let due_ns = (next_tick * NS_PER_SEC).div_ceil(u128::from(PM_TIMER_HZ));
        let wait = due_ns.saturating_sub(self.elapsed().as_nanos());
        Some(Duration::from_nanos(
            u64::try_from(wait).unwrap_or(u64::MAX),
        ))
    }

    /// Accounts timer overflows up to now: sets TMR_STS on a bit-23 change and raises the
    /// SCI if TMR_EN is set.
    pub fn tick(&mut self) {
        let ticks = self.ticks();
        self.account_timer(ticks);
        self.update_sci();
    }

    /// Whether the SCI condition holds (some status bit set together with its enable bit).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn sci_level(&self) -> bool {
        self.sci_level
    }

    fn elapsed(&self) -> Duration {
        self.clock.now().saturating_sub(self.origin)
    }

    /// Timer ticks since creation, not yet truncated to 24 bits.
    fn ticks(&self) -> u64 {
        let t = self.elapsed().as_nanos() * u128::from(PM_TIMER_HZ) / NS_PER_SEC;
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    fn account_timer(&mut self, ticks: u64) {
        let overflows = ticks >> TIMER_OVERFLOW_SHIFT;
        if overflows != self.timer_overflows {
            self.timer_overflows = overflows;
            self.pm1_sts |= TMR_STS;
        }
    }

    fn update_sci(&mut self) {
        let level =
            self.pm1_sts & self.pm1_en & PM1_EN_BITS != 0 || self.gpe0_sts & self.gpe0_en != 0;
        if level && !self.sci_level {
            if let Some(sci) = &self.sci {
                if let Err(e) = sci.write(1) {
                    log::debug(format_args!("acpi-pm: cannot raise the SCI: {e}"));
                }
            }
        }
        self.sci_level = level;
    }

    /// One byte of the register file, `timer` being the PM timer's current 24-bit value.
    fn read_byte(&self, offset: u64, timer: u32) -> u8 {
        let (value, byte) = match offset {
            PM1_STS..=0x01 => (u32::from(self.pm1_sts), offset - PM1_STS),
            PM1_EN..=0x03 => (u32::from(self.pm1_en), offset - PM1_EN),
            PM1_CNT..=0x05 => (u32::from(self.pm1_cnt | SCI_EN), offset - PM1_CNT),
            PM_TMR..=0x0B => (timer, offset - PM_TMR),
            GPE0_STS..=0x21 => (u32::from(self.gpe0_sts), offset - GPE0_STS),
            GPE0_EN..=0x23 => (u32::from(self.gpe0_en), offset - GPE0_EN),
            _ => return 0,
        };
        value.to_le_bytes()[byte as usize]
    }

    fn write_byte(&mut self, offset: u64, v: u8) -> Option<ExitReason> {
        // Each 16-bit register: where it is, and whether `v` is its low or high byte.
        let (shift, wide) = ((offset & 1) * 8, u16::from(v) << ((offset & 1) * 8));
        let byte_mask = 0xFFu16 << shift;
        match offset {
            PM1_STS..=0x01 => self.pm1_sts &= !(wide & PM1_STS_BITS),
            PM1_EN..=0x03 => {
                self.pm1_en = (self.pm1_en & !byte_mask) | (wide & PM1_EN_BITS);
            }
            PM1_CNT..=0x05 => {
                self.pm1_cnt = (self.pm1_cnt & !byte_mask) | (wide & PM1_CNT_RW);
                if wide & SLP_EN != 0 {
                    return self.sleep();
                }
            }
            GPE0_STS..=0x21 => self.gpe0_sts &= !wide,
            GPE0_EN..=0x23 => self.gpe0_en = (self.gpe0_en & !byte_mask) | wide,
            _ => {}
        }
        None
    }

    /// SLP_EN was written: enter the sleep state SLP_TYP names.
    fn sleep(&mut self) -> Option<ExitReason> {
        let typ = (self.pm1_cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if typ == SLP_TYP_S5 {
            return Some(ExitReason::PowerOff);
        }
        log::debug(format_args!(
            "acpi-pm: sleep type {typ} is not supported; SLP_EN ignored"
        ));
        None
    }
}

impl BusDevice for AcpiPm {
    /// The status, enable and control registers back to zero, the SCI down; the PM timer
    /// runs on.
    fn reset(&mut self) {
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = 0;
        self.gpe0_sts = 0;
        self.gpe0_en = 0;
        self.update_sci();
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let ticks = self.ticks();
        self.account_timer(ticks);
        self.update_sci();
        let timer = (ticks & TIMER_MASK) as u32;
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .map_or(0, |o| self.read_byte(o, timer));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        let ticks = self.ticks();
        self.account_timer(ticks);
        let mut exit = None;
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                break;
            };
            if let Some(e) = self.write_byte(o, *v) {
                exit = Some(e);
            }
        }
        self.update_sci();
        exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Clone)]
    struct FakeClock(Arc<AtomicU64>);

    impl FakeClock {
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
        }
        fn set_ns(&self, ns: u64) {
            self.0.store(ns, Ordering::SeqCst);
        }
    }

    impl MonotonicClock for FakeClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    /// A block created at clock time 5 s, with an SCI eventfd.
    fn new_pm() -> (AcpiPm, FakeClock, EventFd) {
        let clock = FakeClock(Arc::new(AtomicU64::new(5_000_000_000)));
        let sci = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let pm = AcpiPm::with_clock(Box::new(clock.clone()), Some(sci.try_clone().unwrap()));
        (pm, clock, sci)
    }

    fn pulses(sci: &EventFd) -> u64 {
        sci.read().unwrap_or(0)
    }

    fn read(pm: &mut AcpiPm, offset: u64, len: usize) -> u32 {
        let mut d = [0u8; 4];
        pm.read(offset, &mut d[..len]);
        u32::from_le_bytes(d)
    }

    #[test]
    fn timer_counts_at_3_579545_mhz_and_wraps_at_24_bits() {
        let (mut pm, clock, _) = new_pm();
        assert_eq!(read(&mut pm, PM_TMR, 4), 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(read(&mut pm, PM_TMR, 4), 3_579_545);
        clock.advance(Duration::from_secs(1));
        assert_eq!(read(&mut pm, PM_TMR, 4), 7_159_090);
        // 10 s = 35,795,450 ticks = 2 * 2^24 + 2,241,018.
        clock.advance(Duration::from_secs(8));
        let t = read(&mut pm, PM_TMR, 4);
        assert_eq!(t, 2_241_018);
        assert_eq!(read(&mut pm, PM_TMR, 2), t & 0xFFFF);
        assert_eq!(read(&mut pm, PM_TMR + 1, 2), (t >> 8) & 0xFFFF);
        assert_eq!(read(&mut pm, PM_TMR + 2, 1), t >> 16);
        assert_eq!(read(&mut pm, PM_TMR + 3, 1), 0);
        // Just below and at the 24-bit wrap.
        let ns = |ticks: u64| (u128::from(ticks) * NS_PER_SEC).div_ceil(PM_TIMER_HZ.into()) as u64;
        clock.set_ns(5_000_000_000 + ns((1 << 24) - 1));
        assert_eq!(read(&mut pm, PM_TMR, 4), 0xFF_FFFF);
        clock.set_ns(5_000_000_000 + ns(1 << 24));
        assert_eq!(read(&mut pm, PM_TMR, 4), 0);
        // Read-only.
        assert_eq!(pm.write(PM_TMR, &[0; 4]), None);
        assert_eq!(read(&mut pm, PM_TMR, 4), 0);
    }

    #[test]
    fn pm1_status_is_write_one_to_clear() {
        let (mut pm, _, _) = new_pm();
        pm.press_power_button();
        assert_eq!(read(&mut pm, PM1_STS, 2), u32::from(PWRBTN_STS));
        assert_eq!(pm.write(PM1_STS, &[0, 0]), None);
        assert_eq!(read(&mut pm, PM1_STS, 2), u32::from(PWRBTN_STS));
        assert_eq!(pm.write(PM1_STS, &[0xFF, 0xFE]), None);
        assert_eq!(read(&mut pm, PM1_STS, 2), u32::from(PWRBTN_STS));
        assert_eq!(pm.write(PM1_STS + 1, &[0x01]), None);
        assert_eq!(read(&mut pm, PM1_STS, 2), 0);
        pm.press_power_button();
        assert_eq!(read(&mut pm, PM1_STS + 1, 1), 1);
        // A dword write covering PM1_STS and PM1_EN.
        assert_eq!(pm.write(PM1_STS, &[0, 1, 0x21, 1]), None);
        assert_eq!(read(&mut pm, PM1_STS, 4), 0x0121_0000);
    }

    #[test]
    fn enable_and_control_bits() {
        let (mut pm, _, _) = new_pm();
        assert_eq!(pm.write(PM1_EN, &[0xFF, 0xFF]), None);
        assert_eq!(read(&mut pm, PM1_EN, 2), u32::from(PM1_EN_BITS));
        assert_eq!(read(&mut pm, PM1_CNT, 2), u32::from(SCI_EN));
        assert_eq!(pm.write(PM1_CNT, &[0x00, 0x14]), None);
        assert_eq!(
            read(&mut pm, PM1_CNT, 2),
            0x1401,
            "SLP_TYP 5 kept, SCI_EN reads 1"
        );
        assert_eq!(pm.write(GPE0_EN, &[0x34, 0x12]), None);
        assert_eq!(read(&mut pm, GPE0_STS, 4), 0x1234_0000);
        assert_eq!(read(&mut pm, 0x10, 4), 0);
        assert_eq!(pm.write(0x3F, &[1, 2, 3, 4]), None);
        assert_eq!(pm.write(u64::MAX, &[1, 2]), None);
        let mut d = [0u8; 2];
        pm.read(u64::MAX, &mut d);
        assert_eq!(d, [0, 0]);
    }

    #[test]
    fn slp_en_with_s5_powers_off() {
        let (mut pm, _, _) = new_pm();
        assert_eq!(pm.write(PM1_CNT, &[0x00, 0x20]), Some(ExitReason::PowerOff));
        let (mut pm, _, _) = new_pm();
        assert_eq!(pm.write(PM1_CNT + 1, &[0x20]), Some(ExitReason::PowerOff));
        let (mut pm, _, _) = new_pm();
        assert_eq!(
            pm.write(PM1_CNT, &[0x01, 0x20, 0, 0]),
            Some(ExitReason::PowerOff)
        );
        // Another sleep type is ignored, and SLP_EN reads 0.
        let (mut pm, _, _) = new_pm();
        assert_eq!(pm.write(PM1_CNT, &[0x00, 0x34]), None);
        assert_eq!(read(&mut pm, PM1_CNT, 2), 0x1401);
        // Setting SLP_TYP alone does nothing.
        assert_eq!(pm.write(PM1_CNT, &[0x00, 0x00]), None);
    }

    #[test]
    fn power_button_raises_the_sci_when_enabled() {
        let (mut pm, _, sci) = new_pm();
        pm.press_power_button();
        assert_eq!(pulses(&sci), 0);
        assert!(!pm.sci_level());
        // Enabling with the status pending raises it.
        assert_eq!(pm.write(PM1_EN + 1, &[0x01]), None);
        assert_eq!(pulses(&sci), 1);
        assert!(pm.sci_level());
        // Still pending: no new edge.
        pm.press_power_button();
        assert_eq!(pulses(&sci), 0);
        assert_eq!(pm.write(PM1_STS, &[0x00, 0x01]), None);
        assert!(!pm.sci_level());
        pm.press_power_button();
        assert_eq!(pulses(&sci), 1);
        assert_eq!(pm.write(PM1_STS, &[0x00, 0x01]), None);
        assert_eq!(pm.write(PM1_EN, &[0x00, 0x00]), None);
        pm.press_power_button();
        assert_eq!(pulses(&sci), 0);
    }

    #[test]
    fn timer_overflow_sets_tmr_sts_and_raises_the_sci() {
        let (mut pm, clock, sci) = new_pm();
        assert_eq!(pm.next_timer_overflow(), None);
        assert_eq!(pm.write(PM1_EN, &[0x01, 0x00]), None);
        let first = pm.next_timer_overflow().unwrap();
        // 2^23 ticks at 3.579545 MHz.
        assert_eq!(first.as_nanos(), 2_343_484_438);
        clock.advance(first - Duration::from_nanos(1));
        pm.tick();
        assert_eq!(pulses(&sci), 0);
        assert_eq!(pm.next_timer_overflow(), Some(Duration::from_nanos(1)));
        clock.advance(Duration::from_nanos(1));
        assert_eq!(pm.next_timer_overflow(), Some(Duration::ZERO));
        pm.tick();
        assert_eq!(pulses(&sci), 1);
        assert_eq!(read(&mut pm, PM1_STS, 2) & 1, 1);
        assert_eq!(read(&mut pm, PM_TMR + 2, 1), 0x80);
        assert_eq!(pm.next_timer_overflow(), None, "pending");
        assert_eq!(pm.write(PM1_STS, &[0x01]), None);
        // The second change of bit 23 is due at 4,686,968,875 ns.
        assert_eq!(
            pm.next_timer_overflow(),
            Some(Duration::from_nanos(4_686_968_875) - first)
        );
        // Without TMR_EN the status is still set, but no SCI.
        assert_eq!(pm.write(PM1_EN, &[0x00]), None);
        clock.advance(first);
        pm.tick();
        assert_eq!(pulses(&sci), 0);
        assert_eq!(read(&mut pm, PM1_STS, 2), 1);
    }

    #[test]
    fn host_clock_moves_forward() {
        let mut pm = AcpiPm::new(None);
        let a = read(&mut pm, PM_TMR, 4);
        std::thread::sleep(Duration::from_millis(2));
        let b = read(&mut pm, PM_TMR, 4);
        assert!(b.wrapping_sub(a) & 0xFF_FFFF >= 7000, "{a} {b}");
    }
}
