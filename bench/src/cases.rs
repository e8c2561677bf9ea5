//! The measured operations and the keys they use.

use cryptoki::error::Result;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::targets::{Target, MANAGED_CLASS};

/// Keys made once per target: session objects of its first session, and
/// two token keys found by label (managed keys on the keyward targets).
#[derive(Debug)]
pub struct Keys {
    rsa: ObjectHandle,
    ec: ObjectHandle,
    /// `bench-managed-rsa`: on keyward a managed key (class
    /// [`MANAGED_CLASS`], created and activated with the `keyward` CLI), so
    /// that every use passes the policy checks; elsewhere a token key.
    managed_rsa: ObjectHandle,
    /// `bench-managed-ec`, likewise.
    managed_ec: ObjectHandle,
    /// `None` where the stack cannot make Ed25519 keys (p11-kit 0.24's RPC
    /// does not carry CKM_EC_EDWARDS_KEY_PAIR_GEN).
    ed: Option<ObjectHandle>,
    aes: ObjectHandle,
    hmac: ObjectHandle,
}

/// One benchmark case.
#[derive(Debug)]
pub struct Case {
    /// Name in the table and the JSON.
    pub name: &'static str,
    /// Time multiplier (slow cases get more time for a stable median).
    pub weight: u64,
    /// Operations per thread in `--quick` mode.
    pub quick_ops: u32,
    /// One operation.
    pub run: fn(&Target, &Session, &Keys) -> Result<()>,
}

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
static DATA_32: [u8; 32] = [0x5a; 32];
static DATA_64: [u8; 64] = [0x33; 64];
static DATA_4K: [u8; 4096] = [0x42; 4096];

const MANAGED_RSA: &str = "bench-managed-rsa";
const MANAGED_EC: &str = "bench-managed-ec";

fn pair(
    s: &Session,
    mech: Mechanism<'_>,
    public: &[Attribute],
    private: &[Attribute],
) -> Result<ObjectHandle> {
    token_pair(s, false, mech, public, private)
}

fn token_pair(
    s: &Session,
    token: bool,
    mech: Mechanism<'_>,
    public: &[Attribute],
    private: &[Attribute],
) -> Result<ObjectHandle> {
    let mut pubt = vec![Attribute::Token(token), Attribute::Verify(true)];
    pubt.extend_from_slice(public);
    let mut privt = vec![
        Attribute::Token(token),
        Attribute::Sign(true),
        Attribute::Sensitive(true),
    ];
    privt.extend_from_slice(private);
    Ok(s.generate_key_pair(&mech, &pubt, &privt)?.1)
}

/// The private key labelled `label`: the first one the token lists (on
/// keyward, the version that signs now).
fn by_label(s: &Session, label: &str) -> std::result::Result<ObjectHandle, String> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .map_err(|e| format!("finding {label}: {e}"))?
    .first()
    .copied()
    .ok_or(format!("no private key labelled {label}"))
}

/// Makes the two keys of the managed cases: on keyward, with the `keyward`
/// CLI under class [`MANAGED_CLASS`] (create, activate); elsewhere as
/// token keys. Either way the cases find them by label.
fn managed_keys(
    t: &Target,
    s: &Session,
) -> std::result::Result<(ObjectHandle, ObjectHandle), String> {
    match &t.admin {
        Some(admin) => {
            for (name, algorithm) in [(MANAGED_RSA, "rsa:2048"), (MANAGED_EC, "ec:p256")] {
                admin.keyward(&[
                    "key",
                    "create",
                    name,
                    "--class",
                    MANAGED_CLASS,
                    "--algorithm",
                    algorithm,
                ])?;
                admin.keyward(&["key", "activate", name])?;
            }
        }
        None => {
            let label = |l: &str| Attribute::Label(l.as_bytes().to_vec());
            token_pair(
                s,
                true,
                Mechanism::RsaPkcsKeyPairGen,
                &[
                    Attribute::ModulusBits(2048.into()),
                    Attribute::PublicExponent(vec![1, 0, 1]),
                    label(MANAGED_RSA),
                ],
                &[label(MANAGED_RSA)],
            )
            .map_err(|e| e.to_string())?;
            token_pair(
                s,
                true,
                Mechanism::EccKeyPairGen,
                &[Attribute::EcParams(P256.to_vec()), label(MANAGED_EC)],
                &[label(MANAGED_EC)],
            )
            .map_err(|e| e.to_string())?;
        }
    }
    Ok((by_label(s, MANAGED_RSA)?, by_label(s, MANAGED_EC)?))
}

/// Generates the keys of every case on `t`, as session objects of the
/// returned session (keep it open while the keys are in use), and the
/// token keys of the managed cases.
pub fn prepare(t: &Target) -> std::result::Result<(Keys, Session), String> {
    let s = t.session().map_err(|e| e.to_string())?;
    let (managed_rsa, managed_ec) = managed_keys(t, &s)?;
    session_keys(t, s, managed_rsa, managed_ec).map_err(|e| e.to_string())
}

fn session_keys(
    t: &Target,
    s: Session,
    managed_rsa: ObjectHandle,
    managed_ec: ObjectHandle,
) -> Result<(Keys, Session)> {
    let rsa = pair(
        &s,
        Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
        ],
        &[Attribute::Label(b"bench-rsa".to_vec())],
    )?;
    let ec = pair(
        &s,
        Mechanism::EccKeyPairGen,
        &[Attribute::EcParams(P256.to_vec())],
        &[],
    )?;
    let ed = match pair(
        &s,
        Mechanism::EccEdwardsKeyPairGen,
        &[Attribute::EcParams(ED25519.to_vec())],
        &[],
    ) {
        Ok(k) => Some(k),
        Err(e) if t.name == "p11kit" => {
            eprintln!("keyward-bench: p11kit cannot generate Ed25519 keys ({e}); that case is left out for it");
            None
        }
        Err(e) => return Err(e),
    };
    let aes = s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(32.into()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ],
    )?;
    let hmac = s.generate_key(
        &Mechanism::GenericSecretKeyGen,
        &[
            Attribute::Token(false),
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()),
            Attribute::Sign(true),
            Attribute::Verify(true),
        ],
    )?;
    Ok((
        Keys {
            rsa,
            ec,
            managed_rsa,
            managed_ec,
            ed,
            aes,
            hmac,
        },
        s,
    ))
}

fn pss() -> Mechanism<'static> {
    Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    })
}

/// Every case, in table order.
pub const ALL: &[Case] = &[
    Case {
        name: "rsa2048_sign_sha256_pkcs",
        weight: 2,
        quick_ops: 3,
        run: |_, s, k| s.sign(&Mechanism::Sha256RsaPkcs, k.rsa, &DATA_32).map(drop),
    },
    Case {
        name: "rsa2048_sign_sha256_pss",
        weight: 2,
        quick_ops: 3,
        run: |_, s, k| s.sign(&pss(), k.rsa, &DATA_32).map(drop),
    },
    Case {
        name: "ecdsa_p256_sign",
        weight: 1,
        quick_ops: 3,
        run: |_, s, k| s.sign(&Mechanism::Ecdsa, k.ec, &DATA_32).map(drop),
    },
    Case {
        name: "rsa2048_sign_managed",
        weight: 2,
        quick_ops: 3,
        run: |_, s, k| {
            s.sign(&Mechanism::Sha256RsaPkcs, k.managed_rsa, &DATA_32)
                .map(drop)
        },
    },
    Case {
        name: "ecdsa_p256_sign_managed",
        weight: 1,
        quick_ops: 3,
        run: |_, s, k| s.sign(&Mechanism::Ecdsa, k.managed_ec, &DATA_32).map(drop),
    },
    Case {
        name: "ed25519_sign",
        weight: 1,
        quick_ops: 3,
        run: |_, s, k| {
            s.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                k.ed.ok_or(cryptoki::error::Error::NotSupported)?,
                &DATA_32,
            )
            .map(drop)
        },
    },
    Case {
        name: "aes256_gcm_encrypt_4k",
        weight: 1,
        quick_ops: 3,
        run: |_, s, k| {
            let mut iv = [0u8; 12];
            let gcm = GcmParams::new(&mut iv, &[], 128.into())?;
            s.encrypt(&Mechanism::AesGcm(gcm), k.aes, &DATA_4K)
                .map(drop)
        },
    },
    Case {
        name: "hmac_sha256_64",
        weight: 1,
        quick_ops: 3,
        run: |_, s, k| s.sign(&Mechanism::Sha256Hmac, k.hmac, &DATA_64).map(drop),
    },
    Case {
        name: "hmac_sha256_64k_16_updates",
        weight: 1,
        quick_ops: 3,
        run: |_, s, k| {
            s.sign_init(&Mechanism::Sha256Hmac, k.hmac)?;
            for _ in 0..16 {
                s.sign_update(&DATA_4K)?;
            }
            s.sign_final().map(drop)
        },
    },
    Case {
        name: "sha256_digest_4k",
        weight: 1,
        quick_ops: 3,
        run: |_, s, _| s.digest(&Mechanism::Sha256, &DATA_4K).map(drop),
    },
    Case {
        name: "random_32",
        weight: 1,
        quick_ops: 3,
        run: |_, s, _| s.generate_random_vec(32).map(drop),
    },
    Case {
        name: "find_by_label",
        weight: 1,
        quick_ops: 3,
        run: |_, s, _| {
            let found = s.find_objects(&[Attribute::Label(b"bench-rsa".to_vec())])?;
            assert!(!found.is_empty(), "find_by_label found nothing");
            Ok(())
        },
    },
    Case {
        name: "session_open_close",
        weight: 1,
        quick_ops: 3,
        run: |t, _, _| t.pkcs11.open_ro_session(t.slot).map(drop),
    },
    Case {
        name: "rsa2048_keygen",
        weight: 4,
        quick_ops: 1,
        run: |_, s, _| {
            let mech = Mechanism::RsaPkcsKeyPairGen;
            let public = [Attribute::Token(false), Attribute::ModulusBits(2048.into())];
            let (a, b) = s.generate_key_pair(&mech, &public, &[Attribute::Token(false)])?;
            s.destroy_object(a)?;
            s.destroy_object(b)
        },
    },
    Case {
        name: "ec_p256_keygen",
        weight: 1,
        quick_ops: 2,
        run: |_, s, _| {
            let public = [Attribute::Token(false), Attribute::EcParams(P256.to_vec())];
            let (a, b) = s.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public,
                &[Attribute::Token(false)],
            )?;
            s.destroy_object(a)?;
            s.destroy_object(b)
        },
    },
];
