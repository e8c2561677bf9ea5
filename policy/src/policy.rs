//! The validated policy, its parser, and the questions the agent asks it:
//! who is this peer, may it use this mechanism, may it do this with a key of
//! that class.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use toml::Spanned;

use crate::duration::{datetime_to_system_time, parse_duration};
use crate::error::PolicyError;
use crate::lifecycle::{effective_state, permits, Cryptoperiod};
use crate::mechanisms::mechanism_by_name;
use crate::refusal::{Mechanism, Refusal};
use crate::{Algorithm, KeyState, Operation, Purpose};

mod roster;
mod standards;

pub use roster::{Administrator, AdministratorKey, Approvable, Quorum, Role, DEFAULT_LIFETIME};
pub use standards::{judge_key, KeyFinding, KeyFindingKind};

/// How strictly the agent applies the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every rule, for every object; unknown peers get no token.
    Strict,
    /// For development and conformance suites: objects outside a key class
    /// behave as on a plain PKCS#11 token (any template, any mechanism the
    /// allow-list lets through), and local peers running as the agent's own
    /// uid or as root are admitted without an `[[application]]` entry (see
    /// [`Policy::admit`]). Managed keys keep every rule.
    Lab,
}

impl Mode {
    /// The mode's name in the policy file.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::Lab => "lab",
        }
    }
}

/// `[settings]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `mode`.
    pub mode: Mode,
    /// `default_class`: the class of keys an application generates itself.
    pub default_class: Option<String>,
    /// `pin_max_attempts`: consecutive wrong PINs before the PIN locks;
    /// 0 turns lockout off.
    pub pin_max_attempts: u32,
    /// `mechanisms`: the allow-list, sorted; `None` allows every mechanism.
    pub mechanisms: Option<Vec<u64>>,
}

/// `[[application]]`: a program the agent serves, recognised by its peer
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// `name`, unique.
    pub name: String,
    /// `description`, free text.
    pub description: Option<String>,
    /// `uid`: the peer's user id must be this.
    pub uid: Option<u32>,
    /// `gid`: the peer's primary group id (from `SO_PEERCRED`) must be this;
    /// supplementary groups are not considered.
    pub gid: Option<u32>,
    /// `exe`: the peer's `/proc/<pid>/exe` must be exactly this path.
    pub exe: Option<PathBuf>,
    /// `certificate_subject`: a remote peer (mutual TLS) whose verified
    /// client certificate has exactly this subject, as RFC 4514 writes it
    /// (`"CN=web-1"`, `"CN=web-1,O=Example"`). Survives renewal.
    pub certificate_subject: Option<String>,
    /// `certificate_sha256`: a remote peer whose verified client
    /// certificate's DER encoding has this SHA-256 digest (64 lowercase hex
    /// digits; colons and upper case are accepted in the file). Stricter
    /// than the subject: a renewed certificate needs a new entry.
    pub certificate_sha256: Option<String>,
    /// `share_objects_with`: in strict mode, the applications that find and
    /// read the unmanaged token objects this one made (data objects,
    /// certificates, public keys); only their maker changes or destroys
    /// them. Each names another application of the policy.
    pub share_objects_with: Vec<String>,
}

impl Application {
    /// Whether a peer matches every criterion this application sets. An
    /// application with `exe` never matches a peer whose executable is
    /// unknown.
    pub fn matches(&self, uid: u32, gid: u32, exe: Option<&Path>) -> bool {
        !self.is_remote()
            && self.uid.is_none_or(|u| u == uid)
            && self.gid.is_none_or(|g| g == gid)
            && self
                .exe
                .as_deref()
                .is_none_or(|want| exe.is_some_and(|have| have == want))
    }

    /// Whether the entry names remote peers (by their client certificate):
    /// then it never matches a local peer, and an entry with uid, gid or exe
    /// never matches a remote one.
    pub fn is_remote(&self) -> bool {
        self.certificate_subject.is_some() || self.certificate_sha256.is_some()
    }

    /// Whether a remote peer whose verified certificate has `subject` (RFC
    /// 4514) and DER digest `sha256` (lowercase hex) matches every
    /// certificate criterion this entry sets. An entry without one never
    /// matches a remote peer.
    pub fn matches_certificate(&self, subject: &str, sha256: &str) -> bool {
        self.is_remote()
            && self
                .certificate_subject
                .as_deref()
                .is_none_or(|s| s == subject)
            && self
                .certificate_sha256
                .as_deref()
                .is_none_or(|f| f == sha256)
    }

    /// How specific the entry is: exe counts 4, uid 2, gid 1 (for remote
    /// entries: the fingerprint 2, the subject 1). Among the entries a peer
    /// matches, the most specific wins.
    fn specificity(&self) -> u8 {
        if self.is_remote() {
            return 2 * u8::from(self.certificate_sha256.is_some())
                + u8::from(self.certificate_subject.is_some());
        }
        4 * u8::from(self.exe.is_some())
            + 2 * u8::from(self.uid.is_some())
            + u8::from(self.gid.is_some())
    }
}

/// One entry of a class's `grants`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The application's name.
    pub application: String,
    /// What it may do with keys of the class.
    pub operations: Vec<Operation>,
    /// `until`: the grant ends at this time (just-in-time access).
    pub until: Option<SystemTime>,
}

impl Grant {
    fn is_current(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// `[[class]]`: what keys of a kind are for, how they are made, how long
/// they live and who uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClass {
    /// `name`, unique.
    pub name: String,
    /// `description`, free text.
    pub description: Option<String>,
    /// `purpose`.
    pub purpose: Purpose,
    /// `algorithms`: what generation may produce.
    pub algorithms: Vec<Algorithm>,
    /// `protect_period`: from activation, how long the key protects.
    pub protect_period: Duration,
    /// `process_period`: from activation, how long the key processes;
    /// never shorter than the protect period.
    pub process_period: Duration,
    /// `rotation_interval`: from activation, when the scheduler rotates;
    /// never longer than the protect period.
    pub rotation_interval: Option<Duration>,
    /// `backup`: whether keys may be exported, wrapped by the trusted
    /// backup key only.
    pub backup: bool,
    /// `scope`: compliance labels, free text.
    pub scope: Vec<String>,
    /// `grants`.
    pub grants: Vec<Grant>,
    /// `approve_each_use`: each `C_Sign` with a key of the class waits for
    /// a quorum's approval of that one signature (`[quorum.sign-once]`),
    /// at most this long (`approval_wait`); `None`: no per-use approval.
    pub per_use_approval: Option<Duration>,
    /// `sensitive`: with a roster, a grant on a key of this class
    /// (`keyward grant add`) is an action under the `sensitive-grant`
    /// quorum instead of taking effect at once.
    pub sensitive: bool,
    /// `max_recovery_window`: the longest recovery window (verify and
    /// decrypt only) a compromised key of this class may be given;
    /// [`DEFAULT_MAX_RECOVERY_WINDOW`] when the class names none, `0s`: none.
    pub max_recovery_window: Duration,
    /// `certificate_warning`: how long before a key's certificate expires
    /// the report flags it (an expired one is always flagged); `None`:
    /// only once expired.
    pub certificate_warning: Option<Duration>,
    /// `legacy`: the class keeps algorithms below 112-bit security (NIST
    /// SP 800-131A) knowingly; without it the policy check refuses them
    /// and the report flags existing keys that have one.
    pub legacy: bool,
}

/// How long a `C_Sign` waits for its approval when the class sets no
/// `approval_wait`: under the module's default call timeout (60 s).
pub const DEFAULT_APPROVAL_WAIT: Duration = Duration::from_secs(50);

/// The longest `approval_wait`: a signing call is not held longer.
pub const MAX_APPROVAL_WAIT: Duration = Duration::from_secs(600);

/// The longest recovery window of a compromised key whose class names no
/// `max_recovery_window` (or that has no class in the policy): 30 days.
pub const DEFAULT_MAX_RECOVERY_WINDOW: Duration = Duration::from_secs(30 * 86_400);

impl KeyClass {
    /// The dates of a key of this class activated at `activated`.
    pub fn cryptoperiod(&self, activated: SystemTime) -> Cryptoperiod {
        Cryptoperiod::new(
            activated,
            self.protect_period,
            self.process_period,
            self.rotation_interval,
        )
    }

    /// Whether `application` may `op` with keys of this class at `now`:
    /// the operation must fit the purpose, and a current grant must name it.
    pub fn check_grant(
        &self,
        application: &str,
        op: Operation,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        if !self.purpose.allows(op) {
            return Err(Refusal::PurposeMismatch {
                purpose: self.purpose,
                operation: op,
            });
        }
        let mut expired = false;
        for grant in self.grants.iter().filter(|g| g.application == application) {
            if grant.operations.contains(&op) {
                if grant.is_current(now) {
                    return Ok(());
                }
                expired = true;
            }
        }
        let (application, class) = (application.to_owned(), self.name.clone());
        Err(if expired {
            Refusal::GrantExpired {
                application,
                class,
                operation: op,
            }
        } else {
            Refusal::NotGranted {
                application,
                class,
                operation: op,
            }
        })
    }

    /// The operations `application` holds on keys of this class at `now`.
    /// Empty means the class's keys are invisible to it.
    pub fn granted_operations(&self, application: &str, now: SystemTime) -> Vec<Operation> {
        let set: BTreeSet<Operation> = self
            .grants
            .iter()
            .filter(|g| g.application == application && g.is_current(now))
            .flat_map(|g| g.operations.iter().copied())
            .collect();
        set.into_iter().collect()
    }

    /// Everything a use of a managed key checks, in order: purpose, grant,
    /// then the state table on the key's effective state (an active key past
    /// its protect period is deactivated, and processes only until its
    /// process period ends).
    pub fn check_use(
        &self,
        application: &str,
        op: Operation,
        stored_state: KeyState,
        now: SystemTime,
        period: Option<&Cryptoperiod>,
    ) -> Result<(), Refusal> {
        self.check_grant(application, op, now)?;
        let state = effective_state(stored_state, now, period);
        permits(state, op, now, period.map(|p| p.process_until))
    }
}

/// A peer the agent serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer<'p> {
    /// A listed application.
    Application(&'p Application),
    /// Lab mode: an unlisted local peer running as the agent's own uid or
    /// as root.
    Lab,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file (or name) it was read from.
    pub origin: String,
    /// `[settings]`.
    pub settings: Settings,
    /// `[[application]]`, in file order.
    pub applications: Vec<Application>,
    /// `[[class]]`, in file order.
    pub classes: Vec<KeyClass>,
    /// `[[administrator]]`, in file order: the roster. Empty: dual control
    /// is off.
    pub administrators: Vec<Administrator>,
    /// `[quorum.<action>]` as written; [`Policy::quorum`] applies the
    /// defaults.
    pub quorums: BTreeMap<Approvable, Quorum>,
    /// Warning-level notes from validation: in lab mode, what strict mode
    /// refuses (a quorum the roster cannot meet, quorums without a
    /// roster; not in strict mode), a `legacy` class's weak algorithms,
    /// and the [`Policy::period_warnings`].
    pub notes: Vec<String>,
    /// The notes that say a class's cryptoperiod is longer than NIST SP
    /// 800-57 Part 1 recommends for its purpose (also in `notes`):
    /// `keyward policy check --strict` refuses a policy with any.
    pub period_warnings: Vec<String>,
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Policy::from_str(&text, &path.display().to_string())
    }

    /// Parses and validates policy text; `origin` names it in errors (a
    /// file name).
    pub fn from_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| PolicyError::from_toml(text, origin, &e))?;
        Validator { text, origin }.policy(raw)
    }

    /// The built-in policy of the testbed's lab mode: `mode = "lab"`, no
    /// applications (peers running as the agent's uid or as root are
    /// admitted), no classes, no PIN lockout, every mechanism. The same as
    /// `lab-policy.toml`.
    pub fn lab() -> Policy {
        Policy {
            origin: "built-in lab policy".to_owned(),
            settings: Settings {
                mode: Mode::Lab,
                default_class: None,
                pin_max_attempts: 0,
                mechanisms: None,
            },
            applications: Vec::new(),
            classes: Vec::new(),
            administrators: Vec::new(),
            quorums: BTreeMap::new(),
            notes: Vec::new(),
            period_warnings: Vec::new(),
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.settings.mode
    }

    /// The application named `name`.
    pub fn application(&self, name: &str) -> Option<&Application> {
        self.applications.iter().find(|a| a.name == name)
    }

    /// The class named `name`.
    pub fn class(&self, name: &str) -> Option<&KeyClass> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// The administrator named `name`.
    pub fn administrator(&self, name: &str) -> Option<&Administrator> {
        self.administrators.iter().find(|a| a.name == name)
    }

    /// The administrator a local user is (validation keeps each uid to one
    /// administrator).
    pub fn administrator_for_uid(&self, uid: u32) -> Option<&Administrator> {
        self.administrators.iter().find(|a| a.uids.contains(&uid))
    }

    /// Whether the local user `uid` may make the admin request named
    /// `name` (`read_only`: it only reads the inventory, the trail or the
    /// report). Without a roster, everyone the admin socket admits may (as
    /// before dual control). With one, only an administrator of the roster
    /// (by uid), with a role that allows it ([`Role::may_request`]); reads
    /// are every role's. The error says why, for the administrator.
    pub fn admit_admin_request(
        &self,
        uid: u32,
        name: &str,
        read_only: bool,
    ) -> Result<Option<&Administrator>, String> {
        if !self.dual_control() {
            return Ok(None);
        }
        let Some(admin) = self.administrator_for_uid(uid) else {
            return Err(format!(
                "uid {uid} is no administrator of the policy's roster"
            ));
        };
        if read_only || admin.roles.iter().any(|r| r.may_request(name)) {
            return Ok(Some(admin));
        }
        let roles: Vec<&str> = admin.roles.iter().map(|r| r.as_str()).collect();
        Err(format!(
            "administrator {:?} ({}) may not {name}",
            admin.name,
            roles.join(", ")
        ))
    }

    /// Whether the policy has a roster: admin requests are then admitted by
    /// it ([`Policy::admit_admin_request`]), and actions under dual control
    /// need approvals (enforced with signed approvals in a coming release).
    pub fn dual_control(&self) -> bool {
        !self.administrators.is_empty()
    }

    /// The quorum of `action`: its `[quorum.<action>]` table, or
    /// [`Approvable::default_quorum`].
    pub fn quorum(&self, action: Approvable) -> Quorum {
        self.quorums
            .get(&action)
            .cloned()
            .unwrap_or_else(|| action.default_quorum())
    }

    /// The listed application a peer is, if any.
    ///
    /// Every criterion an entry sets (uid, gid, exe) must match. Among the
    /// entries that match, the most specific wins: an entry with `exe`
    /// beats any without, then `uid` beats `gid` only. Validation refuses
    /// two entries with the same criteria, so there is never a tie.
    pub fn application_for(&self, uid: u32, gid: u32, exe: Option<&Path>) -> Option<&Application> {
        self.applications
            .iter()
            .filter(|a| a.matches(uid, gid, exe))
            .max_by_key(|a| a.specificity())
    }

    /// The listed application a remote peer is, by its verified client
    /// certificate's `subject` (RFC 4514) and DER digest `sha256`
    /// (lowercase hex). Only entries that name a certificate are
    /// candidates, and there is no lab fallback: a remote peer needs an
    /// entry in every mode.
    pub fn application_for_certificate(&self, subject: &str, sha256: &str) -> Option<&Application> {
        self.applications
            .iter()
            .filter(|a| a.matches_certificate(subject, sha256))
            .max_by_key(|a| a.specificity())
    }

    /// Whether the agent serves a peer, and as what. Listed applications
    /// come first in every mode. In lab mode, an unlisted peer whose uid is
    /// the agent's own (`agent_uid`) or root (0) is served as
    /// [`Peer::Lab`]; anyone else gets no token. In strict mode unknown
    /// peers get no token.
    pub fn admit(
        &self,
        uid: u32,
        gid: u32,
        exe: Option<&Path>,
        agent_uid: u32,
    ) -> Option<Peer<'_>> {
        if let Some(app) = self.application_for(uid, gid, exe) {
            return Some(Peer::Application(app));
        }
        (self.settings.mode == Mode::Lab && (uid == agent_uid || uid == 0)).then_some(Peer::Lab)
    }

    /// Whether a mechanism is on the allow-list (always, without a list).
    /// A mechanism that is not allowed is neither listed nor usable.
    pub fn mechanism_allowed(&self, ckm: u64) -> bool {
        self.settings
            .mechanisms
            .as_ref()
            .is_none_or(|list| list.binary_search(&ckm).is_ok())
    }

    /// [`Policy::mechanism_allowed`] as a refusal (`CKR_MECHANISM_INVALID`).
    pub fn check_mechanism(&self, ckm: u64) -> Result<(), Refusal> {
        if self.mechanism_allowed(ckm) {
            Ok(())
        } else {
            Err(Refusal::MechanismNotAllowed {
                mechanism: Mechanism(ckm),
            })
        }
    }

    /// The class for a key an application generates itself: the default
    /// class. Without one, lab mode answers `None` (the key is an unmanaged
    /// object, as on a plain token) and strict mode refuses
    /// (`CKR_ACTION_PROHIBITED`).
    pub fn class_for_generation(&self) -> Result<Option<&KeyClass>, Refusal> {
        match (&self.settings.default_class, self.settings.mode) {
            (Some(name), _) => Ok(self.class(name)),
            (None, Mode::Lab) => Ok(None),
            (None, Mode::Strict) => Err(Refusal::GenerationNotPermitted {
                reason: format!(
                    "{}: no default_class: applications may not generate keys",
                    self.origin
                ),
            }),
        }
    }

    /// Whether the token's SO may set or reset PINs (`C_InitPIN`,
    /// `C_SetPIN` of the SO PIN, `C_InitToken`): in lab mode, as on a plain token; in
    /// strict mode PINs are the administrator's (`keyward-agent set-pin`),
    /// so that no one application's SO can reset another's PIN
    /// (`CKR_ACTION_PROHIBITED`).
    pub fn check_pin_management_by_so(&self) -> Result<(), Refusal> {
        match self.settings.mode {
            Mode::Lab => Ok(()),
            Mode::Strict => Err(Refusal::PinsAdministered),
        }
    }

    /// Whether a PIN with `failures` consecutive wrong attempts is locked
    /// (`CKR_PIN_LOCKED`).
    pub fn check_pin_failures(&self, failures: u32) -> Result<(), Refusal> {
        let max = self.settings.pin_max_attempts;
        if max != 0 && failures >= max {
            Err(Refusal::PinLocked { failures })
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// The file as serde reads it, before validation.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    settings: RawSettings,
    #[serde(default)]
    application: Vec<Spanned<RawApplication>>,
    #[serde(default)]
    class: Vec<RawClass>,
    #[serde(default)]
    administrator: Vec<Spanned<roster::RawAdministrator>>,
    #[serde(default)]
    quorum: roster::RawQuorums,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    mode: Spanned<String>,
    default_class: Option<Spanned<String>>,
    #[serde(default = "default_pin_max_attempts")]
    pin_max_attempts: u32,
    mechanisms: Option<Spanned<Vec<Spanned<String>>>>,
}

fn default_pin_max_attempts() -> u32 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    name: Spanned<String>,
    description: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    exe: Option<Spanned<String>>,
    certificate_subject: Option<Spanned<String>>,
    certificate_sha256: Option<Spanned<String>>,
    #[serde(default)]
    share_objects_with: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    name: Spanned<String>,
    description: Option<String>,
    purpose: Spanned<String>,
    algorithms: Spanned<Vec<Spanned<String>>>,
    protect_period: Spanned<String>,
    process_period: Spanned<String>,
    rotation_interval: Option<Spanned<String>>,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    scope: Vec<String>,
    #[serde(default)]
    grants: Vec<Spanned<RawGrant>>,
    approve_each_use: Option<Spanned<bool>>,
    approval_wait: Option<Spanned<String>>,
    #[serde(default)]
    sensitive: bool,
    max_recovery_window: Option<Spanned<String>>,
    certificate_warning: Option<Spanned<String>>,
    legacy: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    application: Spanned<String>,
    operations: Spanned<Vec<Spanned<String>>>,
    until: Option<Spanned<toml::value::Datetime>>,
}

// ---------------------------------------------------------------------------
// Validation: every error names the file, line, column and field.

struct Validator<'t> {
    text: &'t str,
    origin: &'t str,
}

impl Validator<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        PolicyError::at(self.text, self.origin, span, field, message)
    }

    fn name(&self, name: &Spanned<String>, what: &str) -> Result<String, PolicyError> {
        let ok = !name.get_ref().is_empty()
            && name
                .get_ref()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(name.get_ref().clone())
        } else {
            Err(self.err(
                name.span(),
                format!("{what}, name"),
                format!(
                    "\"{}\" is not a name: use letters, digits, '-', '_' and '.'",
                    name.get_ref()
                ),
            ))
        }
    }

    fn duration(&self, value: &Spanned<String>, field: String) -> Result<Duration, PolicyError> {
        parse_duration(value.get_ref()).map_err(|m| self.err(value.span(), field, m))
    }

    fn policy(&self, raw: RawPolicy) -> Result<Policy, PolicyError> {
        let mut applications: Vec<Application> = Vec::new();
        for app in &raw.application {
            let application = self.application(app, &applications)?;
            applications.push(application);
        }
        self.check_sharing(&applications, &raw.application)?;
        let mut classes: Vec<KeyClass> = Vec::new();
        let mut standard_notes = Vec::new();
        let mut period_warnings = Vec::new();
        for class in &raw.class {
            let name = self.name(&class.name, "class")?;
            if classes.iter().any(|c| c.name == name) {
                return Err(self.err(
                    class.name.span(),
                    format!("class \"{name}\", name"),
                    format!("a second class is named \"{name}\""),
                ));
            }
            let checked = self.class(class, name, &applications)?;
            self.standards(class, &checked, &mut standard_notes, &mut period_warnings)?;
            classes.push(checked);
        }

        let settings = self.settings(&raw.settings, &classes)?;
        let administrators = self.administrators(&raw.administrator)?;
        let roster_span = raw.administrator.first().map(|a| a.span()).unwrap_or(0..0);
        let mut notes = Vec::new();
        if administrators.is_empty() {
            for (class, raw_class) in classes.iter().zip(&raw.class) {
                if class.per_use_approval.is_none() {
                    continue;
                }
                let what = format!("class \"{}\", approve_each_use", class.name);
                let message = "there is no [[administrator]]: nobody could approve a use";
                match settings.mode {
                    Mode::Strict => {
                        let span = raw_class
                            .approve_each_use
                            .as_ref()
                            .map_or_else(|| raw_class.name.span(), |a| a.span());
                        return Err(self.err(span, what, message));
                    }
                    Mode::Lab => notes.push(format!(
                        "{what}: without a roster one approval by any admin socket user lets a use through"
                    )),
                }
            }
        }
        let quorums = self.quorums(
            &raw.quorum,
            &administrators,
            roster_span,
            settings.mode,
            &mut notes,
        )?;
        notes.extend(standard_notes);
        Ok(Policy {
            origin: self.origin.to_owned(),
            settings,
            applications,
            classes,
            administrators,
            quorums,
            notes,
            period_warnings,
        })
    }

    /// One `[[application]]`, checked against the ones before it.
    fn application(
        &self,
        app: &Spanned<RawApplication>,
        applications: &[Application],
    ) -> Result<Application, PolicyError> {
        let app_span = app.span();
        let app = app.get_ref();
        let name = self.name(&app.name, "application")?;
        let what = format!("application \"{name}\"");
        if applications.iter().any(|a| a.name == name) {
            return Err(self.err(
                app.name.span(),
                format!("{what}, name"),
                format!("a second application is named \"{name}\""),
            ));
        }
        let (certificate_subject, certificate_sha256) = self.certificate(app, &what)?;
        let remote = certificate_subject.is_some() || certificate_sha256.is_some();
        if remote && (app.uid.is_some() || app.gid.is_some() || app.exe.is_some()) {
            return Err(self.err(
                app_span,
                format!("{what}, certificate_subject"),
                "an application names either local peer credentials (uid, gid, exe) or a \
                 client certificate (certificate_subject, certificate_sha256), not both",
            ));
        }
        if !remote && app.uid.is_none() && app.gid.is_none() {
            return Err(self.err(
                app_span,
                format!("{what}, uid"),
                "an application needs a uid, a gid or both",
            ));
        }
        let exe = match &app.exe {
            None => None,
            Some(exe) => {
                let path = PathBuf::from(exe.get_ref());
                let clean = path.is_absolute()
                    && path
                        .components()
                        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
                if !clean {
                    return Err(self.err(
                        exe.span(),
                        format!("{what}, exe"),
                        format!(
                            "\"{}\" must be an absolute path without \".\" or \"..\" (as /proc/<pid>/exe shows it)",
                            exe.get_ref()
                        ),
                    ));
                }
                Some(path)
            }
        };
        let application = Application {
            name,
            description: app.description.clone(),
            uid: app.uid,
            gid: app.gid,
            exe,
            certificate_subject,
            certificate_sha256,
            share_objects_with: app
                .share_objects_with
                .iter()
                .map(|n| n.get_ref().clone())
                .collect(),
        };
        if let Some(twin) = applications.iter().find(|a| {
            (
                a.uid,
                a.gid,
                &a.exe,
                &a.certificate_subject,
                &a.certificate_sha256,
            ) == (
                application.uid,
                application.gid,
                &application.exe,
                &application.certificate_subject,
                &application.certificate_sha256,
            )
        }) {
            let (field, same) = if remote {
                (
                    "certificate_subject",
                    "same certificate_subject and certificate_sha256",
                )
            } else {
                ("uid", "same uid, gid and exe")
            };
            return Err(self.err(
                app_span,
                format!("{what}, {field}"),
                format!(
                    "{same} as application \"{}\": a peer could not tell them apart",
                    twin.name
                ),
            ));
        }
        Ok(application)
    }

    /// An application's certificate criteria: the subject as written
    /// (non-empty, `ATTR=value` pairs), the fingerprint normalised to 64
    /// lowercase hex digits.
    fn certificate(
        &self,
        app: &RawApplication,
        what: &str,
    ) -> Result<(Option<String>, Option<String>), PolicyError> {
        let subject = match &app.certificate_subject {
            None => None,
            Some(s) => {
                let v = s.get_ref().trim();
                let ok = !v.is_empty()
                    && v.split(',').all(|rdn| {
                        rdn.split_once('=')
                            .is_some_and(|(k, val)| !k.trim().is_empty() && !val.is_empty())
                    });
                if !ok {
                    return Err(self.err(
                        s.span(),
                        format!("{what}, certificate_subject"),
                        format!(
                            "\"{}\" is not a subject like \"CN=web-1\" or \"CN=web-1,O=Example\"",
                            s.get_ref()
                        ),
                    ));
                }
                Some(v.to_owned())
            }
        };
        let sha256 = match &app.certificate_sha256 {
            None => None,
            Some(f) => {
                let hex: String = f
                    .get_ref()
                    .chars()
                    .filter(|c| *c != ':')
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(self.err(
                        f.span(),
                        format!("{what}, certificate_sha256"),
                        "not a SHA-256 fingerprint: 64 hex digits (colons allowed), as \
                         `openssl x509 -noout -fingerprint -sha256` prints it",
                    ));
                }
                Some(hex)
            }
        };
        Ok((subject, sha256))
    }

    /// Objects are shared with applications the policy names, other than
    /// the application itself.
    fn check_sharing(
        &self,
        applications: &[Application],
        raw: &[Spanned<RawApplication>],
    ) -> Result<(), PolicyError> {
        for (app, raw_app) in applications.iter().zip(raw) {
            for with in &raw_app.get_ref().share_objects_with {
                let field = format!("application \"{}\", share_objects_with", app.name);
                if with.get_ref() == &app.name {
                    return Err(self.err(
                        with.span(),
                        field,
                        "an application sees its own objects already",
                    ));
                }
                if !applications.iter().any(|a| &a.name == with.get_ref()) {
                    return Err(self.err(
                        with.span(),
                        field,
                        format!("there is no application \"{}\"", with.get_ref()),
                    ));
                }
            }
        }

        Ok(())
    }

    /// `[settings]`: the mode, the default class (one of `classes`), the
    /// mechanism allow-list.
    fn settings(&self, s: &RawSettings, classes: &[KeyClass]) -> Result<Settings, PolicyError> {
        let mode = match s.mode.get_ref().as_str() {
            "strict" => Mode::Strict,
            "lab" => Mode::Lab,
            other => {
                return Err(self.err(
                    s.mode.span(),
                    "settings, mode",
                    format!("\"{other}\" is not one of strict, lab"),
                ))
            }
        };
        let default_class = match &s.default_class {
            None => None,
            Some(dc) => {
                if !classes.iter().any(|c| &c.name == dc.get_ref()) {
                    return Err(self.err(
                        dc.span(),
                        "settings, default_class",
                        format!("there is no class \"{}\"", dc.get_ref()),
                    ));
                }
                Some(dc.get_ref().clone())
            }
        };
        let mechanisms = match &s.mechanisms {
            None => None,
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(self.err(
                        list.span(),
                        "settings, mechanisms",
                        "an empty list allows no mechanism: leave `mechanisms` out to allow all",
                    ));
                }
                let mut values = Vec::new();
                for m in list.get_ref() {
                    values.push(self.mechanism(m)?);
                }
                values.sort_unstable();
                values.dedup();
                Some(values)
            }
        };
        Ok(Settings {
            mode,
            default_class,
            pin_max_attempts: s.pin_max_attempts,
            mechanisms,
        })
    }

    fn mechanism(&self, m: &Spanned<String>) -> Result<u64, PolicyError> {
        let text = m.get_ref();
        let hex = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        hex.or_else(|| mechanism_by_name(text)).ok_or_else(|| {
            self.err(
                m.span(),
                "settings, mechanisms",
                format!("\"{text}\" is not a known mechanism: write a CKM_ name or a hex value like 0x80000001"),
            )
        })
    }

    fn class(
        &self,
        class: &RawClass,
        name: String,
        apps: &[Application],
    ) -> Result<KeyClass, PolicyError> {
        let what = format!("class \"{name}\"");
        let purpose = class.purpose.get_ref().parse::<Purpose>().map_err(|_| {
            self.err(
                class.purpose.span(),
                format!("{what}, purpose"),
                format!(
                    "\"{}\" is not one of signing, encryption, wrapping, derivation, mac",
                    class.purpose.get_ref()
                ),
            )
        })?;
        if class.algorithms.get_ref().is_empty() {
            return Err(self.err(
                class.algorithms.span(),
                format!("{what}, algorithms"),
                "a class needs at least one algorithm",
            ));
        }
        let mut algorithms = Vec::new();
        for a in class.algorithms.get_ref() {
            let alg = Algorithm::parse(a.get_ref())
                .map_err(|m| self.err(a.span(), format!("{what}, algorithms"), m.to_string()))?;
            if !alg.fits(purpose) {
                return Err(self.err(
                    a.span(),
                    format!("{what}, algorithms"),
                    format!("{alg} keys cannot serve {purpose}"),
                ));
            }
            algorithms.push(alg);
        }
        let protect_period =
            self.duration(&class.protect_period, format!("{what}, protect_period"))?;
        let process_period =
            self.duration(&class.process_period, format!("{what}, process_period"))?;
        if process_period < protect_period {
            return Err(self.err(
                class.process_period.span(),
                format!("{what}, process_period"),
                format!(
                    "{} is shorter than the protect period {}: a key must process what it protected",
                    class.process_period.get_ref(),
                    class.protect_period.get_ref()
                ),
            ));
        }
        let rotation_interval = match &class.rotation_interval {
            None => None,
            Some(r) => {
                let interval = self.duration(r, format!("{what}, rotation_interval"))?;
                if interval > protect_period {
                    return Err(self.err(
                        r.span(),
                        format!("{what}, rotation_interval"),
                        format!(
                            "{} is longer than the protect period {}: the key would stop protecting before it is rotated",
                            r.get_ref(),
                            class.protect_period.get_ref()
                        ),
                    ));
                }
                Some(interval)
            }
        };
        let grants = class
            .grants
            .iter()
            .map(|g| self.grant(&what, g, purpose, apps))
            .collect::<Result<Vec<_>, _>>()?;
        let per_use_approval = self.per_use_approval(class, &what, purpose)?;
        let max_recovery_window = match &class.max_recovery_window {
            None => DEFAULT_MAX_RECOVERY_WINDOW,
            Some(w) => self.duration(w, format!("{what}, max_recovery_window"))?,
        };
        let certificate_warning = match &class.certificate_warning {
            None => None,
            Some(w) => Some(self.duration(w, format!("{what}, certificate_warning"))?),
        };
        Ok(KeyClass {
            name,
            description: class.description.clone(),
            purpose,
            algorithms,
            protect_period,
            process_period,
            rotation_interval,
            backup: class.backup,
            scope: class.scope.clone(),
            grants,
            per_use_approval,
            sensitive: class.sensitive,
            max_recovery_window,
            certificate_warning,
            legacy: class.legacy.as_ref().is_some_and(|l| *l.get_ref()),
        })
    }

    /// `approve_each_use` and `approval_wait` of class `what`: the wait
    /// when each use needs approval.
    fn per_use_approval(
        &self,
        class: &RawClass,
        what: &str,
        purpose: Purpose,
    ) -> Result<Option<Duration>, PolicyError> {
        let each_use = class.approve_each_use.as_ref();
        if !each_use.is_some_and(|e| *e.get_ref()) {
            return match &class.approval_wait {
                Some(w) => Err(self.err(
                    w.span(),
                    format!("{what}, approval_wait"),
                    "approval_wait needs approve_each_use = true",
                )),
                None => Ok(None),
            };
        }
        if !purpose.allows(Operation::Sign) {
            return Err(self.err(
                each_use.map_or(0..0, |e| e.span()),
                format!("{what}, approve_each_use"),
                format!("the approval is of a signature: purpose {purpose} does not sign"),
            ));
        }
        let Some(wait) = &class.approval_wait else {
            return Ok(Some(DEFAULT_APPROVAL_WAIT));
        };
        let field = format!("{what}, approval_wait");
        let value = self.duration(wait, field.clone())?;
        if value > MAX_APPROVAL_WAIT {
            return Err(self.err(
                wait.span(),
                field,
                format!(
                    "\"{}\" is longer than 10 minutes: a signing call is not held that long",
                    wait.get_ref()
                ),
            ));
        }
        Ok(Some(value))
    }

    /// One grant of class `what` (of purpose `purpose`) to one of `apps`.
    fn grant(
        &self,
        what: &str,
        grant: &Spanned<RawGrant>,
        purpose: Purpose,
        apps: &[Application],
    ) -> Result<Grant, PolicyError> {
        let g = grant.get_ref();
        let app = g.application.get_ref();
        if !apps.iter().any(|a| &a.name == app) {
            return Err(self.err(
                g.application.span(),
                format!("{what}, grants, application"),
                format!("there is no application \"{app}\""),
            ));
        }
        let field = format!("{what}, grant to \"{app}\", operations");
        if g.operations.get_ref().is_empty() {
            return Err(self.err(
                g.operations.span(),
                field,
                "a grant needs at least one operation",
            ));
        }
        let mut operations = Vec::new();
        for op in g.operations.get_ref() {
            let operation = op.get_ref().parse::<Operation>().map_err(|_| {
                self.err(
                    op.span(),
                    field.clone(),
                    format!(
                        "\"{}\" is not one of sign, verify, encrypt, decrypt, wrap, unwrap, derive, digest",
                        op.get_ref()
                    ),
                )
            })?;
            if !purpose.allows(operation) {
                let fitting: Vec<_> = purpose.operations().iter().map(|o| o.as_str()).collect();
                return Err(self.err(
                    op.span(),
                    field.clone(),
                    format!(
                        "{operation} does not fit purpose {purpose} (which allows {})",
                        fitting.join(", ")
                    ),
                ));
            }
            if !operations.contains(&operation) {
                operations.push(operation);
            }
        }
        let until = match &g.until {
            None => None,
            Some(u) => Some(datetime_to_system_time(u.get_ref()).map_err(|m| {
                self.err(u.span(), format!("{what}, grant to \"{app}\", until"), m)
            })?),
        };
        Ok(Grant {
            application: app.clone(),
            operations,
            until,
        })
    }
}

#[cfg(test)]
mod tests;
