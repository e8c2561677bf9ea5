//! Adoption: an unmanaged key found on the token taken into the inventory
//! under a class, after every check the class asks of it.

use cryptoki_sys as ck;
use keyward_inventory::{Actor, KeyRecord, KeyVersion};
use keyward_policy::{KeyClass, Template};
use keyward_protocol::admin::{AdminErrorKind, KeyInfo};
use keyward_protocol::Value;

use crate::backend::BackendObject;
use crate::keys::{secs, ManagedRef};
use crate::tokens::VirtualToken;

use super::hsm::*;
use super::*;

/// The objects of the key with `CKA_ID` `backend_id` on `label`'s backend
/// (`s`), when they may become a version of a key of `class`: exactly one
/// private or secret key, at most one public key beside a private one, and
/// every attribute the class requires (`keyward_policy::adoption_problems`).
/// Returns the key and its public half.
pub(crate) fn adoptable(
    s: &HsmSession<'_>,
    label: &str,
    backend_id: &[u8],
    class: &KeyClass,
) -> AResult<(BackendObject, Option<BackendObject>)> {
    let class_name = &class.name;
    let publics = s.by_id(backend_id, ck::CKO_PUBLIC_KEY)?;
    let privates = s.by_id(backend_id, ck::CKO_PRIVATE_KEY)?;
    let secrets = s.by_id(backend_id, ck::CKO_SECRET_KEY)?;
    let (main, secret) = match (privates.as_slice(), secrets.as_slice()) {
        ([o], []) => (*o, false),
        ([], [o]) => (*o, true),
        ([], []) => {
            return fail(
                AdminErrorKind::NotFound,
                format!(
                    "no private or secret key with CKA_ID {} on token {label:?}",
                    hex::encode(backend_id)
                ),
            )
        }
        _ => {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "{} keys share CKA_ID {} on token {label:?}: a version is one key; \
                     give each its own CKA_ID first",
                    privates.len() + secrets.len(),
                    hex::encode(backend_id)
                ),
            )
        }
    };
    if publics.len() > 1 || (secret && !publics.is_empty()) {
        return fail(
            AdminErrorKind::Refused,
            format!(
                "{} public keys share CKA_ID {} on token {label:?} with the key: \
                 which is its public half is not clear",
                publics.len(),
                hex::encode(backend_id)
            ),
        );
    }
    let flags = [
        ck::CKA_SENSITIVE,
        ck::CKA_ALWAYS_SENSITIVE,
        ck::CKA_EXTRACTABLE,
        ck::CKA_NEVER_EXTRACTABLE,
        ck::CKA_SIGN,
        ck::CKA_VERIFY,
        ck::CKA_SIGN_RECOVER,
        ck::CKA_ENCRYPT,
        ck::CKA_DECRYPT,
        ck::CKA_WRAP,
        ck::CKA_UNWRAP,
        ck::CKA_DERIVE,
    ];
    let read = s.attrs(main, &flags)?;
    let bools: Vec<(u64, bool)> = flags
        .iter()
        .zip(read)
        .filter_map(|(&a, v)| match v {
            Some(Value::Bool(b)) => Some((a, b)),
            _ => None,
        })
        .collect();
    let problems = keyward_policy::adoption_problems(
        class,
        secret,
        &Template {
            bools: &bools,
            ulongs: &[],
            bytes: &[],
        },
    );
    if !problems.is_empty() {
        return fail(
            AdminErrorKind::Refused,
            format!(
                "the key with CKA_ID {} does not comply with class {class_name:?}: {}",
                hex::encode(backend_id),
                problems.join("; ")
            ),
        );
    }
    Ok((main, publics.first().copied()))
}

impl Lifecycle {
    /// Brings the backend key with `CKA_ID` `backend_id` under management
    /// as version 1 of a new key of `class_name`, in pre-activation.
    pub(crate) fn adopt_key(
        &self,
        token: &VirtualToken,
        backend_id: &[u8],
        name: &str,
        class_name: &str,
        (who, by): (&str, &Actor),
    ) -> AResult<KeyInfo> {
        let label = token.config.label.clone();
        check_new_key_name(name)?;
        if backend_id.is_empty() {
            return fail(AdminErrorKind::Invalid, "adoption needs a non-empty CKA_ID");
        }
        let policy = self.policy();
        let Some(class) = policy.class(class_name) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("no key class {class_name:?} in the policy"),
            );
        };
        if self.keys.lookup(&label, backend_id).is_some() {
            return fail(
                AdminErrorKind::Conflict,
                format!("CKA_ID {} is already managed", hex::encode(backend_id)),
            );
        }
        self.refuse_taken_name(&label, name)?;
        if backend_id == crate::audit::AUDIT_KEY_ID {
            return fail(
                AdminErrorKind::Refused,
                "that CKA_ID is the audit key's: it is the agent's, not a key to adopt",
            );
        }
        let backend = self.backend(token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let (main, public) = adoptable(&s, &label, backend_id, class)?;
        let alg = algorithm_of(&s, main, public, class)?;
        let object_label = s
            .bytes(main, ck::CKA_LABEL)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if !object_label.is_empty() && self.keys.is_managed_label(&label, object_label.as_bytes()) {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "the key's CKA_LABEL {object_label:?} names a managed key on token {label:?}: \
                     a search by that name would find both"
                ),
            );
        }
        let objects: Vec<BackendObject> = public.into_iter().chain([main]).collect();
        let fingerprint = s.fingerprint(&objects);
        drop(s);
        let now = secs(crate::clock::now());
        let record = KeyRecord {
            id: 0,
            name: name.to_owned(),
            token: label.clone(),
            owner: who.to_owned(),
            purpose: class.purpose,
            class: class.name.clone(),
            algorithm: alg,
            state: KeyState::PreActivation,
            created_at: now,
            activated_at: None,
            rotated_at: None,
            deactivated_at: None,
            protect_until: None,
            process_until: None,
            next_rotation: None,
            scope: class.scope.clone(),
            last_used_at: None,
            backup_allowed: class.backup,
            recovery_until: None,
            reason_code: None,
        };
        let version = KeyVersion {
            key_id: 0,
            version: 1,
            backend_id: backend_id.to_vec(),
            backend_label: object_label,
            state: KeyState::PreActivation,
            created_at: now,
            deactivated_at: None,
            destroyed_at: None,
            fingerprint: fingerprint.map(|f| f.to_vec()),
        };
        let why = format!(
            "adopted from CKA_ID {} as class {class_name}",
            hex::encode(backend_id)
        );
        let created = self
            .apply_change(by, "adopt", &why, creation(record, version, who))?
            .key;
        self.judged(&label, &objects, created.id, 1);
        self.refresh(created.id)?;
        // Its use records name the managed key from now on.
        self.forget_use_targets(|_| true);
        log::info!(
            "key {label}/{name} adopted by {who}: CKA_ID {}, class {class_name}, {alg}",
            hex::encode(backend_id)
        );
        let view = self.keys.key(created.id).map_or_else(
            || fail(AdminErrorKind::Failed, "the adopted key is not in the view"),
            Ok,
        )?;
        self.info(&view)
    }

    /// Notes that `objects` on `token` are version `version` of key
    /// `key_id`: the agent made or checked them itself.
    pub(crate) fn judged(&self, token: &str, objects: &[BackendObject], key_id: i64, version: u32) {
        for &o in objects {
            self.keys
                .set_judged(token, o, Some(ManagedRef { key_id, version }));
        }
    }
}
