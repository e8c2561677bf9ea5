//! Discovery: what is on the token that the inventory does not manage
//! (shadow keys, plants, objects nobody owns), found by `keyward discover`
//! and by every scheduler pass, each finding recorded once per run.

use cryptoki_sys as ck;
use keyward_protocol::admin::ShadowInfo;
use keyward_protocol::{AttrResult, AttrValue, Attribute, Value};

use crate::backend::{Backend, BackendObject};
use crate::keys::{self};
use crate::objects::unmanaged_name;
use crate::tokens::VirtualToken;

use super::hsm::*;
use super::*;

impl Lifecycle {
    /// `keyward discover`: what the tokens (or `token`) hold that the
    /// inventory does not manage, recorded once.
    pub(crate) fn discover(&self, token: Option<&str>, by: &Actor) -> AResult<KeyResponse> {
        let tokens: Vec<&VirtualToken> = match token {
            Some(l) => vec![self.admin_token(Some(l))?],
            None => self.tokens.iter().collect(),
        };
        let mut shadows = Vec::new();
        for t in tokens {
            let found = self.scan(t)?;
            let objects: Vec<BackendObject> = found.iter().map(|(o, _)| *o).collect();
            // Recorded here: the scheduler need not record them again.
            self.keys.note_shadows(&t.config.label, &objects);
            shadows.extend(found.into_iter().map(|(_, f)| f));
        }
        self.record_findings(by, &shadows);
        Ok(KeyResponse::Shadows(shadows))
    }

    /// Key objects on `token`'s backend outside management, each with its
    /// backend object: private and secret keys, and public keys without a
    /// private half, whose `CKA_ID` is no managed version (`unmanaged`), and
    /// objects with the `CKA_ID` of a managed version or of the audit key
    /// that are not it (`plant`).
    pub(crate) fn scan(&self, token: &VirtualToken) -> AResult<Vec<(BackendObject, ShadowInfo)>> {
        let label = &token.config.label;
        let slot = self
            .tokens
            .iter()
            .position(|x| std::ptr::eq(x, token))
            .unwrap_or(usize::MAX);
        let backend = self.backend(token)?;
        let _no_generation = self.hsm_scan.lock().unwrap_or_else(|p| p.into_inner());
        let s = HsmSession::open(backend.as_ref())?;
        let mut out = Vec::new();
        let mut private_ids = Vec::new();
        for cko in [ck::CKO_PRIVATE_KEY, ck::CKO_SECRET_KEY, ck::CKO_PUBLIC_KEY] {
            for o in s.find(&[Attribute::ulong(ck::CKA_CLASS, cko)])? {
                let a = s.attrs(o, &[ck::CKA_ID, ck::CKA_LABEL, ck::CKA_KEY_TYPE])?;
                let bytes = |v: &Option<Value>| match v {
                    Some(Value::Bytes(b)) => b.clone(),
                    _ => Vec::new(),
                };
                let id = bytes(&a[0]);
                let finding = if id == crate::audit::AUDIT_KEY_ID {
                    // The agent's own audit key is not a shadow key; another
                    // object with its CKA_ID is a plant.
                    if self.is_audit_key(slot, o) {
                        continue;
                    }
                    "plant: the audit key's CKA_ID, not the audit key".to_owned()
                } else {
                    match self.keys.lookup(label, &id) {
                        Some(m) => {
                            if self
                                .keys
                                .is_genuine(label, backend.as_ref(), s.handle, o, m)
                            {
                                continue;
                            }
                            let name = self
                                .keys
                                .key(m.key_id)
                                .map_or_else(String::new, |k| k.record.name.clone());
                            format!(
                                "plant: CKA_ID of key {name:?} version {}, not its fingerprint",
                                m.version
                            )
                        }
                        None => {
                            if cko == ck::CKO_PRIVATE_KEY {
                                private_ids.push(id.clone());
                            } else if cko == ck::CKO_PUBLIC_KEY
                                && !id.is_empty()
                                && private_ids.contains(&id)
                            {
                                continue;
                            }
                            "unmanaged".to_owned()
                        }
                    }
                };
                out.push((
                    o,
                    ShadowInfo {
                        token: label.clone(),
                        backend_id: id,
                        label: String::from_utf8_lossy(&bytes(&a[1])).into_owned(),
                        class: class_name(cko),
                        key_type: match a[2] {
                            Some(Value::Ulong(k)) => key_type_name(k),
                            _ => "?".into(),
                        },
                        finding,
                    },
                ));
            }
        }
        if self.policy().mode() == keyward_policy::Mode::Strict {
            self.scan_unowned(label, backend.as_ref(), &s, &mut out)?;
        }
        Ok(out)
    }

    /// In strict mode, the data objects and certificates on `token`'s
    /// backend that are in no application's namespace (made behind
    /// keyward's back, or before the strict policy): no application sees
    /// them. A managed key's own certificate is not one of them.
    pub(crate) fn scan_unowned(
        &self,
        token: &str,
        backend: &dyn Backend,
        s: &HsmSession<'_>,
        out: &mut Vec<(BackendObject, ShadowInfo)>,
    ) -> AResult<()> {
        for cko in [ck::CKO_DATA, ck::CKO_CERTIFICATE] {
            for o in s.find(&[Attribute::ulong(ck::CKA_CLASS, cko)])? {
                let Ok(head) = backend.get_attributes(s.handle, o, &crate::objects::HEAD) else {
                    continue;
                };
                let bytes = |i: usize| match head.get(i) {
                    Some(AttrResult::Value(AttrValue::Leaf(Value::Bytes(b)))) => b.clone(),
                    _ => Vec::new(),
                };
                let id = bytes(0);
                let own_certificate = cko == ck::CKO_CERTIFICATE
                    && self
                        .keys
                        .lookup(token, &id)
                        .and_then(|m| self.keys.key(m.key_id))
                        .is_some_and(|k| keys::is_certificate_of(backend, s.handle, o, &k));
                let owned = crate::objects::identity(backend, s.handle, o, &head)
                    .is_some_and(|i| self.keys.owners.has_owner(token, &i));
                if own_certificate || owned {
                    continue;
                }
                out.push((
                    o,
                    ShadowInfo {
                        token: token.to_owned(),
                        backend_id: id,
                        label: String::from_utf8_lossy(&bytes(2)).into_owned(),
                        class: class_name(cko),
                        key_type: "-".into(),
                        finding: "unowned: in no application's namespace".into(),
                    },
                ));
            }
        }
        Ok(())
    }

    /// Records each key a discovery found outside management.
    pub(crate) fn record_findings(&self, by: &keyward_inventory::Actor, shadows: &[ShadowInfo]) {
        for f in shadows {
            let what = if f.finding.starts_with("unowned") {
                "unowned object"
            } else {
                "unmanaged key"
            };
            let mut e =
                crate::audit::event(keyward_inventory::AuditKind::Discovery, by.clone(), what);
            e.token = Some(f.token.clone());
            e.key = unmanaged_name(f.label.as_bytes(), &f.backend_id);
            e.reason = if f.finding == "unmanaged" {
                format!(
                    "{} {} with CKA_ID {} is on the HSM but not managed",
                    f.class,
                    f.key_type,
                    hex::encode(&f.backend_id)
                )
            } else {
                format!(
                    "{} {} with CKA_ID {}: {}",
                    f.class,
                    f.key_type,
                    hex::encode(&f.backend_id),
                    f.finding
                )
            };
            self.audit.record(e);
        }
    }

    /// The scheduler's discovery: every token's backend is scanned
    /// (`Lifecycle::scan`); each key outside management (shadow key or plant)
    /// is recorded in the trail once per backend object and agent run, and
    /// the counts are kept for the metrics (`keyward_shadow_keys`).
    pub fn discover_shadows(&self) {
        for t in &self.tokens {
            if t.backend().is_err() {
                continue;
            }
            match self.scan(t) {
                Ok(found) => {
                    let objects: Vec<BackendObject> = found.iter().map(|(o, _)| *o).collect();
                    let new = self.keys.note_shadows(&t.config.label, &objects);
                    let fresh: Vec<ShadowInfo> = found
                        .into_iter()
                        .filter(|(o, _)| new.contains(o))
                        .map(|(_, f)| f)
                        .collect();
                    if !fresh.is_empty() {
                        log::warn!(
                            "scheduler: {} new key(s) outside management on token {:?} \
                             (keyward discover lists them)",
                            fresh.len(),
                            t.config.label
                        );
                        self.record_findings(&keyward_inventory::Actor::Scheduler, &fresh);
                    }
                }
                Err(e) => log::error!(
                    "scheduler: discovery on token {:?} failed: {}",
                    t.config.label,
                    e.message
                ),
            }
        }
    }
}
