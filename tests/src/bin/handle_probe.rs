//! Second-process probe: given another process's session handle and object
//! handle (argv 1 and 2), checks that this process cannot use them.
//! Prints one line per check and exits non-zero when any check fails.
//!
//! Environment: `KEYWARD_MODULE`, `KEYWARD_TOKEN`, `KEYWARD_PIN`.

use cryptoki_sys::*;
use keyward_tests::probe::side::env;
use keyward_tests::raw::{rv_name, AttrReq, InitArgs, Mech, Out, Raw};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: handle_probe SESSION OBJECT"))
        .collect();
    let [session, object] = args[..] else {
        panic!("usage: handle_probe SESSION OBJECT");
    };
    let raw = Raw::load(&env("KEYWARD_MODULE"));
    let label = env("KEYWARD_TOKEN");
    let pin = env("KEYWARD_PIN");
    let mut failed = 0;
    let mut check = |what: &str, got: CK_RV, want: &[CK_RV]| {
        let ok = want.contains(&got);
        let names: Vec<String> = want.iter().map(|&w| rv_name(w)).collect();
        println!(
            "{}: {what}: got {}, want {}",
            if ok { "ok" } else { "FAIL" },
            rv_name(got),
            names.join(" or ")
        );
        if !ok {
            failed += 1;
        }
    };
    check(
        "C_Initialize",
        raw.initialize(InitArgs::Flags(CKF_OS_LOCKING_OK)),
        &[CKR_OK],
    );
    // The other process's session, before this process has any session of
    // its own (whose number could coincide).
    let sh = &[CKR_SESSION_HANDLE_INVALID];
    check(
        "C_GetSessionInfo(foreign session)",
        raw.session_info(session).0,
        sh,
    );
    check(
        "C_Login(foreign session)",
        raw.login(session, CKU_USER, pin.as_bytes()),
        sh,
    );
    check(
        "C_GenerateRandom(foreign session)",
        raw.generate_random(session, 8).0,
        sh,
    );
    check(
        "C_FindObjectsInit(foreign session)",
        raw.find_objects_init(session, &[]),
        sh,
    );
    check(
        "C_GetAttributeValue(foreign session, foreign object)",
        raw.get_attributes(session, object, &mut [AttrReq::query(CKA_CLASS)]),
        sh,
    );
    check(
        "C_CloseSession(foreign session)",
        raw.close_session(session),
        sh,
    );

    let list = raw.slot_list(true, Out::Cap(64));
    let slot = list
        .data
        .into_iter()
        .find(|&s| String::from_utf8_lossy(&raw.token_info(s).1.label).trim_end() == label)
        .expect("the token is not in the slot list");
    let (rv, own) = raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    check("C_OpenSession", rv, &[CKR_OK]);
    check(
        "C_Login",
        raw.login(own, CKU_USER, pin.as_bytes()),
        &[CKR_OK],
    );
    let oh = &[CKR_OBJECT_HANDLE_INVALID];
    check(
        "C_GetAttributeValue(own session, foreign object)",
        raw.get_attributes(own, object, &mut [AttrReq::query(CKA_CLASS)]),
        oh,
    );
    check(
        "C_GetObjectSize(own session, foreign object)",
        raw.object_size(own, object).0,
        oh,
    );
    check(
        "C_SignInit(own session, foreign key)",
        raw.sign_init(own, &Mech::plain(CKM_SHA256_RSA_PKCS), object),
        &[CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID],
    );
    check(
        "C_DestroyObject(own session, foreign object)",
        raw.destroy_object(own, object),
        oh,
    );
    check("C_Finalize", raw.finalize(), &[CKR_OK]);
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
