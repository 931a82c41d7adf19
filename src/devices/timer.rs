//! Drives a device's timed events (the RTC's interrupts, the ACPI PM timer's overflow, the
//! PIT's IRQ 0) from a timerfd: after every guest access, which may enable or acknowledge an
//! event, the timer is re-armed for the device's next event; the monitor polls the timerfd and
//! calls `expire`. A device whose events repeat at a fixed period gives the period, and the
//! timer fires on that period without being re-armed; a device that knows when its schedule
//! changes says so, and accesses that did not change it cost no `timerfd_settime`.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use crate::bus::BusDevice;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::pit::Pit;
use crate::devices::rtc::Rtc;
use crate::exit::ExitReason;
use crate::log;

/// A device with events due at times it computes.
pub trait TimedDevice: BusDevice {
    /// How long until the next enabled event (zero if overdue), or None.
    fn next_event(&self) -> Option<Duration>;
    /// The time between events from the next one on, when they repeat at a fixed period.
    fn period(&self) -> Option<Duration> {
        None
    }
    /// Accounts the events that fell due.
    fn on_timer(&mut self);
    /// Whether `next_event` or `period` may have changed since the last call (which clears
    /// it). The default says yes after every access and expiry.
    fn take_schedule_change(&mut self) -> bool {
        true
    }
}

impl TimedDevice for Rtc {
    fn next_event(&self) -> Option<Duration> {
        self.time_to_next_event()
    }
    fn on_timer(&mut self) {
        self.tick()
    }
}

impl TimedDevice for Pit {
    fn next_event(&self) -> Option<Duration> {
        self.time_to_next_irq()
    }
    fn period(&self) -> Option<Duration> {
        self.irq_period()
    }
    fn on_timer(&mut self) {
        self.tick()
    }
    fn take_schedule_change(&mut self) -> bool {
        self.take_irq_schedule_change()
    }
}

impl TimedDevice for AcpiPm {
    fn next_event(&self) -> Option<Duration> {
        self.next_timer_overflow()
    }
    fn on_timer(&mut self) {
        self.tick()
    }
}

/// What the monitor sees of a timed device.
pub trait Expire: Send {
    /// The descriptor that becomes readable when an event is due.
    fn timer_fd(&self) -> RawFd;
    /// The timer fired.
    fn expire(&mut self);
}

/// A device and the timerfd that drives it; it sits on the bus in the device's place.
pub struct Timed<D> {
    dev: D,
    timer: TimerFd,
    armed: bool,
    /// The timer was armed with a period (it stays armed after it fires).
    periodic: bool,
}

impl<D: TimedDevice> Timed<D> {
    pub fn new(dev: D) -> std::io::Result<Self> {
        let timer = TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        // Non-blocking: a guest access may re-arm the timer between the monitor's poll and
        // its read, and that read must not wait for the next expiry.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fd = timer.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let mut t = Timed {
            dev,
            timer,
            armed: false,
            periodic: false,
        };
        t.arm();
        Ok(t)
    }

    /// Re-arms the timer if the device's schedule may have changed.
    fn rearm(&mut self) {
        if self.dev.take_schedule_change() {
            self.arm();
        }
    }

    fn arm(&mut self) {
        let next = self.dev.next_event();
        if next.is_none() && !self.armed {
            return;
        }
        let period = next.and(self.dev.period()).filter(|p| !p.is_zero());
        let r = match next {
            // A zero duration would disarm the timer: fire as soon as possible instead.
            Some(d) => self.timer.reset(d.max(Duration::from_nanos(1)), period),
            None => self.timer.clear(),
        };
        if let Err(e) = r {
            log::debug(format_args!("timer: cannot arm: {e}"));
        }
        self.armed = next.is_some();
        self.periodic = period.is_some();
    }
}

impl<D: TimedDevice> Timed<D> {
    /// Runs `f` on the device, then re-arms the timer for what `f` may have enabled.
    pub fn with_device<R>(&mut self, f: impl FnOnce(&mut D) -> R) -> R {
        let r = f(&mut self.dev);
        self.rearm();
        r
    }
}

impl<D: TimedDevice> Expire for Timed<D> {
    fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    fn expire(&mut self) {
        // Drain the expiry count (non-blocking; nothing to read if re-armed meanwhile). A
        // one-shot timer that fired is disarmed.
        if self.timer.wait().is_ok() && !self.periodic {
            self.armed = false;
        }
        self.dev.on_timer();
        self.rearm();
    }
}

impl<D: TimedDevice> BusDevice for Timed<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.dev.read(offset, data);
        self.rearm();
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        let r = self.dev.write(offset, data);
        self.rearm();
        r
    }

    fn reset(&mut self) {
        self.dev.reset();
        self.arm();
    }

    fn asks_for_memory_map(&self, offset: u64, access: crate::bus::Access<'_>) -> bool {
        self.dev.asks_for_memory_map(offset, access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A device whose event is due `delay` after each write, once.
    struct Once {
        delay: Option<Duration>,
        fired: u32,
    }
    impl BusDevice for Once {
        fn read(&mut self, _: u64, _: &mut [u8]) {}
        fn write(&mut self, _: u64, _: &[u8]) -> Option<ExitReason> {
            self.delay = Some(Duration::from_millis(5));
            None
        }
    }
    impl TimedDevice for Once {
        fn next_event(&self) -> Option<Duration> {
            self.delay
        }
        fn on_timer(&mut self) {
            self.fired += 1;
            self.delay = None;
        }
    }

    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    #[test]
    fn a_write_arms_the_timer_and_expire_runs_the_event() {
        let mut t = Timed::new(Once {
            delay: None,
            fired: 0,
        })
        .unwrap();
        assert!(!readable(t.timer_fd(), 20), "armed with nothing due");
        let start = Instant::now();
        t.write(0, &[1]);
        assert!(readable(t.timer_fd(), 1000));
        assert!(start.elapsed() >= Duration::from_millis(5));
        t.expire();
        assert_eq!(t.dev.fired, 1);
        assert!(!readable(t.timer_fd(), 20), "still armed after the event");
        // A spurious expire (nothing to read) does not block.
        t.expire();
        assert_eq!(t.dev.fired, 2);
    }

    /// Events every 5 ms once written; says when its schedule changes.
    struct Periodic {
        on: bool,
        changed: bool,
        fired: u32,
    }
    impl BusDevice for Periodic {
        fn read(&mut self, _: u64, _: &mut [u8]) {}
        fn write(&mut self, _: u64, _: &[u8]) -> Option<ExitReason> {
            self.on = true;
            self.changed = true;
            None
        }
    }
    impl TimedDevice for Periodic {
        fn next_event(&self) -> Option<Duration> {
            self.on.then_some(Duration::from_millis(5))
        }
        fn period(&self) -> Option<Duration> {
            Some(Duration::from_millis(5))
        }
        fn on_timer(&mut self) {
            self.fired += 1;
        }
        fn take_schedule_change(&mut self) -> bool {
            std::mem::take(&mut self.changed)
        }
    }

    #[test]
    fn a_periodic_timer_fires_again_without_being_rearmed() {
        let mut t = Timed::new(Periodic {
            on: false,
            changed: false,
            fired: 0,
        })
        .unwrap();
        assert!(!readable(t.timer_fd(), 20));
        // Before the write that arms the timer: its third expiry is 15 ms after the arming,
        // however late this thread gets to run after it.
        let start = Instant::now();
        t.write(0, &[1]);
        for n in 1..=3 {
            assert!(readable(t.timer_fd(), 1000));
            t.expire();
            assert_eq!(t.dev.fired, n);
            // Accesses that change nothing leave the timer as it is.
            let mut b = [0u8];
            t.read(0, &mut b);
        }
        assert!(start.elapsed() >= Duration::from_millis(15));
        assert!(t.periodic && t.armed);
    }
}
