//! The backup key's three objects in the HSM, made from its 64-byte
//! secret, and found again by their `CKA_ID`s. Applications never see
//! them (every `CKA_ID` with [`RESERVED`] in front is the agent's).

use cryptoki_sys as ck;
use keyward_protocol::{Attribute, Mechanism};
use zeroize::Zeroizing;

use crate::backend::BackendObject;
use crate::lifecycle::officer::{as_officer, OfficerAction};
use crate::tokens::VirtualToken;

use super::super::hsm::*;
use super::super::*;

/// What every `CKA_ID` of the backup machinery starts with.
pub const RESERVED: &[u8] = b"keyward-backup";
/// The wrapping half: public, `CKA_TRUSTED`, wrap only.
pub const WRAP_ID: &[u8] = b"keyward-backup-wrap";
/// The unwrapping half: private, unwrap only.
pub const UNWRAP_ID: &[u8] = b"keyward-backup-unwrap";
/// The sealing key: private, HMAC-SHA256.
pub const SEAL_ID: &[u8] = b"keyward-backup-seal";
/// The `CKA_ID` of the objects a drill unwraps (session objects).
pub const DRILL_ID: &[u8] = b"keyward-backup-drill";
/// The label of all of them.
pub const LABEL: &[u8] = b"keyward-backup";
/// The secret's length: 32 bytes of AES-256 wrapping key, 32 of HMAC key.
pub const SECRET_LEN: usize = 64;

/// Whether `id` is a `CKA_ID` of the agent's backup machinery.
pub fn is_reserved(id: &[u8]) -> bool {
    id.starts_with(RESERVED)
}

/// The backup key's objects on one token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackupKey {
    pub wrap: BackendObject,
    pub unwrap: BackendObject,
    pub seal: BackendObject,
}

/// The backup key's objects on the token of `s`: `None` when none of them
/// is there; an error when only some are.
pub(crate) fn find(s: &HsmSession<'_>) -> AResult<Option<BackupKey>> {
    let one = |id: &[u8]| -> AResult<Option<BackendObject>> {
        Ok(s.by_id(id, ck::CKO_SECRET_KEY)?.first().copied())
    };
    match (one(WRAP_ID)?, one(UNWRAP_ID)?, one(SEAL_ID)?) {
        (Some(wrap), Some(unwrap), Some(seal)) => Ok(Some(BackupKey { wrap, unwrap, seal })),
        (None, None, None) => Ok(None),
        (w, u, m) => fail(
            AdminErrorKind::Failed,
            format!(
                "the backup key is incomplete on this token (wrapping half {}, unwrapping \
                 half {}, sealing key {}): restore it from the custodians' shares",
                present(w),
                present(u),
                present(m)
            ),
        ),
    }
}

fn present(o: Option<BackendObject>) -> &'static str {
    if o.is_some() {
        "present"
    } else {
        "missing"
    }
}

fn secret_key(id: &[u8], key_type: u64, private: bool) -> Vec<Attribute> {
    vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
        Attribute::ulong(ck::CKA_KEY_TYPE, key_type),
        Attribute::bool(ck::CKA_TOKEN, true),
        Attribute::bool(ck::CKA_PRIVATE, private),
        Attribute::bytes(ck::CKA_ID, id.to_vec()),
        Attribute::bytes(ck::CKA_LABEL, LABEL.to_vec()),
        Attribute::bool(ck::CKA_SENSITIVE, true),
        Attribute::bool(ck::CKA_EXTRACTABLE, false),
        Attribute::bool(ck::CKA_ENCRYPT, false),
        Attribute::bool(ck::CKA_DECRYPT, false),
        Attribute::bool(ck::CKA_DERIVE, false),
    ]
}

/// Makes the backup key's objects on token `t` from `secret`: the
/// wrapping half through the backend's SO (who alone may set
/// `CKA_TRUSTED`), the others on the agent's own session; then proves the
/// halves agree (a session key wrapped by one, unwrapped by the other).
/// On any failure, what was made is removed.
pub(crate) fn install(t: &VirtualToken, s: &HsmSession<'_>, secret: &[u8]) -> AResult<BackupKey> {
    if secret.len() != SECRET_LEN {
        return fail(
            AdminErrorKind::Failed,
            "the backup key's secret has the wrong size",
        );
    }
    if find(s)?.is_some() {
        return fail(
            AdminErrorKind::Conflict,
            format!("token {:?} has a backup key already", t.config.label),
        );
    }
    let value =
        |range: std::ops::Range<usize>| Attribute::bytes(ck::CKA_VALUE, secret[range].to_vec());
    let mut wrap = secret_key(WRAP_ID, ck::CKK_AES, false);
    wrap.extend([
        Attribute::bool(ck::CKA_TRUSTED, true),
        Attribute::bool(ck::CKA_WRAP, true),
        Attribute::bool(ck::CKA_UNWRAP, false),
        Attribute::bool(ck::CKA_SIGN, false),
        Attribute::bool(ck::CKA_VERIFY, false),
        value(0..32),
    ]);
    let mut unwrap = secret_key(UNWRAP_ID, ck::CKK_AES, true);
    unwrap.extend([
        Attribute::bool(ck::CKA_WRAP, false),
        Attribute::bool(ck::CKA_UNWRAP, true),
        Attribute::bool(ck::CKA_SIGN, false),
        Attribute::bool(ck::CKA_VERIFY, false),
        value(0..32),
    ]);
    let mut seal = secret_key(SEAL_ID, ck::CKK_GENERIC_SECRET, true);
    seal.extend([
        Attribute::bool(ck::CKA_WRAP, false),
        Attribute::bool(ck::CKA_UNWRAP, false),
        Attribute::bool(ck::CKA_SIGN, true),
        Attribute::bool(ck::CKA_VERIFY, true),
        value(32..64),
    ]);
    t.agent_objects
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let made = (|| -> AResult<BackupKey> {
        as_officer(t, OfficerAction::Create(std::mem::take(&mut wrap)))?;
        let create = |template: &[Attribute], what: &str| {
            s.backend
                .create_object(s.handle, template)
                .map_err(|e| hsm_err(&format!("C_CreateObject ({what})"), e))
        };
        if crate::lifecycle::officer::seen(s, WRAP_ID, ck::CKO_SECRET_KEY)?.is_empty() {
            return fail(
                AdminErrorKind::Failed,
                "the HSM's security officer made the backup key's wrapping half, but the \
                 agent's sessions do not see it",
            );
        }
        create(&unwrap, "the backup key's unwrapping half")?;
        create(&seal, "the backup key's sealing key")?;
        let key = find(s)?.ok_or_else(|| AdminError {
            kind: AdminErrorKind::Failed,
            message: "the backup key's objects cannot be found after they were made".into(),
        })?;
        halves_agree(s, &key)?;
        Ok(key)
    })();
    for template in [&mut wrap, &mut unwrap, &mut seal] {
        wipe(template);
    }
    if made.is_err() {
        remove(s);
    }
    made
}

/// Zeroises the key values in `template`.
pub(crate) fn wipe(template: &mut [Attribute]) {
    use zeroize::Zeroize;
    for a in template {
        if let keyward_protocol::AttrValue::Leaf(keyward_protocol::Value::Bytes(v)) = &mut a.value {
            v.zeroize();
        }
    }
}

/// Removes every object of the backup machinery from the token of `s`.
pub(crate) fn remove(s: &HsmSession<'_>) {
    for id in [WRAP_ID, UNWRAP_ID, SEAL_ID] {
        if let Ok(found) = s.by_id(id, ck::CKO_SECRET_KEY) {
            s.destroy(&found);
        }
    }
}

/// A fresh session AES key wrapped by the wrapping half and unwrapped by
/// the unwrapping half has the same check value.
fn halves_agree(s: &HsmSession<'_>, key: &BackupKey) -> AResult<()> {
    let probe = s
        .backend
        .generate_key(
            s.handle,
            &Mechanism::plain(ck::CKM_AES_KEY_GEN),
            &[
                Attribute::bool(ck::CKA_TOKEN, false),
                Attribute::ulong(ck::CKA_VALUE_LEN, 32),
                Attribute::bool(ck::CKA_SENSITIVE, true),
                Attribute::bool(ck::CKA_EXTRACTABLE, true),
                Attribute::bool(ck::CKA_ENCRYPT, true),
                Attribute::bytes(ck::CKA_ID, super::key::DRILL_ID.to_vec()),
            ],
        )
        .map_err(|e| hsm_err("C_GenerateKey (probe)", e))?;
    let kwp = Mechanism::plain(ck::CKM_AES_KEY_WRAP_PAD);
    let result = (|| {
        let wrapped = s
            .backend
            .wrap_key(s.handle, &kwp, key.wrap, probe)
            .map_err(|e| hsm_err("C_WrapKey with the backup key", e))?;
        let back = s
            .backend
            .unwrap_key(
                s.handle,
                &kwp,
                key.unwrap,
                &wrapped,
                &unwrapped_aes_template(),
            )
            .map_err(|e| hsm_err("C_UnwrapKey with the backup key", e))?;
        let same = kcv(s, probe)? == kcv(s, back)?;
        s.destroy(&[back]);
        if same {
            Ok(())
        } else {
            fail(
                AdminErrorKind::Failed,
                "the backup key's halves disagree (check values differ)",
            )
        }
    })();
    s.destroy(&[probe]);
    result
}

/// A secret of [`SECRET_LEN`] bytes from the HSM's generator.
pub(crate) fn draw_secret(s: &HsmSession<'_>) -> AResult<Zeroizing<Vec<u8>>> {
    let secret = Zeroizing::new(
        s.backend
            .generate_random(s.handle, SECRET_LEN)
            .map_err(|e| hsm_err("C_GenerateRandom", e))?,
    );
    if secret.len() != SECRET_LEN || secret.iter().all(|&b| b == 0) {
        return fail(
            AdminErrorKind::Failed,
            "the HSM's random generator gave no usable secret",
        );
    }
    Ok(secret)
}

/// The seal (HMAC-SHA256 in the HSM) of `bytes`.
pub(crate) fn seal(s: &HsmSession<'_>, key: &BackupKey, bytes: &[u8]) -> AResult<Vec<u8>> {
    s.run(
        keyward_protocol::Op::Sign,
        &Mechanism::plain(ck::CKM_SHA256_HMAC),
        key.seal,
        bytes,
    )
}

/// Whether `seal` is the seal of `bytes`.
pub(crate) fn seal_holds(s: &HsmSession<'_>, key: &BackupKey, bytes: &[u8], seal: &[u8]) -> bool {
    s.verify(
        &Mechanism::plain(ck::CKM_SHA256_HMAC),
        key.seal,
        bytes,
        seal,
    )
    .is_ok()
}
