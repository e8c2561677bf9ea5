//! SIGKILL of the agent while an application generates token keys under
//! the policy's default class: a key the HSM made but the inventory never
//! recorded must not survive the next start as an orphan on the token
//! (usable, unmanaged, and unknown to the recovery of interrupted
//! generations). Every application generation is journalled like an
//! administrator's: noted as pending before the HSM makes anything, undone
//! at the next start if the inventory does not know it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::Session;
use keyward_tests::admin::{install_policy, keyward_ok};
use keyward_tests::harness::Env;
use keyward_tests::json::{Json, JsonExt};
use keyward_tests::keyward_test;
use keyward_tests::p11::{Ctx, P256_PARAMS};

/// Kills in the test.
const KILLS: usize = 8;

fn policy(tb: &Env) {
    install_policy(tb, &keyward_tests::admin::default_class_policy(""));
}

/// Generates token key pairs labelled `gen-N` on `s` until a call fails
/// (the agent went away); returns how many succeeded.
fn generate_until_error(s: &Session, first: usize) -> usize {
    let mut n = 0;
    loop {
        let label = format!("gen-{}", first + n).into_bytes();
        let public = [
            Attribute::Token(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Verify(true),
            Attribute::Label(label.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sign(true),
            Attribute::Label(label),
        ];
        if s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .is_err()
        {
            return n;
        }
        n += 1;
    }
}

keyward_test!(fn a_kill_during_application_generation_leaves_no_orphan_key(tb) {
    tb.require_agent("generation under a default class");
    policy(&tb);
    let mut made = 0;
    for kill in 0..KILLS {
        // Logged in before the killer's clock starts: the kill lands in
        // the stream of generations, not before it.
        let ctx = Ctx::new(&tb);
        let s = ctx.user();
        let stop = Arc::new(AtomicBool::new(false));
        let killer = {
            let (tb, stop) = (tb.clone(), stop.clone());
            std::thread::spawn(move || {
                // Somewhere in a stream of generations.
                std::thread::sleep(Duration::from_millis(150 + 37 * kill as u64));
                tb.kill_agent();
                stop.store(true, Ordering::SeqCst);
            })
        };
        made += generate_until_error(&s, made + 1000 * kill);
        drop(s);
        drop(ctx);
        killer.join().expect("the killer thread");
        assert!(stop.load(Ordering::SeqCst));
        tb.start_agent();
    }
    assert!(made > 0, "no key was generated");

    // Every key pair on the token is a managed key's: discovery finds no
    // unmanaged private key among the generated ones.
    let found: Json = serde_json::from_str(&keyward_ok(&tb, &["--json", "discover"], 0))
        .expect("discover's JSON");
    let text = found.to_string();
    let orphans = text.matches("gen-").count();
    let managed = keyward_ok(&tb, &["--json", "key", "list"], 0).matches("\"gen-").count();
    println!("{KILLS} kills, {made} generations answered, {managed} managed keys; discover: {text}");
    assert_eq!(orphans, 0, "orphan keys after the kills: {text}");
    assert!(managed >= made, "{made} generations answered, {managed} keys managed");
    // Nor any object a cut-off generation left without its CKA_ID.
    let shadows = found.as_array().cloned().unwrap_or_default();
    let husks: Vec<&Json> = shadows.iter().filter(|s| s.str_at("backend_id").is_empty()).collect();
    assert!(husks.is_empty(), "objects without CKA_ID after the kills: {text}");
});
