//! `keyward backup create`: every backup-eligible key version of a token
//! wrapped by the backup key (`CKM_AES_KEY_WRAP_PAD`), with its inventory
//! record and the attributes its objects are made again with, sealed in
//! the HSM. Keys not in the backup are listed with why. Each version in it
//! gets a `backup` record in the trail naming the backup (the SHA-256 of
//! the file), which is how the report knows when a key was last backed up
//! and which backups hold a destroyed key.

use std::time::SystemTime;

use cryptoki_sys as ck;
use keyward_inventory::{Actor, AuditKind, KeyFilter, KeyRecord};
use keyward_protocol::admin::{BackedUpKey, BackupAnswer, BackupContents, KeyResponse};
use keyward_protocol::{AttrValue, Attribute, Mechanism};
use sha2::Digest;

use crate::backend::BackendObject;
use crate::keys::{secs, ManagedRef};

use super::super::hsm::*;
use super::super::*;
use super::file::{self, Body, Entry, VersionEntry};
use super::key::{self, BackupKey};

/// The attributes a private or secret key is made again with (no value).
const SECRET_ATTRS: &[u64] = &[
    ck::CKA_CLASS,
    ck::CKA_KEY_TYPE,
    ck::CKA_ID,
    ck::CKA_LABEL,
    ck::CKA_TOKEN,
    ck::CKA_PRIVATE,
    ck::CKA_SENSITIVE,
    ck::CKA_EXTRACTABLE,
    ck::CKA_WRAP_WITH_TRUSTED,
    ck::CKA_SIGN,
    ck::CKA_DECRYPT,
    ck::CKA_UNWRAP,
    ck::CKA_DERIVE,
    ck::CKA_ENCRYPT,
    ck::CKA_VERIFY,
    ck::CKA_WRAP,
    // A secret key's check value: not given to the unwrap (PKCS#11 has the
    // HSM compute it), but set afterwards where the HSM showed none, which
    // makes the HSM check it against the unwrapped value.
    ck::CKA_CHECK_VALUE,
];

/// The attributes a public key is made again with.
const PUBLIC_ATTRS: &[u64] = &[
    ck::CKA_CLASS,
    ck::CKA_KEY_TYPE,
    ck::CKA_ID,
    ck::CKA_LABEL,
    ck::CKA_TOKEN,
    ck::CKA_PRIVATE,
    ck::CKA_VERIFY,
    ck::CKA_ENCRYPT,
    ck::CKA_WRAP,
    ck::CKA_DERIVE,
    ck::CKA_MODULUS,
    ck::CKA_PUBLIC_EXPONENT,
    ck::CKA_EC_PARAMS,
    ck::CKA_EC_POINT,
];

/// The attributes a certificate is made again with.
const CERTIFICATE_ATTRS: &[u64] = &[
    ck::CKA_CLASS,
    ck::CKA_CERTIFICATE_TYPE,
    ck::CKA_TOKEN,
    ck::CKA_PRIVATE,
    ck::CKA_ID,
    ck::CKA_LABEL,
    ck::CKA_SUBJECT,
    ck::CKA_ISSUER,
    ck::CKA_SERIAL_NUMBER,
    ck::CKA_VALUE,
];

/// Whether keys of `alg` are key pairs.
pub(crate) fn is_pair(alg: keyward_policy::Algorithm) -> bool {
    matches!(recipe(alg), Recipe::Pair(..))
}

/// The attributes of `types` that `object` has.
fn read(s: &HsmSession<'_>, object: BackendObject, types: &[u64]) -> AResult<Vec<Attribute>> {
    Ok(types
        .iter()
        .zip(s.attrs(object, types)?)
        .filter_map(|(&t, v)| {
            v.map(|v| Attribute {
                attr_type: t,
                value: AttrValue::Leaf(v),
            })
        })
        .collect())
}

/// The key objects of a token by (class, `CKA_ID`): one search per class
/// and one read of each object's `CKA_ID`, instead of a search per key
/// version (a search costs the whole token on SoftHSM2).
pub(crate) struct ObjectIndex(std::collections::HashMap<(u64, Vec<u8>), Vec<BackendObject>>);

impl ObjectIndex {
    pub(crate) fn of(s: &HsmSession<'_>) -> AResult<ObjectIndex> {
        let mut map: std::collections::HashMap<(u64, Vec<u8>), Vec<BackendObject>> =
            std::collections::HashMap::new();
        for cko in [
            ck::CKO_PRIVATE_KEY,
            ck::CKO_SECRET_KEY,
            ck::CKO_PUBLIC_KEY,
            ck::CKO_CERTIFICATE,
        ] {
            for o in s.find(&[Attribute::ulong(ck::CKA_CLASS, cko)])? {
                if let Some(id) = s.bytes(o, ck::CKA_ID)? {
                    map.entry((cko, id)).or_default().push(o);
                }
            }
        }
        Ok(ObjectIndex(map))
    }

    /// The certificates with `CKA_ID` `id` that are of `key`'s own public
    /// key.
    pub(crate) fn certificates_of(
        &self,
        s: &HsmSession<'_>,
        id: &[u8],
        key: &crate::keys::KeyView,
    ) -> Vec<BackendObject> {
        self.0
            .get(&(ck::CKO_CERTIFICATE, id.to_vec()))
            .map(|found| {
                found
                    .iter()
                    .copied()
                    .filter(|&o| s.is_certificate_of(o, key))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any key object has `CKA_ID` `id`.
    pub(crate) fn has(&self, id: &[u8]) -> bool {
        [ck::CKO_PRIVATE_KEY, ck::CKO_SECRET_KEY, ck::CKO_PUBLIC_KEY]
            .into_iter()
            .any(|cko| self.0.contains_key(&(cko, id.to_vec())))
    }

    /// The objects of class `cko` that are version `m` (`CKA_ID` `id`) of
    /// a managed key on `token` (plants left out).
    pub(crate) fn genuine(
        &self,
        agent: &Lifecycle,
        s: &HsmSession<'_>,
        token: &str,
        (id, cko): (&[u8], u64),
        m: ManagedRef,
    ) -> Vec<BackendObject> {
        self.0
            .get(&(cko, id.to_vec()))
            .map(|found| {
                found
                    .iter()
                    .copied()
                    .filter(|&o| agent.keys.is_genuine(token, s.backend, s.handle, o, m))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What a backup file holds, for people.
pub(crate) fn contents(id: &str, key_check: &[u8; 32], body: &Body) -> BackupContents {
    BackupContents {
        id: id.to_owned(),
        token: body.token.clone(),
        created_at: body.created_at,
        key_check: hex::encode(key_check),
        keys: body
            .keys
            .iter()
            .map(|e| BackedUpKey {
                name: e.record.name.clone(),
                state: e.record.state,
                versions: e
                    .versions
                    .iter()
                    .filter(|v| !v.wrapped.is_empty())
                    .map(|v| v.version.version)
                    .collect(),
            })
            .collect(),
        absent: body.absent.clone(),
    }
}

/// A backup's identity: the SHA-256 of its file.
pub(crate) fn backup_id(file: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(file))
}

impl Lifecycle {
    /// `keyward backup create`.
    pub(crate) fn backup_create(
        &self,
        token: Option<&str>,
        (who, by): (&str, &Actor),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let t = self.admin_token(token)?;
        let label = t.config.label.clone();
        let backend = self.backend(t)?;
        let s = HsmSession::open(backend.as_ref())?;
        let (Some(key), Some(check)) = (key::find(&s)?, self.recorded_check(t)?) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("token {label:?} has no backup key: `keyward backup init` makes one"),
            );
        };
        let records = self
            .keys
            .inventory()
            .keys(&KeyFilter {
                token: Some(label.clone()),
                state: None,
                class: None,
            })
            .map_err(inv_err)?;
        let index = ObjectIndex::of(&s)?;
        let mut body = Body {
            token: label.clone(),
            created_at: secs(now),
            made_by: who.to_owned(),
            keys: Vec::new(),
            absent: Vec::new(),
        };
        for r in records {
            match self.backup_entry(&s, &index, &key, &r)? {
                Ok(entry) => body.keys.push(entry),
                Err(why) => body.absent.push((r.name.clone(), why)),
            }
        }
        let mut bytes = file::unsealed(&check, &body).map_err(|m| AdminError {
            kind: AdminErrorKind::Failed,
            message: m,
        })?;
        let seal = key::seal(&s, &key, &bytes)?;
        bytes.extend_from_slice(&seal);
        let id = backup_id(&bytes);
        super::super::dry_run::commit_point(
            || {
                let names: Vec<&str> = body.keys.iter().map(|e| e.record.name.as_str()).collect();
                let absent: Vec<String> = body
                    .absent
                    .iter()
                    .map(|(n, why)| format!("{n} ({why})"))
                    .collect();
                format!(
                    "a backup of token {label:?} is made and recorded: keys [{}], left out [{}]",
                    names.join(", "),
                    absent.join(", ")
                )
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
        self.record_backup(&id, &body, by)?;
        log::info!(
            "backup {} of token {label} by {who}: {}, {} left out",
            &id[..16],
            keyward_policy::plural(body.keys.len(), "key"),
            body.absent.len()
        );
        let contents = contents(&id, &check, &body);
        Ok(KeyResponse::Backup(Box::new(BackupAnswer::File {
            bytes,
            contents,
        })))
    }

    /// Key `r` in a backup, or why it is left out.
    fn backup_entry(
        &self,
        s: &HsmSession<'_>,
        index: &ObjectIndex,
        key: &BackupKey,
        r: &KeyRecord,
    ) -> AResult<Result<Entry, String>> {
        if r.state == KeyState::Destroyed {
            return Ok(Err("destroyed".into()));
        }
        if !r.backup_allowed {
            return Ok(Err(format!("class {:?} does not allow backup", r.class)));
        }
        let pair = is_pair(r.algorithm);
        let secret_class = if pair {
            ck::CKO_PRIVATE_KEY
        } else {
            ck::CKO_SECRET_KEY
        };
        let mut versions = Vec::new();
        for v in self.keys.inventory().versions(r.id).map_err(inv_err)? {
            if v.state == KeyState::Destroyed || v.destroyed_at.is_some() {
                // Its record only: a restore numbers the versions after it.
                versions.push(VersionEntry {
                    version: v,
                    template: Vec::new(),
                    public: None,
                    wrapped: Vec::new(),
                    certificates: Vec::new(),
                });
                continue;
            }
            let m = ManagedRef {
                key_id: r.id,
                version: v.version,
            };
            let label = &r.token;
            let Some(&secret) = index
                .genuine(self, s, label, (&v.backend_id, secret_class), m)
                .first()
            else {
                return Ok(Err(format!("version {}: not on the HSM", v.version)));
            };
            let wrapped = match s.backend.wrap_key(
                s.handle,
                &Mechanism::plain(ck::CKM_AES_KEY_WRAP_PAD),
                key.wrap,
                secret,
            ) {
                Ok(w) => w,
                Err(e) => {
                    return Ok(Err(format!(
                        "version {}: the HSM does not let the backup key wrap it: {e}",
                        v.version
                    )))
                }
            };
            let template = read(s, secret, SECRET_ATTRS)?;
            let public = if pair {
                match index
                    .genuine(self, s, label, (&v.backend_id, ck::CKO_PUBLIC_KEY), m)
                    .first()
                {
                    Some(&p) => Some(read(s, p, PUBLIC_ATTRS)?),
                    None => {
                        return Ok(Err(format!(
                            "version {}: its public key is not on the HSM",
                            v.version
                        )))
                    }
                }
            } else {
                None
            };
            let certificates = match self.keys.key(r.id) {
                Some(view) => index
                    .certificates_of(s, &v.backend_id, &view)
                    .into_iter()
                    .map(|c| read(s, c, CERTIFICATE_ATTRS))
                    .collect::<AResult<Vec<_>>>()?,
                None => Vec::new(),
            };
            versions.push(VersionEntry {
                version: v,
                template,
                public,
                wrapped,
                certificates,
            });
        }
        if versions.iter().all(|v| v.wrapped.is_empty()) {
            return Ok(Err("no version to back up".into()));
        }
        Ok(Ok(Entry {
            record: r.clone(),
            versions,
        }))
    }

    /// The trail's records of backup `id`: one per key version in it, and
    /// one for the whole.
    fn record_backup(&self, id: &str, body: &Body, by: &Actor) -> AResult<()> {
        let mut events = Vec::new();
        for e in &body.keys {
            for v in e.versions.iter().filter(|v| !v.wrapped.is_empty()) {
                let mut ev =
                    crate::audit::event(AuditKind::Lifecycle, by.clone(), super::marks::BACKUP);
                ev.token = Some(body.token.clone());
                ev.key = Some(e.record.name.clone());
                ev.key_version = Some(v.version.version);
                ev.reason = format!("in backup {id}");
                events.push(ev);
            }
        }
        let mut ev = crate::audit::event(AuditKind::Lifecycle, by.clone(), super::marks::BACKUP);
        ev.token = Some(body.token.clone());
        let versions: usize = body
            .keys
            .iter()
            .map(|e| e.versions.iter().filter(|v| !v.wrapped.is_empty()).count())
            .sum();
        ev.reason = format!(
            "backup {id}: {} ({}), {} left out",
            keyward_policy::plural(body.keys.len(), "key"),
            keyward_policy::plural(versions, "version"),
            body.absent.len()
        );
        events.push(ev);
        self.audit.durable_all(events).map_err(|why| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("the backup cannot be recorded ({why}): it is not handed out"),
        })
    }
}
