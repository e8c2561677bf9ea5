//! Verification: a key's versions checked in the HSM (present, genuine,
//! the class's attributes, a test operation), and fingerprints recorded for
//! versions made before fingerprints were.

use std::cell::RefCell;

use cryptoki_sys as ck;
use keyward_inventory::KeyVersion;
use keyward_policy::{Algorithm, Purpose};
use keyward_protocol::admin::{AdminErrorKind, KeyResponse};
use keyward_protocol::{Attribute, MechParam, Mechanism, Op};

use crate::backend::BackendObject;
use crate::keys::ManagedRef;

use super::hsm::*;
use super::*;

impl Lifecycle {
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
        let probe = Probe {
            agent: self,
            s: &s,
            backend: backend.as_ref(),
            token: &t.token.config.label,
            version: v,
            managed: ManagedRef {
                key_id: r.id,
                version: v.version,
            },
            made: RefCell::new(Vec::new()),
            given: Vec::new(),
        };
        let detail = probe.prove(purpose, alg)?;
        log::info!("key {} version {} verified: {detail}", t.label(), v.version);
        Ok(KeyResponse::Verified {
            key: r.name.clone(),
            version: v.version,
            detail,
        })
    }

    /// [`Self::verify_key`]'s test on objects not yet recorded (`given`:
    /// each with its class, e.g. a key just imported), on session `s`.
    pub(crate) fn prove_objects(
        &self,
        s: &HsmSession<'_>,
        version: &KeyVersion,
        given: Vec<(u64, BackendObject)>,
        (purpose, alg): (Purpose, Algorithm),
    ) -> AResult<String> {
        Probe {
            agent: self,
            s,
            backend: s.backend,
            token: "",
            version,
            managed: ManagedRef {
                key_id: 0,
                version: version.version,
            },
            made: RefCell::new(Vec::new()),
            given,
        }
        .prove(purpose, alg)
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

/// One version's verification on an HSM session of its own. Every object
/// it makes is a session object, destroyed when the probe is dropped (and
/// gone with the session in any case).
struct Probe<'a, 's> {
    agent: &'a Lifecycle,
    s: &'a HsmSession<'s>,
    backend: &'a dyn Backend,
    token: &'a str,
    version: &'a KeyVersion,
    managed: ManagedRef,
    /// Objects to prove instead of the version's on the token (a key just
    /// imported, a drill's unwrapped session objects), by class.
    given: Vec<(u64, BackendObject)>,
    made: RefCell<Vec<BackendObject>>,
}

impl Drop for Probe<'_, '_> {
    fn drop(&mut self) {
        for o in self.made.get_mut().drain(..) {
            if let Err(e) = self.backend.destroy_object(self.s.handle, o) {
                log::warn!("verification: cannot destroy session object {o}: {e}");
            }
        }
    }
}

/// A test whose two sides disagree.
fn mismatch(what: &str) -> AdminError {
    AdminError {
        kind: AdminErrorKind::Failed,
        message: format!("{what}: the results differ"),
    }
}

impl Probe<'_, '_> {
    /// `o`, made by the probe, to be destroyed when it is done.
    fn scratch(&self, o: BackendObject) -> BackendObject {
        self.made.borrow_mut().push(o);
        o
    }

    /// The test operation of a key of `purpose` and `alg`.
    fn prove(&self, purpose: Purpose, alg: Algorithm) -> AResult<String> {
        match (purpose, alg) {
            (Purpose::Signing, _) => self.sign(alg),
            (Purpose::Encryption, Algorithm::Rsa { .. }) => self.encrypt_rsa(),
            (Purpose::Encryption, _) => self.encrypt_aes(),
            (Purpose::Wrapping, _) => self.wrap(alg),
            (Purpose::Mac, _) => self.mac(alg),
            (Purpose::Derivation, _) => self.derive(alg),
        }
    }

    /// The version's genuine object of class `cko` on the HSM.
    fn one(&self, cko: u64) -> AResult<BackendObject> {
        let v = self.version;
        if !self.given.is_empty() {
            return self
                .given
                .iter()
                .find(|(c, _)| *c == cko)
                .map(|(_, o)| *o)
                .map_or_else(
                    || fail(AdminErrorKind::Failed, format!("no {}", class_name(cko))),
                    Ok,
                );
        }
        self.s
            .genuine(
                &self.agent.keys,
                self.token,
                &v.backend_id,
                cko,
                self.managed,
            )?
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
    }

    /// A signature of a random digest, made and verified.
    fn sign(&self, alg: Algorithm) -> AResult<String> {
        let (mech, what) = match alg {
            Algorithm::Ec(_) => (Mechanism::plain(ck::CKM_ECDSA), "ECDSA"),
            Algorithm::Ed25519 | Algorithm::Ed448 => (Mechanism::plain(ck::CKM_EDDSA), "EdDSA"),
            _ => (Mechanism::plain(ck::CKM_SHA256_RSA_PKCS), "SHA256-RSA-PKCS"),
        };
        let data = random(32)?;
        let sig = self
            .s
            .run(Op::Sign, &mech, self.one(ck::CKO_PRIVATE_KEY)?, &data)?;
        self.s
            .verify(&mech, self.one(ck::CKO_PUBLIC_KEY)?, &data, &sig)?;
        Ok(format!(
            "{what} signature of a random digest made and verified"
        ))
    }

    /// RSA-OAEP encryption of random data, made and reversed.
    fn encrypt_rsa(&self) -> AResult<String> {
        let mech = oaep();
        let data = random(32)?;
        let c = self
            .s
            .run(Op::Encrypt, &mech, self.one(ck::CKO_PUBLIC_KEY)?, &data)?;
        let p = self
            .s
            .run(Op::Decrypt, &mech, self.one(ck::CKO_PRIVATE_KEY)?, &c)?;
        if p != data {
            return Err(mismatch("RSA-OAEP"));
        }
        Ok("RSA-OAEP (SHA-1) encryption of random data made and reversed".to_owned())
    }

    /// AES-CBC-PAD encryption of a random block, made and reversed.
    fn encrypt_aes(&self) -> AResult<String> {
        let key = self.one(ck::CKO_SECRET_KEY)?;
        let mech = Mechanism {
            mechanism: ck::CKM_AES_CBC_PAD,
            param: MechParam::Bytes(random(16)?),
        };
        let data = random(32)?;
        let c = self.s.run(Op::Encrypt, &mech, key, &data)?;
        let p = self.s.run(Op::Decrypt, &mech, key, &c)?;
        if p != data || c == data {
            return Err(mismatch("AES-CBC-PAD"));
        }
        Ok("AES-CBC-PAD encryption of a random block made and reversed".to_owned())
    }

    /// A fresh session AES key wrapped and unwrapped.
    fn wrap(&self, alg: Algorithm) -> AResult<String> {
        let (wrapper, unwrapper, mech, what) = match alg {
            Algorithm::Rsa { .. } => (
                self.one(ck::CKO_PUBLIC_KEY)?,
                self.one(ck::CKO_PRIVATE_KEY)?,
                oaep(),
                "RSA-OAEP",
            ),
            _ => {
                let k = self.one(ck::CKO_SECRET_KEY)?;
                (k, k, Mechanism::plain(ck::CKM_AES_KEY_WRAP_PAD), "AES-KWP")
            }
        };
        let session_key = self
            .backend
            .generate_key(
                self.s.handle,
                &Mechanism::plain(ck::CKM_AES_KEY_GEN),
                &[
                    Attribute::bool(ck::CKA_TOKEN, false),
                    Attribute::ulong(ck::CKA_VALUE_LEN, 32),
                    Attribute::bool(ck::CKA_SENSITIVE, true),
                    Attribute::bool(ck::CKA_EXTRACTABLE, true),
                    Attribute::bool(ck::CKA_ENCRYPT, true),
                ],
            )
            .map_err(|e| hsm_err("C_GenerateKey (session AES key)", e))?;
        let session_key = self.scratch(session_key);
        let wrapped = self
            .backend
            .wrap_key(self.s.handle, &mech, wrapper, session_key)
            .map_err(|e| hsm_err("C_WrapKey", e))?;
        let unwrapped = self
            .backend
            .unwrap_key(
                self.s.handle,
                &mech,
                unwrapper,
                &wrapped,
                &unwrapped_aes_template(),
            )
            .map_err(|e| hsm_err("C_UnwrapKey", e))?;
        let unwrapped = self.scratch(unwrapped);
        if kcv(self.s, session_key)? != kcv(self.s, unwrapped)? {
            return Err(mismatch(what));
        }
        Ok(format!(
            "{what}: a fresh session AES key wrapped, unwrapped, check values equal"
        ))
    }

    /// A MAC of random data, made and verified.
    fn mac(&self, alg: Algorithm) -> AResult<String> {
        let key = self.one(ck::CKO_SECRET_KEY)?;
        let (mech, what) = match alg {
            Algorithm::Aes { .. } => (Mechanism::plain(ck::CKM_AES_CMAC), "AES-CMAC"),
            _ => (Mechanism::plain(ck::CKM_SHA256_HMAC), "HMAC-SHA256"),
        };
        let data = random(32)?;
        let tag = self.s.run(Op::Sign, &mech, key, &data)?;
        self.s.verify(&mech, key, &data, &tag)?;
        Ok(format!("{what} of random data made and verified"))
    }

    /// ECDH with a fresh session key pair, derived on both sides.
    fn derive(&self, alg: Algorithm) -> AResult<String> {
        let private = self.one(ck::CKO_PRIVATE_KEY)?;
        let public = self.one(ck::CKO_PUBLIC_KEY)?;
        let Recipe::Pair(gen, params) = recipe(alg) else {
            return fail(AdminErrorKind::Failed, format!("{alg} does not derive"));
        };
        let mut peer_public = vec![Attribute::bool(ck::CKA_TOKEN, false)];
        peer_public.extend(params);
        let (peer_pub, peer_priv) = self
            .backend
            .generate_key_pair(
                self.s.handle,
                &Mechanism::plain(gen),
                &peer_public,
                &[
                    Attribute::bool(ck::CKA_TOKEN, false),
                    Attribute::bool(ck::CKA_DERIVE, true),
                ],
            )
            .map_err(|e| hsm_err("C_GenerateKeyPair (session peer)", e))?;
        let (peer_pub, peer_priv) = (self.scratch(peer_pub), self.scratch(peer_priv));
        let point = |o| -> AResult<Vec<u8>> {
            self.s
                .bytes(o, ck::CKA_EC_POINT)?
                .map_or_else(|| fail(AdminErrorKind::Failed, "no CKA_EC_POINT"), Ok)
        };
        let derive = |base, other: Vec<u8>| -> AResult<BackendObject> {
            self.backend
                .derive_key(
                    self.s.handle,
                    &Mechanism {
                        mechanism: ck::CKM_ECDH1_DERIVE,
                        param: MechParam::Ecdh1Derive {
                            kdf: ck::CKD_NULL,
                            shared_data: Vec::new(),
                            public_data: other,
                        },
                    },
                    base,
                    &derived_aes_template(),
                )
                .map_err(|e| hsm_err("C_DeriveKey (ECDH)", e))
                .map(|o| self.scratch(o))
        };
        let ours = derive(private, point(peer_pub)?)?;
        let theirs = derive(peer_priv, point(public)?)?;
        if kcv(self.s, ours)? != kcv(self.s, theirs)? {
            return Err(mismatch("ECDH"));
        }
        Ok("ECDH with a fresh session key pair: both sides derived the same secret (check values equal)".to_owned())
    }
}
