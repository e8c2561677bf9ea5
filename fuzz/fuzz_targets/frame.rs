//! The application protocol as the agent and the module read it: the frame
//! reader (magic, version, length, payload) and the `Request` and
//! `Response` decoders. Invariants: no panic; a decoded message encodes,
//! and decodes again to the same message.
#![no_main]

use std::fmt::Debug;

use keyward_protocol::frame::{self, Bounds};
use keyward_protocol::{Request, Response};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Frames in one input the reader goes through, at most.
const FRAMES: usize = 8;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &T) {
    let mut buf = Vec::new();
    frame::encode(msg, &mut buf).expect("a decoded message encodes");
    let again: T =
        frame::read_message(&mut &buf[..], &mut Vec::new()).expect("an encoded message decodes");
    assert_eq!(
        &again, msg,
        "decode -> encode -> decode changed the message"
    );
}

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    // The payload alone.
    if let Ok(msg) = frame::decode::<T>(data) {
        round_trip(&msg);
    }
    // A stream of frames, as a socket delivers them.
    let mut stream = data;
    let mut buf = Vec::new();
    for _ in 0..FRAMES {
        match frame::read_message_within::<_, T>(&mut stream, &mut buf, Bounds::ANY) {
            Ok(msg) => round_trip(&msg),
            Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check::<Request>(data);
    check::<Response>(data);
});
