//! Checkpoints: the trail's head signed with the audit key, found or made
//! at start, every so often and at shutdown.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::backend::{Backend, BackendObject, BackendSession};

use super::key::*;
use super::requests::anchor_of;

impl crate::shared::Core {
    /// Finds the audit key on the first available backend token (the token
    /// recorded for it, once recorded), making it (inside the HSM) at the
    /// first start.
    ///
    /// The audit key is recognised by the fingerprint of its public key
    /// recorded in the inventory when it was made ([`AUDIT_KEY_NAME`]),
    /// never by its `CKA_ID` alone: another object with that `CKA_ID` (a
    /// planted public key) is not used to verify checkpoints, and a private
    /// key is used only after proving it is the recorded public key's other
    /// half (a signature made and verified). A store from before
    /// fingerprints records the one key pair that proves itself and, when
    /// several do, the one whose public key verifies the last checkpoint.
    pub fn setup_audit_key(&self) {
        use cryptoki_sys as ck;
        use keyward_protocol::Attribute;
        let inventory = self.keys.inventory();
        let recorded = match inventory.agent_key(AUDIT_KEY_NAME) {
            Ok(r) => r,
            Err(e) => {
                log::error!("audit: cannot read the audit key's record: {e}");
                return;
            }
        };
        for (slot, token) in self.tokens.iter().enumerate() {
            if recorded
                .as_ref()
                .is_some_and(|(t, _)| *t != token.config.label)
            {
                continue;
            }
            let Ok(backend) = token.backend() else {
                continue;
            };
            let anchor = backend.anchor_session();
            let found = |class: u64| {
                backend
                    .find_objects(
                        anchor,
                        &[
                            Attribute::ulong(ck::CKA_CLASS, class),
                            Attribute::bytes(ck::CKA_ID, AUDIT_KEY_ID.to_vec()),
                        ],
                    )
                    .unwrap_or_default()
            };
            let (publics, privates) = (found(ck::CKO_PUBLIC_KEY), found(ck::CKO_PRIVATE_KEY));
            let pair = if publics.is_empty() && privates.is_empty() && recorded.is_none() {
                generate_audit_key(backend.as_ref(), anchor).map(|(fp, pair)| (Some(fp), pair))
            } else {
                self.pick_audit_key(
                    backend.as_ref(),
                    anchor,
                    &publics,
                    &privates,
                    recorded.as_ref(),
                )
            };
            match pair {
                Ok((to_record, (public, private))) => {
                    if let Some(fp) = to_record {
                        let at = crate::keys::secs(crate::clock::now());
                        if let Err(e) =
                            inventory.set_agent_key(AUDIT_KEY_NAME, &token.config.label, &fp, at)
                        {
                            log::error!("audit: cannot record the audit key's fingerprint: {e}");
                            return;
                        }
                    }
                    if publics.len() + privates.len() > 2 {
                        log::warn!(
                            "audit: token {:?} holds other objects with the audit key's CKA_ID: \
                             planted, ignored (keyward discover lists them)",
                            token.config.label
                        );
                    }
                    log::info!(
                        "audit: checkpoints are signed by the audit key on token {:?}",
                        token.config.label
                    );
                    self.audit.set_key(AuditKey {
                        slot,
                        private,
                        public,
                    });
                }
                Err(e) => log::error!("audit: no audit key on token {:?}: {e}", token.config.label),
            }
            return;
        }
        match recorded {
            Some((t, _)) => log::error!(
                "audit: the audit key is recorded on token {t:?}, which is not available: \
                 checkpoints cannot be signed"
            ),
            None => log::error!("audit: no backend token: checkpoints cannot be signed"),
        }
    }

    /// Which of the objects with the audit key's `CKA_ID` on `anchor` are
    /// the audit key: the pair that proves itself (its public key with the
    /// `recorded` fingerprint, when there is one); among several, the one
    /// that signed the last checkpoint. With the fingerprint to record when
    /// none was.
    pub(crate) fn pick_audit_key(
        &self,
        backend: &dyn Backend,
        anchor: BackendSession,
        publics: &[BackendObject],
        privates: &[BackendObject],
        recorded: Option<&(String, Vec<u8>)>,
    ) -> Result<(Option<[u8; 32]>, AuditPair), String> {
        // Every (public, private) pair that proves itself, with the
        // public key's fingerprint.
        let pairs = || -> Vec<([u8; 32], AuditPair)> {
            let mut out = Vec::new();
            for &public in publics {
                let Some(fp) = crate::keys::fingerprint(backend, anchor, public) else {
                    continue;
                };
                if recorded.is_some_and(|(_, r)| r[..] != fp[..]) {
                    continue;
                }
                for &private in privates {
                    if crate::keys::proves_possession(backend, private, AUDIT_KEY_ID, &fp) {
                        out.push((fp, (public, private)));
                    }
                }
            }
            out
        };
        let mut found = pairs();
        if found.len() > 1 {
            // Several pairs prove themselves (a store from before
            // fingerprints, with a planted key pair): the one that
            // signed the last checkpoint is the audit key.
            let last = self
                .audit
                .log()
                .checkpoints()
                .ok()
                .and_then(|c| c.last().cloned());
            if let Some(cp) = last {
                let message =
                    keyward_inventory::checkpoint_message(cp.seq, &cp.head, cp.created_at);
                found.retain(|(_, (public, _))| {
                    verify_with(backend, *public, &message, &cp.signature)
                });
            }
        }
        match found.as_slice() {
            [(fp, pair)] => Ok((recorded.is_none().then_some(*fp), *pair)),
            [] => Err(format!(
                "no key pair with CKA_ID {:?} proves to be the audit key \
                     ({} public, {} private objects with that CKA_ID)",
                String::from_utf8_lossy(AUDIT_KEY_ID),
                publics.len(),
                privates.len()
            )),
            several => Err(format!(
                "{} key pairs with CKA_ID {:?} could be the audit key and none is recorded: \
                     remove the planted ones",
                several.len(),
                String::from_utf8_lossy(AUDIT_KEY_ID)
            )),
        }
    }

    /// Whether `object` on `slot` is the audit key (hidden from applications).
    pub fn is_audit_key(&self, slot: usize, object: BackendObject) -> bool {
        self.audit_key().is_some_and(|k| k.is(slot, object))
    }

    /// The audit key, when the agent has one.
    pub fn audit_key(&self) -> Option<AuditKey> {
        self.audit.key()
    }

    /// ECDSA over SHA-256 of `message` with the audit key, on a session of
    /// its own.
    pub(crate) fn audit_sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        use keyward_protocol::{Mechanism, Op};
        use sha2::Digest;
        let key = self.audit_key()?;
        let backend = self.tokens[key.slot].backend().ok()?;
        let digest = sha2::Sha256::digest(message);
        let s = backend.open_session(false).ok()?;
        let mech = Mechanism::plain(cryptoki_sys::CKM_ECDSA);
        let sig = backend
            .op_init(s, Op::Sign, &mech, Some(key.private))
            .and_then(|()| backend.single(s, Op::Sign, &digest));
        let _ = backend.close_session(s);
        sig.ok()
    }

    /// Checks an audit-key signature over `message`.
    pub fn audit_verify_signature(&self, message: &[u8], signature: &[u8]) -> bool {
        let Some(key) = self.audit_key() else {
            return false;
        };
        let Ok(backend) = self.tokens[key.slot].backend() else {
            return false;
        };
        verify_with(backend.as_ref(), key.public, message, signature)
    }

    /// Seals the trail up to its head with a checkpoint signed by the audit
    /// key, when anything came since the last one, and ships its head (an
    /// anchor) to syslog when forwarding is on. `Err` (also logged): the
    /// records after the last checkpoint could not be sealed.
    pub fn checkpoint(&self) -> Result<(), String> {
        self.audit.flush();
        let log = self.audit.log();
        let last = log
            .checkpoints()
            .map_err(|e| format!("cannot read the checkpoints: {e}"))?
            .last()
            .map_or(0, |c| c.seq);
        let (seq, head) = log
            .head()
            .map_err(|e| format!("cannot read the trail's head: {e}"))?;
        if seq == 0 || seq <= last {
            return Ok(());
        }
        let created_at = crate::clock::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let message = keyward_inventory::checkpoint_message(seq, &head, created_at);
        let Some(signature) = self.audit_sign(&message) else {
            log::error!("audit: the checkpoint at {seq} could not be signed by the HSM");
            return Err(format!(
                "the checkpoint at {seq} could not be signed by the HSM's audit key"
            ));
        };
        let cp = keyward_inventory::Checkpoint {
            seq,
            head,
            created_at,
            signature,
            signer: match self.host() {
                Some(host) => format!("keyward-audit (HSM, ECDSA P-256) by {host}"),
                None => "keyward-audit (HSM, ECDSA P-256)".into(),
            },
        };
        match log.checkpoint(&cp) {
            Ok(()) => {
                log::debug!("audit: checkpoint at {seq}");
                self.audit.forward_anchor(&anchor_of(&cp));
                Ok(())
            }
            // Another agent of the fleet sealed the shared trail further
            // meanwhile: what this one would seal is sealed.
            Err(_)
                if log
                    .last_checkpoint()
                    .ok()
                    .flatten()
                    .is_some_and(|c| c.seq >= seq) =>
            {
                log::debug!("audit: checkpoint at {seq}: sealed further by another agent");
                Ok(())
            }
            Err(e) => {
                log::error!("audit: checkpoint at {seq}: {e}");
                Err(format!("the checkpoint at {seq} could not be stored: {e}"))
            }
        }
    }

    /// Writes checkpoints every `every.events` events or `every.interval`,
    /// on a thread of its own.
    pub fn spawn_checkpoints(self: &Arc<crate::shared::Core>, every: CheckpointEvery) {
        let agent = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("audit-checkpoints".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(a) = agent.upgrade() else { return };
                    let sealed = a
                        .audit
                        .log()
                        .checkpoints()
                        .ok()
                        .and_then(|c| c.last().map(|c| c.seq))
                        .unwrap_or(0);
                    let head = a.audit.log().head().map_or(0, |(s, _)| s);
                    if head.saturating_sub(sealed) >= every.events
                        || (head > sealed && last.elapsed() >= every.interval)
                    {
                        // A failure is logged; the next round tries again.
                        let _ = a.checkpoint();
                        last = std::time::Instant::now();
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("audit: cannot start the checkpoint thread: {e}");
        }
    }
}
