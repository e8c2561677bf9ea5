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
}
