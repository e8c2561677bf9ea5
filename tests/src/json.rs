//! Reading the `keyward --json` documents the tests look at: `serde_json`'s
//! `Value`, with accessors that panic naming the document when a member is
//! missing or of another type.

pub use serde_json::Value as Json;

/// Checked member access for test assertions.
pub trait JsonExt {
    /// Member `key`; panics when it is missing.
    fn at(&self, key: &str) -> &Json;
    /// A string member; panics when missing or not a string.
    fn str_at(&self, key: &str) -> &str;
    /// An integer member; panics when missing or not an integer.
    fn i64_at(&self, key: &str) -> i64;
    /// An array member; panics when missing or not an array.
    fn array_at(&self, key: &str) -> &[Json];
    /// The document itself as an array (`key list`, `grant list`, ...);
    /// panics when it is not one.
    fn items(&self) -> &[Json];
    /// A time member (RFC 3339 UTC, `2026-12-05T09:00:00Z`) as unix
    /// seconds; panics when missing or not such a time.
    fn time_at(&self, key: &str) -> i64;
}

impl JsonExt for Json {
    #[track_caller]
    fn at(&self, key: &str) -> &Json {
        self.get(key)
            .unwrap_or_else(|| panic!("no member {key:?} in {self}"))
    }

    #[track_caller]
    fn str_at(&self, key: &str) -> &str {
        self.at(key)
            .as_str()
            .unwrap_or_else(|| panic!("{key:?} is not a string in {self}"))
    }

    #[track_caller]
    fn i64_at(&self, key: &str) -> i64 {
        self.at(key)
            .as_i64()
            .unwrap_or_else(|| panic!("{key:?} is not an integer in {self}"))
    }

    #[track_caller]
    fn array_at(&self, key: &str) -> &[Json] {
        self.at(key)
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("{key:?} is not an array in {self}"))
    }

    #[track_caller]
    fn items(&self) -> &[Json] {
        self.as_array()
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("not an array: {self}"))
    }

    #[track_caller]
    fn time_at(&self, key: &str) -> i64 {
        let text = self.str_at(key);
        unix_seconds(text)
            .unwrap_or_else(|| panic!("{key:?} is not an RFC 3339 UTC time in {self}"))
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` as unix seconds (the only form `keyward --json`
/// writes); `None` for anything else.
pub fn unix_seconds(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}
