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

use std::io::BufRead;

use cryptoki_sys::*;
use keyward_tests::p11::unhex;
use keyward_tests::probe::side::{env, find_one, report, setup, token_slot};
use keyward_tests::raw::{rv_name, Mech, Out};

/// What the probe signs and verifies (an ECDSA "digest").
const DIGEST: [u8; 32] = [0x5a; 32];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [label, signature] = &args[..] else {
        panic!("usage: pending_op_probe LABEL SIGNATURE_HEX");
    };
    let signature = unhex(signature);
    let (raw, slot) = token_slot();
    let pin = env("KEYWARD_PIN");
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
