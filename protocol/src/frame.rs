//! Framing: every message is `magic "KW" | version u16 LE | length u32 LE`
//! followed by `length` bytes of postcard-encoded payload.
//!
//! The reader checks magic, version and the size limit before it allocates,
//! and reads exactly `length` bytes: it cannot over-read into the next frame.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::PROTOCOL_VERSION;

/// Two magic bytes that open every frame.
pub const MAGIC: [u8; 2] = *b"KW";
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload either side accepts (64 MiB): enough for any single
/// PKCS#11 call an application makes in practice, small enough that a
/// hostile length cannot exhaust memory.
pub const MAX_FRAME_LEN: usize = 64 << 20;

/// Why a frame could not be read or written.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection cleanly before a header started.
    Closed,
    /// The transport failed (including a read timeout).
    Io(io::Error),
    /// The first two bytes were not `KW`.
    BadMagic([u8; 2]),
    /// The peer speaks another protocol version.
    Version(u16),
    /// The announced payload exceeds [`MAX_FRAME_LEN`].
    TooLarge(usize),
    /// The payload did not decode as the expected message.
    Decode(postcard::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => write!(f, "connection closed by peer"),
            FrameError::Io(e) => write!(f, "transport error: {e}"),
            FrameError::BadMagic(m) => write!(f, "bad frame magic {m:02x?}"),
            FrameError::Version(v) => {
                write!(
                    f,
                    "peer speaks protocol version {v}, this side speaks {PROTOCOL_VERSION}"
                )
            }
            FrameError::TooLarge(n) => {
                write!(f, "frame of {n} bytes exceeds the limit of {MAX_FRAME_LEN}")
            }
            FrameError::Decode(e) => write!(f, "malformed message: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Encodes `msg` as one complete frame into `buf` (cleared first), so that
/// the caller can send it with a single `write_all`.
pub fn encode<T: Serialize>(msg: &T, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    buf.clear();
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    let taken = std::mem::take(buf);
    let mut out = postcard::to_extend(msg, taken).map_err(FrameError::Decode)?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        *buf = out;
        return Err(FrameError::TooLarge(len));
    }
    out[0..2].copy_from_slice(&MAGIC);
    out[2..4].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    *buf = out;
    Ok(())
}

/// Checks a frame header and returns the payload length it announces.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([header[2], header[3]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a payload; trailing bytes after the message are an error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(FrameError::Decode)?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(postcard::Error::DeserializeBadEncoding));
    }
    Ok(msg)
}

/// Writes one message as one frame. `buf` is scratch space reused between
/// calls so that the hot path does not allocate per message.
pub fn write_message<W: Write, T: Serialize>(
    w: &mut W,
    msg: &T,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    encode(msg, buf)?;
    w.write_all(buf)?;
    Ok(())
}

/// Reads one frame and decodes its message. `buf` is reused scratch space.
pub fn read_message<R: Read, T: DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    // A clean EOF before the first header byte is a closed connection, not
    // a transport error: the agent uses it to notice a client that left.
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = parse_header(&header)?;
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)?;
    decode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Request, Response};

    #[test]
    fn round_trip_through_a_byte_stream() {
        let mut buf = Vec::new();
        let mut wire = Vec::new();
        let req = Request::GenerateRandom {
            session: 7,
            len: 32,
        };
        write_message(&mut wire, &req, &mut buf).unwrap();
        write_message(&mut wire, &Response::Data(vec![1, 2, 3]), &mut buf).unwrap();
        let mut r = &wire[..];
        let got: Request = read_message(&mut r, &mut buf).unwrap();
        assert_eq!(got, req);
        let got: Response = read_message(&mut r, &mut buf).unwrap();
        assert_eq!(got, Response::Data(vec![1, 2, 3]));
        assert!(matches!(
            read_message::<_, Request>(&mut r, &mut buf),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn rejects_bad_headers_before_allocating() {
        assert!(matches!(
            parse_header(b"XX\x01\x00\0\0\0\0"),
            Err(FrameError::BadMagic(_))
        ));
        assert!(matches!(
            parse_header(b"KW\x09\x00\0\0\0\0"),
            Err(FrameError::Version(9))
        ));
        assert!(matches!(
            parse_header(b"KW\x02\x00\xff\xff\xff\xff"),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn truncated_payload_is_an_error_not_a_hang() {
        let mut buf = Vec::new();
        encode(
            &Request::GetSlotList {
                token_present: true,
            },
            &mut buf,
        )
        .unwrap();
        let short = &buf[..buf.len() - 1];
        let mut scratch = Vec::new();
        assert!(matches!(
            read_message::<_, Request>(&mut &short[..], &mut scratch),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut payload = postcard::to_allocvec(&Request::Logout { session: 1 }).unwrap();
        payload.push(0);
        assert!(decode::<Request>(&payload).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic sweep; the fuzz target covers this properly.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..512 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }
    }
}
