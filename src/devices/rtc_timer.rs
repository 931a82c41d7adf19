//! Drives the RTC's interrupts from a timerfd: after every guest access (which may enable an
//! interrupt, or acknowledge one by reading register C) the timer is re-armed for the RTC's
//! next event; the monitor polls the timerfd and calls `expire` when it fires.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use crate::bus::BusDevice;
use crate::devices::rtc::Rtc;
use crate::exit::ExitReason;
use crate::log;

pub struct TimedRtc {
    rtc: Rtc,
    timer: TimerFd,
    armed_for: Option<Duration>,
}

impl TimedRtc {
    pub fn new(rtc: Rtc) -> std::io::Result<Self> {
        let timer = TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        // Non-blocking: a guest access may re-arm the timer between the monitor's poll and
        // its read, and the read must not wait for the next expiry then.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fd = timer.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let mut t = TimedRtc {
            rtc,
            timer,
            armed_for: None,
        };
        t.rearm();
        Ok(t)
    }

    /// The descriptor that becomes readable when an RTC event is due.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// The timer fired: account the RTC's events, then arm for the next one.
    pub fn expire(&mut self) {
        if self.armed_for.is_some() {
            let _ = self.timer.wait();
            self.armed_for = None;
        }
        self.rtc.tick();
        self.rearm();
    }

    fn rearm(&mut self) {
        let next = self.rtc.time_to_next_event();
        if next == self.armed_for && next.is_none() {
            return;
        }
        let r = match next {
            // A zero duration would disarm the timer: fire as soon as possible instead.
            Some(d) => self.timer.reset(d.max(Duration::from_nanos(1)), None),
            None => self.timer.clear(),
        };
        if let Err(e) = r {
            log::debug(format_args!("rtc: cannot arm its timer: {e}"));
        }
        self.armed_for = next;
    }
}

impl BusDevice for TimedRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.rtc.read(offset, data);
        self.rearm();
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        let r = self.rtc.write(offset, data);
        self.rearm();
        r
    }
}
