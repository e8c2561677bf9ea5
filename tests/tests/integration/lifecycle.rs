//! Managed keys at the PKCS#11 boundary: the lifecycle, grants, rotation and
//! PIN lockout, driven through the `keyward` CLI and checked through the
//! module, as an administrator and an unmodified application would.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::AttributeType;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyward_tests::admin::{
    application_toml, find, id_of, install_policy, keyward_ok, sign_grant_toml, strict_policy, uid,
    APPLICATION,
};
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
    keyward_ok(&tb, &["key", "revoke", "--yes", "web-tls", "--reason", "test", "--reason-code", "superseded"], 0);
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

// Managed keys of every signing curve are made with the curve's
// CKA_EC_PARAMS (the OID's DER, written out here independently of the
// agent's source of it), and each key verifies inside the HSM.
keyward_test!(fn managed_keys_get_their_curves_ec_params(tb) {
    let policy = format!(
        "[settings]\nmode = \"strict\"\n{}\n[[class]]\nname = \"curves\"\npurpose = \"signing\"\n\
         algorithms = [\"ec:p256\", \"ec:p384\", \"ec:p521\", \"ed25519\"]\n\
         protect_period = \"30d\"\nprocess_period = \"60d\"\n{}\n",
        application_toml(APPLICATION, uid()),
        sign_grant_toml(APPLICATION)
    );
    install_policy(&tb, &policy);
    let cases: [(&str, &[u8]); 4] = [
        ("ec:p256", &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        ("ec:p384", &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
        ("ec:p521", &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]),
        ("ed25519", &[0x06, 0x03, 0x2b, 0x65, 0x70]),
    ];
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    for (algorithm, der) in cases {
        let name = format!("curve-{}", algorithm.replace(':', "-"));
        keyward_ok(&tb, &["key", "create", &name, "--class", "curves", "--algorithm", algorithm], 0);
        keyward_ok(&tb, &["key", "activate", &name], 0);
        keyward_ok(&tb, &["key", "verify", &name], 0);
        let public = find(&s, &name, ObjectClass::PUBLIC_KEY);
        assert_eq!(public.len(), 1, "{name}: its public key");
        let params = s.get_attributes(public[0], &[AttributeType::EcParams]).expect("CKA_EC_PARAMS");
        match params.as_slice() {
            [Attribute::EcParams(p)] => assert_eq!(p.as_slice(), der, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
});

keyward_test!(fn approval_requests_are_listed_and_shown_with_their_reason(tb) {
    tb.require_agent("approval requests");
    strict_policy(&tb);
    keyward_ok(&tb, &["key", "create", "web-tls", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "web-tls"], 0);
    keyward_ok(&tb, &["key", "suspend", "web-tls", "--reason", "laptop stolen"], 0);
    let none = keyward_ok(&tb, &["request", "list"], 0);
    assert_eq!(none, "no approval requests\n");

    // A resume waits for approval; asking twice is one request.
    let asked = |n: usize| {
        let json = keyward_ok(
            &tb,
            &["--json", "key", "resume", "web-tls", "--reason", "laptop found"],
            3,
        );
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        let id = doc["id"].as_str().unwrap_or_default().to_owned();
        assert!(!id.is_empty(), "ask {n}: {json}");
        id
    };
    let id = asked(1);
    assert_eq!(asked(2), id, "a second resume while one is pending");

    let listed = keyward_ok(&tb, &["--json", "request", "list"], 0);
    let doc: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let requests = doc.as_array().cloned().unwrap_or_default();
    assert_eq!(requests.len(), 1, "{listed}");
    assert_eq!(requests[0]["id"], id.as_str());
    assert_eq!(requests[0]["action"], "resume");
    assert_eq!(requests[0]["status"], "pending");
    assert_eq!(requests[0]["reason"], "laptop found");

    let status = keyward_ok(&tb, &["--json", "status"], 0);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pending_requests"], 1, "{status}");
    let shown = keyward_ok(&tb, &["request", "show", &id], 0);
    assert!(shown.contains("laptop found") && shown.contains(&id), "{shown}");
    keyward_ok(&tb, &["request", "show", "no-such-request"], 4);
    // Reading requests leaves no record; the resume's outcome names the id.
    let trail = keyward_ok(&tb, &["--json", "audit", "query", "--key", "web-tls"], 0);
    assert!(!trail.contains("request.list") && !trail.contains("request.show"), "{trail}");
    assert!(trail.contains(&format!("needs approval: request {id}")), "{trail}");
});

keyward_test!(fn a_uid_outside_the_roster_gets_nothing_on_the_admin_socket(tb) {
    tb.require_agent("the administrators' roster");
    // A roster of two security officers under uids this test does not run as.
    let key = format!("ed25519:{}", "11".repeat(32));
    let key2 = format!("ed25519:{}", "22".repeat(32));
    let policy = format!(
        "[settings]\nmode = \"lab\"\n\n\
         [[administrator]]\nname = \"alice\"\nuids = [4242]\nroles = [\"security-officer\"]\npublic_key = \"{key}\"\n\n\
         [[administrator]]\nname = \"bob\"\nuids = [4243]\nroles = [\"security-officer\"]\npublic_key = \"{key2}\"\n"
    );
    install_policy(&tb, &policy);
    let me = uid();
    for args in [vec!["status"], vec!["key", "list"], vec!["audit", "verify"]] {
        let out = keyward_tests::admin::keyward(&tb, &args);
        assert_ne!(out.status.code(), Some(0), "keyward {args:?} was served to uid {me}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("uid {me} is no administrator of the policy's roster")),
            "keyward {args:?}: {stderr}"
        );
    }
    // The refusal is logged; applications are not concerned by the roster.
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(log.contains("is no administrator of the policy's roster"), "{log}");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    s.generate_random_vec(8).expect("the application socket still serves");
});
