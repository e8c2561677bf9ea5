//! Keys applications generate themselves, under the policy's default class
//! (strict mode): the class's generation rules hold, the forced attributes
//! are applied, and token keys become managed keys owned by the
//! application. Key import and weakening are refused in strict mode.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::Session;
use keyward_tests::admin::{install_policy, keyward_ok, uid};
use keyward_tests::harness::Env;
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, Ctx, P256_PARAMS};

fn policy(tb: &Env, default_class: bool) {
    let default = if default_class {
        "default_class = \"app\""
    } else {
        ""
    };
    install_policy(
        tb,
        &format!(
            r#"
[settings]
mode = "strict"
{default}

[[application]]
name = "tester"
uid = {uid}

[[class]]
name = "app"
purpose = "signing"
algorithms = ["ec:p256"]
protect_period = "30d"
process_period = "60d"
grants = [ {{ application = "tester", operations = ["sign", "verify"] }} ]
"#,
            uid = uid()
        ),
    );
}

fn ec_templates(label: &str, token: bool, derive: bool) -> (Vec<Attribute>, Vec<Attribute>) {
    let public = vec![
        Attribute::Token(token),
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::Verify(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let mut private = vec![
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Sign(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    if derive {
        private.push(Attribute::Derive(true));
    }
    (public, private)
}

fn bool_attr(s: &Session, h: cryptoki::object::ObjectHandle, t: AttributeType) -> bool {
    match s
        .get_attributes(h, &[t])
        .expect("C_GetAttributeValue")
        .pop()
    {
        Some(Attribute::Sensitive(b))
        | Some(Attribute::Extractable(b))
        | Some(Attribute::Derive(b)) => b,
        other => panic!("unexpected {other:?}"),
    }
}

keyward_test!(fn generated_keys_follow_the_default_class(tb) {
    tb.require_agent("a generation policy");
    policy(&tb, true);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();

    // Two purposes (pkcs11-tool's default EC template asks for sign and derive).
    let (public, private) = ec_templates("two-purposes", true, true);
    expect_err(s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private), RvError::TemplateInconsistent);
    // An algorithm outside the class.
    let rsa_public = [Attribute::Token(true), Attribute::ModulusBits(2048.into()), Attribute::Verify(true)];
    let rsa_private = [Attribute::Token(true), Attribute::Sign(true)];
    expect_err(s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &rsa_public, &rsa_private), RvError::MechanismInvalid);

    // A fitting template: made, with the forced attributes, and managed.
    let (public, mut private) = ec_templates("app-made", true, false);
    private.push(Attribute::Sensitive(false));
    private.push(Attribute::Extractable(true));
    match s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private) {
        // The class forces sensitive and non-extractable: a template asking
        // otherwise is either refused or corrected; either keeps the key in.
        Err(e) => assert!(
            matches!(keyward_tests::p11::rv_error(&e), RvError::TemplateInconsistent | RvError::AttributeValueInvalid),
            "{e}"
        ),
        Ok((_, k)) => {
            assert!(bool_attr(&s, k, AttributeType::Sensitive), "CKA_SENSITIVE forced on");
            assert!(!bool_attr(&s, k, AttributeType::Extractable), "CKA_EXTRACTABLE forced off");
        }
    }
    let (public, private) = ec_templates("app-key", true, false);
    let (_, k) = s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private).expect("a key of the class");
    assert!(bool_attr(&s, k, AttributeType::Sensitive));
    s.sign(&Mechanism::Ecdsa, k, &[7u8; 32]).expect("the application uses its key at once");
    let shown = keyward_ok(&tb, &["--json", "key", "show", "app-key"], 0);
    assert!(shown.contains("\"active\"") && shown.contains("tester"), "managed, active, owned by the application: {shown}");

    // A session key is checked but not recorded (it ends with its session).
    let (public, private) = ec_templates("ephemeral", false, false);
    let (_, e) = s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private).expect("a session key of the class");
    s.sign(&Mechanism::Ecdsa, e, &[7u8; 32]).expect("it signs");
    keyward_ok(&tb, &["key", "show", "ephemeral"], 4);
});

keyward_test!(fn strict_mode_without_a_default_class_refuses_generation_and_import(tb) {
    tb.require_agent("a generation policy");
    policy(&tb, false);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (public, private) = ec_templates("nope", true, false);
    expect_err(s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private), RvError::ActionProhibited);
    // Key material from outside the HSM.
    let import = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Value(vec![0x11; 32]),
    ];
    expect_err(s.create_object(&import), RvError::ActionProhibited);
    // Data objects are not keys: allowed.
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(false),
        Attribute::Label(b"note".to_vec()),
        Attribute::Value(b"hello".to_vec()),
    ])
    .expect("a data object");
});
