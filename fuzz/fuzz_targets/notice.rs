//! The fleet's change notices as an agent reads them from PostgreSQL
//! (`Notice::parse`). Invariants: no panic; a notice that parses gives
//! back a payload that parses to the same notice.
#![no_main]

use keyward_inventory::postgres::Notice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(n) = Notice::parse(text) {
            let payload = n.payload();
            assert_eq!(Notice::parse(&payload), Some(n), "payload {payload:?}");
        }
    }
});
