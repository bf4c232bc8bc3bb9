//! Civil dates and RFC 3339 timestamps, without a date library.
//!
//! Baselines count *local* days, and meter files carry RFC 3339 or Unix-ms
//! timestamps. Local time here is UTC plus a fixed offset in minutes (a
//! program states its offset; daylight-saving changes are not modelled), so
//! every local day is exactly 86 400 s long and "the same time *k* days
//! earlier" is the same instant minus *k* × 86 400 000 ms.
//!
//! The day arithmetic is Howard Hinnant's `days_from_civil` /
//! `civil_from_days` (proleptic Gregorian calendar,
//! <https://howardhinnant.github.io/date_algorithms.html>).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Milliseconds in a day.
pub const MS_PER_DAY: u64 = 86_400_000;

/// Largest offset from UTC accepted, minutes (±14 h, as in the real world).
pub const MAX_UTC_OFFSET_MIN: i32 = 14 * 60;

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant).
/// `month` is 1..=12 and `day` 1..=31; callers check validity.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The date (year, month 1..=12, day 1..=31) `days` after 1970-01-01 (Hinnant).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// A calendar day, written `YYYY-MM-DD` (in files, JSON and on the command
/// line). Ordered by time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Date {
    /// Days since 1970-01-01 (negative before).
    days: i64,
}

/// Day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    /// Monday.
    Monday,
    /// Tuesday.
    Tuesday,
    /// Wednesday.
    Wednesday,
    /// Thursday.
    Thursday,
    /// Friday.
    Friday,
    /// Saturday.
    Saturday,
    /// Sunday.
    Sunday,
}

impl Weekday {
    /// Saturday or Sunday.
    pub fn is_weekend(self) -> bool {
        matches!(self, Weekday::Saturday | Weekday::Sunday)
    }
}

impl Date {
    /// The date `year-month-day`, if it exists (years 0 to 9999).
    pub fn from_ymd(year: i64, month: u32, day: u32) -> Option<Date> {
        if !(0..=9999).contains(&year) || !(1..=12).contains(&month) {
            return None;
        }
        if day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(Date {
            days: days_from_civil(year, month, day),
        })
    }

    /// The date `days` after 1970-01-01.
    pub fn from_days(days: i64) -> Date {
        Date { days }
    }

    /// Days since 1970-01-01.
    pub fn days(self) -> i64 {
        self.days
    }

    /// The local date of the instant `unix_ms` at `utc_offset_min` minutes
    /// from UTC.
    pub fn from_unix_ms(unix_ms: u64, utc_offset_min: i32) -> Date {
        let local = unix_ms as i128 + i128::from(utc_offset_min) * 60_000;
        Date {
            days: local.div_euclid(i128::from(MS_PER_DAY)) as i64,
        }
    }

    /// (year, month, day).
    pub fn ymd(self) -> (i64, u32, u32) {
        civil_from_days(self.days)
    }

    /// The day `n` days later (earlier when negative).
    pub fn add_days(self, n: i64) -> Date {
        Date {
            days: self.days + n,
        }
    }

    /// Day of the week (1970-01-01 was a Thursday).
    pub fn weekday(self) -> Weekday {
        const FROM_MONDAY: [Weekday; 7] = [
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
            Weekday::Saturday,
            Weekday::Sunday,
        ];
        FROM_MONDAY[(self.days + 3).rem_euclid(7) as usize]
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl fmt::Debug for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for Date {
    type Err = String;
    fn from_str(s: &str) -> Result<Date, String> {
        let b = s.as_bytes();
        let bad = || format!("{s:?} is not a date like 2026-07-01");
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let year = digits(&b[0..4]).ok_or_else(bad)?;
        let month = digits(&b[5..7]).ok_or_else(bad)?;
        let day = digits(&b[8..10]).ok_or_else(bad)?;
        Date::from_ymd(i64::from(year), month, day)
            .ok_or_else(|| format!("{s:?} is not a day of the calendar"))
    }
}

impl TryFrom<String> for Date {
    type Error = String;
    fn try_from(s: String) -> Result<Date, String> {
        s.parse()
    }
}

impl From<Date> for String {
    fn from(d: Date) -> String {
        d.to_string()
    }
}

/// The value of a run of ASCII digits (at most 9 of them), or `None`.
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// Parses a timestamp: Unix milliseconds (`1782925200000`) or RFC 3339
/// (`2026-07-01T17:00:00Z`, `2026-07-01T19:00:00+02:00`, fractions of a
/// second down to the millisecond, `t`/`z` and a space for `T` accepted).
/// Returns Unix ms; instants before 1970 are rejected.
pub fn parse_timestamp(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is too large for Unix milliseconds"));
    }
    parse_rfc3339(s)
}

fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("{s:?} is neither Unix milliseconds nor an RFC 3339 time like 2026-07-01T17:00:00Z")
    };
    let b = s.as_bytes();
    if b.len() < 20 || !b.is_ascii() {
        return Err(bad());
    }
    let date: Date = s[..10].parse().map_err(|_| bad())?;
    if !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let hour = digits(&b[11..13]).ok_or_else(bad)?;
    let minute = digits(&b[14..16]).ok_or_else(bad)?;
    let second = digits(&b[17..19]).ok_or_else(bad)?;
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!(
            "{s:?}: time of day out of range (leap seconds are not accepted)"
        ));
    }
    let mut rest = &s[19..];
    let mut millis = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        let (f, after) = frac.split_at(n);
        // Anything finer than a millisecond must be zero: meter intervals
        // are whole milliseconds.
        if f.len() > 3 && f[3..].bytes().any(|c| c != b'0') {
            return Err(format!("{s:?} is more precise than a millisecond"));
        }
        let mut ms = f.as_bytes()[..f.len().min(3)].to_vec();
        ms.resize(3, b'0');
        millis = digits(&ms).ok_or_else(bad)?;
        rest = after;
    }
    let offset_min: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let r = rest.as_bytes();
            if r.len() != 6 || !matches!(r[0], b'+' | b'-') || r[3] != b':' {
                return Err(bad());
            }
            let oh = digits(&r[1..3]).ok_or_else(bad)?;
            let om = digits(&r[4..6]).ok_or_else(bad)?;
            if oh > 23 || om > 59 {
                return Err(format!("{s:?}: offset out of range"));
            }
            let m = i64::from(oh * 60 + om);
            if r[0] == b'-' {
                -m
            } else {
                m
            }
        }
    };
    let local_ms = date.days * MS_PER_DAY as i64
        + i64::from(hour) * 3_600_000
        + i64::from(minute) * 60_000
        + i64::from(second) * 1000
        + i64::from(millis);
    let utc_ms = local_ms - offset_min * 60_000;
    u64::try_from(utc_ms).map_err(|_| format!("{s:?} is before 1970"))
}

/// Writes Unix ms as RFC 3339 at `utc_offset_min` from UTC: `…Z` at offset
/// 0, else `…+02:00`; milliseconds only when not zero.
pub fn format_rfc3339(unix_ms: u64, utc_offset_min: i32) -> String {
    let local = unix_ms as i128 + i128::from(utc_offset_min) * 60_000;
    let day_ms = i128::from(MS_PER_DAY);
    let date = Date::from_days(local.div_euclid(day_ms) as i64);
    let in_day = local.rem_euclid(day_ms) as u64;
    let (h, m, s, ms) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let mut out = format!("{date}T{h:02}:{m:02}:{s:02}");
    if ms != 0 {
        out.push_str(&format!(".{ms:03}"));
    }
    if utc_offset_min == 0 {
        out.push('Z');
    } else {
        let sign = if utc_offset_min < 0 { '-' } else { '+' };
        let a = utc_offset_min.unsigned_abs();
        out.push_str(&format!("{sign}{:02}:{:02}", a / 60, a % 60));
    }
    out
}

/// Writes Unix ms as local `HH:MM` (or `HH:MM:SS` when seconds are not 0).
pub fn format_time_of_day(unix_ms: u64, utc_offset_min: i32) -> String {
    let local = unix_ms as i128 + i128::from(utc_offset_min) * 60_000;
    let in_day = local.rem_euclid(i128::from(MS_PER_DAY)) as u64;
    let (h, m, s) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60);
    if s == 0 {
        format!("{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_and_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // 2026-07-01 = 20 635 days after the epoch (1782864000 s).
        assert_eq!(days_from_civil(2026, 7, 1), 20_635);
        for d in -800_000..800_000 {
            if d % 97 != 0 {
                continue;
            }
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn weekdays() {
        let d: Date = "2026-07-01".parse().unwrap();
        assert_eq!(d.weekday(), Weekday::Wednesday);
        assert_eq!(d.add_days(3).weekday(), Weekday::Saturday);
        assert!(d.add_days(4).weekday().is_weekend());
        assert_eq!(Date::from_days(0).weekday(), Weekday::Thursday);
        assert_eq!(Date::from_days(-1).weekday(), Weekday::Wednesday);
    }

    #[test]
    fn dates_parse_strictly() {
        assert_eq!(
            "2024-02-29".parse::<Date>().unwrap().to_string(),
            "2024-02-29"
        );
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-7-1",
            "20260701",
            "2026-07-01x",
            "",
            "２０２６-07-01",
        ] {
            assert!(bad.parse::<Date>().is_err(), "{bad}");
        }
        let j = serde_json::to_string(&Date::from_ymd(2026, 7, 1).unwrap()).unwrap();
        assert_eq!(j, "\"2026-07-01\"");
        assert!(serde_json::from_str::<Date>("\"2026-02-30\"").is_err());
    }

    #[test]
    fn local_dates() {
        // 2026-07-01T23:30:00Z is already 2 July at +01:00, still 1 July at -05:00.
        let t = parse_timestamp("2026-07-01T23:30:00Z").unwrap();
        assert_eq!(Date::from_unix_ms(t, 60).to_string(), "2026-07-02");
        assert_eq!(Date::from_unix_ms(t, -300).to_string(), "2026-07-01");
        assert_eq!(Date::from_unix_ms(0, -60).to_string(), "1969-12-31");
    }

    #[test]
    fn timestamps() {
        let z = parse_timestamp("2026-07-01T17:00:00Z").unwrap();
        assert_eq!(z, 1_782_925_200_000);
        assert_eq!(parse_timestamp("2026-07-01T19:00:00+02:00").unwrap(), z);
        assert_eq!(parse_timestamp("2026-07-01T12:00:00-05:00").unwrap(), z);
        assert_eq!(parse_timestamp("2026-07-01 17:00:00z").unwrap(), z);
        assert_eq!(parse_timestamp("1782925200000").unwrap(), z);
        assert_eq!(
            parse_timestamp("2026-07-01T17:00:00.250Z").unwrap(),
            z + 250
        );
        assert_eq!(
            parse_timestamp("2026-07-01T17:00:00.2500000Z").unwrap(),
            z + 250
        );
        assert!(parse_timestamp("2026-07-01T17:00:00.2501Z").is_err());
        for bad in [
            "",
            "2026-07-01",
            "2026-07-01T17:00Z",
            "2026-07-01T24:00:00Z",
            "2026-07-01T23:59:60Z",
            "2026-07-01T17:00:00",
            "2026-07-01T17:00:00+0200",
            "2026-07-01T17:00:00.Z",
            "1969-12-31T23:59:59Z",
            "99999999999999999999999",
            "-5",
            "2026-07-01T17:00:00Zé",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats() {
        let z = 1_782_925_200_000;
        assert_eq!(format_rfc3339(z, 0), "2026-07-01T17:00:00Z");
        assert_eq!(format_rfc3339(z, 120), "2026-07-01T19:00:00+02:00");
        assert_eq!(format_rfc3339(z + 5, -330), "2026-07-01T11:30:00.005-05:30");
        assert_eq!(format_time_of_day(z, 120), "19:00");
        assert_eq!(format_time_of_day(z + 1000, 0), "17:00:01");
        for off in [-840, -330, 0, 60, 345, 840] {
            assert_eq!(
                parse_timestamp(&format_rfc3339(z + 123, off)).unwrap(),
                z + 123
            );
        }
    }
}
