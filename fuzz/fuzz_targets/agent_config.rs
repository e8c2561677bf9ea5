//! The agent's configuration file (`Config::parse`: TOML, then every
//! check, `[postgres]`, `[remote]` and `[webhook]` included), as the agent
//! reads it at start. Invariant: no panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = keyward_agent::config::Config::parse(text, Path::new("keyward-agent.toml"));
    }
});
