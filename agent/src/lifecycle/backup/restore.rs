//! Restores and drills.
//!
//! A file is accepted only when it was made with this token's backup key
//! (its key check, read first, tells a file of another deployment apart)
//! and its seal verifies in the HSM (an altered or forged file is refused
//! before anything in it is read).
//!
//! `keyward backup restore` is an approval request (quorum
//! `backup-restore`); the file waits in the token's state directory under
//! its id until the request is approved. The plan compares each key of the
//! file with the inventory:
//! - a key the inventory does not have is recorded as it was (name,
//!   versions, states, dates, `CKA_ID`s) and its objects unwrapped;
//! - a key the inventory has, in the same state and with the same
//!   versions, gets the objects it lacks on the token (a wiped token);
//! - a key the inventory has as destroyed stays destroyed;
//! - any other difference is a conflict: the whole restore is refused, the
//!   conflicts listed, nothing changed (the inventory may be newer than the
//!   backup, and a restore never overwrites it).
//!
//! `keyward backup verify`, the drill, unwraps every version into session
//! objects of a session of its own (hidden from applications, gone when it
//! closes) and proves each works: the test operation of `keyward key
//! verify` against the public key recorded in the backup, and the
//! version's recorded fingerprint. Nothing of the token or the inventory
//! changes; the trail records the drill per key version.

use std::time::SystemTime;

use cryptoki_sys as ck;
use keyward_inventory::{
    Actor, ApprovalRecord, AuditKind, KeyChange, LifecycleChange, VersionChange,
};
use keyward_protocol::admin::{BackupAnswer, DrillResult, KeyResponse};
use keyward_protocol::{Attribute, Mechanism};

use crate::backend::BackendObject;
use crate::keys::{secs, ManagedRef};
use crate::tokens::VirtualToken;

use super::super::hsm::*;
use super::super::*;
use super::create::{backup_id, contents, ObjectIndex};
use super::file::{self, Body, Entry, VersionEntry};
use super::key::{self, BackupKey};
use super::BACKUP_RESTORE;

/// What a restore does with one key of the file.
enum Step<'e> {
    /// Record it and make its objects.
    New(&'e Entry),
    /// Make the objects of these versions (the inventory has them).
    Objects(&'e Entry, Vec<&'e VersionEntry>),
    /// Everything is there.
    Present,
    /// Destroyed in the inventory: stays so.
    Destroyed,
}

/// The state file a restore's backup waits in.
fn waiting_file(id: &str) -> String {
    format!("restore-{id}")
}

fn refused(message: String) -> AdminError {
    AdminError {
        kind: AdminErrorKind::Refused,
        message,
    }
}

impl Lifecycle {
    /// The body of backup `bytes` for token `t`, its key check and seal
    /// checked, with the backup key.
    fn open_backup(
        &self,
        t: &VirtualToken,
        s: &HsmSession<'_>,
        bytes: &[u8],
    ) -> AResult<(Body, BackupKey, [u8; 32])> {
        let parsed = file::parse(bytes).map_err(|m| AdminError {
            kind: AdminErrorKind::Invalid,
            message: m,
        })?;
        let (Some(key), Some(check)) = (key::find(s)?, self.recorded_check(t)?) else {
            return fail(
                AdminErrorKind::NotFound,
                format!(
                    "token {:?} has no backup key: `keyward backup init`, or on a new HSM the \
                     custodians' `keyward backup share submit`, makes it",
                    t.config.label
                ),
            );
        };
        if parsed.key_check != check {
            return Err(refused(format!(
                "this backup was made with another backup key ({}, another deployment); \
                 token {:?} has backup key {}",
                keyward_escrow::short_check(&parsed.key_check),
                t.config.label,
                keyward_escrow::short_check(&check)
            )));
        }
        if !key::seal_holds(s, &key, parsed.sealed, parsed.seal) {
            return Err(refused(
                "the backup file was altered: its seal does not verify".into(),
            ));
        }
        let body = file::body(&parsed).map_err(|m| AdminError {
            kind: AdminErrorKind::Invalid,
            message: m,
        })?;
        Ok((body, key, check))
    }

    /// What restoring `body` onto token `t` does, key by key; refused
    /// with every conflict listed.
    fn plan<'e>(
        &self,
        t: &VirtualToken,
        s: &HsmSession<'_>,
        body: &'e Body,
    ) -> AResult<Vec<(&'e Entry, Step<'e>)>> {
        let label = &t.config.label;
        if body.token != *label {
            return Err(refused(format!(
                "this backup is of token {:?}, not {label:?}",
                body.token
            )));
        }
        let inv = self.keys.inventory();
        let index = ObjectIndex::of(s)?;
        let mut steps = Vec::new();
        let mut conflicts = Vec::new();
        for e in &body.keys {
            let name = &e.record.name;
            let Some(k) = inv.key(label, name).map_err(inv_err)? else {
                for v in e.versions.iter().filter(|v| !v.wrapped.is_empty()) {
                    let id = &v.version.backend_id;
                    let taken = index.has(id);
                    if taken {
                        conflicts.push(format!(
                            "{name}: CKA_ID {} of version {} is in use on the token",
                            hex::encode(id),
                            v.version.version
                        ));
                    }
                }
                steps.push((e, Step::New(e)));
                continue;
            };
            if k.state == KeyState::Destroyed {
                steps.push((e, Step::Destroyed));
                continue;
            }
            if k.state != e.record.state {
                conflicts.push(format!(
                    "{name}: the inventory says {}, the backup {}",
                    k.state, e.record.state
                ));
                continue;
            }
            let have = inv.versions(k.id).map_err(inv_err)?;
            let same = have.len() == e.versions.len()
                && have.iter().zip(&e.versions).all(|(a, b)| {
                    a.version == b.version.version
                        && a.backend_id == b.version.backend_id
                        && a.state == b.version.state
                        && a.fingerprint == b.version.fingerprint
                });
            if !same {
                conflicts.push(format!(
                    "{name}: the inventory has versions {:?}, the backup {:?}",
                    have.iter().map(|v| v.version).collect::<Vec<_>>(),
                    e.versions
                        .iter()
                        .map(|v| v.version.version)
                        .collect::<Vec<_>>()
                ));
                continue;
            }
            let mut missing = Vec::new();
            for v in e.versions.iter().filter(|v| !v.wrapped.is_empty()) {
                let m = ManagedRef {
                    key_id: k.id,
                    version: v.version.version,
                };
                let cko = secret_class(v);
                if index
                    .genuine(self, s, label, (&v.version.backend_id, cko), m)
                    .is_empty()
                {
                    missing.push(v);
                }
            }
            if missing.is_empty() {
                steps.push((e, Step::Present));
            } else {
                steps.push((e, Step::Objects(e, missing)));
            }
        }
        if !conflicts.is_empty() {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "the backup conflicts with the inventory, which is newer; nothing \
                     restored: {}",
                    conflicts.join("; ")
                ),
            );
        }
        Ok(steps)
    }

    /// `keyward backup restore`: the approval request, once the file is
    /// checked (key, seal, plan).
    pub(crate) fn request_restore(
        &self,
        token: Option<&str>,
        bytes: Vec<u8>,
        (who, why): (&str, &str),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let t = self.admin_token(token)?;
        if why.trim().is_empty() {
            return fail(AdminErrorKind::Invalid, "a restore needs a reason");
        }
        let backend = self.backend(t)?;
        let s = HsmSession::open(backend.as_ref())?;
        let (body, _, _) = self.open_backup(t, &s, &bytes)?;
        let steps = self.plan(t, &s, &body)?;
        let id = backup_id(&bytes);
        let names = |f: fn(&Step<'_>) -> bool| -> Vec<String> {
            steps
                .iter()
                .filter(|(_, st)| f(st))
                .map(|(e, _)| e.record.name.clone())
                .collect()
        };
        let parameters = serde_json::json!({
            "token": t.config.label,
            "backup": id,
            "created_at": body.created_at,
            "restores": names(|s| matches!(s, Step::New(_) | Step::Objects(..))),
            "stays_destroyed": names(|s| matches!(s, Step::Destroyed)),
        });
        super::super::dry_run::note_restore(|| keyward_protocol::plan::RestoreImpact {
            token: t.config.label.clone(),
            backup: id.clone(),
            created_at: body.created_at,
            restores: names(|s| matches!(s, Step::New(_) | Step::Objects(..))),
            stays_destroyed: names(|s| matches!(s, Step::Destroyed)),
        });
        if !super::super::dry_run::planning() {
            t.state
                .write_file(&waiting_file(&id), &bytes)
                .map_err(|e| AdminError {
                    kind: AdminErrorKind::Failed,
                    message: format!("state directory: the backup cannot be kept: {e}"),
                })?;
        }
        self.record_request_on(
            (&format!("{}/backup {}", t.config.label, &id[..16]), None),
            BACKUP_RESTORE,
            parameters,
            (who, why),
            now,
        )
    }

    /// Carries out approved restore request `r`.
    pub(crate) fn carry_out_restore(
        &self,
        r: &ApprovalRecord,
        by: &Actor,
        now: SystemTime,
    ) -> AResult<()> {
        let parameters = crate::lifecycle::request_parameters(r)?;
        let t = self.admin_token(parameters["token"].as_str())?;
        let id = parameters["backup"].as_str().unwrap_or_default().to_owned();
        let bytes = t
            .state
            .read_file(&waiting_file(&id))
            .ok()
            .flatten()
            .filter(|b| backup_id(b) == id)
            .ok_or_else(|| AdminError {
                kind: AdminErrorKind::NotFound,
                message: format!("request {}: the backup {id} is no longer kept", r.id),
            })?;
        let backend = self.backend(t)?;
        let s = HsmSession::open(backend.as_ref())?;
        let (body, key, _) = self.open_backup(t, &s, &bytes)?;
        let steps = self.plan(t, &s, &body)?;
        let who = self.asked_and_approved(r)?;
        let why = format!("restored from backup {} (request {})", &id[..16], r.id);
        let (mut made, mut destroyed) = (0, Vec::new());
        for (e, step) in &steps {
            match step {
                Step::New(e) => {
                    self.restore_new(t, &s, &key, e, (&who, by), &why, now)?;
                    made += 1;
                }
                Step::Objects(e, missing) => {
                    self.restore_objects(t, &s, &key, e, missing, by, &why)?;
                    made += 1;
                }
                Step::Present => {}
                Step::Destroyed => destroyed.push(e.record.name.clone()),
            }
        }
        let outcome = format!(
            "backup {} restored onto token {}: {made} keys restored, {} present already{}",
            &id[..16],
            t.config.label,
            steps
                .iter()
                .filter(|(_, s)| matches!(s, Step::Present))
                .count(),
            if destroyed.is_empty() {
                String::new()
            } else {
                format!(", stay destroyed: {}", destroyed.join(", "))
            }
        );
        self.mark_executed(&r.id, &outcome, now)?;
        let _ = t.state.remove_file(&waiting_file(&id));
        log::warn!("{outcome} ({who})");
        Ok(())
    }

    /// Makes the objects of version `v` from the backup, as token objects
    /// (else session objects with the drill's `CKA_ID`), and checks they
    /// are the key recorded: the fingerprint, or for a secret key to which
    /// the HSM gave no check value (SoftHSM2 gives none to an unwrapped
    /// key, and shows its length as 0), the recorded check value set on it,
    /// which the HSM accepts only when it is the unwrapped value's. The
    /// objects made, and the version's fingerprint as this HSM shows it
    /// when that differs from the recorded one.
    fn unwrap_version(
        &self,
        s: &HsmSession<'_>,
        key: &BackupKey,
        v: &VersionEntry,
        token_object: bool,
    ) -> AResult<(Vec<BackendObject>, Option<[u8; 32]>)> {
        let mut template = v.template.clone();
        let check = template
            .iter()
            .position(|a| a.attr_type == ck::CKA_CHECK_VALUE)
            .map(|i| template.remove(i));
        let mut public = v.public.clone();
        if !token_object {
            for t in std::iter::once(&mut template).chain(public.as_mut()) {
                t.retain(|a| !matches!(a.attr_type, ck::CKA_TOKEN | ck::CKA_ID | ck::CKA_LABEL));
                t.extend([
                    Attribute::bool(ck::CKA_TOKEN, false),
                    Attribute::bytes(ck::CKA_ID, key::DRILL_ID.to_vec()),
                    Attribute::bytes(ck::CKA_LABEL, key::LABEL.to_vec()),
                ]);
            }
        }
        let what = format!("version {}", v.version.version);
        let mut made = Vec::new();
        let result = (|| {
            let secret = s
                .backend
                .unwrap_key(
                    s.handle,
                    &Mechanism::plain(ck::CKM_AES_KEY_WRAP_PAD),
                    key.unwrap,
                    &v.wrapped,
                    &template,
                )
                .map_err(|e| hsm_err(&format!("C_UnwrapKey ({what})"), e))?;
            made.push(secret);
            if let Some(p) = &public {
                let o = s
                    .backend
                    .create_object(s.handle, p)
                    .map_err(|e| hsm_err(&format!("C_CreateObject ({what}, public key)"), e))?;
                made.insert(0, o);
            }
            let fp = s.fingerprint(&made);
            if v.version.fingerprint.is_none() || fp.map(|f| f.to_vec()) == v.version.fingerprint {
                return Ok(None);
            }
            let shown = s.bytes(secret, ck::CKA_CHECK_VALUE)?.unwrap_or_default();
            let recorded = check.as_ref().and_then(|a| match &a.value {
                keyward_protocol::AttrValue::Leaf(keyward_protocol::Value::Bytes(b)) => {
                    Some(b.clone())
                }
                _ => None,
            });
            match (public.is_some(), shown.is_empty(), recorded) {
                (false, true, Some(recorded)) if !recorded.is_empty() => {
                    s.backend
                        .set_attributes(
                            s.handle,
                            secret,
                            &[Attribute::bytes(ck::CKA_CHECK_VALUE, recorded)],
                        )
                        .map_err(|_| AdminError {
                            kind: AdminErrorKind::Failed,
                            message: format!(
                                "{what}: the restored key is not the one recorded (the HSM \
                                 refuses its recorded check value)"
                            ),
                        })?;
                    Ok(s.fingerprint(&made))
                }
                _ => fail(
                    AdminErrorKind::Failed,
                    format!(
                        "{what}: the restored key is not the one recorded (fingerprints differ)"
                    ),
                ),
            }
        })();
        let result = result.and_then(|fp| {
            if token_object {
                restore_certificates(s, v)?;
            }
            Ok(fp)
        });
        match result {
            Ok(fp) => Ok((made, fp)),
            Err(e) => {
                s.destroy(&made);
                Err(e)
            }
        }
    }

    /// Records key `e` as it was in the backup and makes its objects.
    #[allow(clippy::too_many_arguments)]
    fn restore_new(
        &self,
        t: &VirtualToken,
        s: &HsmSession<'_>,
        key: &BackupKey,
        e: &Entry,
        (who, by): (&str, &Actor),
        why: &str,
        now: SystemTime,
    ) -> AResult<()> {
        let label = &t.config.label;
        let live: Vec<&VersionEntry> = e
            .versions
            .iter()
            .filter(|v| !v.wrapped.is_empty())
            .collect();
        let mut made = Vec::new();
        for v in &live {
            self.keys.set_pending(label, &v.version.backend_id, true);
            match self.unwrap_version(s, key, v, true) {
                Ok((objects, fp)) => made.push((v.version.version, objects, fp)),
                Err(err) => {
                    for (_, o, _) in &made {
                        s.destroy(o);
                    }
                    self.clear_pending(label, &live);
                    return Err(err);
                }
            }
        }
        let mut record = e.record.clone();
        record.id = 0;
        let change = LifecycleChange {
            at: secs(now),
            key: KeyChange::Create(Box::new(record)),
            versions: e
                .versions
                .iter()
                .map(|v| {
                    let mut version = v.version.clone();
                    let shown = made.iter().find(|m| m.0 == version.version);
                    if let Some(fp) = shown.and_then(|m| m.2) {
                        version.fingerprint = Some(fp.to_vec());
                    }
                    VersionChange::Add(version)
                })
                .collect(),
            dates: Default::default(),
            actor: who.to_owned(),
            reason: why.to_owned(),
            trail: Vec::new(),
        };
        match self.apply_change(by, "restore", why, change) {
            Ok(done) => {
                for (version, objects, _) in &made {
                    self.judged(label, objects, done.key.id, *version);
                }
                self.refresh(done.key.id)?;
                self.clear_pending(label, &live);
                Ok(())
            }
            Err(err) => {
                for (_, o, _) in &made {
                    s.destroy(o);
                }
                self.clear_pending(label, &live);
                Err(err)
            }
        }
    }

    fn clear_pending(&self, label: &str, versions: &[&VersionEntry]) {
        for v in versions {
            self.keys.set_pending(label, &v.version.backend_id, false);
        }
    }

    /// Makes the missing objects of key `e`, which the inventory has.
    #[allow(clippy::too_many_arguments)]
    fn restore_objects(
        &self,
        t: &VirtualToken,
        s: &HsmSession<'_>,
        key: &BackupKey,
        e: &Entry,
        missing: &[&VersionEntry],
        by: &Actor,
        why: &str,
    ) -> AResult<()> {
        let label = &t.config.label;
        let k = self
            .keys
            .inventory()
            .key(label, &e.record.name)
            .map_err(inv_err)?
            .ok_or_else(|| AdminError {
                kind: AdminErrorKind::Conflict,
                message: format!("{}: gone from the inventory meanwhile", e.record.name),
            })?;
        let mut events = Vec::new();
        for v in missing {
            self.keys.set_pending(label, &v.version.backend_id, true);
            let made = self.unwrap_version(s, key, v, true);
            self.keys.set_pending(label, &v.version.backend_id, false);
            let (objects, fp) = made?;
            if let (Some(to), Some(from)) = (fp, &v.version.fingerprint) {
                if let Err(err) =
                    self.keys
                        .inventory()
                        .replace_fingerprint(k.id, v.version.version, from, &to)
                {
                    s.destroy(&objects);
                    return Err(inv_err(err));
                }
            }
            self.judged(label, &objects, k.id, v.version.version);
            let mut ev = crate::audit::event(AuditKind::Lifecycle, by.clone(), "restore");
            ev.token = Some(label.clone());
            ev.key = Some(e.record.name.clone());
            ev.key_version = Some(v.version.version);
            ev.reason = format!("objects made again: {why}");
            events.push(ev);
        }
        self.refresh(k.id)?;
        self.audit.durable_all(events).map_err(|why| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("the restore cannot be recorded: {why}"),
        })
    }

    /// `keyward backup verify`: the drill.
    pub(crate) fn backup_drill(
        &self,
        token: Option<&str>,
        bytes: &[u8],
        (who, by): (&str, &Actor),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let t = self.admin_token(token)?;
        let backend = self.backend(t)?;
        let s = HsmSession::open(backend.as_ref())?;
        let (body, key, check) = self.open_backup(t, &s, bytes)?;
        let id = backup_id(bytes);
        let mut results = Vec::new();
        let mut events = Vec::new();
        for e in &body.keys {
            for v in e.versions.iter().filter(|v| !v.wrapped.is_empty()) {
                let outcome = self.drill_version(&s, &key, e, v);
                let (ok, detail) = match outcome {
                    Ok(d) => (true, d),
                    Err(err) => (false, err.message),
                };
                let mut ev =
                    crate::audit::event(AuditKind::Lifecycle, by.clone(), super::marks::DRILL);
                ev.token = Some(t.config.label.clone());
                ev.key = Some(e.record.name.clone());
                ev.key_version = Some(v.version.version);
                ev.result = if ok { 0 } else { ck::CKR_FUNCTION_FAILED };
                ev.reason = format!("backup {id}: {detail}")
                    .chars()
                    .take(1024)
                    .collect();
                events.push(ev);
                results.push(DrillResult {
                    name: e.record.name.clone(),
                    version: v.version.version,
                    ok,
                    detail,
                });
            }
        }
        self.audit.durable_all(events).map_err(|why| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("the drill cannot be recorded: {why}"),
        })?;
        let failed = results.iter().filter(|r| !r.ok).count();
        log::info!(
            "backup {} drilled by {who} at {}: {}, {failed} failed",
            &id[..16],
            secs(now),
            keyward_policy::plural(results.len(), "version")
        );
        Ok(KeyResponse::Backup(Box::new(BackupAnswer::Drill {
            contents: contents(&id, &check, &body),
            results,
        })))
    }

    /// One version of a drill: unwrapped into session objects, proven,
    /// destroyed.
    fn drill_version(
        &self,
        s: &HsmSession<'_>,
        key: &BackupKey,
        e: &Entry,
        v: &VersionEntry,
    ) -> AResult<String> {
        let (objects, refingerprinted) = self.unwrap_version(s, key, v, false)?;
        let given: Vec<(u64, BackendObject)> = class_order(v)
            .into_iter()
            .zip(objects.iter().copied())
            .collect();
        let proved =
            self.prove_objects(s, &v.version, given, (e.record.purpose, e.record.algorithm));
        s.destroy(&objects);
        let detail = proved?;
        Ok(if refingerprinted.is_some() {
            format!("{detail}; check value as recorded (the HSM checked it)")
        } else {
            format!("{detail}; fingerprint as recorded")
        })
    }
}

/// Makes the certificates of version `v` that the token lacks (by `CKA_ID`
/// and value); the objects made.
fn restore_certificates(s: &HsmSession<'_>, v: &VersionEntry) -> AResult<Vec<BackendObject>> {
    let mut made = Vec::new();
    for c in &v.certificates {
        let value = c.iter().find(|a| a.attr_type == ck::CKA_VALUE);
        let there = s.find(&[
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE),
            Attribute::bytes(ck::CKA_ID, v.version.backend_id.clone()),
        ])?;
        let present = there.into_iter().any(|o| {
            value.is_some_and(|value| {
                matches!(
                    (s.bytes(o, ck::CKA_VALUE), &value.value),
                    (Ok(Some(have)), keyward_protocol::AttrValue::Leaf(keyward_protocol::Value::Bytes(want))) if &have == want
                )
            })
        });
        if present {
            continue;
        }
        match s.backend.create_object(s.handle, c) {
            Ok(o) => made.push(o),
            Err(e) => {
                s.destroy(&made);
                return Err(hsm_err(
                    &format!(
                        "C_CreateObject (version {}, certificate)",
                        v.version.version
                    ),
                    e,
                ));
            }
        }
    }
    Ok(made)
}

/// The class of the object a version's wrapped key unwraps into.
fn secret_class(v: &VersionEntry) -> u64 {
    if v.public.is_some() {
        ck::CKO_PRIVATE_KEY
    } else {
        ck::CKO_SECRET_KEY
    }
}

/// The classes of [`Lifecycle::unwrap_version`]'s objects, in order.
fn class_order(v: &VersionEntry) -> Vec<u64> {
    if v.public.is_some() {
        vec![ck::CKO_PUBLIC_KEY, ck::CKO_PRIVATE_KEY]
    } else {
        vec![ck::CKO_SECRET_KEY]
    }
}
