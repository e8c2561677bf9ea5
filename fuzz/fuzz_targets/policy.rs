//! The policy file's parser and its checks (`Policy::from_str`), as the
//! agent and `keyward policy check` run them. Invariant: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = keyward_policy::Policy::from_str(text, "fuzz.toml");
    }
});
