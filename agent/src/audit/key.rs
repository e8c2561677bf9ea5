//! The audit key: a key pair in the HSM, made by the agent, that signs the
//! trail's checkpoints; and how often checkpoints are made.

use std::time::Duration;

use crate::backend::{Backend, BackendObject, BackendSession};

/// The `CKA_ID` of the audit key in the HSM: an EC P-256 key pair the agent
/// makes at its first start and signs checkpoints with. Applications never
/// see it.
pub const AUDIT_KEY_ID: &[u8] = b"keyward-audit-key";

/// The audit key's `CKA_LABEL`.
pub const AUDIT_KEY_LABEL: &[u8] = b"keyward-audit";

/// The name under which the inventory records the audit key's fingerprint.
pub const AUDIT_KEY_NAME: &str = "audit";

/// The audit key's (public, private) backend objects.
pub(crate) type AuditPair = (BackendObject, BackendObject);

/// Generates the audit key pair in the HSM on `anchor`; its public key's
/// fingerprint and its (public, private) handles.
pub(crate) fn generate_audit_key(
    backend: &dyn Backend,
    anchor: BackendSession,
) -> Result<([u8; 32], AuditPair), String> {
    use cryptoki_sys as ck;
    use keyward_protocol::{Attribute, Mechanism};
    let common = |private: bool| {
        vec![
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bool(ck::CKA_PRIVATE, private),
            Attribute::bytes(ck::CKA_LABEL, AUDIT_KEY_LABEL.to_vec()),
            Attribute::bytes(ck::CKA_ID, AUDIT_KEY_ID.to_vec()),
        ]
    };
    let mut public = common(false);
    public.push(Attribute::bytes(
        ck::CKA_EC_PARAMS,
        vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
    ));
    public.push(Attribute::bool(ck::CKA_VERIFY, true));
    let mut private = common(true);
    private.extend([
        Attribute::bool(ck::CKA_SIGN, true),
        Attribute::bool(ck::CKA_SENSITIVE, true),
        Attribute::bool(ck::CKA_EXTRACTABLE, false),
    ]);
    backend
        .generate_key_pair(
            anchor,
            &Mechanism::plain(ck::CKM_EC_KEY_PAIR_GEN),
            &public,
            &private,
        )
        .map_err(|e| e.to_string())
        .and_then(|(public, private)| {
            let fp = crate::keys::fingerprint(backend, anchor, public)
                .ok_or_else(|| "the new audit key shows no public value".to_owned())?;
            Ok((fp, (public, private)))
        })
}

/// Whether `signature` over SHA-256 of `message` verifies under public key
/// `public` (ECDSA), on a session of its own.
pub(crate) fn verify_with(
    backend: &dyn Backend,
    public: BackendObject,
    message: &[u8],
    signature: &[u8],
) -> bool {
    use keyward_protocol::{Mechanism, Op};
    use sha2::Digest;
    let digest = sha2::Sha256::digest(message);
    let Ok(s) = backend.open_session(false) else {
        return false;
    };
    let mech = Mechanism::plain(cryptoki_sys::CKM_ECDSA);
    let ok = backend
        .op_init(s, Op::Verify, &mech, Some(public))
        .and_then(|()| backend.verify(s, &digest, signature))
        .is_ok();
    let _ = backend.close_session(s);
    ok
}

/// The audit key on a backend token.
#[derive(Debug, Clone, Copy)]
pub struct AuditKey {
    /// The virtual slot whose backend holds it.
    pub slot: usize,
    /// Its private half.
    pub private: BackendObject,
    /// Its public half.
    pub public: BackendObject,
}

impl AuditKey {
    /// Whether `object` on `slot` is one of its halves.
    pub fn is(&self, slot: usize, object: BackendObject) -> bool {
        self.slot == slot && (self.private == object || self.public == object)
    }
}

/// How often checkpoints are written: after this many events, or this
/// long after the last one when events came since, and at shutdown.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointEvery {
    /// Events.
    pub events: u64,
    /// Time.
    pub interval: Duration,
}
