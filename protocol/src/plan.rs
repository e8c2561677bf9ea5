//! Dry runs and the impact of irreversible actions.
//!
//! [`AdminRequest::DryRun`](crate::admin::AdminRequest::DryRun) carries any
//! changing [`KeyRequest`](crate::admin::KeyRequest): the agent runs every
//! check the request itself runs (name, policy, state transition, quorum)
//! and stops at the point where it would change something (an inventory
//! write, an HSM object, an approval request, a trail record), answering
//! [`KeyResponse::Plan`](crate::admin::KeyResponse::Plan) with what it
//! would do, or the very refusal the request would get.
//!
//! For the irreversible actions (revoke, destroy, backup restore) the plan
//! carries their [`Impact`]: who loses what, what becomes of data and
//! signatures, the certificates, backups and pending requests concerned.

use keyward_domain::{KeyState, Operation, Purpose};
use serde::{Deserialize, Serialize};

use crate::admin::{BackupMark, KeyCertificate};

/// What a changing request would do now, without doing it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The request's stable name (`key.revoke`, `grant.add`, ...).
    pub request: String,
    /// The request in words, as the trail would describe it.
    pub action: String,
    /// Whether it would be carried out at once or wait for approval.
    pub outcome: PlanOutcome,
    /// What it would change, one line each, in order.
    pub steps: Vec<String>,
    /// For revoke and destroy: what the key's end means.
    pub impact: Option<Impact>,
    /// For a backup restore: what the file would bring back.
    pub restore: Option<RestoreImpact>,
}

/// Whether a planned request would be carried out.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PlanOutcome {
    /// Carried out at once.
    Done,
    /// Recorded as an approval request instead, under this quorum.
    NeedsApproval {
        /// The request's action (`destroy`, `backup-restore`, ...).
        action: String,
        /// What it acts on (`token/key`, ...).
        target: String,
        /// Approvals needed (0: no roster, one approval by anyone carries it out).
        approvals: u32,
        /// Roles whose approvals count (empty without a roster).
        roles: Vec<String>,
        /// A request for the same action and target is pending already:
        /// its id (the real request answers that one).
        pending: Option<String>,
    },
}

/// The impact of revoking or destroying one key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Impact {
    /// Virtual token label.
    pub token: String,
    /// Key name.
    pub key: String,
    /// `revoke` or `destroy`.
    pub action: String,
    /// The key's state now.
    pub from: KeyState,
    /// Its state after.
    pub to: KeyState,
    /// The key's purpose.
    pub purpose: Purpose,
    /// Applications that lose operations they may use now (class and
    /// per-key grants), by application.
    pub applications: Vec<LostOperations>,
    /// What becomes of data encrypted or keys wrapped under the key.
    pub data: DataEffect,
    /// Signatures made with the key stay verifiable with its public key
    /// or certificate (`None`: the key does not sign).
    pub signatures_stay_verifiable: Option<bool>,
    /// Certificates stored beside its versions (they should be revoked at
    /// their CA).
    pub certificates: Vec<KeyCertificate>,
    /// Backups that hold one of its versions (for a destroy: they must be
    /// retired for the destruction to be final).
    pub backups: Vec<BackupMark>,
    /// Pending approval requests concerning the key (`id`, `action`).
    pub pending_requests: Vec<(String, String)>,
}

/// Operations one application loses.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LostOperations {
    /// Application name of the policy.
    pub application: String,
    /// The operations it may use now and may not after.
    pub operations: Vec<Operation>,
    /// `class` (the policy's grant) or `key` (`keyward grant add`).
    pub source: String,
}

/// What becomes of data protected by a key that is revoked or destroyed.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEffect {
    /// The key protects no data (signing, MAC, derivation).
    NotApplicable,
    /// Revoked: nothing can decrypt or unwrap under it any more, except in
    /// a recovery window approved under quorum (`keyward key recover`).
    RecoveryWindowOnly,
    /// Destroyed: what was encrypted or wrapped under it is unreadable for
    /// ever (unless a backup still holds the key).
    Unreadable,
}

/// What restoring a backup file would do.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RestoreImpact {
    /// Virtual token label.
    pub token: String,
    /// The backup's id (SHA-256 of its file, hex).
    pub backup: String,
    /// When the backup was made (unix seconds).
    pub created_at: i64,
    /// Keys recorded again or whose missing objects are made again.
    pub restores: Vec<String>,
    /// Keys of the file the inventory has as destroyed: they stay so.
    pub stays_destroyed: Vec<String>,
}

impl DataEffect {
    /// In words, for people.
    pub fn describe(self) -> &'static str {
        match self {
            DataEffect::NotApplicable => "the key protects no data",
            DataEffect::RecoveryWindowOnly => {
                "data encrypted or keys wrapped under it can no longer be decrypted, except in a \
                 recovery window approved under quorum (keyward key recover)"
            }
            DataEffect::Unreadable => {
                "data encrypted or keys wrapped under it become unreadable for ever (unless a \
                 backup still holds the key)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{AdminRequest, AdminResponse, KeyAction, KeyRequest, KeyResponse};

    fn plan() -> Plan {
        Plan {
            request: "key.destroy".into(),
            action: "destroy web".into(),
            outcome: PlanOutcome::NeedsApproval {
                action: "destroy".into(),
                target: "lab/web".into(),
                approvals: 2,
                roles: vec!["security-officer".into()],
                pending: None,
            },
            steps: vec!["record a destroy request".into()],
            impact: Some(Impact {
                token: "lab".into(),
                key: "web".into(),
                action: "destroy".into(),
                from: KeyState::Active,
                to: KeyState::Destroyed,
                purpose: Purpose::Encryption,
                applications: vec![LostOperations {
                    application: "app".into(),
                    operations: vec![Operation::Encrypt, Operation::Decrypt],
                    source: "class".into(),
                }],
                data: DataEffect::Unreadable,
                signatures_stay_verifiable: None,
                certificates: Vec::new(),
                backups: vec![BackupMark {
                    at: 1,
                    id: "ab".repeat(32),
                }],
                pending_requests: vec![("r1".into(), "resume".into())],
            }),
            restore: None,
        }
    }

    #[test]
    fn a_dry_run_and_its_plan_travel_whole() {
        let req = AdminRequest::DryRun(KeyRequest::Transition {
            name: "web".into(),
            token: None,
            action: KeyAction::Destroy,
            reason: Some("retired".into()),
            code: Some(keyward_domain::ReasonCode::CessationOfOperation),
        });
        let bytes = postcard::to_allocvec(&req).unwrap();
        assert_eq!(postcard::from_bytes::<AdminRequest>(&bytes).unwrap(), req);
        assert_eq!(
            req.name(),
            "key.destroy",
            "admitted as the request it plans"
        );
        assert!(
            req.describe().starts_with("dry run: "),
            "{}",
            req.describe()
        );
        let resp = AdminResponse::Key(Box::new(KeyResponse::Plan(Box::new(plan()))));
        let bytes = postcard::to_allocvec(&resp).unwrap();
        assert_eq!(postcard::from_bytes::<AdminResponse>(&bytes).unwrap(), resp);
    }

    #[test]
    fn an_impact_reads_with_names_in_json() {
        let v = serde_json::to_value(plan()).unwrap();
        let impact = &v["impact"];
        assert_eq!(impact["from"], "active");
        assert_eq!(impact["to"], "destroyed");
        assert_eq!(impact["purpose"], "encryption");
        assert_eq!(impact["applications"][0]["operations"][1], "decrypt");
        assert_eq!(impact["data"], "Unreadable");
        assert_eq!(v["outcome"]["NeedsApproval"]["approvals"], 2);
    }
}
