//! The policy under dual control.
//!
//! With a roster, a new policy takes effect only through `keyward policy
//! apply FILE`: a request under the `policy-apply` quorum that carries the
//! new text, its SHA-256 and its difference to the policy in force, so that
//! approvers sign exactly what will be in force. Once approved, the agent
//! writes the file (atomically, with the old file's permissions) and puts
//! the policy in force. Without a roster it does so at once.
//!
//! The policy last put in force this way (or found in force when a roster
//! first appeared) is the approved one, kept in the store as an executed
//! `policy-apply` request. When the approved policy is strict and has a
//! roster, a policy file edited outside `keyward` is not loaded, neither on
//! SIGHUP nor at start: the approved policy stays in force, and the refusal
//! is logged and recorded in the trail. In the lab setting (lab mode, or no
//! roster) an edited file is loaded as before.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use keyward_inventory::{Actor, ApprovalRecord};
use keyward_policy::{ApprovalStatus, Mode, Policy};
use keyward_protocol::admin::KeyResponse;
use sha2::Digest as _;

use crate::keys::secs;

use super::hsm::random;
use super::*;

/// The action name of a policy change under dual control.
pub const POLICY_APPLY: &str = "policy-apply";

/// A policy file's text as the agent read it, with its SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// Where the agent's configuration says the policy is.
    pub path: PathBuf,
    /// The file's text.
    pub text: String,
    /// SHA-256 of `text`, hex.
    pub sha256: String,
}

impl PolicyFile {
    /// `text`, read from `path`.
    pub fn new(path: &Path, text: String) -> PolicyFile {
        PolicyFile {
            sha256: sha256_hex(&text),
            path: path.to_owned(),
            text,
        }
    }

    /// The policy the text holds.
    pub fn parse(&self) -> Result<Policy, String> {
        Policy::from_str(&self.text, &self.path.display().to_string()).map_err(|e| e.to_string())
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Whether changes of `policy` must go through `keyward policy apply`:
/// strict, with a roster.
pub fn guarded(policy: &Policy) -> bool {
    policy.dual_control() && policy.mode() == Mode::Strict
}

/// What [`Lifecycle::admit_policy_file`] decided.
#[derive(Debug)]
pub enum Admission {
    /// The file may take effect.
    Admitted,
    /// The approved policy guards itself and the file is not it: this
    /// (the approved file and its policy) stays in force.
    Refused(Box<(PolicyFile, Policy)>),
    /// The approved policy cannot be read from the store: nothing may
    /// take effect.
    Unknown,
}

/// `from_sha256` of a `policy-apply` request's parameters.
fn from_sha(r: &ApprovalRecord) -> Option<String> {
    let p: serde_json::Value = serde_json::from_str(&r.parameters).ok()?;
    Some(p.get("from_sha256")?.as_str()?.to_owned())
}

/// `sha256` and `text` of a `policy-apply` request's parameters.
fn proposed(r: &ApprovalRecord) -> Option<(String, String)> {
    let p: serde_json::Value = serde_json::from_str(&r.parameters).ok()?;
    let sha = p.get("sha256")?.as_str()?.to_owned();
    let text = p.get("text")?.as_str()?.to_owned();
    Some((sha, text))
}

impl Lifecycle {
    /// The policy file in force (`None`: the built-in lab policy).
    /// What `keyward status` says of the policy in force.
    pub fn policy_summary(&self) -> keyward_protocol::admin::PolicySummary {
        let policy = self.policy();
        let file = self.policy_file();
        keyward_protocol::admin::PolicySummary {
            file: file.as_ref().map(|f| f.path.display().to_string()),
            sha256: file.map(|f| f.sha256),
            mode: format!("{:?}", policy.mode()).to_lowercase(),
            applications: policy.applications.len() as u64,
            classes: policy.classes.len() as u64,
            administrators: policy.administrators.len() as u64,
        }
    }

    /// `keyward policy show`: the summary and the file's text.
    pub fn policy_shown(&self) -> keyward_protocol::admin::PolicyInForce {
        keyward_protocol::admin::PolicyInForce {
            summary: self.policy_summary(),
            text: self.policy_file().map(|f| f.text),
        }
    }

    pub fn policy_file(&self) -> Option<PolicyFile> {
        self.policy_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The policy file in force; an error when the agent runs the
    /// built-in lab policy (there is no file to write).
    fn configured_policy_file(&self) -> AResult<PolicyFile> {
        self.policy_file().ok_or_else(|| AdminError {
            kind: AdminErrorKind::Invalid,
            message: "the agent runs the built-in lab policy: configure a policy file first"
                .to_owned(),
        })
    }

    fn set_policy_file(&self, file: PolicyFile) {
        *self.policy_file.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
    }

    /// The newest policy put in force under dual control (an executed
    /// `policy-apply` request with its text).
    fn approved_policy(&self) -> AResult<Option<(ApprovalRecord, String, String)>> {
        let executed = self
            .keys
            .inventory()
            .requests(Some(ApprovalStatus::Executed))
            .map_err(inv_err)?;
        // The last to take effect. Of several closed in the same second,
        // the one no other of them was made against (`from_sha256`).
        let applied: Vec<_> = executed
            .into_iter()
            .filter(|r| r.action == POLICY_APPLY)
            .filter_map(|r| {
                let (sha, text) = proposed(&r)?;
                Some((r, sha, text))
            })
            .collect();
        let Some(last) = applied.iter().filter_map(|(r, _, _)| r.closed_at).max() else {
            return Ok(None);
        };
        let latest: Vec<_> = applied
            .into_iter()
            .filter(|(r, _, _)| r.closed_at == Some(last))
            .collect();
        let made_against = |sha: &str| {
            latest
                .iter()
                .any(|(r, _, _)| from_sha(r).as_deref() == Some(sha))
        };
        let tip = latest
            .iter()
            .position(|(_, sha, _)| !made_against(sha))
            .unwrap_or(latest.len() - 1);
        Ok(latest.into_iter().nth(tip))
    }

    /// Records `file` as the approved policy (it is in force, and was not
    /// put there through a request: the first policy with a roster).
    fn record_baseline(&self, file: &PolicyFile, why: &str, now: SystemTime) -> AResult<()> {
        let at = secs(now);
        let record = ApprovalRecord {
            id: hex::encode(random(16)?),
            action: POLICY_APPLY.to_owned(),
            target: file.path.display().to_string(),
            key_id: None,
            parameters: serde_json::json!({ "sha256": file.sha256, "text": file.text }).to_string(),
            requester: "agent".to_owned(),
            reason: why.to_owned(),
            created_at: at,
            expires_at: at + 1,
            status: ApprovalStatus::Executed,
            outcome: format!("policy sha256 {} in force", file.sha256),
            closed_at: Some(at),
        };
        self.keys
            .inventory()
            .create_request(&record)
            .map_err(inv_err)
    }

    /// Decides whether the policy file `file` (holding `policy`) may take
    /// effect, at start or on SIGHUP: it may when it is the approved
    /// policy, and when the approved policy does not guard itself (it is
    /// then recorded as the approved one if it has a roster and is
    /// strict). When the approved policy is strict with a roster and
    /// `file` is not it, that one stays in force, and the refusal is
    /// logged and recorded in the trail.
    pub fn admit_policy_file(
        &self,
        file: &PolicyFile,
        policy: &Policy,
        now: SystemTime,
    ) -> Admission {
        let approved = match self.approved_policy() {
            Ok(a) => a,
            Err(e) => {
                log::error!("policy: the approved policy cannot be read: {}", e.message);
                return Admission::Unknown;
            }
        };
        let accept = |why: &str| {
            if guarded(policy) && !super::dry_run::planning() {
                if let Err(e) = self.record_baseline(file, why, now) {
                    log::error!("policy: cannot record the approved policy: {}", e.message);
                }
            }
            Admission::Admitted
        };
        let Some((record, sha, text)) = approved else {
            return accept("the first policy in force with a roster");
        };
        if sha == file.sha256 {
            return Admission::Admitted;
        }
        // Approved, and interrupted before it was recorded as executed:
        // the start carries it out (`resume_approved`).
        let interrupted = self
            .keys
            .inventory()
            .requests(Some(ApprovalStatus::Approved))
            .map(|r| {
                r.iter().any(|r| {
                    r.action == POLICY_APPLY && proposed(r).is_some_and(|(s, _)| s == file.sha256)
                })
            })
            .unwrap_or(false);
        if interrupted {
            return Admission::Admitted;
        }
        let approved_file = PolicyFile::new(&file.path, text);
        match approved_file.parse() {
            Ok(p) if guarded(&p) => {
                let why = format!(
                    "policy file {} changed outside `keyward policy apply` (sha256 {}, approved \
                     {} by request {}): not loaded; the approved policy stays in force",
                    file.path.display(),
                    file.sha256,
                    sha,
                    record.id
                );
                log::error!("{why}");
                if !super::dry_run::planning() {
                    self.audit_policy("refuse", keyward_policy::KEYWARD_REFUSED, &why);
                }
                Admission::Refused(Box::new((approved_file, p)))
            }
            _ => accept("follows a policy without dual control"),
        }
    }

    /// Notes `file` as the policy file in force (at start and reload).
    pub fn policy_in_force(&self, file: PolicyFile) {
        self.set_policy_file(file);
    }

    /// `keyward policy apply`: `text` as the new policy. With a roster, a
    /// request under the `policy-apply` quorum carrying the text, its
    /// SHA-256 and its difference to the policy in force; without one, in
    /// force at once.
    pub(crate) fn apply_policy(
        &self,
        (who, by): (&str, &Actor),
        text: String,
        reason: &str,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let current = self.configured_policy_file()?;
        let next = PolicyFile::new(&current.path, text);
        next.parse().map_err(|e| AdminError {
            kind: AdminErrorKind::Invalid,
            message: format!("the new policy is not valid: {e}"),
        })?;
        if next.sha256 == current.sha256 {
            return fail(
                AdminErrorKind::Conflict,
                format!("this policy (sha256 {}) is in force already", next.sha256),
            );
        }
        if !self.policy().dual_control() {
            let outcome = self.put_in_force(&next, &current, (who, by), reason)?;
            return Ok(KeyResponse::Done(outcome));
        }
        let diff = similar::TextDiff::from_lines(&current.text, &next.text)
            .unified_diff()
            .context_radius(3)
            .header("in force", "proposed")
            .to_string();
        let parameters = serde_json::json!({
            "from_sha256": current.sha256,
            "sha256": next.sha256,
            "diff": diff,
            "text": next.text,
        });
        self.record_request_on(
            (&current.path.display().to_string(), None),
            POLICY_APPLY,
            parameters,
            (who, reason),
            now,
        )
    }

    /// `keyward init`: sets up dual control on a deployment without it:
    /// `text` (a policy with a roster) is written and put in force at once,
    /// recorded as the first approved policy. Refused once a policy with a
    /// roster was approved (`keyward policy apply` changes it then).
    pub(crate) fn init_policy(
        &self,
        (who, by): (&str, &Actor),
        text: String,
        reason: &str,
        now: SystemTime,
    ) -> AResult<KeyResponse> {
        let current = self.configured_policy_file()?;
        if let Some((r, sha, _)) = self.approved_policy()? {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "dual control is set up already (policy sha256 {sha}, request {}): \
                     change the policy with keyward policy apply",
                    r.id
                ),
            );
        }
        let next = PolicyFile::new(&current.path, text);
        let policy = next.parse().map_err(|e| AdminError {
            kind: AdminErrorKind::Invalid,
            message: format!("the new policy is not valid: {e}"),
        })?;
        if !policy.dual_control() {
            return fail(
                AdminErrorKind::Invalid,
                "keyward init sets up dual control: the policy needs its [[administrator]] \
                 roster"
                    .to_owned(),
            );
        }
        let outcome = self.put_in_force(&next, &current, (who, by), reason)?;
        self.record_baseline(&next, &format!("keyward init by {who}: {reason}"), now)?;
        Ok(KeyResponse::Done(outcome))
    }

    /// Writes `next` over the policy file (atomically: a new file beside
    /// it, with the old one's permissions, synced, renamed over it) unless
    /// it holds `next` already, and puts it in force. Recorded as a
    /// `policy` change in the trail.
    fn put_in_force(
        &self,
        next: &PolicyFile,
        current: &PolicyFile,
        (who, _by): (&str, &Actor),
        why: &str,
    ) -> AResult<String> {
        let policy = next.parse().map_err(|e| AdminError {
            kind: AdminErrorKind::Invalid,
            message: format!("the new policy is not valid: {e}"),
        })?;
        super::dry_run::commit_point(
            || {
                format!(
                    "policy {} is written and put in force: sha256 {} (now {})",
                    next.path.display(),
                    next.sha256,
                    current.sha256
                )
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
        let on_disk = std::fs::read_to_string(&next.path).ok();
        if on_disk.as_deref() != Some(next.text.as_str()) {
            write_atomically(&next.path, &next.text).map_err(|e| AdminError {
                kind: AdminErrorKind::Failed,
                message: format!("policy file {}: {e}", next.path.display()),
            })?;
        }
        self.set_policy(policy);
        self.set_policy_file(next.clone());
        let outcome = format!(
            "policy {} now sha256 {} (was {}), by {who}: {why}",
            next.path.display(),
            next.sha256,
            current.sha256
        );
        log::warn!("{outcome}");
        self.audit_policy("change", 0, &outcome);
        Ok(outcome)
    }

    /// Follows the fleet: when the approved policy in the shared store (an
    /// executed `policy-apply` another agent carried out) is not the one
    /// in force here, writes it over the policy file and puts it in
    /// force. `Ok(None)`: nothing to follow; `Ok(Some(outcome))`: followed.
    pub fn follow_approved_policy(&self) -> AResult<Option<String>> {
        let Some(current) = self.policy_file() else {
            return Ok(None);
        };
        let Some((record, sha, text)) = self.approved_policy()? else {
            return Ok(None);
        };
        if sha == current.sha256 {
            return Ok(None);
        }
        let next = PolicyFile::new(&current.path, text);
        if next.sha256 != sha {
            return fail(
                AdminErrorKind::Invalid,
                format!(
                    "request {}: the policy text does not match its sha256",
                    record.id
                ),
            );
        }
        let who = format!(
            "{}, approved (request {}) and carried out by another agent",
            record.requester, record.id
        );
        self.put_in_force(&next, &current, (&who, &Actor::Agent), &record.reason)
            .map(Some)
    }

    /// Carries out an approved `policy-apply` request: the policy in force
    /// must still be the one the request was made against (or already the
    /// proposed one, after an interrupted execution).
    pub(crate) fn carry_out_policy(
        &self,
        r: &ApprovalRecord,
        by: &Actor,
        now: SystemTime,
    ) -> AResult<()> {
        let (sha, text) = proposed(r).ok_or_else(|| AdminError {
            kind: AdminErrorKind::Invalid,
            message: format!("request {}: no policy text in its parameters", r.id),
        })?;
        let from = from_sha(r).unwrap_or_default();
        let current = self.configured_policy_file()?;
        let next = PolicyFile::new(&current.path, text);
        if next.sha256 != sha {
            return fail(
                AdminErrorKind::Invalid,
                format!(
                    "request {}: the policy text does not match its sha256",
                    r.id
                ),
            );
        }
        if current.sha256 != from && current.sha256 != sha {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "the policy in force changed since the request (sha256 {} then, {} now): not applied",
                    from, current.sha256
                ),
            );
        }
        let who = format!("{}, approved (request {})", r.requester, r.id);
        let outcome = if current.sha256 == sha {
            format!("policy sha256 {sha} in force")
        } else {
            self.put_in_force(&next, &current, (&who, by), &r.reason)?
        };
        self.mark_executed(&r.id, &outcome, now)
    }
}

/// Replaces `path` by a file holding `text`: written beside it with the
/// old file's permissions, synced, then renamed over it, so that a crash
/// leaves the old file or the new one, never a part.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .unwrap_or(0o600);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".to_owned());
    let tmp = dir.join(format!(".{name}.keyward-new"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let written = f
        .write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}
