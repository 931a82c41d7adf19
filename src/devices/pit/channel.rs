//! One 8254 counter: its mode, access state and latches, and what it reads and outputs at
//! a given time, computed from when it was loaded (see mod.rs).

use super::*;

/// How the counter's two bytes are read and written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    Lsb,
    Msb,
    Word,
}

impl Access {
    pub(super) fn from_bits(bits: u8) -> Access {
        match bits {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        }
    }

    pub(super) fn bits(self) -> u8 {
        match self {
            Access::Lsb => 1,
            Access::Msb => 2,
            Access::Word => 3,
        }
    }
}

/// What a counter is doing. Counts are binary numbers of ticks, 1 to the modulus (a count
/// register of 0 means the modulus: 0x10000, or 10000 in BCD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Run {
    /// No count since the control word (or power-on): the counter holds `value`.
    Idle { value: u32 },
    /// Mode 1 or 5 with a count, waiting for a rising gate; the counter holds `value`.
    Armed { value: u32 },
    /// Loaded with `n`: `ticks since `since` (clock ns) + base - skip` ticks have passed
    /// (`base` carries the ticks before a pause, `skip` the periods of the counts before a
    /// mode 2 or 3 reload, so that tick boundaries stay exact).
    Counting {
        since: u128,
        base: u64,
        skip: u64,
        n: u32,
    },
    /// Loaded with `n`, stopped by a low gate after `base` ticks.
    Paused { base: u64, n: u32 },
}

/// Whole ticks in `ns` nanoseconds.
pub(super) fn ticks_in(ns: u128) -> u64 {
    u64::try_from(ns * u128::from(PIT_HZ) / NS_PER_SEC).unwrap_or(u64::MAX)
}

/// The first nanosecond at which `ticks` ticks have passed.
pub(super) fn ns_of(ticks: u64) -> u128 {
    (u128::from(ticks) * NS_PER_SEC).div_ceil(u128::from(PIT_HZ))
}

pub(super) fn to_bcd(v: u32) -> u16 {
    let v = v % 10_000;
    ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
}

/// A BCD count register as a number; digits above 9 count as 9.
pub(super) fn from_bcd(r: u16) -> u32 {
    (0..4).rev().fold(0u32, |acc, i| {
        acc * 10 + u32::from((r >> (i * 4)) & 0xF).min(9)
    })
}

/// The counter `d` ticks after it was loaded with `n`, in mode `mode` (binary, 1..=modulus;
/// the register shows it modulo the modulus).
pub(super) fn count_at(mode: u8, n: u32, d: u64, modulus: u32) -> u32 {
    match mode {
        2 => n - (d % u64::from(n)) as u32,
        3 => {
            // Down by two, twice a period; an odd count spends one tick more high than low.
            let p = (d % u64::from(n)) as u32;
            let high = n.div_ceil(2);
            if n.is_multiple_of(2) {
                n - 2 * (p % (n / 2))
            } else if p < high {
                if p == 0 {
                    n
                } else {
                    n + 1 - 2 * p
                }
            } else if p == high {
                n
            } else {
                n - 1 - 2 * (p - high)
            }
        }
        // Modes 0, 1, 4, 5 count down through 0 and wrap.
        _ => (i128::from(n) - i128::from(d)).rem_euclid(i128::from(modulus)) as u32,
    }
}

/// OUT `d` ticks after the counter was loaded with `n` (and started).
pub(super) fn out_at(mode: u8, n: u32, d: u64) -> bool {
    let n = u64::from(n);
    match mode {
        0 | 1 => d >= n,
        2 => d % n != n - 1,
        3 => d % n < n.div_ceil(2),
        _ => d != n,
    }
}

/// How many times OUT rose in the first `d` ticks after the counter was loaded with `n`.
pub(super) fn edges_until(mode: u8, n: u32, d: u64) -> u64 {
    let n = u64::from(n);
    match mode {
        0 | 1 => u64::from(d >= n),
        2 | 3 => d / n,
        _ => u64::from(d > n),
    }
}

/// The tick at which OUT rises for the time after `done`, if it does.
pub(super) fn edge_tick(mode: u8, n: u32, done: u64) -> Option<u64> {
    let n = u64::from(n);
    match mode {
        0 | 1 => (done == 0).then_some(n),
        2 | 3 => done.checked_add(1)?.checked_mul(n),
        _ => (done == 0).then_some(n + 1),
    }
}

/// One of the three counters.
#[derive(Clone, Debug)]
pub(super) struct Channel {
    /// The mode bits as written (6 and 7 are modes 2 and 3).
    pub(super) mode_bits: u8,
    pub(super) bcd: bool,
    pub(super) access: Access,
    /// The count last written, as a number of ticks.
    pub(super) reload: u32,
    pub(super) run: Run,
    pub(super) gate: bool,
    /// LSB-then-MSB access: the LSB written, waiting for the MSB.
    pub(super) write_lsb: Option<u8>,
    /// LSB-then-MSB access: the next read returns the MSB.
    pub(super) read_msb_next: bool,
    pub(super) latched_count: Option<u16>,
    pub(super) latched_status: Option<u8>,
    /// A count was written and not yet loaded into the counter.
    pub(super) null_count: bool,
    /// Modes 2 and 3: a count written while counting and the tick (of the running count)
    /// at which it is loaded, the end of the period.
    pub(super) pending: Option<(u32, u64)>,
    /// Rising edges of OUT since the counter was loaded that were signalled.
    pub(super) edges: u64,
    /// A rising edge of a count that ended (reloaded, reprogrammed) was not signalled yet.
    pub(super) carried_edge: bool,
}

impl Channel {
    pub(super) fn new(gate: bool) -> Self {
        Channel {
            mode_bits: 0,
            bcd: false,
            access: Access::Word,
            reload: 0x10000,
            run: Run::Idle { value: 0 },
            gate,
            write_lsb: None,
            read_msb_next: false,
            latched_count: None,
            latched_status: None,
            null_count: false,
            pending: None,
            edges: 0,
            carried_edge: false,
        }
    }

    pub(super) fn mode(&self) -> u8 {
        match self.mode_bits {
            6 => 2,
            7 => 3,
            m => m,
        }
    }

    pub(super) fn modulus(&self) -> u32 {
        if self.bcd {
            10_000
        } else {
            0x10000
        }
    }

    /// A count register's value as a number of ticks (0 is the modulus). Modes 2 and 3 need
    /// at least 2.
    pub(super) fn decode(&self, raw: u16) -> u32 {
        let v = if self.bcd {
            from_bcd(raw)
        } else {
            u32::from(raw)
        };
        let v = if v == 0 { self.modulus() } else { v };
        if matches!(self.mode(), 2 | 3) {
            v.max(2)
        } else {
            v
        }
    }

    pub(super) fn encode(&self, v: u32) -> u16 {
        if self.bcd {
            to_bcd(v)
        } else {
            (v & 0xFFFF) as u16
        }
    }

    /// The running count and the ticks since it was loaded.
    pub(super) fn elapsed(&self, now: u128) -> Option<(u32, u64)> {
        match self.run {
            Run::Counting {
                since,
                base,
                skip,
                n,
            } => Some((
                n,
                base.saturating_add(ticks_in(now.saturating_sub(since)))
                    .saturating_sub(skip),
            )),
            Run::Paused { base, n } => Some((n, base)),
            _ => None,
        }
    }

    pub(super) fn value(&self, now: u128) -> u32 {
        match self.run {
            Run::Idle { value } | Run::Armed { value } => value,
            _ => match self.elapsed(now) {
                Some((n, d)) => count_at(self.mode(), n, d, self.modulus()),
                None => 0,
            },
        }
    }

    pub(super) fn out(&self, now: u128) -> bool {
        match self.run {
            Run::Idle { .. } => self.mode() != 0,
            Run::Armed { .. } => true,
            Run::Paused { .. } if matches!(self.mode(), 2 | 3) => true,
            _ => match self.elapsed(now) {
                Some((n, d)) => out_at(self.mode(), n, d),
                None => true,
            },
        }
    }

    /// Rising edges of OUT since the running count was loaded.
    pub(super) fn edges_now(&self, now: u128) -> u64 {
        match self.run {
            Run::Counting { .. } => self
                .elapsed(now)
                .map_or(0, |(n, d)| edges_until(self.mode(), n, d)),
            Run::Paused { base, n } if !matches!(self.mode(), 2 | 3) => {
                edges_until(self.mode(), n, base)
            }
            _ => 0,
        }
    }

    /// The running count ends: an edge it had and that was not signalled is kept.
    pub(super) fn end_count(&mut self, now: u128) {
        if self.edges_now(now) > self.edges {
            self.carried_edge = true;
        }
        self.edges = 0;
        self.pending = None;
    }

    /// Loads the reload value and starts counting (or waits for the gate).
    pub(super) fn start(&mut self, now: u128) {
        self.end_count(now);
        self.null_count = false;
        self.run = if self.gate {
            Run::Counting {
                since: now,
                base: 0,
                skip: 0,
                n: self.reload,
            }
        } else {
            Run::Paused {
                base: 0,
                n: self.reload,
            }
        };
    }

    /// Loads a count written in mode 2 or 3 at the end of the period it was written in.
    /// Returns whether it did.
    pub(super) fn settle(&mut self, now: u128) -> bool {
        let (Some((next, at)), Some((n, d))) = (self.pending, self.elapsed(now)) else {
            return false;
        };
        let Run::Counting {
            since, base, skip, ..
        } = self.run
        else {
            return false;
        };
        if d < at {
            return false;
        }
        if edges_until(self.mode(), n, at) > self.edges {
            self.carried_edge = true;
        }
        self.run = Run::Counting {
            since,
            base,
            skip: skip.saturating_add(at),
            n: next,
        };
        self.edges = 0;
        self.pending = None;
        self.null_count = false;
        true
    }

    /// A control word for this counter (not a latch command).
    pub(super) fn program(&mut self, access: Access, mode_bits: u8, bcd: bool, now: u128) {
        let held = self.value(now);
        self.end_count(now);
        self.mode_bits = mode_bits;
        self.bcd = bcd;
        self.access = access;
        self.write_lsb = None;
        self.read_msb_next = false;
        self.latched_count = None;
        self.latched_status = None;
        self.null_count = true;
        self.run = Run::Idle {
            value: held % self.modulus(),
        };
    }

    pub(super) fn latch_count(&mut self, now: u128) {
        if self.latched_count.is_none() {
            self.latched_count = Some(self.encode(self.value(now)));
        }
    }

    pub(super) fn latch_status(&mut self, now: u128) {
        if self.latched_status.is_none() {
            let mut s = self.access.bits() << CW_ACCESS_SHIFT | self.mode_bits << CW_MODE_SHIFT;
            if self.bcd {
                s |= CW_BCD;
            }
            if self.out(now) {
                s |= STATUS_OUT;
            }
            if self.null_count {
                s |= STATUS_NULL_COUNT;
            }
            self.latched_status = Some(s);
        }
    }

    pub(super) fn read(&mut self, now: u128) -> u8 {
        if let Some(s) = self.latched_status.take() {
            return s;
        }
        let word = match self.latched_count {
            Some(l) => l,
            None => self.encode(self.value(now)),
        };
        let [lsb, msb] = word.to_le_bytes();
        let (byte, whole) = match self.access {
            Access::Lsb => (lsb, true),
            Access::Msb => (msb, true),
            Access::Word => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    (lsb, false)
                } else {
                    (msb, true)
                }
            }
        };
        if whole {
            self.latched_count = None;
        }
        byte
    }

    /// A byte of the count. Returns whether a count was loaded or counting stopped.
    pub(super) fn write(&mut self, v: u8, now: u128) -> bool {
        let raw = match self.access {
            Access::Lsb => u16::from(v),
            Access::Msb => u16::from(v) << 8,
            Access::Word => match self.write_lsb.take() {
                Some(lsb) => u16::from_le_bytes([lsb, v]),
                None => {
                    self.write_lsb = Some(v);
                    self.null_count = true;
                    if self.mode() == 0 {
                        // Mode 0: the first byte stops the count and OUT goes low.
                        let held = self.value(now);
                        self.end_count(now);
                        self.run = Run::Idle { value: held };
                        return true;
                    }
                    return false;
                }
            },
        };
        self.reload = self.decode(raw);
        self.null_count = true;
        match (self.mode(), self.run, self.elapsed(now)) {
            (2 | 3, Run::Counting { .. }, Some((n, d))) => {
                let n = u64::from(n);
                let at = (d / n).saturating_add(1).saturating_mul(n);
                self.pending = Some((self.reload, at));
            }
            // Modes 1 and 5 load the count at the next trigger.
            (1 | 5, Run::Counting { .. } | Run::Paused { .. }, _) => return false,
            (1 | 5, _, _) => {
                self.end_count(now);
                self.run = Run::Armed {
                    value: self.value(now),
                };
            }
            _ => self.start(now),
        }
        true
    }

    /// Channel 2's gate, from port B.
    pub(super) fn set_gate(&mut self, gate: bool, now: u128) {
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        let mode = self.mode();
        if gate {
            match self.run {
                Run::Paused { base, n } if matches!(mode, 0 | 4) => {
                    self.run = Run::Counting {
                        since: now,
                        base,
                        skip: 0,
                        n,
                    };
                }
                Run::Paused { .. } if matches!(mode, 2 | 3) => self.start(now),
                // A trigger: the count (re)starts.
                Run::Armed { .. } | Run::Counting { .. } | Run::Paused { .. }
                    if matches!(mode, 1 | 5) =>
                {
                    self.start(now)
                }
                _ => {}
            }
        } else if let (Run::Counting { .. }, 0 | 2 | 3 | 4) = (self.run, mode) {
            self.settle(now);
            if let Some((n, d)) = self.elapsed(now) {
                self.run = Run::Paused { base: d, n };
            }
        }
    }
}
