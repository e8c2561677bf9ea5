//! Reading the `keyward --json` documents the tests look at: `serde_json`'s
//! `Value`, with accessors that panic naming the document when a member is
//! missing or of another type; [`validate`] checks a document against its
//! committed schema in `docs/json/`, and [`assert_contract`] the rules every
//! document keeps (no variant wrapper, RFC 3339 times, names for
//! mechanisms and return values).

use std::path::{Path, PathBuf};

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

/// The folder of the committed schemas.
pub fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/json")
}

/// The JSON file at `path`; panics naming it when it cannot be read.
pub fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Resolves `defs.schema.json` (and any other sibling a schema refers to)
/// from the schema folder: no network.
struct Siblings;

impl jsonschema::Retrieve for Siblings {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Json, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri
            .path()
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let path = schema_dir().join(&name);
        if name.is_empty() || !path.is_file() {
            return Err(format!("no schema {uri} in docs/json").into());
        }
        Ok(read_json(&path))
    }
}

/// The validator of `docs/json/SCHEMA` (draft 2020-12, formats checked).
pub fn validator(schema: &str) -> jsonschema::Validator {
    let doc = read_json(&schema_dir().join(schema));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .with_retriever(Siblings)
        .build(&doc)
        .unwrap_or_else(|e| panic!("{schema} does not compile: {e}"))
}

/// Panics naming every error when `doc` does not validate against
/// `docs/json/SCHEMA`.
#[track_caller]
pub fn validate(schema: &str, doc: &Json) {
    let errors: Vec<String> = validator(schema)
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{schema}: {errors:#?}\nin {doc:#}");
}

/// The rules every `keyward --json` document keeps, whatever the command:
/// it is not wrapped in a variant's name (`{"Keys": ...}`), and wherever
/// they appear, times are RFC 3339 UTC strings and `mechanism` / `result`
/// are names (or hex), never numbers.
#[track_caller]
pub fn assert_contract(doc: &Json) {
    if let Some(map) = doc.as_object() {
        if let (1, Some(name)) = (map.len(), map.keys().next()) {
            assert!(
                !name.starts_with(|c: char| c.is_ascii_uppercase()),
                "a document wrapped in {name:?}: {doc}"
            );
        }
    }
    walk(doc, doc);
}

fn walk(v: &Json, doc: &Json) {
    match v {
        Json::Object(map) => {
            for (name, child) in map {
                let time = name == "at"
                    || name.ends_with("_at")
                    || name.ends_with("_until")
                    || matches!(name.as_str(), "next_rotation" | "not_before" | "not_after")
                    || name.starts_with("scheduler_");
                if time && !child.is_null() {
                    let ok = child.as_str().and_then(unix_seconds).is_some();
                    assert!(ok, "{name} is not an RFC 3339 UTC time: {child} in {doc}");
                }
                if matches!(name.as_str(), "mechanism" | "result") && !child.is_null() {
                    assert!(child.is_string(), "{name} is not a name: {child} in {doc}");
                }
                walk(child, doc);
            }
        }
        Json::Array(items) => items.iter().for_each(|i| walk(i, doc)),
        _ => {}
    }
}
