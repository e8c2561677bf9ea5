//! Entry points for the fuzz targets `agent_request` and `admin_request`
//! (the `fuzzing` feature, off by default): an agent over the in-memory
//! backend, fed requests through the same decoding and dispatch the
//! listeners use ([`crate::listener`]: [`read_message_within`] with the
//! application socket's bounds then [`Agent::handle`]; the admin socket's
//! [`answer_admin`](crate::listener::answer_admin)). Nothing here changes
//! how the agent behaves: it only builds one and calls it.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use cryptoki_sys as ck;
use keyward_protocol::admin::{AdminRequest, AdminResponse};
use keyward_protocol::frame::{self, read_message_within, Bounds, FrameError, HEADER_LEN};
use keyward_protocol::{Attribute, ObjectHandle, Request, Response, SessionHandle, SlotId};

use crate::agent::Agent;
use crate::audit::Auditor;
use crate::backend::mock::Mock;
use crate::backend::{Backend, BackendObject};
use crate::clients::Client;
use crate::config::{SecretRef, TokenConfig};
use crate::keys::ManagedKeys;
use crate::listener::identity::{ClientKey, Peer};
use crate::listener::FRAME_BOUNDS;
use crate::state::{StateDir, TokenState};
use crate::tokens::VirtualToken;

/// The user PIN of the fuzzed token.
pub const USER_PIN: &[u8] = b"1111";
/// Its SO PIN.
pub const SO_PIN: &[u8] = b"2222";
/// The `CKA_ID` of the other client's session object, which the fuzzed
/// client must never get a handle to.
const MARKER: &[u8] = b"keyward-fuzz-other-client";

/// The payloads of a fuzz input: each chunk is a little-endian `u16`
/// length and that many bytes (fewer at the end of the input).
pub fn chunks(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let (chunk, after) = rest.split_at(len.min(rest.len()));
        data = after;
        Some(chunk)
    })
}

/// Encodes `payloads` as the chunks [`chunks`] reads (for seeds).
pub fn join(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        let len = u16::try_from(p.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&p[..usize::from(len)]);
    }
    out
}

/// Decodes one payload as a socket delivers it: a frame header announcing
/// the payload, then the payload, read by the listener's reader within
/// `bounds`.
fn read_frame<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    bounds: Bounds,
    frame_buf: &mut Vec<u8>,
    rbuf: &mut Vec<u8>,
) -> Result<T, FrameError> {
    frame_buf.clear();
    frame_buf.extend_from_slice(&frame::MAGIC);
    frame_buf.extend_from_slice(&keyward_protocol::FRAME_VERSION.to_le_bytes());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    frame_buf.extend_from_slice(&len.to_le_bytes());
    debug_assert_eq!(frame_buf.len(), HEADER_LEN);
    frame_buf.extend_from_slice(payload);
    read_message_within(&mut &frame_buf[..], rbuf, bounds)
}

/// Checks that `msg` goes out as a frame, and that the frame reads back as
/// the same message. Panics otherwise (a finding).
fn check_answer<T>(msg: &T, wbuf: &mut Vec<u8>, rbuf: &mut Vec<u8>)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Err(e) = frame::encode(msg, wbuf) {
        panic!("an answer does not encode: {e}: {msg:?}");
    }
    match frame::read_message::<_, T>(&mut &wbuf[..], rbuf) {
        Ok(again) => assert_eq!(&again, msg, "an answer reads back as another"),
        Err(e) => panic!("an answer does not read back: {e}: {msg:?}"),
    }
}

/// A temporary directory, in memory where the host has one (every PIN
/// check and trail record is synced: on tmpfs that costs nothing).
fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("keyward-fuzz-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("keyward-fuzz-").tempdir()
    };
    match dir {
        Ok(d) => d,
        Err(e) => panic!("fuzz harness: no temporary directory: {e}"),
    }
}

/// An argon2id PHC string of `pin` with the smallest parameters: a PIN
/// check reads the parameters from the stored string, so the harness logs
/// in thousands of times a second without changing the check.
fn cheap_hash(pin: &[u8]) -> String {
    let params = Params::new(8, 1, 1, None).unwrap_or_default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = SaltString::encode_b64(b"keyward-fuzz-salt").unwrap_or_else(|e| panic!("{e}"));
    match argon2.hash_password(pin, &salt) {
        Ok(h) => h.to_string(),
        Err(e) => panic!("fuzz harness: hash: {e}"),
    }
}

/// One mock token `kw` in `dir`, with the state and inventory there.
fn build(
    dir: &Path,
    policy: Option<&str>,
) -> (Agent, Arc<Mock>, TokenState, Vec<(String, String)>) {
    let state = StateDir::open(dir).unwrap_or_else(|e| panic!("state dir: {e}"));
    let config = TokenConfig {
        label: "kw".into(),
        library: "/nonexistent.so".into(),
        backend_token_label: Some("b".into()),
        backend_serial: None,
        backend_pin: SecretRef::Env("UNUSED".into()),
        backend_so_pin: None,
        allow_init_token: true,
    };
    let ts = state.token("kw");
    let pins = vec![
        ("user-pin".to_owned(), cheap_hash(USER_PIN)),
        ("so-pin".to_owned(), cheap_hash(SO_PIN)),
    ];
    for (file, hash) in &pins {
        ts.write_file(file, hash.as_bytes())
            .unwrap_or_else(|e| panic!("pin: {e}"));
    }
    let mock = Arc::new(Mock::default());
    let token = VirtualToken::new(config, ts.clone(), Ok(mock.clone() as Arc<dyn Backend>));
    let inventory = keyward_inventory::SqliteInventory::open(dir.join("inventory.sqlite"))
        .unwrap_or_else(|e| panic!("inventory: {e}"));
    let inventory = Arc::new(inventory);
    let keys = ManagedKeys::open(inventory.clone()).unwrap_or_else(|e| panic!("keys: {e}"));
    let mut agent = Agent::new(vec![token], "/fuzz".into(), keys, Auditor::start(inventory));
    if let Some(text) = policy {
        let policy = keyward_policy::Policy::from_str(text, "fuzz")
            .unwrap_or_else(|e| panic!("policy: {e}"));
        agent = agent.with_policy(policy);
    }
    (agent, mock, ts, pins)
}

fn peer(pid: i32, uid: u32) -> Peer {
    Peer {
        key: ClientKey { pid, start_time: 1 },
        uid,
        gid: uid,
        exe: None,
        exe_id: None,
        foreign_mounts: false,
    }
}

/// The application request path over the mock backend, built once per
/// process. Each input is one client process (a new pid), connected after
/// its hello as the listener connects it, and disconnected at the end;
/// its frames are one connection's requests, so sessions, handles, login
/// and operations carry over from one to the next. Beside it, another
/// client of the same application holds a session and a session object.
#[derive(Debug)]
pub struct AppHarness {
    _dir: tempfile::TempDir,
    agent: Agent,
    mock: Arc<Mock>,
    state: TokenState,
    pins: Vec<(String, String)>,
    uid: u32,
    next_pid: Cell<i32>,
}

impl Default for AppHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl AppHarness {
    /// The agent under the built-in lab policy, which admits a peer
    /// running as the agent's own user.
    pub fn new() -> AppHarness {
        let dir = temp_dir();
        let (agent, mock, state, pins) = build(dir.path(), None);
        AppHarness {
            _dir: dir,
            agent,
            mock,
            state,
            pins,
            uid: nix::unistd::getuid().as_raw(),
            next_pid: Cell::new(1000),
        }
    }

    fn connect(&self) -> Arc<Client> {
        let pid = self.next_pid.get();
        self.next_pid.set(pid.wrapping_add(1).max(1000));
        let peer = peer(pid, self.uid);
        let application = self
            .agent
            .application_of(&peer)
            .unwrap_or_else(|| panic!("the fuzz peer is not admitted"));
        match self.agent.hello(keyward_protocol::APP_VERSIONS) {
            Response::Hello(_) => {}
            other => panic!("hello: {other:?}"),
        }
        self.agent.connect(peer, application)
    }

    /// The PINs and their counts as the harness set them (an input may
    /// have changed or locked them).
    fn reset_pins(&self) {
        for (file, hash) in &self.pins {
            let now = self.state.read_file(file).ok().flatten();
            if now.as_deref() != Some(hash.as_bytes()) {
                self.state
                    .write_file(file, hash.as_bytes())
                    .unwrap_or_else(|e| panic!("pin: {e}"));
            }
        }
        let _ = self.state.reset_all_failures();
    }

    /// The other client: a session and a session object with [`MARKER`].
    fn other(&self) -> (Arc<Client>, SessionHandle, ObjectHandle) {
        let b = self.connect();
        let s = match self.agent.handle(
            &b,
            Request::OpenSession {
                slot: SlotId(0),
                flags: ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION,
            },
        ) {
            Response::Handle(h) => SessionHandle(h),
            other => panic!("the other client's session: {other:?}"),
        };
        let template = vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA),
            Attribute::bool(ck::CKA_TOKEN, false),
            Attribute::bool(ck::CKA_PRIVATE, false),
            Attribute::bytes(ck::CKA_ID, MARKER.to_vec()),
        ];
        let o = match self.agent.handle(
            &b,
            Request::CreateObject {
                session: s,
                template,
            },
        ) {
            Response::Handle(h) => ObjectHandle(h),
            other => panic!("the other client's object: {other:?}"),
        };
        (b, s, o)
    }

    /// Runs one input: its chunks are the payloads of one connection's
    /// frames. An undecodable frame is passed over (the listener would
    /// close the connection: what follows it is what another connection
    /// of the same process could send).
    pub fn run(&self, data: &[u8]) {
        self.answers(data);
    }

    /// [`AppHarness::run`], returning the answers of the fuzzed client.
    pub fn answers(&self, data: &[u8]) -> Vec<Response> {
        self.reset_pins();
        let (b, b_session, b_object) = self.other();
        let b_backend = object_of(&b, b_object);
        let a = self.connect();
        let (mut frame_buf, mut rbuf, mut wbuf) = (Vec::new(), Vec::new(), Vec::new());
        let mut answers = Vec::new();
        for payload in chunks(data) {
            let Ok(req) = read_frame::<Request>(payload, FRAME_BOUNDS, &mut frame_buf, &mut rbuf)
            else {
                continue;
            };
            let resp = self.agent.handle(&a, req);
            check_answer(&resp, &mut wbuf, &mut rbuf);
            answers.push(resp);
        }
        // The fuzzed client holds no handle to the other's object ...
        let a_objects = a.lock().objects_on(0);
        assert!(
            a_objects.iter().all(|(_, o)| o.backend != b_backend),
            "a client got a handle to another client's session object"
        );
        // ... the other's session and object are as they were ...
        match self.agent.handle(
            &b,
            Request::GetAttributeValue {
                session: b_session,
                object: b_object,
                types: vec![ck::CKA_ID],
            },
        ) {
            Response::Attributes(r)
                if r == vec![keyward_protocol::AttrResult::Value(
                    keyward_protocol::AttrValue::Leaf(keyward_protocol::Value::Bytes(
                        MARKER.to_vec(),
                    )),
                )] => {}
            other => panic!("another client changed this client's object: {other:?}"),
        }
        // ... and the other finds none of the fuzzed client's session
        // objects.
        let mine: Vec<BackendObject> = a_objects
            .iter()
            .filter(|(_, o)| o.session.is_some())
            .map(|(_, o)| o.backend)
            .collect();
        if let Response::List(found) = self.agent.handle(
            &b,
            Request::FindObjects {
                session: b_session,
                template: Vec::new(),
            },
        ) {
            for h in found {
                let o = object_of(&b, ObjectHandle(h));
                assert!(
                    !mine.contains(&o),
                    "a client found another client's session object"
                );
            }
        }
        self.agent.disconnect(&a);
        self.agent.disconnect(&b);
        // Token objects the input made go: the next input starts from the
        // same backend.
        self.mock.forget_token_objects();
        answers
    }
}

fn object_of(c: &Client, h: ObjectHandle) -> BackendObject {
    match c
        .lock()
        .object(0, h, crate::error::Error::ObjectHandleInvalid)
    {
        Ok(o) => o.backend,
        Err(e) => panic!("client handle {h:?}: {e}"),
    }
}

/// The admin request path over the mock backend. Each input is a sequence
/// of admin request payloads from root on the admin socket, answered as
/// the admin listener answers them after the version hello. The agent
/// (its inventory and trail) lives for [`AdminHarness::REBUILD`] inputs;
/// every [`AdminHarness::CHECK_EVERY`] inputs, and before a rebuild, the
/// inventory is opened again and checked and the trail verified.
#[derive(Debug)]
pub struct AdminHarness {
    inner: std::cell::RefCell<Option<(tempfile::TempDir, Agent)>>,
    runs: Cell<u64>,
}

impl Default for AdminHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl AdminHarness {
    /// Inputs between two checks of the store and the trail.
    pub const CHECK_EVERY: u64 = 16;
    /// Inputs one agent serves before a fresh one is built.
    pub const REBUILD: u64 = 128;

    /// A harness; the agent is built at the first input.
    pub fn new() -> AdminHarness {
        AdminHarness {
            inner: std::cell::RefCell::new(None),
            runs: Cell::new(0),
        }
    }

    /// Runs one input: its chunks are admin request payloads.
    pub fn run(&self, data: &[u8]) {
        let n = self.runs.get();
        self.runs.set(n + 1);
        let mut inner = self.inner.borrow_mut();
        if n.is_multiple_of(Self::REBUILD) {
            if let Some((dir, agent)) = inner.take() {
                check_store(dir.path(), &agent);
            }
        }
        let (dir, agent) = inner.get_or_insert_with(|| {
            let dir = temp_dir();
            let (agent, _mock, _state, _pins) =
                build(dir.path(), Some(crate::agent::STRICT_SIGNING));
            (dir, agent)
        });
        let admin = peer(1, 0);
        let (mut frame_buf, mut rbuf, mut wbuf) = (Vec::new(), Vec::new(), Vec::new());
        for payload in chunks(data) {
            let Ok(req) =
                read_frame::<AdminRequest>(payload, FRAME_BOUNDS, &mut frame_buf, &mut rbuf)
            else {
                continue;
            };
            let resp: AdminResponse = crate::listener::answer_admin(agent, &admin, req, |_| {});
            check_answer(&resp, &mut wbuf, &mut rbuf);
        }
        if n.is_multiple_of(Self::CHECK_EVERY) {
            check_store(dir.path(), agent);
        }
    }
}

/// The inventory opens again and is consistent, and the trail verifies.
fn check_store(dir: &Path, agent: &Agent) {
    agent.audit.flush();
    let report = agent
        .audit
        .log()
        .verify(&|m, s| agent.audit_verify_signature(m, s))
        .unwrap_or_else(|e| panic!("the trail cannot be read: {e}"));
    assert!(
        report.first_bad.is_none(),
        "the trail does not verify: {:?}",
        report.first_bad
    );
    let again = keyward_inventory::SqliteInventory::open(dir.join("inventory.sqlite"))
        .unwrap_or_else(|e| panic!("the inventory does not open again: {e}"));
    let problems = again
        .check()
        .unwrap_or_else(|e| panic!("the inventory cannot be checked: {e}"));
    assert!(problems.is_empty(), "the inventory: {problems:?}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_protocol::message::OpInit;
    use keyward_protocol::{Mechanism, Op};

    fn input(reqs: &[Request]) -> Vec<u8> {
        let payloads: Vec<Vec<u8>> = reqs
            .iter()
            .map(|r| postcard::to_stdvec(r).unwrap())
            .collect();
        join(&payloads)
    }

    /// A session of one input: its handles carry over, the harness's PIN
    /// logs in, and an undecodable frame is passed over.
    #[test]
    fn an_input_is_one_client_session() {
        let h = AppHarness::new();
        let s = SessionHandle(1);
        let sign = OpInit {
            mechanism: Mechanism::plain(ck::CKM_ECDSA),
            key: Some(ObjectHandle(1)),
        };
        let mut data = input(&[
            Request::OpenSession {
                slot: SlotId(0),
                flags: ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION,
            },
            Request::Login {
                session: s,
                user_type: ck::CKU_USER,
                pin: Some(zeroize::Zeroizing::new(USER_PIN.to_vec())),
            },
            Request::GenerateKey {
                session: s,
                mechanism: Mechanism::plain(ck::CKM_AES_KEY_GEN),
                template: vec![Attribute::ulong(ck::CKA_VALUE_LEN, 32)],
            },
        ]);
        data.extend_from_slice(&[3, 0, 0xff, 0xff, 0xff]);
        data.extend(input(&[
            Request::OperationInit {
                session: s,
                op: Op::Sign,
                init: sign.clone(),
            },
            Request::Single {
                session: s,
                op: Op::Sign,
                init: Some(sign),
                data: b"abc".to_vec(),
            },
        ]));
        let answers = h.answers(&data);
        assert_eq!(
            answers,
            vec![
                Response::Handle(1),
                Response::Unit,
                Response::Handle(1),
                Response::Unit,
                Response::Data(b"abc".to_vec()),
            ]
        );
        // The next input is another process: its handles start again,
        // and the first client's session is gone with it.
        let answers = h.answers(&input(&[Request::GetSessionInfo { session: s }]));
        assert_eq!(answers, vec![Response::Err(ck::CKR_SESSION_HANDLE_INVALID)]);
    }

    /// The admin harness answers every request and its checks pass.
    #[test]
    fn an_admin_input_is_answered_and_checked() {
        let h = AdminHarness::new();
        let payload = postcard::to_stdvec(&AdminRequest::Audit(
            keyward_protocol::admin::AuditRequest::Verify,
        ))
        .unwrap();
        for _ in 0..AdminHarness::CHECK_EVERY + 1 {
            h.run(&join(std::slice::from_ref(&payload)));
        }
    }
}
