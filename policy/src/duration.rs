//! Durations ("90d", "12h", "1w2d") and TOML datetimes as [`SystemTime`].

use std::time::{Duration, SystemTime};

/// The longest period a policy may name: 100 years. Longer is a typo, and
/// dates computed from it stay representable.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses a duration: one or more `<number><unit>` groups, units `s`, `m`,
/// `h`, `d` (24 h), `w` (7 d); e.g. `"90d"`, `"12h"`, `"1w3d"`. Zero and
/// anything over [`MAX_DURATION`] are refused.
///
/// The groups are checked here (the policy's syntax is narrower than
/// jiff's friendly format: no spaces, signs, fractions, years or months);
/// jiff adds them up, with days of 24 hours.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a number and a unit s, m, h, d or w, like \"90d\" or \"12h\"";
    if text.is_empty() {
        return Err(format!("empty duration: {EXPECTED}"));
    }
    let too_long = || format!("\"{text}\" is too long a duration");
    let mut total = jiff::SignedDuration::ZERO;
    for group in text.split_inclusive(['s', 'm', 'h', 'd', 'w']) {
        let digits = group.strip_suffix(['s', 'm', 'h', 'd', 'w']).unwrap_or("");
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("\"{text}\" is not a duration: {EXPECTED}"));
        }
        let span: jiff::Span = group.parse().map_err(|_| too_long())?;
        let part = span
            .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
            .map_err(|_| too_long())?;
        total = total.checked_add(part).ok_or_else(too_long)?;
    }
    let duration = Duration::try_from(total).map_err(|_| too_long())?;
    if duration.is_zero() {
        return Err(format!("\"{text}\" is zero: a period must be positive"));
    }
    if duration > MAX_DURATION {
        return Err(format!("\"{text}\" is longer than 100 years"));
    }
    Ok(duration)
}

/// A duration the way [`parse_duration`] reads it, largest units first:
/// `90 s` is `"1m30s"`, a week `"7d"`; zero is `"0s"`. Sub-second parts
/// are dropped.
pub fn format_duration(d: Duration) -> String {
    use jiff::fmt::friendly::{Designator, Spacing, SpanPrinter};
    let span = i64::try_from(d.as_secs())
        .ok()
        .and_then(|s| jiff::Span::new().try_seconds(s).ok())
        .and_then(|s| {
            s.round(
                jiff::SpanRound::new()
                    .largest(jiff::Unit::Day)
                    .days_are_24_hours(),
            )
            .ok()
        });
    match span {
        Some(s) => SpanPrinter::new()
            .designator(Designator::Compact)
            .spacing(Spacing::None)
            .span_to_string(&s),
        // Beyond what jiff represents (some 20,000 years): in seconds.
        None => format!("{}s", d.as_secs()),
    }
}

/// A TOML offset datetime (`2026-01-31T18:00:00Z`, `...+02:00`) as a
/// [`SystemTime`]. Local datetimes and bare dates are refused: an expiry
/// must not depend on the agent's time zone. A leap second (`:60`) is the
/// next minute's first.
pub fn datetime_to_system_time(dt: &toml::value::Datetime) -> Result<SystemTime, String> {
    use toml::value::Offset;
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(format!(
            "{dt} lacks a date, a time or a time zone: write it like 2026-01-31T18:00:00Z"
        ));
    };
    let offset_minutes: i32 = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i32::from(minutes),
    };
    let leap = time.second == 60;
    let civil = jiff::civil::DateTime::new(
        i16::try_from(date.year).map_err(|_| format!("{dt}: no such year"))?,
        i8::try_from(date.month).map_err(|_| format!("{dt}: no such month"))?,
        i8::try_from(date.day).map_err(|_| format!("{dt}: no such day"))?,
        i8::try_from(time.hour).map_err(|_| format!("{dt}: no such hour"))?,
        i8::try_from(time.minute).map_err(|_| format!("{dt}: no such minute"))?,
        i8::try_from(time.second - u8::from(leap)).map_err(|_| format!("{dt}: no such second"))?,
        i32::try_from(time.nanosecond).map_err(|_| format!("{dt}: no such fraction"))?,
    )
    .map_err(|e| format!("{dt} is not a date and time: {e}"))?;
    let at = jiff::tz::Offset::from_seconds(offset_minutes * 60)
        .and_then(|o| o.to_timestamp(civil))
        .map_err(|e| format!("{dt}: {e}"))?;
    let at = if leap {
        at.checked_add(jiff::SignedDuration::from_secs(1))
            .map_err(|e| format!("{dt}: {e}"))?
    } else {
        at
    };
    if at < jiff::Timestamp::UNIX_EPOCH {
        return Err(format!("{dt} is before 1970"));
    }
    SystemTime::try_from(at).map_err(|e| format!("{dt}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("1w3d"), Ok(Duration::from_secs(10 * 86_400)));
        for bad in [
            "",
            "d",
            "90",
            "90 d",
            "90D",
            "-1d",
            "1.5d",
            "1y",
            "0d",
            "0s1m0s0",
            "36501d",
            "99999999999999999999d",
            "18446744073709551615w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("36500d").is_ok());
    }

    #[test]
    fn durations_for_people() {
        for (secs, text) in [
            (0, "0s"),
            (30, "30s"),
            (90, "1m30s"),
            (3600, "1h"),
            (7 * 86_400, "7d"),
            (86_400 + 2 * 3600 + 5, "1d2h5s"),
        ] {
            assert_eq!(format_duration(Duration::from_secs(secs)), text);
            if secs > 0 {
                assert_eq!(
                    parse_duration(text),
                    Ok(Duration::from_secs(secs)),
                    "{text}"
                );
            }
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s");
    }

    #[test]
    fn datetimes() {
        let parse = |s: &str| datetime_to_system_time(&s.parse().unwrap());
        let secs = |s: &str| {
            parse(s)
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(secs("1970-01-01T00:00:00Z"), 0);
        assert_eq!(secs("2000-03-01T00:00:00Z"), 951_868_800);
        assert_eq!(secs("2026-01-31T18:00:00Z"), 1_769_882_400);
        assert_eq!(secs("2026-01-31T20:00:00+02:00"), 1_769_882_400);
        assert!(parse("2026-01-31T18:00:00").is_err());
        assert!(parse("2026-01-31").is_err());
        assert!(parse("1969-12-31T23:59:59Z").is_err());
    }

    #[test]
    fn calendar_edges() {
        let secs = |s: &str| {
            let dt: toml::value::Datetime = s.parse().unwrap();
            datetime_to_system_time(&dt)
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        // Refused by TOML or by the calendar, never a wrong instant.
        let refused = |s: &str| {
            s.parse::<toml::value::Datetime>()
                .map_or(true, |dt| datetime_to_system_time(&dt).is_err())
        };
        // Leap years: every fourth, not centuries, but every fourth century.
        assert_eq!(secs("2024-02-29T00:00:00Z"), 1_709_164_800);
        assert_eq!(secs("2000-02-29T12:00:00Z"), 951_825_600);
        for bad in [
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-06-31T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-10T00:00:00Z",
        ] {
            assert!(refused(bad), "{bad} accepted");
        }
        // End of month and of year.
        assert_eq!(
            secs("2026-01-31T23:59:59Z") + 1,
            secs("2026-02-01T00:00:00Z")
        );
        assert_eq!(
            secs("2026-12-31T23:59:59Z") + 1,
            secs("2027-01-01T00:00:00Z")
        );
        // Past 2038 (32-bit time_t) and to the end of year 9999.
        assert_eq!(secs("2038-01-19T03:14:08Z"), 1 << 31);
        assert_eq!(secs("2106-02-07T06:28:16Z"), 1 << 32);
        // jiff's last instant is 9999-12-30T22:00:00Z (every offset of
        // it is still a date of year 9999); later is an error, not a wrap.
        assert_eq!(secs("9999-12-30T22:00:00Z"), 253_402_207_200);
        assert!(refused("9999-12-31T23:59:59Z"));
        // A leap second is the next minute's first; offsets either way.
        assert_eq!(secs("2016-12-31T23:59:60Z"), 1_483_228_800);
        assert_eq!(
            secs("2026-01-01T01:00:00+01:00"),
            secs("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            secs("2025-12-31T23:00:00-01:00"),
            secs("2026-01-01T00:00:00Z")
        );
        // An offset that puts the instant before 1970.
        assert!(refused("1970-01-01T00:30:00+01:00"));
    }

    #[test]
    fn duration_edges() {
        let d = |s: &str| parse_duration(s).map(|d| d.as_secs());
        // Groups in any order, a unit twice: they add up.
        assert_eq!(d("30m1h"), Ok(5_400));
        assert_eq!(d("1d1d"), Ok(2 * 86_400));
        assert_eq!(d("0s1s"), Ok(1));
        // Exactly 100 years is the most.
        assert_eq!(d("5214w2d"), Ok(36_500 * 86_400));
        assert!(d("5214w3d").unwrap_err().contains("longer than 100 years"));
        assert!(d("3153600001s")
            .unwrap_err()
            .contains("longer than 100 years"));
        // Too big for any calendar, or for 64 bits: a clear error.
        for huge in [
            "9999999999w",
            "99999999999999999999s",
            "1000000000000000d1s",
        ] {
            let e = d(huge).unwrap_err();
            assert!(
                e.contains("too long") || e.contains("longer than"),
                "{huge}: {e}"
            );
        }
        // Negative, fractional, spaced, or jiff's other spellings: refused.
        for bad in [
            "-1d", "+1d", "1.5h", "1 d", "1h 30m", "P1D", "1day", "1mo", "1y", "é", "1é",
        ] {
            assert!(d(bad).unwrap_err().contains("is not a duration"), "{bad}");
        }
        assert_eq!(
            format_duration(Duration::from_secs(36_500 * 86_400)),
            "36500d"
        );
        assert_eq!(
            format_duration(Duration::from_secs(u64::MAX)),
            format!("{}s", u64::MAX)
        );
    }
}
