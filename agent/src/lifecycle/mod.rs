//! The key lifecycle: key management on the admin socket (the `keyward
//! key`, `grant`, `app`, `pin` and `discover` commands) and the scheduler,
//! one executor per kind of change:
//! - [`create`]: generation and its journal; [`rotate`]: new versions;
//!   [`transition`]: moves between states; [`adopt`]: unmanaged keys taken
//!   in; [`approvals`]: what waits for a second person (dual control
//!   executes it there; backup and restore get an executor beside these);
//!   [`recovery`]: recovery windows on compromised keys (and, in
//!   [`grants`], grants on sensitive keys), both under quorum;
//! - [`verify`]: checks of versions in the HSM; [`discovery`]: what the
//!   token holds that the inventory does not manage; [`scheduler`]: dates
//!   that passed; [`grants`]: applications' rights; [`views`]: what the CLI
//!   shows; [`hsm`]: the HSM session each action uses.
//!
//! This file takes a request (parsed, logged, recorded in the trail),
//! hands it to its executor, and applies lifecycle changes
//! (`Lifecycle::apply_change`).
//!
//! Every change follows one order: the HSM first (generation, on a fresh
//! backend session that is closed afterwards, never the anchor), then the
//! inventory, then
//! [`ManagedKeys::refresh`](crate::keys::ManagedKeys::refresh), so that
//! enforcement sees the change on the very next use. A generation whose
//! inventory write fails destroys what it generated: no orphan objects.
//!
//! A lifecycle change (create, adopt, transition, rotation, the
//! scheduler's) is one inventory transaction (`Lifecycle::apply_change`):
//! the key's state, its versions' states and new versions, its dates, its
//! history rows and its `lifecycle` trail records, durable before the
//! answer. A kill at any moment leaves all of it or none of it, and a
//! change whose records cannot be written does not happen. Which moves an
//! action makes is the policy's ([`transition`], [`version_transition`](keyward_policy::version_transition),
//! [`Rotation`](keyward_policy::Rotation)); the store only checks that each state is still the one
//! seen.
//!
//! Semantics chosen here (see also the doc comments of the functions):
//! - A new key and its version 1 start in pre-activation; `activate` moves
//!   both, and sets the key's cryptoperiod dates from its class.
//! - `suspend`, `resume` and `deactivate` move the key's own state; its
//!   versions keep theirs (enforcement requires both to permit a use).
//! - `revoke` moves the key and every live version to compromised.
//! - Actions that need approval (leaving suspended or compromised, and
//!   destroy) are recorded as a pending request in the inventory and not
//!   performed; dual control adds the approvals and the execution.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyward_inventory::{
    Actor, AppliedChange, AuditEvent, DateUpdates, KeyChange, KeyRecord, KeyVersion,
    LifecycleChange, VersionChange,
};
use keyward_policy::{Action, KeyClass, KeyState};
use keyward_protocol::admin::{AdminErrorKind, AdminResponse, KeyAction, KeyRequest, KeyResponse};

use crate::backend::Backend;
use crate::keys::{secs, KeyView};
use crate::listener::identity::Peer;
use crate::shared::Core;
use crate::state::Role;
use crate::tokens::VirtualToken;

pub mod adopt;
pub mod approvals;
pub mod backup;
pub mod certs;
pub mod create;
pub mod destroy;
pub mod discovery;
pub mod distribute;
pub mod dry_run;
pub mod governance;
pub mod grants;
pub mod hsm;
pub mod officer;
pub mod recovery;
pub mod rotate;
pub mod scheduler;
pub mod token_init;
pub mod transition;
pub mod verify;
pub mod views;

/// The key lifecycle: key management for administrators and the
/// scheduler, over the agent's shared [`Core`].
#[derive(Debug)]
pub struct Lifecycle {
    core: Arc<Core>,
    /// The policy file in force (`None`: the built-in lab policy); see
    /// [`governance`].
    policy_file: std::sync::Mutex<Option<governance::PolicyFile>>,
    /// Held while a key is generated and while discovery scans a token: the
    /// scan never runs beside a generation on the backend (SoftHSM2 can
    /// fail a generation with `CKR_GENERAL_ERROR` when a scan of the same
    /// token runs at the same moment). Administrative paths only.
    hsm_scan: std::sync::Mutex<()>,
    /// Backup key shares custodians submitted towards a rebuild (token
    /// label, share), in memory only; see [`backup::ceremony`].
    submitted: std::sync::Mutex<Vec<(String, keyward_escrow::ShareRecord)>>,
    /// When the scheduler last ran (unix seconds; 0: not yet).
    pub(crate) scheduler_ran: std::sync::atomic::AtomicI64,
}

impl std::ops::Deref for Lifecycle {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Lifecycle {
    /// The lifecycle over `core`.
    pub fn new(core: Arc<Core>) -> Lifecycle {
        Lifecycle {
            core,
            policy_file: std::sync::Mutex::new(None),
            hsm_scan: std::sync::Mutex::new(()),
            submitted: std::sync::Mutex::new(Vec::new()),
            scheduler_ran: std::sync::atomic::AtomicI64::new(0),
        }
    }
}

/// How long an approval request stays open.
pub const APPROVAL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The actor of the scheduler's changes.
pub const SCHEDULER: &str = "scheduler";

/// A failed key-management call: the kind the CLI maps to an exit code,
/// and the message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    /// What kind of failure.
    pub kind: AdminErrorKind,
    /// Why.
    pub message: String,
}

pub(crate) type AResult<T> = std::result::Result<T, AdminError>;

/// The result value an administrator's failed request of `kind` leaves in
/// the audit trail: keyward's own, one per kind (`KEYWARD_REFUSED`, ...).
pub fn admin_result(kind: AdminErrorKind) -> u64 {
    match kind {
        AdminErrorKind::Invalid => keyward_policy::KEYWARD_INVALID,
        AdminErrorKind::NotFound => keyward_policy::KEYWARD_NOT_FOUND,
        AdminErrorKind::Refused => keyward_policy::KEYWARD_REFUSED,
        AdminErrorKind::Conflict => keyward_policy::KEYWARD_CONFLICT,
        AdminErrorKind::Failed => keyward_policy::KEYWARD_FAILED,
    }
}

pub(crate) fn fail<T>(kind: AdminErrorKind, message: impl Into<String>) -> AResult<T> {
    Err(AdminError {
        kind,
        message: message.into(),
    })
}

/// Checks the name of a new managed key ([`keyward_policy::check_key_name`]):
/// a bad one is an invalid request (exit 2).
pub(crate) fn check_new_key_name(name: &str) -> AResult<()> {
    keyward_policy::check_key_name(name).map_err(|e| AdminError {
        kind: AdminErrorKind::Invalid,
        message: e.to_string(),
    })
}

/// The message of a lookup of an unknown key `name` among the keys of
/// `tokens`: `no key "N" on token "T"` (one token), `no key "N" on any of
/// the tokens "T1", "T2"` (several).
pub(crate) fn no_key_message<'a>(name: &str, tokens: impl IntoIterator<Item = &'a str>) -> String {
    let labels: Vec<String> = tokens.into_iter().map(|t| format!("{t:?}")).collect();
    match labels.as_slice() {
        [one] => format!("no key {name:?} on token {one}"),
        _ => format!("no key {name:?} on any of the tokens {}", labels.join(", ")),
    }
}

/// The message of a lookup of an application the policy does not name:
/// `no application "A" in the policy`.
pub(crate) fn no_application_message(name: &str) -> String {
    format!("no application {name:?} in the policy")
}

pub(crate) fn inv_err(e: keyward_inventory::Error) -> AdminError {
    use keyward_inventory::Error as E;
    let kind = match &e {
        E::Exists(_) | E::Conflict { .. } => AdminErrorKind::Conflict,
        E::NotFound(_) => AdminErrorKind::NotFound,
        E::Invalid(_) => AdminErrorKind::Invalid,
        _ => AdminErrorKind::Failed,
    };
    AdminError {
        kind,
        message: format!("inventory: {e}"),
    }
}

pub(crate) fn hsm_err(what: &str, e: crate::error::Error) -> AdminError {
    AdminError {
        kind: AdminErrorKind::Failed,
        message: format!("HSM: {what}: {e}"),
    }
}

/// The parameters of approval request `r` (a JSON object), or an error
/// naming the request.
pub(crate) fn request_parameters(
    r: &keyward_inventory::ApprovalRecord,
) -> AResult<serde_json::Value> {
    serde_json::from_str(&r.parameters).map_err(|e| AdminError {
        kind: AdminErrorKind::Invalid,
        message: format!("request {}: parameters: {e}", r.id),
    })
}

/// The change that records a new key and its version 1 by `who`.
pub(crate) fn creation(record: KeyRecord, version: KeyVersion, who: &str) -> LifecycleChange {
    LifecycleChange {
        at: record.created_at,
        key: KeyChange::Create(Box::new(record)),
        versions: vec![VersionChange::Add(version)],
        dates: DateUpdates::default(),
        actor: who.to_owned(),
        reason: "created".to_owned(),
        trail: Vec::new(),
    }
}

/// The `lifecycle` records of `change` (see [`Agent::apply_change`]);
/// `None` when the key it changes is not in the view.
pub(crate) fn lifecycle_records(
    by: &Actor,
    operation: &str,
    why: &str,
    change: &LifecycleChange,
    keys: &crate::keys::ManagedKeys,
) -> Option<Vec<AuditEvent>> {
    let (token, name, key_move) = match &change.key {
        KeyChange::Create(k) => (k.token.clone(), k.name.clone(), Some((None, k.state))),
        KeyChange::Update {
            key_id,
            expected,
            to,
            ..
        } => {
            let k = keys.key(*key_id)?;
            let (token, name) = (k.record.token.clone(), k.record.name.clone());
            (token, name, to.map(|to| (Some(*expected), to)))
        }
    };
    let moves = change.versions.iter().map(|v| match v {
        VersionChange::Add(v) => (Some(v.version), None, v.state),
        VersionChange::Move { version, from, to } => (Some(*version), Some(*from), *to),
    });
    let state = |s: Option<KeyState>| s.map_or("none", KeyState::as_str);
    let records = key_move
        .map(|(from, to)| (None, from, to))
        .into_iter()
        .chain(moves)
        .map(|(version, from, to)| {
            let mut e = crate::audit::event(
                keyward_inventory::AuditKind::Lifecycle,
                by.clone(),
                operation,
            );
            e.token = Some(token.clone());
            e.key = Some(name.clone());
            e.key_version = version;
            e.reason = crate::audit::lifecycle_reason(state(from), state(Some(to)), why);
            e
        })
        .collect();
    Some(records)
}

/// What `change` (named `operation`) does, in words, for a dry run's plan.
pub(crate) fn describe_change(
    operation: &str,
    change: &LifecycleChange,
    keys: &crate::keys::ManagedKeys,
) -> String {
    let mut moves = Vec::new();
    let key = match &change.key {
        KeyChange::Create(k) => {
            moves.push(format!("key recorded {}", k.state));
            format!("{}/{}", k.token, k.name)
        }
        KeyChange::Update {
            key_id,
            expected,
            to,
            code,
        } => {
            if let Some(to) = to {
                moves.push(format!("key {expected} -> {to}"));
            }
            if let Some(code) = code {
                moves.push(format!("reason code {code}"));
            }
            keys.key(*key_id).map_or_else(
                || format!("key {key_id}"),
                |k| format!("{}/{}", k.record.token, k.record.name),
            )
        }
    };
    for v in &change.versions {
        moves.push(match v {
            VersionChange::Add(v) => format!("version {} added {}", v.version, v.state),
            VersionChange::Move { version, from, to } => {
                format!("version {version} {from} -> {to}")
            }
        });
    }
    format!("{operation} {key}: {}", moves.join(", "))
}

/// The token and key a key request names, for the trail.
pub(crate) fn request_target(req: &KeyRequest) -> (Option<String>, Option<String>) {
    match req {
        KeyRequest::Create { name, token, .. }
        | KeyRequest::Show { name, token }
        | KeyRequest::Transition { name, token, .. }
        | KeyRequest::Rotate { name, token }
        | KeyRequest::Verify { name, token }
        | KeyRequest::Recover { name, token, .. } => (token.clone(), Some(name.clone())),
        KeyRequest::GrantAdd { key, token, .. } | KeyRequest::GrantRemove { key, token, .. } => {
            (token.clone(), Some(key.clone()))
        }
        KeyRequest::GrantList { key, token } => (token.clone(), key.clone()),
        KeyRequest::Adopt { token, name, .. } => (token.clone(), Some(name.clone())),
        KeyRequest::PinUnlock { token, .. } | KeyRequest::TokenInit { token, .. } => {
            (Some(token.clone()), None)
        }
        KeyRequest::List { token, .. } | KeyRequest::Discover { token } => (token.clone(), None),
        KeyRequest::Backup(b) => (b.token().map(str::to_owned), None),
        KeyRequest::PolicyShow | KeyRequest::PolicyReload => (None, None),
        KeyRequest::Distribution(d) => d.target(),
        KeyRequest::Cert(c) => c.target(),
        KeyRequest::AppList
        | KeyRequest::RequestList { .. }
        | KeyRequest::RequestShow { .. }
        | KeyRequest::RequestDecide { .. }
        | KeyRequest::RequestCancel { .. }
        | KeyRequest::PolicyApply { .. }
        | KeyRequest::Init { .. } => (None, None),
    }
}

/// Bytes from hex, `None` for anything else.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

/// The parts of a managed key needed to act on it.
pub(crate) struct Target<'a> {
    pub(crate) token: &'a VirtualToken,
    pub(crate) key: Arc<KeyView>,
}

impl Target<'_> {
    pub(crate) fn label(&self) -> String {
        format!("{}/{}", self.key.record.token, self.key.record.name)
    }

    /// The version that protects: the newest that is not destroyed.
    pub(crate) fn current(&self) -> AResult<&KeyVersion> {
        self.key.live_version().map_or_else(
            || {
                fail(
                    AdminErrorKind::Refused,
                    format!("key {} has no live version", self.label()),
                )
            },
            Ok,
        )
    }
}

pub(crate) fn state_of(v: &KeyView) -> KeyState {
    v.record.state
}

pub(crate) fn action_of(a: KeyAction) -> Action {
    match a {
        KeyAction::Activate => Action::Activate,
        KeyAction::Suspend => Action::Suspend,
        KeyAction::Resume => Action::Resume,
        KeyAction::Deactivate => Action::Deactivate,
        KeyAction::Revoke { .. } => Action::Revoke,
        KeyAction::Destroy => Action::Destroy,
    }
}

/// The cryptoperiod dates of a key of `class` whose period starts at `at`.
pub(crate) fn period_dates(class: Option<&KeyClass>, at: SystemTime) -> DateUpdates {
    let Some(class) = class else {
        return DateUpdates::default();
    };
    let p = class.cryptoperiod(at);
    DateUpdates {
        protect_until: Some(secs(p.protect_until)),
        process_until: Some(secs(p.process_until)),
        next_rotation: p.rotate_at.map(secs),
        ..DateUpdates::default()
    }
}

/// The administrator as the inventory records them.
pub(crate) fn actor(admin: &Peer) -> String {
    format!("uid:{}", admin.uid)
}

impl Lifecycle {
    /// Answers one key-management request of administrator `admin`. Every
    /// action is logged with the administrator at info, refusals at warn.
    ///
    /// What the trail keeps: a request that changes something, uses a key
    /// or reads the HSM has two admin records, named by the request
    /// (`key.suspend`, `grant.add`, ...): `requested: <what it does>`,
    /// written durably before anything is done (an action the trail cannot
    /// record is not taken), and its outcome. A read-only request
    /// ([`KeyRequest::is_read_only`]: `key.list`, `key.show`, `grant.list`,
    /// `app.list`) has none: it changes nothing and shows only what the
    /// admin socket's users may see anyway, and monitoring that polls it
    /// would bury the actions in the trail. It is logged at info.
    pub fn key_request(&self, admin: &Peer, req: KeyRequest) -> AdminResponse {
        let (operation, what) = (req.name(), req.describe());
        if req.is_read_only() {
            log::info!("admin {admin}: {operation}: {what}");
            return match self.key_call(admin, req) {
                Ok(resp) => AdminResponse::Key(Box::new(resp)),
                Err(e) => {
                    log::warn!("admin {admin}: {operation}: {what}: {}", e.message);
                    AdminResponse::KeyErr {
                        kind: e.kind,
                        message: e.message,
                    }
                }
            };
        }
        let (token, key) = request_target(&req);
        let admin_event = |result: u64, reason: &str| {
            let mut e = crate::audit::event(
                keyward_inventory::AuditKind::Admin,
                admin.as_administrator(),
                operation,
            );
            e.token = token.clone();
            e.key = key.clone();
            e.result = result;
            e.reason = reason.chars().take(4096).collect();
            e
        };
        // Fail closed: no action on a view the shared store has not
        // confirmed within the lease (it may be missing a change made
        // elsewhere; the trail could not record it either).
        if let Some(why) = self.keys.stale() {
            log::warn!("admin {admin}: {operation}: {what}: refused: {why}");
            // Queued: written with the rest when the store answers again.
            self.audit.record(admin_event(
                admin_result(AdminErrorKind::Failed),
                &format!("refused: {why}"),
            ));
            return AdminResponse::KeyErr {
                kind: AdminErrorKind::Failed,
                message: format!("refused: {why}; nothing changed"),
            };
        }
        // Fail closed: an action the trail cannot record is not taken.
        if let Err(why) = self.audit.durable(admin_event(
            0,
            &format!("{}{what}", keyward_inventory::REQUESTED),
        )) {
            return AdminResponse::KeyErr {
                kind: AdminErrorKind::Failed,
                message: format!("refused: {why}"),
            };
        }
        let (response, result, reason) = match self.key_call(admin, req) {
            Ok(resp) => {
                log::info!("admin {admin}: {operation}: {what}: done");
                let reason = match &resp {
                    KeyResponse::Pending(p) => format!("needs approval: request {}", p.id),
                    KeyResponse::Requests(r) if r.len() == 1 => approvals::decision_summary(&r[0]),
                    KeyResponse::Cert(c) => certs::outcome(c),
                    _ => "done".to_owned(),
                };
                (AdminResponse::Key(Box::new(resp)), 0, reason)
            }
            Err(e) => {
                let reason = format!("{}: {}", e.kind.as_str(), e.message);
                log::warn!("admin {admin}: {operation}: {what}: {reason}");
                let response = AdminResponse::KeyErr {
                    kind: e.kind,
                    message: e.message,
                };
                (response, admin_result(e.kind), reason)
            }
        };
        if let Err(why) = self.audit.durable(admin_event(result, &reason)) {
            log::error!(
                "admin {admin}: {operation}: {what}: the outcome could not be recorded: {why}"
            );
        }
        response
    }

    pub(crate) fn key_call(&self, admin: &Peer, req: KeyRequest) -> AResult<KeyResponse> {
        let who = self.actor(admin);
        let by = admin.as_administrator();
        match req {
            KeyRequest::Create {
                name,
                class,
                algorithm,
                token,
                owner,
            } => {
                let owner = owner.unwrap_or_else(|| who.clone());
                let info = self.create_key(
                    (&who, &by),
                    &name,
                    &class,
                    algorithm,
                    token.as_deref(),
                    &owner,
                )?;
                Ok(KeyResponse::Key(Box::new(info)))
            }
            KeyRequest::List { token, state } => self.list_keys(token.as_deref(), state),
            KeyRequest::Show { name, token } => {
                let t = self.target(token.as_deref(), &name)?;
                Ok(KeyResponse::Key(Box::new(self.info(&t.key)?)))
            }
            KeyRequest::Transition {
                name,
                token,
                action,
                reason,
                code,
            } => {
                let (reason, code) = transition::checked_reason(action, reason, code)?;
                let t = self.target(token.as_deref(), &name)?;
                self.transition_key(
                    &t,
                    action,
                    (&who, &by),
                    (&reason, code),
                    crate::clock::now(),
                )
            }
            KeyRequest::Rotate { name, token } => {
                let t = self.target(token.as_deref(), &name)?;
                self.rotate_key(&t, (&who, &by), "rotation requested", crate::clock::now())?;
                Ok(KeyResponse::Key(Box::new(self.info(&*self.reload(&t)?)?)))
            }
            KeyRequest::Verify { name, token } => {
                let t = self.target(token.as_deref(), &name)?;
                self.verify_key(&t)
            }
            KeyRequest::GrantAdd {
                key,
                token,
                application,
                operations,
                until,
            } => {
                let t = self.target(token.as_deref(), &key)?;
                self.add_grant(&t, &application, &operations, until, (&who, &by))
            }
            KeyRequest::GrantRemove {
                key,
                token,
                application,
            } => {
                let t = self.target(token.as_deref(), &key)?;
                self.remove_grant(&t, &application, (&who, &by))
            }
            KeyRequest::GrantList { key, token } => {
                self.list_grants(key.as_deref(), token.as_deref())
            }
            KeyRequest::AppList => Ok(KeyResponse::Apps(self.app_list()?)),
            req @ (KeyRequest::RequestList { .. }
            | KeyRequest::RequestShow { .. }
            | KeyRequest::RequestDecide { .. }
            | KeyRequest::RequestCancel { .. }
            | KeyRequest::PolicyApply { .. }
            | KeyRequest::Init { .. }) => self.dual_control_call(admin, (&who, &by), req),
            KeyRequest::Recover {
                name,
                token,
                seconds,
                reason,
            } => {
                let t = self.target(token.as_deref(), &name)?;
                self.request_recovery(&t, seconds, (&who, &reason), crate::clock::now())
            }
            KeyRequest::TokenInit { token, reason } => {
                self.request_token_init(&token, (&who, &reason), crate::clock::now())
            }
            KeyRequest::Backup(b) => self.backup_call(admin, (&who, &by), b),
            KeyRequest::PolicyShow => Ok(KeyResponse::Policy(Box::new(self.policy_shown()))),
            KeyRequest::PolicyReload => self.policy_reload(),
            KeyRequest::PinUnlock {
                token,
                role,
                application,
            } => self.pin_unlock(&token, role, application.as_deref()),
            KeyRequest::Discover { token } => self.discover(token.as_deref(), &by),
            KeyRequest::Adopt {
                token,
                backend_id,
                name,
                class,
            } => {
                let t = self.admin_token(token.as_deref())?;
                let info = self.adopt_key(t, &backend_id, &name, &class, (&who, &by))?;
                Ok(KeyResponse::Key(Box::new(info)))
            }
            KeyRequest::Distribution(d) => self.distribution_call((&who, &by), d),
            KeyRequest::Cert(c) => self.cert_call((&who, &by), c),
        }
    }

    /// `keyward policy reload`: the reload SIGHUP runs, answering what
    /// changed, or why nothing did.
    fn policy_reload(&self) -> AResult<KeyResponse> {
        match self.reloader.get() {
            Some(reload) => reload().map(KeyResponse::Done).map_err(|why| AdminError {
                kind: AdminErrorKind::Refused,
                message: format!("{why}; nothing changed"),
            }),
            None => fail(
                AdminErrorKind::Invalid,
                "this agent was not started from a configuration file: nothing to reload",
            ),
        }
    }

    /// The requests of dual control itself: listing, showing, deciding on
    /// and cancelling requests, and the policy's changes.
    fn dual_control_call(
        &self,
        admin: &Peer,
        (who, by): (&str, &Actor),
        req: KeyRequest,
    ) -> AResult<KeyResponse> {
        let now = crate::clock::now();
        match req {
            KeyRequest::RequestList { all } => self.list_requests(all, now),
            KeyRequest::RequestShow { id } => self.show_request(&id, now),
            KeyRequest::RequestDecide {
                id,
                decision,
                signature,
            } => self.decide(admin, &id, decision, signature.as_deref(), now),
            KeyRequest::RequestCancel { id, reason } => {
                self.cancel(admin, &id, reason.as_deref(), now)
            }
            KeyRequest::PolicyApply { text, reason } => {
                let reason = reason.unwrap_or_else(|| "keyward policy apply".to_owned());
                self.apply_policy((who, by), text, &reason, now)
            }
            KeyRequest::Init { text, reason } => {
                let reason = reason.unwrap_or_else(|| "keyward init".to_owned());
                self.init_policy((who, by), text, &reason, now)
            }
            other => fail(
                AdminErrorKind::Invalid,
                format!("{} is not a request of dual control", other.name()),
            ),
        }
    }

    /// `keyward pin unlock`: resets the PIN attempt counts of `token`
    /// (of one role, or one application's user PIN).
    fn pin_unlock(
        &self,
        token: &str,
        role: Option<keyward_protocol::admin::PinRole>,
        application: Option<&str>,
    ) -> AResult<KeyResponse> {
        self.admin_token(Some(token))?;
        let role = role.map(|r| match r {
            keyward_protocol::admin::PinRole::User => Role::User,
            keyward_protocol::admin::PinRole::So => Role::So,
        });
        if dry_run::planning() {
            // The refusals `unlock_pin` would give, before its writes.
            let refusal = match (role, application) {
                (Some(Role::So), Some(_)) => {
                    Some("an application has no SO PIN of its own: leave out --app".to_owned())
                }
                (_, Some(app)) if self.policy().application(app).is_none() => {
                    Some(format!("the policy names no application {app:?}"))
                }
                _ => None,
            };
            if let Some(message) = refusal {
                return fail(AdminErrorKind::Failed, message);
            }
        }
        dry_run::commit_point(
            || {
                let whose = match (role, application) {
                    (_, Some(app)) => format!("the user PIN of application {app:?}"),
                    (Some(Role::So), None) => "the SO PIN".to_owned(),
                    (Some(Role::User), None) => "the user PINs".to_owned(),
                    (None, None) => "every PIN".to_owned(),
                };
                format!("the wrong-PIN count of {whose} on token {token:?} is reset")
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
        let done = self
            .unlock_pin(token, role, application)
            .map_err(|m| AdminError {
                kind: AdminErrorKind::Failed,
                message: m,
            })?;
        Ok(KeyResponse::Done(done))
    }

    /// The virtual token labelled `label`, or the first.
    pub(crate) fn admin_token(&self, label: Option<&str>) -> AResult<&VirtualToken> {
        let found = match label {
            Some(l) => self.token_labelled(l),
            None => self.tokens.first(),
        };
        found.map_or_else(
            || {
                fail(
                    AdminErrorKind::NotFound,
                    format!("no token {:?}", label.unwrap_or("(any)")),
                )
            },
            Ok,
        )
    }

    pub(crate) fn backend<'t>(&self, token: &'t VirtualToken) -> AResult<&'t Arc<dyn Backend>> {
        token.backend().map_err(|_| AdminError {
            kind: AdminErrorKind::Failed,
            message: format!("token {:?}: the backend is unavailable", token.config.label),
        })
    }

    pub(crate) fn target(&self, token: Option<&str>, name: &str) -> AResult<Target<'_>> {
        // Keep the message in step with `no_key_message`.
        let t = self.admin_token(token)?;
        let record = self
            .keys
            .inventory()
            .key(&t.config.label, name)
            .map_err(inv_err)?;
        let key = record.and_then(|r| self.keys.key(r.id));
        match key {
            Some(key) => Ok(Target { token: t, key }),
            None => fail(
                AdminErrorKind::NotFound,
                format!("no key {name:?} on token {:?}", t.config.label),
            ),
        }
    }

    pub(crate) fn refresh(&self, key_id: i64) -> AResult<()> {
        self.keys.refresh(key_id).map_err(inv_err)
    }

    pub(crate) fn reload(&self, t: &Target<'_>) -> AResult<Arc<KeyView>> {
        self.refresh(t.key.record.id)?;
        self.keys.key(t.key.record.id).map_or_else(
            || {
                fail(
                    AdminErrorKind::NotFound,
                    format!("key {} is gone", t.label()),
                )
            },
            Ok,
        )
    }

    /// Applies one lifecycle change by `by` with its `lifecycle` trail
    /// records, in one inventory transaction (durable before it returns),
    /// and reloads the key's view: one record for the key's own move (or
    /// its creation) and one for each version that moves or is new,
    /// `operation` the action's name, reason `from <state> to <state>:
    /// <why>`. Nothing happens when the records cannot be written.
    ///
    /// A change of an existing key may take rights away: it closes the
    /// key's gate ([`crate::enforce::gate`]) from before the change until
    /// the view has it. The uses of the key that passed the old check and
    /// end within `[agent] change_wait_ms` have ended first (and queued
    /// their use records, which the trail stores first); one still running
    /// then, or passing the old check meanwhile, is checked again when it
    /// ends and withheld if the change refuses it, recorded after the
    /// change's records. A backend that hangs delays the change by that
    /// bound at most, and the uses of other keys not at all.
    pub(crate) fn apply_change(
        &self,
        by: &Actor,
        operation: &str,
        why: &str,
        change: LifecycleChange,
    ) -> AResult<AppliedChange> {
        self.apply_change_for(by, operation, why, change, None)
    }

    /// [`Self::apply_change`] as the execution of an approved request
    /// (`request`: its id and outcome), which moves to `executed` in the
    /// same transaction; refused with nothing changed when the request is
    /// not `approved`.
    pub(crate) fn apply_change_for(
        &self,
        by: &Actor,
        operation: &str,
        why: &str,
        mut change: LifecycleChange,
        request: Option<(&str, &str)>,
    ) -> AResult<AppliedChange> {
        dry_run::commit_point(
            || describe_change(operation, &change, &self.keys),
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
        let Some(mut trail) = lifecycle_records(by, operation, why, &change, &self.keys) else {
            return fail(
                AdminErrorKind::NotFound,
                "the key is not in the agent's view: nothing changed",
            );
        };
        // Records the caller gives (a change that moves no state) follow.
        trail.append(&mut change.trail);
        change.trail = trail;
        let existing = match change.key {
            KeyChange::Create(_) => None,
            KeyChange::Update { key_id, .. } => Some(key_id),
        };
        let held = existing.map(|id| self.gates.change(id));
        let done = self.audit.commit(self.keys.inventory(), &change, request);
        let key_id = match &done {
            Ok(d) => Some(d.key.id),
            Err(_) => existing,
        };
        let refreshed = key_id.map_or(Ok(()), |id| self.refresh(id));
        drop(held);
        let done = done.map_err(|e| match e {
            crate::audit::CommitError::Trail => AdminError {
                kind: AdminErrorKind::Failed,
                message: format!("refused: {}; nothing changed", self.audit.cannot_write()),
            },
            crate::audit::CommitError::Store(e @ keyward_inventory::Error::Storage(_)) => {
                AdminError {
                    kind: AdminErrorKind::Failed,
                    message: format!(
                        "the change and its audit records could not be written ({}); \
                         nothing changed",
                        crate::audit::cause_of(&e)
                    ),
                }
            }
            crate::audit::CommitError::Store(e) => inv_err(e),
        })?;
        refreshed?;
        Ok(done)
    }
}

#[cfg(test)]
mod approval_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod test_roster;
#[cfg(test)]
mod tests;
