//! What the `frame` and `admin` targets check of every message they read:
//! a decoded message encodes, and decodes again to the same message, both
//! from the payload alone and from a stream of frames as a socket delivers
//! them.

use std::fmt::Debug;

use keyward_protocol::frame::{self, Bounds};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Frames in one input the reader goes through, at most.
const FRAMES: usize = 8;

/// Decode -> encode -> decode gives the same message.
pub fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &T) {
    let mut buf = Vec::new();
    frame::encode(msg, &mut buf).expect("a decoded message encodes");
    let again: T =
        frame::read_message(&mut &buf[..], &mut Vec::new()).expect("an encoded message decodes");
    assert_eq!(
        &again, msg,
        "decode -> encode -> decode changed the message"
    );
}

/// Reads `data` as one payload of `T`, then as a stream of frames of `T`;
/// every message read goes round trip and then to `each`.
pub fn stream<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8], each: impl Fn(&T)) {
    if let Ok(msg) = frame::decode::<T>(data) {
        round_trip(&msg);
        each(&msg);
    }
    let mut stream = data;
    let mut buf = Vec::new();
    for _ in 0..FRAMES {
        match frame::read_message_within::<_, T>(&mut stream, &mut buf, Bounds::ANY) {
            Ok(msg) => {
                round_trip(&msg);
                each(&msg);
            }
            Err(_) => break,
        }
    }
}
