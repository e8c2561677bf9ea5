//! Load probe: one client process of several threads, each doing mixed
//! operations with managed keys through the module (loaded with
//! `cryptoki`, as applications load it) until its standard input closes or
//! `SECS` seconds have passed: ECDSA P-256 and RSA PKCS#1 signatures, AES
//! CBC-PAD encryption and decryption, HMAC-SHA256, SHA-256 digests,
//! random bytes, object searches and attribute reads.
//!
//! It rides through agent restarts, rotations and suspensions: after an
//! error that says the agent or the session is gone it opens a new session
//! and logs in again (`C_Initialize` again if the module says it is not
//! initialised); after any other error it looks its keys up again. Every
//! signature it is handed is verified: ECDSA with the public point the
//! token shows for that version (p256, outside the HSM), RSA and HMAC with
//! `C_Verify` on that version's objects found by `CKA_ID`; a signature
//! that could not be checked yet (the agent went away) is kept and checked
//! once served again. Every decryption and digest is compared with what
//! was encrypted or with sha2.
//!
//! Usage: `load_probe THREADS SECS EC_KEY RSA_KEY AES_KEY HMAC_KEY` (the
//! managed keys' names). Standard input: `count` prints `count: OK` (the
//! operations that succeeded so far); closing it stops the probe.
//!
//! Output: `ready` once every thread has done every kind of operation,
//! then at the end one line of JSON (`summary: {...}`): operations by
//! kind, errors by `CKR_*`, signatures made, verified, found bad and left
//! unverified, wrong results, outages and the operations served after the
//! last one, thread panics. Exit 0 whatever the agent did.
//!
//! Environment: `KEYWARD_MODULE`, `KEYWARD_TOKEN`, `KEYWARD_PIN`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// The kinds of operation, in the order each thread runs them.
const OPS: [&str; 8] = [
    "sign_ec",
    "sign_rsa",
    "aes",
    "hmac",
    "digest",
    "random",
    "find",
    "attribute",
];
const IV: [u8; 16] = [0x24; 16];
/// How long the end waits for signatures still to be checked.
const DRAIN: Duration = Duration::from_secs(15);

/// The managed keys' names, by kind.
#[derive(Debug, Clone)]
struct Names {
    ec: String,
    rsa: String,
    aes: String,
    hmac: String,
}

/// What the probe's threads share.
struct Shared {
    p11: Pkcs11,
    token: String,
    pin: String,
    names: Names,
    stop: AtomicBool,
    ok: AtomicU64,
    ready: AtomicUsize,
}

/// A signature to check, of the version whose `CKA_ID` is `id`.
#[derive(Debug, Clone)]
struct Pending {
    kind: SigKind,
    id: Vec<u8>,
    data: Vec<u8>,
    signature: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SigKind {
    Ec,
    Rsa,
    Hmac,
}

/// One thread's counts.
#[derive(Debug, Default)]
struct Counts {
    ops: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    signatures: u64,
    verified: u64,
    bad_signatures: u64,
    bad_results: u64,
    not_found: u64,
    outages: u64,
    served_after_outage: u64,
    unverified: u64,
    notes: Vec<String>,
}

impl Counts {
    fn note(&mut self, what: String) {
        if self.notes.len() < 8 {
            self.notes.push(what);
        }
    }
}

/// A key found by name in the current session.
#[derive(Debug, Clone)]
struct Found {
    key: ObjectHandle,
    id: Vec<u8>,
}

/// A logged-in session and the keys found in it.
struct Conn {
    session: Session,
    keys: HashMap<&'static str, Found>,
}

/// Why an operation did not count as a success.
enum Failed {
    /// A PKCS#11 error.
    Rv(RvError),
    /// Another error of cryptoki (counted by its text).
    Other(String),
    /// The key is not found by its name.
    NotFound,
}

impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        match e {
            Error::Pkcs11(rv, _) => Failed::Rv(rv),
            other => Failed::Other(other.to_string()),
        }
    }
}

/// `CKR_DEVICE_REMOVED` for `RvError::DeviceRemoved`, and so on.
fn ckr_name(rv: RvError) -> String {
    match rv {
        RvError::VendorDefined(v) | RvError::UnknownErrorCode(v) => {
            keyward_policy::rv_name(v).map_or_else(|| format!("CKR_0x{v:08X}"), str::to_owned)
        }
        other => {
            let debug = format!("{other:?}");
            let mut out = String::from("CKR");
            for c in debug.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
    }
}

/// Errors after which the session (or the module's link to the agent) is
/// gone and a new one is opened.
fn is_outage(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::TokenNotPresent
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::CryptokiNotInitialized
            | RvError::UserNotLoggedIn
            | RvError::SlotIdInvalid
    )
}

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) => v,
        Err(_) => {
            println!("setup FAIL: {name} is not set");
            std::process::exit(2);
        }
    }
}

fn open(shared: &Shared) -> Result<Conn, Failed> {
    let p11 = &shared.p11;
    let slots = p11.get_slots_with_token()?;
    let slot = slots
        .into_iter()
        .find(|s| {
            p11.get_token_info(*s)
                .map(|i| i.label().trim_end() == shared.token)
                .unwrap_or(false)
        })
        .ok_or(Failed::Rv(RvError::TokenNotPresent))?;
    let session = p11.open_rw_session(slot)?;
    match session.login(
        UserType::User,
        Some(&AuthPin::new(shared.pin.clone().into())),
    ) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Conn {
        session,
        keys: HashMap::new(),
    })
}

fn id_of(s: &Session, h: ObjectHandle) -> Result<Vec<u8>, Failed> {
    match s.get_attributes(h, &[AttributeType::Id])?.pop() {
        Some(Attribute::Id(id)) => Ok(id),
        _ => Err(Failed::Other("no CKA_ID".into())),
    }
}

/// The key named `name` of `class` (the version that protects now).
fn key(
    conn: &mut Conn,
    slot: &'static str,
    name: &str,
    class: ObjectClass,
) -> Result<Found, Failed> {
    if let Some(f) = conn.keys.get(slot) {
        return Ok(f.clone());
    }
    let found = conn.session.find_objects(&[
        Attribute::Class(class),
        Attribute::Label(name.as_bytes().to_vec()),
    ])?;
    let key = *found.first().ok_or(Failed::NotFound)?;
    let id = id_of(&conn.session, key)?;
    let f = Found { key, id };
    conn.keys.insert(slot, f.clone());
    Ok(f)
}

/// The object of `class` whose `CKA_ID` is `id`.
fn by_id(s: &Session, class: ObjectClass, id: &[u8]) -> Result<ObjectHandle, Failed> {
    s.find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])?
        .first()
        .copied()
        .ok_or(Failed::NotFound)
}

/// Checks `p`: `Ok(true)` verified, `Ok(false)` a bad signature.
fn check(
    conn: &Conn,
    points: &mut HashMap<Vec<u8>, VerifyingKey>,
    p: &Pending,
) -> Result<bool, Failed> {
    let s = &conn.session;
    match p.kind {
        SigKind::Ec => {
            let vk = match points.get(&p.id) {
                Some(vk) => *vk,
                None => {
                    let public = by_id(s, ObjectClass::PUBLIC_KEY, &p.id)?;
                    let point = match s.get_attributes(public, &[AttributeType::EcPoint])?.pop() {
                        Some(Attribute::EcPoint(point)) => point,
                        _ => return Err(Failed::Other("no CKA_EC_POINT".into())),
                    };
                    // The DER OCTET STRING around the uncompressed point.
                    let raw = point.get(point.len().saturating_sub(65)..).unwrap_or(&[]);
                    let vk = VerifyingKey::from_sec1_bytes(raw)
                        .map_err(|e| Failed::Other(format!("the public point: {e}")))?;
                    points.insert(p.id.clone(), vk);
                    vk
                }
            };
            let Ok(sig) = Signature::from_slice(&p.signature) else {
                return Ok(false);
            };
            Ok(vk.verify_prehash(&Sha256::digest(&p.data), &sig).is_ok())
        }
        SigKind::Rsa | SigKind::Hmac => {
            let (class, mech) = if p.kind == SigKind::Rsa {
                (ObjectClass::PUBLIC_KEY, Mechanism::Sha256RsaPkcs)
            } else {
                (ObjectClass::SECRET_KEY, Mechanism::Sha256Hmac)
            };
            let k = by_id(s, class, &p.id)?;
            match s.verify(&mech, k, &p.data, &p.signature) {
                Ok(()) => Ok(true),
                Err(Error::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _)) => {
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Checks what is pending; stops at the first error, which it returns.
fn drain(
    conn: &Conn,
    points: &mut HashMap<Vec<u8>, VerifyingKey>,
    pending: &mut Vec<Pending>,
    c: &mut Counts,
) -> Result<(), Failed> {
    while let Some(p) = pending.last() {
        let good = check(conn, points, p)?;
        if good {
            c.verified += 1;
        } else {
            c.bad_signatures += 1;
            c.note(format!(
                "bad {:?} signature, version {}",
                p.kind,
                hex::encode(&p.id)
            ));
        }
        pending.pop();
    }
    Ok(())
}

/// Counts a signature handed out and keeps it to be verified.
fn keep(
    pending: &mut Vec<Pending>,
    c: &mut Counts,
    kind: SigKind,
    k: Found,
    data: Vec<u8>,
    signature: Vec<u8>,
) {
    c.signatures += 1;
    pending.push(Pending {
        kind,
        id: k.id,
        data,
        signature,
    });
}

/// Runs operation `op` (an index into [`OPS`]) once.
fn run_op(
    shared: &Shared,
    conn: &mut Conn,
    op: usize,
    n: u64,
    pending: &mut Vec<Pending>,
    c: &mut Counts,
) -> Result<(), Failed> {
    let names = &shared.names;
    let data = format!("load {} {n}", std::process::id()).into_bytes();
    match OPS[op] {
        "sign_ec" => {
            let k = key(conn, "ec", &names.ec, ObjectClass::PRIVATE_KEY)?;
            // ECDSA signs the SHA-256 of the data, as the verifier expects.
            let sig = conn
                .session
                .sign(&Mechanism::Ecdsa, k.key, &Sha256::digest(&data))?;
            keep(pending, c, SigKind::Ec, k, data, sig);
        }
        "sign_rsa" => {
            let k = key(conn, "rsa", &names.rsa, ObjectClass::PRIVATE_KEY)?;
            let sig = conn.session.sign(&Mechanism::Sha256RsaPkcs, k.key, &data)?;
            keep(pending, c, SigKind::Rsa, k, data, sig);
        }
        "hmac" => {
            let k = key(conn, "hmac", &names.hmac, ObjectClass::SECRET_KEY)?;
            let sig = conn.session.sign(&Mechanism::Sha256Hmac, k.key, &data)?;
            keep(pending, c, SigKind::Hmac, k, data, sig);
        }
        "aes" => {
            let k = key(conn, "aes", &names.aes, ObjectClass::SECRET_KEY)?;
            let sealed = conn
                .session
                .encrypt(&Mechanism::AesCbcPad(IV), k.key, &data)?;
            let opened = conn
                .session
                .decrypt(&Mechanism::AesCbcPad(IV), k.key, &sealed)?;
            if opened != data || sealed == data {
                c.bad_results += 1;
                c.note("AES: decryption differs from the plaintext".into());
            }
        }
        "digest" => {
            let d = conn.session.digest(&Mechanism::Sha256, &data)?;
            if d[..] != Sha256::digest(&data)[..] {
                c.bad_results += 1;
                c.note("SHA-256 digest differs from sha2's".into());
            }
        }
        "random" => {
            let r = conn.session.generate_random_vec(32)?;
            if r.len() != 32 {
                c.bad_results += 1;
                c.note(format!("C_GenerateRandom gave {} bytes", r.len()));
            }
        }
        "find" => {
            let found = conn.session.find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(names.ec.as_bytes().to_vec()),
            ])?;
            if found.is_empty() {
                return Err(Failed::NotFound);
            }
        }
        _ => {
            let k = key(conn, "ec", &names.ec, ObjectClass::PRIVATE_KEY)?;
            let attrs = conn
                .session
                .get_attributes(k.key, &[AttributeType::Label, AttributeType::Id])?;
            let label_ok = attrs
                .iter()
                .any(|a| matches!(a, Attribute::Label(l) if l == names.ec.as_bytes()));
            if !label_ok {
                c.bad_results += 1;
                c.note(format!("the key's attributes: {attrs:?}"));
            }
        }
    }
    Ok(())
}

/// Counts a failure and does what it calls for: a new session after an
/// outage, the keys looked up again after anything else.
fn failed(shared: &Shared, f: Failed, conn: &mut Option<Conn>, c: &mut Counts) {
    match f {
        Failed::Rv(rv) => {
            *c.errors.entry(ckr_name(rv)).or_default() += 1;
            if is_outage(rv) {
                c.outages += 1;
                c.served_after_outage = 0;
                *conn = None;
                if rv == RvError::CryptokiNotInitialized {
                    let _ = shared
                        .p11
                        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
                }
                std::thread::sleep(Duration::from_millis(10));
            } else {
                // A rotation, a suspension, a handle of another run: look
                // the keys up again (after a breath, not in a tight loop).
                if let Some(conn) = conn {
                    conn.keys.clear();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Failed::Other(text) => {
            *c.errors.entry(format!("other: {text}")).or_default() += 1;
            if let Some(conn) = conn {
                conn.keys.clear();
            }
        }
        Failed::NotFound => {
            c.not_found += 1;
            if let Some(conn) = conn {
                conn.keys.clear();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn worker(shared: &Shared, thread: usize) -> Counts {
    let mut c = Counts::default();
    let mut conn: Option<Conn> = None;
    let mut points = HashMap::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut done_kinds = [false; OPS.len()];
    let mut ready = false;
    let mut n: u64 = (thread as u64) << 40;
    while !shared.stop.load(Ordering::SeqCst) {
        let cur = match &mut conn {
            Some(cur) => cur,
            None => match open(shared) {
                Ok(fresh) => conn.insert(fresh),
                Err(f) => {
                    failed(shared, f, &mut conn, &mut c);
                    continue;
                }
            },
        };
        if let Err(f) = drain(cur, &mut points, &mut pending, &mut c) {
            failed(shared, f, &mut conn, &mut c);
            continue;
        }
        let op = (n % OPS.len() as u64) as usize;
        n += 1;
        let result = run_op(shared, cur, op, n, &mut pending, &mut c)
            .and_then(|()| drain(cur, &mut points, &mut pending, &mut c));
        match result {
            Ok(()) => {
                *c.ops.entry(OPS[op]).or_default() += 1;
                c.served_after_outage += 1;
                shared.ok.fetch_add(1, Ordering::Relaxed);
                done_kinds[op] = true;
                if !ready && done_kinds.iter().all(|d| *d) {
                    ready = true;
                    shared.ready.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(f) => failed(shared, f, &mut conn, &mut c),
        }
    }
    // What is still to be checked is checked now, served again if need be.
    let deadline = Instant::now() + DRAIN;
    while !pending.is_empty() && Instant::now() < deadline {
        let cur = match &mut conn {
            Some(cur) => cur,
            None => match open(shared) {
                Ok(fresh) => conn.insert(fresh),
                Err(f) => {
                    failed(shared, f, &mut conn, &mut c);
                    continue;
                }
            },
        };
        if let Err(f) = drain(cur, &mut points, &mut pending, &mut c) {
            failed(shared, f, &mut conn, &mut c);
        }
    }
    c.unverified = pending.len() as u64;
    for p in pending.iter().take(4) {
        c.note(format!(
            "unverified {:?} signature, version {}",
            p.kind,
            hex::encode(&p.id)
        ));
    }
    c
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [threads, secs, ec, rsa, aes, hmac] = &args[..] else {
        println!("setup FAIL: usage: load_probe THREADS SECS EC_KEY RSA_KEY AES_KEY HMAC_KEY");
        std::process::exit(2);
    };
    let (Ok(threads), Ok(secs)) = (threads.parse::<usize>(), secs.parse::<u64>()) else {
        println!("setup FAIL: THREADS and SECS are numbers");
        std::process::exit(2);
    };
    let p11 = match Pkcs11::new(env("KEYWARD_MODULE")) {
        Ok(p11) => p11,
        Err(e) => {
            println!("setup FAIL: load the module: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        println!("setup FAIL: C_Initialize: {e}");
        std::process::exit(2);
    }
    let shared = Arc::new(Shared {
        p11,
        token: env("KEYWARD_TOKEN"),
        pin: env("KEYWARD_PIN"),
        names: Names {
            ec: ec.clone(),
            rsa: rsa.clone(),
            aes: aes.clone(),
            hmac: hmac.clone(),
        },
        stop: AtomicBool::new(false),
        ok: AtomicU64::new(0),
        ready: AtomicUsize::new(0),
    });
    let out = Arc::new(Mutex::new(()));
    let say = {
        let out = out.clone();
        move |line: String| {
            let _held = out.lock().unwrap_or_else(|p| p.into_inner());
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }
    };
    {
        let shared = shared.clone();
        let say = say.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line.trim() == "count" {
                    say(format!("count: {}", shared.ok.load(Ordering::SeqCst)));
                }
            }
            shared.stop.store(true, Ordering::SeqCst);
        });
    }
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let shared = shared.clone();
            std::thread::spawn(move || worker(&shared, t))
        })
        .collect();
    let bound = Duration::from_secs(secs);
    let mut said_ready = false;
    while !shared.stop.load(Ordering::SeqCst) {
        if started.elapsed() >= bound {
            shared.stop.store(true, Ordering::SeqCst);
            break;
        }
        if !said_ready && shared.ready.load(Ordering::SeqCst) == threads {
            said_ready = true;
            say("ready".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut all = Counts::default();
    let mut panics = 0u64;
    let mut served_min = u64::MAX;
    for h in handles {
        match h.join() {
            Ok(c) => {
                for (k, v) in c.ops {
                    *all.ops.entry(k).or_default() += v;
                }
                for (k, v) in c.errors {
                    *all.errors.entry(k).or_default() += v;
                }
                all.signatures += c.signatures;
                all.verified += c.verified;
                all.bad_signatures += c.bad_signatures;
                all.bad_results += c.bad_results;
                all.not_found += c.not_found;
                all.outages += c.outages;
                all.unverified += c.unverified;
                served_min = served_min.min(c.served_after_outage);
                for n in c.notes {
                    all.note(n);
                }
            }
            Err(_) => panics += 1,
        }
    }
    let summary = serde_json::json!({
        "pid": std::process::id(),
        "threads": threads,
        "seconds": started.elapsed().as_secs_f64(),
        "ok": all.ops.values().sum::<u64>(),
        "ops": all.ops,
        "errors": all.errors,
        "signatures": all.signatures,
        "verified": all.verified,
        "bad_signatures": all.bad_signatures,
        "unverified": all.unverified,
        "bad_results": all.bad_results,
        "not_found": all.not_found,
        "outages": all.outages,
        "served_after_last_outage": if served_min == u64::MAX { 0 } else { served_min },
        "panics": panics,
        "notes": all.notes,
    });
    say(format!("summary: {summary}"));
}
