//! Bad input on the agent's socket: a process that connects to
//! `$KEYWARD_SOCKET` itself and sends garbage (bad magic, a huge length, a
//! truncated frame, a valid header around an undecodable payload, another
//! framing version, a request before `Hello`) gets its connection closed,
//! and the agent goes on serving the module — in the same test, a cryptoki
//! session opened before the garbage still signs, and so does a new one.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::session::Session;
use keyward_protocol::frame::{encode, read_message, MAGIC};
use keyward_protocol::{Request, Response, APP_VERSIONS, FRAME_VERSION, MAX_FRAME_LEN};
use keyward_tests::p11::{ec_pair, Ctx, P256_PARAMS};
use keyward_tests::{keyward_test, Env};

/// How long the agent may take to close a connection it should refuse.
const CLOSE_BOUND: Duration = Duration::from_secs(5);

fn connect(tb: &Env) -> UnixStream {
    let s =
        UnixStream::connect(&tb.socket).unwrap_or_else(|e| panic!("connect to {}: {e}", tb.socket));
    s.set_read_timeout(Some(CLOSE_BOUND))
        .expect("set_read_timeout");
    s
}

fn header(magic: [u8; 2], version: u16, len: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend(version.to_le_bytes());
    h.extend(len.to_le_bytes());
    h
}

fn frame(msg: &Request) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(msg, &mut buf).expect("encode a request");
    buf
}

/// A connection that has said `Hello` and got the agent's answer.
fn hello(tb: &Env) -> UnixStream {
    let mut s = connect(tb);
    s.write_all(&frame(&Request::Hello {
        versions: APP_VERSIONS,
    }))
    .expect("send Hello");
    let mut buf = Vec::new();
    match read_message::<_, Response>(&mut s, &mut buf) {
        Ok(Response::Hello(reply)) => assert_eq!(reply.version, APP_VERSIONS.max),
        other => panic!("the agent answered Hello with {other:?}"),
    }
    s
}

/// Asserts that the agent closes `s` (EOF or reset) within [`CLOSE_BOUND`],
/// reading and discarding whatever it sends first.
#[track_caller]
fn assert_closed(mut s: UnixStream, what: &str) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "{what}: the agent kept the connection open for {:?}",
                    start.elapsed()
                )
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: reading from the agent: {e}"),
        }
        assert!(
            start.elapsed() < CLOSE_BOUND,
            "{what}: the agent keeps talking instead of closing"
        );
    }
}

/// Sends `bytes` (tolerating a peer that already closed) and asserts that
/// the agent closes the connection.
#[track_caller]
fn refused(mut s: UnixStream, bytes: &[u8], what: &str) {
    if let Err(e) = s.write_all(bytes) {
        assert!(
            matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "{what}: sending: {e}"
        );
    }
    assert_closed(s, what);
}

#[track_caller]
fn still_signs(
    s: &Session,
    key: cryptoki::object::ObjectHandle,
    public: cryptoki::object::ObjectHandle,
    what: &str,
) {
    let sig = s
        .sign(&Mechanism::Ecdsa, key, &[0x5a; 32])
        .unwrap_or_else(|e| panic!("{what}: C_Sign: {e}"));
    s.verify(&Mechanism::Ecdsa, public, &[0x5a; 32], &sig)
        .unwrap_or_else(|e| panic!("{what}: C_Verify: {e}"));
}

keyward_test!(fn garbage_on_the_socket_leaves_the_agent_serving(tb) {
    tb.require_agent("talking to the agent's socket");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (public, private) = ec_pair(&s, P256_PARAMS, "wire", false);
    still_signs(&s, private, public, "before the garbage");

    // Before any Hello.
    refused(connect(&tb), b"GET / HTTP/1.1\r\nHost: keyward\r\n\r\n", "bad magic");
    refused(connect(&tb), &[0u8; 64], "zero bytes");
    refused(connect(&tb), &header(MAGIC, FRAME_VERSION, u32::MAX), "a length of 4 GiB");
    refused(connect(&tb), &header(MAGIC, FRAME_VERSION, MAX_FRAME_LEN as u32 + 1), "a length just over the limit");
    refused(connect(&tb), &header(MAGIC, FRAME_VERSION.wrapping_add(7), 1), "another framing version");
    let mut undecodable = header(MAGIC, FRAME_VERSION, 16);
    undecodable.extend([0xff; 16]);
    refused(connect(&tb), &undecodable, "a valid header around an undecodable payload");
    refused(
        connect(&tb),
        &frame(&Request::GetSlotList { token_present: true }),
        "a request before Hello",
    );
    // A truncated frame, then the client closes its side.
    let mut truncated = header(MAGIC, FRAME_VERSION, 100);
    truncated.extend([1u8; 10]);
    {
        let mut c = connect(&tb);
        c.write_all(&truncated).expect("send a truncated frame");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown(write)");
        assert_closed(c, "a truncated frame before Hello");
    }
    // A truncated header.
    {
        let mut c = connect(&tb);
        c.write_all(&MAGIC).expect("send two bytes");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown(write)");
        assert_closed(c, "a truncated header");
    }
    still_signs(&s, private, public, "after garbage before Hello");

    // The same after a proper Hello.
    refused(hello(&tb), b"\x00\x01garbage-after-hello", "bad magic after Hello");
    refused(hello(&tb), &header(MAGIC, FRAME_VERSION, u32::MAX), "a length of 4 GiB after Hello");
    refused(hello(&tb), &undecodable, "an undecodable payload after Hello");
    let mut trailing = frame(&Request::GetSlotList { token_present: true });
    let len = u32::from_le_bytes([trailing[4], trailing[5], trailing[6], trailing[7]]) + 3;
    trailing[4..8].copy_from_slice(&len.to_le_bytes());
    trailing.extend([0xaa; 3]);
    refused(hello(&tb), &trailing, "a request with trailing bytes");
    {
        let mut c = hello(&tb);
        c.write_all(&truncated).expect("send a truncated frame");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown(write)");
        assert_closed(c, "a truncated frame after Hello");
    }
    // A client that stalls in the middle of a frame does not hold up
    // anybody else: the module signs while it hangs.
    let mut stalled = hello(&tb);
    stalled.write_all(&truncated).expect("send a truncated frame");
    still_signs(&s, private, public, "while a connection is stalled mid-frame");
    // A well-formed request on a raw connection still gets an answer.
    {
        let mut c = hello(&tb);
        c.write_all(&frame(&Request::GetSlotList { token_present: true })).expect("send GetSlotList");
        let mut buf = Vec::new();
        let resp: Response = read_message(&mut c, &mut buf).expect("an answer to GetSlotList");
        assert!(!matches!(resp, Response::Err(_)), "GetSlotList answered {resp:?}");
    }
    drop(stalled);

    // Many garbage connections at once.
    let conns: Vec<UnixStream> = (0..32).map(|_| connect(&tb)).collect();
    for c in conns {
        refused(c, &header(*b"XX", 0, 0), "one of many bad-magic connections");
    }
    still_signs(&s, private, public, "after all the garbage");
    // New sessions and new keys work too.
    let s2 = ctx.rw();
    still_signs(&s2, private, public, "in a new session");
    let (public2, private2) = ec_pair(&s2, P256_PARAMS, "wire-2", false);
    still_signs(&s2, private2, public2, "with a new key");
});
