//! Slot and token management: slot list (two-call convention), slot and
//! token information, mechanisms, C_InitToken (lab and strict policies),
//! C_InitPIN and C_SetPIN.

use cryptoki::error::RvError;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use cryptoki_sys::*;
use keyward_tests::p11::{expect_err, reference, Ctx};
use keyward_tests::raw::{rv_name, Out};
use keyward_tests::{assert_rv, keyward_test};

const BAD_SLOT: CK_SLOT_ID = 0x7fff_0bad;

keyward_test!(fn slot_list_two_call_convention(tb) {
    let ctx = Ctx::new(&tb);
    let q = ctx.raw.slot_list(true, Out::Null);
    assert_rv!(q.rv, CKR_OK, "slot count");
    assert!(q.len >= 1, "no slot with a token");
    let full = ctx.raw.slot_list(true, Out::Cap(q.len as usize));
    assert_rv!(full.rv, CKR_OK);
    assert_eq!(full.len, q.len);
    assert!(full.data.contains(&ctx.slot_id()), "{:?} lacks the token's slot {}", full.data, ctx.slot_id());
    let big = ctx.raw.slot_list(true, Out::Cap(q.len as usize + 5));
    assert_rv!(big.rv, CKR_OK);
    assert_eq!(big.len, q.len, "a larger buffer gets the real count");
    let short = ctx.raw.slot_list(true, Out::Cap(q.len as usize - 1));
    assert_rv!(short.rv, CKR_BUFFER_TOO_SMALL);
    assert_eq!(short.len, q.len, "BUFFER_TOO_SMALL reports the needed count");
    let all = ctx.raw.slot_list(false, Out::Null);
    assert_rv!(all.rv, CKR_OK);
    assert!(all.len >= q.len, "all slots ({}) fewer than slots with a token ({})", all.len, q.len);
    assert_rv!(ctx.raw.slot_list_null_count(), CKR_ARGUMENTS_BAD);
});

keyward_test!(fn slot_and_token_info(tb) {
    let ctx = Ctx::new(&tb);
    let (rv, si) = ctx.raw.slot_info(ctx.slot_id());
    assert_rv!(rv, CKR_OK);
    assert!(si.flags & CKF_TOKEN_PRESENT != 0, "CKF_TOKEN_PRESENT clear: {:#x}", si.flags);
    assert!(!si.slotDescription.contains(&0), "slotDescription must be blank-padded");
    let info = ctx.p11.get_token_info(ctx.slot).expect("C_GetTokenInfo");
    assert_eq!(info.label().trim_end(), tb.token);
    assert!(info.login_required(), "CKF_LOGIN_REQUIRED");
    assert!(info.user_pin_initialized(), "CKF_USER_PIN_INITIALIZED");
    assert!(info.token_initialized(), "CKF_TOKEN_INITIALIZED");
    assert!(info.rng(), "CKF_RNG");
    assert!(info.max_pin_length() >= info.min_pin_length());
    let (rv, ti) = ctx.raw.token_info(ctx.slot_id());
    assert_rv!(rv, CKR_OK);
    assert!(!ti.label.contains(&0) && !ti.serialNumber.contains(&0), "token strings must be blank-padded");

    assert_rv!(ctx.raw.slot_info(BAD_SLOT).0, CKR_SLOT_ID_INVALID);
    assert_rv!(ctx.raw.token_info(BAD_SLOT).0, CKR_SLOT_ID_INVALID);
    assert_rv!(ctx.raw.slot_info_null(ctx.slot_id()), CKR_ARGUMENTS_BAD);
    assert_rv!(ctx.raw.token_info_null(ctx.slot_id()), CKR_ARGUMENTS_BAD);
});

/// Mechanisms every SoftHSM2 2.6 token has and the suite uses.
const EXPECTED_MECHANISMS: &[(CK_MECHANISM_TYPE, &str)] = &[
    (CKM_RSA_PKCS_KEY_PAIR_GEN, "RSA_PKCS_KEY_PAIR_GEN"),
    (CKM_RSA_PKCS, "RSA_PKCS"),
    (CKM_SHA256_RSA_PKCS, "SHA256_RSA_PKCS"),
    (CKM_RSA_PKCS_PSS, "RSA_PKCS_PSS"),
    (CKM_SHA256_RSA_PKCS_PSS, "SHA256_RSA_PKCS_PSS"),
    (CKM_RSA_PKCS_OAEP, "RSA_PKCS_OAEP"),
    (CKM_EC_KEY_PAIR_GEN, "EC_KEY_PAIR_GEN"),
    (CKM_ECDSA, "ECDSA"),
    (CKM_ECDH1_DERIVE, "ECDH1_DERIVE"),
    (CKM_AES_KEY_GEN, "AES_KEY_GEN"),
    (CKM_AES_ECB, "AES_ECB"),
    (CKM_AES_CBC, "AES_CBC"),
    (CKM_AES_CBC_PAD, "AES_CBC_PAD"),
    (CKM_AES_CTR, "AES_CTR"),
    (CKM_AES_GCM, "AES_GCM"),
    (CKM_AES_KEY_WRAP, "AES_KEY_WRAP"),
    (CKM_AES_KEY_WRAP_PAD, "AES_KEY_WRAP_PAD"),
    (CKM_SHA_1, "SHA_1"),
    (CKM_SHA256, "SHA256"),
    (CKM_SHA512, "SHA512"),
    (CKM_SHA256_HMAC, "SHA256_HMAC"),
    (CKM_GENERIC_SECRET_KEY_GEN, "GENERIC_SECRET_KEY_GEN"),
];

keyward_test!(fn mechanism_list_and_info(tb) {
    let ctx = Ctx::new(&tb);
    let slot = ctx.slot_id();
    let q = ctx.raw.mechanism_list(slot, Out::Null);
    assert_rv!(q.rv, CKR_OK);
    assert!(q.len > 0);
    let full = ctx.raw.mechanism_list(slot, Out::Cap(q.len as usize));
    assert_rv!(full.rv, CKR_OK);
    assert_eq!(full.len, q.len);
    let short = ctx.raw.mechanism_list(slot, Out::Cap(q.len as usize - 1));
    assert_rv!(short.rv, CKR_BUFFER_TOO_SMALL);
    assert_eq!(short.len, q.len, "BUFFER_TOO_SMALL reports the needed count");
    assert_rv!(ctx.raw.mechanism_list_null_count(slot), CKR_ARGUMENTS_BAD);
    assert_rv!(ctx.raw.mechanism_list(BAD_SLOT, Out::Null).rv, CKR_SLOT_ID_INVALID);
    let missing: Vec<&str> = EXPECTED_MECHANISMS
        .iter()
        .filter(|(m, _)| !full.data.contains(m))
        .map(|(_, n)| *n)
        .collect();
    assert!(missing.is_empty(), "mechanisms missing from the list: {missing:?}");
    // cryptoki's view (which drops types it does not know) agrees.
    let typed = ctx.p11.get_mechanism_list(ctx.slot).expect("get_mechanism_list");
    assert!(typed.iter().all(|m| full.data.contains(&CK_MECHANISM_TYPE::from(*m))));

    let (rv, info) = ctx.raw.mechanism_info(slot, CKM_RSA_PKCS_KEY_PAIR_GEN);
    assert_rv!(rv, CKR_OK);
    assert!(info.flags & CKF_GENERATE_KEY_PAIR != 0, "RSA keygen lacks CKF_GENERATE_KEY_PAIR");
    assert!(info.ulMinKeySize <= 2048 && info.ulMaxKeySize >= 2048, "RSA sizes {}..{}", info.ulMinKeySize, info.ulMaxKeySize);
    let (rv, info) = ctx.raw.mechanism_info(slot, CKM_SHA256_RSA_PKCS);
    assert_rv!(rv, CKR_OK);
    assert!(info.flags & CKF_SIGN != 0 && info.flags & CKF_VERIFY != 0);
    let (rv, info) = ctx.raw.mechanism_info(slot, CKM_AES_GCM);
    assert_rv!(rv, CKR_OK);
    assert!(info.flags & CKF_ENCRYPT != 0 && info.flags & CKF_DECRYPT != 0);
    let typed = ctx.p11.get_mechanism_info(ctx.slot, MechanismType::ECDSA).expect("get_mechanism_info");
    assert!(typed.sign());
    assert_rv!(ctx.raw.mechanism_info(slot, CKM_VENDOR_DEFINED | 0x4242).0, CKR_MECHANISM_INVALID);
    assert_rv!(ctx.raw.mechanism_info(BAD_SLOT, CKM_SHA256).0, CKR_SLOT_ID_INVALID);
    assert_rv!(ctx.raw.mechanism_info_null(slot, CKM_SHA256), CKR_ARGUMENTS_BAD);
});

keyward_test!(fn mechanism_list_has_what_softhsm_has(tb) {
    let r = reference(&tb);
    let theirs = r.raw.mechanism_list(r.slot_id(), Out::Cap(512));
    assert_rv!(theirs.rv, CKR_OK);
    let ctx = Ctx::new(&tb);
    let ours = ctx.raw.mechanism_list(ctx.slot_id(), Out::Cap(512));
    assert_rv!(ours.rv, CKR_OK);
    let missing: Vec<String> = theirs
        .data
        .iter()
        .filter(|m| !ours.data.contains(m))
        .map(|&m| format!("{} ({m:#x})", MechanismType::try_from(m).map(|t| t.to_string()).unwrap_or_default()))
        .collect();
    assert!(missing.is_empty(), "SoftHSM2 lists mechanisms the module does not: {missing:?}");
    // Same flags and sizes for what both list.
    for &m in &theirs.data {
        let (rv1, a) = r.raw.mechanism_info(r.slot_id(), m);
        let (rv2, b) = ctx.raw.mechanism_info(ctx.slot_id(), m);
        assert_rv!(rv1, CKR_OK);
        assert_rv!(rv2, CKR_OK, "C_GetMechanismInfo({m:#x})");
        assert_eq!(
            (a.flags, a.ulMinKeySize, a.ulMaxKeySize),
            (b.flags, b.ulMinKeySize, b.ulMaxKeySize),
            "mechanism info of {m:#x} differs from SoftHSM2's"
        );
    }
});

fn data_object(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(b"some data".to_vec()),
    ]
}

keyward_test!(fn init_token_on_lab_policy(tb) {
    let ctx = Ctx::new(&tb);
    {
        let s = ctx.user();
        s.create_object(&data_object("before-init")).expect("C_CreateObject");
        // A session is open: C_InitToken must refuse.
        assert_rv!(
            ctx.raw.init_token(ctx.slot_id(), tb.so_pin.as_bytes(), &tb.token),
            CKR_SESSION_EXISTS,
            "C_InitToken with a session open"
        );
    }
    let wrong = ctx.raw.init_token(ctx.slot_id(), b"wrong-so-pin", &tb.token);
    assert_rv!(wrong, CKR_PIN_INCORRECT, "C_InitToken with a wrong SO PIN");
    assert_rv!(ctx.raw.init_token_null_label(ctx.slot_id(), tb.so_pin.as_bytes()), CKR_ARGUMENTS_BAD);
    assert_rv!(ctx.raw.init_token(ctx.slot_id(), tb.so_pin.as_bytes(), &tb.token), CKR_OK, "C_InitToken");

    let info = ctx.p11.get_token_info(ctx.slot).expect("C_GetTokenInfo");
    assert_eq!(info.label().trim_end(), tb.token);
    assert!(!info.user_pin_initialized(), "the user PIN must be reset by C_InitToken");
    let s = ctx.rw();
    let objs = s.find_objects(&[Attribute::Label(b"before-init".to_vec())]).expect("find");
    assert!(objs.is_empty(), "C_InitToken left objects behind: {objs:?}");
    // The old user PIN is gone; the SO sets a new one.
    expect_err(s.login(UserType::User, Some(&ctx.pin())), RvError::UserPinNotInitialized);
    s.login(UserType::So, Some(&ctx.so_pin())).expect("SO login after C_InitToken");
    s.init_pin(&AuthPin::new("fresh-pin".into())).expect("C_InitPIN");
    s.logout().expect("logout");
    s.login(UserType::User, Some(&AuthPin::new("fresh-pin".into()))).expect("user login with the new PIN");
    assert!(s.find_objects(&[Attribute::Label(b"before-init".to_vec())]).expect("find").is_empty());
});

keyward_test!(fn init_token_refused_on_strict_policy(tb) with ["--policy", "strict"] {
    tb.require_agent("the strict policy");
    let ctx = Ctx::new(&tb);
    {
        let s = ctx.user();
        s.create_object(&data_object("kept")).expect("C_CreateObject");
    }
    assert_rv!(
        ctx.raw.init_token(ctx.slot_id(), tb.so_pin.as_bytes(), &tb.token),
        CKR_ACTION_PROHIBITED,
        "C_InitToken on a strict token"
    );
    let s = ctx.user();
    assert_eq!(s.find_objects(&[Attribute::Label(b"kept".to_vec())]).expect("find").len(), 1, "objects must survive");
});

keyward_test!(fn init_pin_needs_so(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    let new_pin = AuthPin::new("654321".into());
    expect_err(s.init_pin(&new_pin), RvError::UserNotLoggedIn);
    s.login(UserType::User, Some(&ctx.pin())).expect("user login");
    expect_err(s.init_pin(&new_pin), RvError::UserNotLoggedIn);
    s.logout().expect("logout");
    s.login(UserType::So, Some(&ctx.so_pin())).expect("SO login");
    s.init_pin(&new_pin).expect("C_InitPIN as SO");
    s.logout().expect("logout");
    expect_err(s.login(UserType::User, Some(&ctx.pin())), RvError::PinIncorrect);
    s.login(UserType::User, Some(&new_pin)).expect("user login with the PIN the SO set");
});

keyward_test!(fn set_pin(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    s.login(UserType::User, Some(&ctx.pin())).expect("user login");
    let newer = AuthPin::new("7777777".into());
    expect_err(s.set_pin(&AuthPin::new("not-the-pin".into()), &newer), RvError::PinIncorrect);
    s.set_pin(&ctx.pin(), &newer).expect("C_SetPIN");
    s.logout().expect("logout");
    expect_err(s.login(UserType::User, Some(&ctx.pin())), RvError::PinIncorrect);
    s.login(UserType::User, Some(&newer)).expect("login with the new PIN");
    s.logout().expect("logout");
    // SO PIN change, in an SO session.
    s.login(UserType::So, Some(&ctx.so_pin())).expect("SO login");
    let new_so = AuthPin::new("so-87654321".into());
    s.set_pin(&ctx.so_pin(), &new_so).expect("C_SetPIN as SO");
    s.logout().expect("logout");
    expect_err(s.login(UserType::So, Some(&ctx.so_pin())), RvError::PinIncorrect);
    s.login(UserType::So, Some(&new_so)).expect("SO login with the new SO PIN");
    let rv = ctx.raw.set_pin(s.handle(), b"wrong", b"whatever1");
    assert!(rv == CKR_PIN_INCORRECT, "C_SetPIN with a wrong old SO PIN: {}", rv_name(rv));
});
