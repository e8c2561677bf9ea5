//! Key management: C_GenerateKey / C_GenerateKeyPair error paths, C_WrapKey
//! and C_UnwrapKey round trips (AES_KEY_WRAP, AES_KEY_WRAP_PAD, RSA OAEP)
//! with the unwrapped key proven to work, CKA_UNWRAP_TEMPLATE, C_DeriveKey
//! with ECDH1 between two P-256 key pairs, and C_DigestKey.
//!
//! Where SoftHSM2 decides the code (a corrupted wrapped key, a bad template),
//! the module must answer exactly what SoftHSM2 direct answers (`reference`).

use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::*;
use keyward_tests::p11::{
    aes_key, ec_pair, expect_err, hex, reference, rsa_pair, unhex, Ctx, P256_PARAMS,
};
use keyward_tests::raw::{object_handle, rv_name, Attr, AttrReq, Mech, Out, Param};
use keyward_tests::{assert_rv, keyward_test};

const BAD_HANDLE: CK_OBJECT_HANDLE = 0xdead_beef;

/// What an unknown key handle answers. The agent answers the spec's
/// `CKR_KEY_HANDLE_INVALID` for a key handle this process does not have
/// (ARCHITECTURE.md, CKR mapping); SoftHSM2 2.6.1 direct answers the same in
/// C_WrapKey, C_UnwrapKey and C_DigestKey but `CKR_OBJECT_HANDLE_INVALID` in
/// C_DeriveKey, so direct mode expects SoftHSM2's code there.
fn unknown_key(tb: &keyward_tests::Env, keyward: CK_RV, softhsm: CK_RV) -> CK_RV {
    if tb.direct {
        softhsm
    } else {
        keyward
    }
}

/// The template an unwrapped AES key gets: usable and readable, so that the
/// tests can compare it with the original.
fn unwrapped_aes_template() -> Vec<Attr> {
    vec![
        Attr::Ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::Ulong(CKA_KEY_TYPE, CKK_AES),
        Attr::Bool(CKA_TOKEN, false),
        Attr::Bool(CKA_ENCRYPT, true),
        Attr::Bool(CKA_DECRYPT, true),
        Attr::Bool(CKA_SENSITIVE, false),
        Attr::Bool(CKA_EXTRACTABLE, true),
    ]
}

fn value_of(s: &Session, key: ObjectHandle) -> Vec<u8> {
    match &s
        .get_attributes(key, &[AttributeType::Value])
        .expect("read CKA_VALUE")[..]
    {
        [Attribute::Value(v)] => v.clone(),
        other => panic!("CKA_VALUE: {other:?}"),
    }
}

/// Encrypts with `original`, decrypts with `other`: both must be one key.
#[track_caller]
fn same_key(s: &Session, original: ObjectHandle, other: ObjectHandle, what: &str) {
    let iv = [0x42u8; 16];
    let pt: Vec<u8> = (0..77u8).collect();
    let ct = s
        .encrypt(&Mechanism::AesCbcPad(iv), original, &pt)
        .unwrap_or_else(|e| panic!("{what}: encrypt: {e}"));
    let back = s
        .decrypt(&Mechanism::AesCbcPad(iv), other, &ct)
        .unwrap_or_else(|e| panic!("{what}: decrypt: {e}"));
    assert_eq!(
        back, pt,
        "{what}: the other key does not decrypt what the original encrypted"
    );
}

keyward_test!(fn aes_wrap_unwrap_round_trip(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let kek = aes_key(&s, 32, false);
    for (name, mech, key_len, wrapped_len) in [
        ("AES_KEY_WRAP", CKM_AES_KEY_WRAP, 32u64, 40u64),
        ("AES_KEY_WRAP_PAD", CKM_AES_KEY_WRAP_PAD, 16, 24),
    ] {
        let m = Mech::plain(mech);
        let target = aes_key(&s, key_len, true);
        // Buffer convention: length query, short buffer, then the bytes.
        let q = ctx.raw.wrap_key(h, &m, kek.handle(), target.handle(), Out::Null);
        assert_rv!(q.rv, CKR_OK, "{name}: C_WrapKey length query");
        assert_eq!(q.len, wrapped_len, "{name}: wrapped length");
        let short = ctx.raw.wrap_key(h, &m, kek.handle(), target.handle(), Out::Cap(8));
        assert_rv!(short.rv, CKR_BUFFER_TOO_SMALL, "{name}: C_WrapKey into 8 bytes");
        assert_eq!(short.len, wrapped_len, "{name}: BUFFER_TOO_SMALL reports the needed length");
        let wrapped = ctx.raw.wrap_key(h, &m, kek.handle(), target.handle(), Out::Cap(64));
        assert_rv!(wrapped.rv, CKR_OK, "{name}: C_WrapKey");
        assert_eq!(wrapped.data.len() as u64, wrapped_len);
        // cryptoki agrees (AES key wrap is deterministic).
        let typed_mech = if mech == CKM_AES_KEY_WRAP { Mechanism::AesKeyWrap } else { Mechanism::AesKeyWrapPad };
        assert_eq!(s.wrap_key(&typed_mech, kek, target).expect("cryptoki wrap_key"), wrapped.data, "{name}");

        let (rv, unwrapped) = ctx.raw.unwrap_key(h, &m, kek.handle(), &wrapped.data, &unwrapped_aes_template());
        assert_rv!(rv, CKR_OK, "{name}: C_UnwrapKey");
        assert_ne!(unwrapped, target.handle(), "{name}: the unwrapped key is a new object");
        let unwrapped = object_handle(unwrapped);
        assert_eq!(value_of(&s, unwrapped), value_of(&s, target), "{name}: unwrapped value");
        same_key(&s, target, unwrapped, name);
        same_key(&s, unwrapped, target, name);
        // cryptoki's C_UnwrapKey too, into a sensitive key that still works.
        let typed = s
            .unwrap_key(
                &typed_mech,
                kek,
                &wrapped.data,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Sensitive(true),
                ],
            )
            .expect("cryptoki unwrap_key");
        same_key(&s, target, typed, name);
    }
});

keyward_test!(fn wrap_unwrap_error_paths(tb) {
    // SoftHSM2 direct decides what a corrupted or mis-sized wrapped key and
    // an inconsistent template answer; the module must pass that on.
    let r = reference(&tb);
    let rs = r.user();
    let rh = rs.handle();
    let rkek = aes_key(&rs, 32, false);
    let rtarget = aes_key(&rs, 16, true);
    let m = Mech::plain(CKM_AES_KEY_WRAP);
    let rwrapped = r.raw.wrap_key(rh, &m, rkek.handle(), rtarget.handle(), Out::Cap(64));
    assert_rv!(rwrapped.rv, CKR_OK, "SoftHSM2 direct: C_WrapKey");
    let mut rcorrupt = rwrapped.data.clone();
    rcorrupt[3] ^= 0x10;
    let ref_corrupt = r.raw.unwrap_key(rh, &m, rkek.handle(), &rcorrupt, &unwrapped_aes_template()).0;
    let ref_len = r.raw.unwrap_key(rh, &m, rkek.handle(), &rwrapped.data[..17], &unwrapped_aes_template()).0;
    let no_class = [Attr::Ulong(CKA_KEY_TYPE, CKK_AES), Attr::Bool(CKA_TOKEN, false)];
    let ref_incomplete = r.raw.unwrap_key(rh, &m, rkek.handle(), &rwrapped.data, &no_class).0;
    let not_extractable = aes_key(&rs, 16, false);
    let ref_unextractable = r.raw.wrap_key(rh, &m, rkek.handle(), not_extractable.handle(), Out::Cap(64)).rv;
    println!(
        "SoftHSM2 direct: corrupted {}, 17 bytes {}, no class {}, unextractable {}",
        rv_name(ref_corrupt),
        rv_name(ref_len),
        rv_name(ref_incomplete),
        rv_name(ref_unextractable)
    );
    assert!(ref_corrupt != CKR_OK && ref_len != CKR_OK && ref_unextractable != CKR_OK);

    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let kek = aes_key(&s, 32, false);
    let target = aes_key(&s, 16, true);
    let wrapped = ctx.raw.wrap_key(h, &m, kek.handle(), target.handle(), Out::Cap(64));
    assert_rv!(wrapped.rv, CKR_OK);
    let mut corrupt = wrapped.data.clone();
    corrupt[3] ^= 0x10;
    let t = unwrapped_aes_template();
    assert_rv!(ctx.raw.unwrap_key(h, &m, kek.handle(), &corrupt, &t).0, ref_corrupt, "C_UnwrapKey of a corrupted key like SoftHSM2");
    assert_rv!(ctx.raw.unwrap_key(h, &m, kek.handle(), &wrapped.data[..17], &t).0, ref_len, "C_UnwrapKey of 17 bytes like SoftHSM2");
    assert_rv!(ctx.raw.unwrap_key(h, &m, kek.handle(), &wrapped.data, &no_class).0, ref_incomplete, "C_UnwrapKey without CKA_CLASS like SoftHSM2");
    let not_extractable = aes_key(&s, 16, false);
    assert_rv!(
        ctx.raw.wrap_key(h, &m, kek.handle(), not_extractable.handle(), Out::Cap(64)).rv,
        ref_unextractable,
        "C_WrapKey of a non-extractable key like SoftHSM2"
    );

    // Handles this process does not have.
    assert_rv!(ctx.raw.wrap_key(h, &m, BAD_HANDLE, target.handle(), Out::Cap(64)).rv, CKR_WRAPPING_KEY_HANDLE_INVALID, "C_WrapKey unknown wrapping key");
    assert_rv!(ctx.raw.wrap_key(h, &m, kek.handle(), BAD_HANDLE, Out::Cap(64)).rv, CKR_KEY_HANDLE_INVALID, "C_WrapKey unknown key");
    assert_rv!(ctx.raw.unwrap_key(h, &m, BAD_HANDLE, &wrapped.data, &t).0, CKR_UNWRAPPING_KEY_HANDLE_INVALID, "C_UnwrapKey unknown unwrapping key");
    assert_rv!(ctx.raw.wrap_key(0xdead_beef, &m, kek.handle(), target.handle(), Out::Cap(64)).rv, CKR_SESSION_HANDLE_INVALID);
    assert_rv!(ctx.raw.unwrap_key(0xdead_beef, &m, kek.handle(), &wrapped.data, &t).0, CKR_SESSION_HANDLE_INVALID);
    // NULL arguments.
    assert_rv!(ctx.raw.wrap_key_null_len(h, &m, kek.handle(), target.handle()), CKR_ARGUMENTS_BAD, "C_WrapKey NULL pulWrappedKeyLen");
    assert_rv!(ctx.raw.unwrap_key_null(h, &m, kek.handle(), &wrapped.data, &t, true), CKR_ARGUMENTS_BAD, "C_UnwrapKey NULL phKey");
    assert_rv!(ctx.raw.unwrap_key_null(h, &m, kek.handle(), &wrapped.data, &t, false), CKR_ARGUMENTS_BAD, "C_UnwrapKey NULL pWrappedKey");
    // A key without CKA_WRAP cannot wrap.
    let plain = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::Token(false), Attribute::ValueLen(32.into()), Attribute::Wrap(false), Attribute::Unwrap(false)],
        )
        .expect("AES key without wrap");
    let rv = ctx.raw.wrap_key(h, &m, plain.handle(), target.handle(), Out::Cap(64)).rv;
    assert_rv!(rv, CKR_KEY_FUNCTION_NOT_PERMITTED, "wrapping with a key whose CKA_WRAP is false");
    // Still works after all the refusals.
    let again = ctx.raw.wrap_key(h, &m, kek.handle(), target.handle(), Out::Cap(64));
    assert_rv!(again.rv, CKR_OK);
    assert_eq!(again.data, wrapped.data);
});

keyward_test!(fn rsa_oaep_wrap_unwrap(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (public, private) = rsa_pair(&s, 2048, "rsa-wrap", false);
    let target = aes_key(&s, 32, true);
    let oaep = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1, PkcsOaepSource::empty()));
    let wrapped = s.wrap_key(&oaep, public, target).expect("C_WrapKey RSA OAEP");
    assert_eq!(wrapped.len(), 256);
    let unwrapped = s
        .unwrap_key(
            &oaep,
            private,
            &wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .expect("C_UnwrapKey RSA OAEP");
    same_key(&s, target, unwrapped, "RSA OAEP unwrap");
    // PKCS#1 v1.5 as well.
    let wrapped = s.wrap_key(&Mechanism::RsaPkcs, public, target).expect("C_WrapKey RSA_PKCS");
    let unwrapped = s
        .unwrap_key(
            &Mechanism::RsaPkcs,
            private,
            &wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Decrypt(true),
            ],
        )
        .expect("C_UnwrapKey RSA_PKCS");
    same_key(&s, target, unwrapped, "RSA_PKCS unwrap");
    // The private key cannot wrap and the public key cannot unwrap.
    let rv = ctx.raw.unwrap_key(s.handle(), &Mech::plain(CKM_RSA_PKCS), public.handle(), &wrapped, &unwrapped_aes_template()).0;
    assert!(
        rv == CKR_KEY_FUNCTION_NOT_PERMITTED || rv == CKR_KEY_TYPE_INCONSISTENT || rv == CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
        "unwrapping with a public key: {}",
        rv_name(rv)
    );
});

keyward_test!(fn unwrap_template_is_kept_and_enforced(tb) {
    let r = reference(&tb);
    let rs = r.user();
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    // The same steps on both; the module must answer what SoftHSM2 does.
    let run = |ctx: &Ctx, s: &Session| -> (Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>, CK_RV, CK_RV) {
        let h = s.handle();
        let (rv, kek) = ctx.raw.generate_key(
            h,
            &Mech::plain(CKM_AES_KEY_GEN),
            &[
                Attr::Bool(CKA_TOKEN, false),
                Attr::Ulong(CKA_VALUE_LEN, 32),
                Attr::Bool(CKA_WRAP, true),
                Attr::Bool(CKA_UNWRAP, true),
                Attr::Template(CKA_UNWRAP_TEMPLATE, vec![Attr::Bool(CKA_EXTRACTABLE, false)]),
            ],
        );
        assert_rv!(rv, CKR_OK, "C_GenerateKey with CKA_UNWRAP_TEMPLATE");
        let read = ctx
            .raw
            .get_template_attribute(h, kek, CKA_UNWRAP_TEMPLATE)
            .unwrap_or_else(|(step, rv)| panic!("reading CKA_UNWRAP_TEMPLATE ({step}): {}", rv_name(rv)));
        let target = aes_key(s, 16, true);
        let m = Mech::plain(CKM_AES_KEY_WRAP);
        let wrapped = ctx.raw.wrap_key(h, &m, kek, target.handle(), Out::Cap(64));
        assert_rv!(wrapped.rv, CKR_OK);
        // Matching the template (CKA_EXTRACTABLE false) and contradicting it.
        let mut ok = unwrapped_aes_template();
        ok.retain(|a| !matches!(a, Attr::Bool(CKA_EXTRACTABLE, _) | Attr::Bool(CKA_SENSITIVE, _)));
        ok.push(Attr::Bool(CKA_EXTRACTABLE, false));
        let (rv_ok, unwrapped) = ctx.raw.unwrap_key(h, &m, kek, &wrapped.data, &ok);
        if rv_ok == CKR_OK {
            same_key(s, target, object_handle(unwrapped), "unwrapped under CKA_UNWRAP_TEMPLATE");
        }
        let rv_bad = ctx.raw.unwrap_key(h, &m, kek, &wrapped.data, &unwrapped_aes_template()).0;
        (read.into_iter().map(|a| (a.type_, a.value)).collect(), rv_ok, rv_bad)
    };
    let theirs = run(&r, &rs);
    let ours = run(&ctx, &s);
    assert_eq!(ours.0, vec![(CKA_EXTRACTABLE, vec![CK_FALSE])], "CKA_UNWRAP_TEMPLATE read back");
    assert_eq!(ours.0, theirs.0, "CKA_UNWRAP_TEMPLATE like SoftHSM2");
    assert_rv!(ours.1, theirs.1, "C_UnwrapKey matching the unwrap template, like SoftHSM2");
    assert_rv!(ours.2, theirs.2, "C_UnwrapKey contradicting the unwrap template, like SoftHSM2");
    assert_rv!(ours.1, CKR_OK, "C_UnwrapKey matching the unwrap template");
});

/// The raw public point (`04 || X || Y`) of an EC public key.
fn ec_point(s: &Session, public: ObjectHandle) -> Vec<u8> {
    match &s
        .get_attributes(public, &[AttributeType::EcPoint])
        .expect("CKA_EC_POINT")[..]
    {
        [Attribute::EcPoint(p)] => {
            assert!(
                p.len() == 67 && p[0] == 0x04 && p[1] == 65,
                "DER of a P-256 point: {}",
                hex(p)
            );
            p[2..].to_vec()
        }
        other => panic!("CKA_EC_POINT: {other:?}"),
    }
}

fn generic_secret_template(len: u64) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::ValueLen(len.into()),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
}

keyward_test!(fn ecdh1_derive_between_two_p256_pairs(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (pub_a, priv_a) = ec_pair(&s, P256_PARAMS, "ecdh-a", false);
    let (pub_b, priv_b) = ec_pair(&s, P256_PARAMS, "ecdh-b", false);
    let point_a = ec_point(&s, pub_a);
    let point_b = ec_point(&s, pub_b);
    let derive = |private: ObjectHandle, peer: &[u8], template: &[Attribute]| {
        s.derive_key(&Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), peer)), private, template)
            .unwrap_or_else(|e| panic!("C_DeriveKey ECDH1: {e}"))
    };
    let ab = derive(priv_a, &point_b, &generic_secret_template(32));
    let ba = derive(priv_b, &point_a, &generic_secret_template(32));
    let secret = value_of(&s, ab);
    assert_eq!(secret.len(), 32, "P-256 shared secret length");
    assert_eq!(secret, value_of(&s, ba), "both sides derive the same secret");
    assert!(secret.iter().any(|&b| b != 0));
    // A third party's point gives another secret.
    let (pub_c, _) = ec_pair(&s, P256_PARAMS, "ecdh-c", false);
    let ac = derive(priv_a, &ec_point(&s, pub_c), &generic_secret_template(32));
    assert_ne!(value_of(&s, ac), secret, "a different peer gives a different secret");
    // Derived AES keys, compared by use rather than by value.
    let aes_template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::ValueLen(16.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    let aes_ab = derive(priv_a, &point_b, &aes_template);
    let aes_ba = derive(priv_b, &point_a, &aes_template);
    same_key(&s, aes_ab, aes_ba, "AES keys derived by ECDH1 on both sides");

    // Error paths.
    let h = s.handle();
    let m = Mech { type_: CKM_ECDH1_DERIVE, param: Param::Ecdh1 { public: point_b.clone() } };
    let t = [Attr::Ulong(CKA_CLASS, CKO_SECRET_KEY), Attr::Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET), Attr::Bool(CKA_TOKEN, false), Attr::Ulong(CKA_VALUE_LEN, 32)];
    let (rv, raw_key) = ctx.raw.derive_key(h, &m, priv_a.handle(), &t);
    assert_rv!(rv, CKR_OK, "C_DeriveKey through the raw CK_ECDH1_DERIVE_PARAMS");
    let mut q = [AttrReq::query(CKA_VALUE_LEN)];
    assert_rv!(ctx.raw.get_attributes(h, raw_key, &mut q), CKR_OK);
    assert_rv!(ctx.raw.derive_key_null(h, &m, priv_a.handle(), &t), CKR_ARGUMENTS_BAD, "C_DeriveKey NULL phKey");
    assert_rv!(ctx.raw.derive_key(h, &m, BAD_HANDLE, &t).0, unknown_key(&tb, CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID), "C_DeriveKey unknown base key");
    assert_rv!(ctx.raw.derive_key(0xdead_beef, &m, priv_a.handle(), &t).0, CKR_SESSION_HANDLE_INVALID);
    assert_rv!(
        ctx.raw.derive_key(h, &Mech::plain(CKM_ECDH1_DERIVE), priv_a.handle(), &t).0,
        CKR_MECHANISM_PARAM_INVALID,
        "ECDH1 without parameters"
    );
    // A base key that may not derive.
    let (_, no_derive) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(false), Attribute::EcParams(P256_PARAMS.to_vec())],
            &[Attribute::Token(false), Attribute::Private(true), Attribute::Sign(true), Attribute::Derive(false)],
        )
        .expect("EC pair without CKA_DERIVE");
    expect_err(
        s.derive_key(&Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &point_b)), no_derive, &generic_secret_template(32)),
        cryptoki::error::RvError::KeyFunctionNotPermitted,
    );
});

keyward_test!(fn ecdh1_derive_like_softhsm(tb) {
    // Malformed peer points and templates: SoftHSM2 decides the code.
    let r = reference(&tb);
    let rs = r.user();
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let run = |ctx: &Ctx, s: &Session| -> Vec<CK_RV> {
        let (pub_b, priv_a) = {
            let (_, a) = ec_pair(s, P256_PARAMS, "a", false);
            let (b, _) = ec_pair(s, P256_PARAMS, "b", false);
            (b, a)
        };
        let point = ec_point(s, pub_b);
        let mut off_curve = point.clone();
        off_curve[40] ^= 0x01;
        let t = [Attr::Ulong(CKA_CLASS, CKO_SECRET_KEY), Attr::Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET), Attr::Bool(CKA_TOKEN, false), Attr::Ulong(CKA_VALUE_LEN, 32)];
        let too_long = [Attr::Ulong(CKA_CLASS, CKO_SECRET_KEY), Attr::Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET), Attr::Bool(CKA_TOKEN, false), Attr::Ulong(CKA_VALUE_LEN, 64)];
        let derive = |public: Vec<u8>, t: &[Attr]| {
            ctx.raw.derive_key(s.handle(), &Mech { type_: CKM_ECDH1_DERIVE, param: Param::Ecdh1 { public } }, priv_a.handle(), t).0
        };
        vec![
            derive(point.clone(), &t),
            derive(off_curve, &t),
            derive(point[..33].to_vec(), &t),
            derive(point, &too_long),
        ]
    };
    let theirs = run(&r, &rs);
    let ours = run(&ctx, &s);
    let names = |v: &[CK_RV]| v.iter().map(|&rv| rv_name(rv)).collect::<Vec<_>>();
    println!("SoftHSM2 direct: {:?}", names(&theirs));
    assert_eq!(names(&ours), names(&theirs), "ECDH1 derive [good, off-curve point, truncated point, 64-byte secret] like SoftHSM2");
    assert_rv!(ours[0], CKR_OK);
});

keyward_test!(fn digest_key_alone_and_errors(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let value = (0u8..32).collect::<Vec<u8>>();
    let secret = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Value(value.clone()),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ])
        .expect("AES key with a known value");
    for (mech, m) in [(Mechanism::Sha256, CKM_SHA256), (Mechanism::Sha1, CKM_SHA_1), (Mechanism::Sha512, CKM_SHA512)] {
        assert_rv!(ctx.raw.digest_init(h, &Mech::plain(m)), CKR_OK);
        assert_rv!(ctx.raw.digest_key(h, secret.handle()), CKR_OK, "C_DigestKey");
        let out = ctx.raw.digest_final(h, Out::Cap(64));
        assert_rv!(out.rv, CKR_OK);
        assert_eq!(out.data, s.digest(&mech, &value).expect("C_Digest"), "C_DigestKey({mech:?}) equals the digest of CKA_VALUE");
    }
    // Key, then data, then the key again.
    s.digest_init(&Mechanism::Sha256).expect("init");
    s.digest_key(secret).expect("C_DigestKey");
    s.digest_update(b"-middle-").expect("update");
    s.digest_key(secret).expect("C_DigestKey");
    let mut concat = value.clone();
    concat.extend(b"-middle-");
    concat.extend(&value);
    assert_eq!(s.digest_final().expect("final"), s.digest(&Mechanism::Sha256, &concat).expect("digest"));

    assert_rv!(ctx.raw.digest_key(h, secret.handle()), CKR_OPERATION_NOT_INITIALIZED, "C_DigestKey without C_DigestInit");
    assert_rv!(ctx.raw.digest_init(h, &Mech::plain(CKM_SHA256)), CKR_OK);
    assert_rv!(ctx.raw.digest_key(h, BAD_HANDLE), CKR_KEY_HANDLE_INVALID, "C_DigestKey of an unknown key");
    assert_rv!(ctx.raw.digest_key(0xdead_beef, secret.handle()), CKR_SESSION_HANDLE_INVALID);
});

keyward_test!(fn digest_key_of_sensitive_key_like_softhsm(tb) {
    let r = reference(&tb);
    let rs = r.user();
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let run = |ctx: &Ctx, s: &Session| -> CK_RV {
        let k = aes_key(s, 32, false);
        assert_rv!(ctx.raw.digest_init(s.handle(), &Mech::plain(CKM_SHA256)), CKR_OK);
        ctx.raw.digest_key(s.handle(), k.handle())
    };
    let theirs = run(&r, &rs);
    println!("SoftHSM2 direct: C_DigestKey of a sensitive key: {}", rv_name(theirs));
    assert_rv!(run(&ctx, &s), theirs, "C_DigestKey of a sensitive key like SoftHSM2");
});

keyward_test!(fn generate_key_error_paths(tb) {
    let r = reference(&tb);
    let rs = r.user();
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    // Templates whose code SoftHSM2 decides.
    let aes = Mech::plain(CKM_AES_KEY_GEN);
    let cases: Vec<(&str, Mech, Vec<Attr>)> = vec![
        ("AES without CKA_VALUE_LEN", aes.clone(), vec![Attr::Bool(CKA_TOKEN, false)]),
        ("AES of 7 bytes", aes.clone(), vec![Attr::Bool(CKA_TOKEN, false), Attr::Ulong(CKA_VALUE_LEN, 7)]),
        ("AES with CKA_CLASS public key", aes.clone(), vec![Attr::Bool(CKA_TOKEN, false), Attr::Ulong(CKA_VALUE_LEN, 16), Attr::Ulong(CKA_CLASS, CKO_PUBLIC_KEY)]),
        ("a key-pair mechanism", Mech::plain(CKM_RSA_PKCS_KEY_PAIR_GEN), vec![Attr::Bool(CKA_TOKEN, false)]),
        ("an unknown mechanism", Mech::plain(CKM_VENDOR_DEFINED | 0x99), vec![Attr::Bool(CKA_TOKEN, false)]),
    ];
    for (what, m, t) in &cases {
        let theirs = r.raw.generate_key(rs.handle(), m, t).0;
        let ours = ctx.raw.generate_key(s.handle(), m, t).0;
        println!("C_GenerateKey {what}: SoftHSM2 {}, module {}", rv_name(theirs), rv_name(ours));
        assert!(theirs != CKR_OK, "SoftHSM2 accepted C_GenerateKey {what}");
        assert_rv!(ours, theirs, "C_GenerateKey {what} like SoftHSM2");
    }
    let pair_cases: Vec<(&str, Vec<Attr>, Vec<Attr>)> = vec![
        ("RSA without CKA_MODULUS_BITS", vec![Attr::Bool(CKA_TOKEN, false)], vec![Attr::Bool(CKA_TOKEN, false)]),
        ("EC with unknown curve", vec![Attr::Bool(CKA_TOKEN, false), Attr::Bytes(CKA_EC_PARAMS, vec![0x06, 0x03, 0x2a, 0x03, 0x04])], vec![Attr::Bool(CKA_TOKEN, false)]),
    ];
    for (what, public, private) in &pair_cases {
        let m = if what.starts_with("RSA") { Mech::plain(CKM_RSA_PKCS_KEY_PAIR_GEN) } else { Mech::plain(CKM_EC_KEY_PAIR_GEN) };
        let theirs = r.raw.generate_key_pair(rs.handle(), &m, public, private).0;
        let ours = ctx.raw.generate_key_pair(s.handle(), &m, public, private).0;
        println!("C_GenerateKeyPair {what}: SoftHSM2 {}, module {}", rv_name(theirs), rv_name(ours));
        assert!(theirs != CKR_OK, "SoftHSM2 accepted C_GenerateKeyPair {what}");
        assert_rv!(ours, theirs, "C_GenerateKeyPair {what} like SoftHSM2");
    }

    // The module's own checks.
    let h = s.handle();
    let ok = [Attr::Bool(CKA_TOKEN, false), Attr::Ulong(CKA_VALUE_LEN, 16)];
    assert_rv!(ctx.raw.generate_key_null(h, &aes, &ok), CKR_ARGUMENTS_BAD, "C_GenerateKey NULL phKey");
    assert_rv!(ctx.raw.generate_key_null_mech(h, &ok), CKR_ARGUMENTS_BAD, "C_GenerateKey NULL pMechanism");
    assert_rv!(ctx.raw.generate_key(0xdead_beef, &aes, &ok).0, CKR_SESSION_HANDLE_INVALID);
    let ec_pub = [Attr::Bool(CKA_TOKEN, false), Attr::Bytes(CKA_EC_PARAMS, P256_PARAMS.to_vec())];
    let ec_priv = [Attr::Bool(CKA_TOKEN, false), Attr::Bool(CKA_SIGN, true)];
    let ecgen = Mech::plain(CKM_EC_KEY_PAIR_GEN);
    assert_rv!(ctx.raw.generate_key_pair_null(h, &ecgen, &ec_pub, &ec_priv), CKR_ARGUMENTS_BAD, "C_GenerateKeyPair NULL phPrivateKey");
    assert_rv!(ctx.raw.generate_key_pair(0xdead_beef, &ecgen, &ec_pub, &ec_priv).0, CKR_SESSION_HANDLE_INVALID);
    let (rv, public, private) = ctx.raw.generate_key_pair(h, &ecgen, &ec_pub, &ec_priv);
    assert_rv!(rv, CKR_OK, "C_GenerateKeyPair (raw)");
    assert_ne!(public, private);

    // Token keys need a RW session; private keys need a login.
    let ro = ctx.ro();
    let token = [Attr::Bool(CKA_TOKEN, true), Attr::Ulong(CKA_VALUE_LEN, 16)];
    assert_rv!(ctx.raw.generate_key(ro.handle(), &aes, &token).0, CKR_SESSION_READ_ONLY, "token key in a RO session");
    s.logout().expect("logout");
    let private_key = [Attr::Bool(CKA_TOKEN, false), Attr::Bool(CKA_PRIVATE, true), Attr::Ulong(CKA_VALUE_LEN, 16)];
    assert_rv!(ctx.raw.generate_key(h, &aes, &private_key).0, CKR_USER_NOT_LOGGED_IN, "private key without login");
    let ec_priv_private = [Attr::Bool(CKA_TOKEN, false), Attr::Bool(CKA_PRIVATE, true), Attr::Bool(CKA_SIGN, true)];
    assert_rv!(ctx.raw.generate_key_pair(h, &ecgen, &ec_pub, &ec_priv_private).0, CKR_USER_NOT_LOGGED_IN, "private key pair without login");
});

/// RFC 3526 group 14 (2048-bit MODP).
const MODP_2048: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF";

keyward_test!(fn dh_pkcs_derive_takes_the_peers_public_value(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    let prime = unhex(MODP_2048);
    let pair = || {
        let (rv, public, private) = ctx.raw.generate_key_pair(
            h,
            &Mech::plain(CKM_DH_PKCS_KEY_PAIR_GEN),
            &[
                Attr::Bool(CKA_TOKEN, false),
                Attr::Bytes(CKA_PRIME, prime.clone()),
                Attr::Bytes(CKA_BASE, vec![2]),
            ],
            &[Attr::Bool(CKA_TOKEN, false), Attr::Bool(CKA_PRIVATE, true), Attr::Bool(CKA_DERIVE, true)],
        );
        assert_rv!(rv, CKR_OK, "C_GenerateKeyPair CKM_DH_PKCS_KEY_PAIR_GEN");
        (object_handle(public), private)
    };
    let value = |o: ObjectHandle| match s.get_attributes(o, &[AttributeType::Value]).expect("CKA_VALUE").pop() {
        Some(Attribute::Value(v)) => v,
        other => panic!("CKA_VALUE: {other:?}"),
    };
    let (pub_a, priv_a) = pair();
    let (pub_b, priv_b) = pair();
    let (y_a, y_b) = (value(pub_a), value(pub_b));
    let secret = [
        Attr::Ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
        Attr::Ulong(CKA_VALUE_LEN, 32),
        Attr::Bool(CKA_TOKEN, false),
        Attr::Bool(CKA_SENSITIVE, false),
        Attr::Bool(CKA_EXTRACTABLE, true),
    ];
    let derive = |private, peer: &[u8]| {
        let m = Mech { type_: CKM_DH_PKCS_DERIVE, param: Param::Bytes(peer.to_vec()) };
        let (rv, k) = ctx.raw.derive_key(h, &m, private, &secret);
        assert_rv!(rv, CKR_OK, "C_DeriveKey CKM_DH_PKCS_DERIVE");
        value(object_handle(k))
    };
    let ab = derive(priv_a, &y_b);
    let ba = derive(priv_b, &y_a);
    assert!(!ab.is_empty() && ab.iter().any(|&b| b != 0), "a shared secret");
    assert_eq!(ab, ba, "both sides derive the same DH secret");
    let (pub_c, _) = pair();
    assert_ne!(derive(priv_a, &value(pub_c)), ab, "another peer, another secret");
});
