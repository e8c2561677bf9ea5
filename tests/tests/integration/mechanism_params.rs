//! Mechanism parameters marshalled faithfully: what the module produces with
//! a parameter is checked by SoftHSM2 direct (`reference`) with the same
//! parameter, and vice versa. A parameter lost or altered on the way through
//! the module and agent (a salt length, a hash, a tag length, AAD, a counter
//! width) makes the other side disagree.

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::*;
use keyward_tests::p11::{
    aes_key_value, ec_pair, expect_err, reference, rsa_pair, unhex, Ctx, ED25519_PARAMS,
    P256_PARAMS,
};
use keyward_tests::raw::{Mech, Out, Param};
use keyward_tests::{assert_rv, keyward_test};

/// Copies the public half of `public` (in `from`) into `to` as a session
/// public key that can verify and encrypt.
fn copy_public(
    from: &Session,
    public: ObjectHandle,
    to: &Session,
    types: &[AttributeType],
    key_type: KeyType,
) -> ObjectHandle {
    let mut template = from
        .get_attributes(public, types)
        .expect("read the public key");
    template.extend([
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(key_type),
        Attribute::Token(false),
        Attribute::Verify(true),
    ]);
    if key_type == KeyType::RSA {
        template.push(Attribute::Encrypt(true));
    }
    to.create_object(&template)
        .expect("C_CreateObject of the copied public key")
}

/// A private RSA key of SoftHSM2 direct, for checking what it refuses.
fn rs_key(rs: &Session) -> ObjectHandle {
    rsa_pair(rs, 1024, "softhsm-own", false).1
}

keyward_test!(fn rsa_parameters_checked_by_softhsm(tb) {
    let r = reference(&tb);
    let rs = r.user();
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (public, private) = rsa_pair(&s, 2048, "params-rsa", false);
    let theirs = copy_public(&s, public, &rs, &[AttributeType::Modulus, AttributeType::PublicExponent], KeyType::RSA);
    let data = b"faithfully marshalled".to_vec();
    // PKCS#1 v1.5 with each hash.
    for mech in [Mechanism::Sha1RsaPkcs, Mechanism::Sha224RsaPkcs, Mechanism::Sha256RsaPkcs, Mechanism::Sha384RsaPkcs, Mechanism::Sha512RsaPkcs] {
        let sig = s.sign(&mech, private, &data).unwrap_or_else(|e| panic!("{mech:?} sign: {e}"));
        rs.verify(&mech, theirs, &data, &sig).unwrap_or_else(|e| panic!("{mech:?}: SoftHSM2 direct rejects the module's signature: {e}"));
    }
    // PSS: hash, MGF and salt length each matter.
    let pss = |hash, mgf, s_len: u64| PkcsPssParams { hash_alg: hash, mgf, s_len: s_len.into() };
    let cases = [
        (Mechanism::Sha1RsaPkcsPss(pss(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1, 20)), "SHA1 sLen 20"),
        (Mechanism::Sha256RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 0)), "SHA256 sLen 0"),
        (Mechanism::Sha256RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32)), "SHA256 sLen 32"),
        (Mechanism::Sha384RsaPkcsPss(pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48)), "SHA384 sLen 48"),
        (Mechanism::Sha512RsaPkcsPss(pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64)), "SHA512 sLen 64"),
    ];
    for (mech, what) in &cases {
        let sig = s.sign(mech, private, &data).unwrap_or_else(|e| panic!("PSS {what} sign: {e}"));
        rs.verify(mech, theirs, &data, &sig).unwrap_or_else(|e| panic!("PSS {what}: SoftHSM2 direct rejects the module's signature: {e}"));
        // And the other way: SoftHSM2 can't sign with our key, but the
        // module must reject the signature under other parameters.
        let other = Mechanism::Sha256RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 17));
        if !matches!(mech, Mechanism::Sha256RsaPkcsPss(p) if p.s_len == 17.into()) {
            assert!(s.verify(&other, public, &data, &sig).is_err(), "PSS {what}: verifies under SHA256 sLen 17 too");
        }
    }
    // SoftHSM2 2.6.1 refuses an MGF whose hash differs from the signature
    // hash with CKR_ARGUMENTS_BAD (checked with KEYWARD_TEST_DIRECT=1); the
    // module must pass that code on rather than alter the parameter.
    let mismatched = Mechanism::Sha256RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA1, 32));
    expect_err(s.sign(&mismatched, private, &data), cryptoki::error::RvError::ArgumentsBad);
    expect_err(rs.sign(&mismatched, rs_key(&rs), &data), cryptoki::error::RvError::ArgumentsBad);
    // Raw PSS over a digest, through the raw function list.
    let digest = s.digest(&Mechanism::Sha256, &data).expect("digest");
    let mut p = Vec::new();
    for v in [CKM_SHA256, CKG_MGF1_SHA256, 32 as CK_ULONG] {
        p.extend(v.to_ne_bytes());
    }
    let raw_pss = Mech { type_: CKM_RSA_PKCS_PSS, param: Param::Bytes(p) };
    assert_rv!(ctx.raw.sign_init(s.handle(), &raw_pss, private.handle()), CKR_OK, "C_SignInit RSA_PKCS_PSS (raw CK_RSA_PKCS_PSS_PARAMS)");
    let sig = ctx.raw.sign(s.handle(), &digest, Out::Cap(256));
    assert_rv!(sig.rv, CKR_OK);
    rs.verify(&cases[2].0, theirs, &data, &sig.data).expect("SoftHSM2 direct verifies the raw-parameter PSS signature");
    // OAEP SHA-1 without a label (what SoftHSM2 2.6.1 supports): SoftHSM2
    // encrypts to the module's key, the module decrypts.
    let oaep = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1, PkcsOaepSource::empty()));
    let ct = rs.encrypt(&oaep, theirs, &data).expect("SoftHSM2 direct OAEP encrypt");
    assert_eq!(s.decrypt(&oaep, private, &ct).expect("module OAEP decrypt"), data);
    let ct = rs.encrypt(&Mechanism::RsaPkcs, theirs, &data).expect("SoftHSM2 direct RSA_PKCS encrypt");
    assert_eq!(s.decrypt(&Mechanism::RsaPkcs, private, &ct).expect("module RSA_PKCS decrypt"), data);
    // OAEP with a label, SHA-256: whatever SoftHSM2 direct answers, the
    // module answers the same.
    let labelled = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, PkcsOaepSource::data_specified(b"label")));
    let theirs_rv = rs.encrypt(&labelled, theirs, &data).map(|_| ()).map_err(|e| keyward_tests::p11::rv_error(&e));
    let ours_rv = s.encrypt(&labelled, public, &data).map(|_| ()).map_err(|e| keyward_tests::p11::rv_error(&e));
    assert_eq!(ours_rv, theirs_rv, "OAEP SHA-256 with a label: module vs SoftHSM2 direct");
});

keyward_test!(fn ec_signatures_checked_by_softhsm(tb) {
    let r = reference(&tb);
    let rs = r.user();
    let softhsm = r.p11.get_mechanism_list(r.slot).expect("SoftHSM2 mechanisms");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (public, private) = ec_pair(&s, P256_PARAMS, "params-ec", false);
    let theirs = copy_public(&s, public, &rs, &[AttributeType::EcParams, AttributeType::EcPoint], KeyType::EC);
    let data: Vec<u8> = (0..50u8).collect();
    let digest = s.digest(&Mechanism::Sha256, &data).expect("digest");
    let sig = s.sign(&Mechanism::Ecdsa, private, &digest).expect("ECDSA");
    rs.verify(&Mechanism::Ecdsa, theirs, &digest, &sig).expect("SoftHSM2 direct verifies the module's ECDSA signature");
    for (ty, mech) in [
        (MechanismType::ECDSA_SHA1, Mechanism::EcdsaSha1),
        (MechanismType::ECDSA_SHA256, Mechanism::EcdsaSha256),
        (MechanismType::ECDSA_SHA384, Mechanism::EcdsaSha384),
        (MechanismType::ECDSA_SHA512, Mechanism::EcdsaSha512),
    ] {
        if softhsm.contains(&ty) {
            let sig = s.sign(&mech, private, &data).unwrap_or_else(|e| panic!("{ty}: {e}"));
            rs.verify(&mech, theirs, &data, &sig).unwrap_or_else(|e| panic!("{ty}: SoftHSM2 direct rejects the module's signature: {e}"));
        } else {
            // Refused the same way as SoftHSM2 direct refuses it.
            expect_err(s.sign(&mech, private, &data), cryptoki::error::RvError::MechanismInvalid);
        }
    }
    if softhsm.contains(&MechanismType::EDDSA) {
        let (epub, epriv) = s
            .generate_key_pair(
                &Mechanism::EccEdwardsKeyPairGen,
                &[Attribute::Token(false), Attribute::EcParams(ED25519_PARAMS.to_vec()), Attribute::Verify(true)],
                &[Attribute::Token(false), Attribute::Private(true), Attribute::Sign(true)],
            )
            .expect("Ed25519 key pair");
        let etheirs = copy_public(&s, epub, &rs, &[AttributeType::EcParams, AttributeType::EcPoint], KeyType::EC_EDWARDS);
        let eddsa = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let sig = s.sign(&eddsa, epriv, &data).expect("EdDSA");
        rs.verify(&eddsa, etheirs, &data, &sig).expect("SoftHSM2 direct verifies the module's Ed25519 signature");
        let mut bad = data.clone();
        bad[0] ^= 1;
        expect_err(rs.verify(&eddsa, etheirs, &bad, &sig), cryptoki::error::RvError::SignatureInvalid);
    }
});

keyward_test!(fn aes_parameters_match_softhsm(tb) {
    let key_value = unhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
    let data: Vec<u8> = (0..61u8).collect();
    let aad = b"additional authenticated data".to_vec();
    let run = |ctx: &Ctx| -> Vec<Vec<u8>> {
        let s = ctx.user();
        let key = aes_key_value(&s, &key_value);
        let mut out = Vec::new();
        for (iv_len, aad, tag_bits) in [(12usize, &aad[..], 128u64), (12, &[][..], 96), (16, &aad[..5], 64), (12, &aad[..], 120)] {
            let mut iv: Vec<u8> = (0..iv_len as u8).collect();
            let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv, aad, tag_bits.into()).expect("GcmParams"));
            let ct = s.encrypt(&gcm, key, &data).unwrap_or_else(|e| panic!("GCM iv {iv_len} tag {tag_bits}: {e}"));
            assert_eq!(ct.len(), data.len() + tag_bits as usize / 8, "GCM tag of {tag_bits} bits");
            assert_eq!(s.decrypt(&gcm, key, &ct).expect("GCM decrypt"), data);
            out.push(ct);
        }
        for counter_bits in [128 as CK_ULONG, 32, 8] {
            let mut p = counter_bits.to_ne_bytes().to_vec();
            p.extend([0xffu8; 16]);
            let m = Mech { type_: CKM_AES_CTR, param: Param::Bytes(p) };
            assert_rv!(ctx.raw.encrypt_init(s.handle(), &m, key.handle()), CKR_OK, "CTR with {counter_bits} counter bits");
            let ct = ctx.raw.encrypt(s.handle(), &data, Out::Cap(data.len()));
            out.push(vec![ct.rv as u8]);
            out.push(ct.data);
        }
        for (m, iv) in [(CKM_AES_CBC_PAD, vec![0x11u8; 16]), (CKM_AES_CBC_PAD, vec![0x22; 16])] {
            let mech = Mech { type_: m, param: Param::Bytes(iv) };
            assert_rv!(ctx.raw.encrypt_init(s.handle(), &mech, key.handle()), CKR_OK);
            let ct = ctx.raw.encrypt(s.handle(), &data, Out::Cap(128));
            assert_rv!(ct.rv, CKR_OK);
            out.push(ct.data);
        }
        out
    };
    let theirs = run(&reference(&tb));
    let ours = run(&Ctx::new(&tb));
    assert_eq!(ours.len(), theirs.len());
    for (i, (o, t)) in ours.iter().zip(theirs.iter()).enumerate() {
        assert_eq!(o, t, "output {i} differs from SoftHSM2 direct's (GCM IV / AAD / tag, CTR counter bits, CBC IV)");
    }
});
