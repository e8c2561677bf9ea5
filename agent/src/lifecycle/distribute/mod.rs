//! Key distribution: keys travel only wrapped.
//!
//! - `keyward key pubkey`: a version's public key as a
//!   `SubjectPublicKeyInfo` (`spki.rs`).
//! - `keyward key export`: always an approval request (action
//!   `key-export`, quorum `backup-export`), refused at once for a key
//!   whose class has no backup, a destroyed or compromised version, or a
//!   recipient that is not an RSA key of 2048 bits or more. Carried out
//!   when approved: the HSM's security officer makes a one-off AES-256
//!   transport key (`officer.rs`: a public token object with
//!   `CKA_TRUSTED`, the only kind of key that may wrap a key generated
//!   with `CKA_WRAP_WITH_TRUSTED`), the agent wraps it for the recipient
//!   (RSA-OAEP) and the key version under it (AES key wrap with padding),
//!   seals the file with an AES-CMAC under it, and destroys it and the
//!   recipient's session object on every path. The file (`file.rs`) waits
//!   in the token's state directory (mode 0600) until an administrator
//!   collects it (`key.collect`).
//! - `keyward key import`: the recipient's managed RSA wrapping key
//!   unwraps the transport key into a session object, the seal is checked
//!   in the HSM, the key is unwrapped into token objects with the
//!   attributes its class gives a generated key, proven to work, and
//!   recorded as a new managed key with its provenance; on any failure
//!   what was made is destroyed.

pub(crate) mod file;
pub(crate) mod spki;

use std::time::SystemTime;

use cryptoki_sys as ck;
use keyward_inventory::{Actor, KeyVersion};
use keyward_policy::{check_generation, check_key_pair_generation, Algorithm, KeyClass};
use keyward_protocol::admin::{AdminErrorKind, KeyResponse};
use keyward_protocol::distribution::{sha256_hex, DistRequest, DistResponse};
use keyward_protocol::{Attribute, MechParam, Mechanism, Op};
use sha2::Digest;
use zeroize::Zeroizing;

use crate::backend::BackendObject;
use crate::keys::{secs, ManagedRef};
use crate::template::{apply, judge};
use crate::tokens::VirtualToken;

use super::create::{first_version, NewKey};
use super::hsm::*;
use super::officer::{as_officer, OfficerAction};
use super::*;
use spki::PublicParts;

/// The action of an export request.
pub(crate) const KEY_EXPORT: &str = "key-export";

/// The smallest RSA recipient key.
const MIN_RECIPIENT_BITS: u32 = 2048;

/// RSA-OAEP with `hash` (`CKM_SHA256` or `CKM_SHA_1`) and MGF1 of the
/// same hash, no label; `None` for any other hash.
fn oaep(hash: u64) -> Option<Mechanism> {
    let mgf = match hash {
        ck::CKM_SHA256 => ck::CKG_MGF1_SHA256,
        ck::CKM_SHA_1 => ck::CKG_MGF1_SHA1,
        _ => return None,
    };
    Some(Mechanism {
        mechanism: ck::CKM_RSA_PKCS_OAEP,
        param: MechParam::RsaOaep {
            hash_alg: hash,
            mgf,
            source: ck::CKZ_DATA_SPECIFIED,
            source_data: Vec::new(),
        },
    })
}

/// The OAEP hashes tried, best first: SoftHSM2 2.6 knows SHA-1 only
/// (`CKR_ARGUMENTS_BAD` for SHA-256).
const OAEP_HASHES: [u64; 2] = [ck::CKM_SHA256, ck::CKM_SHA_1];

/// The seal's mechanism.
fn cmac() -> Mechanism {
    Mechanism::plain(ck::CKM_AES_CMAC)
}

fn kwp() -> Mechanism {
    Mechanism::plain(ck::CKM_AES_KEY_WRAP_PAD)
}

fn is_secret(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::Aes { .. } | Algorithm::Generic { .. } | Algorithm::Hmac { .. }
    )
}

fn refused<T>(message: impl Into<String>) -> AResult<T> {
    fail(AdminErrorKind::Refused, message)
}

/// The transport key's template, for the security officer: a public
/// token object (an SO session makes no private ones), trusted, wrapping,
/// sealing (AES-CMAC), itself wrappable for the recipient.
fn transport_template(id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
        Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
        Attribute::bool(ck::CKA_TOKEN, true),
        Attribute::bool(ck::CKA_PRIVATE, false),
        Attribute::bool(ck::CKA_TRUSTED, true),
        Attribute::bool(ck::CKA_WRAP, true),
        Attribute::bool(ck::CKA_SIGN, true),
        Attribute::bool(ck::CKA_EXTRACTABLE, true),
        Attribute::bool(ck::CKA_SENSITIVE, true),
        Attribute::bytes(ck::CKA_ID, id.to_vec()),
        Attribute::bytes(ck::CKA_LABEL, b"keyward transport key".to_vec()),
    ]
}

/// The transport key unwrapped on the receiving side: a session object
/// that unwraps and checks the seal, and never leaves the HSM.
fn unwrapped_transport_template() -> Vec<Attribute> {
    vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
        Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
        Attribute::bool(ck::CKA_TOKEN, false),
        Attribute::bool(ck::CKA_SENSITIVE, true),
        Attribute::bool(ck::CKA_EXTRACTABLE, false),
        Attribute::bool(ck::CKA_UNWRAP, true),
        Attribute::bool(ck::CKA_VERIFY, true),
    ]
}

/// Objects destroyed when dropped (on every path), on `s`.
struct Scratch<'a, 'b> {
    s: &'a HsmSession<'b>,
    objects: Vec<BackendObject>,
}

impl Scratch<'_, '_> {
    fn keep(&mut self, o: BackendObject) -> BackendObject {
        self.objects.push(o);
        o
    }

    /// Destroys them now; whether every one went.
    fn clear(&mut self) -> bool {
        let mut all = true;
        for o in self.objects.drain(..) {
            if let Err(e) = self.s.backend.destroy_object(self.s.handle, o) {
                log::error!("distribution: cannot destroy backend object {o}: {e}");
                all = false;
            }
        }
        all
    }
}

impl Drop for Scratch<'_, '_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The version `version` names, or the one that protects now.
pub(crate) fn pick<'k>(t: &'k Target<'_>, version: Option<u32>) -> AResult<&'k KeyVersion> {
    match version {
        None => t.current(),
        Some(n) => t.key.version(n).map_or_else(
            || {
                fail(
                    AdminErrorKind::NotFound,
                    format!("key {} has no version {n}", t.label()),
                )
            },
            Ok,
        ),
    }
}

/// This machine's name, for the export file's provenance.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

impl Lifecycle {
    /// The distribution requests.
    pub(crate) fn distribution_call(
        &self,
        (who, by): (&str, &Actor),
        req: DistRequest,
    ) -> AResult<KeyResponse> {
        match req {
            DistRequest::PublicKey {
                name,
                token,
                version,
            } => {
                let t = self.target(token.as_deref(), &name)?;
                let v = pick(&t, version)?;
                let spki = self
                    .public_key_of(&t, v)?
                    .to_spki()
                    .map_err(|m| AdminError {
                        kind: AdminErrorKind::Failed,
                        message: m,
                    })?;
                Ok(KeyResponse::Distribution(DistResponse::PublicKey {
                    key: name,
                    version: v.version,
                    spki,
                }))
            }
            DistRequest::Export {
                name,
                token,
                version,
                recipient,
                reason,
            } => {
                let t = self.target(token.as_deref(), &name)?;
                self.request_export(&t, version, &recipient, (who, &reason))
            }
            DistRequest::Collect { id } => self.collect_export(&id),
            DistRequest::Import {
                file,
                class,
                name,
                token,
                reason,
            } => self.import_key(
                (who, by),
                &file,
                (&class, name.as_deref(), token.as_deref()),
                &reason,
            ),
        }
    }

    /// The public key of version `v` of `t`, from its genuine public key
    /// object on the HSM.
    pub(crate) fn public_key_of(&self, t: &Target<'_>, v: &KeyVersion) -> AResult<PublicParts> {
        let r = &t.key.record;
        if is_secret(r.algorithm) {
            return refused(format!(
                "key {} is a secret key ({}): it has no public key",
                t.label(),
                r.algorithm
            ));
        }
        if v.state == KeyState::Destroyed {
            return refused(format!(
                "key {} version {} is destroyed",
                t.label(),
                v.version
            ));
        }
        let backend = self.backend(t.token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let m = ManagedRef {
            key_id: r.id,
            version: v.version,
        };
        let Some(&public) = s
            .genuine(&self.keys, &r.token, &v.backend_id, ck::CKO_PUBLIC_KEY, m)?
            .first()
        else {
            return fail(
                AdminErrorKind::Failed,
                format!(
                    "key {} version {} (CKA_ID {}): no public key object on the HSM",
                    t.label(),
                    v.version,
                    hex::encode(&v.backend_id)
                ),
            );
        };
        public_parts(&s, public)
    }

    /// Refuses versions that cannot be exported: a class without backup,
    /// a destroyed or compromised key or version.
    fn exportable(t: &Target<'_>, v: &KeyVersion) -> AResult<()> {
        let r = &t.key.record;
        if !r.backup_allowed {
            return refused(format!(
                "key {} is not exportable: its class {:?} does not allow backup",
                t.label(),
                r.class
            ));
        }
        for (what, state) in [("key", r.state), ("version", v.state)] {
            if matches!(state, KeyState::Destroyed | KeyState::Compromised) {
                return refused(format!(
                    "key {} version {} is not exportable: the {what} is {state}",
                    t.label(),
                    v.version
                ));
            }
        }
        Ok(())
    }

    /// `keyward key export`: checks, then records the approval request.
    fn request_export(
        &self,
        t: &Target<'_>,
        version: Option<u32>,
        recipient: &[u8],
        (who, why): (&str, &str),
    ) -> AResult<KeyResponse> {
        let v = pick(t, version)?;
        Self::exportable(t, v)?;
        recipient_bits(recipient)?;
        let params = serde_json::json!({
            "version": v.version,
            "recipient_sha256": sha256_hex(recipient),
            "recipient": hex::encode(recipient),
        });
        // One pending request per action and key: asking again for the
        // same export answers that request; another version or recipient
        // waits until it is decided or cancelled.
        let now = crate::clock::now();
        let canonical = params.to_string();
        let pending = self
            .keys
            .inventory()
            .requests(Some(keyward_policy::ApprovalStatus::Pending))
            .map_err(inv_err)?;
        if let Some(other) = pending.iter().find(|r| {
            r.action == KEY_EXPORT
                && r.target == t.label()
                && r.expires_at > secs(now)
                && r.parameters != canonical
        }) {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "export request {} of {} (another version or recipient) is pending:                      have it decided or cancel it first",
                    other.id,
                    t.label()
                ),
            );
        }
        self.record_request(t, KEY_EXPORT, params, (who, why), now)
    }

    /// Carries out approved export request `r`: the file, kept under the
    /// request's id in the token's state directory.
    pub(crate) fn carry_out_export(
        &self,
        r: &keyward_inventory::ApprovalRecord,
        now: SystemTime,
    ) -> AResult<()> {
        let params = crate::lifecycle::request_parameters(r)?;
        let version = params["version"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok());
        let recipient = params["recipient"].as_str().and_then(unhex);
        let (Some(version), Some(recipient)) = (version, recipient) else {
            return fail(
                AdminErrorKind::Invalid,
                format!("request {}: no version or recipient", r.id),
            );
        };
        if params["recipient_sha256"].as_str() != Some(sha256_hex(&recipient).as_str()) {
            return fail(
                AdminErrorKind::Invalid,
                format!("request {}: the recipient is not the one approved", r.id),
            );
        }
        let t = self.request_target_key(r)?;
        let v = pick(&t, Some(version))?.clone();
        Self::exportable(&t, &v)?;
        let public = match is_secret(t.key.record.algorithm) {
            true => None,
            false => Some(
                self.public_key_of(&t, &v)?
                    .to_spki()
                    .map_err(|m| AdminError {
                        kind: AdminErrorKind::Failed,
                        message: m,
                    })?,
            ),
        };
        let approvers = self
            .keys
            .inventory()
            .decisions(&r.id)
            .map_err(inv_err)?
            .into_iter()
            .filter(|d| d.decision == keyward_policy::Decision::Approve)
            .map(|d| d.administrator)
            .collect();
        let rec = &t.key.record;
        let body = file::Body {
            record: file::Record {
                name: rec.name.clone(),
                class: rec.class.clone(),
                algorithm: rec.algorithm,
                purpose: rec.purpose,
                version: v.version,
                backend_id: v.backend_id.clone(),
                public_key: public,
                created_at: v.created_at,
                activated_at: rec.activated_at,
                state: rec.state,
                version_state: v.state,
            },
            source: file::Source {
                token: rec.token.clone(),
                host: host_name(),
                request_id: r.id.clone(),
                requester: r.requester.clone(),
                approvers,
                exported_at: secs(now),
            },
            recipient_sha256: sha2::Sha256::digest(&recipient).to_vec(),
            oaep_hash: 0,
            wrapped_transport: Vec::new(),
            wrapped_key: Vec::new(),
        };
        let bytes = self.wrap_for(&t, &v, &recipient, body)?;
        t.token
            .state
            .write_export(&r.id, &bytes)
            .map_err(|e| AdminError {
                kind: AdminErrorKind::Failed,
                message: format!("state directory: the export file: {e}"),
            })?;
        log::warn!(
            "key {} version {} exported for the RSA key with SPKI SHA-256 {} (request {}, file SHA-256 {})",
            t.label(),
            v.version,
            sha256_hex(&recipient),
            r.id,
            sha256_hex(&bytes)
        );
        self.mark_executed(
            &r.id,
            &format!(
                "export file ready ({} bytes, SHA-256 {}): keyward key export --collect {} --out FILE",
                bytes.len(),
                sha256_hex(&bytes),
                r.id
            ),
            now,
        )
    }

    /// The sealed file of `body`: a transport key made by the SO, the
    /// transport key wrapped for `recipient`, the version under it, the
    /// seal; the transport key and the recipient's session object are
    /// destroyed on every path.
    fn wrap_for(
        &self,
        t: &Target<'_>,
        v: &KeyVersion,
        recipient: &[u8],
        mut body: file::Body,
    ) -> AResult<Vec<u8>> {
        let backend = self.backend(t.token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let key_object = {
            let cko = if is_secret(t.key.record.algorithm) {
                ck::CKO_SECRET_KEY
            } else {
                ck::CKO_PRIVATE_KEY
            };
            let m = ManagedRef {
                key_id: t.key.record.id,
                version: v.version,
            };
            match s
                .genuine(&self.keys, &t.key.record.token, &v.backend_id, cko, m)?
                .first()
            {
                Some(&o) => o,
                None => {
                    return fail(
                        AdminErrorKind::Failed,
                        format!(
                            "key {} version {}: no {} on the HSM",
                            t.label(),
                            v.version,
                            class_name(cko)
                        ),
                    )
                }
            }
        };
        let tid = random(16)?;
        // Noted as pending before the officer makes it: a crash leaves no
        // trusted key behind (the next start destroys it), and searches do
        // not show it meanwhile.
        t.token
            .state
            .add_pending(&hex::encode(&tid))
            .map_err(|e| AdminError {
                kind: AdminErrorKind::Failed,
                message: format!("state directory: {e}"),
            })?;
        self.keys.set_pending(&t.token.config.label, &tid, true);
        let mut scratch = Scratch {
            s: &s,
            objects: Vec::new(),
        };
        let done = (|| -> AResult<Vec<u8>> {
            let transport = self.make_transport(t.token, &s, &tid)?;
            scratch.keep(transport);
            let parts = PublicParts::from_spki(recipient).map_err(|m| AdminError {
                kind: AdminErrorKind::Invalid,
                message: format!("the recipient: {m}"),
            })?;
            let mut template = vec![
                Attribute::ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                Attribute::bool(ck::CKA_TOKEN, false),
                Attribute::bool(ck::CKA_WRAP, true),
            ];
            template.extend(parts.attributes().map_err(|m| AdminError {
                kind: AdminErrorKind::Invalid,
                message: format!("the recipient: {m}"),
            })?);
            let rsa = backend
                .create_object(s.handle, &template)
                .map_err(|e| hsm_err("C_CreateObject (the recipient's public key)", e))?;
            scratch.keep(rsa);
            let mut wrapped = Err(crate::error::Error::Backend(ck::CKR_MECHANISM_INVALID));
            for hash in OAEP_HASHES {
                let Some(m) = oaep(hash) else { continue };
                wrapped = backend.wrap_key(s.handle, &m, rsa, transport);
                match &wrapped {
                    Err(crate::error::Error::Backend(
                        ck::CKR_ARGUMENTS_BAD
                        | ck::CKR_MECHANISM_PARAM_INVALID
                        | ck::CKR_MECHANISM_INVALID,
                    )) => log::warn!(
                        "the HSM does not wrap with RSA-OAEP {}: trying the next hash",
                        mech_name(hash)
                    ),
                    _ => {
                        body.oaep_hash = hash;
                        break;
                    }
                }
            }
            body.wrapped_transport =
                wrapped.map_err(|e| hsm_err("C_WrapKey (the transport key, RSA-OAEP)", e))?;
            body.wrapped_key = backend
                .wrap_key(s.handle, &kwp(), transport, key_object)
                .map_err(|e| hsm_err("C_WrapKey (the key, AES key wrap with padding)", e))?;
            let body = file::body_bytes(&body).map_err(|m| AdminError {
                kind: AdminErrorKind::Failed,
                message: m,
            })?;
            let seal = s.run(Op::Sign, &cmac(), transport, &file::sealed_bytes(&body))?;
            file::write(body, seal).map_err(|m| AdminError {
                kind: AdminErrorKind::Failed,
                message: m,
            })
        })();
        if scratch.clear() {
            self.end_pending(t.token, &tid);
        } else {
            log::error!(
                "token {:?}: the transport key (CKA_ID {}) stays noted as pending: the next start destroys it",
                t.token.config.label,
                hex::encode(&tid)
            );
        }
        done
    }

    /// The security officer makes the transport key `id` (generated; where
    /// the HSM refuses `CKA_TRUSTED` in a generation, created from the
    /// HSM's random bytes); the agent finds it by its `CKA_ID`.
    fn make_transport(
        &self,
        token: &VirtualToken,
        s: &HsmSession<'_>,
        id: &[u8],
    ) -> AResult<BackendObject> {
        let mut template = transport_template(id);
        template.push(Attribute::ulong(ck::CKA_VALUE_LEN, 32));
        let generated = as_officer(
            token,
            OfficerAction::Generate(Mechanism::plain(ck::CKM_AES_KEY_GEN), template),
        );
        if let Err(e) = generated {
            log::warn!(
                "the transport key could not be generated by the security officer ({}); \
                 creating it from the HSM's random bytes",
                e.message
            );
            let value = Zeroizing::new(
                s.backend
                    .generate_random(s.handle, 32)
                    .map_err(|e| hsm_err("C_GenerateRandom", e))?,
            );
            let mut template = transport_template(id);
            template.push(Attribute::bytes(ck::CKA_VALUE, value.to_vec()));
            as_officer(token, OfficerAction::Create(template))?;
        }
        let found = crate::lifecycle::officer::seen(s, id, ck::CKO_SECRET_KEY)?;
        match found.as_slice() {
            [one] => Ok(*one),
            other => {
                s.destroy(other);
                fail(
                    AdminErrorKind::Failed,
                    format!(
                        "the transport key (CKA_ID {}): {} objects found, not one",
                        hex::encode(id),
                        other.len()
                    ),
                )
            }
        }
    }

    /// `keyward key export --collect ID`: the file of an executed export.
    fn collect_export(&self, id: &str) -> AResult<KeyResponse> {
        let r = self.keys.inventory().request(id).map_err(inv_err)?;
        let Some(r) = r.filter(|r| r.action == KEY_EXPORT) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("no export request {id:?}"),
            );
        };
        if r.status != keyward_policy::ApprovalStatus::Executed {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "export request {id} is {}: there is no file to collect",
                    r.status
                ),
            );
        }
        let t = self.request_target_key(&r)?;
        match t.token.state.read_export(id) {
            Ok(Some(file)) => {
                log::warn!("export file of request {id} ({}) collected", t.label());
                Ok(KeyResponse::Distribution(DistResponse::ExportFile {
                    id: id.to_owned(),
                    file,
                }))
            }
            Ok(None) => fail(
                AdminErrorKind::NotFound,
                format!("export request {id}: its file is not in the state directory"),
            ),
            Err(e) => fail(
                AdminErrorKind::Failed,
                format!("export request {id}: the file cannot be read: {e}"),
            ),
        }
    }
}

/// The size of an RSA recipient key; refused when it is not RSA or below
/// 2048 bits.
fn recipient_bits(recipient: &[u8]) -> AResult<u32> {
    let parts = PublicParts::from_spki(recipient).map_err(|m| AdminError {
        kind: AdminErrorKind::Invalid,
        message: format!("the recipient is not a public key: {m}"),
    })?;
    match parts.algorithm() {
        Some(Algorithm::Rsa { min_bits }) if min_bits >= MIN_RECIPIENT_BITS => Ok(min_bits),
        Some(Algorithm::Rsa { min_bits }) => refused(format!(
            "the recipient is an RSA key of {min_bits} bits: at least {MIN_RECIPIENT_BITS} are needed"
        )),
        Some(other) => refused(format!(
            "the recipient is an {other} key: keys are exported only for RSA keys of at least \
             {MIN_RECIPIENT_BITS} bits"
        )),
        None => refused("the recipient is not a key keyward can wrap for"),
    }
}

/// The public parts of public key object `o`.
fn public_parts(s: &HsmSession<'_>, o: BackendObject) -> AResult<PublicParts> {
    let failed = |m: String| AdminError {
        kind: AdminErrorKind::Failed,
        message: m,
    };
    match s.ulong(o, ck::CKA_KEY_TYPE)? {
        Some(ck::CKK_RSA) => {
            let a = s.attrs(o, &[ck::CKA_MODULUS, ck::CKA_PUBLIC_EXPONENT])?;
            match (a.first().cloned().flatten(), a.get(1).cloned().flatten()) {
                (
                    Some(keyward_protocol::Value::Bytes(m)),
                    Some(keyward_protocol::Value::Bytes(e)),
                ) => Ok(PublicParts::Rsa {
                    modulus: m,
                    exponent: e,
                }),
                _ => Err(failed(
                    "the RSA public key shows no modulus or exponent".into(),
                )),
            }
        }
        Some(ck::CKK_EC | ck::CKK_EC_EDWARDS | ck::CKK_EC_MONTGOMERY) => {
            let a = s.attrs(o, &[ck::CKA_EC_PARAMS, ck::CKA_EC_POINT])?;
            match (a.first().cloned().flatten(), a.get(1).cloned().flatten()) {
                (
                    Some(keyward_protocol::Value::Bytes(p)),
                    Some(keyward_protocol::Value::Bytes(q)),
                ) => PublicParts::from_ec(&p, &q).map_err(failed),
                _ => Err(failed(
                    "the EC public key shows no parameters or point".into(),
                )),
            }
        }
        other => Err(failed(format!(
            "a public key of type {} has no SubjectPublicKeyInfo keyward writes",
            other.map_or_else(|| "none".into(), key_type_name)
        ))),
    }
}

mod import;

#[cfg(test)]
mod tests;
