//! The agent's application request handling over the in-memory backend:
//! an input is one client process's connection, a sequence of frames
//! (each chunk a little-endian `u16` length and the payload), each read by
//! the listener's frame reader and dispatched by the agent's handler, so
//! that sessions, handles, login and operations carry over between the
//! requests of one input. Invariants: no panic; every answer encodes and
//! reads back; the client never gets a handle to another client's session
//! object, never changes it, and the other client never finds the fuzzed
//! client's session objects.
#![no_main]

use keyward_agent::fuzzing::AppHarness;
use libfuzzer_sys::fuzz_target;

thread_local! {
    /// The agent, built once per process (libFuzzer runs the target on one
    /// thread).
    static HARNESS: AppHarness = AppHarness::new();
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|h| h.run(data));
});
