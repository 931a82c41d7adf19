//! When the monitor writes the guest's serial output out: a complete line at once, a partial
//! line `PARTIAL_DELAY` after the monitor learnt of it, and what a full descriptor did not
//! take when it becomes writable. And when it empties KVM's ring of the guest's buffered
//! port writes, which no exit may empty for a while (`RingSchedule`).

use std::time::{Duration, Instant};

use crate::devices::serial::{Serial, PARTIAL_DELAY};

/// What the next poll needs for the serial output.
pub struct Plan {
    /// Poll the output descriptor for POLLOUT.
    pub poll_out: bool,
    /// Wake by then: a partial line is due.
    pub write_at: Option<Instant>,
}

/// The output's schedule across poll iterations.
#[derive(Default)]
pub struct OutputSchedule {
    /// When the partial line waiting in the buffer is written out.
    partial_due: Option<Instant>,
}

impl OutputSchedule {
    /// What the next poll needs: POLLOUT while a full descriptor holds back the rest, else a
    /// wake when a partial line is due.
    pub fn plan(&self, serial: &Serial) -> Plan {
        let poll_out = serial.output_pending() && serial.output_blocked();
        Plan {
            poll_out,
            write_at: (serial.output_pending() && !poll_out)
                .then_some(self.partial_due)
                .flatten(),
        }
    }

    /// After the poll: writes the output out if it is due (`writable`: the poll reported the
    /// descriptor writable, or failed: POLLERR, POLLHUP, which the write tells apart), and
    /// sets when a partial line left in the buffer is due.
    pub fn serve(&mut self, serial: &mut Serial, writable: bool) {
        if !serial.output_pending() {
            self.partial_due = None;
            return;
        }
        let now = Instant::now();
        let due = if serial.output_blocked() {
            writable
        } else {
            self.line_due(serial, now)
        };
        if due {
            serial.write_out();
        }
        self.partial_due = if !serial.output_pending() || serial.output_blocked() {
            // Nothing left, or the poll for POLLOUT takes over.
            None
        } else {
            Some(self.partial_due.unwrap_or(now + PARTIAL_DELAY))
        };
    }

    /// Whether the pending output should go out now: a complete line, or a partial line whose
    /// delay has passed.
    fn line_due(&self, serial: &Serial, now: Instant) -> bool {
        serial.output_line_ready() || self.partial_due.is_some_and(|d| now >= d)
    }
}

/// The first wait for the ring after the guest wrote through it or was given input.
pub const RING_MIN: Duration = Duration::from_millis(1);
/// The longest: what a guest prints while it otherwise idles shows within this.
pub const RING_MAX: Duration = Duration::from_millis(100);
/// A guest quiet this long gets its zone parked (coalesced_io.rs): its next write exits.
pub const PARK_AFTER: Duration = Duration::from_secs(2);

/// When the monitor looks at KVM's ring of the guest's buffered serial writes
/// (coalesced_io.rs), which no exit may empty for a while: a guest printing without exits
/// (then idling, or computing) is shown within `RING_MIN` of writing at first; each wake
/// that finds the guest wrote nothing since doubles the wait, up to `RING_MAX`; after
/// `PARK_AFTER` of quiet the zone is parked, and the monitor stops waking for it. Input
/// handed to the guest starts over from `RING_MIN`: its echo shows at once.
pub struct RingSchedule {
    wait: Duration,
    /// The ring's activity count at the last wake (`CoalescedIo::activity`).
    seen: u64,
    /// Since when the count has not changed.
    quiet_since: Instant,
    /// Input was handed to the guest since the last wake.
    input: bool,
}

/// What the ring needs at this wake.
#[derive(Debug, PartialEq, Eq)]
pub enum RingPlan {
    /// Look again within this.
    WakeWithin(Duration),
    /// The guest has been quiet for `PARK_AFTER`: park the zone.
    Park,
}

impl RingSchedule {
    pub fn new(now: Instant) -> RingSchedule {
        RingSchedule {
            wait: RING_MIN,
            seen: 0,
            quiet_since: now,
            input: false,
        }
    }

    /// At a wake at `now`, with the ring's activity count.
    pub fn plan(&mut self, activity: u64, now: Instant) -> RingPlan {
        if activity != self.seen || self.input {
            self.seen = activity;
            self.input = false;
            self.quiet_since = now;
            self.wait = RING_MIN;
        } else if now.saturating_duration_since(self.quiet_since) >= PARK_AFTER {
            return RingPlan::Park;
        } else {
            self.wait = (self.wait * 2).min(RING_MAX);
        }
        RingPlan::WakeWithin(self.wait)
    }

    /// The guest was given input: it may answer without an exit.
    pub fn input_given(&mut self) {
        self.input = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_ring_wait_grows_while_the_guest_is_quiet_and_starts_over_when_it_writes() {
        let t0 = Instant::now();
        let mut r = RingSchedule::new(t0);
        assert_eq!(r.plan(0, t0), RingPlan::WakeWithin(ms(2)));
        assert_eq!(
            r.plan(5, t0),
            RingPlan::WakeWithin(RING_MIN),
            "the guest wrote"
        );
        let waits: Vec<RingPlan> = (0..9).map(|i| r.plan(5, t0 + ms(i))).collect();
        let want: Vec<RingPlan> = [2, 4, 8, 16, 32, 64, 100, 100, 100]
            .into_iter()
            .map(|n| RingPlan::WakeWithin(ms(n)))
            .collect();
        assert_eq!(waits, want);
        assert_eq!(r.plan(6, t0 + ms(500)), RingPlan::WakeWithin(RING_MIN));
        r.plan(6, t0 + ms(501));
        r.input_given();
        assert_eq!(
            r.plan(6, t0 + ms(502)),
            RingPlan::WakeWithin(RING_MIN),
            "input given"
        );
    }

    #[test]
    fn a_quiet_guest_gets_its_zone_parked() {
        let t0 = Instant::now();
        let mut r = RingSchedule::new(t0);
        assert_eq!(r.plan(3, t0), RingPlan::WakeWithin(RING_MIN));
        assert_ne!(r.plan(3, t0 + PARK_AFTER - ms(1)), RingPlan::Park);
        assert_eq!(r.plan(3, t0 + PARK_AFTER), RingPlan::Park);
        // Woken again (the count moved): quiet from there.
        assert_eq!(
            r.plan(4, t0 + PARK_AFTER * 3),
            RingPlan::WakeWithin(RING_MIN)
        );
        assert_ne!(r.plan(4, t0 + PARK_AFTER * 4 - ms(1)), RingPlan::Park);
        r.input_given();
        assert_eq!(
            r.plan(4, t0 + PARK_AFTER * 4),
            RingPlan::WakeWithin(RING_MIN)
        );
    }
}
