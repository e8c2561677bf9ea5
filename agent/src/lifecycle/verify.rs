//! Verification: a key's versions checked in the HSM (present, genuine,
//! the class's attributes, a test operation), and fingerprints recorded for
//! versions made before fingerprints were.

use cryptoki_sys as ck;
use keyward_inventory::KeyVersion;
use keyward_policy::{Algorithm, Purpose};
use keyward_protocol::admin::{AdminErrorKind, KeyResponse};
use keyward_protocol::{Attribute, MechParam, Mechanism, Op};

use crate::agent::Agent;
use crate::backend::BackendObject;
use crate::keys::ManagedRef;

use super::hsm::*;
use super::*;

impl Agent {
    /// Proves the current version works inside the HSM: a signature made
    /// and verified, a block encrypted and decrypted, a session key wrapped
    /// and unwrapped, a MAC made and verified, or a shared secret derived
    /// on both sides. Nothing leaves the HSM but random test data and its
    /// results.
    pub(crate) fn verify_key(&self, t: &Target<'_>) -> AResult<KeyResponse> {
        let v = t.current()?;
        let r = &t.key.record;
        let (alg, purpose) = (r.algorithm, r.purpose);
        let backend = self.backend(t.token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let m = ManagedRef {
            key_id: r.id,
            version: v.version,
        };
        let token = &t.token.config.label;
        let one = |cko: u64| -> AResult<BackendObject> {
            s.genuine(&self.keys, token, &v.backend_id, cko, m)?
                .first()
                .copied()
                .map_or_else(
                    || {
                        fail(
                            AdminErrorKind::Failed,
                            format!(
                                "version {} (CKA_ID {}): no {} on the HSM",
                                v.version,
                                hex::encode(&v.backend_id),
                                class_name(cko)
                            ),
                        )
                    },
                    Ok,
                )
        };
        let mismatch = |what: &str| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("{what}: the results differ"),
        };
        let detail = match (purpose, alg) {
            (Purpose::Signing, _) => {
                let (mech, what) = match alg {
                    Algorithm::Ec(_) => (Mechanism::plain(ck::CKM_ECDSA), "ECDSA"),
                    Algorithm::Ed25519 | Algorithm::Ed448 => {
                        (Mechanism::plain(ck::CKM_EDDSA), "EdDSA")
                    }
                    _ => (Mechanism::plain(ck::CKM_SHA256_RSA_PKCS), "SHA256-RSA-PKCS"),
                };
                let data = random(32)?;
                let sig = s.run(Op::Sign, &mech, one(ck::CKO_PRIVATE_KEY)?, &data)?;
                s.verify(&mech, one(ck::CKO_PUBLIC_KEY)?, &data, &sig)?;
                format!("{what} signature of a random digest made and verified")
            }
            (Purpose::Encryption, Algorithm::Rsa { .. }) => {
                let mech = oaep();
                let data = random(32)?;
                let c = s.run(Op::Encrypt, &mech, one(ck::CKO_PUBLIC_KEY)?, &data)?;
                let p = s.run(Op::Decrypt, &mech, one(ck::CKO_PRIVATE_KEY)?, &c)?;
                if p != data {
                    return Err(mismatch("RSA-OAEP"));
                }
                "RSA-OAEP (SHA-1) encryption of random data made and reversed".to_owned()
            }
            (Purpose::Encryption, _) => {
                let key = one(ck::CKO_SECRET_KEY)?;
                let mech = Mechanism {
                    mechanism: ck::CKM_AES_CBC_PAD,
                    param: MechParam::Bytes(random(16)?),
                };
                let data = random(32)?;
                let c = s.run(Op::Encrypt, &mech, key, &data)?;
                let p = s.run(Op::Decrypt, &mech, key, &c)?;
                if p != data || c == data {
                    return Err(mismatch("AES-CBC-PAD"));
                }
                "AES-CBC-PAD encryption of a random block made and reversed".to_owned()
            }
            (Purpose::Wrapping, _) => {
                let (wrapper, unwrapper, mech, what) = match alg {
                    Algorithm::Rsa { .. } => (
                        one(ck::CKO_PUBLIC_KEY)?,
                        one(ck::CKO_PRIVATE_KEY)?,
                        oaep(),
                        "RSA-OAEP",
                    ),
                    _ => {
                        let k = one(ck::CKO_SECRET_KEY)?;
                        (k, k, Mechanism::plain(ck::CKM_AES_KEY_WRAP_PAD), "AES-KWP")
                    }
                };
                let session_key = backend
                    .generate_key(
                        s.handle,
                        &Mechanism::plain(ck::CKM_AES_KEY_GEN),
                        &[
                            Attribute::bool(ck::CKA_TOKEN, false),
                            Attribute::ulong(ck::CKA_VALUE_LEN, 32),
                            Attribute::bool(ck::CKA_EXTRACTABLE, true),
                            Attribute::bool(ck::CKA_ENCRYPT, true),
                        ],
                    )
                    .map_err(|e| hsm_err("C_GenerateKey (session AES key)", e))?;
                let wrapped = backend
                    .wrap_key(s.handle, &mech, wrapper, session_key)
                    .map_err(|e| hsm_err("C_WrapKey", e))?;
                let unwrapped = backend
                    .unwrap_key(
                        s.handle,
                        &mech,
                        unwrapper,
                        &wrapped,
                        &session_aes_template(),
                    )
                    .map_err(|e| hsm_err("C_UnwrapKey", e))?;
                if kcv(&s, session_key)? != kcv(&s, unwrapped)? {
                    return Err(mismatch(what));
                }
                format!("{what}: a fresh session AES key wrapped, unwrapped, check values equal")
            }
            (Purpose::Mac, _) => {
                let key = one(ck::CKO_SECRET_KEY)?;
                let (mech, what) = match alg {
                    Algorithm::Aes { .. } => (Mechanism::plain(ck::CKM_AES_CMAC), "AES-CMAC"),
                    _ => (Mechanism::plain(ck::CKM_SHA256_HMAC), "HMAC-SHA256"),
                };
                let data = random(32)?;
                let tag = s.run(Op::Sign, &mech, key, &data)?;
                s.verify(&mech, key, &data, &tag)?;
                format!("{what} of random data made and verified")
            }
            (Purpose::Derivation, _) => {
                let private = one(ck::CKO_PRIVATE_KEY)?;
                let public = one(ck::CKO_PUBLIC_KEY)?;
                let Recipe::Pair(gen, params) = recipe(alg) else {
                    return fail(AdminErrorKind::Failed, format!("{alg} does not derive"));
                };
                let mut peer_public = vec![Attribute::bool(ck::CKA_TOKEN, false)];
                peer_public.extend(params);
                let (peer_pub, peer_priv) = backend
                    .generate_key_pair(
                        s.handle,
                        &Mechanism::plain(gen),
                        &peer_public,
                        &[
                            Attribute::bool(ck::CKA_TOKEN, false),
                            Attribute::bool(ck::CKA_DERIVE, true),
                        ],
                    )
                    .map_err(|e| hsm_err("C_GenerateKeyPair (session peer)", e))?;
                let point = |o| -> AResult<Vec<u8>> {
                    s.bytes(o, ck::CKA_EC_POINT)?
                        .map_or_else(|| fail(AdminErrorKind::Failed, "no CKA_EC_POINT"), Ok)
                };
                let derive = |base, other: Vec<u8>| -> AResult<BackendObject> {
                    backend
                        .derive_key(
                            s.handle,
                            &Mechanism {
                                mechanism: ck::CKM_ECDH1_DERIVE,
                                param: MechParam::Ecdh1Derive {
                                    kdf: ck::CKD_NULL,
                                    shared_data: Vec::new(),
                                    public_data: other,
                                },
                            },
                            base,
                            &session_aes_template(),
                        )
                        .map_err(|e| hsm_err("C_DeriveKey (ECDH)", e))
                };
                let ours = derive(private, point(peer_pub)?)?;
                let theirs = derive(peer_priv, point(public)?)?;
                if kcv(&s, ours)? != kcv(&s, theirs)? {
                    return Err(mismatch("ECDH"));
                }
                "ECDH with a fresh session key pair: both sides derived the same secret (check values equal)".to_owned()
            }
        };
        log::info!("key {} version {} verified: {detail}", t.label(), v.version);
        Ok(KeyResponse::Verified {
            key: r.name.clone(),
            version: v.version,
            detail,
        })
    }

    /// Records the fingerprint of every version recorded without one (a
    /// store from before fingerprints), from the object that has its
    /// `CKA_ID` on the HSM, when exactly one fingerprint is found there;
    /// otherwise (none, or several: a plant beside the key) nothing is
    /// recorded, and the version is reported in the log and the trail and
    /// keeps being recognised by its `CKA_ID` until an administrator
    /// resolves it. Run at start, before serving.
    pub fn record_missing_fingerprints(&self) {
        for key in self.keys.all() {
            let missing: Vec<&KeyVersion> = key
                .versions
                .iter()
                .filter(|v| v.fingerprint.is_none() && v.state != KeyState::Destroyed)
                .collect();
            if missing.is_empty() {
                continue;
            }
            let Some(token) = self.token_labelled(&key.record.token) else {
                continue;
            };
            let Ok(backend) = token.backend() else {
                continue;
            };
            let Ok(s) = HsmSession::open(backend.as_ref()) else {
                continue;
            };
            for v in missing {
                let objects = match s.find(&[Attribute::bytes(ck::CKA_ID, v.backend_id.clone())]) {
                    Ok(o) => o,
                    Err(e) => {
                        log::error!("fingerprints: {}", e.message);
                        continue;
                    }
                };
                let mut found: Vec<[u8; 32]> = objects
                    .iter()
                    .filter_map(|&o| crate::keys::fingerprint(backend.as_ref(), s.handle, o))
                    .collect();
                found.sort_unstable();
                found.dedup();
                let name = format!(
                    "{}/{} version {}",
                    key.record.token, key.record.name, v.version
                );
                let problem =
                    match found.as_slice() {
                        [fp] => match self.keys.inventory().set_fingerprint(
                            key.record.id,
                            v.version,
                            fp,
                        ) {
                            Ok(()) => {
                                log::info!("key {name}: fingerprint recorded");
                                None
                            }
                            Err(e) => Some(format!("the fingerprint could not be recorded: {e}")),
                        },
                        [] => Some(format!(
                            "no object with CKA_ID {} shows a public value or check value: \
                         recognised by its CKA_ID alone",
                            hex::encode(&v.backend_id)
                        )),
                        several => Some(format!(
                            "{} different keys have CKA_ID {} on the HSM (a planted object?): \
                         no fingerprint recorded; recognised by its CKA_ID alone until resolved",
                            several.len(),
                            hex::encode(&v.backend_id)
                        )),
                    };
                if let Some(problem) = problem {
                    log::error!("key {name}: {problem}");
                    let mut e = crate::audit::event(
                        keyward_inventory::AuditKind::Discovery,
                        keyward_inventory::Actor::Agent,
                        "fingerprint",
                    );
                    e.token = Some(key.record.token.clone());
                    e.key = Some(key.record.name.clone());
                    e.key_version = Some(v.version);
                    e.reason = problem;
                    self.audit.record(e);
                }
            }
            if let Err(e) = self.refresh(key.record.id) {
                log::error!("fingerprints: {}", e.message);
            }
        }
    }
}
