//! The time the RTC counts: the `Clock` trait, and `HostClock`, the host's wall clock in UTC
//! or in the host's local time zone.

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time as the guest's RTC should count it.
pub trait Clock: Send {
    /// Seconds since the Unix epoch and nanoseconds within that second.
    fn now(&self) -> (i64, u32);
}

/// The host's clock, in UTC or shifted to the host's local time zone.
pub struct HostClock {
    localtime: bool,
}

impl HostClock {
    pub fn new(localtime: bool) -> Self {
        let c = HostClock { localtime };
        // The first local-time conversion loads the time-zone rules; do it before any sandbox.
        let _ = c.now();
        c
    }
}

impl Clock for HostClock {
    fn now(&self) -> (i64, u32) {
        // A host clock set before 1970 counts as the epoch.
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, nanos) = (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        );
        if self.localtime {
            (secs.saturating_add(utc_offset(secs)), nanos)
        } else {
            (secs, nanos)
        }
    }
}

/// The host time zone's offset from UTC at `secs`, in seconds (0 if unknown).
fn utc_offset(secs: i64) -> i64 {
    let t = secs as _;
    // SAFETY: `libc::tm` is plain integers and a nullable pointer; all-zero is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to live locals for the duration of the call; localtime_r is
    // thread-safe and writes only to `tm`.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        0
    } else {
        tm.tm_gmtoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_clock_is_sane() {
        let (utc, _) = HostClock::new(false).now();
        assert!(utc > 1_600_000_000);
        let (local, _) = HostClock::new(true).now();
        assert!((local - utc).abs() <= 15 * 3600);
    }
}
