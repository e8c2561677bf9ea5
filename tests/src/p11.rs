//! The module as applications load it: `cryptoki`, OS locking, the test
//! token's slot, sessions, logins, keys.

use std::fmt::Debug;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::harness::Env;
use crate::raw::Raw;

/// DER of the P-256 curve OID (prime256v1), for `CKA_EC_PARAMS`.
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the Ed25519 OID (1.3.101.112), for `CKA_EC_PARAMS`.
pub const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// A loaded, initialised module and the test token's slot.
#[derive(Debug)]
pub struct Ctx {
    pub p11: Pkcs11,
    pub raw: Raw,
    pub slot: Slot,
    pub env: Env,
}

/// Loads the module of `env` without initialising it.
pub fn load(env: &Env) -> (Pkcs11, Raw) {
    let p11 = Pkcs11::new(&env.module)
        .unwrap_or_else(|e| panic!("cannot load {} with cryptoki: {e}", env.module));
    let raw = Raw::load(&env.module);
    (p11, raw)
}

/// The arguments applications pass: OS locking, no mutex callbacks.
pub fn os_threads() -> CInitializeArgs {
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

/// The slot whose token has `label`; panics with the labels it saw.
pub fn find_slot(p11: &Pkcs11, label: &str) -> Slot {
    let slots = p11
        .get_slots_with_token()
        .expect("C_GetSlotList(tokenPresent)");
    let mut seen = Vec::new();
    for s in slots {
        let info = p11.get_token_info(s).expect("C_GetTokenInfo");
        if info.label().trim_end() == label {
            return s;
        }
        seen.push(info.label().trim_end().to_string());
    }
    panic!("no slot has a token labelled {label:?}; tokens seen: {seen:?}");
}

impl Ctx {
    /// Loads the module, `C_Initialize` with OS locking, finds the token.
    pub fn new(env: &Env) -> Ctx {
        let (p11, raw) = load(env);
        match p11.initialize(os_threads()) {
            Ok(()) => {}
            // Direct mode only: a test's `reference()` already initialised
            // the very same SoftHSM2 library.
            Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) if env.direct => {}
            Err(e) => panic!("C_Initialize with CKF_OS_LOCKING_OK: {e}"),
        }
        let slot = find_slot(&p11, &env.token);
        Ctx {
            p11,
            raw,
            slot,
            env: env.clone(),
        }
    }

    pub fn pin(&self) -> AuthPin {
        AuthPin::new(self.env.pin.clone().into())
    }

    pub fn so_pin(&self) -> AuthPin {
        AuthPin::new(self.env.so_pin.clone().into())
    }

    pub fn ro(&self) -> Session {
        self.p11
            .open_ro_session(self.slot)
            .expect("C_OpenSession (RO)")
    }

    pub fn rw(&self) -> Session {
        self.p11
            .open_rw_session(self.slot)
            .expect("C_OpenSession (RW)")
    }

    /// An RW session logged in as the user.
    pub fn user(&self) -> Session {
        let s = self.rw();
        match s.login(UserType::User, Some(&self.pin())) {
            Ok(()) => {}
            // Direct mode only: `reference()` is this very library and
            // already logged in.
            Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) if self.env.direct => {}
            Err(e) => panic!("C_Login(CKU_USER) with the right PIN: {e}"),
        }
        s
    }

    pub fn slot_id(&self) -> u64 {
        self.slot.id()
    }
}

/// The `CKR_*` of a cryptoki error, or a panic for non-PKCS#11 errors.
pub fn rv_error(e: &Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => *rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

/// Asserts that `res` failed with `expected`.
#[track_caller]
pub fn expect_err<T: Debug>(res: cryptoki::error::Result<T>, expected: RvError) {
    match res {
        Ok(v) => panic!("expected {expected:?}, the call succeeded with {v:?}"),
        Err(e) => assert_eq!(rv_error(&e), expected, "wrong error: {e}"),
    }
}

/// Asserts that `res` failed with one of `expected`.
#[track_caller]
pub fn expect_err_in<T: Debug>(res: cryptoki::error::Result<T>, expected: &[RvError]) {
    match res {
        Ok(v) => panic!("expected one of {expected:?}, the call succeeded with {v:?}"),
        Err(e) => assert!(
            expected.contains(&rv_error(&e)),
            "expected one of {expected:?}, got {e}"
        ),
    }
}

/// An RSA key pair (token objects when `token`), label and id given.
pub fn rsa_pair(s: &Session, bits: u64, label: &str, token: bool) -> (ObjectHandle, ObjectHandle) {
    let public = vec![
        Attribute::Token(token),
        Attribute::ModulusBits(bits.into()),
        Attribute::PublicExponent(vec![1, 0, 1]),
        Attribute::Verify(true),
        Attribute::Encrypt(true),
        Attribute::Wrap(true),
        Attribute::VerifyRecover(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(label.as_bytes().to_vec()),
    ];
    let private = vec![
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
        Attribute::Decrypt(true),
        Attribute::Unwrap(true),
        Attribute::SignRecover(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(label.as_bytes().to_vec()),
    ];
    s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
        .expect("C_GenerateKeyPair (RSA)")
}

/// An EC key pair on the curve given by its DER parameters.
pub fn ec_pair(
    s: &Session,
    params: &[u8],
    label: &str,
    token: bool,
) -> (ObjectHandle, ObjectHandle) {
    let public = vec![
        Attribute::Token(token),
        Attribute::EcParams(params.to_vec()),
        Attribute::Verify(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(label.as_bytes().to_vec()),
    ];
    let private = vec![
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
        Attribute::Derive(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(label.as_bytes().to_vec()),
    ];
    s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .expect("C_GenerateKeyPair (EC)")
}

/// A session AES key of `len` bytes with every use allowed.
pub fn aes_key(s: &Session, len: u64, extractable: bool) -> ObjectHandle {
    s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(len.into()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Sensitive(!extractable),
            Attribute::Extractable(extractable),
        ],
    )
    .expect("C_GenerateKey (AES)")
}

/// An AES key with a known value (for known-answer tests).
pub fn aes_key_value(s: &Session, value: &[u8]) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Value(value.to_vec()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ])
    .expect("C_CreateObject (AES key with a known value)")
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Bytes from hex (test vectors; white space is ignored).
pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(&s).unwrap_or_else(|e| panic!("not hex ({e}): {s}"))
}

/// SoftHSM2 loaded directly next to the module, on a token of its own with
/// the same label and PINs, to compare keyward with the HSM it fronts. In
/// direct mode this is the library under test itself.
pub fn reference(env: &Env) -> Ctx {
    if env.direct {
        let (p11, raw) = load(env);
        match p11.initialize(os_threads()) {
            Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize of SoftHSM2: {e}"),
        }
        let slot = find_slot(&p11, &env.token);
        return Ctx {
            p11,
            raw,
            slot,
            env: env.clone(),
        };
    }
    let dir = env.dir.join("reference");
    let conf = crate::harness::softhsm_token(&dir, &env.token, &env.pin, &env.so_pin);
    // SoftHSM2 reads SOFTHSM2_CONF at C_Initialize; the module under test
    // does not read it (its agent runs SoftHSM2 in another process).
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let mut renv = env.clone();
    renv.module = crate::harness::softhsm_lib();
    renv.direct = true;
    let (p11, raw) = load(&renv);
    p11.initialize(os_threads())
        .expect("C_Initialize of SoftHSM2 (reference)");
    let slot = find_slot(&p11, &env.token);
    Ctx {
        p11,
        raw,
        slot,
        env: renv,
    }
}
