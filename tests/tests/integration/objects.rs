//! Objects: create, copy, destroy, size, attribute reads (buffer-size
//! convention per attribute, sensitive and invalid types) and writes, search
//! in batches, template-valued attributes, allowed mechanisms.

use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass};
use cryptoki_sys::*;
use keyward_tests::p11::{aes_key, ec_pair, expect_err, expect_err_in, rsa_pair, Ctx, P256_PARAMS};
use keyward_tests::raw::{object_handle, rv_name, Attr, AttrReq, Mech};
use keyward_tests::{assert_rv, keyward_test};

fn data(label: &str, token: bool, value: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(token),
        Attribute::Private(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Application(b"keyward-tests".to_vec()),
        Attribute::Value(value.to_vec()),
    ]
}

keyward_test!(fn data_object_lifecycle(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let o = s.create_object(&data("lifecycle", false, b"hello")).expect("C_CreateObject");
    let got = s.get_attributes(o, &[AttributeType::Label, AttributeType::Value, AttributeType::Token]).expect("read");
    assert_eq!(
        got,
        vec![
            Attribute::Label(b"lifecycle".to_vec()),
            Attribute::Value(b"hello".to_vec()),
            Attribute::Token(false)
        ]
    );
    let (rv, size) = ctx.raw.object_size(h, o.handle());
    assert_rv!(rv, CKR_OK, "C_GetObjectSize");
    assert!(size > 0, "object size {size}");
    assert_rv!(ctx.raw.object_size_null(h, o.handle()), CKR_ARGUMENTS_BAD);
    assert_rv!(ctx.raw.object_size(h, 0xdead_beef).0, CKR_OBJECT_HANDLE_INVALID);

    s.update_attributes(o, &[Attribute::Label(b"renamed".to_vec())]).expect("C_SetAttributeValue");
    assert_eq!(
        s.get_attributes(o, &[AttributeType::Label, AttributeType::Value]).expect("read"),
        vec![Attribute::Label(b"renamed".to_vec()), Attribute::Value(b"hello".to_vec())]
    );
    let copy = s.copy_object(o, &[Attribute::Label(b"copy".to_vec())]).expect("C_CopyObject");
    assert_ne!(copy, o);
    assert_eq!(
        s.get_attributes(copy, &[AttributeType::Label, AttributeType::Value]).expect("read copy"),
        vec![Attribute::Label(b"copy".to_vec()), Attribute::Value(b"hello".to_vec())]
    );
    // A token copy of a session object.
    let tcopy = s.copy_object(o, &[Attribute::Token(true)]).expect("C_CopyObject to the token");
    assert_eq!(s.get_attributes(tcopy, &[AttributeType::Token]).expect("read"), vec![Attribute::Token(true)]);

    s.destroy_object(o).expect("C_DestroyObject");
    expect_err(s.get_attributes(o, &[AttributeType::Label]), RvError::ObjectHandleInvalid);
    expect_err(s.destroy_object(o), RvError::ObjectHandleInvalid);
    s.destroy_object(copy).expect("destroy the copy");
    s.destroy_object(tcopy).expect("destroy the token copy");
    assert_rv!(ctx.raw.destroy_object(h, 0xdead_beef), CKR_OBJECT_HANDLE_INVALID);

    // NULL template / NULL handle pointer.
    let t = [Attr::Ulong(CKA_CLASS, CKO_DATA), Attr::Bool(CKA_TOKEN, false)];
    assert_rv!(ctx.raw.create_object_null(h, &t, false), CKR_ARGUMENTS_BAD, "NULL template");
    assert_rv!(ctx.raw.create_object_null(h, &t, true), CKR_ARGUMENTS_BAD, "NULL phObject");
    assert_rv!(ctx.raw.create_object(0xdead_beef, &t).0, CKR_SESSION_HANDLE_INVALID);

    // Token objects need a RW session.
    let ro = ctx.ro();
    expect_err(ro.create_object(&data("ro", true, b"x")), RvError::SessionReadOnly);
    ro.create_object(&data("ro-session-object", false, b"x")).expect("session object in a RO session");
});

keyward_test!(fn certificate_object(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    // The token stores certificates without parsing them; any DER will do.
    let der = vec![0x30, 0x03, 0x02, 0x01, 0x01];
    let subject = vec![0x30, 0x0f, 0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x04, b't', b'e', b's', b't'];
    let cert = s
        .create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Label(b"a-cert".to_vec()),
            Attribute::Id(vec![0xc0, 0xde]),
            Attribute::Subject(subject.clone()),
            Attribute::Value(der.clone()),
        ])
        .expect("C_CreateObject (certificate)");
    let found = s.find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)]).expect("find certificates");
    assert_eq!(found, vec![cert]);
    assert_eq!(
        s.get_attributes(cert, &[AttributeType::Value, AttributeType::Subject, AttributeType::CertificateType])
            .expect("read"),
        vec![Attribute::Value(der), Attribute::Subject(subject), Attribute::CertificateType(CertificateType::X_509)]
    );
    // Visible without login (certificates are public by default).
    s.logout().expect("logout");
    assert_eq!(s.find_objects(&[Attribute::Id(vec![0xc0, 0xde])]).expect("find").len(), 1);
});

keyward_test!(fn attribute_buffer_convention(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let value = b"twenty bytes of data".to_vec();
    let o = s.create_object(&data("buffers", false, &value)).expect("create").handle();

    // Length queries.
    let mut q = [AttrReq::query(CKA_LABEL), AttrReq::query(CKA_VALUE), AttrReq::query(CKA_CLASS)];
    assert_rv!(ctx.raw.get_attributes(h, o, &mut q), CKR_OK);
    assert_eq!(q[0].len, 7);
    assert_eq!(q[1].len, value.len() as CK_ULONG);
    assert_eq!(q[2].len, std::mem::size_of::<CK_ULONG>() as CK_ULONG);

    // Exact buffers.
    let mut r = [AttrReq::with_cap(CKA_LABEL, 7), AttrReq::with_cap(CKA_VALUE, value.len())];
    assert_rv!(ctx.raw.get_attributes(h, o, &mut r), CKR_OK);
    assert_eq!(r[0].value, b"buffers");
    assert_eq!(r[1].value, value);

    // One short buffer: BUFFER_TOO_SMALL, that entry unavailable, the
    // others still filled in.
    let mut r = [
        AttrReq::with_cap(CKA_LABEL, 64),
        AttrReq::with_cap(CKA_VALUE, value.len() - 1),
        AttrReq::with_cap(CKA_APPLICATION, 64),
    ];
    assert_rv!(ctx.raw.get_attributes(h, o, &mut r), CKR_BUFFER_TOO_SMALL);
    assert_eq!(r[0].len, 7, "label length alongside a short buffer");
    assert_eq!(r[0].value, b"buffers");
    assert_eq!(r[1].len, CK_UNAVAILABLE_INFORMATION, "short entry must be CK_UNAVAILABLE_INFORMATION");
    assert_eq!(r[2].value, b"keyward-tests");
    // A buffer of zero bytes (non-NULL pointer) is short too.
    let mut r = [AttrReq::with_cap(CKA_LABEL, 0)];
    let rv = ctx.raw.get_attributes(h, o, &mut r);
    assert!(
        (rv == CKR_BUFFER_TOO_SMALL && r[0].len == CK_UNAVAILABLE_INFORMATION) || (rv == CKR_OK && r[0].len == 7),
        "zero-length buffer: {} len {}",
        rv_name(rv),
        r[0].len
    );

    // Invalid type: ATTRIBUTE_TYPE_INVALID, the others still answered.
    let mut r = [AttrReq::with_cap(CKA_VENDOR_DEFINED | 0x4b57, 16), AttrReq::with_cap(CKA_LABEL, 16)];
    assert_rv!(ctx.raw.get_attributes(h, o, &mut r), CKR_ATTRIBUTE_TYPE_INVALID);
    assert_eq!(r[0].len, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(r[1].value, b"buffers");
    // An attribute data objects do not have.
    let mut r = [AttrReq::query(CKA_MODULUS)];
    assert_rv!(ctx.raw.get_attributes(h, o, &mut r), CKR_ATTRIBUTE_TYPE_INVALID);

    // Sensitive attribute of a private key.
    let (public, private) = rsa_pair(&s, 1024, "sensitive", false);
    let mut r = [AttrReq::with_cap(CKA_PRIVATE_EXPONENT, 512), AttrReq::with_cap(CKA_MODULUS, 512)];
    assert_rv!(ctx.raw.get_attributes(h, private.handle(), &mut r), CKR_ATTRIBUTE_SENSITIVE);
    assert_eq!(r[0].len, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(r[1].len, 128, "the modulus is still returned");
    let mut r = [AttrReq::query(CKA_PRIVATE_EXPONENT)];
    assert_rv!(ctx.raw.get_attributes(h, private.handle(), &mut r), CKR_ATTRIBUTE_SENSITIVE);
    // A public key has no private exponent.
    let mut r = [AttrReq::query(CKA_PRIVATE_EXPONENT)];
    assert_rv!(ctx.raw.get_attributes(h, public.handle(), &mut r), CKR_ATTRIBUTE_TYPE_INVALID);

    assert_rv!(ctx.raw.get_attributes_null_template(h, o), CKR_ARGUMENTS_BAD);
    assert_rv!(ctx.raw.get_attributes(h, 0xdead_beef, &mut [AttrReq::query(CKA_LABEL)]), CKR_OBJECT_HANDLE_INVALID);

    // Writes: read-only attribute, invalid value.
    assert_rv!(ctx.raw.set_attributes(h, o, &[Attr::Ulong(CKA_CLASS, CKO_SECRET_KEY)]), CKR_ATTRIBUTE_READ_ONLY);
    let rv = ctx.raw.set_attributes(h, private.handle(), &[Attr::Bool(CKA_SENSITIVE, false)]);
    assert!(
        rv == CKR_ATTRIBUTE_READ_ONLY || rv == CKR_ATTRIBUTE_VALUE_INVALID,
        "un-setting CKA_SENSITIVE: {}",
        rv_name(rv)
    );
});

keyward_test!(fn find_objects_in_batches(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let mut batch = Vec::new();
    for i in 0..7u8 {
        batch.push(s.create_object(&data("batch", i % 2 == 0, &[i])).expect("create").handle());
    }
    for i in 0..2u8 {
        let mut t = data("other", false, &[i]);
        t.push(Attribute::ObjectId(vec![0x06, 0x02, 0x2a, i]));
        s.create_object(&t).expect("create");
    }

    assert_rv!(ctx.raw.find_objects(h, 3).0, CKR_OPERATION_NOT_INITIALIZED, "C_FindObjects without init");
    assert_rv!(ctx.raw.find_objects_final(h), CKR_OPERATION_NOT_INITIALIZED, "C_FindObjectsFinal without init");
    assert_rv!(ctx.raw.find_objects_init_null(h), CKR_ARGUMENTS_BAD, "NULL template, count 1");

    assert_rv!(ctx.raw.find_objects_init(h, &[Attr::Bytes(CKA_LABEL, b"batch".to_vec())]), CKR_OK);
    assert_rv!(ctx.raw.find_objects_init(h, &[]), CKR_OPERATION_ACTIVE, "a second C_FindObjectsInit");
    assert_rv!(ctx.raw.find_objects_null_count(h), CKR_ARGUMENTS_BAD, "NULL pulObjectCount");
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let (rv, got) = ctx.raw.find_objects(h, 3);
        assert_rv!(rv, CKR_OK);
        sizes.push(got.len());
        if got.is_empty() {
            break;
        }
        seen.extend(got);
        assert!(sizes.len() < 10, "C_FindObjects never ends: {sizes:?}");
    }
    assert_eq!(sizes, vec![3, 3, 1, 0], "batches of 3");
    assert_rv!(ctx.raw.find_objects_final(h), CKR_OK);
    seen.sort();
    batch.sort();
    assert_eq!(seen, batch);
    assert_rv!(ctx.raw.find_objects(h, 3).0, CKR_OPERATION_NOT_INITIALIZED, "after C_FindObjectsFinal");

    // By class, id, several attributes; the empty template finds all.
    let all_data = s.find_objects(&[Attribute::Class(ObjectClass::DATA)]).expect("find by class");
    assert_eq!(all_data.len(), 9);
    let by_id = s.find_objects(&[Attribute::ObjectId(vec![0x06, 0x02, 0x2a, 1])]).expect("find by object id");
    assert_eq!(by_id.len(), 1);
    let token_batch = s
        .find_objects(&[Attribute::Label(b"batch".to_vec()), Attribute::Token(true)])
        .expect("find by label and token");
    assert_eq!(token_batch.len(), 4);
    let everything = s.find_objects(&[]).expect("find all");
    assert!(everything.len() >= 9);
    assert!(s.find_objects(&[Attribute::Label(b"nothing".to_vec())]).expect("find").is_empty());
    // cryptoki's iterator (small cache) agrees.
    let iterated: Vec<_> = s
        .iter_objects_with_cache_size(&[Attribute::Label(b"batch".to_vec())], std::num::NonZeroUsize::new(2).unwrap())
        .expect("iter")
        .collect::<Result<_, _>>()
        .expect("iterate");
    assert_eq!(iterated.len(), 7);
});

fn ulongs(v: &[CK_ULONG]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

keyward_test!(fn wrap_template_and_allowed_mechanisms(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let wrap_template = vec![Attr::Ulong(CKA_KEY_TYPE, CKK_AES), Attr::Bool(CKA_EXTRACTABLE, true)];
    let (rv, kek) = ctx.raw.generate_key(
        h,
        &Mech::plain(CKM_AES_KEY_GEN),
        &[
            Attr::Bool(CKA_TOKEN, false),
            Attr::Ulong(CKA_VALUE_LEN, 32),
            Attr::Bool(CKA_WRAP, true),
            Attr::Bool(CKA_UNWRAP, true),
            Attr::Bool(CKA_ENCRYPT, true),
            Attr::Template(CKA_WRAP_TEMPLATE, wrap_template),
            Attr::Bytes(CKA_ALLOWED_MECHANISMS, ulongs(&[CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD])),
        ],
    );
    assert_rv!(rv, CKR_OK, "C_GenerateKey with CKA_WRAP_TEMPLATE and CKA_ALLOWED_MECHANISMS");

    let read = ctx
        .raw
        .get_template_attribute(h, kek, CKA_WRAP_TEMPLATE)
        .unwrap_or_else(|(step, rv)| panic!("reading CKA_WRAP_TEMPLATE ({step}): {}", rv_name(rv)));
    let mut pairs: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> = read.into_iter().map(|a| (a.type_, a.value)).collect();
    pairs.sort();
    assert_eq!(
        pairs,
        vec![(CKA_KEY_TYPE, CKK_AES.to_ne_bytes().to_vec()), (CKA_EXTRACTABLE, vec![CK_TRUE])],
        "CKA_WRAP_TEMPLATE read back"
    );
    let allowed = s
        .get_attributes(cryptoki_handle(kek), &[AttributeType::AllowedMechanisms])
        .expect("read CKA_ALLOWED_MECHANISMS");
    assert_eq!(
        allowed,
        vec![Attribute::AllowedMechanisms(vec![MechanismType::AES_KEY_WRAP, MechanismType::AES_KEY_WRAP_PAD])]
    );

    // The allowed mechanisms are enforced.
    expect_err(s.encrypt(&Mechanism::AesEcb, cryptoki_handle(kek), &[0u8; 16]), RvError::MechanismInvalid);
    // The wrap template is enforced: an AES key matches, a generic secret does not.
    let aes = aes_key(&s, 16, true);
    s.wrap_key(&Mechanism::AesKeyWrap, cryptoki_handle(kek), aes).expect("wrap a key matching the template");
    let generic = s
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[Attribute::Token(false), Attribute::ValueLen(32.into()), Attribute::Extractable(true)],
        )
        .expect("generic secret");
    expect_err(s.wrap_key(&Mechanism::AesKeyWrap, cryptoki_handle(kek), generic), RvError::KeyNotWrappable);
    let (_, ec_private) = ec_pair(&s, P256_PARAMS, "not-extractable", false);
    expect_err_in(
        s.wrap_key(&Mechanism::AesKeyWrapPad, cryptoki_handle(kek), ec_private),
        &[RvError::KeyUnextractable, RvError::KeyNotWrappable],
    );
});

use keyward_tests::raw::object_handle as cryptoki_handle;

keyward_test!(fn object_calls_error_paths(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let bad_session = 0xdead_beef;
    let token_obj = s.create_object(&data("token-object", true, b"v")).expect("create").handle();
    let session_obj = s.create_object(&data("session-object", false, b"v")).expect("create").handle();
    let t = [Attr::Ulong(CKA_CLASS, CKO_DATA), Attr::Bool(CKA_TOKEN, false)];

    // Unknown sessions.
    assert_rv!(ctx.raw.copy_object(bad_session, session_obj, &[Attr::Bytes(CKA_LABEL, b"c".to_vec())]).0, CKR_SESSION_HANDLE_INVALID, "C_CopyObject");
    assert_rv!(ctx.raw.destroy_object(bad_session, session_obj), CKR_SESSION_HANDLE_INVALID, "C_DestroyObject");
    assert_rv!(ctx.raw.object_size(bad_session, session_obj).0, CKR_SESSION_HANDLE_INVALID, "C_GetObjectSize");
    assert_rv!(ctx.raw.get_attributes(bad_session, session_obj, &mut [AttrReq::query(CKA_LABEL)]), CKR_SESSION_HANDLE_INVALID);
    assert_rv!(ctx.raw.set_attributes(bad_session, session_obj, &[Attr::Bytes(CKA_LABEL, b"x".to_vec())]), CKR_SESSION_HANDLE_INVALID);
    assert_rv!(ctx.raw.find_objects_init(bad_session, &t), CKR_SESSION_HANDLE_INVALID, "C_FindObjectsInit");
    assert_rv!(ctx.raw.find_objects(bad_session, 4).0, CKR_SESSION_HANDLE_INVALID, "C_FindObjects");
    assert_rv!(ctx.raw.find_objects_final(bad_session), CKR_SESSION_HANDLE_INVALID, "C_FindObjectsFinal");
    // Unknown objects: the backend's code, unchanged.
    assert_rv!(ctx.raw.copy_object(h, 0xdead_beef, &[Attr::Bytes(CKA_LABEL, b"c".to_vec())]).0, CKR_OBJECT_HANDLE_INVALID, "C_CopyObject of an unknown object");
    assert_rv!(ctx.raw.set_attributes(h, 0xdead_beef, &[Attr::Bytes(CKA_LABEL, b"x".to_vec())]), CKR_OBJECT_HANDLE_INVALID);
    assert_rv!(ctx.raw.object_size(h, CK_INVALID_HANDLE).0, CKR_OBJECT_HANDLE_INVALID, "C_GetObjectSize(CK_INVALID_HANDLE)");
    // NULL arguments.
    assert_rv!(ctx.raw.copy_object_null(h, session_obj), CKR_ARGUMENTS_BAD, "C_CopyObject NULL phNewObject");
    assert_rv!(ctx.raw.copy_object_null_template(h, session_obj, 1).0, CKR_ARGUMENTS_BAD, "C_CopyObject NULL template, count 1");
    assert_rv!(ctx.raw.set_attributes_null(h, session_obj), CKR_ARGUMENTS_BAD, "C_SetAttributeValue NULL template");
    assert_rv!(ctx.raw.find_objects_init(h, &t), CKR_OK);
    assert_rv!(ctx.raw.find_objects_null_array(h), CKR_ARGUMENTS_BAD, "C_FindObjects NULL phObject");
    assert_rv!(ctx.raw.find_objects_final(h), CKR_OK);
    // Read-only sessions cannot change token objects.
    let ro = ctx.ro();
    let r = ro.handle();
    assert_rv!(ctx.raw.set_attributes(r, token_obj, &[Attr::Bytes(CKA_LABEL, b"x".to_vec())]), CKR_SESSION_READ_ONLY, "C_SetAttributeValue of a token object in a RO session");
    assert_rv!(ctx.raw.destroy_object(r, token_obj), CKR_SESSION_READ_ONLY, "C_DestroyObject of a token object in a RO session");
    assert_rv!(ctx.raw.copy_object(r, session_obj, &[Attr::Bool(CKA_TOKEN, true)]).0, CKR_SESSION_READ_ONLY, "C_CopyObject to the token in a RO session");
    // ... but may change session objects, which are the application's.
    assert_rv!(ctx.raw.set_attributes(r, session_obj, &[Attr::Bytes(CKA_LABEL, b"relabelled-ro".to_vec())]), CKR_OK, "C_SetAttributeValue of a session object in a RO session");
    // C_CopyObject with an attribute that may not change.
    let (rv, _) = ctx.raw.copy_object(h, session_obj, &[Attr::Ulong(CKA_CLASS, CKO_SECRET_KEY)]);
    assert!(rv == CKR_ATTRIBUTE_READ_ONLY || rv == CKR_TEMPLATE_INCONSISTENT, "C_CopyObject changing CKA_CLASS: {}", rv_name(rv));
    // A non-copyable object.
    let (rv, locked) = ctx.raw.create_object(h, &[Attr::Ulong(CKA_CLASS, CKO_DATA), Attr::Bool(CKA_TOKEN, false), Attr::Bool(CKA_COPYABLE, false)]);
    assert_rv!(rv, CKR_OK);
    assert_rv!(ctx.raw.copy_object(h, locked, &[Attr::Bytes(CKA_LABEL, b"c".to_vec())]).0, CKR_ACTION_PROHIBITED, "C_CopyObject of an object with CKA_COPYABLE false");
    // The objects are untouched by the refusals.
    assert_eq!(
        s.get_attributes(cryptoki_handle(token_obj), &[AttributeType::Label]).expect("read"),
        vec![Attribute::Label(b"token-object".to_vec())]
    );
});

keyward_test!(fn copy_and_relabel_a_key(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let (public, private) = ec_pair(&s, P256_PARAMS, "original-key", false);
    let copy = s.copy_object(private, &[Attribute::Label(b"copied-key".to_vec())]).expect("C_CopyObject of a private key");
    assert_ne!(copy, private);
    assert_eq!(
        s.get_attributes(copy, &[AttributeType::Label, AttributeType::Class, AttributeType::Sensitive]).expect("read the copy"),
        vec![Attribute::Label(b"copied-key".to_vec()), Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Sensitive(true)]
    );
    assert_eq!(
        s.get_attributes(private, &[AttributeType::Label]).expect("read the original"),
        vec![Attribute::Label(b"original-key".to_vec())],
        "C_CopyObject changed the original's label"
    );
    // The copy is the same key: its signature verifies with the original's
    // public half.
    let sig = s.sign(&Mechanism::Ecdsa, copy, &[1u8; 32]).expect("sign with the copy");
    s.verify(&Mechanism::Ecdsa, public, &[1u8; 32], &sig).expect("the copy's signature verifies");
    // Object sizes: both answer, with the same size for the same content.
    let (rv, size_original) = ctx.raw.object_size(h, private.handle());
    assert_rv!(rv, CKR_OK, "C_GetObjectSize of a private key");
    let (rv, size_copy) = ctx.raw.object_size(h, copy.handle());
    assert_rv!(rv, CKR_OK, "C_GetObjectSize of the copy");
    assert!(size_original > 0 && size_copy > 0);
    // Relabel the copy with C_SetAttributeValue; searches follow.
    s.update_attributes(copy, &[Attribute::Label(b"renamed-key".to_vec()), Attribute::Id(vec![9, 9])]).expect("C_SetAttributeValue");
    assert_eq!(s.find_objects(&[Attribute::Label(b"renamed-key".to_vec())]).expect("find"), vec![copy]);
    assert!(s.find_objects(&[Attribute::Label(b"copied-key".to_vec())]).expect("find").is_empty());
    assert_eq!(s.find_objects(&[Attribute::Id(vec![9, 9])]).expect("find"), vec![copy]);
    s.destroy_object(copy).expect("destroy the copy");
    s.sign(&Mechanism::Ecdsa, private, &[2u8; 32]).expect("the original still signs");
});

keyward_test!(fn copy_object_with_an_empty_template(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    // An unmanaged session key (lab mode), copied unchanged, as NSS does.
    let key = aes_key(&s, 32, false);
    let (rv, copy) = ctx.raw.copy_object_empty(h, key.handle());
    assert_rv!(rv, CKR_OK, "C_CopyObject with an empty template");
    let copy = object_handle(copy);
    assert_ne!(copy, key);
    let iv = [3u8; 16];
    let ct = s.encrypt(&Mechanism::AesCbcPad(iv), key, b"copied").expect("encrypt with the original");
    assert_eq!(s.decrypt(&Mechanism::AesCbcPad(iv), copy, &ct).expect("decrypt with the copy"), b"copied");
    // A data object too, and a search with an empty template finds both.
    let (rv, data) = ctx.raw.create_object(h, &[
        Attr::Ulong(CKA_CLASS, CKO_DATA),
        Attr::Bool(CKA_TOKEN, false),
        Attr::Bytes(CKA_VALUE, b"d".to_vec()),
    ]);
    assert_rv!(rv, CKR_OK);
    let (rv, _) = ctx.raw.copy_object_empty(h, data);
    assert_rv!(rv, CKR_OK, "C_CopyObject of a data object with an empty template");
    let all = s.find_objects(&[]).expect("C_FindObjects with an empty template");
    assert!(all.contains(&copy) && all.contains(&key), "{all:?}");
    // A NULL template with a count of 0 is empty too: NSS's PK11_CopyKey
    // passes it when it serves TLS with a token key. SoftHSM2 itself refuses
    // it (CKR_ARGUMENTS_BAD); keyward copies the object unchanged.
    let (rv, null_copy) = ctx.raw.copy_object_null_template(h, key.handle(), 0);
    if tb.direct {
        assert_rv!(rv, CKR_ARGUMENTS_BAD, "SoftHSM2: C_CopyObject NULL template, count 0");
    } else {
        assert_rv!(rv, CKR_OK, "C_CopyObject NULL template, count 0");
        let null_copy = object_handle(null_copy);
        assert!(null_copy != key && null_copy != copy);
        assert_eq!(s.decrypt(&Mechanism::AesCbcPad(iv), null_copy, &ct).expect("decrypt with the copy"), b"copied");
    }
    // NULL with attributes announced stays an argument error.
    assert_rv!(ctx.raw.copy_object_null_template(h, data, 1).0, CKR_ARGUMENTS_BAD, "C_CopyObject NULL template, count 1");
});
