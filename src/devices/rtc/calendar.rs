//! Civil-date arithmetic for the RTC: seconds since the Unix epoch to a proleptic Gregorian
//! date and time of day (with its weekday) and back, and the length of a month.

pub(super) const SECS_PER_DAY: i64 = 86_400;

/// A calendar time; `weekday` is 1 for Sunday to 7 for Saturday.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DateTime {
    pub(super) year: i64,
    pub(super) month: u8,
    pub(super) day: u8,
    pub(super) hour: u8,
    pub(super) minute: u8,
    pub(super) second: u8,
    pub(super) weekday: u8,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub(super) fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl DateTime {
    pub(super) fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(SECS_PER_DAY);
        let tod = secs.rem_euclid(SECS_PER_DAY);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        DateTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (tod / 3600) as u8,
            minute: (tod / 60 % 60) as u8,
            second: (tod % 60) as u8,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    pub(super) fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29 13:45:30 UTC, a Thursday.
    const T0: i64 = 1_709_214_330;

    #[test]
    fn calendar_conversions_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 2, 29) * SECS_PER_DAY, 1_709_164_800);
        let dt = DateTime::from_unix(T0);
        assert_eq!(
            (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.weekday),
            (2024, 2, 29, 13, 45, 30, 5)
        );
        for t in [0, T0, -1, 951_782_400, 4_102_444_800, 253_402_300_799] {
            assert_eq!(DateTime::from_unix(t).to_unix(), t);
        }
    }
}
