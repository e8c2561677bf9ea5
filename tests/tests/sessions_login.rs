//! Sessions and login: open / close / close all, session states, handles,
//! PIN checks, SO and user interplay, private objects and use without login.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::{SessionState, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys::*;
use keyward_tests::p11::{ec_pair, expect_err, expect_err_in, Ctx, P256_PARAMS};
use keyward_tests::{assert_rv, keyward_test};

keyward_test!(fn open_and_close_sessions(tb) {
    let ctx = Ctx::new(&tb);
    let slot = ctx.slot_id();
    let (rv, ro) = ctx.raw.open_session(slot, CKF_SERIAL_SESSION);
    assert_rv!(rv, CKR_OK);
    let (rv, info) = ctx.raw.session_info(ro);
    assert_rv!(rv, CKR_OK);
    assert_eq!(info.slotID, slot);
    assert_eq!(info.state, CKS_RO_PUBLIC_SESSION);
    assert_eq!(info.flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION), CKF_SERIAL_SESSION);
    let (rv, rw) = ctx.raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    assert_rv!(rv, CKR_OK);
    assert_ne!(ro, rw, "two sessions got the same handle");
    let (rv, info) = ctx.raw.session_info(rw);
    assert_rv!(rv, CKR_OK);
    assert_eq!(info.state, CKS_RW_PUBLIC_SESSION);
    assert_eq!(info.flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION), CKF_SERIAL_SESSION | CKF_RW_SESSION);

    assert_rv!(ctx.raw.open_session(slot, CKF_RW_SESSION).0, CKR_SESSION_PARALLEL_NOT_SUPPORTED, "no CKF_SERIAL_SESSION");
    assert_rv!(ctx.raw.open_session(slot, 0).0, CKR_SESSION_PARALLEL_NOT_SUPPORTED, "flags 0");
    assert_rv!(ctx.raw.open_session_null(slot), CKR_ARGUMENTS_BAD, "NULL phSession");
    assert_rv!(ctx.raw.open_session(0x7fff_0bad, CKF_SERIAL_SESSION).0, CKR_SLOT_ID_INVALID);
    assert_rv!(ctx.raw.session_info_null(ro), CKR_ARGUMENTS_BAD);

    assert_rv!(ctx.raw.close_session(ro), CKR_OK);
    assert_rv!(ctx.raw.close_session(ro), CKR_SESSION_HANDLE_INVALID, "closing twice");
    assert_rv!(ctx.raw.session_info(ro).0, CKR_SESSION_HANDLE_INVALID, "info of a closed session");
    assert_rv!(ctx.raw.session_info(0xdead_beef).0, CKR_SESSION_HANDLE_INVALID);
    assert_rv!(ctx.raw.session_info(CK_INVALID_HANDLE).0, CKR_SESSION_HANDLE_INVALID);
    assert_rv!(ctx.raw.generate_random(0xdead_beef, 4).0, CKR_SESSION_HANDLE_INVALID);

    let more: Vec<CK_SESSION_HANDLE> = (0..3)
        .map(|_| {
            let (rv, h) = ctx.raw.open_session(slot, CKF_SERIAL_SESSION);
            assert_rv!(rv, CKR_OK);
            h
        })
        .collect();
    assert_rv!(ctx.raw.close_all_sessions(slot), CKR_OK);
    for h in more.iter().chain([&rw]) {
        assert_rv!(ctx.raw.session_info(*h).0, CKR_SESSION_HANDLE_INVALID, "session {h} after C_CloseAllSessions");
    }
    assert_rv!(ctx.raw.close_all_sessions(0x7fff_0bad), CKR_SLOT_ID_INVALID);
    // Sessions can be opened again.
    let s = ctx.ro();
    assert_eq!(s.get_session_info().expect("info").session_state(), SessionState::RoPublic);
});

keyward_test!(fn login_and_logout(tb) {
    let ctx = Ctx::new(&tb);
    let ro = ctx.ro();
    let rw = ctx.rw();
    expect_err(rw.login(UserType::User, Some(&AuthPin::new("000000".into()))), RvError::PinIncorrect);
    assert_eq!(rw.get_session_info().expect("info").session_state(), SessionState::RwPublic);
    assert_rv!(ctx.raw.login_null_pin(rw.handle(), CKU_USER, 6), CKR_ARGUMENTS_BAD, "NULL PIN with a length");
    assert_rv!(ctx.raw.login(rw.handle(), 42, tb.pin.as_bytes()), CKR_USER_TYPE_INVALID);
    rw.login(UserType::User, Some(&ctx.pin())).expect("login with the right PIN");
    assert_eq!(rw.get_session_info().expect("info").session_state(), SessionState::RwUser);
    // Login state is per application: the RO session is logged in too.
    assert_eq!(ro.get_session_info().expect("info").session_state(), SessionState::RoUser);
    expect_err(rw.login(UserType::User, Some(&ctx.pin())), RvError::UserAlreadyLoggedIn);
    expect_err(ro.login(UserType::User, Some(&ctx.pin())), RvError::UserAlreadyLoggedIn);
    // A session opened after login starts logged in.
    let later = ctx.rw();
    assert_eq!(later.get_session_info().expect("info").session_state(), SessionState::RwUser);
    ro.logout().expect("logout from another session");
    assert_eq!(rw.get_session_info().expect("info").session_state(), SessionState::RwPublic);
    expect_err(rw.logout(), RvError::UserNotLoggedIn);
    // Wrong PIN again after a good login still fails; the right one works.
    expect_err(rw.login(UserType::User, Some(&AuthPin::new("1234567".into()))), RvError::PinIncorrect);
    rw.login(UserType::User, Some(&ctx.pin())).expect("login again");
});

keyward_test!(fn so_login_rules(tb) {
    let ctx = Ctx::new(&tb);
    let rw = ctx.rw();
    {
        let _ro = ctx.ro();
        expect_err(rw.login(UserType::So, Some(&ctx.so_pin())), RvError::SessionReadOnlyExists);
    }
    expect_err(rw.login(UserType::So, Some(&AuthPin::new("wrong-so".into()))), RvError::PinIncorrect);
    rw.login(UserType::So, Some(&ctx.so_pin())).expect("SO login");
    assert_eq!(rw.get_session_info().expect("info").session_state(), SessionState::RwSecurityOfficer);
    expect_err(ctx.p11.open_ro_session(ctx.slot), RvError::SessionReadWriteSoExists);
    expect_err(rw.login(UserType::User, Some(&ctx.pin())), RvError::UserAnotherAlreadyLoggedIn);
    rw.logout().expect("SO logout");
    rw.login(UserType::User, Some(&ctx.pin())).expect("user login after SO logout");
    expect_err(rw.login(UserType::So, Some(&ctx.so_pin())), RvError::UserAnotherAlreadyLoggedIn);
});

keyward_test!(fn private_objects_need_login(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    for (label, private) in [("pub-obj", false), ("priv-obj", true)] {
        s.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(b"x".to_vec()),
        ])
        .expect("C_CreateObject");
    }
    let (_, private_key) = ec_pair(&s, P256_PARAMS, "login-key", true);
    let mech = Mechanism::Ecdsa;
    s.sign(&mech, private_key, &[1u8; 32]).expect("sign while logged in");
    s.logout().expect("logout");

    let find = |label: &str| s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())]).expect("find");
    assert_eq!(find("pub-obj").len(), 1, "public objects stay visible");
    assert!(find("priv-obj").is_empty(), "a private object is visible without login");
    assert!(find("login-key").iter().all(|&h| {
        s.get_attributes(h, &[cryptoki::object::AttributeType::Class]).expect("attrs")
            == vec![Attribute::Class(ObjectClass::PUBLIC_KEY)]
    }), "only the public half of the key may be visible");
    // A fresh session, not logged in, sees the same.
    let other = ctx.ro();
    assert!(other.find_objects(&[Attribute::Label(b"priv-obj".to_vec())]).expect("find").is_empty());

    // Use without login: the private key handle from before the logout.
    expect_err_in(
        s.sign(&mech, private_key, &[2u8; 32]),
        &[RvError::KeyHandleInvalid, RvError::ObjectHandleInvalid, RvError::UserNotLoggedIn],
    );
    expect_err_in(
        s.get_attributes(private_key, &[cryptoki::object::AttributeType::Label]),
        &[RvError::ObjectHandleInvalid, RvError::UserNotLoggedIn],
    );
    // Creating a private object without login is refused.
    expect_err_in(
        s.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Value(b"x".to_vec()),
        ]),
        &[RvError::UserNotLoggedIn],
    );
    s.login(UserType::User, Some(&ctx.pin())).expect("login again");
    assert_eq!(find("priv-obj").len(), 1, "private object visible after login");
    let keys = s
        .find_objects(&[Attribute::Label(b"login-key".to_vec()), Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .expect("find");
    assert_eq!(keys.len(), 1);
    s.sign(&mech, keys[0], &[3u8; 32]).expect("sign after a new login");
});
