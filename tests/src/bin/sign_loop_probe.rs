//! Load probe for the audit trail under SIGKILL: signs in a tight loop,
//! alternately with the managed key labelled argv 1 (found by label, the
//! version that signs now) and with an unmanaged EC session key of its
//! own, until its standard input closes. It rides through agent restarts
//! and rotations: after an error it finds the managed key again (a
//! rotation deactivates the version it had) or, when the session is gone,
//! opens a new one, logs in and makes a new session key.
//!
//! Output: `ready` once both keys have signed; at the end one line
//! `signed managed=N unmanaged=M errors=E` (signatures that returned
//! `CKR_OK`, and calls that failed), then exit 0.
//!
//! Environment: `KEYWARD_MODULE`, `KEYWARD_TOKEN`, `KEYWARD_PIN`.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use keyward_tests::p11::P256_PARAMS;
use keyward_tests::probe::side::env;

const DIGEST: [u8; 32] = [0x5a; 32];

/// A logged-in session with the probe's two keys.
struct Signer {
    session: Session,
    managed: Option<ObjectHandle>,
    unmanaged: ObjectHandle,
}

fn open(p11: &Pkcs11, token: &str, pin: &str) -> cryptoki::error::Result<Signer> {
    let slot = p11
        .get_slots_with_token()?
        .into_iter()
        .find(|s| {
            p11.get_token_info(*s)
                .map(|i| i.label().trim_end() == token)
                .unwrap_or(false)
        })
        .ok_or(Error::Pkcs11(
            RvError::TokenNotPresent,
            cryptoki::context::Function::GetSlotList,
        ))?;
    let session = p11.open_rw_session(slot)?;
    match session.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(e),
    }
    let label = format!("unmanaged-{}", std::process::id()).into_bytes();
    let (_, unmanaged) = session.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Verify(true),
        ],
        &[
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Label(label),
        ],
    )?;
    Ok(Signer {
        session,
        managed: None,
        unmanaged,
    })
}

fn find_managed(s: &Session, label: &str) -> Option<ObjectHandle> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .ok()?
    .first()
    .copied()
}

fn main() {
    let label = std::env::args()
        .nth(1)
        .expect("usage: sign_loop_probe MANAGED_LABEL");
    let (token, pin) = (env("KEYWARD_TOKEN"), env("KEYWARD_PIN"));
    let p11 = Pkcs11::new(env("KEYWARD_MODULE")).expect("load the module");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, Ordering::SeqCst);
        });
    }
    let (mut managed, mut unmanaged, mut errors) = (0u64, 0u64, 0u64);
    let mut ready = false;
    let mut signer: Option<Signer> = None;
    while !stop.load(Ordering::SeqCst) {
        let s = match &mut signer {
            Some(s) => s,
            None => match open(&p11, &token, &pin) {
                Ok(s) => signer.insert(s),
                Err(_) => {
                    // The agent is down or starting: try again shortly.
                    errors += 1;
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            },
        };
        if s.managed.is_none() {
            s.managed = find_managed(&s.session, &label);
        }
        let managed_ok = match s.managed {
            Some(k) => s.session.sign(&Mechanism::Ecdsa, k, &DIGEST).is_ok(),
            None => false,
        };
        let unmanaged_ok = s
            .session
            .sign(&Mechanism::Ecdsa, s.unmanaged, &DIGEST)
            .is_ok();
        managed += u64::from(managed_ok);
        unmanaged += u64::from(unmanaged_ok);
        if !managed_ok {
            errors += 1;
            s.managed = None;
        }
        if !unmanaged_ok {
            // The session is gone (agent restart): start again.
            errors += 1;
            signer = None;
            std::thread::sleep(Duration::from_millis(5));
        }
        if !ready && managed_ok && unmanaged_ok {
            ready = true;
            println!("ready");
            std::io::stdout().flush().expect("flush stdout");
        }
    }
    println!("signed managed={managed} unmanaged={unmanaged} errors={errors}");
    std::io::stdout().flush().expect("flush stdout");
}
