//! The policy at the PKCS#11 boundary: unknown peers get no token;
//! mechanisms outside the allow-list are neither listed nor usable.

use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::Attribute;
use cryptoki_sys::*;
use keyward_tests::p11::{ec_pair, expect_err, load, os_threads, Ctx, P256_PARAMS};
use keyward_tests::raw::Out;
use keyward_tests::{assert_rv, keyward_test};

keyward_test!(fn unknown_peer_gets_no_token(tb) with ["--policy-file", concat!(env!("CARGO_MANIFEST_DIR"), "/policies/foreign-only.toml")] {
    tb.require_agent("a policy that admits nobody here");
    let (p11, raw) = load(&tb);
    p11.initialize(os_threads()).expect("C_Initialize succeeds for an unknown peer");
    let present = raw.slot_list(true, Out::Cap(16));
    assert_rv!(present.rv, CKR_OK);
    assert!(present.data.is_empty(), "an unknown peer sees a token: {:?}", present.data);
    let all = raw.slot_list(false, Out::Cap(16));
    assert_rv!(all.rv, CKR_OK);
    assert!(!all.data.is_empty());
    for &slot in &all.data {
        assert_rv!(raw.token_info(slot).0, CKR_TOKEN_NOT_PRESENT, "C_GetTokenInfo for an unknown peer");
        assert_rv!(raw.open_session(slot, CKF_SERIAL_SESSION).0, CKR_TOKEN_NOT_PRESENT, "C_OpenSession for an unknown peer");
    }
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("agent log");
    assert!(log.contains("refused: no application of the policy matches"), "the refusal is not logged:\n{log}");
});

keyward_test!(fn mechanisms_outside_the_allow_list_are_neither_listed_nor_usable(tb) with ["--policy-file", concat!(env!("CARGO_MANIFEST_DIR"), "/policies/ec-only.toml")] {
    tb.require_agent("a mechanism allow-list");
    let ctx = Ctx::new(&tb);
    let listed = ctx.p11.get_mechanism_list(ctx.slot).expect("C_GetMechanismList");
    let mut listed: Vec<u64> = listed.iter().map(|m| u64::from(*m)).collect();
    listed.sort_unstable();
    assert_eq!(listed, vec![CKM_EC_KEY_PAIR_GEN, CKM_ECDSA], "only the allowed mechanisms are listed");
    expect_err(ctx.p11.get_mechanism_info(ctx.slot, MechanismType::RSA_PKCS), RvError::MechanismInvalid);

    let s = ctx.user();
    // Allowed: EC key generation and ECDSA.
    let (public, private) = ec_pair(&s, P256_PARAMS, "allowed", false);
    let digest = [0x42u8; 32];
    let sig = s.sign(&Mechanism::Ecdsa, private, &digest).expect("ECDSA is allowed");
    s.verify(&Mechanism::Ecdsa, public, &digest, &sig).expect("ECDSA verify is allowed");
    // Refused: everything else, at init and at generation.
    expect_err(s.digest(&Mechanism::Sha256, b"data"), RvError::MechanismInvalid);
    expect_err(
        s.generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::Token(false), Attribute::ModulusBits(2048.into())],
            &[Attribute::Token(false)],
        ),
        RvError::MechanismInvalid,
    );
    expect_err(s.sign(&Mechanism::EcdsaSha256, private, b"data"), RvError::MechanismInvalid);
    expect_err(
        s.generate_key(&Mechanism::AesKeyGen, &[Attribute::ValueLen(32.into()), Attribute::Token(false)]),
        RvError::MechanismInvalid,
    );
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("agent log");
    assert!(log.contains("refused:") && log.contains("CKM_SHA256"), "the refusal and its reason are not logged:\n{log}");
});
