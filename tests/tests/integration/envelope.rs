//! Envelope encryption in strict mode: an application wraps its own session
//! keys (`C_WrapKey`) under a managed key of a wrapping class it is granted
//! `wrap` on, and unwraps them (`C_UnwrapKey`) with one it is granted
//! `unwrap` on, into sensitive, unextractable session keys of one purpose.
//! A managed key or a token object is never wrapped out, an unwrapped key
//! is never a token object nor extractable, and a key without the grant
//! (or another application's key) does not wrap or unwrap.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keyward_tests::admin::{application_toml, find, install_policy, keyward_ok, uid, APPLICATION};
use keyward_tests::harness::Env;
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, expect_err_in, Ctx};

/// The other application of the policy (never run: its keys must stay
/// out of this application's reach).
const OTHER: &str = "other";

/// Strict mode; application keys are AES-256 encryption session keys
/// (`default_class = "session"`); classes of AES-256 wrapping keys: `kek`
/// (this application: wrap and unwrap), `kek-wrap` (wrap only), `kek-unwrap`
/// (unwrap only), `kek-other` (the other application: wrap and unwrap).
fn policy(tb: &Env) {
    let class = |name: &str, purpose: &str, application: &str, ops: &str| {
        format!(
            "\n[[class]]\nname = \"{name}\"\npurpose = \"{purpose}\"\nalgorithms = [\"aes:256\"]\n\
             protect_period = \"30d\"\nprocess_period = \"60d\"\n\
             grants = [ {{ application = \"{application}\", operations = [{ops}] }} ]\n"
        )
    };
    let policy = format!(
        "[settings]\nmode = \"strict\"\ndefault_class = \"session\"\n{}{}{}{}{}{}{}",
        application_toml(APPLICATION, uid()),
        application_toml(OTHER, uid() + 1),
        class(
            "session",
            "encryption",
            APPLICATION,
            r#""encrypt", "decrypt""#
        ),
        class("kek", "wrapping", APPLICATION, r#""wrap", "unwrap""#),
        class("kek-wrap", "wrapping", APPLICATION, r#""wrap""#),
        class("kek-unwrap", "wrapping", APPLICATION, r#""unwrap""#),
        class("kek-other", "wrapping", OTHER, r#""wrap", "unwrap""#),
    );
    install_policy(tb, &policy);
    for name in ["kek", "kek-wrap", "kek-unwrap", "kek-other"] {
        keyward_ok(tb, &["key", "create", name, "--class", name], 0);
        keyward_ok(tb, &["key", "activate", name], 0);
    }
}

const IV: [u8; 16] = [0x24; 16];

/// An AES-256 encryption key the application generates (a session
/// object unless `extra` says `CKA_TOKEN` true).
fn session_key(s: &Session, extra: &[Attribute]) -> cryptoki::error::Result<ObjectHandle> {
    let token = extra.iter().any(|a| matches!(a, Attribute::Token(true)));
    let mut t = vec![
        Attribute::Token(token),
        Attribute::ValueLen(32.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    t.extend(
        extra
            .iter()
            .filter(|a| !matches!(a, Attribute::Token(_)))
            .cloned(),
    );
    s.generate_key(&Mechanism::AesKeyGen, &t)
}

fn unwrap_template(extra: &[Attribute]) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    t.extend_from_slice(extra);
    t
}

fn flag(s: &Session, h: ObjectHandle, t: AttributeType) -> bool {
    match s
        .get_attributes(h, &[t])
        .expect("a boolean attribute")
        .pop()
    {
        Some(Attribute::Token(b))
        | Some(Attribute::Sensitive(b))
        | Some(Attribute::Extractable(b)) => b,
        other => panic!("{t:?}: {other:?}"),
    }
}

fn kek(s: &Session, name: &str) -> ObjectHandle {
    let found = find(s, name, ObjectClass::SECRET_KEY);
    assert_eq!(
        found.len(),
        1,
        "the managed key {name} as the application sees it"
    );
    found[0]
}

keyward_test!(fn an_application_wraps_and_unwraps_its_own_session_keys(tb) {
    tb.require_agent("managed keys");
    policy(&tb);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let kek = kek(&s, "kek");
    let wrap = Mechanism::AesKeyWrapPad;

    // The data key: an extractable, sensitive session key of the application.
    let dek = session_key(&s, &[Attribute::Extractable(true)]).expect("a session data key");
    assert!(!flag(&s, dek, AttributeType::Token), "a session object");
    assert!(flag(&s, dek, AttributeType::Sensitive), "sensitive");
    assert!(flag(&s, dek, AttributeType::Extractable), "extractable, as asked");
    let plaintext = b"envelope encryption under a managed key".to_vec();
    let ciphertext = s
        .encrypt(&Mechanism::AesCbcPad(IV), dek, &plaintext)
        .expect("encrypt with the data key");
    let blob = s.wrap_key(&wrap, kek, dek).expect("C_WrapKey of the data key");
    assert!(!blob.is_empty());
    s.destroy_object(dek).expect("destroy the data key");

    let back = s
        .unwrap_key(&wrap, kek, &blob, &unwrap_template(&[]))
        .expect("C_UnwrapKey of the data key");
    assert!(!flag(&s, back, AttributeType::Token), "unwrapped: a session object");
    assert!(flag(&s, back, AttributeType::Sensitive), "unwrapped: sensitive");
    assert!(!flag(&s, back, AttributeType::Extractable), "unwrapped: unextractable");
    let decrypted = s
        .decrypt(&Mechanism::AesCbcPad(IV), back, &ciphertext)
        .expect("decrypt with the unwrapped key");
    assert_eq!(decrypted, plaintext, "the unwrapped key is the data key");
    // CKA_TOKEN false said outright is the same session key.
    let again = s
        .unwrap_key(&wrap, kek, &blob, &unwrap_template(&[Attribute::Token(false)]))
        .expect("C_UnwrapKey with CKA_TOKEN false");
    assert!(!flag(&s, again, AttributeType::Token));
});

keyward_test!(fn envelope_refusals_in_strict_mode(tb) {
    tb.require_agent("managed keys");
    policy(&tb);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let kek_h = kek(&s, "kek");
    let wrap_only = kek(&s, "kek-wrap");
    let unwrap_only = kek(&s, "kek-unwrap");
    let wrap = Mechanism::AesKeyWrapPad;
    let dek = session_key(&s, &[Attribute::Extractable(true)]).expect("a session data key");
    let blob = s.wrap_key(&wrap, kek_h, dek).expect("C_WrapKey of the data key");
    let refused_template = [RvError::AttributeValueInvalid, RvError::TemplateInconsistent];

    // Unwrapped into a token object: refused, nothing on the token.
    for extra in [
        vec![Attribute::Token(true)],
        vec![Attribute::Token(true), Attribute::Label(b"restored".to_vec())],
    ] {
        expect_err_in(s.unwrap_key(&wrap, kek_h, &blob, &unwrap_template(&extra)), &refused_template);
    }
    assert!(find(&s, "restored", ObjectClass::SECRET_KEY).is_empty(), "no restored token key");
    // Unwrapped into an extractable or readable key: refused.
    expect_err_in(
        s.unwrap_key(&wrap, kek_h, &blob, &unwrap_template(&[Attribute::Extractable(true)])),
        &refused_template,
    );
    expect_err_in(
        s.unwrap_key(&wrap, kek_h, &blob, &unwrap_template(&[Attribute::Sensitive(false)])),
        &refused_template,
    );
    // An unwrapped key of two purposes: refused.
    expect_err_in(
        s.unwrap_key(&wrap, kek_h, &blob, &unwrap_template(&[Attribute::Sign(true)])),
        &refused_template,
    );

    // Wrapping out a managed key: the wrapping key itself, or another one.
    let prohibited = [RvError::ActionProhibited, RvError::KeyUnextractable];
    expect_err_in(s.wrap_key(&wrap, kek_h, kek_h), &prohibited);
    expect_err_in(s.wrap_key(&wrap, kek_h, wrap_only), &prohibited);
    expect_err_in(s.wrap_key(&wrap, kek_h, unwrap_only), &prohibited);
    // A managed token key the application generated under its class.
    let token_key = session_key(&s, &[Attribute::Token(true), Attribute::Label(b"app-token".to_vec())])
        .expect("a token key under the class for application keys");
    expect_err_in(s.wrap_key(&wrap, kek_h, token_key), &prohibited);
    // A token key cannot be made extractable at all.
    expect_err_in(
        session_key(&s, &[Attribute::Token(true), Attribute::Extractable(true)]),
        &refused_template,
    );
    // An unwrapped key is not extractable: it is not wrapped out again.
    let back = s
        .unwrap_key(&wrap, kek_h, &blob, &unwrap_template(&[]))
        .expect("C_UnwrapKey");
    expect_err_in(s.wrap_key(&wrap, kek_h, back), &prohibited);

    // Without the grant: wrap with an unwrap-only key, unwrap with a
    // wrap-only key.
    let not_granted = [RvError::KeyFunctionNotPermitted, RvError::ActionProhibited];
    expect_err_in(s.wrap_key(&wrap, unwrap_only, dek), &not_granted);
    let wrapped = s.wrap_key(&wrap, wrap_only, dek).expect("C_WrapKey with a wrap grant");
    expect_err_in(
        s.unwrap_key(&wrap, wrap_only, &wrapped, &unwrap_template(&[])),
        &not_granted,
    );
    // Another application's key is out of reach: this application never
    // gets a handle to it.
    assert!(
        find(&s, "kek-other", ObjectClass::SECRET_KEY).is_empty(),
        "another application's wrapping key is visible"
    );

    // An unmanaged session key does not wrap nor unwrap in strict mode.
    let own = session_key(&s, &[]).expect("a session key");
    expect_err(s.wrap_key(&wrap, own, dek), RvError::ActionProhibited);
    expect_err(
        s.unwrap_key(&wrap, own, &blob, &unwrap_template(&[])),
        RvError::ActionProhibited,
    );
    // A token copy of the data key (an unmanaged token object) is not
    // wrapped out: only session keys are.
    let copy = s
        .copy_object(dek, &[Attribute::Token(true)])
        .expect("a token copy of the data key");
    assert!(flag(&s, copy, AttributeType::Token), "the copy is a token object");
    expect_err(s.wrap_key(&wrap, kek_h, copy), RvError::ActionProhibited);
});
