//! Unix seconds ↔ UTC calendar: `YYYY-MM-DD HH:MM:SS` for tables and
//! RFC 3339 for `--until`. Proleptic Gregorian calendar after Howard
//! Hinnant's `days_from_civil` / `civil_from_days`; no time zones but the
//! offset written in the text, no leap seconds.

use std::time::SystemTime;

/// Now, in unix seconds.
pub fn now() -> i64 {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Days since 1970-01-01 of a calendar date (the policy crate's).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    keyward_policy::days_from_civil(year, month.into(), day.into())
}

/// The calendar date (year, month, day) `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both in range by construction: day 1..=31, month 1..=12.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn format_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// [`format_utc`], or `-` for none.
pub fn format_opt(secs: Option<i64>) -> String {
    secs.map_or_else(|| "-".to_owned(), format_utc)
}

/// An RFC 3339 date-time (`2026-12-01T00:00:00Z`, `...T02:00:00+02:00`,
/// optional fraction, which is dropped) as unix seconds. A date alone or a
/// time without offset is refused: an expiry must not depend on where the
/// command ran.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let bad = |why: &str| {
        format!("{text:?} is not an RFC 3339 time ({why}); write it like 2026-12-01T00:00:00Z")
    };
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<u32, String> {
        let part = b.get(range).ok_or_else(|| bad("too short"))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad("digits expected"));
        }
        Ok(part.iter().fold(0, |n, &c| n * 10 + u32::from(c - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| -> Result<(), String> {
        match b.get(at) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(bad("date and time fields are YYYY-MM-DDTHH:MM:SS")),
        }
    };
    let year = i64::from(num(0..4)?);
    sep(4, b"-")?;
    let month = num(5..7)?;
    sep(7, b"-")?;
    let day = num(8..10)?;
    if b.len() == 10 {
        return Err(bad("a time and a time zone are needed"));
    }
    sep(10, b"Tt ")?;
    let hour = num(11..13)?;
    sep(13, b":")?;
    let minute = num(14..16)?;
    sep(16, b":")?;
    let second = num(17..19)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    // 60: a leap second, counted as the next minute's first.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }
    let mut at = 19;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err(bad("digits expected after '.'"));
        }
        at += 1 + digits;
    }
    let offset = match b.get(at) {
        Some(b'Z' | b'z') if b.len() == at + 1 => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == at + 6 => {
            sep(at + 3, b":")?;
            let (h, m) = (num(at + 1..at + 3)?, num(at + 4..at + 6)?);
            if h > 23 || m > 59 {
                return Err(bad("no such offset"));
            }
            let minutes = i64::from(h * 60 + m);
            if sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        None => return Err(bad("a time zone is needed: Z or +HH:MM")),
        _ => return Err(bad("unexpected text after the time")),
    };
    Ok(days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3_600
        + i64::from(minute) * 60
        + i64::from(second)
        - offset * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_868_800), "2000-03-01 00:00:00");
        assert_eq!(format_utc(951_868_799), "2000-02-29 23:59:59");
        assert_eq!(format_utc(1_769_882_400), "2026-01-31 18:00:00");
        assert_eq!(format_utc(1_796_083_200), "2026-12-01 00:00:00");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59");
        assert_eq!(format_utc(4_102_444_800), "2100-01-01 00:00:00");
        assert_eq!(format_opt(None), "-");
        assert_eq!(format_opt(Some(86_400)), "1970-01-02 00:00:00");
    }

    #[test]
    fn calendar_round_trips() {
        // Every day from 1900 to 2200 maps back to itself, in order.
        let mut prev = None;
        for days in -25_567..84_000 {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), days);
            if let Some(p) = prev {
                assert!((y, m, d) > p);
            }
            prev = Some((y, m, d));
        }
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2026-12-01T00:00:00Z"), Ok(1_796_083_200));
        assert_eq!(parse_rfc3339("2026-01-31T18:00:00Z"), Ok(1_769_882_400));
        assert_eq!(
            parse_rfc3339("2026-01-31T20:00:00+02:00"),
            Ok(1_769_882_400)
        );
        assert_eq!(
            parse_rfc3339("2026-01-31T15:30:00-02:30"),
            Ok(1_769_882_400)
        );
        assert_eq!(parse_rfc3339("2026-01-31t18:00:00.999z"), Ok(1_769_882_400));
        assert_eq!(parse_rfc3339("2026-01-31 18:00:00Z"), Ok(1_769_882_400));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(1_709_164_800));
        assert_eq!(parse_rfc3339("2016-12-31T23:59:60Z"), Ok(1_483_228_800));
        for bad in [
            "",
            "2026-12-01",
            "2026-12-01T00:00:00",
            "2026-12-01T00:00Z",
            "2026-12-01T00:00:00ZZ",
            "2026-12-01T00:00:00+0200",
            "2026-12-01T00:00:00+24:00",
            "2026-12-01T00:00:00.Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-12-00T00:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T00:60:00Z",
            "2026/12/01T00:00:00Z",
            "+026-12-01T00:00:00Z",
            "2026-12-01T00:00:00 UTC",
            "1796083200",
            "2026-１2-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} accepted");
        }
        let e = parse_rfc3339("2026-12-01").unwrap_err();
        assert!(e.contains("2026-12-01T00:00:00Z"), "{e}");
    }
}
