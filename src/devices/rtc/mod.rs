//! CMOS real-time clock and NVRAM (Motorola MC146818) at ports 0x70 (index) and 0x71 (data),
//! IRQ 8 delivered through an irqfd.
//!
//! The clock follows a `Clock` (the host's, in UTC or local time) plus a whole-second offset
//! that guest writes to the time registers change, so a guest-set time keeps ticking with the
//! host and the sub-second phase (UIP, update and periodic edges) stays on the host's second
//! boundaries. The device has no thread: the VMM asks `time_to_next_event` when the next
//! enabled interrupt is due and calls `tick` then; status flags a guest polls (UIP, register C)
//! are computed from the clock when read.
//!
//! Accesses wider than a byte act as byte accesses to consecutive ports: byte 0 goes to the
//! port addressed, byte 1 to the next one; bytes past 0x71 read as 0xFF and are not written.
//! Reads of the index port return 0xFF.
//!
//! This file holds the device: its registers, the NVRAM a BIOS leaves behind and the port
//! interface. `clock.rs` is the time it counts (`Clock`, `HostClock`), `calendar.rs` converts
//! between Unix seconds and the date and time of day in the registers, and `alarm.rs` finds
//! the next time of day the alarm registers match.

use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::ExitReason;
use crate::log;
use crate::memory::{MemoryLayout, HIGH_MEMORY_START, KIB, LOW_RAM_END, MIB};

mod alarm;
mod calendar;
mod clock;

use alarm::AlarmField;
use calendar::{days_in_month, DateTime};
pub use clock::{Clock, HostClock};

pub const RTC_PORT: u64 = 0x70;
pub const RTC_LEN: u64 = 2;
pub const RTC_IRQ: u32 = 8;
/// The century register, as named by the ACPI FADT's CENTURY field.
pub const REG_CENTURY: u8 = 0x32;

const CMOS_SIZE: usize = 128;
const INDEX_MASK: u8 = 0x7F;

const REG_SECONDS: usize = 0x00;
const REG_SECONDS_ALARM: usize = 0x01;
const REG_MINUTES: usize = 0x02;
const REG_MINUTES_ALARM: usize = 0x03;
const REG_HOURS: usize = 0x04;
const REG_HOURS_ALARM: usize = 0x05;
const REG_WEEKDAY: usize = 0x06;
const REG_DAY: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0A;
const REG_B: usize = 0x0B;
const REG_C: usize = 0x0C;
const REG_D: usize = 0x0D;
const CENTURY: usize = REG_CENTURY as usize;
/// The NVRAM registers that give the memory size (`nvram`): base memory (0x15/0x16),
/// extended memory (0x17/0x18 and 0x30/0x31), memory above 16 MiB (0x34/0x35) and above
/// 4 GiB (0x5B-0x5D).
const MEMORY_SIZE_REGISTERS: [u8; 11] = [
    0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34, 0x35, 0x5B, 0x5C, 0x5D,
];

const A_UIP: u8 = 0x80;
const A_DIVIDER_MASK: u8 = 0x70;
/// 32.768 kHz time base, divider chain running.
const A_DIVIDER_NORMAL: u8 = 0x20;
const A_RATE_MASK: u8 = 0x0F;
const A_DEFAULT: u8 = 0x26;

const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_SQWE: u8 = 0x08;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const B_DEFAULT: u8 = B_24H;

const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
/// The flags sit at the same bit positions as their enables in register B.
const C_SOURCES: u8 = C_PF | C_AF | C_UF;

const D_VRT: u8 = 0x80;
const HOUR_PM: u8 = 0x80;
/// Alarm bytes from 0xC0 up match every value.
const ALARM_DONT_CARE: u8 = 0xC0;

const NS_PER_SEC: i128 = 1_000_000_000;
const DIVIDER_HZ: i128 = 32_768;
/// UIP rises this long before each second boundary.
const UIP_NS: u32 = 244_000;

/// The MC146818 with its 128 bytes of CMOS.
pub struct Rtc {
    cmos: [u8; CMOS_SIZE],
    index: u8,
    clock: Box<dyn Clock>,
    irq: Option<EventFd>,
    /// Guest time minus clock time, in seconds.
    offset: i64,
    /// The day-of-week register minus the weekday of the date, modulo 7.
    weekday_adjust: u8,
    /// Clock time (ns since the epoch) up to which events have been accounted.
    last_ns: i128,
}

impl Rtc {
    /// An RTC on the host clock, counting UTC or (with `localtime`) the host's local time,
    /// with NVRAM describing `layout`. `irq` is IRQ 8's irqfd.
    pub fn new(layout: &MemoryLayout, cpus: u32, localtime: bool, irq: Option<EventFd>) -> Self {
        Self::with_clock(layout, cpus, Box::new(HostClock::new(localtime)), irq)
    }

    /// An RTC counting `clock`'s time. `cpus` goes to NVRAM byte 0x5F as `cpus - 1`.
    pub fn with_clock(
        layout: &MemoryLayout,
        cpus: u32,
        clock: Box<dyn Clock>,
        irq: Option<EventFd>,
    ) -> Self {
        let mut rtc = Rtc {
            cmos: nvram(layout, cpus),
            index: 0,
            clock,
            irq,
            offset: 0,
            weekday_adjust: 0,
            last_ns: 0,
        };
        rtc.cmos[REG_A] = A_DEFAULT;
        rtc.cmos[REG_B] = B_DEFAULT;
        rtc.cmos[REG_D] = D_VRT;
        let now = rtc.now_ns();
        rtc.last_ns = now;
        rtc.store_time(now);
        rtc
    }

    /// How long until the next enabled interrupt is due (zero if overdue).
    pub fn time_to_next_event(&self) -> Option<Duration> {
        let b = self.cmos[REG_B];
        if !self.running() || self.cmos[REG_C] & C_IRQF != 0 || b & C_SOURCES == 0 {
            return None;
        }
        let (last, now) = (self.last_ns, self.now_ns());
        if now < last {
            // The clock went back: a tick now restarts the accounting from the new time.
            return Some(Duration::ZERO);
        }
        let mut due: Option<i128> = None;
        let mut consider = |t: i128| due = Some(due.map_or(t, |d| d.min(t)));
        if b & B_PIE != 0 {
            if let Some(p) = self.period_ticks() {
                let tick = (ticks(last).div_euclid(p) + 1) * p;
                // Ceiling division: the first nanosecond at which the tick has happened.
                consider((tick * NS_PER_SEC + DIVIDER_HZ - 1).div_euclid(DIVIDER_HZ));
            }
        }
        if !self.frozen() {
            let next_second = secs(last).saturating_add(1);
            if b & B_UIE != 0 {
                consider(i128::from(next_second) * NS_PER_SEC);
            }
            if b & B_AIE != 0 {
                if let Some(t) = self.next_alarm(secs(last).saturating_add(self.offset)) {
                    consider(i128::from(t.saturating_sub(self.offset)) * NS_PER_SEC);
                }
            }
        }
        let wait = due?.saturating_sub(now).max(0);
        Some(Duration::from_nanos(
            u64::try_from(wait).unwrap_or(u64::MAX),
        ))
    }

    /// Accounts every event that fell due since the last call and raises IRQ 8 if one of
    /// them is enabled.
    pub fn tick(&mut self) {
        let now = self.now_ns();
        self.update(now, true);
    }

    /// A register as the guest reads it through 0x71, without touching the index the guest
    /// selected at 0x70 (the BIOS clock services).
    pub fn register(&mut self, index: u8) -> u8 {
        let now = self.now_ns();
        self.read_register(usize::from(index & INDEX_MASK), now)
    }

    /// A register written as the guest writes it through 0x71, the selected index untouched.
    pub fn set_register(&mut self, index: u8, value: u8) {
        let now = self.now_ns();
        self.write_register(usize::from(index & INDEX_MASK), value, now)
    }

    fn now_ns(&self) -> i128 {
        let (s, n) = self.clock.now();
        i128::from(s) * NS_PER_SEC + i128::from(n.min(999_999_999))
    }

    fn running(&self) -> bool {
        self.cmos[REG_A] & A_DIVIDER_MASK == A_DIVIDER_NORMAL
    }

    fn frozen(&self) -> bool {
        self.cmos[REG_B] & B_SET != 0
    }

    fn binary(&self) -> bool {
        self.cmos[REG_B] & B_BINARY != 0
    }

    /// The periodic interrupt's period in 32.768 kHz ticks, None when off.
    fn period_ticks(&self) -> Option<i128> {
        match self.cmos[REG_A] & A_RATE_MASK {
            0 => None,
            1 => Some(128),
            2 => Some(256),
            r => Some(1 << (r - 1)),
        }
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            ((v / 10 % 10) << 4) | (v % 10)
        }
    }

    /// Decodes a guest byte; invalid BCD digits saturate at 9.
    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            (v >> 4).min(9) * 10 + (v & 0xF).min(9)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.cmos[REG_B] & B_24H != 0 {
            return self.encode(h);
        }
        let pm = if h >= 12 { HOUR_PM } else { 0 };
        match h % 12 {
            0 => self.encode(12) | pm,
            h12 => self.encode(h12) | pm,
        }
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.cmos[REG_B] & B_24H != 0 {
            return self.decode(v).min(23);
        }
        let h12 = self.decode(v & !HOUR_PM).clamp(1, 12) % 12;
        if v & HOUR_PM != 0 {
            h12 + 12
        } else {
            h12
        }
    }

    /// The guest's calendar time at clock time `now`.
    fn current(&self, now: i128) -> DateTime {
        let mut dt = DateTime::from_unix(secs(now).saturating_add(self.offset));
        dt.weekday = (dt.weekday - 1 + self.weekday_adjust) % 7 + 1;
        dt
    }

    /// Encodes one clock register of `dt` in the current mode.
    fn time_register(&self, index: usize, dt: &DateTime) -> u8 {
        match index {
            REG_SECONDS => self.encode(dt.second),
            REG_MINUTES => self.encode(dt.minute),
            REG_HOURS => self.encode_hour(dt.hour),
            REG_WEEKDAY => self.encode(dt.weekday),
            REG_DAY => self.encode(dt.day),
            REG_MONTH => self.encode(dt.month),
            REG_YEAR => self.encode(dt.year.rem_euclid(100) as u8),
            _ => self.encode(dt.year.div_euclid(100).clamp(0, 99) as u8),
        }
    }

    /// Copies the current time into the clock registers.
    fn store_time(&mut self, now: i128) {
        let dt = self.current(now);
        for i in TIME_REGISTERS {
            self.cmos[i] = self.time_register(i, &dt);
        }
    }

    /// Makes the clock registers' contents the current time; out-of-range values saturate.
    fn load_time(&mut self, now: i128) {
        let c = &self.cmos;
        let year = i64::from(self.decode(c[CENTURY]).min(99)) * 100
            + i64::from(self.decode(c[REG_YEAR]).min(99));
        let month = self.decode(c[REG_MONTH]).clamp(1, 12);
        let dt = DateTime {
            year,
            month,
            day: self.decode(c[REG_DAY]).clamp(1, days_in_month(year, month)),
            hour: self.decode_hour(c[REG_HOURS]),
            minute: self.decode(c[REG_MINUTES]).min(59),
            second: self.decode(c[REG_SECONDS]).min(59),
            weekday: self.decode(c[REG_WEEKDAY]).clamp(1, 7),
        };
        let guest = dt.to_unix();
        self.offset = guest.saturating_sub(secs(now));
        let computed = DateTime::from_unix(guest).weekday;
        self.weekday_adjust = (dt.weekday + 7 - computed) % 7;
    }

    fn alarm_field(&self, index: usize, count: u8, hour: bool) -> Option<AlarmField> {
        let byte = self.cmos[index];
        if byte >= ALARM_DONT_CARE {
            return Some(AlarmField::Any);
        }
        (0..count)
            .find(|&v| {
                let enc = if hour {
                    self.encode_hour(v)
                } else {
                    self.encode(v)
                };
                enc == byte
            })
            .map(|v| AlarmField::Only(u32::from(v)))
    }

    /// The first guest time (seconds) after `after` whose time of day matches the alarm.
    fn next_alarm(&self, after: i64) -> Option<i64> {
        let h = self.alarm_field(REG_HOURS_ALARM, 24, true)?;
        let m = self.alarm_field(REG_MINUTES_ALARM, 60, false)?;
        let s = self.alarm_field(REG_SECONDS_ALARM, 60, false)?;
        alarm::next_match(h, m, s, after)
    }

    /// Sets the flags of the events in (last_ns, now]; raises IRQ 8 when IRQF becomes set,
    /// unless `raise` is false (the guest is reading register C right now).
    fn update(&mut self, now: i128, raise: bool) {
        let last = std::mem::replace(&mut self.last_ns, now);
        if now <= last || !self.running() {
            return;
        }
        let mut flags = 0;
        if let Some(p) = self.period_ticks() {
            if ticks(now).div_euclid(p) > ticks(last).div_euclid(p) {
                flags |= C_PF;
            }
        }
        if !self.frozen() && secs(now) > secs(last) {
            flags |= C_UF;
            let after = secs(last).saturating_add(self.offset);
            if let Some(t) = self.next_alarm(after) {
                if t <= secs(now).saturating_add(self.offset) {
                    flags |= C_AF;
                }
            }
        }
        self.set_flags(flags, raise);
    }

    fn set_flags(&mut self, flags: u8, raise: bool) {
        self.cmos[REG_C] |= flags;
        let c = self.cmos[REG_C];
        if c & C_IRQF == 0 && c & self.cmos[REG_B] & C_SOURCES != 0 {
            self.cmos[REG_C] |= C_IRQF;
            if raise {
                if let Some(irq) = &self.irq {
                    if let Err(e) = irq.write(1) {
                        log::debug(format_args!("rtc: cannot raise IRQ {RTC_IRQ}: {e}"));
                    }
                }
            }
        }
    }

    fn read_register(&mut self, index: usize, now: i128) -> u8 {
        match index {
            _ if TIME_REGISTERS.contains(&index) && !self.frozen() => {
                let dt = self.current(now);
                self.time_register(index, &dt)
            }
            REG_A => {
                let nanos = now.rem_euclid(NS_PER_SEC);
                let uip =
                    self.running() && !self.frozen() && nanos >= NS_PER_SEC - i128::from(UIP_NS);
                (self.cmos[REG_A] & !A_UIP) | if uip { A_UIP } else { 0 }
            }
            REG_C => {
                self.update(now, false);
                std::mem::take(&mut self.cmos[REG_C])
            }
            REG_D => D_VRT,
            _ => self.cmos[index],
        }
    }

    fn write_register(&mut self, index: usize, value: u8, now: i128) {
        match index {
            _ if TIME_REGISTERS.contains(&index) => {
                if self.frozen() {
                    self.cmos[index] = value;
                } else {
                    self.update(now, true);
                    self.store_time(now);
                    self.cmos[index] = value;
                    self.load_time(now);
                }
            }
            REG_SECONDS_ALARM | REG_MINUTES_ALARM | REG_HOURS_ALARM => {
                self.update(now, true);
                self.cmos[index] = value;
            }
            REG_A => {
                self.update(now, true);
                self.cmos[REG_A] = value & !A_UIP;
            }
            REG_B => {
                self.update(now, true);
                let was_frozen = self.frozen();
                // Entering SET mode clears UIE.
                let value = if value & B_SET != 0 {
                    value & !B_UIE
                } else {
                    value
                };
                self.cmos[REG_B] = value;
                match (was_frozen, self.frozen()) {
                    (false, true) => self.store_time(now),
                    (true, false) => self.load_time(now),
                    _ => {}
                }
                // An enable bit set on a pending flag interrupts at once.
                self.set_flags(0, true);
            }
            REG_C | REG_D => {}
            _ => self.cmos[index] = value,
        }
    }
}

const TIME_REGISTERS: [usize; 8] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_WEEKDAY,
    REG_DAY,
    REG_MONTH,
    REG_YEAR,
    CENTURY,
];

fn secs(ns: i128) -> i64 {
    let s = ns.div_euclid(NS_PER_SEC);
    i64::try_from(s).unwrap_or(if s < 0 { i64::MIN } else { i64::MAX })
}

/// The 32.768 kHz divider ticks elapsed at `ns`.
fn ticks(ns: i128) -> i128 {
    (ns * DIVIDER_HZ).div_euclid(NS_PER_SEC)
}

/// The NVRAM a PC BIOS leaves behind, in the layout SeaBIOS reads.
fn nvram(layout: &MemoryLayout, cpus: u32) -> [u8; CMOS_SIZE] {
    let mut c = [0u8; CMOS_SIZE];
    let put16 = |c: &mut [u8; CMOS_SIZE], at: usize, v: u64| {
        let v = v.min(0xFFFF) as u16;
        c[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    // No floppy, no IDE disk types; equipment: math coprocessor, no floppy drives.
    c[0x10] = 0;
    c[0x12] = 0;
    c[0x14] = 0x02;
    put16(&mut c, 0x15, LOW_RAM_END / KIB);
    let extended = layout
        .low_ram_end
        .saturating_sub(HIGH_MEMORY_START)
        .min(63 * MIB)
        / KIB;
    put16(&mut c, 0x17, extended);
    put16(&mut c, 0x30, extended);
    put16(
        &mut c,
        0x34,
        layout.low_ram_end.saturating_sub(16 * MIB) / (64 * KIB),
    );
    let above_4g = (layout.high_ram_size / (64 * KIB)).min(0xFF_FFFF) as u32;
    c[0x5B..0x5E].copy_from_slice(&above_4g.to_le_bytes()[..3]);
    c[0x5F] = cpus.saturating_sub(1).min(0xFF) as u8;
    let sum: u16 = c[0x10..=0x2D].iter().map(|&b| u16::from(b)).sum();
    c[0x2E..0x30].copy_from_slice(&sum.to_be_bytes());
    c
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = self.now_ns();
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.saturating_add(i as u64) {
                1 => self.read_register(usize::from(self.index), now),
                _ => 0xFF,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        let now = self.now_ns();
        for (i, &b) in data.iter().enumerate() {
            match offset.saturating_add(i as u64) {
                // Bit 7 is the NMI mask, which this platform does not gate.
                0 => self.index = b & INDEX_MASK,
                1 => self.write_register(usize::from(self.index), b, now),
                _ => {}
            }
        }
        None
    }

    /// A read of the data port with a memory-size register selected.
    fn asks_for_memory_map(&self, offset: u64, access: crate::bus::Access<'_>) -> bool {
        matches!(access, crate::bus::Access::Read(_))
            && access.covers(offset, 1)
            && MEMORY_SIZE_REGISTERS.contains(&self.index)
    }

    /// The MC146818's RESET line: interrupt enables and the square wave off, pending
    /// interrupt flags cleared; the time, the divider and the NVRAM are kept.
    fn reset(&mut self) {
        self.cmos[REG_B] &= !(B_PIE | B_AIE | B_UIE | B_SQWE);
        self.cmos[REG_C] = 0;
        self.index = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GIB;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    /// 2024-02-29 13:45:30 UTC, a Thursday.
    const T0: i64 = 1_709_214_330;
    const NS: i64 = 1_000_000_000;

    #[derive(Clone)]
    struct FakeClock(Arc<AtomicI64>);

    impl FakeClock {
        fn set(&self, ns: i64) {
            self.0.store(ns, Ordering::SeqCst);
        }
        fn advance(&self, ns: i64) {
            self.0.fetch_add(ns, Ordering::SeqCst);
        }
        fn get(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> (i64, u32) {
            let ns = self.get();
            (ns.div_euclid(NS), ns.rem_euclid(NS) as u32)
        }
    }

    fn rtc_with(ns: i64, irq: Option<EventFd>) -> (Rtc, FakeClock) {
        let clock = FakeClock(Arc::new(AtomicI64::new(ns)));
        let layout = MemoryLayout::new(256 * MIB).unwrap();
        let rtc = Rtc::with_clock(&layout, 1, Box::new(clock.clone()), irq);
        (rtc, clock)
    }

    fn rtc_at(ns: i64) -> (Rtc, FakeClock) {
        rtc_with(ns, None)
    }

    fn get(rtc: &mut Rtc, index: u8) -> u8 {
        rtc.write(0, &[index]);
        let mut d = [0u8];
        rtc.read(1, &mut d);
        d[0]
    }

    fn set(rtc: &mut Rtc, index: u8, v: u8) {
        rtc.write(0, &[index]);
        rtc.write(1, &[v]);
    }

    fn time(rtc: &mut Rtc) -> [u8; 8] {
        [0x32, 0x09, 0x08, 0x07, 0x06, 0x04, 0x02, 0x00].map(|r| get(rtc, r))
    }

    fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn fired(e: &EventFd) -> bool {
        e.read().is_ok()
    }

    #[test]
    fn register_access_leaves_the_guests_index_alone() {
        let (mut rtc, _) = rtc_at(T0 * NS);
        rtc.write(0, &[0x0B]);
        assert_eq!(rtc.register(0x04), 0x13);
        rtc.set_register(0x02, 0x50);
        assert_eq!(rtc.register(0x02), 0x50);
        // The guest's next data access still goes to register B.
        let mut d = [0u8];
        rtc.read(1, &mut d);
        assert_eq!(d[0], B_DEFAULT);
    }

    #[test]
    fn reset_defaults() {
        let (mut rtc, _) = rtc_at(T0 * NS);
        assert_eq!(get(&mut rtc, 0x0A), A_DEFAULT);
        assert_eq!(get(&mut rtc, 0x0B), B_DEFAULT);
        assert_eq!(get(&mut rtc, 0x0C), 0);
        assert_eq!(get(&mut rtc, 0x0D), D_VRT);
    }

    #[test]
    fn bcd_and_binary_modes() {
        let (mut rtc, _) = rtc_at(T0 * NS);
        assert_eq!(
            time(&mut rtc),
            [0x20, 0x24, 0x02, 0x29, 0x05, 0x13, 0x45, 0x30]
        );
        set(&mut rtc, 0x0B, B_24H | B_BINARY);
        assert_eq!(time(&mut rtc), [20, 24, 2, 29, 5, 13, 45, 30]);
    }

    #[test]
    fn twelve_and_24_hour_modes() {
        let (mut rtc, clock) = rtc_at(T0 * NS);
        set(&mut rtc, 0x0B, 0);
        assert_eq!(get(&mut rtc, 0x04), 0x80 | 0x01);
        set(&mut rtc, 0x0B, B_BINARY);
        assert_eq!(get(&mut rtc, 0x04), 0x80 | 1);
        let midnight = (T0 - 13 * 3600 - 45 * 60 - 30) * NS;
        for (hour, bcd12, bin12) in [
            (0, 0x12, 12),
            (11, 0x11, 11),
            (12, 0x92, 0x8C),
            (23, 0x91, 0x8B),
        ] {
            clock.set(midnight + hour * 3600 * NS);
            set(&mut rtc, 0x0B, 0);
            assert_eq!(get(&mut rtc, 0x04), bcd12, "hour {hour}");
            set(&mut rtc, 0x0B, B_BINARY);
            assert_eq!(get(&mut rtc, 0x04), bin12, "hour {hour}");
            set(&mut rtc, 0x0B, B_24H);
            let bcd24 = (((hour / 10) << 4) | (hour % 10)) as u8;
            assert_eq!(get(&mut rtc, 0x04), bcd24);
        }
        // Writing 12 AM in 12-hour mode sets midnight.
        set(&mut rtc, 0x0B, 0);
        set(&mut rtc, 0x04, 0x12);
        set(&mut rtc, 0x0B, B_24H);
        assert_eq!(get(&mut rtc, 0x04), 0x00);
    }

    #[test]
    fn uip_rises_244us_before_the_second() {
        let (mut rtc, clock) = rtc_at(T0 * NS);
        let edge = (T0 + 1) * NS;
        clock.set(edge - 244_001);
        assert_eq!(get(&mut rtc, 0x0A), 0x26);
        clock.set(edge - 244_000);
        assert_eq!(get(&mut rtc, 0x0A), 0xA6);
        assert_eq!(get(&mut rtc, 0x00), 0x30);
        clock.set(edge - 1);
        assert_eq!(get(&mut rtc, 0x0A), 0xA6);
        clock.set(edge);
        assert_eq!(get(&mut rtc, 0x0A), 0x26);
        assert_eq!(get(&mut rtc, 0x00), 0x31);
        // No UIP while updates are stopped; UIP itself is read-only.
        clock.set(edge + NS - 1);
        set(&mut rtc, 0x0B, B_SET | B_24H);
        assert_eq!(get(&mut rtc, 0x0A), 0x26);
        set(&mut rtc, 0x0B, B_24H);
        set(&mut rtc, 0x0A, 0x70 | A_UIP);
        assert_eq!(get(&mut rtc, 0x0A), 0x70);
    }

    #[test]
    fn register_c_is_cleared_by_reading_and_read_only() {
        let (mut rtc, clock) = rtc_at(T0 * NS + NS / 2);
        // Interrupts disabled: the update flag is still set, without IRQF.
        clock.advance(NS);
        assert_eq!(get(&mut rtc, 0x0C), C_UF | C_PF);
        assert_eq!(get(&mut rtc, 0x0C), 0);
        set(&mut rtc, 0x0C, 0xFF);
        set(&mut rtc, 0x0D, 0x00);
        assert_eq!(get(&mut rtc, 0x0C), 0);
        assert_eq!(get(&mut rtc, 0x0D), D_VRT);
    }

    #[test]
    fn periodic_interrupt_rate() {
        let e = eventfd();
        let (mut rtc, clock) = rtc_with(T0 * NS, Some(e.try_clone().unwrap()));
        assert_eq!(rtc.time_to_next_event(), None);
        // Rate 6: 1024 Hz, a period of 976562.5 ns.
        set(&mut rtc, 0x0B, B_24H | B_PIE);
        assert_eq!(
            rtc.time_to_next_event(),
            Some(Duration::from_nanos(976_563))
        );
        clock.advance(976_562);
        rtc.tick();
        assert!(!fired(&e));
        clock.advance(1);
        rtc.tick();
        assert!(fired(&e));
        // IRQF stays set until register C is read: no further interrupt, nothing to wait for.
        assert_eq!(rtc.time_to_next_event(), None);
        clock.advance(10 * 976_563);
        rtc.tick();
        assert!(!fired(&e));
        assert_eq!(get(&mut rtc, 0x0C), C_IRQF | C_PF);
        // The next tick is the 12th: 11718750 ns after T0.
        assert_eq!(
            rtc.time_to_next_event(),
            Some(Duration::from_nanos(11_718_750 - 10 * 976_563 - 976_563))
        );
        // Rate 15: 2 Hz; rate 1 and 2: 256 and 128 Hz; rate 3: 8192 Hz.
        for (rate, ticks_per_period) in [(15u8, 16_384i128), (1, 128), (2, 256), (3, 4)] {
            set(&mut rtc, 0x0A, 0x20 | rate);
            assert_eq!(rtc.period_ticks(), Some(ticks_per_period));
        }
        set(&mut rtc, 0x0A, 0x20 | 15);
        clock.set((T0 + 10) * NS + 1);
        let _ = get(&mut rtc, 0x0C);
        assert_eq!(
            rtc.time_to_next_event(),
            Some(Duration::from_nanos(NS as u64 / 2 - 1))
        );
        // Rate 0 or a stopped divider: no periodic interrupt.
        set(&mut rtc, 0x0A, 0x20);
        assert_eq!(rtc.time_to_next_event(), None);
        set(&mut rtc, 0x0A, 0x76);
        assert_eq!(rtc.time_to_next_event(), None);
        clock.advance(NS);
        assert_eq!(get(&mut rtc, 0x0C), 0);
    }

    #[test]
    fn alarm_matches_with_dont_care_fields() {
        let e = eventfd();
        let (mut rtc, clock) = rtc_with(T0 * NS, Some(e.try_clone().unwrap()));
        set(&mut rtc, 0x0A, 0x20);
        // 13:46:00 exactly.
        set(&mut rtc, 0x05, 0x13);
        set(&mut rtc, 0x03, 0x46);
        set(&mut rtc, 0x01, 0x00);
        set(&mut rtc, 0x0B, B_24H | B_AIE);
        assert_eq!(rtc.time_to_next_event(), Some(Duration::from_secs(30)));
        clock.advance(29 * NS);
        rtc.tick();
        assert!(!fired(&e));
        clock.advance(NS);
        rtc.tick();
        assert!(fired(&e));
        assert_eq!(get(&mut rtc, 0x0C), C_IRQF | C_AF | C_UF);
        // Seconds = 15 in every minute of every hour.
        set(&mut rtc, 0x05, 0xC0);
        set(&mut rtc, 0x03, 0xFF);
        set(&mut rtc, 0x01, 0x15);
        assert_eq!(rtc.time_to_next_event(), Some(Duration::from_secs(15)));
        // Everything don't care: every second.
        set(&mut rtc, 0x01, 0xC5);
        assert_eq!(rtc.time_to_next_event(), Some(Duration::from_secs(1)));
        // 13:45:00 is past: tomorrow.
        set(&mut rtc, 0x05, 0x13);
        set(&mut rtc, 0x03, 0x45);
        set(&mut rtc, 0x01, 0x00);
        assert_eq!(
            rtc.time_to_next_event(),
            Some(Duration::from_secs(86_400 - 60))
        );
        // A value no time has never matches.
        set(&mut rtc, 0x05, 0x25);
        assert_eq!(rtc.time_to_next_event(), None);
        clock.advance(2 * 86_400 * NS);
        assert_eq!(get(&mut rtc, 0x0C), C_UF);
        // A missed alarm in a long gap is still flagged.
        set(&mut rtc, 0x05, 0x03);
        clock.advance(86_400 * NS);
        rtc.tick();
        assert!(fired(&e));
        assert_eq!(get(&mut rtc, 0x0C), C_IRQF | C_AF | C_UF);
    }

    #[test]
    fn update_ended_interrupt_raises_the_eventfd() {
        let e = eventfd();
        let (mut rtc, clock) = rtc_with(T0 * NS + 300_000_000, Some(e.try_clone().unwrap()));
        set(&mut rtc, 0x0A, 0x20);
        set(&mut rtc, 0x0B, B_24H | B_UIE);
        assert_eq!(
            rtc.time_to_next_event(),
            Some(Duration::from_nanos(700_000_000))
        );
        clock.advance(700_000_000);
        rtc.tick();
        assert!(fired(&e));
        assert_eq!(get(&mut rtc, 0x0C), C_IRQF | C_UF);
        assert_eq!(get(&mut rtc, 0x00), 0x31);
        // Overdue events are due at once.
        clock.advance(3 * NS / 2);
        assert_eq!(rtc.time_to_next_event(), Some(Duration::ZERO));
        // Enabling an interrupt whose flag is pending raises it immediately.
        set(&mut rtc, 0x0B, B_24H);
        assert!(fired(&e));
        assert_eq!(get(&mut rtc, 0x0C), C_IRQF | C_UF);
        clock.advance(NS);
        rtc.tick();
        assert!(!fired(&e));
        set(&mut rtc, 0x0B, B_24H | B_UIE);
        assert!(fired(&e));
        // A clock stepped back is handled at the next tick, which starts over from there.
        let _ = get(&mut rtc, 0x0C);
        clock.advance(-10 * NS);
        assert_eq!(rtc.time_to_next_event(), Some(Duration::ZERO));
        rtc.tick();
        assert_eq!(
            rtc.time_to_next_event(),
            Some(Duration::from_nanos(500_000_000))
        );
        // SET stops updates and clears UIE.
        let _ = get(&mut rtc, 0x0C);
        set(&mut rtc, 0x0B, B_SET | B_24H | B_UIE);
        assert_eq!(get(&mut rtc, 0x0B), B_SET | B_24H);
        clock.advance(5 * NS);
        assert_eq!(get(&mut rtc, 0x0C), 0);
    }

    #[test]
    fn written_time_sticks_relative_to_the_clock() {
        let (mut rtc, clock) = rtc_at(T0 * NS + 123);
        // The usual sequence: SET, write 1999-12-31 23:59:58 (a Friday), clear SET.
        set(&mut rtc, 0x0B, B_SET | B_24H);
        for (r, v) in [(0x32, 0x19), (0x09, 0x99), (0x08, 0x12), (0x07, 0x31)] {
            set(&mut rtc, r, v);
        }
        for (r, v) in [(0x06, 0x06), (0x04, 0x23), (0x02, 0x59), (0x00, 0x58)] {
            set(&mut rtc, r, v);
        }
        // Frozen while SET.
        clock.advance(3 * NS);
        assert_eq!(get(&mut rtc, 0x00), 0x58);
        set(&mut rtc, 0x0B, B_24H);
        assert_eq!(
            time(&mut rtc),
            [0x19, 0x99, 0x12, 0x31, 0x06, 0x23, 0x59, 0x58]
        );
        clock.advance(5 * NS);
        assert_eq!(
            time(&mut rtc),
            [0x20, 0x00, 0x01, 0x01, 0x07, 0x00, 0x00, 0x03]
        );
        // A single write without SET changes one field and keeps the rest.
        set(&mut rtc, 0x08, 0x06);
        clock.advance(5 * NS);
        assert_eq!(
            time(&mut rtc),
            [0x20, 0x00, 0x06, 0x01, 0x07, 0x00, 0x00, 0x08]
        );
        // In binary mode.
        set(&mut rtc, 0x0B, B_24H | B_BINARY);
        set(&mut rtc, 0x00, 50);
        clock.advance(5 * NS);
        assert_eq!(time(&mut rtc), [20, 0, 6, 1, 7, 0, 0, 55]);
        assert_eq!(get(&mut rtc, 0x00), 55);
    }

    #[test]
    fn nmi_bit_is_ignored() {
        let (mut rtc, _) = rtc_at(T0 * NS);
        assert_eq!(get(&mut rtc, 0x80), 0x30);
        assert_eq!(get(&mut rtc, 0x8A), A_DEFAULT);
        set(&mut rtc, 0x80 | 0x40, 0x5A);
        assert_eq!(get(&mut rtc, 0x40), 0x5A);
    }

    #[test]
    fn every_index_is_valid_and_nvram_writes_stick() {
        let (mut rtc, _) = rtc_at(T0 * NS);
        for i in 0x0E..=0xFFu8 {
            let r = i & INDEX_MASK;
            if r < 0x0E || r == REG_CENTURY {
                continue;
            }
            set(&mut rtc, i, i ^ 0x55);
            assert_eq!(get(&mut rtc, r), i ^ 0x55);
        }
        let mut d = [0u8];
        rtc.read(0, &mut d);
        assert_eq!(d, [0xFF]);
    }

    #[test]
    fn invalid_guest_values_never_panic() {
        let (mut rtc, clock) = rtc_at(T0 * NS);
        for mode in [0, B_24H, B_BINARY, B_BINARY | B_24H] {
            for set_bit in [0, B_SET] {
                set(&mut rtc, 0x0B, mode | set_bit | B_PIE | B_AIE | B_UIE);
                for r in 0..0x80u8 {
                    if r == 0x0B {
                        continue;
                    }
                    for v in [0x00, 0x0F, 0x3C, 0x7F, 0x80, 0x99, 0x9A, 0xAA, 0xFF] {
                        set(&mut rtc, r, v);
                        let _ = get(&mut rtc, r);
                        let _ = rtc.time_to_next_event();
                        clock.advance(NS / 3);
                        rtc.tick();
                    }
                }
                set(&mut rtc, 0x0B, mode);
                let _ = time(&mut rtc);
            }
        }
        // Invalid BCD saturates: 0xFF seconds is 59.
        set(&mut rtc, 0x0B, B_24H);
        set(&mut rtc, 0x0A, A_DEFAULT);
        set(&mut rtc, 0x00, 0xFF);
        assert_eq!(get(&mut rtc, 0x00), 0x59);
    }

    #[test]
    fn wide_accesses_split_into_bytes() {
        let (mut rtc, _) = rtc_at(T0 * NS);
        // A 16-bit write at 0x70 writes the index, then the data.
        rtc.write(0, &[0x40, 0xAB]);
        assert_eq!(get(&mut rtc, 0x40), 0xAB);
        let mut d = [0u8; 4];
        rtc.read(0, &mut d);
        assert_eq!(d, [0xFF, 0xAB, 0xFF, 0xFF]);
        rtc.read(1, &mut d[..2]);
        assert_eq!(d[..2], [0xAB, 0xFF]);
        rtc.write(1, &[0xCD, 0x00, 0x00]);
        assert_eq!(get(&mut rtc, 0x40), 0xCD);
    }

    fn layout_nvram(size: u64, cpus: u32) -> Rtc {
        let layout = MemoryLayout::new(size).unwrap();
        let clock = FakeClock(Arc::new(AtomicI64::new(T0 * NS)));
        Rtc::with_clock(&layout, cpus, Box::new(clock), None)
    }

    fn word(rtc: &mut Rtc, lo: u8) -> u16 {
        u16::from_le_bytes([get(rtc, lo), get(rtc, lo + 1)])
    }

    #[test]
    fn nvram_describes_the_memory_map() {
        // (size, extended KiB, 64 KiB units above 16 MiB, 64 KiB units above 4 GiB)
        let cases = [
            (2 * MIB, 1024, 0, 0),
            (256 * MIB, 0xFC00, 3840, 0),
            (3 * GIB, 0xFC00, 0xBF00, 0),
            (4 * GIB, 0xFC00, 0xBF00, 0x4000),
            (16 * GIB, 0xFC00, 0xBF00, 0x3_4000),
        ];
        for (size, ext, above16, above4g) in cases {
            let mut rtc = layout_nvram(size, 4);
            assert_eq!(get(&mut rtc, 0x10), 0);
            assert_eq!(get(&mut rtc, 0x12), 0);
            assert_eq!(get(&mut rtc, 0x14), 0x02);
            assert_eq!(word(&mut rtc, 0x15), 640);
            assert_eq!(word(&mut rtc, 0x17), ext, "size {size:#x}");
            assert_eq!(word(&mut rtc, 0x30), ext, "size {size:#x}");
            assert_eq!(word(&mut rtc, 0x34), above16, "size {size:#x}");
            let high = [0x5B, 0x5C, 0x5D].map(|r| get(&mut rtc, r));
            assert_eq!(u32::from_le_bytes([high[0], high[1], high[2], 0]), above4g);
            assert_eq!(get(&mut rtc, 0x5F), 3);
            assert_eq!(get(&mut rtc, 0x3D), 0);
            assert_eq!(get(&mut rtc, 0x38), 0);
        }
        // The largest guest still fits the 24-bit field.
        let mut rtc = layout_nvram(1 << 40, 1);
        assert_eq!(
            [0x5B, 0x5C, 0x5D].map(|r| get(&mut rtc, r)),
            [0x00, 0x40, 0xFF]
        );
        assert_eq!(get(&mut rtc, 0x5F), 0);
    }

    /// Reads of the data port with a memory-size register selected wait for the RAM
    /// (ram_gate.rs); the index port, writes and the other registers do not.
    #[test]
    fn memory_size_reads_ask_for_the_memory_map() {
        use crate::bus::Access;
        let mut rtc = layout_nvram(64 * GIB, 1);
        for index in 0..0x80u8 {
            rtc.write(0, &[index]);
            let asks = rtc.asks_for_memory_map(1, Access::Read(1));
            assert_eq!(
                asks,
                matches!(index, 0x15..=0x18 | 0x30 | 0x31 | 0x34 | 0x35 | 0x5B..=0x5D),
                "{index:#x}"
            );
            // A 16-bit read at 0x70 reads the data port too.
            assert_eq!(rtc.asks_for_memory_map(0, Access::Read(2)), asks);
            assert!(!rtc.asks_for_memory_map(0, Access::Read(1)));
            assert!(!rtc.asks_for_memory_map(1, Access::Write(&[0])));
        }
        // With the NMI mask bit set in the index write.
        rtc.write(0, &[0x80 | 0x34]);
        assert!(rtc.asks_for_memory_map(1, Access::Read(1)));
    }

    #[test]
    fn nvram_checksum_covers_0x10_to_0x2d() {
        for size in [2 * MIB, 256 * MIB, 3 * GIB, 4 * GIB, 16 * GIB] {
            let mut rtc = layout_nvram(size, 2);
            let sum: u16 = (0x10..=0x2D).map(|r| u16::from(get(&mut rtc, r))).sum();
            assert_eq!(get(&mut rtc, 0x2E), (sum >> 8) as u8);
            assert_eq!(get(&mut rtc, 0x2F), sum as u8);
        }
        // 2 MiB: 0x02 + 0x80 + 0x02 + 0x00 + 0x04 = 0x88.
        let mut rtc = layout_nvram(2 * MIB, 1);
        assert_eq!([get(&mut rtc, 0x2E), get(&mut rtc, 0x2F)], [0x00, 0x88]);
    }

    #[test]
    fn new_counts_the_host_clock() {
        let layout = MemoryLayout::new(2 * MIB).unwrap();
        let mut rtc = Rtc::new(&layout, 1, false, None);
        assert_eq!(get(&mut rtc, 0x0B), B_DEFAULT);
        assert!(get(&mut rtc, 0x32) >= 0x20);
    }
}
