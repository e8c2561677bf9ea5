//! Approval of a single use: a `C_Sign` (or `C_SignRecover`) with a key
//! whose class sets `approve_each_use`.
//!
//! The operation's `C_SignInit` passes every check as any other, but the
//! backend's operation is not started: the key and mechanism are held in
//! the session's [`ActiveOp`](crate::clients::ActiveOp) ([`PerUse`]). The
//! single-part call then records a request `sign` on the key whose
//! parameters name the SHA-256 of the data, the mechanism and the caller,
//! and waits (without `Agent::running`, so key changes and other calls go
//! on) until the request is approved or the class's wait passes. Approved:
//! the checks run again, the backend signs exactly the data the call holds,
//! and the request moves `approved` → `executed`. Each call records its own
//! request, so an approval signs one data once. Not approved in time: the
//! request moves `pending` → `expired` and the call answers
//! `CKR_FUNCTION_REJECTED`. Multi-part signing of such a key is refused.
//!
//! Decisions (`Lifecycle::decide`, `cancel`) ring the
//! [`Bell`](crate::per_use::Bell); a waiting call also reads its request once a second. At start,
//! the requests whose calls ended with the previous run are closed (pending:
//! `expired`, approved: `failed`): an approval never signs without its call.

use std::time::{Duration, Instant};

use cryptoki_sys as ck;
use keyward_inventory::{ApprovalRecord, AuditKind};
use keyward_policy::{ApprovalStatus, Operation};
use keyward_protocol::Op;
use sha2::{Digest, Sha256};

use crate::agent::Agent;
use crate::clients::{Client, Session};
use crate::error::{Error, Result};
use crate::keys::{secs, ManagedRef};
use crate::lock;
use crate::per_use::{PerUse, SIGN_ACTION};

/// How often a waiting call reads its request without a ring.
const POLL: Duration = Duration::from_secs(1);

/// Why a use was not approved, for the log and the trail.
fn not_approved(id: &str, status: ApprovalStatus, outcome: &str) -> String {
    if outcome.is_empty() {
        format!("request {id} is {status}")
    } else {
        format!("request {id} is {status}: {outcome}")
    }
}

impl Agent {
    /// The wait of a use for `op` of key `managed` when its class asks
    /// approval of each use (signatures only).
    pub(crate) fn per_use_wait(&self, op: Op, managed: Option<ManagedRef>) -> Option<Duration> {
        if !matches!(op, Op::Sign | Op::SignRecover) {
            return None;
        }
        let key = self.keys.key(managed?.key_id)?;
        self.policy().class(&key.record.class)?.per_use_approval
    }

    /// The operation `op` of `s` when its use waits for approval. With
    /// `recheck` (a call without its own init: the operation began in an
    /// earlier request), an operation begun before the key's class asked
    /// approval of each use waits all the same.
    pub(crate) fn held_for_approval(
        &self,
        s: &Session,
        op: Op,
        recheck: bool,
    ) -> Option<(PerUse, ManagedRef)> {
        if !matches!(op, Op::Sign | Op::SignRecover) {
            return None;
        }
        let (per_use, managed, mechanism) = {
            let active = lock(&s.active);
            let a = active[op.index()].as_ref()?;
            (a.per_use.clone(), a.managed?, a.mechanism)
        };
        match per_use {
            Some(p) => Some((p, managed)),
            None if recheck => self.per_use_wait(op, Some(managed)).map(|wait| {
                let p = PerUse {
                    mechanism,
                    init: None,
                    wait,
                };
                (p, managed)
            }),
            None => None,
        }
    }

    /// Refuses an update or final of an operation under per-use approval
    /// (`CKR_FUNCTION_REJECTED`): the approval covers one single-part call.
    pub(crate) fn refuse_multi_part(
        &self,
        client: &Client,
        s: &Session,
        op: Op,
        recheck: bool,
    ) -> Result<()> {
        let Some((per_use, managed)) = self.held_for_approval(s, op, recheck) else {
            return Ok(());
        };
        let key = self.keys.key(managed.key_id);
        self.note_refusal(
            client,
            Operation::Sign.as_str(),
            key.as_deref().map(|k| (k, managed.version)),
            Some(per_use.mechanism),
            ck::CKR_FUNCTION_REJECTED,
            "the key's class asks approval of each use, which needs a single-part C_Sign: \
             multi-part signing (C_SignUpdate, C_SignFinal) is refused",
        );
        self.end_op(
            client,
            s,
            op,
            Err(Error::Refused(ck::CKR_FUNCTION_REJECTED)),
        )
    }

    /// Records the request for one signature of `data` by `client` and
    /// waits for its approval. `Ok`: the request's id, approved; else the
    /// call's answer (`CKR_FUNCTION_REJECTED`: not approved in time,
    /// denied or cancelled). Holds no lock while it waits.
    pub(crate) fn await_sign_approval(
        &self,
        client: &Client,
        per_use: &PerUse,
        managed: ManagedRef,
        data: &[u8],
    ) -> Result<String> {
        let Some(key) = self.keys.key(managed.key_id) else {
            return Err(Error::KeyHandleInvalid);
        };
        let mechanism = mechanism_text(per_use.mechanism);
        let digest = hex::encode(Sha256::digest(data));
        let exe = client
            .peer
            .exe
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // serde_json's maps are sorted: this is the canonical form.
        let mut parameters = serde_json::json!({
            "data_sha256": digest,
            "mechanism": mechanism,
            "application": client.application,
            "uid": client.peer.uid,
            "pid": client.peer.key.pid,
            "exe": exe,
        });
        // On a shared store: the agent whose call waits (only it ends the
        // request when it stops).
        if let Some(host) = self.host() {
            parameters["host"] = serde_json::Value::from(host);
        }
        let mut id = [0u8; 16];
        if getrandom::getrandom(&mut id).is_err() {
            log::error!("no randomness for a request id: C_Sign refused");
            return Err(Error::Backend(ck::CKR_FUNCTION_FAILED));
        }
        let created_at = secs(crate::clock::now());
        let wait = per_use.wait.as_secs().max(1);
        let target = format!("{}/{}", key.record.token, key.record.name);
        let record = ApprovalRecord {
            id: hex::encode(id),
            action: SIGN_ACTION.to_owned(),
            target: target.clone(),
            key_id: Some(key.record.id),
            parameters: parameters.to_string(),
            requester: client.application.clone(),
            // The reason is what `keyward request list` shows: who asks,
            // and the digest of what they would have signed.
            reason: format!(
                "C_Sign by {} (uid {}, pid {}{}{}): {mechanism} of {} bytes, SHA-256 {digest}",
                client.application,
                client.peer.uid,
                client.peer.key.pid,
                if exe.is_empty() { "" } else { ", " },
                exe,
                data.len()
            ),
            created_at,
            expires_at: created_at.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)),
            status: ApprovalStatus::Pending,
            outcome: String::new(),
            closed_at: None,
        };
        if let Err(e) = self.keys.inventory().create_request(&record) {
            log::error!(
                "key {target}: C_Sign by {}: the request cannot be recorded: {e}",
                client.peer
            );
            return Err(Error::Backend(ck::CKR_FUNCTION_FAILED));
        }
        log::warn!(
            "key {target}: C_Sign by {} (application {}) of {} bytes (SHA-256 {digest}) with \
             {mechanism} needs approval: request {} recorded, waiting up to {wait} s",
            client.peer,
            client.application,
            data.len(),
            record.id
        );
        let deadline = Instant::now() + Duration::from_secs(wait);
        match self.await_approval(&record.id, deadline) {
            Ok(()) => {
                log::info!("request {}: approved; signing", record.id);
                Ok(record.id)
            }
            Err(why) => {
                self.note_refusal(
                    client,
                    Operation::Sign.as_str(),
                    Some((&key, managed.version)),
                    Some(per_use.mechanism),
                    ck::CKR_FUNCTION_REJECTED,
                    &format!("not approved: {why}"),
                );
                Err(Error::Refused(ck::CKR_FUNCTION_REJECTED))
            }
        }
    }

    /// Waits until request `id` is approved (`Ok`), closed otherwise, or
    /// `deadline` passes (the request then expires). `Err`: why not.
    fn await_approval(&self, id: &str, deadline: Instant) -> std::result::Result<(), String> {
        let inventory = self.keys.inventory();
        let mut expired = false;
        loop {
            let seen = self.sign_decisions.rung();
            let r = match inventory.request(id) {
                Ok(Some(r)) => r,
                Ok(None) => return Err(format!("request {id} is gone")),
                Err(e) => return Err(format!("request {id} cannot be read: {e}")),
            };
            match r.status {
                ApprovalStatus::Approved => return Ok(()),
                ApprovalStatus::Pending if !expired => {}
                status => return Err(not_approved(id, status, &r.outcome)),
            }
            let now = Instant::now();
            if now >= deadline {
                // A decision that came meanwhile wins: the move fails and
                // the request is read once more.
                let at = secs(crate::clock::now());
                let outcome = "not approved in time";
                match inventory.close_request(
                    id,
                    ApprovalStatus::Pending,
                    ApprovalStatus::Expired,
                    outcome,
                    at,
                ) {
                    Ok(true) => return Err(not_approved(id, ApprovalStatus::Expired, outcome)),
                    Ok(false) => expired = true,
                    Err(e) => return Err(format!("request {id} cannot be closed: {e}")),
                }
                continue;
            }
            self.sign_decisions.wait(seen, (deadline - now).min(POLL));
        }
    }

    /// The signature of `data` for approved request `id`: the checks again
    /// (the key may have changed while the call waited), then the backend's
    /// init and signature, and the request's move to `executed` (or
    /// `failed`). A signature whose request cannot be closed is not given
    /// out. Run under [`Agent::running`].
    pub(crate) fn sign_approved(
        &self,
        client: &Client,
        s: &Session,
        op: Op,
        (per_use, managed): (&PerUse, ManagedRef),
        id: &str,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let m = per_use.mechanism;
        if let Err(e) = self.check_operation(client, Operation::Sign, m, Some(managed)) {
            self.close_sign(
                client,
                id,
                Err("the key's use was refused after the approval"),
            );
            return Err(e);
        }
        let started = match &per_use.init {
            Some((mechanism, key)) => {
                s.backend
                    .op_init(s.backend_session, op, mechanism, Some(*key))
            }
            None => Ok(()),
        };
        let r = started.and_then(|()| s.backend.single(s.backend_session, op, data));
        match r {
            Ok(signature) => {
                let outcome = format!("signed {} bytes with {}", data.len(), mechanism_text(m));
                if self.close_sign(client, id, Ok(&outcome)) {
                    Ok(signature)
                } else {
                    Err(Error::Backend(ck::CKR_FUNCTION_FAILED))
                }
            }
            Err(e) => {
                let why = format!(
                    "the signature failed: {}",
                    keyward_policy::rv_name(e.rv()).unwrap_or("CKR_FUNCTION_FAILED")
                );
                self.close_sign(client, id, Err(&why));
                Err(e)
            }
        }
    }

    /// Moves approved request `id` to `executed` (`Ok(outcome)`) or
    /// `failed` (`Err(why)`), and records it in the trail; whether it moved.
    fn close_sign(
        &self,
        client: &Client,
        id: &str,
        outcome: std::result::Result<&str, &str>,
    ) -> bool {
        let (to, text, result) = match outcome {
            Ok(text) => (ApprovalStatus::Executed, text, ck::CKR_OK),
            Err(text) => (ApprovalStatus::Failed, text, ck::CKR_FUNCTION_FAILED),
        };
        let at = secs(crate::clock::now());
        let moved = self
            .keys
            .inventory()
            .close_request(id, ApprovalStatus::Approved, to, text, at);
        let moved = match moved {
            Ok(true) => true,
            Ok(false) => {
                log::error!("request {id}: no longer approved: the signature is not given out");
                false
            }
            Err(e) => {
                log::error!("request {id}: cannot be closed ({e}): the signature is not given out");
                false
            }
        };
        let mut e = crate::audit::for_client(client, AuditKind::Admin, "request.execute");
        e.result = if moved {
            result
        } else {
            ck::CKR_FUNCTION_FAILED
        };
        e.reason = format!("request {id}: {SIGN_ACTION}: {to}: {text}");
        if let Err(why) = self.audit.durable(e) {
            log::error!("request {id}: its execution could not be recorded in the trail: {why}");
        }
        moved
    }
}

impl crate::shared::Core {
    /// At start: the requests for one signature whose calls ended with the
    /// agent. Approved ones move to `failed`, pending ones to `expired`,
    /// both with why; nothing is signed.
    pub(crate) fn end_orphan_sign_requests(&self) {
        let why = "the call that waited for it ended with the agent";
        let inventory = self.keys.inventory();
        let at = secs(crate::clock::now());
        for (from, to) in [
            (ApprovalStatus::Approved, ApprovalStatus::Failed),
            (ApprovalStatus::Pending, ApprovalStatus::Expired),
        ] {
            let found = match inventory.requests(Some(from)) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("{from} requests cannot be read: {e}");
                    continue;
                }
            };
            // Of a shared store, only this agent's: another agent's call
            // may still wait for its request.
            let ours = |r: &&ApprovalRecord| {
                let host = serde_json::from_str::<serde_json::Value>(&r.parameters)
                    .ok()
                    .and_then(|p| p.get("host").and_then(|h| h.as_str()).map(str::to_owned));
                host.as_deref() == self.host()
            };
            for r in found
                .iter()
                .filter(|r| r.action == SIGN_ACTION)
                .filter(ours)
            {
                match inventory.close_request(&r.id, from, to, why, at) {
                    Ok(false) => {}
                    Ok(true) => log::warn!(
                        "request {} ({from} before the agent stopped): {to}: {why}",
                        r.id
                    ),
                    Err(e) => log::error!("request {}: cannot be closed: {e}", r.id),
                }
            }
        }
    }
}

/// A mechanism's `CKM_` name, or its number in hex.
fn mechanism_text(m: u64) -> String {
    keyward_policy::mechanism_name(m).map_or_else(|| format!("0x{m:x}"), str::to_owned)
}
