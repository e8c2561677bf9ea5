//! Processes: a forked child must re-initialise before using the module,
//! and a second process cannot use the first one's session or object
//! handles. Both run helper binaries (single-threaded / separate process).

use std::process::Command;

use cryptoki::mechanism::Mechanism;
use keyward_tests::p11::{rsa_pair, Ctx};
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
