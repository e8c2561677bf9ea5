//! Second-process probe for operations initialised before a lifecycle
//! change: logs in, finds the EC key pair labelled argv 1, calls
//! `C_SignInit` (CKM_ECDSA, private key) in one session and `C_VerifyInit`
//! (CKM_ECDSA, public key) in another, prints `ready`, and waits for a line
//! on standard input. Then it calls `C_Sign` and `C_Verify` (of argv 2, a
//! hex ECDSA signature of [`DIGEST`] made by the key) and reports what they
//! answered.
//!
//! Nothing is signed or verified with the key before the inits, so the
//! module has no cached shape for them and each `C_*Init` is its own round
//! trip: the agent has accepted both operations before the probe says
//! `ready`.
//!
//! Output, one `name: value` line each: `init sign`, `init verify`, `ready`,
//! `sign`, `verify` (values are `CKR_*` names). Setup failures print
//! `setup FAIL: ...` and exit 2; otherwise the exit code is 0 and the test
//! judges the values.
//!
//! Environment: `KEYWARD_MODULE`, `KEYWARD_TOKEN`, `KEYWARD_PIN`.

use std::io::{BufRead, Write};

use cryptoki_sys::*;
use keyward_tests::p11::unhex;
use keyward_tests::raw::{rv_name, Attr, InitArgs, Mech, Out, Raw};

/// What the probe signs and verifies (an ECDSA "digest").
const DIGEST: [u8; 32] = [0x5a; 32];

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn setup(what: &str, rv: CK_RV) {
    if rv != CKR_OK {
        println!("setup FAIL: {what}: {}", rv_name(rv));
        std::process::exit(2);
    }
}

fn report(name: &str, value: &str) {
    println!("{name}: {value}");
    std::io::stdout().flush().expect("flush stdout");
}

/// The one object of `class` labelled `label`.
fn find_one(
    raw: &Raw,
    h: CK_SESSION_HANDLE,
    label: &str,
    class: CK_OBJECT_CLASS,
) -> CK_OBJECT_HANDLE {
    setup(
        "C_FindObjectsInit",
        raw.find_objects_init(
            h,
            &[
                Attr::Ulong(CKA_CLASS, class),
                Attr::Bytes(CKA_LABEL, label.as_bytes().to_vec()),
            ],
        ),
    );
    let (rv, found) = raw.find_objects(h, 16);
    setup("C_FindObjects", rv);
    setup("C_FindObjectsFinal", raw.find_objects_final(h));
    if found.len() != 1 {
        println!(
            "setup FAIL: {} objects of class {class} labelled {label:?}",
            found.len()
        );
        std::process::exit(2);
    }
    found[0]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [label, signature] = &args[..] else {
        panic!("usage: pending_op_probe LABEL SIGNATURE_HEX");
    };
    let signature = unhex(signature);
    let raw = Raw::load(&env("KEYWARD_MODULE"));
    let token = env("KEYWARD_TOKEN");
    let pin = env("KEYWARD_PIN");
    setup(
        "C_Initialize",
        raw.initialize(InitArgs::Flags(CKF_OS_LOCKING_OK)),
    );
    let list = raw.slot_list(true, Out::Cap(64));
    setup("C_GetSlotList", list.rv);
    let Some(slot) = list
        .data
        .into_iter()
        .find(|&s| String::from_utf8_lossy(&raw.token_info(s).1.label).trim_end() == token)
    else {
        println!("setup FAIL: no token labelled {token:?}");
        std::process::exit(2);
    };
    let (rv, signer) = raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    setup("C_OpenSession (sign)", rv);
    let (rv, verifier) = raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    setup("C_OpenSession (verify)", rv);
    setup("C_Login", raw.login(signer, CKU_USER, pin.as_bytes()));
    let private = find_one(&raw, signer, label, CKO_PRIVATE_KEY);
    let public = find_one(&raw, verifier, label, CKO_PUBLIC_KEY);

    let ecdsa = Mech::plain(CKM_ECDSA);
    report(
        "init sign",
        &rv_name(raw.sign_init(signer, &ecdsa, private)),
    );
    report(
        "init verify",
        &rv_name(raw.verify_init(verifier, &ecdsa, public)),
    );
    report("ready", "waiting for a line on stdin");

    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .expect("read stdin");

    let signed = raw.sign(signer, &DIGEST, Out::Cap(256));
    report("sign", &rv_name(signed.rv));
    report(
        "verify",
        &rv_name(raw.verify(verifier, &DIGEST, &signature)),
    );
    let _ = raw.finalize();
}
