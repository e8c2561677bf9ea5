//! The application protocol as the agent and the module read it: the frame
//! reader (magic, version, length, payload) and the `Request` and
//! `Response` decoders. Invariants: no panic; a decoded message encodes,
//! and decodes again to the same message.
#![no_main]

#[path = "common/frames.rs"]
mod frames;

use keyward_protocol::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    frames::stream::<Request>(data, |_| {});
    frames::stream::<Response>(data, |_| {});
});
