//! Alarm matching: which values each of the three alarm fields (hours, minutes, seconds)
//! matches, and the first time of day after a given time that all three match. Decoding the
//! alarm registers into fields is the device's (mod.rs), as it depends on the data mode.

use super::calendar::SECS_PER_DAY;

/// Which values of one alarm field match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AlarmField {
    Any,
    Only(u32),
}

impl AlarmField {
    /// The first matching value at or after `from`, below `limit`.
    fn first_from(self, from: u32, limit: u32) -> Option<u32> {
        match self {
            AlarmField::Any => (from < limit).then_some(from),
            AlarmField::Only(v) => (v >= from && v < limit).then_some(v),
        }
    }
}

/// The first time (seconds) after `after` whose time of day matches hour `h`, minute `m` and
/// second `s`; None if no time of day does.
pub(super) fn next_match(h: AlarmField, m: AlarmField, s: AlarmField, after: i64) -> Option<i64> {
    let first_from = |start: u32| -> Option<u32> {
        for hour in start / 3600..24 {
            if h.first_from(hour, hour + 1).is_none() {
                continue;
            }
            let first_minute = if hour == start / 3600 {
                start / 60 % 60
            } else {
                0
            };
            for minute in first_minute..60 {
                if m.first_from(minute, minute + 1).is_none() {
                    continue;
                }
                let base = hour * 3600 + minute * 60;
                let first_second = if base == start - start % 60 {
                    start % 60
                } else {
                    0
                };
                if let Some(second) = s.first_from(first_second, 60) {
                    return Some(base + second);
                }
            }
        }
        None
    };
    let day = after.div_euclid(SECS_PER_DAY);
    let tod = after.rem_euclid(SECS_PER_DAY) as u32 + 1;
    let (day, tod) = match first_from(tod) {
        Some(t) => (day, t),
        None => (day + 1, first_from(0)?),
    };
    Some(
        day.saturating_mul(SECS_PER_DAY)
            .saturating_add(i64::from(tod)),
    )
}
