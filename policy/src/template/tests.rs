use std::time::Duration;

use super::*;
use crate::policy::KeyClass;

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const ED25519_PRINTABLE: &[u8] = b"\x13\x0cedwards25519";

fn class(purpose: Purpose, algorithms: &[&str], backup: bool) -> KeyClass {
    KeyClass {
        name: "c".to_owned(),
        description: None,
        purpose,
        algorithms: algorithms
            .iter()
            .map(|a| Algorithm::parse(a).unwrap())
            .collect(),
        protect_period: Duration::from_secs(86_400),
        process_period: Duration::from_secs(86_400),
        rotation_interval: None,
        backup,
        scope: Vec::new(),
        grants: Vec::new(),
        per_use_approval: None,
        sensitive: false,
        max_recovery_window: crate::DEFAULT_MAX_RECOVERY_WINDOW,
        certificate_warning: None,
        legacy: false,
    }
}

fn signing() -> KeyClass {
    class(Purpose::Signing, &["ec:p256", "rsa:3072", "ed25519"], false)
}

fn pair<'a>(
    public_bools: &'a [(u64, bool)],
    private_bools: &'a [(u64, bool)],
    ulongs: &'a [(u64, u64)],
    bytes: &'a [(u64, &'a [u8])],
) -> (Template<'a>, Template<'a>) {
    (
        Template {
            bools: public_bools,
            ulongs,
            bytes,
        },
        Template {
            bools: private_bools,
            ..Template::default()
        },
    )
}

fn ckr<T: std::fmt::Debug>(r: Result<T, Refusal>) -> u64 {
    r.unwrap_err().ckr()
}

#[test]
fn ec_key_pair_in_class_is_accepted_and_forced() {
    let (public, private) = pair(
        &[(CKA_VERIFY, true)],
        &[(CKA_SIGN, true)],
        &[],
        &[(CKA_EC_PARAMS, P256)],
    );
    let adj =
        check_key_pair_generation(&signing(), CKM_EC_KEY_PAIR_GEN, &public, &private).unwrap();
    // Private half: protection and the signing flag; every other flag off.
    assert_eq!(adj.private.get(CKA_SENSITIVE), Some(true));
    assert_eq!(adj.private.get(CKA_EXTRACTABLE), Some(false));
    assert_eq!(adj.private.get(CKA_WRAP_WITH_TRUSTED), None);
    assert_eq!(adj.private.get(CKA_SIGN), Some(true));
    for flag in [CKA_SIGN_RECOVER, CKA_DECRYPT, CKA_UNWRAP, CKA_DERIVE] {
        assert_eq!(adj.private.get(flag), Some(false), "{flag:#x}");
    }
    // Public half: verify on, the rest off, no private-only attributes.
    assert_eq!(adj.public.get(CKA_VERIFY), Some(true));
    for flag in [CKA_VERIFY_RECOVER, CKA_ENCRYPT, CKA_WRAP, CKA_DERIVE] {
        assert_eq!(adj.public.get(flag), Some(false), "{flag:#x}");
    }
    for attr in [CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_SIGN, CKA_DECRYPT] {
        assert_eq!(adj.public.get(attr), None, "{attr:#x}");
    }
    // A template with no usage flags at all gets the same.
    let (public, private) = pair(&[], &[], &[], &[(CKA_EC_PARAMS, P256)]);
    let bare =
        check_key_pair_generation(&signing(), CKM_EC_KEY_PAIR_GEN, &public, &private).unwrap();
    assert_eq!(bare, adj);
}

#[test]
fn two_purposes_are_refused() {
    let (public, private) = pair(
        &[(CKA_VERIFY, true)],
        &[(CKA_SIGN, true), (CKA_DECRYPT, true)],
        &[(CKA_MODULUS_BITS, 3072)],
        &[],
    );
    let r = check_key_pair_generation(&signing(), CKM_RSA_PKCS_KEY_PAIR_GEN, &public, &private);
    assert_eq!(
        r.clone().unwrap_err().to_string(),
        "the template asks for two purposes, signing (CKA_VERIFY) and encryption (CKA_DECRYPT): a key has one"
    );
    assert_eq!(ckr(r), CKR_TEMPLATE_INCONSISTENT);
    // Across the halves too.
    let (public, private) = pair(
        &[(CKA_ENCRYPT, true)],
        &[(CKA_SIGN, true)],
        &[(CKA_MODULUS_BITS, 3072)],
        &[],
    );
    assert_eq!(
        ckr(check_key_pair_generation(
            &signing(),
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            &public,
            &private
        )),
        CKR_TEMPLATE_INCONSISTENT
    );
    // Secret keys: sign (MAC) and encrypt.
    let t = Template {
        bools: &[(CKA_SIGN, true), (CKA_ENCRYPT, true)],
        ulongs: &[(CKA_VALUE_LEN, 32)],
        bytes: &[],
    };
    let mac = class(Purpose::Mac, &["aes:128"], false);
    let r = check_generation(&mac, CKM_AES_KEY_GEN, &t);
    assert_eq!(
        r.clone().unwrap_err().to_string(),
        "the template asks for two purposes, mac (CKA_SIGN) and encryption (CKA_ENCRYPT): a key has one"
    );
    assert_eq!(ckr(r), CKR_TEMPLATE_INCONSISTENT);
}

#[test]
fn one_purpose_other_than_the_class_is_refused() {
    let (public, private) = pair(
        &[(CKA_ENCRYPT, true)],
        &[],
        &[(CKA_MODULUS_BITS, 3072)],
        &[],
    );
    let r = check_key_pair_generation(&signing(), CKM_RSA_PKCS_KEY_PAIR_GEN, &public, &private);
    assert_eq!(
        r.clone().unwrap_err().to_string(),
        "CKA_ENCRYPT asks for encryption, but class \"c\" is for signing"
    );
    assert_eq!(ckr(r), CKR_TEMPLATE_INCONSISTENT);
    // Flags set false are not requests.
    let (public, private) = pair(
        &[(CKA_ENCRYPT, false)],
        &[(CKA_DECRYPT, false)],
        &[(CKA_MODULUS_BITS, 3072)],
        &[],
    );
    assert!(
        check_key_pair_generation(&signing(), CKM_RSA_PKCS_KEY_PAIR_GEN, &public, &private).is_ok()
    );
    // Recovery flags are never allowed on managed keys.
    let (public, private) = pair(
        &[],
        &[(CKA_SIGN_RECOVER, true)],
        &[(CKA_MODULUS_BITS, 3072)],
        &[],
    );
    assert_eq!(
        ckr(check_key_pair_generation(
            &signing(),
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            &public,
            &private
        )),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
}

#[test]
fn rsa_sizes() {
    let gen = |bits| {
        let ulongs = [(CKA_MODULUS_BITS, bits)];
        let (public, private) = pair(&[], &[], &ulongs, &[]);
        check_key_pair_generation(&signing(), CKM_RSA_PKCS_KEY_PAIR_GEN, &public, &private)
            .map(|_| ())
    };
    assert_eq!(gen(3072), Ok(()));
    assert_eq!(gen(4096), Ok(()));
    let small = gen(2048);
    assert_eq!(
        small.clone().unwrap_err().to_string(),
        "a 2048-bit key is smaller than class \"c\" allows"
    );
    assert_eq!(ckr(small), CKR_KEY_SIZE_RANGE);
    // No size: the policy cannot decide.
    let (public, private) = pair(&[], &[], &[], &[]);
    assert_eq!(
        ckr(check_key_pair_generation(
            &signing(),
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            &public,
            &private
        )),
        CKR_TEMPLATE_INCOMPLETE
    );
    // The size may sit in the private template.
    let public = Template::default();
    let private = Template {
        ulongs: &[(CKA_MODULUS_BITS, 3072)],
        ..Template::default()
    };
    assert!(
        check_key_pair_generation(&signing(), CKM_RSA_PKCS_KEY_PAIR_GEN, &public, &private).is_ok()
    );
}

#[test]
fn curves() {
    let gen = |mech, params: &[u8]| {
        let bytes = [(CKA_EC_PARAMS, params)];
        let (public, private) = pair(&[], &[], &[], &bytes);
        check_key_pair_generation(&signing(), mech, &public, &private).map(|_| ())
    };
    assert_eq!(gen(CKM_EC_KEY_PAIR_GEN, P256), Ok(()));
    assert_eq!(gen(CKM_EC_EDWARDS_KEY_PAIR_GEN, ED25519), Ok(()));
    assert_eq!(gen(CKM_EC_EDWARDS_KEY_PAIR_GEN, ED25519_PRINTABLE), Ok(()));
    let wrong = gen(CKM_EC_KEY_PAIR_GEN, P384);
    assert_eq!(
        wrong.clone().unwrap_err().to_string(),
        "CKA_EC_PARAMS: curve p384 is not allowed in class \"c\""
    );
    assert_eq!(ckr(wrong), CKR_ATTRIBUTE_VALUE_INVALID);
    assert_eq!(
        ckr(gen(CKM_EC_KEY_PAIR_GEN, SECP256K1)),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    // An Edwards OID through the Weierstrass mechanism is no EC curve.
    assert_eq!(
        ckr(gen(CKM_EC_KEY_PAIR_GEN, ED25519)),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    // A family the class lacks: the mechanism is refused.
    assert_eq!(
        ckr(gen(CKM_EC_MONTGOMERY_KEY_PAIR_GEN, ED25519)),
        CKR_MECHANISM_INVALID
    );
    let (public, private) = pair(&[], &[], &[], &[]);
    assert_eq!(
        ckr(check_key_pair_generation(
            &signing(),
            CKM_EC_KEY_PAIR_GEN,
            &public,
            &private
        )),
        CKR_TEMPLATE_INCOMPLETE
    );
}

#[test]
fn mechanisms_outside_the_class() {
    let t = Template {
        ulongs: &[(CKA_VALUE_LEN, 24)],
        ..Template::default()
    };
    let enc = class(Purpose::Encryption, &["aes:128"], false);
    let r = check_generation(&enc, CKM_DES3_KEY_GEN, &t);
    assert_eq!(
        r.clone().unwrap_err().to_string(),
        "class \"c\" allows aes:128: CKM_DES3_KEY_GEN does not generate such keys"
    );
    assert_eq!(ckr(r), CKR_MECHANISM_INVALID);
    // Pair mechanisms through C_GenerateKey and the reverse.
    assert_eq!(
        ckr(check_generation(&enc, CKM_EC_KEY_PAIR_GEN, &t)),
        CKR_MECHANISM_INVALID
    );
    let (public, private) = pair(&[], &[], &[], &[]);
    assert_eq!(
        ckr(check_key_pair_generation(
            &enc,
            CKM_AES_KEY_GEN,
            &public,
            &private
        )),
        CKR_MECHANISM_INVALID
    );
    // RSA in a class that allows only AES.
    let ulongs = [(CKA_MODULUS_BITS, 4096)];
    let (public, private) = pair(&[], &[], &ulongs, &[]);
    assert_eq!(
        ckr(check_key_pair_generation(
            &enc,
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            &public,
            &private
        )),
        CKR_MECHANISM_INVALID
    );
}

#[test]
fn secret_key_sizes() {
    let enc = class(Purpose::Encryption, &["aes:256"], false);
    let gen = |len| {
        let ulongs = [(CKA_VALUE_LEN, len)];
        let t = Template {
            ulongs: &ulongs,
            ..Template::default()
        };
        check_generation(&enc, CKM_AES_KEY_GEN, &t).map(|_| ())
    };
    assert_eq!(gen(32), Ok(()));
    assert_eq!(ckr(gen(16)), CKR_KEY_SIZE_RANGE);
    assert_eq!(
        ckr(check_generation(
            &enc,
            CKM_AES_KEY_GEN,
            &Template::default()
        )),
        CKR_TEMPLATE_INCOMPLETE
    );
    // hmac:N admits generic secret and SHA key generation; generic:N only
    // the generic one.
    let mac = class(Purpose::Mac, &["hmac:256"], false);
    let t = Template {
        ulongs: &[(CKA_VALUE_LEN, 32)],
        ..Template::default()
    };
    assert!(check_generation(&mac, CKM_GENERIC_SECRET_KEY_GEN, &t).is_ok());
    assert!(check_generation(&mac, CKM_SHA256_KEY_GEN, &t).is_ok());
    let generic = class(Purpose::Mac, &["generic:256"], false);
    assert!(check_generation(&generic, CKM_GENERIC_SECRET_KEY_GEN, &t).is_ok());
    assert_eq!(
        ckr(check_generation(&generic, CKM_SHA256_KEY_GEN, &t)),
        CKR_MECHANISM_INVALID
    );
}

#[test]
fn protection_attributes() {
    let enc = class(Purpose::Encryption, &["aes:128"], false);
    let gen = |class: &KeyClass, bools: &[(u64, bool)]| {
        let t = Template {
            bools,
            ulongs: &[(CKA_VALUE_LEN, 16)],
            bytes: &[],
        };
        check_generation(class, CKM_AES_KEY_GEN, &t)
    };
    // Extractable without backup.
    let r = gen(&enc, &[(CKA_EXTRACTABLE, true)]);
    assert_eq!(
        r.clone().unwrap_err().to_string(),
        "CKA_EXTRACTABLE: class \"c\" does not allow backup, so its keys cannot be extractable"
    );
    assert_eq!(ckr(r), CKR_ATTRIBUTE_VALUE_INVALID);
    // Not sensitive.
    assert_eq!(
        ckr(gen(&enc, &[(CKA_SENSITIVE, false)])),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    // Forced for a class without backup.
    let adj = gen(&enc, &[(CKA_EXTRACTABLE, false), (CKA_ENCRYPT, true)]).unwrap();
    assert_eq!(
        adj.bools,
        [
            (CKA_SENSITIVE, true),
            (CKA_EXTRACTABLE, false),
            (CKA_SIGN, false),
            (CKA_VERIFY, false),
            (CKA_ENCRYPT, true),
            (CKA_DECRYPT, true),
            (CKA_WRAP, false),
            (CKA_UNWRAP, false),
            (CKA_DERIVE, false),
        ]
    );
    // A class with backup: extractable, only to the trusted key.
    let backed = class(Purpose::Encryption, &["aes:128"], true);
    let adj = gen(&backed, &[(CKA_EXTRACTABLE, true)]).unwrap();
    assert_eq!(adj.get(CKA_EXTRACTABLE), Some(true));
    assert_eq!(adj.get(CKA_WRAP_WITH_TRUSTED), Some(true));
    assert_eq!(adj.get(CKA_SENSITIVE), Some(true));
    assert_eq!(
        ckr(gen(
            &backed,
            &[(CKA_EXTRACTABLE, true), (CKA_WRAP_WITH_TRUSTED, false)]
        )),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    // An attribute twice with different values.
    assert_eq!(
        ckr(gen(&enc, &[(CKA_SENSITIVE, true), (CKA_SENSITIVE, false)])),
        CKR_TEMPLATE_INCONSISTENT
    );
    assert!(gen(&enc, &[(CKA_SENSITIVE, true), (CKA_SENSITIVE, true)]).is_ok());
}

#[test]
fn forced_flags_for_each_purpose() {
    /// Purpose, algorithms, and the flags on for a secret key, a private
    /// key and a public key.
    type Case = (Purpose, &'static [&'static str], [&'static [u64]; 3]);
    let cases: [Case; 5] = [
        (
            Purpose::Signing,
            &["ec:p256"],
            [&[], &[CKA_SIGN], &[CKA_VERIFY]],
        ),
        (
            Purpose::Encryption,
            &["aes:128", "rsa:2048"],
            [&[CKA_ENCRYPT, CKA_DECRYPT], &[CKA_DECRYPT], &[CKA_ENCRYPT]],
        ),
        (
            Purpose::Wrapping,
            &["aes:128", "rsa:2048"],
            [&[CKA_WRAP, CKA_UNWRAP], &[CKA_UNWRAP], &[CKA_WRAP]],
        ),
        (Purpose::Derivation, &["ec:p256"], [&[], &[CKA_DERIVE], &[]]),
        (
            Purpose::Mac,
            &["aes:128"],
            [&[CKA_SIGN, CKA_VERIFY], &[], &[]],
        ),
    ];
    for (purpose, algs, [secret_on, private_on, public_on]) in cases {
        let c = class(purpose, algs, false);
        if !secret_on.is_empty() {
            let t = Template {
                ulongs: &[(CKA_VALUE_LEN, 16)],
                ..Template::default()
            };
            let adj = check_generation(&c, CKM_AES_KEY_GEN, &t).unwrap();
            for flag in ObjectKind::Secret.usage_flags() {
                assert_eq!(
                    adj.get(*flag),
                    Some(secret_on.contains(flag)),
                    "{purpose} {flag:#x}"
                );
            }
        }
        if !private_on.is_empty() {
            let ec = algs.contains(&"ec:p256");
            let ec_params = [(CKA_EC_PARAMS, P256)];
            let modulus_bits = [(CKA_MODULUS_BITS, 2048)];
            let (mech, public) = if ec {
                let bytes: &[(u64, &[u8])] = &ec_params;
                (
                    CKM_EC_KEY_PAIR_GEN,
                    Template {
                        bytes,
                        ..Template::default()
                    },
                )
            } else {
                (
                    CKM_RSA_PKCS_KEY_PAIR_GEN,
                    Template {
                        ulongs: &modulus_bits,
                        ..Template::default()
                    },
                )
            };
            let private = Template::default();
            let adj = check_key_pair_generation(&c, mech, &public, &private).unwrap();
            for flag in ObjectKind::Private.usage_flags() {
                assert_eq!(
                    adj.private.get(*flag),
                    Some(private_on.contains(flag)),
                    "{purpose} {flag:#x}"
                );
            }
            for flag in ObjectKind::Public.usage_flags() {
                assert_eq!(
                    adj.public.get(*flag),
                    Some(public_on.contains(flag)),
                    "{purpose} {flag:#x}"
                );
            }
        }
    }
}

#[test]
fn weakening() {
    let current = Template {
        bools: &[
            (CKA_SENSITIVE, true),
            (CKA_EXTRACTABLE, false),
            (CKA_WRAP_WITH_TRUSTED, true),
            (CKA_MODIFIABLE, false),
            (CKA_SIGN, true),
            (CKA_VERIFY, false),
            (CKA_DECRYPT, false),
            (CKA_ALWAYS_SENSITIVE, true),
            (CKA_PRIVATE, true),
        ],
        ulongs: &[(CKA_KEY_TYPE, CKK_EC)],
        bytes: &[(CKA_LABEL, b"k"), (CKA_END_DATE, b"20300101")],
    };
    let sig = Some(Purpose::Signing);
    let weak = |attr, v| is_weakening(sig, &current, attr, v);
    use AttrValue::*;
    // Protection turned off.
    assert!(weak(CKA_SENSITIVE, Bool(false)));
    assert!(weak(CKA_EXTRACTABLE, Bool(true)));
    assert!(weak(CKA_WRAP_WITH_TRUSTED, Bool(false)));
    assert!(weak(CKA_MODIFIABLE, Bool(true)));
    assert!(weak(CKA_COPYABLE, Bool(true)));
    assert!(weak(CKA_DESTROYABLE, Bool(true)));
    assert!(weak(CKA_TRUSTED, Bool(true)));
    assert!(weak(CKA_PRIVATE, Bool(false)));
    assert!(weak(CKA_ALWAYS_AUTHENTICATE, Bool(false)));
    // Same value again, or protection turned on: fine.
    assert!(!weak(CKA_SENSITIVE, Bool(true)));
    assert!(!weak(CKA_EXTRACTABLE, Bool(false)));
    assert!(!weak(CKA_COPYABLE, Bool(false)));
    assert!(!weak(CKA_ALWAYS_AUTHENTICATE, Bool(true)));
    // Usage flags: within the purpose fine, beyond it weakening, off fine.
    assert!(!weak(CKA_VERIFY, Bool(true)));
    assert!(!weak(CKA_SIGN, Bool(false)));
    assert!(weak(CKA_DECRYPT, Bool(true)));
    assert!(weak(CKA_DERIVE, Bool(true)));
    assert!(weak(CKA_SIGN_RECOVER, Bool(true)));
    assert!(!weak(CKA_DECRYPT, Bool(false)));
    // Without a known purpose, any flag turned on is weakening.
    assert!(is_weakening(None, &current, CKA_VERIFY, Bool(true)));
    assert!(!is_weakening(None, &current, CKA_SIGN, Bool(true)));
    // Token-set and restricting attributes: any change.
    assert!(weak(CKA_ALWAYS_SENSITIVE, Bool(false)));
    assert!(weak(CKA_NEVER_EXTRACTABLE, Bool(true)));
    assert!(weak(CKA_END_DATE, Bytes(b"20990101")));
    assert!(!weak(CKA_END_DATE, Bytes(b"20300101")));
    assert!(weak(CKA_ALLOWED_MECHANISMS, Bytes(&[0; 8])));
    assert!(weak(CKA_KEY_TYPE, Ulong(CKK_RSA)));
    assert!(!weak(CKA_KEY_TYPE, Ulong(CKK_EC)));
    // A protection attribute of the wrong type.
    assert!(weak(CKA_SENSITIVE, Ulong(0)));
    // Names are not protection.
    assert!(!weak(CKA_LABEL, Bytes(b"renamed")));
    assert!(!weak(CKA_ID, Bytes(b"\x01")));
    // As a refusal.
    let r = check_change(sig, &current, CKA_SENSITIVE, Bool(false)).unwrap_err();
    assert_eq!(r.ckr(), CKR_ATTRIBUTE_READ_ONLY);
    assert_eq!(
        r.to_string(),
        "CKA_SENSITIVE (0x103) cannot be changed that way on a managed key"
    );
    assert_eq!(check_change(sig, &current, CKA_LABEL, Bytes(b"x")), Ok(()));
}

fn derived(bools: &[(u64, bool)]) -> Result<Adjustments, Refusal> {
    check_derivation(
        false,
        &Template {
            bools,
            ..Template::default()
        },
    )
}

#[test]
fn derived_keys_are_sensitive_session_keys_of_one_purpose() {
    let adj = derived(&[(CKA_ENCRYPT, true), (CKA_DECRYPT, true)]).unwrap();
    assert_eq!(adj.get(CKA_TOKEN), Some(false));
    assert_eq!(adj.get(CKA_SENSITIVE), Some(true));
    assert_eq!(adj.get(CKA_EXTRACTABLE), Some(false));
    assert_eq!(adj.get(CKA_ENCRYPT), Some(true));
    assert_eq!(adj.get(CKA_DECRYPT), Some(true));
    for flag in [CKA_SIGN, CKA_VERIFY, CKA_WRAP, CKA_UNWRAP, CKA_DERIVE] {
        assert_eq!(adj.get(flag), Some(false), "{flag:#x}");
    }
    // Nothing asked: every usage off, protection forced.
    let adj = derived(&[]).unwrap();
    assert_eq!(adj.get(CKA_WRAP), Some(false));
    assert_eq!(adj.get(CKA_EXTRACTABLE), Some(false));
    // Explicit values that agree with the rules are fine.
    let ok = [
        (CKA_TOKEN, false),
        (CKA_SENSITIVE, true),
        (CKA_EXTRACTABLE, false),
        (CKA_SIGN, true),
        (CKA_VERIFY, true),
    ];
    assert!(derived(&ok).is_ok());
}

#[test]
fn derived_keys_refuse_what_would_weaken_them() {
    for bad in [
        (CKA_TOKEN, true),
        (CKA_SENSITIVE, false),
        (CKA_EXTRACTABLE, true),
        (CKA_WRAP, true),
        (CKA_UNWRAP, true),
        (CKA_SIGN_RECOVER, true),
    ] {
        assert_eq!(ckr(derived(&[bad])), CKR_ATTRIBUTE_VALUE_INVALID, "{bad:?}");
    }
    assert_eq!(
        ckr(derived(&[(CKA_ENCRYPT, true), (CKA_SIGN, true)])),
        CKR_TEMPLATE_INCONSISTENT
    );
    assert_eq!(
        ckr(derived(&[(CKA_SENSITIVE, true), (CKA_SENSITIVE, false)])),
        CKR_TEMPLATE_INCONSISTENT
    );
    // Wrapping where the class for application keys is for wrapping.
    let wrap = [(CKA_WRAP, true), (CKA_UNWRAP, true)];
    let t = Template {
        bools: &wrap,
        ..Template::default()
    };
    let adj = check_derivation(true, &t).unwrap();
    assert_eq!(adj.get(CKA_WRAP), Some(true));
    assert_eq!(adj.get(CKA_ENCRYPT), Some(false));
}

#[test]
fn adoption_requires_every_attribute_of_the_class() {
    let aes = class(Purpose::Encryption, &["aes:256"], false);
    let good = [
        (CKA_SENSITIVE, true),
        (CKA_ALWAYS_SENSITIVE, true),
        (CKA_EXTRACTABLE, false),
        (CKA_NEVER_EXTRACTABLE, true),
        (CKA_ENCRYPT, true),
        (CKA_DECRYPT, true),
        (CKA_WRAP, false),
    ];
    fn t(bools: &[(u64, bool)]) -> Template<'_> {
        Template {
            bools,
            ..Template::default()
        }
    }
    assert_eq!(
        adoption_problems(&aes, true, &t(&good)),
        Vec::<String>::new()
    );
    // A readable, extractable key with a second purpose: every problem named.
    let bad = [
        (CKA_SENSITIVE, false),
        (CKA_ALWAYS_SENSITIVE, false),
        (CKA_EXTRACTABLE, true),
        (CKA_NEVER_EXTRACTABLE, false),
        (CKA_ENCRYPT, true),
        (CKA_WRAP, true),
    ];
    let problems = adoption_problems(&aes, true, &t(&bad));
    assert_eq!(problems.len(), 5, "{problems:?}");
    for name in [
        "CKA_SENSITIVE",
        "CKA_ALWAYS_SENSITIVE",
        "CKA_EXTRACTABLE",
        "CKA_NEVER_EXTRACTABLE",
        "CKA_WRAP",
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(name) || p.contains(name)),
            "{name}: {problems:?}"
        );
    }
    // Attributes not shown do not comply.
    assert_eq!(adoption_problems(&aes, true, &t(&[])).len(), 4);
    // A backup class may be extractable.
    let backup = class(Purpose::Encryption, &["aes:256"], true);
    let extractable = [
        (CKA_SENSITIVE, true),
        (CKA_ALWAYS_SENSITIVE, true),
        (CKA_EXTRACTABLE, true),
        (CKA_DECRYPT, true),
    ];
    assert_eq!(
        adoption_problems(&backup, true, &t(&extractable)),
        Vec::<String>::new()
    );
    // A signing private key that also decrypts has two purposes.
    let private = [
        (CKA_SENSITIVE, true),
        (CKA_ALWAYS_SENSITIVE, true),
        (CKA_EXTRACTABLE, false),
        (CKA_NEVER_EXTRACTABLE, true),
        (CKA_SIGN, true),
        (CKA_DECRYPT, true),
    ];
    let problems = adoption_problems(&signing(), false, &t(&private));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("CKA_DECRYPT"), "{problems:?}");
}
