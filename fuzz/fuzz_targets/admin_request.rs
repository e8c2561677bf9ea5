//! The admin request handling as a whole over the in-memory backend: an
//! input is a sequence of admin request payloads (each chunk a
//! little-endian `u16` length and the payload) from root on the admin
//! socket, each read by the listener's frame reader and answered as the
//! admin listener answers an administrator after the version hello (the
//! roster, then key management, audit, report and dry runs). Invariants:
//! no panic; every request gets an answer that encodes and reads back; the
//! inventory opens again and passes its check, and the trail verifies
//! (every few inputs, and before the agent is built afresh).
#![no_main]

use keyward_agent::fuzzing::AdminHarness;
use libfuzzer_sys::fuzz_target;

thread_local! {
    /// The agent (rebuilt now and then by the harness).
    static HARNESS: AdminHarness = AdminHarness::new();
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|h| h.run(data));
});
