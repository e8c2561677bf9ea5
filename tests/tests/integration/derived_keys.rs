//! Keys derived from managed keys obey the generation rules: whatever the
//! template asks, a key derived (`C_DeriveKey`) from a managed key, or from
//! any key in strict mode, is a sensitive, unextractable session key of one
//! purpose that cannot wrap unless the class for application keys is for
//! wrapping. A template asking otherwise is refused and nothing reaches the
//! backend token.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::*;
use keyward_tests::admin::{find, install_policy, keyward_json, keyward_ok, uid, APPLICATION};
use keyward_tests::harness::Env;
use keyward_tests::json::JsonExt;
use keyward_tests::p11::Ctx;
use keyward_tests::raw::{object_handle, Attr, AttrReq, Mech, Param};
use keyward_tests::{assert_rv, keyward_test};

/// `mode` without a class for application keys; the administrator makes
/// P-256 key-agreement keys (`agreement`).
fn policy(tb: &Env, mode: &str) {
    install_policy(
        tb,
        &format!(
            r#"
[settings]
mode = "{mode}"

[[application]]
name = "{APPLICATION}"
uid = {uid}

[[class]]
name = "agreement"
purpose = "derivation"
algorithms = ["ec:p256"]
protect_period = "30d"
process_period = "60d"
grants = [ {{ application = "{APPLICATION}", operations = ["derive"] }} ]
"#,
            uid = uid()
        ),
    );
}

/// The labels of the unmanaged keys on the backend token (`keyward discover`).
fn shadow_labels(tb: &Env) -> Vec<String> {
    let shadows = keyward_json(tb, &["discover"], 0);
    shadows
        .items()
        .iter()
        .map(|s| s.str_at("label").to_owned())
        .collect()
}

fn ec_point(s: &Session, public: ObjectHandle) -> Vec<u8> {
    match &s
        .get_attributes(public, &[AttributeType::EcPoint])
        .expect("CKA_EC_POINT")[..]
    {
        // DER OCTET STRING of an uncompressed P-256 point.
        [Attribute::EcPoint(p)] if p.len() == 67 => p[2..].to_vec(),
        other => panic!("CKA_EC_POINT: {other:?}"),
    }
}

fn bool_attr(s: &Session, h: ObjectHandle, t: AttributeType) -> bool {
    match s
        .get_attributes(h, &[t])
        .expect("a boolean attribute")
        .pop()
    {
        Some(Attribute::Token(b))
        | Some(Attribute::Sensitive(b))
        | Some(Attribute::Extractable(b))
        | Some(Attribute::Wrap(b))
        | Some(Attribute::Unwrap(b))
        | Some(Attribute::Encrypt(b))
        | Some(Attribute::Decrypt(b)) => b,
        other => panic!("{t:?}: {other:?}"),
    }
}

keyward_test!(fn keys_derived_from_managed_keys_obey_the_generation_rules(tb) {
    derived_from_managed_keys(&tb, "strict");
});

// Managed keys keep every rule in lab mode too.
keyward_test!(fn keys_derived_from_managed_keys_obey_the_generation_rules_in_lab_mode(tb) {
    derived_from_managed_keys(&tb, "lab");
});

fn derived_from_managed_keys(tb: &Env, mode: &str) {
    tb.require_agent("managed keys");
    policy(tb, mode);
    for name in ["agree-a", "agree-b"] {
        keyward_ok(tb, &["key", "create", name, "--class", "agreement"], 0);
        keyward_ok(tb, &["key", "activate", name], 0);
    }
    let ctx = Ctx::new(tb);
    let s = ctx.user();
    let h = s.handle();
    let private = |n| find(&s, n, ObjectClass::PRIVATE_KEY)[0];
    let public = |n| find(&s, n, ObjectClass::PUBLIC_KEY)[0];
    let (priv_a, priv_b) = (private("agree-a"), private("agree-b"));
    let (point_a, point_b) = (
        ec_point(&s, public("agree-a")),
        ec_point(&s, public("agree-b")),
    );
    let ecdh = |peer: &[u8]| Mech {
        type_: CKM_ECDH1_DERIVE,
        param: Param::Ecdh1 {
            public: peer.to_vec(),
        },
    };
    let secret = |extra: &[Attr]| {
        let mut t = vec![
            Attr::Ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
            Attr::Ulong(CKA_VALUE_LEN, 32),
        ];
        t.extend_from_slice(extra);
        t
    };

    // The attack: a readable, extractable token key with wrap usage.
    let attack = secret(&[
        Attr::Bool(CKA_TOKEN, true),
        Attr::Bool(CKA_SENSITIVE, false),
        Attr::Bool(CKA_EXTRACTABLE, true),
        Attr::Bool(CKA_WRAP, true),
    ]);
    let (rv, _) = ctx
        .raw
        .derive_key(h, &ecdh(&point_b), priv_a.handle(), &attack);
    assert_rv!(rv, CKR_ATTRIBUTE_VALUE_INVALID, "the attack's template");
    // Each of its asks on its own, and two purposes.
    for bad in [
        vec![Attr::Bool(CKA_TOKEN, true)],
        vec![Attr::Bool(CKA_SENSITIVE, false)],
        vec![Attr::Bool(CKA_EXTRACTABLE, true)],
        vec![Attr::Bool(CKA_WRAP, true)],
        vec![Attr::Bool(CKA_UNWRAP, true)],
    ] {
        let (rv, _) = ctx
            .raw
            .derive_key(h, &ecdh(&point_b), priv_a.handle(), &secret(&bad));
        assert_rv!(rv, CKR_ATTRIBUTE_VALUE_INVALID, "{bad:?}");
    }
    let two = secret(&[Attr::Bool(CKA_ENCRYPT, true), Attr::Bool(CKA_SIGN, true)]);
    assert_rv!(
        ctx.raw
            .derive_key(h, &ecdh(&point_b), priv_a.handle(), &two)
            .0,
        CKR_TEMPLATE_INCONSISTENT,
        "two purposes"
    );
    // Nothing reached the backend token.
    assert!(
        shadow_labels(tb).is_empty(),
        "a derived key on the backend token"
    );
    // The refusals are in the trail, with their reason.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let denied = keyward_ok(tb, &["--json", "audit", "query", "--result", "denied"], 0);
        if denied
            .lines()
            .any(|l| l.contains("derivation") && l.contains("CKA_EXTRACTABLE"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no derivation refusal in the trail:\n{denied}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // A template that asks nothing: a sensitive, unextractable session key
    // with no usage at all; its value cannot be read.
    let (rv, k) = ctx
        .raw
        .derive_key(h, &ecdh(&point_b), priv_a.handle(), &secret(&[]));
    assert_rv!(rv, CKR_OK, "a plain derivation");
    let k = object_handle(k);
    assert!(
        !bool_attr(&s, k, AttributeType::Token),
        "derived keys are session objects"
    );
    assert!(
        bool_attr(&s, k, AttributeType::Sensitive),
        "CKA_SENSITIVE forced on"
    );
    assert!(
        !bool_attr(&s, k, AttributeType::Extractable),
        "CKA_EXTRACTABLE forced off"
    );
    assert!(
        !bool_attr(&s, k, AttributeType::Wrap),
        "CKA_WRAP forced off"
    );
    assert!(
        !bool_attr(&s, k, AttributeType::Encrypt),
        "no usage asked, none given"
    );
    let mut value = [AttrReq::with_cap(CKA_VALUE, 64)];
    assert_rv!(
        ctx.raw.get_attributes(h, k.handle(), &mut value),
        CKR_ATTRIBUTE_SENSITIVE,
        "CKA_VALUE of a derived key"
    );

    // One purpose asked: both sides derive one AES key and use it.
    let aes = [
        Attr::Ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::Ulong(CKA_KEY_TYPE, CKK_AES),
        Attr::Ulong(CKA_VALUE_LEN, 16),
        Attr::Bool(CKA_ENCRYPT, true),
        Attr::Bool(CKA_DECRYPT, true),
    ];
    let (rv, ab) = ctx
        .raw
        .derive_key(h, &ecdh(&point_b), priv_a.handle(), &aes);
    assert_rv!(rv, CKR_OK, "an AES key for encryption");
    let (rv, ba) = ctx
        .raw
        .derive_key(h, &ecdh(&point_a), priv_b.handle(), &aes);
    assert_rv!(rv, CKR_OK, "the other side's AES key");
    let (ab, ba) = (object_handle(ab), object_handle(ba));
    assert!(!bool_attr(&s, ab, AttributeType::Wrap) && !bool_attr(&s, ab, AttributeType::Unwrap));
    let iv = [7u8; 16];
    let ct = s
        .encrypt(&Mechanism::AesCbcPad(iv), ab, b"agreed")
        .expect("encrypt with the derived key");
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad(iv), ba, &ct)
            .expect("decrypt"),
        b"agreed"
    );
    let mut value = [AttrReq::with_cap(CKA_VALUE, 64)];
    assert_rv!(
        ctx.raw.get_attributes(h, ab.handle(), &mut value),
        CKR_ATTRIBUTE_SENSITIVE
    );
}
