//! Durations ("90d", "12h", "1w2d") and TOML datetimes as [`SystemTime`].

use std::time::{Duration, SystemTime};

/// The longest period a policy may name: 100 years. Longer is a typo, and
/// dates computed from it stay representable.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses a duration: one or more `<number><unit>` groups, units `s`, `m`,
/// `h`, `d` (24 h), `w` (7 d); e.g. `"90d"`, `"12h"`, `"1w3d"`. Zero and
/// anything over [`MAX_DURATION`] are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a number and a unit s, m, h, d or w, like \"90d\" or \"12h\"";
    if text.is_empty() {
        return Err(format!("empty duration: {EXPECTED}"));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("\"{text}\" is not a duration: {EXPECTED}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("\"{text}\" is too long a duration"))?;
        let unit = match rest[digits..].chars().next() {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3_600,
            Some('d') => 86_400,
            Some('w') => 7 * 86_400,
            Some(_) | None => {
                return Err(format!("\"{text}\" is not a duration: {EXPECTED}"));
            }
        };
        total = number
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("\"{text}\" is too long a duration"))?;
        rest = &rest[digits + 1..];
    }
    let duration = Duration::from_secs(total);
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
    let mut rest = d.as_secs();
    if rest == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// A TOML offset datetime (`2026-01-31T18:00:00Z`, `...+02:00`) as a
/// [`SystemTime`]. Local datetimes and bare dates are refused: an expiry
/// must not depend on the agent's time zone.
pub fn datetime_to_system_time(dt: &toml::value::Datetime) -> Result<SystemTime, String> {
    use toml::value::Offset;
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(format!(
            "{dt} lacks a date, a time or a time zone: write it like 2026-01-31T18:00:00Z"
        ));
    };
    let offset_minutes: i64 = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i64::from(minutes),
    };
    let days = days_from_civil(i64::from(date.year), date.month.into(), date.day.into());
    let seconds = days * 86_400
        + i64::from(time.hour) * 3_600
        + i64::from(time.minute) * 60
        + i64::from(time.second)
        - offset_minutes * 60;
    let seconds = u64::try_from(seconds).map_err(|_| format!("{dt} is before 1970"))?;
    Ok(SystemTime::UNIX_EPOCH
        + Duration::from_secs(seconds)
        + Duration::from_nanos(time.nanosecond.into()))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
}
