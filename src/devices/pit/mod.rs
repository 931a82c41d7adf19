//! The Intel 8254 programmable interval timer: counters 0-2 at ports 0x40-0x42, the mode/command
//! register at 0x43, and system control port B at 0x61 (channel 2's gate and output, the
//! speaker enable, the refresh toggle).
//!
//! The counters have no thread and no tick: a counter that runs remembers when it was loaded,
//! and what it reads, and its OUT, are computed from the host's monotonic clock at
//! 1.193182 MHz. Channel 0's OUT is IRQ 0: its rising edges are an eventfd (an irqfd on GSI 0)
//! written from the monitor's timer (`Timed<Pit>`), which fires at each edge: on a period for
//! modes 2 and 3, once for the others. Edges that fell due while the monitor was away are
//! coalesced into one, as an 8259 latches one request for a line that rose several times; the
//! timer fires at most every `MIN_IRQ_PERIOD` whatever the count (the counters stay exact).
//!
//! | port | read | write |
//! |------|------|-------|
//! | 0x40-0x42 | the counter: latched status, latched count or the live count, by the access mode | the count |
//! | 0x43 | 0xFF | control word, counter latch, read-back |
//! | 0x61 | bit 0 gate 2, bit 1 speaker data, bits 2-3 as written, bit 4 toggles on every read (refresh), bit 5 channel 2's OUT | bits 0-3 |
//!
//! Every mode follows the 8254's data sheet: 0 (interrupt on terminal count), 1 (one-shot,
//! started by a rising gate), 2 (rate generator), 3 (square wave), 4 (software strobe), 5
//! (hardware strobe, started by a rising gate); binary or BCD counting; LSB, MSB or LSB then
//! MSB access; a count written in mode 2 or 3 while counting takes effect at the end of the
//! current period. A low gate stops modes 0, 2, 3 and 4 (modes 2 and 3 reload and force OUT
//! high); a rising gate starts modes 1 and 5 and reloads modes 2 and 3. The gates of
//! channels 0 and 1 are tied high, so modes 1 and 5 never start there. Channel 1 (DRAM
//! refresh on a PC) and channel 2 (the speaker) raise no interrupt. Accesses wider than a
//! byte act on their first byte (reads pad with 0xFF). After power-on or a reset no counter
//! runs: every channel is in mode 0 waiting for a count, OUT low, and no IRQ 0 comes until the
//! guest programs channel 0 (the firmware does, for the BIOS tick).

use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::devices::acpi_pm::{HostMonotonicClock, MonotonicClock};
use crate::exit::ExitReason;
use crate::log;

mod channel;

use channel::*;

/// The counters and the mode register on the port-I/O bus.
pub const PIT_PORT: u64 = 0x40;
pub const PIT_LEN: u64 = 4;
/// System control port B, inserted with `PORT_B_OFFSET` (`Bus::insert_at_offset`).
pub const PORT_B: u64 = 0x61;
pub const PORT_B_OFFSET: u64 = PORT_B - PIT_PORT;
pub const PORT_B_LEN: u64 = 1;
/// Channel 0's interrupt: ISA IRQ 0, which the VMM routes to GSI 0 (the 8259's pin 0 and the
/// I/O APIC's pin 2, as the MADT's override says).
pub const PIT_IRQ: u32 = 0;
/// The counters' input clock.
pub const PIT_HZ: u64 = 1_193_182;
/// The IRQ 0 timer fires at most this often; faster rates are coalesced.
pub const MIN_IRQ_PERIOD: Duration = Duration::from_micros(100);

const COMMAND_OFFSET: u64 = 3;
const NS_PER_SEC: u128 = 1_000_000_000;

/// Control word fields.
const CW_SELECT_SHIFT: u8 = 6;
const CW_ACCESS_SHIFT: u8 = 4;
const CW_MODE_SHIFT: u8 = 1;
const CW_BCD: u8 = 1 << 0;
const SELECT_READ_BACK: u8 = 3;
const ACCESS_LATCH: u8 = 0;
/// Read-back command: bit 5 clear latches the counts, bit 4 clear the status; bits 1-3
/// select the counters.
const READ_BACK_NO_COUNT: u8 = 1 << 5;
const READ_BACK_NO_STATUS: u8 = 1 << 4;
/// Status byte bits above the control word's.
const STATUS_OUT: u8 = 1 << 7;
const STATUS_NULL_COUNT: u8 = 1 << 6;

/// Port B bits.
const B_GATE2: u8 = 1 << 0;
const B_WRITABLE: u8 = 0x0F;
const B_REFRESH: u8 = 1 << 4;
const B_OUT2: u8 = 1 << 5;

/// The PIT and port B. Insert at `PIT_PORT` with `PIT_LEN`, and at `PORT_B` with
/// `PORT_B_LEN` and `PORT_B_OFFSET`.
pub struct Pit {
    clock: Box<dyn MonotonicClock>,
    channels: [Channel; 3],
    /// Port B's writable bits (gate 2, speaker data, bits 2-3).
    port_b: u8,
    refresh: bool,
    irq: Option<EventFd>,
    /// Channel 0's interrupt timing changed since the timer was last armed.
    schedule_changed: bool,
}

impl Pit {
    /// A PIT on the host's monotonic clock; `irq` is IRQ 0's irqfd.
    pub fn new(irq: Option<EventFd>) -> Self {
        Self::with_clock(Box::new(HostMonotonicClock::new()), irq)
    }

    pub fn with_clock(clock: Box<dyn MonotonicClock>, irq: Option<EventFd>) -> Self {
        Pit {
            clock,
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            port_b: 0,
            refresh: false,
            irq,
            schedule_changed: false,
        }
    }

    fn now(&self) -> u128 {
        self.clock.now().as_nanos()
    }

    /// How long until channel 0's OUT rises next (zero if an edge is owed), or None.
    pub fn time_to_next_irq(&self) -> Option<Duration> {
        let c = &self.channels[0];
        if c.carried_edge {
            return Some(Duration::ZERO);
        }
        let Run::Counting {
            since,
            base,
            skip,
            n,
        } = c.run
        else {
            return None;
        };
        let at = edge_tick(c.mode(), n, c.edges)?;
        let due = since + ns_of(at.saturating_add(skip).saturating_sub(base));
        let wait = due.saturating_sub(self.now());
        Some(Duration::from_nanos(
            u64::try_from(wait).unwrap_or(u64::MAX),
        ))
    }

    /// Channel 0's period in modes 2 and 3 (at least `MIN_IRQ_PERIOD`), while nothing
    /// changes it.
    pub fn irq_period(&self) -> Option<Duration> {
        let c = &self.channels[0];
        match c.run {
            Run::Counting { n, .. }
                if matches!(c.mode(), 2 | 3) && c.pending.is_none() && !c.carried_edge =>
            {
                let ns = u64::try_from(ns_of(u64::from(n))).unwrap_or(u64::MAX);
                Some(Duration::from_nanos(ns).max(MIN_IRQ_PERIOD))
            }
            _ => None,
        }
    }

    /// Whether channel 0's interrupt timing changed since the last call.
    pub fn take_irq_schedule_change(&mut self) -> bool {
        std::mem::take(&mut self.schedule_changed)
    }

    /// Raises IRQ 0 once if channel 0's OUT rose since the last time (however often).
    pub fn tick(&mut self) {
        let now = self.now();
        let period = self.irq_period();
        let c = &mut self.channels[0];
        let mut changed = c.settle(now);
        let edges = c.edges_now(now);
        let raise = edges > c.edges || c.carried_edge;
        if raise {
            let owed = c.carried_edge;
            c.carried_edge = false;
            c.edges = c.edges.max(edges);
            if owed || !matches!(c.mode(), 2 | 3) {
                // The timer was armed for this one edge (or to pay the owed one).
                changed = true;
            } else if let (
                Run::Counting {
                    since,
                    base,
                    skip,
                    n,
                },
                Some(period),
            ) = (c.run, period)
            {
                // The periodic timer drifts from the exact edges by under a nanosecond a
                // period; re-align it when it fires half a period late.
                let at = c.edges.saturating_mul(u64::from(n)).saturating_add(skip);
                let last = since + ns_of(at.saturating_sub(base));
                if now.saturating_sub(last) > period.as_nanos() / 2 {
                    changed = true;
                }
            }
        }
        self.schedule_changed |= changed;
        if raise {
            if let Some(irq) = &self.irq {
                if let Err(e) = irq.write(1) {
                    log::debug(format_args!("pit: cannot raise IRQ 0: {e}"));
                }
            }
        }
    }

    fn command(&mut self, v: u8, now: u128) {
        let select = v >> CW_SELECT_SHIFT;
        if select == SELECT_READ_BACK {
            for (i, c) in self.channels.iter_mut().enumerate() {
                if v & (2 << i) == 0 {
                    continue;
                }
                if v & READ_BACK_NO_COUNT == 0 {
                    c.latch_count(now);
                }
                if v & READ_BACK_NO_STATUS == 0 {
                    c.latch_status(now);
                }
            }
            return;
        }
        let i = usize::from(select);
        let access = (v >> CW_ACCESS_SHIFT) & 3;
        let c = &mut self.channels[i];
        let programmed = access != ACCESS_LATCH;
        if programmed {
            c.program(
                Access::from_bits(access),
                (v >> CW_MODE_SHIFT) & 7,
                v & CW_BCD != 0,
                now,
            );
        } else {
            c.latch_count(now);
        }
        if i == 0 && programmed {
            self.schedule_changed = true;
        }
    }

    /// Loads the counts written in mode 2 or 3 whose period ended, so that what the guest
    /// reads next is computed from them.
    fn settle(&mut self, now: u128) {
        for (i, c) in self.channels.iter_mut().enumerate() {
            if c.settle(now) && i == 0 {
                self.schedule_changed = true;
            }
        }
    }

    fn read_port_b(&mut self, now: u128) -> u8 {
        self.refresh = !self.refresh;
        let mut v = self.port_b & B_WRITABLE;
        if self.refresh {
            v |= B_REFRESH;
        }
        if self.channels[2].out(now) {
            v |= B_OUT2;
        }
        v
    }
}

impl BusDevice for Pit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
        let now = self.now();
        self.settle(now);
        let v = match offset {
            0..=2 => self.channels[offset as usize].read(now),
            PORT_B_OFFSET => self.read_port_b(now),
            _ => 0xFF,
        };
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        let v = *data.first()?;
        let now = self.now();
        self.settle(now);
        match offset {
            0..=2 => {
                let loaded = self.channels[offset as usize].write(v, now);
                self.schedule_changed |= loaded && offset == 0;
            }
            COMMAND_OFFSET => self.command(v, now),
            PORT_B_OFFSET => {
                self.port_b = v & B_WRITABLE;
                self.channels[2].set_gate(v & B_GATE2 != 0, now);
            }
            _ => {}
        }
        None
    }

    /// The power-on state: no counter runs, gate 2 low, port B clear; the IRQ 0 timer stops.
    fn reset(&mut self) {
        self.channels = [Channel::new(true), Channel::new(true), Channel::new(false)];
        self.port_b = 0;
        self.refresh = false;
        self.schedule_changed = true;
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
        fn advance_ns(&self, ns: u64) {
            self.0.fetch_add(ns, Ordering::SeqCst);
        }
        /// Moves to the first nanosecond of `ticks` ticks after `from` (ns).
        fn set_ticks_after(&self, from: u64, ticks: u64) {
            self.0.store(from + ns_of(ticks) as u64, Ordering::SeqCst);
        }
        fn ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl MonotonicClock for FakeClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    fn pit() -> (Pit, FakeClock, EventFd) {
        let clock = FakeClock(Arc::new(AtomicU64::new(7_000_000_000)));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let p = Pit::with_clock(Box::new(clock.clone()), Some(irq.try_clone().unwrap()));
        (p, clock, irq)
    }

    fn out(p: &mut Pit, offset: u64, v: u8) {
        assert_eq!(p.write(offset, &[v]), None);
    }

    fn inb(p: &mut Pit, offset: u64) -> u8 {
        let mut b = [0u8];
        p.read(offset, &mut b);
        b[0]
    }

    /// Programs `channel` with LSB-then-MSB access, `mode`, binary, and `count`.
    fn program(p: &mut Pit, channel: u8, mode: u8, count: u16) {
        out(p, 3, channel << 6 | 0x30 | mode << 1);
        out(p, u64::from(channel), count as u8);
        out(p, u64::from(channel), (count >> 8) as u8);
    }

    /// Latches and reads a counter in LSB-then-MSB access.
    fn latched(p: &mut Pit, channel: u8) -> u16 {
        out(p, 3, channel << 6);
        let lo = inb(p, u64::from(channel));
        let hi = inb(p, u64::from(channel));
        u16::from_le_bytes([lo, hi])
    }

    fn pulses(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    fn gate2(p: &mut Pit, on: bool) {
        out(p, PORT_B_OFFSET, u8::from(on));
    }

    fn out2(p: &mut Pit) -> bool {
        inb(p, PORT_B_OFFSET) & B_OUT2 != 0
    }

    #[test]
    fn tick_conversions_round_the_right_way() {
        assert_eq!(ticks_in(0), 0);
        assert_eq!(ticks_in(NS_PER_SEC), PIT_HZ);
        for t in [1u64, 2, 3, 65_535, 65_536, 1_193_182, 10_000_000] {
            let ns = ns_of(t);
            assert_eq!(ticks_in(ns), t, "{t}");
            assert_eq!(ticks_in(ns - 1), t - 1, "{t}");
        }
    }

    #[test]
    fn mode_2_counts_and_interrupts_on_every_period() {
        let (mut p, clock, irq) = pit();
        let t0 = clock.ns();
        program(&mut p, 0, 2, 1000);
        assert!(p.take_irq_schedule_change());
        assert_eq!(latched(&mut p, 0), 1000);
        let first = p.time_to_next_irq().unwrap();
        assert_eq!(first.as_nanos(), ns_of(1000));
        assert_eq!(p.irq_period().unwrap().as_nanos(), ns_of(1000));
        clock.set_ticks_after(t0, 1);
        assert_eq!(latched(&mut p, 0), 999);
        clock.set_ticks_after(t0, 999);
        assert_eq!(latched(&mut p, 0), 1);
        p.tick();
        assert_eq!(pulses(&irq), 0, "OUT is low at count 1, no edge yet");
        clock.set_ticks_after(t0, 1000);
        assert_eq!(latched(&mut p, 0), 1000, "reloaded");
        p.tick();
        assert_eq!(pulses(&irq), 1);
        assert!(!p.take_irq_schedule_change(), "a period changes nothing");
        assert_eq!(
            p.time_to_next_irq().unwrap().as_nanos(),
            ns_of(2000) - ns_of(1000)
        );
        // Missed periods are one edge.
        clock.set_ticks_after(t0, 5500);
        p.tick();
        assert_eq!(pulses(&irq), 1);
        assert_eq!(latched(&mut p, 0), 500);
        // A spurious expiry raises nothing.
        p.tick();
        assert_eq!(pulses(&irq), 0);
    }

    #[test]
    fn mode_2_new_count_waits_for_the_end_of_the_period() {
        let (mut p, clock, irq) = pit();
        let t0 = clock.ns();
        program(&mut p, 0, 2, 1000);
        p.take_irq_schedule_change();
        clock.set_ticks_after(t0, 1200);
        p.tick();
        assert_eq!(pulses(&irq), 1);
        // LSB then MSB of 100, without a control word.
        out(&mut p, 0, 100);
        out(&mut p, 0, 0);
        assert!(p.take_irq_schedule_change());
        assert_eq!(p.irq_period(), None, "one-shot until the new count is in");
        assert_eq!(latched(&mut p, 0), 800, "still the old period");
        clock.set_ticks_after(t0, 2000);
        p.tick();
        assert_eq!(pulses(&irq), 1, "the old period's edge");
        assert!(p.take_irq_schedule_change());
        assert_eq!(latched(&mut p, 0), 100);
        assert_eq!(
            p.irq_period().unwrap().as_nanos(),
            MIN_IRQ_PERIOD.as_nanos()
        );
        clock.set_ticks_after(t0, 2050);
        assert_eq!(latched(&mut p, 0), 50);
        clock.set_ticks_after(t0, 2100);
        p.tick();
        assert_eq!(pulses(&irq), 1);
    }

    #[test]
    fn mode_3_square_wave() {
        let (mut p, clock, irq) = pit();
        let t0 = clock.ns();
        // Channel 2, gate high first, even count.
        gate2(&mut p, true);
        program(&mut p, 2, 3, 10);
        let seen: Vec<(u16, bool)> = (0..12)
            .map(|t| {
                clock.set_ticks_after(t0, t);
                (latched(&mut p, 2), out2(&mut p))
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (10, true),
                (8, true),
                (6, true),
                (4, true),
                (2, true),
                (10, false),
                (8, false),
                (6, false),
                (4, false),
                (2, false),
                (10, true),
                (8, true)
            ]
        );
        // An odd count: one tick longer high than low.
        let t1 = clock.ns();
        program(&mut p, 2, 3, 5);
        let seen: Vec<(u16, bool)> = (0..6)
            .map(|t| {
                clock.set_ticks_after(t1, t);
                (latched(&mut p, 2), out2(&mut p))
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (5, true),
                (4, true),
                (2, true),
                (5, false),
                (2, false),
                (5, true)
            ]
        );
        // Channel 0 in mode 3: one IRQ a period, on the rising edge.
        let t2 = clock.ns();
        program(&mut p, 0, 3, 0);
        assert_eq!(
            p.irq_period().unwrap().as_nanos(),
            ns_of(65_536),
            "0 is 65536: 18.2 Hz"
        );
        clock.set_ticks_after(t2, 32_768);
        p.tick();
        assert_eq!(pulses(&irq), 0, "the falling edge");
        clock.set_ticks_after(t2, 65_536);
        p.tick();
        assert_eq!(pulses(&irq), 1);
    }

    #[test]
    fn a_read_back_after_the_period_end_sees_the_new_count() {
        let (mut p, clock, _) = pit();
        let t0 = clock.ns();
        program(&mut p, 0, 2, 1000);
        out(&mut p, 0, 100);
        out(&mut p, 0, 0);
        clock.set_ticks_after(t0, 1050);
        out(&mut p, 3, 0xC2); // status and count of channel 0
        assert_eq!(inb(&mut p, 0), 0xB4, "OUT high, loaded: no null count");
        assert_eq!(inb(&mut p, 0), 50);
        assert_eq!(inb(&mut p, 0), 0);
    }

    #[test]
    fn mode_0_interrupts_once_and_wraps() {
        let (mut p, clock, irq) = pit();
        let t0 = clock.ns();
        program(&mut p, 0, 0, 100);
        assert!(p.take_irq_schedule_change());
        assert_eq!(p.irq_period(), None);
        assert_eq!(p.time_to_next_irq().unwrap().as_nanos(), ns_of(100));
        clock.set_ticks_after(t0, 99);
        p.tick();
        assert_eq!(pulses(&irq), 0);
        assert_eq!(latched(&mut p, 0), 1);
        clock.set_ticks_after(t0, 100);
        p.tick();
        assert_eq!(pulses(&irq), 1);
        assert!(p.take_irq_schedule_change());
        assert_eq!(p.time_to_next_irq(), None, "once");
        clock.set_ticks_after(t0, 101);
        assert_eq!(latched(&mut p, 0), 0xFFFF, "counts on through 0");
        clock.set_ticks_after(t0, 100_000);
        p.tick();
        assert_eq!(pulses(&irq), 0);
    }

    #[test]
    fn mode_0_first_byte_stops_the_count() {
        let (mut p, clock, irq) = pit();
        let t0 = clock.ns();
        program(&mut p, 0, 0, 100);
        clock.set_ticks_after(t0, 40);
        out(&mut p, 0, 50);
        assert!(p.take_irq_schedule_change());
        assert_eq!(p.time_to_next_irq(), None, "stopped");
        clock.set_ticks_after(t0, 500);
        assert_eq!(latched(&mut p, 0), 60, "held");
        out(&mut p, 0, 0);
        let t1 = clock.ns();
        clock.set_ticks_after(t1, 49);
        assert_eq!(latched(&mut p, 0), 1);
        clock.set_ticks_after(t1, 50);
        p.tick();
        assert_eq!(pulses(&irq), 1);
    }

    #[test]
    fn linux_pit_calibrate_tsc_sequence() {
        // pit_calibrate_tsc: gate high, speaker off; channel 2 mode 0 with a 50 ms latch;
        // poll port B's bit 5.
        let (mut p, clock, irq) = pit();
        let b = inb(&mut p, PORT_B_OFFSET);
        out(&mut p, PORT_B_OFFSET, (b & !0x02) | 0x01);
        out(&mut p, 3, 0xB0);
        let latch = (PIT_HZ / 20) as u16;
        let t0 = clock.ns();
        out(&mut p, 2, latch as u8);
        out(&mut p, 2, (latch >> 8) as u8);
        let mut polls = 0u64;
        while !out2(&mut p) {
            polls += 1;
            clock.advance_ns(10_000);
        }
        let elapsed = clock.ns() - t0;
        assert!(
            (49_990_000..50_010_000).contains(&elapsed),
            "{elapsed} ns, {polls} polls"
        );
        assert_eq!(pulses(&irq), 0, "channel 2 raises no interrupt");
        // Bit 0 reads back; the refresh bit toggles.
        let r1 = inb(&mut p, PORT_B_OFFSET);
        let r2 = inb(&mut p, PORT_B_OFFSET);
        assert_eq!(r1 & 0x2F, 0x21);
        assert_eq!((r1 ^ r2) & B_REFRESH, B_REFRESH);
    }

    #[test]
    fn linux_quick_pit_calibrate_sequence() {
        // quick_pit_calibrate: channel 2, mode 0, from 0xFFFF; read LSB and MSB, watch the
        // MSB go down by one every 256 ticks.
        let (mut p, clock, _) = pit();
        let b = inb(&mut p, PORT_B_OFFSET);
        out(&mut p, PORT_B_OFFSET, (b & !0x02) | 0x01);
        out(&mut p, 3, 0xB0);
        out(&mut p, 2, 0xFF);
        out(&mut p, 2, 0xFF);
        let t0 = clock.ns();
        let mut msbs = Vec::new();
        for t in (0..256 * 20).step_by(64) {
            clock.set_ticks_after(t0, t);
            let _lsb = inb(&mut p, 2);
            let msb = inb(&mut p, 2);
            if msbs.last() != Some(&msb) {
                msbs.push(msb);
            }
        }
        let want: Vec<u8> = (0..20).map(|i| 0xFF - i).collect();
        assert_eq!(msbs, want);
    }

    #[test]
    fn gate_2_stops_and_restarts_the_counters() {
        let (mut p, clock, _) = pit();
        let t0 = clock.ns();
        // Gate low: mode 0 holds its count.
        program(&mut p, 2, 0, 1000);
        clock.set_ticks_after(t0, 300);
        assert_eq!(latched(&mut p, 2), 1000);
        gate2(&mut p, true);
        let t1 = clock.ns();
        clock.set_ticks_after(t1, 300);
        assert_eq!(latched(&mut p, 2), 700);
        gate2(&mut p, false);
        clock.set_ticks_after(t1, 900);
        assert_eq!(latched(&mut p, 2), 700, "paused");
        gate2(&mut p, true);
        let t2 = clock.ns();
        clock.set_ticks_after(t2, 700);
        assert!(out2(&mut p));
        // Mode 2: a low gate forces OUT high; a rising gate reloads.
        program(&mut p, 2, 2, 50);
        let t3 = clock.ns();
        clock.set_ticks_after(t3, 49);
        assert!(!out2(&mut p));
        gate2(&mut p, false);
        assert!(out2(&mut p));
        clock.set_ticks_after(t3, 80);
        gate2(&mut p, true);
        assert_eq!(latched(&mut p, 2), 50);
        // Mode 1: armed by the count, started by a rising gate, OUT low until it ends.
        gate2(&mut p, false);
        program(&mut p, 2, 1, 20);
        let t4 = clock.ns();
        clock.set_ticks_after(t4, 100);
        assert!(out2(&mut p), "not triggered");
        gate2(&mut p, true);
        let t5 = clock.ns();
        assert!(!out2(&mut p));
        clock.set_ticks_after(t5, 19);
        assert_eq!(latched(&mut p, 2), 1);
        clock.set_ticks_after(t5, 20);
        assert!(out2(&mut p));
        // Mode 5: a strobe one tick long after the count, started by the gate.
        gate2(&mut p, false);
        program(&mut p, 2, 5, 10);
        gate2(&mut p, true);
        let t6 = clock.ns();
        clock.set_ticks_after(t6, 9);
        assert!(out2(&mut p));
        clock.set_ticks_after(t6, 10);
        assert!(!out2(&mut p));
        clock.set_ticks_after(t6, 11);
        assert!(out2(&mut p));
    }

    #[test]
    fn modes_1_and_5_never_start_on_channel_0() {
        let (mut p, clock, irq) = pit();
        for mode in [1, 5] {
            program(&mut p, 0, mode, 10);
            assert_eq!(p.time_to_next_irq(), None);
            clock.advance_ns(1_000_000);
            p.tick();
            assert_eq!(pulses(&irq), 0);
        }
    }

    #[test]
    fn mode_4_strobes_once() {
        let (mut p, clock, irq) = pit();
        let t0 = clock.ns();
        program(&mut p, 0, 4, 10);
        assert_eq!(p.time_to_next_irq().unwrap().as_nanos(), ns_of(11));
        clock.set_ticks_after(t0, 10);
        p.tick();
        assert_eq!(pulses(&irq), 0, "OUT just went low");
        clock.set_ticks_after(t0, 11);
        p.tick();
        assert_eq!(pulses(&irq), 1);
        assert_eq!(p.time_to_next_irq(), None);
        // Linux's one-shot: the same again, a new count without a control word.
        out(&mut p, 0, 10);
        out(&mut p, 0, 0);
        assert!(p.time_to_next_irq().is_some());
    }

    #[test]
    fn an_edge_due_before_a_reprogramming_is_not_lost() {
        let (mut p, clock, irq) = pit();
        let t0 = clock.ns();
        program(&mut p, 0, 2, 100);
        clock.set_ticks_after(t0, 150);
        // Reprogrammed before the timer ran.
        program(&mut p, 0, 2, 1000);
        assert_eq!(p.time_to_next_irq(), Some(Duration::ZERO));
        p.tick();
        assert_eq!(pulses(&irq), 1);
        assert!(p.time_to_next_irq().unwrap() > Duration::ZERO);
    }

    #[test]
    fn access_modes_and_bcd() {
        let (mut p, clock, _) = pit();
        let t0 = clock.ns();
        gate2(&mut p, true);
        // LSB only.
        out(&mut p, 3, 0x90); // channel 2, LSB, mode 0
        out(&mut p, 2, 0x80);
        clock.set_ticks_after(t0, 0x10);
        assert_eq!(inb(&mut p, 2), 0x70);
        assert_eq!(inb(&mut p, 2), 0x70, "LSB every time");
        // MSB only.
        let t1 = clock.ns();
        out(&mut p, 3, 0xA0);
        out(&mut p, 2, 0x12);
        clock.set_ticks_after(t1, 0x100);
        assert_eq!(inb(&mut p, 2), 0x11);
        // BCD, LSB then MSB: 1000 counts 0999, 0998...
        let t2 = clock.ns();
        out(&mut p, 3, 0xB1);
        out(&mut p, 2, 0x00);
        out(&mut p, 2, 0x10);
        clock.set_ticks_after(t2, 1);
        assert_eq!(latched(&mut p, 2), 0x0999);
        clock.set_ticks_after(t2, 1001);
        assert_eq!(latched(&mut p, 2), 0x9999, "wraps to 9999");
        // BCD 0 is 10000.
        let t3 = clock.ns();
        out(&mut p, 3, 0xB1);
        out(&mut p, 2, 0);
        out(&mut p, 2, 0);
        clock.set_ticks_after(t3, 1);
        assert_eq!(latched(&mut p, 2), 0x9999);
        assert_eq!(from_bcd(0x9999), 9999);
        assert_eq!(from_bcd(0xFFFF), 9999);
        assert_eq!(to_bcd(1234), 0x1234);
    }

    #[test]
    fn latch_and_read_back() {
        let (mut p, clock, _) = pit();
        let t0 = clock.ns();
        gate2(&mut p, true);
        program(&mut p, 2, 0, 0x1234);
        clock.set_ticks_after(t0, 0x34);
        out(&mut p, 3, 0x80); // latch channel 2
        clock.set_ticks_after(t0, 0x200);
        out(&mut p, 3, 0x80); // a second latch before the first is read: ignored
        assert_eq!(inb(&mut p, 2), 0x00);
        assert_eq!(inb(&mut p, 2), 0x12);
        assert_eq!(latched(&mut p, 2), 0x1034, "the latch was released");
        // Read-back: status and count of channel 2. Status first.
        out(&mut p, 3, 0xC0 | 0x08);
        let status = inb(&mut p, 2);
        assert_eq!(
            status, 0x30,
            "OUT low, count loaded, LSB-MSB, mode 0, binary"
        );
        assert_eq!(inb(&mut p, 2), 0x34);
        assert_eq!(inb(&mut p, 2), 0x10);
        // Status only, after the terminal count; null count after a control word.
        clock.set_ticks_after(t0, 0x1234);
        out(&mut p, 3, 0xE8);
        assert_eq!(inb(&mut p, 2), 0xB0);
        out(&mut p, 3, 0xB6); // channel 2, LSB-MSB, mode 3, binary
        out(&mut p, 3, 0xE8);
        assert_eq!(inb(&mut p, 2), 0xF6, "OUT high, null count, mode 3");
        out(&mut p, 2, 10);
        out(&mut p, 3, 0xE8);
        assert_eq!(
            inb(&mut p, 2) & STATUS_NULL_COUNT,
            STATUS_NULL_COUNT,
            "half"
        );
        out(&mut p, 2, 0);
        out(&mut p, 3, 0xE8);
        assert_eq!(inb(&mut p, 2), 0xB6);
        // Read-back of several counters at once.
        program(&mut p, 1, 2, 500);
        out(&mut p, 3, 0xDC); // count of 1 and 2, no status
        assert_eq!(inb(&mut p, 1), 0xF4);
        assert_eq!(inb(&mut p, 1), 0x01);
        assert_eq!(inb(&mut p, 2), 10);
    }

    #[test]
    fn port_61_toggles_refresh() {
        let (mut p, _, _) = pit();
        let mut seen = Vec::new();
        for _ in 0..4 {
            let b = inb(&mut p, PORT_B_OFFSET);
            assert_eq!(b & !B_REFRESH, 0, "power-on: gate low, channel 2's OUT low");
            seen.push(b & B_REFRESH);
        }
        assert_eq!(seen, vec![0x10, 0, 0x10, 0]);
        out(&mut p, PORT_B_OFFSET, 0xFF);
        assert_eq!(
            inb(&mut p, PORT_B_OFFSET) & 0x0F,
            0x0F,
            "bits 0-3 read back"
        );
        assert_eq!(inb(&mut p, COMMAND_OFFSET), 0xFF);
        let mut w = [0u8; 2];
        p.read(0, &mut w);
        assert_eq!(w[1], 0xFF);
    }

    #[test]
    fn reset_stops_everything() {
        let (mut p, clock, irq) = pit();
        program(&mut p, 0, 2, 100);
        gate2(&mut p, true);
        p.take_irq_schedule_change();
        p.reset();
        assert!(p.take_irq_schedule_change());
        assert_eq!(p.time_to_next_irq(), None);
        clock.advance_ns(10_000_000);
        p.tick();
        assert_eq!(pulses(&irq), 0);
        assert_eq!(inb(&mut p, PORT_B_OFFSET) & !B_REFRESH, 0);
        out(&mut p, 3, 0xE2);
        assert_eq!(inb(&mut p, 0), 0x30, "mode 0, LSB-MSB, OUT low");
    }

    #[test]
    fn the_periodic_timer_is_realigned_when_late() {
        let (mut p, clock, irq) = pit();
        let t0 = clock.ns();
        program(&mut p, 0, 2, 1000);
        p.take_irq_schedule_change();
        clock.set_ticks_after(t0, 1000);
        p.tick();
        assert!(!p.take_irq_schedule_change());
        clock.set_ticks_after(t0, 2700);
        p.tick();
        assert_eq!(pulses(&irq), 2);
        assert!(p.take_irq_schedule_change(), "700 ticks late: re-armed");
        assert_eq!(
            p.time_to_next_irq().unwrap().as_nanos(),
            ns_of(3000) - ns_of(2700)
        );
    }

    #[test]
    fn guest_bytes_never_panic() {
        let (mut p, clock, _) = pit();
        for v in 0..=255u8 {
            for offset in [0u64, 1, 2, 3, PORT_B_OFFSET, 99] {
                out(&mut p, offset, v);
                clock.advance_ns(u64::from(v) * 997);
                inb(&mut p, offset);
                p.tick();
                let _ = p.time_to_next_irq();
                let _ = p.irq_period();
            }
        }
        assert_eq!(p.write(0, &[]), None);
    }
}
