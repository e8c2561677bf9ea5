//! Stable names of admin requests, and what each one does in words.
//!
//! Every admin request has a **name**, `<object>.<verb>`: the thing it
//! acts on (`agent`, `key`, `grant`, `app`, `pin`, `audit`, `report`) and
//! what it does to it, lower case, one dot (a verb of two words joined
//! by a hyphen, `cert.self-sign`):
//!
//! | name | request |
//! |---|---|
//! | `agent.status` | [`AdminRequest::Status`] |
//! | `key.create`, `key.list`, `key.show`, `key.rotate`, `key.verify`, `key.discover`, `key.adopt` | the [`KeyRequest`] of that name |
//! | `key.recover` | [`KeyRequest::Recover`] |
//! | `key.pubkey`, `key.export`, `key.collect`, `key.import` | [`KeyRequest::Distribution`], by its [`DistRequest`](crate::distribution::DistRequest) |
//! | `cert.request`, `cert.self-sign`, `cert.import` | [`KeyRequest::Cert`], by its [`CertRequest`](crate::certificate::CertRequest) |
//! | `key.activate`, `key.suspend`, `key.resume`, `key.deactivate`, `key.revoke`, `key.destroy` | [`KeyRequest::Transition`], by its [`KeyAction`] (`key.revoke` also with `rotate`) |
//! | `grant.add`, `grant.remove`, `grant.list` | [`KeyRequest::GrantAdd`], [`KeyRequest::GrantRemove`], [`KeyRequest::GrantList`] |
//! | `app.list` | [`KeyRequest::AppList`] |
//! | `pin.unlock` | [`KeyRequest::PinUnlock`] |
//! | `audit.verify`, `audit.anchor`, `audit.tail`, `audit.query` | the [`AuditRequest`] of that name (`audit.verify` also with anchors) |
//! | `report.make` | [`AdminRequest::Report`] |
//! | the request's own name | [`AdminRequest::DryRun`] (a dry run is admitted, and named in logs, as the request it plans; the metrics count it as `<name> dry-run`) |
//!
//! Names are part of the interface: the audit trail's `operation` of admin
//! records and the metrics' `request` label are these names, so a name,
//! once given, is not changed (a new request gets a new name).
//!
//! A **description** says what the request does for people, e.g.
//! `suspend prod/web-tls: investigating` or `adopt CKA_ID 0a1b as web-tls
//! (class tls-server)`: keys as `token/name` (the name alone when the
//! request names no token), key ids in hex, times in UTC, and text the
//! administrator typed with its control characters escaped, so that a
//! description is always one line. A request carries no PIN or secret,
//! and a description never shows one.

use std::fmt::Write as _;

use keyward_domain::{Algorithm, Decision, Operation};

use crate::admin::{
    AdminErrorKind, AdminRequest, AuditRequest, BackupRequest, KeyAction, KeyRequest, PinRole,
    ReportRequest,
};

impl AdminRequest {
    /// The request's stable name (see the [module](self) documentation).
    pub fn name(&self) -> &'static str {
        match self {
            AdminRequest::Hello { .. } => "agent.hello",
            AdminRequest::Status => "agent.status",
            AdminRequest::Key(k) => k.name(),
            AdminRequest::Audit(a) => a.name(),
            AdminRequest::Report(r) => r.name(),
            AdminRequest::DryRun(k) => k.name(),
        }
    }

    /// What the request does, in words (one line).
    pub fn describe(&self) -> String {
        match self {
            AdminRequest::Hello { versions } => format!(
                "agree on an admin-protocol version ({}..={})",
                versions.min, versions.max
            ),
            AdminRequest::Status => "show the agent's status".to_owned(),
            AdminRequest::Key(k) => k.describe(),
            AdminRequest::Audit(a) => a.describe(),
            AdminRequest::Report(r) => r.describe(),
            AdminRequest::DryRun(k) => format!("dry run: {}", k.describe()),
        }
    }
}

impl KeyRequest {
    /// The request's stable name (see the [module](self) documentation).
    pub fn name(&self) -> &'static str {
        match self {
            KeyRequest::Create { .. } => "key.create",
            KeyRequest::List { .. } => "key.list",
            KeyRequest::Show { .. } => "key.show",
            KeyRequest::Transition { action, .. } => action.name(),
            KeyRequest::Rotate { .. } => "key.rotate",
            KeyRequest::Verify { .. } => "key.verify",
            KeyRequest::GrantAdd { .. } => "grant.add",
            KeyRequest::GrantRemove { .. } => "grant.remove",
            KeyRequest::GrantList { .. } => "grant.list",
            KeyRequest::AppList => "app.list",
            KeyRequest::PinUnlock { .. } => "pin.unlock",
            KeyRequest::Discover { .. } => "key.discover",
            KeyRequest::Adopt { .. } => "key.adopt",
            KeyRequest::RequestList { .. } => "request.list",
            KeyRequest::RequestShow { .. } => "request.show",
            KeyRequest::RequestDecide {
                decision: Decision::Approve,
                ..
            } => "request.approve",
            KeyRequest::RequestDecide {
                decision: Decision::Deny,
                ..
            } => "request.deny",
            KeyRequest::RequestCancel { .. } => "request.cancel",
            KeyRequest::PolicyApply { .. } => "policy.apply",
            KeyRequest::Init { .. } => "policy.init",
            KeyRequest::Recover { .. } => "key.recover",
            KeyRequest::TokenInit { .. } => "token.init",
            KeyRequest::PolicyShow => "policy.show",
            KeyRequest::PolicyReload => "policy.reload",
            KeyRequest::Backup(b) => b.name(),
            KeyRequest::Distribution(d) => d.name(),
            KeyRequest::Cert(c) => c.name(),
        }
    }

    /// Whether the request only reads the inventory or the policy: it
    /// changes nothing, and neither uses a key nor reads the HSM.
    pub fn is_read_only(&self) -> bool {
        match self {
            KeyRequest::List { .. }
            | KeyRequest::Show { .. }
            | KeyRequest::GrantList { .. }
            | KeyRequest::AppList
            | KeyRequest::RequestList { .. }
            | KeyRequest::RequestShow { .. } => true,
            KeyRequest::PolicyShow => true,
            KeyRequest::PolicyReload => false,
            KeyRequest::Backup(b) => matches!(b, BackupRequest::Status { .. }),
            KeyRequest::Create { .. }
            | KeyRequest::Transition { .. }
            | KeyRequest::Rotate { .. }
            | KeyRequest::Verify { .. }
            | KeyRequest::GrantAdd { .. }
            | KeyRequest::GrantRemove { .. }
            | KeyRequest::PinUnlock { .. }
            | KeyRequest::Discover { .. }
            | KeyRequest::Adopt { .. }
            | KeyRequest::RequestDecide { .. }
            | KeyRequest::RequestCancel { .. }
            | KeyRequest::PolicyApply { .. }
            | KeyRequest::Init { .. }
            | KeyRequest::Recover { .. }
            | KeyRequest::TokenInit { .. }
            | KeyRequest::Distribution(_)
            | KeyRequest::Cert(_) => false,
        }
    }

    /// What the request does, in words (one line).
    pub fn describe(&self) -> String {
        match self {
            KeyRequest::Create {
                name,
                class,
                algorithm,
                token,
                owner,
            } => describe_create(name, class, *algorithm, token, owner.as_deref()),
            KeyRequest::List { token, state } => {
                let mut s = "list keys".to_owned();
                if let Some(t) = token {
                    let _ = write!(s, " of token {}", clean(t));
                }
                if let Some(st) = state {
                    let _ = write!(s, " in state {st}");
                }
                s
            }
            KeyRequest::Show { name, token } => format!("show {}", key(token, name)),
            KeyRequest::Transition {
                name,
                token,
                action,
                reason,
                code,
            } => describe_transition(key(token, name), *action, reason.as_deref(), *code),
            KeyRequest::Rotate { name, token } => format!("rotate {}", key(token, name)),
            KeyRequest::Verify { name, token } => format!("verify {}", key(token, name)),
            KeyRequest::GrantAdd {
                key: k,
                token,
                application,
                operations,
                until,
            } => describe_grant(key(token, k), application, operations, *until),
            KeyRequest::GrantRemove {
                key: k,
                token,
                application,
            } => format!("remove {}'s grant on {}", clean(application), key(token, k)),
            KeyRequest::GrantList { key: k, token } => match k {
                Some(k) => format!("list the grants on {}", key(token, k)),
                None => match token {
                    Some(t) => format!("list the grants on token {}", clean(t)),
                    None => "list the grants".to_owned(),
                },
            },
            KeyRequest::AppList => "list the policy's applications".to_owned(),
            KeyRequest::PinUnlock {
                token,
                role,
                application,
            } => describe_pin_unlock(token, *role, application.as_deref()),
            KeyRequest::Discover { token } => match token {
                Some(t) => format!("look for unmanaged keys on token {}", clean(t)),
                None => "look for unmanaged keys on every token".to_owned(),
            },
            KeyRequest::RequestList { .. }
            | KeyRequest::RequestShow { .. }
            | KeyRequest::RequestDecide { .. }
            | KeyRequest::RequestCancel { .. }
            | KeyRequest::Init { .. }
            | KeyRequest::PolicyApply { .. } => self.describe_dual_control(),
            KeyRequest::Adopt {
                token,
                backend_id,
                name,
                class,
            } => format!(
                "adopt CKA_ID {} as {} (class {})",
                if backend_id.is_empty() {
                    "(empty)".to_owned()
                } else {
                    hex::encode(backend_id)
                },
                key(token, name),
                clean(class)
            ),
            KeyRequest::Recover {
                name,
                token,
                seconds,
                reason,
            } => format!(
                "open a recovery window on {} for {} (verify and decrypt only): {}",
                key(token, name),
                period(*seconds),
                clean(reason)
            ),
            KeyRequest::TokenInit { token, reason } => format!(
                "initialise token {} (destroys every key on it, clears its user PINs): {}",
                clean(token),
                clean(reason)
            ),
            KeyRequest::PolicyShow => "show the policy in force".to_owned(),
            KeyRequest::PolicyReload => {
                "read the configuration again and put its policy in force".to_owned()
            }
            KeyRequest::Backup(b) => b.describe(),
            KeyRequest::Distribution(d) => describe_distribution(d),
            KeyRequest::Cert(c) => describe_cert(c),
        }
    }
}

/// [`KeyRequest::describe`] of a lifecycle transition of `target`, with
/// its reason code and reason in the fixed form the change's own record
/// carries (`code=keyCompromise; laptop stolen`).
fn describe_transition(
    target: String,
    action: KeyAction,
    reason: Option<&str>,
    code: Option<keyward_domain::ReasonCode>,
) -> String {
    let mut s = format!("{} {target}", action.verb());
    if let KeyAction::Revoke { rotate: true } = action {
        s.push_str(" and replace it with a new version");
    }
    match (code, reason) {
        (Some(c), Some(r)) => {
            let _ = write!(s, ": code={c}; {}", clean(r));
        }
        (Some(c), None) => {
            let _ = write!(s, ": code={c}");
        }
        (None, Some(r)) => {
            let _ = write!(s, ": {}", clean(r));
        }
        (None, None) => {}
    }
    s
}

/// [`KeyRequest::describe`] of a certificate request: the subject and
/// names as typed (escaped), a certificate by its size and SHA-256.
fn describe_cert(c: &crate::certificate::CertRequest) -> String {
    use crate::certificate::CertRequest;
    use crate::distribution::sha256_hex;
    let version = |v: &Option<u32>| match v {
        Some(v) => format!(" version {v}"),
        None => String::new(),
    };
    let sans = |s: &[String]| match s {
        [] => String::new(),
        s => format!(", names {}", clean(&s.join(","))),
    };
    match c {
        CertRequest::Request {
            name,
            token,
            version: v,
            subject,
            sans: s,
        } => format!(
            "sign a certificate request of {}{} in the HSM for {}{}",
            key(token, name),
            version(v),
            clean(subject),
            sans(s)
        ),
        CertRequest::SelfSign {
            name,
            token,
            version: v,
            subject,
            sans: s,
            days,
            import,
        } => format!(
            "sign a self-signed certificate of {}{} in the HSM for {}{}, {days} days{}",
            key(token, name),
            version(v),
            clean(subject),
            sans(s),
            if *import { ", and store it" } else { "" }
        ),
        CertRequest::Import {
            name,
            token,
            version: v,
            certificate,
            replace,
        } => format!(
            "store a certificate of {} bytes (SHA-256 {}) beside {}{}{}",
            certificate.len(),
            sha256_hex(certificate),
            key(token, name),
            version(v),
            if *replace {
                ", replacing the version's"
            } else {
                ""
            }
        ),
    }
}

/// [`KeyRequest::describe`] of a distribution request: keys by name, the
/// recipient and a file by their SHA-256, never their bytes.
fn describe_distribution(d: &crate::distribution::DistRequest) -> String {
    use crate::distribution::{sha256_hex, DistRequest};
    let version = |v: &Option<u32>| match v {
        Some(v) => format!(" version {v}"),
        None => String::new(),
    };
    match d {
        DistRequest::PublicKey {
            name,
            token,
            version: v,
        } => format!("show the public key of {}{}", key(token, name), version(v)),
        DistRequest::Export {
            name,
            token,
            version: v,
            recipient,
            reason,
        } => format!(
            "export {}{} wrapped for the RSA key with SPKI SHA-256 {}: {}",
            key(token, name),
            version(v),
            sha256_hex(recipient),
            clean(reason)
        ),
        DistRequest::Collect { id } => {
            format!("collect the export file of request {}", clean(id))
        }
        DistRequest::Import {
            file,
            class,
            name,
            token,
            reason,
        } => format!(
            "import the export file with SHA-256 {} as {} (class {}): {}",
            sha256_hex(file),
            match name {
                Some(n) => key(token, n),
                None => key(token, "(its own name)"),
            },
            clean(class),
            clean(reason)
        ),
    }
}

impl KeyRequest {
    /// [`KeyRequest::describe`] of the requests of dual control itself
    /// (requests, decisions, the policy's changes).
    fn describe_dual_control(&self) -> String {
        let with_reason = |mut s: String, reason: &Option<String>| {
            if let Some(r) = reason {
                let _ = write!(s, ": {}", clean(r));
            }
            s
        };
        match self {
            KeyRequest::RequestList { all: false } => {
                "list the pending approval requests".to_owned()
            }
            KeyRequest::RequestList { all: true } => "list every approval request".to_owned(),
            KeyRequest::RequestShow { id } => format!("show approval request {}", clean(id)),
            KeyRequest::RequestDecide {
                id,
                decision,
                signature,
            } => format!(
                "{decision} request {}{}",
                clean(id),
                if signature.is_some() { " (signed)" } else { "" }
            ),
            KeyRequest::RequestCancel { id, reason } => {
                with_reason(format!("cancel request {}", clean(id)), reason)
            }
            KeyRequest::Init { text, reason } => with_reason(
                format!(
                    "set up dual control with a first policy ({} bytes)",
                    text.len()
                ),
                reason,
            ),
            KeyRequest::PolicyApply { text, reason } => {
                with_reason(format!("apply a new policy ({} bytes)", text.len()), reason)
            }
            other => other.name().to_owned(),
        }
    }
}

impl KeyAction {
    /// The stable name of a [`KeyRequest::Transition`] with this action.
    pub fn name(self) -> &'static str {
        match self {
            KeyAction::Activate => "key.activate",
            KeyAction::Suspend => "key.suspend",
            KeyAction::Resume => "key.resume",
            KeyAction::Deactivate => "key.deactivate",
            KeyAction::Revoke { .. } => "key.revoke",
            KeyAction::Destroy => "key.destroy",
        }
    }

    /// The action as a verb: `suspend`, `revoke`, ...
    pub fn verb(self) -> &'static str {
        match self {
            KeyAction::Activate => "activate",
            KeyAction::Suspend => "suspend",
            KeyAction::Resume => "resume",
            KeyAction::Deactivate => "deactivate",
            KeyAction::Revoke { .. } => "revoke",
            KeyAction::Destroy => "destroy",
        }
    }
}

impl AdminErrorKind {
    /// The kind in words: `invalid`, `not found`, `refused`, `conflict`,
    /// `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminErrorKind::Invalid => "invalid",
            AdminErrorKind::NotFound => "not found",
            AdminErrorKind::Refused => "refused",
            AdminErrorKind::Conflict => "conflict",
            AdminErrorKind::Failed => "failed",
        }
    }
}

impl AuditRequest {
    /// The request's stable name (see the [module](self) documentation).
    pub fn name(&self) -> &'static str {
        match self {
            AuditRequest::Verify | AuditRequest::VerifyAnchored { .. } => "audit.verify",
            AuditRequest::Anchor => "audit.anchor",
            AuditRequest::Tail { .. } => "audit.tail",
            AuditRequest::Query { .. } => "audit.query",
        }
    }

    /// What the request does, in words (one line).
    pub fn describe(&self) -> String {
        match self {
            AuditRequest::Verify => "verify the audit trail".to_owned(),
            AuditRequest::VerifyAnchored { anchors } => format!(
                "verify the audit trail and that it holds {} {}",
                anchors.len(),
                if anchors.len() == 1 {
                    "anchor"
                } else {
                    "anchors"
                }
            ),
            AuditRequest::Anchor => "seal the audit trail and give its anchor".to_owned(),
            AuditRequest::Tail { n, after_seq } => match after_seq {
                None => format!("read the last {n} audit records"),
                Some(s) => format!("read at most {n} audit records after record {s}"),
            },
            AuditRequest::Query {
                key,
                application,
                since,
                until,
                denied_only,
                limit,
            } => {
                let mut s = format!(
                    "read at most {limit} {}audit records",
                    if *denied_only {
                        "refused or failed "
                    } else {
                        ""
                    }
                );
                if let Some(k) = key {
                    let _ = write!(s, " of key {}", clean(k));
                }
                if let Some(a) = application {
                    let _ = write!(s, " of application {}", clean(a));
                }
                if let Some(t) = since {
                    let _ = write!(s, " from {}", utc(*t));
                }
                if let Some(t) = until {
                    let _ = write!(s, " until {}", utc(*t));
                }
                s
            }
        }
    }
}

impl ReportRequest {
    /// The request's stable name (see the [module](self) documentation).
    pub fn name(&self) -> &'static str {
        "report.make"
    }

    /// What the request does, in words (one line).
    pub fn describe(&self) -> String {
        let what = match (&self.token, &self.key) {
            (token, Some(k)) => key(token, k),
            (Some(t), None) => format!("the keys of token {}", clean(t)),
            (None, None) => "every key".to_owned(),
        };
        format!(
            "report on {what}: the last {} against the {} before",
            period(self.window_secs),
            period(self.baseline_secs)
        )
    }
}

/// A key as descriptions show it: `token/name`, or the name alone when
/// the request names no token (the agent's first token).
fn key(token: &Option<String>, name: &str) -> String {
    match token {
        Some(t) => format!("{}/{}", clean(t), clean(name)),
        None => clean(name),
    }
}

/// `text` on one line: control characters (line breaks, escapes that
/// would move a terminal's cursor) escaped as `\n`, `\u{1b}`, ...
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Unix seconds as descriptions show them: `2026-12-01 00:00:00 UTC`
/// (`unix time N` outside years -9999 to 9999).
pub fn utc(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map_or_else(
        |_| format!("unix time {secs}"),
        |t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// Seconds as a period for people: `1h`, `7d`, `1d 2h 5s` (days of 24
/// hours; no months or years, whose length varies).
fn period(secs: u64) -> String {
    use jiff::fmt::friendly::{Designator, SpanPrinter};
    use jiff::{SpanRound, Unit};
    let span = i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Span::new().try_seconds(s).ok())
        .and_then(|s| {
            s.round(SpanRound::new().largest(Unit::Day).days_are_24_hours())
                .ok()
        });
    match span {
        Some(s) => SpanPrinter::new()
            .designator(Designator::Compact)
            .span_to_string(&s),
        None => format!("{secs} s"),
    }
}

/// What `key create` does, in words.
fn describe_create(
    name: &str,
    class: &str,
    algorithm: Option<Algorithm>,
    token: &Option<String>,
    owner: Option<&str>,
) -> String {
    let mut s = format!(
        "create {} (class {}, {}",
        key(token, name),
        clean(class),
        algorithm.map_or_else(
            || "the class's first algorithm".to_owned(),
            |a| a.to_string()
        )
    );
    if let Some(owner) = owner {
        let _ = write!(s, ", owner {}", clean(owner));
    }
    s.push(')');
    s
}

/// What `grant add` does, in words; `target` names the key.
fn describe_grant(
    target: String,
    application: &str,
    operations: &[Operation],
    until: Option<i64>,
) -> String {
    let ops: Vec<&str> = operations.iter().map(|o| o.as_str()).collect();
    let mut s = format!(
        "grant {} {} on {}",
        clean(application),
        if ops.is_empty() {
            "no operation".to_owned()
        } else {
            ops.join(", ")
        },
        target
    );
    if let Some(t) = until {
        let _ = write!(s, " until {}", utc(t));
    }
    s
}

/// What `pin unlock` does, in words.
fn describe_pin_unlock(token: &str, role: Option<PinRole>, application: Option<&str>) -> String {
    let role = match role {
        Some(PinRole::User) => "user PIN",
        Some(PinRole::So) => "SO PIN",
        None => "user and SO PIN",
    };
    let mut s = format!(
        "reset the wrong-PIN counts ({role}) of token {}",
        clean(token)
    );
    if let Some(a) = application {
        let _ = write!(s, " for application {}", clean(a));
    }
    s
}

impl BackupRequest {
    /// The virtual token the request names.
    pub fn token(&self) -> Option<&str> {
        match self {
            BackupRequest::Init { token, .. }
            | BackupRequest::Status { token }
            | BackupRequest::Share { token, .. }
            | BackupRequest::Create { token }
            | BackupRequest::Restore { token, .. }
            | BackupRequest::Verify { token, .. }
            | BackupRequest::Submit { token, .. } => token.as_deref(),
        }
    }

    /// The request's stable name (`backup.create`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            BackupRequest::Init { .. } => "backup.init",
            BackupRequest::Status { .. } => "backup.status",
            BackupRequest::Share { .. } => "backup.share",
            BackupRequest::Create { .. } => "backup.create",
            BackupRequest::Restore { .. } => "backup.restore",
            BackupRequest::Verify { .. } => "backup.verify",
            BackupRequest::Submit { .. } => "backup.submit",
        }
    }

    /// What the request does, in words (one line; never a share or a
    /// file's bytes).
    pub fn describe(&self) -> String {
        let on = |t: &Option<String>| t.as_deref().map(|t| format!(" of token {}", clean(t)));
        let on = |t: &Option<String>| on(t).unwrap_or_default();
        match self {
            BackupRequest::Init {
                token,
                threshold,
                reason,
            } => format!(
                "make the backup key{}, {threshold} custodians' shares to rebuild it: {}",
                on(token),
                clean(reason)
            ),
            BackupRequest::Status { token } => format!("show the backup key{}", on(token)),
            BackupRequest::Share { token, custodian } => format!(
                "fetch the encrypted backup key share{} of {}",
                on(token),
                custodian.as_deref().map_or("the caller".to_owned(), clean)
            ),
            BackupRequest::Create { token } => format!("make a backup{}", on(token)),
            BackupRequest::Restore {
                token,
                file,
                reason,
            } => format!(
                "restore a backup of {} bytes{}: {}",
                file.len(),
                on(token),
                clean(reason)
            ),
            BackupRequest::Verify { token, file } => {
                format!("drill a backup of {} bytes{}", file.len(), on(token))
            }
            BackupRequest::Submit { token, .. } => {
                format!("submit a backup key share{}", on(token))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::AuditAnchor;
    use crate::certificate::CertRequest;
    use crate::distribution::DistRequest;

    fn transition(action: KeyAction, token: Option<&str>, reason: Option<&str>) -> AdminRequest {
        AdminRequest::Key(KeyRequest::Transition {
            name: "demo-key".into(),
            token: token.map(Into::into),
            action,
            reason: reason.map(Into::into),
            code: None,
        })
    }

    /// One request of every kind (every variant, every action).
    fn every_request() -> Vec<AdminRequest> {
        let key = |k: KeyRequest| AdminRequest::Key(k);
        let mut all = vec![
            AdminRequest::Status,
            key(KeyRequest::Create {
                name: "k".into(),
                class: "c".into(),
                algorithm: None,
                token: None,
                owner: None,
            }),
            key(KeyRequest::List {
                token: None,
                state: None,
            }),
            key(KeyRequest::Show {
                name: "k".into(),
                token: None,
            }),
            key(KeyRequest::Rotate {
                name: "k".into(),
                token: None,
            }),
            key(KeyRequest::Verify {
                name: "k".into(),
                token: None,
            }),
            key(KeyRequest::GrantAdd {
                key: "k".into(),
                token: None,
                application: "a".into(),
                operations: vec![keyward_domain::Operation::Sign],
                until: None,
            }),
            key(KeyRequest::GrantRemove {
                key: "k".into(),
                token: None,
                application: "a".into(),
            }),
            key(KeyRequest::GrantList {
                key: None,
                token: None,
            }),
            key(KeyRequest::AppList),
            key(KeyRequest::PinUnlock {
                token: "t".into(),
                role: None,
                application: None,
            }),
            key(KeyRequest::Discover { token: None }),
            key(KeyRequest::Adopt {
                token: None,
                backend_id: vec![1],
                name: "k".into(),
                class: "c".into(),
            }),
            AdminRequest::Key(KeyRequest::RequestList { all: false }),
            AdminRequest::Key(KeyRequest::RequestShow { id: "00ff".into() }),
            AdminRequest::Key(KeyRequest::RequestDecide {
                id: "00ff".into(),
                decision: Decision::Approve,
                signature: Some(vec![1]),
            }),
            AdminRequest::Key(KeyRequest::RequestDecide {
                id: "00ff".into(),
                decision: Decision::Deny,
                signature: None,
            }),
            AdminRequest::Key(KeyRequest::RequestCancel {
                id: "00ff".into(),
                reason: None,
            }),
            AdminRequest::Key(KeyRequest::PolicyApply {
                text: "[settings]".into(),
                reason: None,
            }),
            AdminRequest::Key(KeyRequest::Init {
                text: "[settings]".into(),
                reason: None,
            }),
            key(KeyRequest::Recover {
                name: "k".into(),
                token: None,
                seconds: 3_600,
                reason: "r".into(),
            }),
            AdminRequest::Key(KeyRequest::TokenInit {
                token: "t".into(),
                reason: "r".into(),
            }),
            key(KeyRequest::Distribution(DistRequest::PublicKey {
                name: "k".into(),
                token: None,
                version: None,
            })),
            key(KeyRequest::Distribution(DistRequest::Export {
                name: "k".into(),
                token: None,
                version: Some(1),
                recipient: vec![1],
                reason: "r".into(),
            })),
            key(KeyRequest::Distribution(DistRequest::Collect {
                id: "00ff".into(),
            })),
            key(KeyRequest::Distribution(DistRequest::Import {
                file: vec![1],
                class: "c".into(),
                name: None,
                token: None,
                reason: "r".into(),
            })),
            key(KeyRequest::Cert(CertRequest::Request {
                name: "k".into(),
                token: None,
                version: None,
                subject: "CN=k".into(),
                sans: vec!["DNS:k".into()],
            })),
            key(KeyRequest::Cert(CertRequest::SelfSign {
                name: "k".into(),
                token: None,
                version: Some(1),
                subject: "CN=k".into(),
                sans: Vec::new(),
                days: 1,
                import: true,
            })),
            key(KeyRequest::Cert(CertRequest::Import {
                name: "k".into(),
                token: None,
                version: None,
                certificate: vec![1],
                replace: false,
            })),
            AdminRequest::Audit(AuditRequest::Verify),
            AdminRequest::Audit(AuditRequest::Anchor),
            AdminRequest::Audit(AuditRequest::Tail {
                n: 1,
                after_seq: None,
            }),
            AdminRequest::Audit(AuditRequest::Query {
                key: None,
                application: None,
                since: None,
                until: None,
                denied_only: false,
                limit: 1,
            }),
            AdminRequest::Report(ReportRequest::default()),
        ];
        for action in [
            KeyAction::Activate,
            KeyAction::Suspend,
            KeyAction::Resume,
            KeyAction::Deactivate,
            KeyAction::Revoke { rotate: false },
            KeyAction::Destroy,
        ] {
            all.push(transition(action, None, None));
        }
        all
    }

    #[test]
    fn names_are_stable() {
        let names: Vec<&str> = every_request().iter().map(AdminRequest::name).collect();
        assert_eq!(
            names,
            [
                "agent.status",
                "key.create",
                "key.list",
                "key.show",
                "key.rotate",
                "key.verify",
                "grant.add",
                "grant.remove",
                "grant.list",
                "app.list",
                "pin.unlock",
                "key.discover",
                "key.adopt",
                "request.list",
                "request.show",
                "request.approve",
                "request.deny",
                "request.cancel",
                "policy.apply",
                "policy.init",
                "key.recover",
                "token.init",
                "key.pubkey",
                "key.export",
                "key.collect",
                "key.import",
                "cert.request",
                "cert.self-sign",
                "cert.import",
                "audit.verify",
                "audit.anchor",
                "audit.tail",
                "audit.query",
                "report.make",
                "key.activate",
                "key.suspend",
                "key.resume",
                "key.deactivate",
                "key.revoke",
                "key.destroy",
            ]
        );
        // Variants that are one command share its name.
        assert_eq!(
            transition(KeyAction::Revoke { rotate: true }, None, None).name(),
            "key.revoke"
        );
        assert_eq!(
            AdminRequest::Audit(AuditRequest::VerifyAnchored { anchors: vec![] }).name(),
            "audit.verify"
        );
    }

    #[test]
    fn names_follow_the_scheme() {
        for req in every_request() {
            let name = req.name();
            let parts: Vec<&str> = name.split('.').collect();
            assert_eq!(parts.len(), 2, "{name}");
            assert!(
                parts.iter().all(|p| !p.is_empty()
                    && !p.starts_with('-')
                    && !p.ends_with('-')
                    && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')),
                "{name}"
            );
        }
    }

    #[test]
    fn descriptions_speak_words() {
        let key = |r: KeyRequest| AdminRequest::Key(r).describe();
        assert_eq!(
            key(KeyRequest::RequestCancel {
                id: "00ff".into(),
                reason: Some("asked twice\n".into())
            }),
            "cancel request 00ff: asked twice\\n"
        );
        assert_eq!(
            key(KeyRequest::RequestDecide {
                id: "00ff".into(),
                decision: Decision::Deny,
                signature: Some(vec![1])
            }),
            "deny request 00ff (signed)"
        );
        assert_eq!(
            key(KeyRequest::PolicyApply {
                text: "[settings]\n".into(),
                reason: None
            }),
            "apply a new policy (11 bytes)"
        );
        assert_eq!(
            key(KeyRequest::RequestList { all: false }),
            "list the pending approval requests"
        );
        assert_eq!(
            transition(KeyAction::Suspend, None, Some("demo: investigating")).describe(),
            "suspend demo-key: demo: investigating"
        );
        assert_eq!(
            transition(KeyAction::Revoke { rotate: true }, Some("prod"), None).describe(),
            "revoke prod/demo-key and replace it with a new version"
        );
        let coded = |code, reason: Option<&str>| {
            AdminRequest::Key(KeyRequest::Transition {
                name: "k".into(),
                token: None,
                action: KeyAction::Revoke { rotate: false },
                reason: reason.map(Into::into),
                code: Some(code),
            })
            .describe()
        };
        assert_eq!(
            coded(
                keyward_domain::ReasonCode::KeyCompromise,
                Some("laptop stolen")
            ),
            "revoke k: code=keyCompromise; laptop stolen"
        );
        assert_eq!(
            coded(keyward_domain::ReasonCode::Superseded, None),
            "revoke k: code=superseded"
        );
        let create = AdminRequest::Key(KeyRequest::Create {
            name: "web-tls".into(),
            class: "tls-server".into(),
            algorithm: Some(keyward_domain::Algorithm::Ec(keyward_domain::Curve::P256)),
            token: Some("prod".into()),
            owner: Some("alice".into()),
        });
        assert_eq!(
            create.describe(),
            "create prod/web-tls (class tls-server, ec:p256, owner alice)"
        );
        let grant = AdminRequest::Key(KeyRequest::GrantAdd {
            key: "web-tls".into(),
            token: None,
            application: "nginx".into(),
            operations: vec![
                keyward_domain::Operation::Sign,
                keyward_domain::Operation::Verify,
            ],
            until: Some(1_796_083_200),
        });
        assert_eq!(
            grant.describe(),
            "grant nginx sign, verify on web-tls until 2026-12-01 00:00:00 UTC"
        );
        let recover = AdminRequest::Key(KeyRequest::Recover {
            name: "archive".into(),
            token: Some("prod".into()),
            seconds: 7 * 86_400,
            reason: "read the 2025 backups\n".into(),
        });
        assert_eq!(
            recover.describe(),
            "open a recovery window on prod/archive for 7d (verify and decrypt only): \
             read the 2025 backups\\n"
        );
        let init = AdminRequest::Key(KeyRequest::TokenInit {
            token: "lab".into(),
            reason: "reuse for staging".into(),
        });
        assert_eq!(
            init.describe(),
            "initialise token lab (destroys every key on it, clears its user PINs): \
             reuse for staging"
        );
        assert!(!KeyRequest::TokenInit {
            token: "lab".into(),
            reason: "r".into()
        }
        .is_read_only());
        let adopt = AdminRequest::Key(KeyRequest::Adopt {
            token: None,
            backend_id: vec![0x0a, 0x1b, 0xff],
            name: "old".into(),
            class: "signing".into(),
        });
        assert_eq!(
            adopt.describe(),
            "adopt CKA_ID 0a1bff as old (class signing)"
        );
        assert_eq!(
            AdminRequest::Report(ReportRequest::default()).describe(),
            "report on every key: the last 1h against the 7d before"
        );
        let query = AdminRequest::Audit(AuditRequest::Query {
            key: Some("web-tls".into()),
            application: None,
            since: Some(0),
            until: None,
            denied_only: true,
            limit: 50,
        });
        assert_eq!(
            query.describe(),
            "read at most 50 refused or failed audit records of key web-tls \
             from 1970-01-01 00:00:00 UTC"
        );
        let anchors = AdminRequest::Audit(AuditRequest::VerifyAnchored {
            anchors: vec![AuditAnchor {
                seq: 1,
                head: [0; 32],
                created_at: 0,
                signature: vec![1],
            }],
        });
        assert_eq!(
            anchors.describe(),
            "verify the audit trail and that it holds 1 anchor"
        );
        for req in every_request() {
            let d = req.describe();
            assert!(!d.is_empty() && !d.contains('{') && !d.contains('"'), "{d}");
        }
    }

    #[test]
    fn descriptions_stay_on_one_line() {
        let d = transition(
            KeyAction::Suspend,
            Some("t\nx"),
            Some("why\n2026-01-01 admin root: key.destroy done\u{1b}[2J"),
        )
        .describe();
        assert_eq!(
            d,
            "suspend t\\nx/demo-key: why\\n2026-01-01 admin root: key.destroy done\\u{1b}[2J"
        );
        assert!(!d.chars().any(char::is_control), "{d}");
    }

    #[test]
    fn times_and_periods_out_of_range_are_still_words() {
        assert_eq!(utc(i64::MAX), format!("unix time {}", i64::MAX));
        assert_eq!(utc(4_102_444_800), "2100-01-01 00:00:00 UTC");
        assert_eq!(period(0), "0s");
        assert_eq!(period(86_400 + 2 * 3_600 + 5), "1d 2h 5s");
        assert_eq!(period(u64::MAX), format!("{} s", u64::MAX));
    }

    #[test]
    fn read_only_key_requests() {
        let read_only: Vec<&str> = every_request()
            .iter()
            .filter_map(|r| match r {
                AdminRequest::Key(k) if k.is_read_only() => Some(k.name()),
                _ => None,
            })
            .collect();
        assert_eq!(
            read_only,
            [
                "key.list",
                "key.show",
                "grant.list",
                "app.list",
                "request.list",
                "request.show"
            ]
        );
    }
}
