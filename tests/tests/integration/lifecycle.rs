//! Managed keys at the PKCS#11 boundary: the lifecycle, grants, rotation and
//! PIN lockout, driven through the `keyward` CLI and checked through the
//! module, as an administrator and an unmodified application would.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyward_tests::admin::{find, id_of, keyward_ok, strict_policy};
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, Ctx};

const DIGEST: [u8; 32] = [0x5a; 32];

keyward_test!(fn a_key_from_creation_through_rotation_to_revocation(tb) {
    tb.require_agent("key lifecycle");
    strict_policy(&tb);
    keyward_ok(&tb, &["key", "create", "web-tls", "--class", "signing"], 0);

    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let private = find(&s, "web-tls", ObjectClass::PRIVATE_KEY);
    assert_eq!(private.len(), 1, "the new key is visible to its application");
    // Pre-activation: no use.
    expect_err(s.sign(&Mechanism::Ecdsa, private[0], &DIGEST), RvError::KeyFunctionNotPermitted);

    keyward_ok(&tb, &["key", "activate", "web-tls"], 0);
    let sig_v1 = s.sign(&Mechanism::Ecdsa, private[0], &DIGEST).expect("an active key signs");
    let public_v1 = find(&s, "web-tls", ObjectClass::PUBLIC_KEY)[0];
    s.verify(&Mechanism::Ecdsa, public_v1, &DIGEST, &sig_v1).expect("and verifies");
    keyward_ok(&tb, &["key", "verify", "web-tls"], 0);

    // Rotation: same label, a new CKA_ID, found first; old signatures still verify.
    let v1_id = id_of(&s, private[0]);
    keyward_ok(&tb, &["key", "rotate", "web-tls"], 0);
    let by_label = find(&s, "web-tls", ObjectClass::PRIVATE_KEY);
    assert_eq!(by_label.len(), 1, "a search by label finds the active version only");
    let v2 = by_label[0];
    assert_ne!(id_of(&s, v2), v1_id, "the active version has its own CKA_ID");
    s.sign(&Mechanism::Ecdsa, v2, &DIGEST).expect("the new version signs");
    let all = s
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .expect("C_FindObjects without a label");
    assert_eq!(all, vec![v2], "an enumeration lists the active version only (OpenSSL's libp11 takes the last match)");
    let by_id = s
        .find_objects(&[
            Attribute::Label(b"web-tls".to_vec()),
            Attribute::Id(v1_id.clone()),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])
        .expect("C_FindObjects by CKA_ID");
    assert_eq!(by_id, vec![private[0]], "an older version is found by its CKA_ID");
    expect_err(s.sign(&Mechanism::Ecdsa, private[0], &DIGEST), RvError::KeyFunctionNotPermitted);
    s.verify(&Mechanism::Ecdsa, public_v1, &DIGEST, &sig_v1)
        .expect("a deactivated version still verifies its old signatures");

    // Suspension reaches an operation initialised before it.
    s.sign_init(&Mechanism::Ecdsa, v2).expect("C_SignInit while active");
    keyward_ok(&tb, &["key", "suspend", "web-tls", "--reason", "test"], 0);
    expect_err(s.sign_update(&DIGEST).and_then(|_| s.sign_final()), RvError::KeyFunctionNotPermitted);
    expect_err(s.sign(&Mechanism::Ecdsa, v2, &DIGEST), RvError::KeyFunctionNotPermitted);
    // Resuming needs approval: a request is recorded (exit 3), the key stays suspended.
    keyward_ok(&tb, &["key", "resume", "web-tls"], 3);
    expect_err(s.sign(&Mechanism::Ecdsa, v2, &DIGEST), RvError::KeyFunctionNotPermitted);

    // Revocation: nothing works any more, not even verification.
    keyward_ok(&tb, &["key", "revoke", "web-tls", "--reason", "test"], 0);
    expect_err(s.verify(&Mechanism::Ecdsa, public_v1, &DIGEST, &sig_v1), RvError::KeyFunctionNotPermitted);

    // The history shows every step.
    let shown = keyward_ok(&tb, &["--json", "key", "show", "web-tls"], 0);
    for state in ["pre-activation", "active", "suspended", "compromised"] {
        assert!(shown.contains(state), "history lacks {state}: {shown}");
    }
});

keyward_test!(fn applications_cannot_take_keys_out_of_management(tb) {
    tb.require_agent("managed keys");
    strict_policy(&tb);
    keyward_ok(&tb, &["key", "create", "managed", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "managed"], 0);
    keyward_ok(&tb, &["key", "create", "secret-elsewhere", "--class", "hidden"], 0);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    assert!(find(&s, "secret-elsewhere", ObjectClass::PRIVATE_KEY).is_empty(), "a key without a grant is invisible");
    let k = find(&s, "managed", ObjectClass::PRIVATE_KEY)[0];
    expect_err(s.update_attributes(k, &[Attribute::Label(b"renamed".to_vec())]), RvError::ActionProhibited);
    expect_err(s.copy_object(k, &[Attribute::Token(false)]), RvError::ActionProhibited);
    expect_err(s.destroy_object(k), RvError::ActionProhibited);
    s.sign(&Mechanism::Ecdsa, k, &DIGEST).expect("the key still works");
});

keyward_test!(fn wrong_pins_lock_until_an_administrator_unlocks(tb) {
    tb.require_agent("PIN lockout");
    strict_policy(&tb);
    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    let wrong = AuthPin::new("wrong-pin".into());
    for _ in 0..3 {
        expect_err(s.login(UserType::User, Some(&wrong)), RvError::PinIncorrect);
    }
    expect_err(s.login(UserType::User, Some(&ctx.pin())), RvError::PinLocked);
    let info = ctx.p11.get_token_info(ctx.slot).expect("C_GetTokenInfo");
    assert!(info.user_pin_locked(), "CKF_USER_PIN_LOCKED is set");
    keyward_ok(&tb, &["pin", "unlock", &tb.token], 0);
    s.login(UserType::User, Some(&ctx.pin())).expect("the right PIN works after the unlock");
});
