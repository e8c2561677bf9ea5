//! Unix seconds ↔ calendar: `YYYY-MM-DD HH:MM:SSZ` (or the local time
//! with its offset, `--local`) for text output; the time and duration
//! flags read by jiff's parsers (RFC 3339, dates, the friendly duration
//! format). The calendar is jiff's (proleptic Gregorian, years up to 9999);
//! no time zones but the offset written in the text (a date alone is UTC),
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
fn format_utc(secs: i64) -> String {
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

/// The forms every time flag accepts, for error messages and `--help`.
const POINT_FORMS: &str = "write an RFC 3339 time (2026-12-04T10:00:00Z, \
2026-12-04T11:00:00+01:00), a date (2026-12-04: midnight UTC) or a duration from now \
(30m, 8h, 7d, 1y, 1.5h)";

/// The forms every duration flag accepts.
const DURATION_FORMS: &str = "write a number and a unit, like 30m, 8h, 7d, 1y or 1.5h \
(units s, m, h, d = 24 h, w = 7 d, y = 365 d; several add up: 1d12h)";

/// Which way a relative time (`7d`) counts from now; fixed per flag by
/// what the flag means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// `--since 1h`: one hour ago.
    Past,
    /// `--until 7d`: seven days from now.
    Future,
}

/// A positive duration: one or more `<number><unit>` groups as jiff's
/// friendly format reads them (`30m`, `8h`, `7d`, `1w2d`, `1.5h`, `2 hours`),
/// days of 24 hours, weeks of 7 days and years of 365 days. Zero, negative
/// (`-1h`, `1h ago`), months (their length varies: write days) and anything
/// over 100 years ([`keyward_policy::MAX_DURATION`]) are refused.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    use jiff::fmt::friendly::SpanParser;
    static PARSER: SpanParser = SpanParser::new();
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("an empty duration: {DURATION_FORMS}"));
    }
    let not_one = || format!("{text:?} is not a duration: {DURATION_FORMS}");
    let too_long = || format!("{text:?} is longer than 100 years");
    // A bare number has no unit: jiff would refuse it too, but say why.
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{text:?} has no unit: {DURATION_FORMS}"));
    }
    let span = PARSER.parse_span(text).map_err(|e| {
        // jiff's own words for a number that does not fit its range.
        if e.to_string().contains("range") {
            too_long()
        } else {
            not_one()
        }
    })?;
    if span.is_negative() {
        return Err(format!("{text:?} is negative: a period must be positive"));
    }
    if span.get_months() != 0 {
        return Err(format!(
            "{text:?}: months differ in length; write days (30d) or years (1y)"
        ));
    }
    let years = jiff::SignedDuration::from_hours(24 * 365)
        .checked_mul(i32::from(span.get_years()))
        .ok_or_else(too_long)?;
    let rest = span
        .years(0)
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| too_long())?;
    let total = years.checked_add(rest).ok_or_else(too_long)?;
    let total = std::time::Duration::try_from(total).map_err(|_| too_long())?;
    if total.is_zero() {
        return Err(format!("{text:?} is zero: a period must be positive"));
    }
    if total > keyward_policy::MAX_DURATION {
        return Err(too_long());
    }
    Ok(total)
}

/// A point in time, in unix seconds: an RFC 3339 date-time
/// (`2026-12-01T00:00:00Z`, `...T02:00:00+02:00`; a fraction is dropped), a
/// date (`2026-12-01`, which is midnight UTC, wherever the command runs), or
/// a [`parse_duration`] counted from `now` in the direction `toward`. A
/// date-time without an offset is refused: it would depend on where the
/// command ran.
pub fn parse_point(text: &str, now: jiff::Timestamp, toward: Toward) -> Result<i64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("an empty time: {POINT_FORMS}"));
    }
    let starts_as_date = text.len() >= 5
        && text.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && text.as_bytes()[4] == b'-';
    if !starts_as_date {
        let d = parse_duration(text).map_err(|e| format!("{e}; or {POINT_FORMS}"))?;
        let d = jiff::SignedDuration::try_from(d).map_err(|e| e.to_string())?;
        let at = match toward {
            Toward::Past => now.checked_sub(d),
            Toward::Future => now.checked_add(d),
        };
        return at
            .map(|t| t.as_second())
            .map_err(|_| format!("{text:?} from now is out of range"));
    }
    if let Ok(at) = text.parse::<jiff::Timestamp>() {
        return Ok(at.as_second());
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        if text.len() == 10 {
            return jiff::tz::Offset::UTC
                .to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
                .map(|t| t.as_second())
                .map_err(|_| format!("{text:?} is out of range"));
        }
        return Err(format!(
            "{text:?} has no time zone: add Z (UTC) or an offset like +01:00, \
             or give the date alone; {POINT_FORMS}"
        ));
    }
    let why = if text.len() == 10 {
        "no such date"
    } else {
        "no such date or time of day"
    };
    Err(format!("{text:?} is not a time ({why}): {POINT_FORMS}"))
}

/// `--since`: a point in time; a duration counts back from now (`1h`: an
/// hour ago).
pub fn parse_past(text: &str) -> Result<i64, String> {
    parse_point(text, jiff::Timestamp::now(), Toward::Past)
}

/// `--until` of a grant: a point in time; a duration counts forward from
/// now (`7d`: in seven days).
pub fn parse_future(text: &str) -> Result<i64, String> {
    parse_point(text, jiff::Timestamp::now(), Toward::Future)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The former name of [`parse_point`] for absolute times: the
    /// direction does not matter to them.
    fn parse_rfc3339(text: &str) -> Result<i64, String> {
        parse_point(text, jiff::Timestamp::UNIX_EPOCH, Toward::Future)
    }

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
            .contains("2026-12-04T10:00:00Z"));
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
        assert_eq!(parse_rfc3339("2026-01-31T20:00:00+0200"), Ok(1_769_882_400));
        // A leap second is read as the minute's last second.
        assert_eq!(parse_rfc3339("2016-12-31T23:59:60Z"), Ok(1_483_228_799));
        for bad in [
            "",
            "2026-12-01T00:00:00",
            "2026-12-01T00:00:00ZZ",
            "2026-12-01T00:00:00+99:00",
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
        let e = parse_rfc3339("2026-12-01T00:00:00").unwrap_err();
        assert!(e.contains("no time zone"), "{e}");
    }

    const NOW: i64 = 1_796_083_200; // 2026-12-01T00:00:00Z

    fn at(text: &str, toward: Toward) -> Result<i64, String> {
        let now = jiff::Timestamp::from_second(NOW).unwrap();
        parse_point(text, now, toward)
    }

    #[test]
    fn a_date_alone_is_midnight_utc() {
        assert_eq!(at("2026-12-01", Toward::Past), Ok(NOW));
        assert_eq!(at("2026-12-04", Toward::Future), Ok(NOW + 3 * 86_400));
        assert_eq!(at("2024-02-29", Toward::Past), Ok(1_709_164_800));
        assert_eq!(at("1970-01-01", Toward::Past), Ok(0));
    }

    #[test]
    fn a_duration_counts_from_now_in_the_flags_direction() {
        assert_eq!(at("1h", Toward::Past), Ok(NOW - 3_600));
        assert_eq!(at("7d", Toward::Future), Ok(NOW + 7 * 86_400));
        assert_eq!(at("1.5h", Toward::Past), Ok(NOW - 5_400));
        assert_eq!(at("1y", Toward::Future), Ok(NOW + 365 * 86_400));
        assert_eq!(at(" 30m ", Toward::Future), Ok(NOW + 1_800));
    }

    #[test]
    fn bad_times_are_refused_with_every_accepted_form() {
        for bad in [
            "",
            " ",
            "2026-02-30",
            "2026-13-01",
            "yesterday",
            "-1h",
            "1h ago",
            "1x",
            "999999y",
            "7",
            "2026-12-04T10:00:00",
            "0s",
            "1mo",
        ] {
            for toward in [Toward::Past, Toward::Future] {
                let e = at(bad, toward).unwrap_err();
                for example in ["2026-12-04T10:00:00Z", "2026-12-04", "midnight UTC", "7d"] {
                    assert!(e.contains(example), "{bad:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn durations() {
        let secs = |text: &str| parse_duration(text).map(|d| d.as_secs_f64());
        assert_eq!(secs("30m"), Ok(1_800.0));
        assert_eq!(secs("8h"), Ok(28_800.0));
        assert_eq!(secs("7d"), Ok(604_800.0));
        assert_eq!(secs("1w2d"), Ok(9.0 * 86_400.0));
        assert_eq!(secs("1y"), Ok(365.0 * 86_400.0));
        assert_eq!(secs("1.5h"), Ok(5_400.0));
        assert_eq!(secs("1d12h"), Ok(129_600.0));
        assert_eq!(secs("2 hours"), Ok(7_200.0));
        assert_eq!(secs("45s"), Ok(45.0));
        assert_eq!(secs("100y"), Ok(100.0 * 365.0 * 86_400.0));
        // Everything the policy file accepts reads the same here.
        for text in ["90d", "12h", "1w3d", "1m30s", "2w", "5s"] {
            assert_eq!(
                parse_duration(text),
                keyward_policy::parse_duration(text),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations_are_refused_with_examples() {
        let refused = |text: &str, why: &str| {
            let e = parse_duration(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
            e
        };
        for e in [
            refused("", "empty"),
            refused("   ", "empty"),
            refused("15", "no unit"),
            refused("1.5", "no unit"),
            refused("1x", "not a duration"),
            refused("m", "not a duration"),
            refused("h1", "not a duration"),
            refused("1h;rm", "not a duration"),
        ] {
            for example in ["30m", "8h", "7d", "1y", "1.5h"] {
                assert!(e.contains(example), "{e}");
            }
        }
        refused("-1h", "negative");
        refused("1h ago", "negative");
        refused("0s", "zero");
        refused("0h0m", "zero");
        refused("1mo", "months");
        refused("999999y", "longer than 100 years");
        refused("101y", "longer than 100 years");
        refused("200000w", "longer than 100 years");
        refused("99999999999999999999h", "");
        refused("1.5y", "not a duration");
    }
}
