//! The backup key's ceremony: the request, its execution (secret drawn,
//! objects made, shares sealed to the custodians, secret zeroised), what
//! it left behind, and the rebuild from custodians' shares on a token
//! without the key.

use std::time::SystemTime;

use keyward_escrow::ShareRecord;
use keyward_inventory::{Actor, ApprovalRecord, AuditKind};
use keyward_protocol::admin::{BackupAnswer, BackupStatus, KeyResponse};
use serde::{Deserialize, Serialize};

use crate::keys::secs;
use crate::listener::identity::Peer;
use crate::tokens::VirtualToken;

use super::super::hsm::*;
use super::super::*;
use super::{key, BACKUP_INIT};

/// The state file that keeps the ceremony's record (mode 0600).
const CEREMONY_FILE: &str = "backup-ceremony";

/// What a ceremony leaves behind: which key, which custodians hold which
/// share (encrypted to them, so it can be handed out again), and the
/// shares' digests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ceremony {
    pub key_check: String,
    pub deployment: String,
    pub threshold: u8,
    pub created_at: i64,
    pub request: String,
    pub shares: Vec<CeremonyShare>,
}

/// One custodian's share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CeremonyShare {
    pub custodian: String,
    pub index: u8,
    pub digest: String,
    /// Encrypted to the custodian (age, armored); empty after a rebuild
    /// (the custodians keep theirs).
    pub armored: String,
}

/// The name under which the inventory keeps a token's backup key check.
fn check_name(token: &str) -> String {
    format!("backup:{token}")
}

/// The deployment the shares name: this host.
fn deployment() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "keyward".to_owned())
}

impl Lifecycle {
    /// The ceremony record of token `t`, when it has one.
    pub(crate) fn ceremony(&self, t: &VirtualToken) -> AResult<Option<Ceremony>> {
        let bytes = t.state.read_file(CEREMONY_FILE).map_err(|e| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("state directory: {CEREMONY_FILE}: {e}"),
        })?;
        bytes
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| AdminError {
                    kind: AdminErrorKind::Failed,
                    message: format!("state directory: {CEREMONY_FILE} is malformed: {e}"),
                })
            })
            .transpose()
    }

    /// The backup key check the inventory recorded for token `t`.
    pub(crate) fn recorded_check(&self, t: &VirtualToken) -> AResult<Option<[u8; 32]>> {
        let found = self
            .keys
            .inventory()
            .agent_key(&check_name(&t.config.label))
            .map_err(inv_err)?;
        Ok(found.and_then(|(_, fp)| fp.try_into().ok()))
    }

    /// `keyward backup init`: the ceremony's approval request. Refused at
    /// once without custodians enough for `threshold`, with a threshold
    /// under two, or on a token that has a backup key.
    pub(crate) fn request_backup_init(
        &self,
        token: Option<&str>,
        threshold: u8,
        (who, why): (&str, &str),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let t = self.admin_token(token)?;
        let label = &t.config.label;
        if why.trim().is_empty() {
            return fail(
                AdminErrorKind::Invalid,
                "the backup key's ceremony needs a reason",
            );
        }
        let custodians = self.policy().custodians();
        check_threshold(threshold, custodians.len())?;
        if self.recorded_check(t)?.is_some() {
            return fail(
                AdminErrorKind::Conflict,
                format!("token {label:?} has a backup key already"),
            );
        }
        let names: Vec<&str> = custodians.iter().map(|c| c.name.as_str()).collect();
        let parameters = serde_json::json!({
            "token": label,
            "threshold": threshold,
            "custodians": names,
        });
        self.record_request_on((label, None), BACKUP_INIT, parameters, (who, why), now)
    }

    /// Carries out approved ceremony request `r`.
    pub(crate) fn carry_out_backup_init(
        &self,
        r: &ApprovalRecord,
        by: &Actor,
        now: SystemTime,
    ) -> AResult<()> {
        let parameters = crate::lifecycle::request_parameters(r)?;
        let label = parameters["token"].as_str().unwrap_or_default();
        let t = self.admin_token(Some(label))?;
        let threshold = parameters["threshold"]
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .unwrap_or(0);
        let approved: Vec<&str> = parameters["custodians"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
            .unwrap_or_default();
        let custodians = self.policy().custodians();
        let now_names: Vec<&str> = custodians.iter().map(|c| c.name.as_str()).collect();
        if now_names != approved {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "the roster's custodians are {now_names:?}, the request approved \
                     {approved:?}: nothing changed, ask again"
                ),
            );
        }
        check_threshold(threshold, custodians.len())?;
        let backend = self.backend(t)?;
        let s = HsmSession::open(backend.as_ref())?;
        let secret = key::draw_secret(&s)?;
        let check = keyward_escrow::key_check(&secret);
        let deployment = deployment();
        let shares =
            keyward_escrow::split(&secret, &deployment, threshold, &custodians).map_err(|e| {
                AdminError {
                    kind: AdminErrorKind::Failed,
                    message: format!("the shares cannot be made: {e}"),
                }
            })?;
        key::install(t, &s, &secret)?;
        drop(secret);
        let ceremony = Ceremony {
            key_check: hex::encode(check),
            deployment,
            threshold,
            created_at: secs(now),
            request: r.id.clone(),
            shares: shares
                .into_iter()
                .map(|s| CeremonyShare {
                    custodian: s.custodian,
                    index: s.index,
                    digest: hex::encode(s.digest),
                    armored: s.armored,
                })
                .collect(),
        };
        let recorded = self.record_ceremony(t, &ceremony, by, &self.asked_and_approved(r)?);
        if let Err(e) = recorded {
            key::remove(&s);
            return Err(e);
        }
        let outcome = format!(
            "backup key {} made on token {label}: {threshold} of {} custodians' shares rebuild it",
            keyward_escrow::short_check(&check),
            ceremony.shares.len()
        );
        self.mark_executed(&r.id, &outcome, now)?;
        log::warn!("{outcome}");
        Ok(())
    }

    /// Keeps `ceremony` (state file, the inventory's key check, the trail).
    fn record_ceremony(
        &self,
        t: &VirtualToken,
        ceremony: &Ceremony,
        by: &Actor,
        who: &str,
    ) -> AResult<()> {
        let label = &t.config.label;
        let check: Vec<u8> = hex::decode(&ceremony.key_check).unwrap_or_default();
        let custodians: Vec<String> = ceremony
            .shares
            .iter()
            .map(|s| format!("{} (share {}, {})", s.custodian, s.index, &s.digest[..16]))
            .collect();
        let mut e = crate::audit::event(AuditKind::Lifecycle, by.clone(), "backup init");
        e.token = Some(label.clone());
        e.reason = format!(
            "backup key {} ({} of {}): {}; by {who}",
            &ceremony.key_check[..16],
            ceremony.threshold,
            ceremony.shares.len(),
            custodians.join(", ")
        )
        .chars()
        .take(4096)
        .collect();
        self.audit.durable(e).map_err(|why| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("the ceremony cannot be recorded: {why}"),
        })?;
        let json = serde_json::to_vec_pretty(ceremony).map_err(|e| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("ceremony record: {e}"),
        })?;
        t.state
            .write_file(CEREMONY_FILE, &json)
            .map_err(|e| AdminError {
                kind: AdminErrorKind::Failed,
                message: format!("state directory: {CEREMONY_FILE}: {e}"),
            })?;
        match self.keys.inventory().set_agent_key(
            &check_name(label),
            label,
            &check,
            ceremony.created_at,
        ) {
            Ok(()) | Err(keyward_inventory::Error::Exists(_)) => Ok(()),
            Err(e) => Err(inv_err(e)),
        }
    }

    /// `keyward backup status`.
    pub(crate) fn backup_status(&self, token: Option<&str>) -> AResult<KeyResponse> {
        let t = self.admin_token(token)?;
        let ceremony = self.ceremony(t)?;
        let check = self.recorded_check(t)?;
        let present = match self.backend(t) {
            Ok(b) => key::find(&HsmSession::open(b.as_ref())?)?.is_some(),
            Err(_) => false,
        };
        let submitted = self
            .shares_held()
            .iter()
            .filter(|(l, _)| *l == t.config.label)
            .count();
        Ok(KeyResponse::Backup(Box::new(BackupAnswer::Status(
            BackupStatus {
                token: t.config.label.clone(),
                key_check: check.map(hex::encode),
                present,
                threshold: ceremony.as_ref().map_or(0, |c| c.threshold),
                custodians: ceremony
                    .as_ref()
                    .map(|c| {
                        c.shares
                            .iter()
                            .map(|s| (s.custodian.clone(), s.index, s.digest.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
                created_at: ceremony.map(|c| c.created_at),
                submitted: u8::try_from(submitted).unwrap_or(u8::MAX),
            },
        ))))
    }

    /// `keyward backup share`: custodian `custodian`'s (else the caller's)
    /// share, still encrypted to them.
    pub(crate) fn backup_share(
        &self,
        token: Option<&str>,
        custodian: Option<&str>,
        who: &str,
    ) -> AResult<KeyResponse> {
        let t = self.admin_token(token)?;
        let name = custodian.unwrap_or(who);
        let Some(ceremony) = self.ceremony(t)? else {
            return fail(
                AdminErrorKind::NotFound,
                format!("token {:?} has no backup key ceremony", t.config.label),
            );
        };
        match ceremony
            .shares
            .into_iter()
            .find(|s| s.custodian == name && !s.armored.is_empty())
        {
            Some(s) => Ok(KeyResponse::Backup(Box::new(BackupAnswer::Share {
                custodian: s.custodian,
                armored: s.armored,
                digest: s.digest,
            }))),
            None => fail(
                AdminErrorKind::NotFound,
                format!(
                    "no share of custodian {name:?} is kept for token {:?}",
                    t.config.label
                ),
            ),
        }
    }

    /// The shares submitted so far (token label, share), in memory only.
    fn shares_held(&self) -> std::sync::MutexGuard<'_, Vec<(String, ShareRecord)>> {
        self.submitted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `keyward backup share submit`: custodian `admin`'s opened share,
    /// towards rebuilding the backup key on a token that has none. With
    /// the threshold reached, the key is rebuilt in the HSM and the shares
    /// are forgotten; shares that do not rebuild the key are all
    /// forgotten, and the custodians start again.
    pub(crate) fn submit_share(
        &self,
        admin: &Peer,
        token: Option<&str>,
        share: Vec<u8>,
        (who, by): (&str, &Actor),
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let share = zeroize::Zeroizing::new(share);
        let t = self.admin_token(token)?;
        let label = t.config.label.clone();
        let record = ShareRecord::decode(&share).map_err(|e| AdminError {
            kind: AdminErrorKind::Invalid,
            message: format!("the share: {e}"),
        })?;
        let caller = self
            .policy()
            .administrator_for_uid(admin.uid)
            .map(|a| a.name.clone());
        if caller.is_some() && caller.as_deref() != Some(record.custodian()) {
            return fail(
                AdminErrorKind::Refused,
                format!(
                    "this share is {:?}'s: each custodian submits their own",
                    record.custodian()
                ),
            );
        }
        let backend = self.backend(t)?;
        let s = HsmSession::open(backend.as_ref())?;
        if key::find(&s)?.is_some() {
            return fail(
                AdminErrorKind::Conflict,
                format!("token {label:?} has its backup key: no shares are needed"),
            );
        }
        super::super::dry_run::commit_point(
            || {
                let have = 1 + self
                    .shares_held()
                    .iter()
                    .filter(|(l, r)| {
                        *l == label
                            && r.custodian() != record.custodian()
                            && r.key_check() == record.key_check()
                    })
                    .count();
                let need = record.threshold();
                let then = match have >= usize::from(need) {
                    true => "the backup key is rebuilt in the HSM",
                    false => "more shares are needed",
                };
                format!(
                    "{}'s share is held towards the backup key of token {label:?} ({have} of \
                     {need}): {then}",
                    record.custodian()
                )
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
        let (need, ready) = {
            let mut held = self.shares_held();
            held.retain(|(l, r)| {
                !(l == &label
                    && (r.custodian() == record.custodian() || r.key_check() != record.key_check()))
            });
            let need = record.threshold();
            held.push((label.clone(), record));
            let mine: Vec<ShareRecord> = held
                .iter()
                .filter(|(l, _)| *l == label)
                .map(|(_, r)| r.clone())
                .collect();
            (need, (mine.len() >= usize::from(need)).then_some(mine))
        };
        let mut e = crate::audit::event(AuditKind::Lifecycle, by.clone(), "backup share submit");
        e.token = Some(label.clone());
        e.reason = format!("a share submitted by {who} towards rebuilding the backup key");
        self.audit.durable(e).map_err(|why| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("the share cannot be recorded: {why}"),
        })?;
        let Some(mine) = ready else {
            let have = self
                .shares_held()
                .iter()
                .filter(|(l, _)| *l == label)
                .count();
            return Ok(submitted(have, need, false));
        };
        self.shares_held().retain(|(l, _)| *l != label);
        self.rebuild(t, &s, &mine, by, now)?;
        Ok(submitted(mine.len(), need, true))
    }

    /// Rebuilds the backup key from `shares` into the token of `s`.
    fn rebuild(
        &self,
        t: &VirtualToken,
        s: &HsmSession<'_>,
        shares: &[ShareRecord],
        by: &Actor,
        now: SystemTime,
    ) -> AResult<()> {
        let first = &shares[0];
        let check = *first.key_check();
        let secret = keyward_escrow::combine(shares, first.deployment(), &check).map_err(|e| {
            AdminError {
                kind: AdminErrorKind::Refused,
                message: format!("{e}: the shares are forgotten, submit them again"),
            }
        })?;
        key::install(t, s, &secret)?;
        drop(secret);
        let ceremony = Ceremony {
            key_check: hex::encode(check),
            deployment: first.deployment().to_owned(),
            threshold: first.threshold(),
            created_at: secs(now),
            request: String::new(),
            shares: shares
                .iter()
                .map(|r| CeremonyShare {
                    custodian: r.custodian().to_owned(),
                    index: r.index(),
                    digest: hex::encode(r.digest()),
                    armored: String::new(),
                })
                .collect(),
        };
        let names: Vec<&str> = shares.iter().map(|r| r.custodian()).collect();
        if let Err(e) = self.record_ceremony(t, &ceremony, by, &names.join(", ")) {
            key::remove(s);
            return Err(e);
        }
        log::warn!(
            "backup key {} rebuilt on token {} from the shares of {}",
            keyward_escrow::short_check(&check),
            t.config.label,
            names.join(", ")
        );
        Ok(())
    }
}

fn submitted(have: usize, need: u8, rebuilt: bool) -> KeyResponse {
    KeyResponse::Backup(Box::new(BackupAnswer::Submitted {
        have: u8::try_from(have).unwrap_or(u8::MAX),
        need,
        rebuilt,
    }))
}

/// A threshold of at least two, and no more than there are custodians.
fn check_threshold(threshold: u8, custodians: usize) -> AResult<()> {
    if threshold < 2 {
        return fail(
            AdminErrorKind::Invalid,
            "a threshold under two is no split knowledge: one custodian would hold the key",
        );
    }
    if usize::from(threshold) > custodians {
        return fail(
            AdminErrorKind::Invalid,
            format!(
                "a threshold of {threshold} needs that many custodians with a share_recipient \
                 in the roster; it has {custodians}"
            ),
        );
    }
    Ok(())
}
