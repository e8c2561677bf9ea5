//! Processes: a forked child must re-initialise before using the module,
//! and a second process can neither use the first one's session or object
//! handles nor see its session objects or its login. They run helper
//! binaries (single-threaded / separate process).

use std::process::Command;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::SessionState;
use keyward_tests::p11::{ec_pair, rsa_pair, Ctx, P256_PARAMS};
use keyward_tests::{keyward_test, tools};

fn probe(tb: &keyward_tests::Env, bin: &str, args: &[String]) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("KEYWARD_MODULE", &tb.module)
        .env("KEYWARD_TOKEN", &tb.token)
        .env("KEYWARD_PIN", &tb.pin);
    tools::run_ok(&mut cmd)
}

keyward_test!(fn fork_then_reinitialise(tb) {
    let out = probe(&tb, env!("CARGO_BIN_EXE_fork_probe"), &[]);
    print!("{out}");
    assert!(out.contains("child ok: C_Initialize in the child"), "{out}");
});

keyward_test!(fn second_process_cannot_use_handles(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    // Several objects, so the key's handle is not simply the first one.
    for i in 0..3 {
        rsa_pair(&s, 1024, &format!("filler-{i}"), false);
    }
    let (public, private) = rsa_pair(&s, 2048, "mine", true);
    let args = vec![s.handle().to_string(), private.handle().to_string()];
    let out = probe(&tb, env!("CARGO_BIN_EXE_handle_probe"), &args);
    print!("{out}");
    // This process is unaffected.
    let sig = s.sign(&Mechanism::Sha256RsaPkcs, private, b"still mine").expect("sign after the probe");
    s.verify(&Mechanism::Sha256RsaPkcs, public, b"still mine", &sig).expect("verify");
    assert!(s.get_session_info().is_ok());
});

keyward_test!(fn second_process_cannot_see_session_objects_or_login(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let object = |label: &str, token: bool, private: bool| {
        s.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(token),
            Attribute::Private(private),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(b"first".to_vec()),
        ])
        .expect("C_CreateObject")
    };
    let public_session = object("first-public-session", false, false);
    let private_session = object("first-private-session", false, true);
    object("first-public-token", true, false);
    // Session keys of the first process, too.
    let (_, key) = ec_pair(&s, P256_PARAMS, "first-public-session", false);
    let args = vec![
        "first-public-session".to_string(),
        "first-private-session".to_string(),
        "first-public-token".to_string(),
    ];
    let out = probe(&tb, env!("CARGO_BIN_EXE_visibility_probe"), &args);
    print!("{out}");
    // The other process's login and logout left this one logged in, with
    // its session objects.
    assert_eq!(s.get_session_info().expect("info").session_state(), SessionState::RwUser, "the second process's logout logged this one out");
    let found = s.find_objects(&[Attribute::Label(b"first-public-session".to_vec())]).expect("find");
    assert!(found.contains(&public_session), "own session object no longer found: {found:?}");
    let found = s.find_objects(&[Attribute::Label(b"first-private-session".to_vec())]).expect("find");
    assert_eq!(found, vec![private_session]);
    s.sign(&Mechanism::Ecdsa, key, &[5u8; 32]).expect("sign with the own session key after the probe");
});
