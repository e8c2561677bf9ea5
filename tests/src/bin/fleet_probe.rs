//! Probe for the fleet tests: one application process on one agent of a
//! fleet, signing with the managed key labelled argv 1. It reads
//! instructions on standard input, one per line, and answers each with a
//! `name: value` line:
//!
//! - `sign`: one signature; `sign: ok` or `sign: CKR_...`.
//! - `watch MS`: signs in a loop until a signature fails or MS
//!   milliseconds pass; `failed: MICROS CKR_...` (the unix time in
//!   microseconds of the first failure) or `failed: none`.
//! - `bench MS`: signs as fast as it can for MS milliseconds;
//!   `bench: SIGNED ERRORS`.
//!
//! It prints `ready: 1` once logged in with the key found. Environment:
//! `KEYWARD_MODULE`, `KEYWARD_SOCKET` (the agent), `KEYWARD_TOKEN`,
//! `KEYWARD_PIN`.

use std::io::BufRead;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::Error;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use keyward_tests::probe::side::{env, fail, report};

const DIGEST: [u8; 32] = [0x3c; 32];

fn rv(e: &Error) -> String {
    match e {
        Error::Pkcs11(rv, _) => format!("{rv:?}"),
        other => other.to_string(),
    }
}

fn sign(s: &Session, key: ObjectHandle) -> Result<(), String> {
    s.sign(&Mechanism::Ecdsa, key, &DIGEST)
        .map(drop)
        .map_err(|e| rv(&e))
}

fn main() {
    let label = std::env::args()
        .nth(1)
        .unwrap_or_else(|| fail("usage: fleet_probe KEY"));
    let p11 = Pkcs11::new(env("KEYWARD_MODULE")).unwrap_or_else(|e| fail(&format!("load: {e}")));
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap_or_else(|e| fail(&format!("C_Initialize: {e}")));
    let token = env("KEYWARD_TOKEN");
    let slot = p11
        .get_slots_with_token()
        .unwrap_or_else(|e| fail(&format!("C_GetSlotList: {e}")))
        .into_iter()
        .find(|s| {
            p11.get_token_info(*s)
                .is_ok_and(|i| i.label().trim_end() == token)
        })
        .unwrap_or_else(|| fail(&format!("no token {token:?}")));
    let session = p11
        .open_rw_session(slot)
        .unwrap_or_else(|e| fail(&format!("C_OpenSession: {e}")));
    session
        .login(
            UserType::User,
            Some(&AuthPin::new(env("KEYWARD_PIN").into())),
        )
        .unwrap_or_else(|e| fail(&format!("C_Login: {e}")));
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.clone().into_bytes()),
        ])
        .unwrap_or_else(|e| fail(&format!("C_FindObjects: {e}")))
        .into_iter()
        .next()
        .unwrap_or_else(|| fail(&format!("no private key labelled {label:?}")));
    report("ready", "1");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        let ms =
            |w: Option<&str>| Duration::from_millis(w.and_then(|v| v.parse().ok()).unwrap_or(1000));
        match words.next() {
            Some("sign") => report(
                "sign",
                &sign(&session, key).err().unwrap_or_else(|| "ok".into()),
            ),
            Some("watch") => {
                let deadline = Instant::now() + ms(words.next());
                let mut answer = "none".to_owned();
                while Instant::now() < deadline {
                    if let Err(e) = sign(&session, key) {
                        let at = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default();
                        answer = format!("{} {e}", at.as_micros());
                        break;
                    }
                }
                report("failed", &answer);
            }
            Some("bench") => {
                let deadline = Instant::now() + ms(words.next());
                let (mut signed, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match sign(&session, key) {
                        Ok(()) => signed += 1,
                        Err(_) => errors += 1,
                    }
                }
                report("bench", &format!("{signed} {errors}"));
            }
            _ => report("error", &format!("unknown instruction {line:?}")),
        }
    }
}
