//! Sessions and login: open / close / close all, session states, handles,
//! PIN checks, SO and user interplay, private objects and use without login.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::{SessionState, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys::*;
use keyward_tests::p11::{ec_pair, expect_err, expect_err_in, Ctx, P256_PARAMS};
use keyward_tests::raw::{rv_name, Attr, AttrReq, Mech, Out};
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

keyward_test!(fn backend_pin_never_logs_in(tb) {
    tb.require_agent("the backend PIN of the testbed");
    let backend_pin = std::fs::read_to_string(tb.path("backend.pin")).expect("read the testbed's backend.pin");
    let backend_pin = backend_pin.lines().next().expect("backend.pin is empty").to_string();
    assert!(!backend_pin.is_empty() && backend_pin != tb.pin && backend_pin != tb.so_pin);
    let ctx = Ctx::new(&tb);
    let s = ctx.rw();
    let h = s.handle();
    assert_rv!(ctx.raw.login(h, CKU_USER, backend_pin.as_bytes()), CKR_PIN_INCORRECT, "C_Login(CKU_USER) with the HSM's PIN");
    assert_rv!(ctx.raw.login(h, CKU_SO, backend_pin.as_bytes()), CKR_PIN_INCORRECT, "C_Login(CKU_SO) with the HSM's PIN");
    assert_eq!(s.get_session_info().expect("info").session_state(), SessionState::RwPublic, "still not logged in");
    // Not as a C_SetPIN old PIN either, once logged in with the real one.
    s.login(UserType::User, Some(&ctx.pin())).expect("login with the virtual PIN");
    assert_rv!(ctx.raw.set_pin(h, backend_pin.as_bytes(), b"another-pin"), CKR_PIN_INCORRECT, "C_SetPIN with the HSM's PIN as the old PIN");
    s.logout().expect("logout");
    // The virtual PIN still works: nothing above changed it.
    s.login(UserType::User, Some(&ctx.pin())).expect("login with the virtual PIN after the attempts");
    // The token information does not leak the backend either.
    let info = ctx.p11.get_token_info(ctx.slot).expect("C_GetTokenInfo");
    assert_eq!(info.label().trim_end(), tb.token, "the application sees the virtual label");
    let config = std::fs::read_to_string(tb.path("keyward-agent.toml")).expect("read the agent config");
    let backend_label = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("backend_token_label"))
        .map(|v| v.trim_start_matches([' ', '=']).trim().trim_matches('"').to_string())
        .expect("backend_token_label in the testbed config");
    let slots = ctx.p11.get_slots_with_token().expect("slots");
    for sl in slots {
        let label = ctx.p11.get_token_info(sl).expect("token info").label().trim_end().to_string();
        assert_ne!(label, backend_label, "the backend token is visible to the application");
    }
});

keyward_test!(fn close_all_sessions_invalidates_every_handle(tb) {
    let ctx = Ctx::new(&tb);
    let slot = ctx.slot_id();
    let (rv, a) = ctx.raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    assert_rv!(rv, CKR_OK);
    let (rv, b) = ctx.raw.open_session(slot, CKF_SERIAL_SESSION);
    assert_rv!(rv, CKR_OK);
    assert_rv!(ctx.raw.login(a, CKU_USER, tb.pin.as_bytes()), CKR_OK);
    let t = [
        Attr::Ulong(CKA_CLASS, CKO_DATA),
        Attr::Bool(CKA_TOKEN, false),
        Attr::Bool(CKA_PRIVATE, false),
        Attr::Bytes(CKA_LABEL, b"session-object".to_vec()),
    ];
    let (rv, obj) = ctx.raw.create_object(a, &t);
    assert_rv!(rv, CKR_OK);
    let (rv, key) = ctx.raw.generate_key(
        b,
        &Mech::plain(CKM_AES_KEY_GEN),
        &[Attr::Bool(CKA_TOKEN, false), Attr::Ulong(CKA_VALUE_LEN, 16), Attr::Bool(CKA_ENCRYPT, true)],
    );
    assert_rv!(rv, CKR_OK);
    // An operation in progress, too.
    assert_rv!(ctx.raw.encrypt_init(b, &Mech::plain(CKM_AES_ECB), key), CKR_OK);

    assert_rv!(ctx.raw.close_all_sessions(slot), CKR_OK);
    for h in [a, b] {
        assert_rv!(ctx.raw.session_info(h).0, CKR_SESSION_HANDLE_INVALID, "session {h}");
        assert_rv!(ctx.raw.encrypt(h, &[0u8; 16], Out::Cap(16)).rv, CKR_SESSION_HANDLE_INVALID, "operation of session {h}");
        assert_rv!(ctx.raw.close_session(h), CKR_SESSION_HANDLE_INVALID, "closing session {h}");
    }
    // Session objects went with their sessions; login state went with the
    // last session.
    let (rv, c) = ctx.raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    assert_rv!(rv, CKR_OK);
    let (rv, info) = ctx.raw.session_info(c);
    assert_rv!(rv, CKR_OK);
    assert_eq!(info.state, CKS_RW_PUBLIC_SESSION, "logged in after C_CloseAllSessions");
    for o in [obj, key] {
        let mut q = [AttrReq::query(CKA_CLASS)];
        assert_rv!(ctx.raw.get_attributes(c, o, &mut q), CKR_OBJECT_HANDLE_INVALID, "session object {o} after C_CloseAllSessions");
    }
    assert_rv!(ctx.raw.find_objects_init(c, &[Attr::Bytes(CKA_LABEL, b"session-object".to_vec())]), CKR_OK);
    let (rv, found) = ctx.raw.find_objects(c, 8);
    assert_rv!(rv, CKR_OK);
    assert!(found.is_empty(), "session objects survive C_CloseAllSessions: {found:?}");
    assert_rv!(ctx.raw.find_objects_final(c), CKR_OK);
    assert_rv!(ctx.raw.close_all_sessions(CK_SLOT_ID::MAX - 7), CKR_SLOT_ID_INVALID);
});

keyward_test!(fn login_logout_pin_error_paths(tb) {
    let ctx = Ctx::new(&tb);
    let ro = ctx.ro();
    let rw = ctx.rw();
    let bad = 0xdead_beef;
    assert_rv!(ctx.raw.login(bad, CKU_USER, tb.pin.as_bytes()), CKR_SESSION_HANDLE_INVALID, "C_Login on an unknown session");
    assert_rv!(ctx.raw.logout(bad), CKR_SESSION_HANDLE_INVALID, "C_Logout on an unknown session");
    // SoftHSM2 2.6.1 direct answers CKR_OK to C_Logout without a login;
    // keyward's login is virtual and answers the spec's code.
    let not_logged_in = if tb.direct { CKR_OK } else { CKR_USER_NOT_LOGGED_IN };
    assert_rv!(ctx.raw.logout(ro.handle()), not_logged_in, "C_Logout without login");
    assert_rv!(ctx.raw.init_pin(bad, b"123456"), CKR_SESSION_HANDLE_INVALID, "C_InitPIN on an unknown session");
    assert_rv!(ctx.raw.set_pin(bad, tb.pin.as_bytes(), b"654321"), CKR_SESSION_HANDLE_INVALID, "C_SetPIN on an unknown session");
    // C_SetPIN without login changes the user PIN (spec: "public session"
    // state); in a read-only session it is refused.
    assert_rv!(ctx.raw.set_pin(ro.handle(), tb.pin.as_bytes(), b"654321"), CKR_SESSION_READ_ONLY, "C_SetPIN in a RO session");
    assert_rv!(ctx.raw.set_pin(rw.handle(), b"wrong-old", b"654321"), CKR_PIN_INCORRECT, "C_SetPIN with a wrong old PIN");
    assert_rv!(ctx.raw.set_pin_null_old(rw.handle(), 6, b"654321"), CKR_ARGUMENTS_BAD, "C_SetPIN NULL old PIN");
    // An SO session: C_InitPIN's NULL PIN.
    drop(ro);
    rw.login(UserType::So, Some(&ctx.so_pin())).expect("SO login");
    assert_rv!(ctx.raw.init_pin_null(rw.handle(), 6), CKR_ARGUMENTS_BAD, "C_InitPIN NULL PIN");
    rw.logout().expect("SO logout");
    // Wrong PINs do not log in, then the right one does (the agent's
    // answers are the backend's codes, unchanged).
    for wrong in ["", "1", "12345", "1234567", "x23456"] {
        let rv = ctx.raw.login(rw.handle(), CKU_USER, wrong.as_bytes());
        assert!(
            rv == CKR_PIN_INCORRECT || (wrong.len() < 4 && (rv == CKR_PIN_LEN_RANGE || rv == CKR_ARGUMENTS_BAD)),
            "C_Login with {wrong:?}: {}",
            rv_name(rv)
        );
    }
    assert_rv!(ctx.raw.login(rw.handle(), CKU_USER, tb.pin.as_bytes()), CKR_OK);
});
