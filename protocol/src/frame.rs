//! Framing: every message is `magic "KW" | version u16 LE | length u32 LE`
//! followed by `length` bytes of postcard-encoded payload. The version is
//! the framing's ([`FRAME_VERSION`]); the messages' versions are agreed in
//! each connection's hello ([`crate::version`]).
//!
//! The reader checks magic, version and the size limit before it allocates,
//! reads exactly `length` bytes (it cannot over-read into the next frame),
//! and grows its buffer only as bytes arrive ([`READ_STEP`] at a time), so
//! an announced length costs nothing until the peer sends it.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::version::FRAME_VERSION;

/// Two magic bytes that open every frame.
pub const MAGIC: [u8; 2] = *b"KW";
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload either side accepts (64 MiB): enough for any single
/// PKCS#11 call an application makes in practice, small enough that a
/// hostile length cannot exhaust memory.
pub const MAX_FRAME_LEN: usize = 64 << 20;
/// How much of a payload the reader allocates ahead of the bytes that
/// arrived: a peer that announces [`MAX_FRAME_LEN`] and sends nothing holds
/// at most this much of the other side's memory.
pub const READ_STEP: usize = 64 << 10;

/// What a reader accepts from its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The largest payload accepted (at most [`MAX_FRAME_LEN`]).
    pub max_len: usize,
    /// How long one frame may take from its first byte to its last; `None`:
    /// no bound beyond the transport's own read timeout.
    pub frame_time: Option<Duration>,
}

impl Bounds {
    /// Any frame up to [`MAX_FRAME_LEN`], no time bound of the reader's own.
    pub const ANY: Bounds = Bounds {
        max_len: MAX_FRAME_LEN,
        frame_time: None,
    };
}

/// Why a frame could not be read or written.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection cleanly before a header started.
    Closed,
    /// The transport failed (including a read timeout).
    Io(io::Error),
    /// The first two bytes were not `KW`.
    BadMagic([u8; 2]),
    /// The peer frames its messages another way (another framing version).
    Version(u16),
    /// The announced payload exceeds the reader's limit (at most
    /// [`MAX_FRAME_LEN`]).
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The transport's read timeout passed before a frame started: an idle
    /// peer, not a broken frame.
    Idle,
    /// A frame that started did not end within the reader's frame time.
    Stalled,
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
                    "peer uses framing version {v}, this side uses {FRAME_VERSION}"
                )
            }
            FrameError::TooLarge { len, limit } => {
                write!(f, "frame of {len} bytes exceeds the limit of {limit}")
            }
            FrameError::Idle => write!(f, "no frame within the read timeout"),
            FrameError::Stalled => write!(f, "a frame started and did not end in time"),
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
        return Err(FrameError::TooLarge {
            len,
            limit: MAX_FRAME_LEN,
        });
    }
    out[0..2].copy_from_slice(&MAGIC);
    out[2..4].copy_from_slice(&FRAME_VERSION.to_le_bytes());
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    *buf = out;
    Ok(())
}

/// Checks a frame header and returns the payload length it announces.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    parse_header_within(header, MAX_FRAME_LEN)
}

/// [`parse_header`] with a payload limit of `max_len` (capped at
/// [`MAX_FRAME_LEN`]).
pub fn parse_header_within(header: &[u8; HEADER_LEN], max_len: usize) -> Result<usize, FrameError> {
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([header[2], header[3]]);
    if version != FRAME_VERSION {
        return Err(FrameError::Version(version));
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let limit = max_len.min(MAX_FRAME_LEN);
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
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
    read_message_within(r, buf, Bounds::ANY)
}

/// [`read_message`] within `bounds`: a longer payload is refused before
/// anything is allocated, and a frame that started must end within
/// `bounds.frame_time`. A read timeout before the first byte is
/// [`FrameError::Idle`].
pub fn read_message_within<R: Read, T: DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
    bounds: Bounds,
) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    // The frame's clock starts at its first byte, and is read only when a
    // frame needs more than one read (rare: reads are buffered).
    let mut started: Option<Instant> = None;
    let check_time = |started: &mut Option<Instant>| -> Result<(), FrameError> {
        let Some(limit) = bounds.frame_time else {
            return Ok(());
        };
        match started {
            None => *started = Some(Instant::now()),
            Some(t) if t.elapsed() > limit => return Err(FrameError::Stalled),
            Some(_) => {}
        }
        Ok(())
    };
    // A clean EOF before the first header byte is a closed connection, not
    // a transport error: the agent uses it to notice a client that left.
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if got == 0 && is_timeout(&e) => return Err(FrameError::Idle),
            Err(e) => return Err(timed_out(e)),
        }
        if got < HEADER_LEN {
            check_time(&mut started)?;
        }
    }
    let len = parse_header_within(&header, bounds.max_len)?;
    buf.clear();
    // Grow as bytes arrive: an announced length alone allocates at most
    // READ_STEP.
    while buf.len() < len {
        let start = buf.len();
        let step = (len - start).min(READ_STEP);
        buf.resize(start + step, 0);
        let mut filled = start;
        while filled < start + step {
            match r.read(&mut buf[filled..start + step]) {
                Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(timed_out(e)),
            }
            if filled < len {
                check_time(&mut started)?;
            }
        }
    }
    decode(buf)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A read timeout inside a frame is a stalled frame.
fn timed_out(e: io::Error) -> FrameError {
    if is_timeout(&e) {
        FrameError::Stalled
    } else {
        FrameError::Io(e)
    }
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
            session: crate::SessionHandle(7),
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
            Err(FrameError::TooLarge { .. })
        ));
    }

    /// A reader that hands out `data`, then fails with `then`.
    struct Scripted {
        data: Vec<u8>,
        then: io::ErrorKind,
        pause: Duration,
    }

    impl Read for Scripted {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                std::thread::sleep(self.pause);
                return Err(self.then.into());
            }
            let n = out.len().min(self.data.len()).min(3);
            out[..n].copy_from_slice(&self.data[..n]);
            self.data.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn an_announced_length_allocates_only_as_bytes_arrive() {
        let mut header = MAGIC.to_vec();
        header.extend(FRAME_VERSION.to_le_bytes());
        header.extend((MAX_FRAME_LEN as u32).to_le_bytes());
        header.extend([0u8; 10]);
        let mut r = Scripted {
            data: header,
            then: io::ErrorKind::UnexpectedEof,
            pause: Duration::ZERO,
        };
        let mut buf = Vec::new();
        let e = read_message::<_, Request>(&mut r, &mut buf).unwrap_err();
        assert!(matches!(e, FrameError::Io(_)), "{e}");
        assert!(
            buf.capacity() <= 2 * READ_STEP,
            "{} bytes allocated",
            buf.capacity()
        );
    }

    #[test]
    fn bounds_refuse_a_longer_frame_and_tell_idle_from_stalled() {
        let mut frame = Vec::new();
        encode(
            &Request::GetSlotList {
                token_present: true,
            },
            &mut frame,
        )
        .unwrap();
        let small = Bounds {
            max_len: 1,
            frame_time: None,
        };
        let e =
            read_message_within::<_, Request>(&mut &frame[..], &mut Vec::new(), small).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { limit: 1, .. }), "{e}");
        // Nothing at all before the timeout: idle.
        let mut idle = Scripted {
            data: Vec::new(),
            then: io::ErrorKind::WouldBlock,
            pause: Duration::ZERO,
        };
        let e =
            read_message_within::<_, Request>(&mut idle, &mut Vec::new(), Bounds::ANY).unwrap_err();
        assert!(matches!(e, FrameError::Idle), "{e}");
        // Part of a frame, then the timeout: stalled.
        let mut part = Scripted {
            data: frame[..5].to_vec(),
            then: io::ErrorKind::WouldBlock,
            pause: Duration::ZERO,
        };
        let e =
            read_message_within::<_, Request>(&mut part, &mut Vec::new(), Bounds::ANY).unwrap_err();
        assert!(matches!(e, FrameError::Stalled), "{e}");
        // A frame that trickles in slower than its frame time: stalled too.
        let mut slow = Scripted {
            data: frame[..5].to_vec(),
            then: io::ErrorKind::Interrupted,
            pause: Duration::from_millis(5),
        };
        let bounds = Bounds {
            max_len: MAX_FRAME_LEN,
            frame_time: Some(Duration::from_millis(20)),
        };
        let e = read_message_within::<_, Request>(&mut slow, &mut Vec::new(), bounds).unwrap_err();
        assert!(matches!(e, FrameError::Stalled), "{e}");
        // Within bounds, the message.
        let got: Request = read_message_within(&mut &frame[..], &mut Vec::new(), bounds).unwrap();
        assert_eq!(
            got,
            Request::GetSlotList {
                token_present: true
            }
        );
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
        let mut payload = postcard::to_allocvec(&Request::Logout {
            session: crate::SessionHandle(1),
        })
        .unwrap();
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
