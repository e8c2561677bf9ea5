//! In-process round trips: the module's C entry points, called through its
//! function table, against a small fake agent on a temporary Unix socket.
//!
//! The module has one global state per process, so these tests take a
//! common lock and each initialises and finalises the module itself.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyward_protocol::frame;
use keyward_protocol::message::OpInit;
use keyward_protocol::{
    AttrResult, AttrValue, HelloReply, Mechanism, ObjectHandle, Request, Response, SessionHandle,
    SessionInfo, Value, VersionRange, VersionRefusal, APP_VERSIONS,
};

use super::*;

/// Calls a function of the 2.40 table.
macro_rules! p11 {
    ($f:ident ( $($a:expr),* $(,)? )) => {{
        // SAFETY: the tests pass NULL or pointers to live locals of the
        // right size, as the PKCS#11 caller contract asks.
        unsafe { (FUNCTION_LIST.$f.expect(stringify!($f)))($($a),*) }
    }};
}

type Handler = Arc<dyn Fn(&Request) -> Option<Response> + Send + Sync>;

/// A fake agent: answers `Hello` with its instance and everything else
/// with the handler; a handler answering `None` closes the connection (the
/// agent "dies" in the middle of the call).
struct FakeAgent {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    requests: Arc<Mutex<Vec<Request>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeAgent {
    fn start(path: &Path, instance: u64, handler: Handler) -> FakeAgent {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind fake agent socket");
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::<UnixStream>::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, conns, requests) = (stop.clone(), conns.clone(), requests.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { break };
                    conns.lock().unwrap().push(stream.try_clone().unwrap());
                    let (handler, requests) = (handler.clone(), requests.clone());
                    std::thread::spawn(move || {
                        let mut buf = Vec::new();
                        while let Ok(req) = frame::read_message::<_, Request>(&mut stream, &mut buf)
                        {
                            let resp = match &req {
                                Request::Hello { .. } => Some(Response::Hello(HelloReply {
                                    version: APP_VERSIONS.max,
                                    agent_version: "fake".into(),
                                    instance,
                                })),
                                other => {
                                    requests.lock().unwrap().push(other.clone());
                                    handler(other)
                                }
                            };
                            let Some(resp) = resp else {
                                let _ = stream.shutdown(std::net::Shutdown::Both);
                                return;
                            };
                            if frame::write_message(&mut stream, &resp, &mut buf).is_err() {
                                return;
                            }
                            let _ = stream.flush();
                        }
                    });
                }
            })
        };
        FakeAgent {
            path: path.to_owned(),
            stop,
            conns,
            requests,
            acceptor: Some(acceptor),
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Stops accepting and breaks every connection, like a dead agent.
    fn kill(self) {
        drop(self);
    }
}

/// A fake agent dies when it goes out of scope, so that a test that fails
/// midway leaves no acceptor thread or socket behind.
impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests, points the module at a fresh socket path and
/// initialises it.
fn setup(name: &str) -> (MutexGuard<'static, ()>, PathBuf) {
    static N: AtomicU64 = AtomicU64::new(0);
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::env::temp_dir().join(format!(
        "kw-module-{}-{}-{name}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&path);
    std::env::set_var("KEYWARD_SOCKET", &path);
    std::env::set_var("KEYWARD_TIMEOUT_MS", "500");
    let _ = p11!(C_Finalize(ptr::null_mut()));
    assert_eq!(p11!(C_Initialize(ptr::null_mut())), CKR_OK);
    (guard, path)
}

fn teardown() {
    assert_eq!(p11!(C_Finalize(ptr::null_mut())), CKR_OK);
}

fn answer(f: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static) -> Handler {
    Arc::new(f)
}

/// Answers the calls most tests need.
fn basic(req: &Request) -> Option<Response> {
    Some(match req {
        Request::GetSlotList { .. } => Response::List(vec![1]),
        Request::OpenSession { .. } => Response::Handle(5),
        Request::OperationInit { .. } => Response::Unit,
        Request::Single { data, .. } => Response::Data([b"sig:".as_slice(), data].concat()),
        Request::GetSessionInfo { .. } => Response::SessionInfo(SessionInfo {
            slot_id: 1,
            state: CKS_RO_PUBLIC_SESSION,
            flags: CKF_SERIAL_SESSION,
            device_error: 0,
        }),
        _ => Response::Err(CKR_FUNCTION_FAILED),
    })
}

fn open_session() -> CK_SESSION_HANDLE {
    let mut h: CK_SESSION_HANDLE = 0;
    assert_eq!(
        p11!(C_OpenSession(
            1,
            CKF_SERIAL_SESSION,
            ptr::null_mut(),
            None,
            &mut h
        )),
        CKR_OK
    );
    h
}

#[test]
fn every_call_of_the_table_has_its_entry_point() {
    for call in keyward_protocol::Call::ALL {
        if *call != keyward_protocol::Call::Other {
            assert!(
                SERVED.contains(&call.name()),
                "no entry point for {}",
                call.name()
            );
        }
    }
    // And the module's own names are the table's.
    assert!(SERVED.contains(&"C_InitPIN") && SERVED.contains(&"C_FindObjectsInit"));
}

#[test]
fn tables_and_interfaces() {
    let mut list: CK_FUNCTION_LIST_PTR = ptr::null_mut();
    // SAFETY: a live out pointer.
    assert_eq!(unsafe { C_GetFunctionList(&mut list) }, CKR_OK);
    assert_eq!(list.cast_const(), ptr::addr_of!(FUNCTION_LIST));
    // SAFETY: NULL is refused, never written.
    let rv = unsafe { C_GetFunctionList(ptr::null_mut()) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);

    let mut count: CK_ULONG = 0;
    // SAFETY: NULL list, live count.
    let rv = unsafe { C_GetInterfaceList(ptr::null_mut(), &mut count) };
    assert_eq!(rv, CKR_OK);
    assert_eq!(count, 2);

    let mut iface: *mut CK_INTERFACE = ptr::null_mut();
    // SAFETY: NULL name and version, live out pointer.
    let rv = unsafe { C_GetInterface(ptr::null_mut(), ptr::null_mut(), &mut iface, 0) };
    assert_eq!(rv, CKR_OK);
    // SAFETY: the module returned a pointer to its static interface.
    let iface = unsafe { *iface };
    assert_eq!(
        iface.pFunctionList.cast_const(),
        ptr::addr_of!(FUNCTION_LIST_3_0).cast()
    );
    let mut v240 = CK_VERSION {
        major: 2,
        minor: 40,
    };
    let mut found: *mut CK_INTERFACE = ptr::null_mut();
    let mut name = *b"PKCS 11\0";
    // SAFETY: live name, version and out pointer.
    let rv = unsafe { C_GetInterface(name.as_mut_ptr(), &mut v240, &mut found, 0) };
    assert_eq!(rv, CKR_OK);
    // SAFETY: the module returned a pointer to its static interface.
    let table = unsafe { (*found).pFunctionList };
    assert_eq!(table.cast_const(), ptr::addr_of!(FUNCTION_LIST).cast());
    let mut other = *b"Vendor\0";
    // SAFETY: live name and out pointer.
    let rv = unsafe { C_GetInterface(other.as_mut_ptr(), ptr::null_mut(), &mut found, 0) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);

    // Every slot of both tables is filled (the struct literal would not
    // compile otherwise); the 3.0-only ones answer NOT_SUPPORTED.
    let (_g, _path) = setup("tables");
    // SAFETY: no pointer argument is dereferenced.
    let rv = unsafe { (FUNCTION_LIST_3_0.C_SessionCancel.unwrap())(1, 0) };
    assert_eq!(rv, CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(p11!(C_GetFunctionStatus(1)), CKR_FUNCTION_NOT_PARALLEL);
    assert_eq!(p11!(C_CancelFunction(1)), CKR_FUNCTION_NOT_PARALLEL);
    assert_eq!(
        p11!(C_GetOperationState(1, ptr::null_mut(), ptr::null_mut())),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    teardown();
}

#[test]
fn initialize_and_finalize_rules() {
    let (_g, _path) = setup("init");
    assert_eq!(
        p11!(C_Initialize(ptr::null_mut())),
        CKR_CRYPTOKI_ALREADY_INITIALIZED
    );
    let mut info = CK_INFO::default();
    assert_eq!(p11!(C_GetInfo(&mut info)), CKR_OK);
    assert_eq!(
        (info.cryptokiVersion.major, info.cryptokiVersion.minor),
        (2, 40)
    );
    assert_eq!(&info.manufacturerID[..8], b"keyward ");
    let mut x = 0u8;
    assert_eq!(
        p11!(C_Finalize((&mut x as *mut u8).cast())),
        CKR_ARGUMENTS_BAD
    );
    teardown();
    assert_eq!(
        p11!(C_Finalize(ptr::null_mut())),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(p11!(C_GetInfo(&mut info)), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(p11!(C_CloseSession(1)), CKR_CRYPTOKI_NOT_INITIALIZED);
}

#[test]
fn agent_down() {
    let (_g, _path) = setup("down");
    let mut count: CK_ULONG = 0;
    assert_eq!(
        p11!(C_GetSlotList(CK_FALSE, ptr::null_mut(), &mut count)),
        CKR_OK
    );
    assert_eq!(count, 1);
    let mut slots = [99 as CK_SLOT_ID; 1];
    assert_eq!(
        p11!(C_GetSlotList(CK_FALSE, slots.as_mut_ptr(), &mut count)),
        CKR_OK
    );
    assert_eq!(slots[0], 0);
    assert_eq!(
        p11!(C_GetSlotList(CK_TRUE, ptr::null_mut(), &mut count)),
        CKR_OK
    );
    assert_eq!(count, 0);
    let mut info = CK_SLOT_INFO::default();
    assert_eq!(p11!(C_GetSlotInfo(0, &mut info)), CKR_OK);
    assert_eq!(info.flags & CKF_TOKEN_PRESENT, 0);
    assert_ne!(info.flags & CKF_REMOVABLE_DEVICE, 0);
    assert_eq!(p11!(C_GetSlotInfo(7, &mut info)), CKR_SLOT_ID_INVALID);
    let mut token = CK_TOKEN_INFO::default();
    assert_eq!(p11!(C_GetTokenInfo(0, &mut token)), CKR_TOKEN_NOT_PRESENT);
    let mut h: CK_SESSION_HANDLE = 0;
    assert_eq!(
        p11!(C_OpenSession(
            0,
            CKF_SERIAL_SESSION,
            ptr::null_mut(),
            None,
            &mut h
        )),
        CKR_TOKEN_NOT_PRESENT
    );
    assert_eq!(
        p11!(C_GetMechanismList(0, ptr::null_mut(), &mut count)),
        CKR_TOKEN_NOT_PRESENT
    );
    // Checked locally, before anything crosses the socket.
    assert_eq!(
        p11!(C_OpenSession(0, 0, ptr::null_mut(), None, &mut h)),
        CKR_SESSION_PARALLEL_NOT_SUPPORTED
    );
    assert_eq!(
        p11!(C_GetSlotList(CK_FALSE, ptr::null_mut(), ptr::null_mut())),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        p11!(C_Login(3, CKU_USER, ptr::null_mut(), 0)),
        CKR_SESSION_HANDLE_INVALID
    );
    teardown();
}

/// An agent that answers every connection's first frame with `answer` and
/// closes it; the hellos it was sent.
fn one_answer_agent(path: &Path, answer: Response) -> Arc<Mutex<Vec<Request>>> {
    let listener = UnixListener::bind(path).expect("bind fake agent socket");
    listener.set_nonblocking(true).expect("nonblocking");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let got = seen.clone();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            s.set_nonblocking(false).expect("blocking");
            let mut buf = Vec::new();
            if let Ok(req) = frame::read_message::<_, Request>(&mut s, &mut buf) {
                got.lock().unwrap().push(req);
                let _ = frame::write_message(&mut s, &answer, &mut buf);
            }
        }
    });
    seen
}

/// Asserts what an application sees when no connection gets past the
/// hello: the slot, without a token.
fn no_token_shown() {
    let mut count: CK_ULONG = 9;
    assert_eq!(
        p11!(C_GetSlotList(CK_TRUE, ptr::null_mut(), &mut count)),
        CKR_OK
    );
    assert_eq!(count, 0, "a token is shown");
    let mut info = CK_SLOT_INFO::default();
    assert_eq!(p11!(C_GetSlotInfo(0, &mut info)), CKR_OK);
    assert_eq!(info.flags & CKF_TOKEN_PRESENT, 0);
    let mut token = CK_TOKEN_INFO::default();
    assert_eq!(p11!(C_GetTokenInfo(0, &mut token)), CKR_TOKEN_NOT_PRESENT);
    let mut h: CK_SESSION_HANDLE = 0;
    assert_eq!(
        p11!(C_OpenSession(
            0,
            CKF_SERIAL_SESSION,
            ptr::null_mut(),
            None,
            &mut h
        )),
        CKR_TOKEN_NOT_PRESENT
    );
}

#[test]
fn an_agent_without_a_common_version_shows_no_token() {
    let (_g, path) = setup("versions");
    let newer = VersionRange {
        min: APP_VERSIONS.max + 1,
        max: APP_VERSIONS.max + 3,
    };
    let hellos = one_answer_agent(
        &path,
        Response::NoCommonVersion(VersionRefusal {
            versions: newer,
            agent_version: "9.0.0".into(),
        }),
    );
    no_token_shown();
    let hellos = hellos.lock().unwrap().clone();
    assert!(!hellos.is_empty(), "the module never said hello");
    for h in hellos {
        assert_eq!(
            h,
            Request::Hello {
                versions: APP_VERSIONS
            },
            "something beyond the hello was sent"
        );
    }
    teardown();
}

#[test]
fn an_agent_that_picks_a_version_not_offered_is_not_used() {
    let (_g, path) = setup("not-offered");
    let _hellos = one_answer_agent(
        &path,
        Response::Hello(HelloReply {
            version: APP_VERSIONS.max + 1,
            agent_version: "9.0.0".into(),
            instance: 1,
        }),
    );
    no_token_shown();
    teardown();
}

#[test]
fn agent_comes_back_without_reload() {
    let (_g, path) = setup("back");
    let mut slot: CK_SLOT_ID = 0;
    let mut count: CK_ULONG = 0;
    assert_eq!(
        p11!(C_GetSlotList(CK_FALSE, ptr::null_mut(), &mut count)),
        CKR_OK
    );
    assert_eq!(
        p11!(C_WaitForSlotEvent(
            CKF_DONT_BLOCK,
            &mut slot,
            ptr::null_mut()
        )),
        CKR_NO_EVENT
    );
    let agent = FakeAgent::start(&path, 1, answer(basic));
    assert_eq!(
        p11!(C_WaitForSlotEvent(
            CKF_DONT_BLOCK,
            &mut slot,
            ptr::null_mut()
        )),
        CKR_OK
    );
    assert_eq!(slot, 1);
    assert_eq!(
        p11!(C_WaitForSlotEvent(
            CKF_DONT_BLOCK,
            &mut slot,
            ptr::null_mut()
        )),
        CKR_NO_EVENT
    );
    let h = open_session();
    assert_eq!(h, 1);
    agent.kill();
    // The last slot list the module saw stays visible.
    let mut slots = [0 as CK_SLOT_ID; 2];
    count = 2;
    assert_eq!(
        p11!(C_GetSlotList(CK_FALSE, slots.as_mut_ptr(), &mut count)),
        CKR_OK
    );
    assert_eq!((count, slots[0]), (1, 1));
    teardown();
}

#[test]
fn sign_two_call_convention() {
    let (_g, path) = setup("sign");
    let agent = FakeAgent::start(&path, 7, answer(basic));
    let h = open_session();
    let mut mech = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut data = *b"hello";
    let mut len: CK_ULONG = 0;
    assert_eq!(
        p11!(C_Sign(h, data.as_mut_ptr(), 5, ptr::null_mut(), &mut len)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(p11!(C_SignInit(h, &mut mech, 42)), CKR_OK);
    assert_eq!(p11!(C_SignInit(h, &mut mech, 42)), CKR_OPERATION_ACTIVE);
    // Length query: one round trip, operation stays active.
    assert_eq!(
        p11!(C_Sign(h, data.as_mut_ptr(), 5, ptr::null_mut(), &mut len)),
        CKR_OK
    );
    assert_eq!(len, 9);
    let mut sig = [0u8; 16];
    len = 3;
    assert_eq!(
        p11!(C_Sign(h, data.as_mut_ptr(), 5, sig.as_mut_ptr(), &mut len)),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(len, 9);
    len = 16;
    assert_eq!(
        p11!(C_Sign(h, data.as_mut_ptr(), 5, sig.as_mut_ptr(), &mut len)),
        CKR_OK
    );
    assert_eq!(&sig[..9], b"sig:hello");
    // The cached output was used: one Single only; the operation ended.
    let singles = |a: &FakeAgent| {
        a.requests()
            .into_iter()
            .filter(|r| matches!(r, Request::Single { .. }))
            .collect::<Vec<_>>()
    };
    assert_eq!(singles(&agent).len(), 1);
    assert_eq!(
        p11!(C_Sign(h, data.as_mut_ptr(), 5, sig.as_mut_ptr(), &mut len)),
        CKR_OPERATION_NOT_INITIALIZED
    );

    // Other input after a length query: the agent is told to start again.
    assert_eq!(p11!(C_SignInit(h, &mut mech, 42)), CKR_OK);
    assert_eq!(
        p11!(C_Sign(h, data.as_mut_ptr(), 5, ptr::null_mut(), &mut len)),
        CKR_OK
    );
    let mut other = *b"bye";
    len = 16;
    assert_eq!(
        p11!(C_Sign(h, other.as_mut_ptr(), 3, sig.as_mut_ptr(), &mut len)),
        CKR_OK
    );
    assert_eq!(&sig[..len as usize], b"sig:bye");
    let last = singles(&agent).pop().unwrap();
    assert_eq!(
        last,
        Request::Single {
            session: SessionHandle(5),
            op: Op::Sign,
            init: Some(OpInit {
                mechanism: Mechanism::plain(CKM_ECDSA),
                key: Some(ObjectHandle(42))
            }),
            data: b"bye".to_vec(),
        }
    );
    // A bad mechanism parameter never reaches the agent.
    let mut junk: CK_ULONG = 1;
    mech.pParameter = (&mut junk as *mut CK_ULONG).cast();
    mech.ulParameterLen = 8;
    assert_eq!(
        p11!(C_SignInit(h, &mut mech, 42)),
        CKR_MECHANISM_PARAM_INVALID
    );
    teardown();
    agent.kill();
}

#[test]
fn agent_errors_end_single_part_operations() {
    let (_g, path) = setup("err");
    let agent = FakeAgent::start(
        &path,
        3,
        answer(|req| match req {
            Request::Single { .. } => Some(Response::Err(CKR_DATA_LEN_RANGE)),
            Request::Verify { .. } => Some(Response::Err(CKR_SIGNATURE_INVALID)),
            other => basic(other),
        }),
    );
    let h = open_session();
    let mut mech = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut data = *b"x";
    let mut out = [0u8; 32];
    let mut len: CK_ULONG = 32;
    assert_eq!(p11!(C_DigestInit(h, &mut mech)), CKR_OK);
    assert_eq!(
        p11!(C_Digest(
            h,
            data.as_mut_ptr(),
            1,
            out.as_mut_ptr(),
            &mut len
        )),
        CKR_DATA_LEN_RANGE
    );
    assert_eq!(p11!(C_DigestInit(h, &mut mech)), CKR_OK);
    mech.mechanism = CKM_ECDSA;
    assert_eq!(p11!(C_VerifyInit(h, &mut mech, 9)), CKR_OK);
    assert_eq!(
        p11!(C_Verify(h, data.as_mut_ptr(), 1, out.as_mut_ptr(), 4)),
        CKR_SIGNATURE_INVALID
    );
    assert_eq!(
        p11!(C_Verify(h, data.as_mut_ptr(), 1, out.as_mut_ptr(), 4)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    teardown();
    agent.kill();
}

#[test]
fn find_objects_and_attributes() {
    let (_g, path) = setup("find");
    let agent = FakeAgent::start(
        &path,
        3,
        answer(|req| match req {
            Request::FindObjects { .. } => Some(Response::List(vec![10, 11, 12])),
            Request::GetAttributeValue { types, .. } => Some(Response::Attributes(
                types
                    .iter()
                    .map(|&t| match t {
                        CKA_LABEL => {
                            AttrResult::Value(AttrValue::Leaf(Value::Bytes(b"k".to_vec())))
                        }
                        CKA_VALUE => AttrResult::Sensitive,
                        _ => AttrResult::Invalid,
                    })
                    .collect(),
            )),
            other => basic(other),
        }),
    );
    let h = open_session();
    let mut found = [0 as CK_OBJECT_HANDLE; 2];
    let mut n: CK_ULONG = 0;
    assert_eq!(
        p11!(C_FindObjects(h, found.as_mut_ptr(), 2, &mut n)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(p11!(C_FindObjectsInit(h, ptr::null_mut(), 0)), CKR_OK);
    assert_eq!(
        p11!(C_FindObjectsInit(h, ptr::null_mut(), 0)),
        CKR_OPERATION_ACTIVE
    );
    assert_eq!(
        p11!(C_FindObjects(h, found.as_mut_ptr(), 2, &mut n)),
        CKR_OK
    );
    assert_eq!((n, found), (2, [10, 11]));
    assert_eq!(
        p11!(C_FindObjects(h, found.as_mut_ptr(), 2, &mut n)),
        CKR_OK
    );
    assert_eq!((n, found[0]), (1, 12));
    assert_eq!(
        p11!(C_FindObjects(h, found.as_mut_ptr(), 2, &mut n)),
        CKR_OK
    );
    assert_eq!(n, 0);
    assert_eq!(p11!(C_FindObjectsFinal(h)), CKR_OK);
    assert_eq!(p11!(C_FindObjectsFinal(h)), CKR_OPERATION_NOT_INITIALIZED);

    let mut label = [0u8; 4];
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_mut_ptr().cast(),
            ulValueLen: 4,
        },
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
    ];
    assert_eq!(
        p11!(C_GetAttributeValue(h, 10, t.as_mut_ptr(), 2)),
        CKR_ATTRIBUTE_SENSITIVE
    );
    assert_eq!((t[0].ulValueLen, label[0]), (1, b'k'));
    assert_eq!(t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    teardown();
    agent.kill();
}

#[test]
fn agent_dies_mid_call() {
    let (_g, path) = setup("dies");
    let agent = FakeAgent::start(
        &path,
        3,
        answer(|req| match req {
            Request::GenerateRandom { .. } => None,
            other => basic(other),
        }),
    );
    let h = open_session();
    let mut buf = [0u8; 8];
    let start = Instant::now();
    assert_eq!(
        p11!(C_GenerateRandom(h, buf.as_mut_ptr(), 8)),
        CKR_DEVICE_REMOVED
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    // A hung agent is bounded by KEYWARD_TIMEOUT_MS (500 ms here).
    teardown();
    agent.kill();

    let (_g2, path) = (setup_again(), path);
    let hung = FakeAgent::start(
        &path,
        4,
        answer(|req| match req {
            Request::GenerateRandom { .. } => {
                std::thread::sleep(Duration::from_secs(3));
                None
            }
            other => basic(other),
        }),
    );
    let h = open_session();
    let start = Instant::now();
    assert_eq!(
        p11!(C_GenerateRandom(h, buf.as_mut_ptr(), 8)),
        CKR_DEVICE_REMOVED
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    teardown();
    hung.kill();
}

/// Re-initialises under the lock the caller already holds.
fn setup_again() {
    assert_eq!(p11!(C_Initialize(ptr::null_mut())), CKR_OK);
}

#[test]
fn agent_restart_invalidates_sessions() {
    let (_g, path) = setup("restart");
    let first = FakeAgent::start(&path, 100, answer(basic));
    let h = open_session();
    let mut info = CK_SESSION_INFO::default();
    assert_eq!(p11!(C_GetSessionInfo(h, &mut info)), CKR_OK);
    first.kill();
    assert_eq!(p11!(C_GetSessionInfo(h, &mut info)), CKR_DEVICE_REMOVED);
    let second = FakeAgent::start(&path, 200, answer(basic));
    // The old handle is refused without reaching the new agent.
    assert_eq!(
        p11!(C_GetSessionInfo(h, &mut info)),
        CKR_SESSION_HANDLE_INVALID
    );
    assert_eq!(
        p11!(C_GetSessionInfo(h, &mut info)),
        CKR_SESSION_HANDLE_INVALID
    );
    assert!(second
        .requests()
        .iter()
        .all(|r| !matches!(r, Request::GetSessionInfo { .. })));
    // New sessions work and get a new local handle.
    let h2 = open_session();
    assert_ne!(h2, h);
    assert_eq!(p11!(C_GetSessionInfo(h2, &mut info)), CKR_OK);
    assert_eq!(info.slotID, 1);
    let module = client::current().unwrap();
    assert_eq!(module.known_instance(), Some(200));
    assert_eq!(module.sessions.len(), 1);
    drop(module);
    teardown();
    second.kill();
}

#[test]
fn concurrent_calls_use_separate_connections() {
    let (_g, path) = setup("threads");
    let agent = FakeAgent::start(
        &path,
        5,
        answer(|req| match req {
            Request::GenerateRandom { len, .. } => {
                std::thread::sleep(Duration::from_millis(200));
                Some(Response::Data(vec![7; *len as usize]))
            }
            other => basic(other),
        }),
    );
    let h = open_session();
    let start = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4];
                (p11!(C_GenerateRandom(h, buf.as_mut_ptr(), 4)), buf)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), (CKR_OK, [7; 4]));
    }
    // Four 200 ms round trips in parallel, not one after another.
    assert!(
        start.elapsed() < Duration::from_millis(700),
        "took {:?}",
        start.elapsed()
    );
    teardown();
    agent.kill();
}

/// What the forked child checks; no panics in the child (they would run
/// the test harness's code in a copy of the process).
fn child_after_fork(parent_session: CK_SESSION_HANDLE) -> i32 {
    let mut info = CK_INFO::default();
    if p11!(C_GetInfo(&mut info)) != CKR_CRYPTOKI_NOT_INITIALIZED {
        return 1;
    }
    let mut sinfo = CK_SESSION_INFO::default();
    if p11!(C_GetSessionInfo(parent_session, &mut sinfo)) != CKR_CRYPTOKI_NOT_INITIALIZED {
        return 2;
    }
    if p11!(C_Finalize(ptr::null_mut())) != CKR_CRYPTOKI_NOT_INITIALIZED {
        return 3;
    }
    if p11!(C_Initialize(ptr::null_mut())) != CKR_OK {
        return 4;
    }
    // The parent's session is not the child's.
    if p11!(C_GetSessionInfo(parent_session, &mut sinfo)) != CKR_SESSION_HANDLE_INVALID {
        return 5;
    }
    let mut h: CK_SESSION_HANDLE = 0;
    if p11!(C_OpenSession(
        1,
        CKF_SERIAL_SESSION,
        ptr::null_mut(),
        None,
        &mut h
    )) != CKR_OK
    {
        return 6;
    }
    if p11!(C_GetSessionInfo(h, &mut sinfo)) != CKR_OK {
        return 7;
    }
    if p11!(C_Finalize(ptr::null_mut())) != CKR_OK {
        return 8;
    }
    0
}

#[test]
fn fork_child_must_initialize_and_parent_keeps_working() {
    let (_g, path) = setup("fork");
    let agent = FakeAgent::start(&path, 9, answer(basic));
    let h = open_session();
    let mut info = CK_SESSION_INFO::default();
    assert_eq!(p11!(C_GetSessionInfo(h, &mut info)), CKR_OK);
    // SAFETY: the child only runs `child_after_fork` and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child_after_fork(h);
        // SAFETY: leaves the child at once, without running the parent's
        // exit handlers or the test harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child did not exit normally");
    assert_eq!(libc::WEXITSTATUS(status), 0, "child check failed");
    // The child closed its copies of the sockets without shutting them
    // down: the parent's pooled connection still works.
    let connections = agent.conns.lock().unwrap().len();
    assert_eq!(p11!(C_GetSessionInfo(h, &mut info)), CKR_OK);
    assert_eq!(
        agent.conns.lock().unwrap().len(),
        connections,
        "parent had to reconnect"
    );
    teardown();
    agent.kill();
}

#[test]
fn repeated_operations_cost_one_round_trip() {
    let (_g, path) = setup("deferral");
    // Key 7 signs; key 8 is refused at init, as a key the backend lost is.
    let agent = FakeAgent::start(
        &path,
        4,
        answer(|req| match req {
            Request::OperationInit { init, .. } if init.key == Some(ObjectHandle(8)) => {
                Some(Response::Err(CKR_KEY_HANDLE_INVALID))
            }
            Request::Single {
                init: Some(init), ..
            }
            | Request::Final {
                init: Some(init), ..
            } if init.key == Some(ObjectHandle(8)) => Some(Response::Err(CKR_KEY_HANDLE_INVALID)),
            Request::Final { data, .. } => Some(Response::Data(vec![data.len() as u8; 4])),
            other => basic(other),
        }),
    );
    let h = open_session();
    let mut mech = CK_MECHANISM {
        mechanism: CKM_SHA256_HMAC,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut data = *b"message";
    let mut out = [0u8; 32];
    let mut sign = |key: CK_OBJECT_HANDLE| -> CK_RV {
        let rv = p11!(C_SignInit(h, &mut mech, key));
        if rv != CKR_OK {
            return rv;
        }
        let mut len = out.len() as CK_ULONG;
        p11!(C_Sign(h, data.as_mut_ptr(), 7, out.as_mut_ptr(), &mut len))
    };
    // The first init of a shape is its own round trip, so its errors are
    // its own; later inits of the same shape travel with the operation.
    assert_eq!(sign(7), CKR_OK);
    assert_eq!(sign(7), CKR_OK);
    assert_eq!(sign(7), CKR_OK);
    let reqs = agent.requests();
    let inits = reqs
        .iter()
        .filter(|r| matches!(r, Request::OperationInit { .. }))
        .count();
    let carried = reqs
        .iter()
        .filter(|r| matches!(r, Request::Single { init: Some(_), .. }))
        .count();
    assert_eq!((inits, carried), (1, 2), "{reqs:?}");
    assert_eq!(sign(8), CKR_KEY_HANDLE_INVALID, "refused at C_SignInit");

    // Sixteen updates and a final with a length query: one round trip.
    let before = agent.requests().len();
    assert_eq!(p11!(C_SignInit(h, &mut mech, 7)), CKR_OK);
    let mut chunk = [0x5au8; 4];
    for _ in 0..16 {
        assert_eq!(p11!(C_SignUpdate(h, chunk.as_mut_ptr(), 4)), CKR_OK);
    }
    let mut len: CK_ULONG = 0;
    assert_eq!(p11!(C_SignFinal(h, ptr::null_mut(), &mut len)), CKR_OK);
    assert_eq!(len, 4);
    assert_eq!(p11!(C_SignFinal(h, out.as_mut_ptr(), &mut len)), CKR_OK);
    assert_eq!(out[..4], [64u8; 4], "the agent saw all 64 held-back bytes");
    let sent = agent.requests().split_off(before);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(matches!(&sent[0], Request::Final { init: Some(_), data, .. } if data.len() == 64));
    teardown();
    agent.kill();
}

/// A buffer longer than one call can carry is refused before anything is
/// sent, and so is a request that cannot fit a frame (two buffers that
/// pass alone): `CKR_ARGUMENTS_BAD`, and the connection stays in the pool,
/// so the agent never sees the process's last connection close and its
/// sessions live on.
#[test]
fn a_request_larger_than_a_frame_is_refused_and_keeps_the_connection() {
    let (_g, path) = setup("oversize");
    let agent = FakeAgent::start(&path, 1, answer(basic));
    let h = open_session();
    let mut big = vec![0u8; keyward_protocol::MAX_FRAME_LEN];
    let len = big.len() as CK_ULONG;
    assert_eq!(
        p11!(C_SeedRandom(h, big.as_mut_ptr(), len)),
        CKR_ARGUMENTS_BAD
    );
    let half = (big.len() / 2 + 1) as CK_ULONG;
    let mut other = vec![0u8; half as usize];
    let mut mech = CK_MECHANISM {
        mechanism: CKM_SHA256_RSA_PKCS,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(p11!(C_VerifyInit(h, &mut mech, 9)), CKR_OK);
    assert_eq!(
        p11!(C_Verify(
            h,
            big.as_mut_ptr(),
            half,
            other.as_mut_ptr(),
            half
        )),
        CKR_ARGUMENTS_BAD
    );
    let mut info = CK_SESSION_INFO::default();
    assert_eq!(p11!(C_GetSessionInfo(h, &mut info)), CKR_OK);
    // Nothing of the refused calls reached the agent, and every call went
    // over the one connection.
    let reqs = agent.requests();
    assert!(
        !reqs
            .iter()
            .any(|r| matches!(r, Request::SeedRandom { .. } | Request::Verify { .. })),
        "{} requests",
        reqs.len()
    );
    assert_eq!(agent.conns.lock().unwrap().len(), 1);
    teardown();
}
