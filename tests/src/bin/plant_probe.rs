//! An application that tries to plant a public key (argv 3, the
//! `CKA_EC_POINT` in hex, on P-256) under another key's label (argv 1) and
//! under its `CKA_ID` (argv 2, hex), as token objects. Prints
//! `label: CKR_...` and `id: CKR_...` with what `C_CreateObject` answered.
//!
//! Environment: `KEYWARD_MODULE`, `KEYWARD_TOKEN`, `KEYWARD_PIN`.

use cryptoki_sys::*;
use keyward_tests::p11::unhex;
use keyward_tests::probe::side::{env, report, setup, token_slot};
use keyward_tests::raw::{rv_name, Attr};

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [label, id, point] = &args[..] else {
        panic!("usage: plant_probe LABEL CKA_ID_HEX EC_POINT_HEX");
    };
    let (raw, slot) = token_slot();
    let (rv, h) = raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    setup("C_OpenSession", rv);
    setup(
        "C_Login",
        raw.login(h, CKU_USER, env("KEYWARD_PIN").as_bytes()),
    );
    let public = |label: &[u8], id: Vec<u8>| {
        vec![
            Attr::Ulong(CKA_CLASS, CKO_PUBLIC_KEY),
            Attr::Ulong(CKA_KEY_TYPE, CKK_EC),
            Attr::Bool(CKA_TOKEN, true),
            Attr::Bytes(CKA_EC_PARAMS, P256.to_vec()),
            Attr::Bytes(CKA_EC_POINT, unhex(point)),
            Attr::Bool(CKA_VERIFY, true),
            Attr::Bytes(CKA_LABEL, label.to_vec()),
            Attr::Bytes(CKA_ID, id),
        ]
    };
    let (rv, _) = raw.create_object(h, &public(label.as_bytes(), b"attacker".to_vec()));
    report("label", &rv_name(rv));
    let (rv, _) = raw.create_object(h, &public(b"elsewhere", unhex(id)));
    report("id", &rv_name(rv));
}
