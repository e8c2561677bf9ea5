//! Unix seconds ↔ calendar: `YYYY-MM-DD HH:MM:SSZ` (or the local time
//! with its offset, `--local`) for text output, RFC 3339 for `--until`. The calendar is jiff's (proleptic Gregorian,
//! years up to 9999); no time zones but the offset written in the text,
//! no leap seconds.

use std::time::SystemTime;

/// Now, in unix seconds.
pub fn now() -> i64 {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC; `unix time N` for an instant outside
/// years -9999 to 9999.
pub fn format_utc(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map_or_else(
        |_| format!("unix time {secs}"),
        |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// An instant as text output shows it, labelled with its zone: UTC by
/// default (`2026-12-04 20:21:07Z`), the system's time zone with its offset
/// under `--local` (`2026-12-04 21:21:07+01:00`). Either is an RFC 3339
/// date-time (with a space for the `T`), which `--until` takes back.
pub fn format_time(secs: i64) -> String {
    format_time_in(secs, crate::style::zone().as_ref())
}

/// [`format_time`] in `zone` (`None`: UTC).
pub fn format_time_in(secs: i64, zone: Option<&jiff::tz::TimeZone>) -> String {
    let Ok(t) = jiff::Timestamp::from_second(secs) else {
        return format!("unix time {secs}");
    };
    match zone {
        None => format!("{}Z", format_utc(secs)),
        Some(z) => t
            .to_zoned_datetime(z.clone())
            .strftime("%Y-%m-%d %H:%M:%S%:z")
            .to_string(),
    }
}

/// [`format_time`], or `-` for none.
pub fn format_opt(secs: Option<i64>) -> String {
    secs.map_or_else(|| "-".to_owned(), format_time)
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
    let year = num(0..4)?;
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
    // 60: a leap second, counted as the next minute's first.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }
    let leap = second == 60;
    // The date may still not exist (February 30th).
    let field = |n: u32| i8::try_from(n).map_err(|_| bad("no such date"));
    let civil = jiff::civil::DateTime::new(
        i16::try_from(year).map_err(|_| bad("no such date"))?,
        field(month)?,
        field(day)?,
        field(hour)?,
        field(minute)?,
        field(second - u32::from(leap))?,
        0,
    )
    .map_err(|_| bad("no such date"))?;
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
            let minutes = i32::try_from(h * 60 + m).map_err(|_| bad("no such offset"))?;
            if sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        None => return Err(bad("a time zone is needed: Z or +HH:MM")),
        _ => return Err(bad("unexpected text after the time")),
    };
    jiff::tz::Offset::from_seconds(offset * 60)
        .and_then(|o| o.to_timestamp(civil))
        .map(|t| t.as_second() + i64::from(leap))
        .map_err(|_| bad("out of range"))
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
        assert_eq!(format_opt(Some(86_400)), "1970-01-02 00:00:00Z");
    }

    #[test]
    fn shown_times_carry_their_zone() {
        // UTC by default, with a Z, and read back by --until.
        assert_eq!(format_time(1_769_882_400), "2026-01-31 18:00:00Z");
        assert_eq!(
            parse_rfc3339(&format_time(1_769_882_400)),
            Ok(1_769_882_400)
        );
        // A zone with summer time: the offset follows the date.
        let berlin = jiff::tz::TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!(
            format_time_in(1_769_882_400, Some(&berlin)),
            "2026-01-31 19:00:00+01:00"
        );
        assert_eq!(
            format_time_in(1_782_900_000, Some(&berlin)),
            "2026-07-01 12:00:00+02:00"
        );
        let local = format_time_in(1_782_900_000, Some(&berlin));
        assert_eq!(parse_rfc3339(&local), Ok(1_782_900_000));
        // West of Greenwich, and --local through the style.
        let new_york = jiff::tz::TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
        let text = crate::style::with(
            crate::style::Style {
                wide: false,
                zone: Some(new_york),
            },
            || format_opt(Some(1_769_882_400)),
        );
        assert_eq!(text, "2026-01-31 13:00:00-05:00");
        assert_eq!(
            format_time_in(i64::MAX, None),
            format!("unix time {}", i64::MAX)
        );
    }

    #[test]
    fn calendar_round_trips() {
        // Every day from 1900 to 2200 reads back as itself, in order.
        let mut prev = None;
        for days in -25_567_i64..84_000 {
            let secs = days * 86_400 + 43_199;
            let text = format_utc(secs);
            assert_eq!(parse_rfc3339(&format!("{text}Z")), Ok(secs), "{text}");
            if let Some(p) = prev {
                assert!(text > p, "{text} after {p}");
            }
            prev = Some(text);
        }
    }

    #[test]
    fn calendar_edges() {
        // Leap years: every fourth, not centuries, but every fourth century.
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Ok(951_782_400));
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        for bad in [
            "2100-02-29T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-06-31T00:00:00Z",
            "2026-09-31T00:00:00Z",
            "2026-11-31T00:00:00Z",
        ] {
            let e = parse_rfc3339(bad).unwrap_err();
            assert!(e.contains("no such date"), "{bad}: {e}");
        }
        // End of month and of year; an offset that crosses into the next.
        assert_eq!(format_utc(1_801_439_999), "2027-01-31 23:59:59");
        assert_eq!(
            parse_rfc3339("2026-12-31T23:30:00-01:00"),
            parse_rfc3339("2027-01-01T00:30:00Z")
        );
        // Past 2038 (32-bit time_t), 2106 (32-bit unsigned) and to year 9999.
        assert_eq!(format_utc(1 << 31), "2038-01-19 03:14:08");
        assert_eq!(parse_rfc3339("2038-01-19T03:14:08Z"), Ok(1 << 31));
        assert_eq!(format_utc(1 << 32), "2106-02-07 06:28:16");
        assert_eq!(parse_rfc3339("9999-12-30T22:00:00Z"), Ok(253_402_207_200));
        assert_eq!(format_utc(253_402_207_200), "9999-12-30 22:00:00");
        // Beyond the calendar: a clear error, a plain number shown.
        assert!(parse_rfc3339("9999-12-31T23:59:59Z")
            .unwrap_err()
            .contains("out of range"));
        assert_eq!(format_utc(i64::MAX), format!("unix time {}", i64::MAX));
        assert_eq!(format_utc(i64::MIN), format!("unix time {}", i64::MIN));
        // Before 1970.
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Ok(-1));
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00Z"), Ok(-62_167_219_200));
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
