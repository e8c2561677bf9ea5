//! The administrators' roster (`[[administrator]]`), their roles, and the
//! quorums (`[quorum.<action>]`) of the actions under dual control.
//!
//! The agent admits admin requests by the roster and its roles
//! ([`Role::may_request`]), and counts an administrator's decision on a
//! request when their signature verifies ([`AdministratorKey::verify`])
//! and their roles meet the action's [`Quorum`].

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Mode, Validator};
use crate::error::PolicyError;

/// What an administrator is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `security-officer`: runs the HSM and approves the actions that
    /// change the whole token (destroy, policy, token initialisation,
    /// backups).
    SecurityOfficer,
    /// `key-owner`: answers for the keys of some classes; approves their
    /// state changes and sensitive grants.
    KeyOwner,
    /// `operator`: day-to-day work (rotation, requests); approves nothing
    /// by default.
    Operator,
    /// `auditor`: reads the inventory and the audit log; changes nothing,
    /// approves nothing, and holds no other role.
    Auditor,
    /// `custodian`: holds a share of the backup protection; approves
    /// backup export and restore by default.
    Custodian,
}

impl Role {
    /// Whether this role may make the admin request named `name` (the
    /// stable names `keyward` requests carry: `key.create`, `grant.add`,
    /// ...) that changes something or uses the HSM. Reads of the
    /// inventory, the trail and the report are every role's (see
    /// [`Policy::admit_admin_request`](crate::Policy::admit_admin_request)).
    ///
    /// - security-officer: every request;
    /// - key-owner: every key request, grants, and certificates
    ///   (`cert.request`, `cert.self-sign`, `cert.import`);
    /// - operator: activation, rotation, verification, suspension,
    ///   discovery, PIN unlock;
    /// - operator also: `backup.create`, `backup.verify`;
    /// - custodian: `backup.share`, `backup.submit` (their share);
    /// - auditor: none;
    /// - and every role but the auditor: `request.approve`, `request.deny`
    ///   and `request.cancel` (whose decision counts is the quorum's to
    ///   say).
    pub fn may_request(self, name: &str) -> bool {
        // Deciding on a request (or withdrawing one's own) is every role's
        // that changes anything: the action's quorum says whose decision
        // counts.
        if matches!(name, "request.approve" | "request.deny" | "request.cancel") {
            return self.may_change();
        }
        match self {
            Role::SecurityOfficer => true,
            Role::KeyOwner => {
                name.starts_with("key.") || name.starts_with("grant.") || name.starts_with("cert.")
            }
            Role::Operator => matches!(
                name,
                "key.activate"
                    | "key.rotate"
                    | "key.verify"
                    | "key.suspend"
                    | "key.discover"
                    | "pin.unlock"
                    | "backup.create"
                    | "backup.verify"
            ),
            // A custodian fetches their own share and, in a disaster
            // recovery, submits it.
            Role::Custodian => matches!(name, "backup.share" | "backup.submit"),
            Role::Auditor => false,
        }
    }

    /// Every role, in the order the policy reference lists them.
    pub const ALL: [Role; 5] = [
        Role::SecurityOfficer,
        Role::KeyOwner,
        Role::Operator,
        Role::Auditor,
        Role::Custodian,
    ];

    /// The role's name in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SecurityOfficer => "security-officer",
            Role::KeyOwner => "key-owner",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Custodian => "custodian",
        }
    }

    /// The role named `name` in the policy file.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether holders of the role may change anything (request or approve
    /// an action): false for the auditor only, who is read-only.
    pub fn may_change(self) -> bool {
        self != Role::Auditor
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The public key an administrator's decisions are checked with. The
/// private key stays with the administrator: a key file, or a key on
/// their own PKCS#11 token (`keyward` signs with either; the roster holds
/// the public half, which `keyward admin-key show` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdministratorKey {
    /// `ed25519:<64 hex digits>`: a 32-byte Ed25519 public key. Its length
    /// is checked here; whether the bytes are a point on the curve is
    /// checked when a signature is verified.
    Ed25519([u8; 32]),
    /// `p256:<hex>`: a SEC1 point, 65 bytes uncompressed (`04…`) or 33
    /// compressed (`02…`/`03…`). Length and prefix are checked here;
    /// whether it is on the curve when a signature is verified.
    P256(Vec<u8>),
}

impl AdministratorKey {
    /// Reads a `public_key` value; the error says what is wrong without
    /// repeating the value.
    pub fn parse(text: &str) -> Result<AdministratorKey, String> {
        const FORMS: &str = "expected \"ed25519:<64 hex digits>\" or \"p256:<hex SEC1 point>\"";
        if let Some(hex_text) = text.strip_prefix("ed25519:") {
            let bytes = decode_hex(hex_text, "ed25519")?;
            let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                format!(
                    "an ed25519 public key is 32 bytes (64 hex digits), not {}",
                    b.len()
                )
            })?;
            Ok(AdministratorKey::Ed25519(key))
        } else if let Some(hex_text) = text.strip_prefix("p256:") {
            let bytes = decode_hex(hex_text, "p256")?;
            match (bytes.len(), bytes.first()) {
                (65, Some(0x04)) | (33, Some(0x02 | 0x03)) => Ok(AdministratorKey::P256(bytes)),
                (65, _) => Err(
                    "an uncompressed p256 point (65 bytes) starts with 04".to_owned(),
                ),
                (33, _) => Err(
                    "a compressed p256 point (33 bytes) starts with 02 or 03".to_owned(),
                ),
                (n, _) => Err(format!(
                    "a p256 public key is a SEC1 point of 65 bytes (uncompressed) or 33 (compressed), not {n}"
                )),
            }
        } else if text.starts_with("pkcs11:") {
            Err(
                "the roster holds the public key: for a key on a token write its \
                 \"p256:...\" or \"ed25519:...\" form (`keyward admin-key show pkcs11:...` \
                 prints it); the token's URI is given when signing"
                    .to_owned(),
            )
        } else {
            Err(format!("unknown key kind: {FORMS}"))
        }
    }

    /// Whether `self` and `other` are the same key (a P-256 point written
    /// compressed and uncompressed is one key).
    pub fn same_key(&self, other: &AdministratorKey) -> bool {
        match (self, other) {
            (AdministratorKey::Ed25519(a), AdministratorKey::Ed25519(b)) => a == b,
            (AdministratorKey::P256(a), AdministratorKey::P256(b)) => {
                // Points on the curve compare as points; anything else
                // (refused when it signs) by its bytes.
                match (
                    p256::PublicKey::from_sec1_bytes(a),
                    p256::PublicKey::from_sec1_bytes(b),
                ) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => a == b,
                }
            }
            _ => false,
        }
    }

    /// The key in the roster's text form (`ed25519:<hex>`, `p256:<hex>`).
    pub fn to_text(&self) -> String {
        match self {
            AdministratorKey::Ed25519(k) => format!("ed25519:{}", hex::encode(k)),
            AdministratorKey::P256(k) => format!("p256:{}", hex::encode(k)),
        }
    }

    /// Checks `signature` over `message`: Ed25519 (64 bytes, strict
    /// verification: no small-order keys, no malleable signatures), or
    /// ECDSA P-256 with SHA-256 over `message` (64 bytes `r‖s`, the form a
    /// PKCS#11 token's `CKM_ECDSA` returns). The error says what failed,
    /// never the bytes.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), String> {
        match self {
            AdministratorKey::Ed25519(key) => {
                use ed25519_dalek::{Signature, VerifyingKey};
                let key = VerifyingKey::from_bytes(key)
                    .map_err(|_| "the roster's ed25519 key is not a valid point".to_owned())?;
                let signature = Signature::from_slice(signature).map_err(|_| {
                    format!("an ed25519 signature is 64 bytes, not {}", signature.len())
                })?;
                key.verify_strict(message, &signature)
                    .map_err(|_| "the ed25519 signature does not verify".to_owned())
            }
            AdministratorKey::P256(point) => {
                use p256::ecdsa::signature::Verifier;
                use p256::ecdsa::{Signature, VerifyingKey};
                let key = VerifyingKey::from_sec1_bytes(point)
                    .map_err(|_| "the roster's p256 key is not a point on the curve".to_owned())?;
                let signature = Signature::from_slice(signature).map_err(|_| {
                    format!(
                        "a p256 signature is 64 bytes r||s with 0 < r, s < n (got {} bytes)",
                        signature.len()
                    )
                })?;
                key.verify(message, &signature)
                    .map_err(|_| "the p256 signature does not verify".to_owned())
            }
        }
    }
}

fn decode_hex(text: &str, kind: &str) -> Result<Vec<u8>, String> {
    hex::decode(text).map_err(|_| format!("the {kind} key is not hex (an even number of 0-9, a-f)"))
}

/// `[[administrator]]`: a person who requests and approves the actions
/// under dual control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Administrator {
    /// `name`, unique among administrators (same rules as application
    /// names).
    pub name: String,
    /// `uids`: the local users this administrator runs as (at least one;
    /// each uid belongs to one administrator only).
    pub uids: Vec<u32>,
    /// `roles`: at least one, without repeats; an auditor holds no other.
    pub roles: Vec<Role>,
    /// `public_key`: the key requests and approvals are signed with.
    pub public_key: AdministratorKey,
    /// `share_recipient`: a custodian's age X25519 recipient (`age1...`,
    /// canonical lower-case form), to which their share of the backup key
    /// is sealed. Only a custodian has one; no two administrators share
    /// one.
    pub share_recipient: Option<String>,
}

impl Administrator {
    /// Whether the administrator holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the administrator holds one of `roles`.
    pub fn has_any_role(&self, roles: &[Role]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }
}

/// An action under dual control: it takes effect once a [`Quorum`] of
/// administrators approved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Approvable {
    /// `destroy`: destroying a managed key.
    Destroy,
    /// `resume`: a suspended key back to active.
    Resume,
    /// `deactivate-suspended`: a suspended key to deactivated.
    DeactivateSuspended,
    /// `leave-compromised`: a compromised key to destroyed-compromised or
    /// back into use.
    LeaveCompromised,
    /// `recovery-window`: opening a window in which a key may be recovered.
    RecoveryWindow,
    /// `sensitive-grant`: a grant on a class marked sensitive.
    SensitiveGrant,
    /// `policy-apply`: a new policy file taking effect.
    PolicyApply,
    /// `backup-export`: exporting keys, wrapped, for another deployment.
    BackupExport,
    /// `backup-init`: making the backup key and its custodians' shares.
    BackupInit,
    /// `backup-restore`: restoring a backup onto a token.
    BackupRestore,
    /// `token-init`: initialising (wiping) a token.
    TokenInit,
    /// `sign-once`: one signature of one data with a key whose class sets
    /// `approve_each_use`. Its requester is an application.
    SignOnce,
}

impl Approvable {
    /// Every action under dual control.
    pub const ALL: [Approvable; 12] = [
        Approvable::Destroy,
        Approvable::Resume,
        Approvable::DeactivateSuspended,
        Approvable::LeaveCompromised,
        Approvable::RecoveryWindow,
        Approvable::SensitiveGrant,
        Approvable::PolicyApply,
        Approvable::BackupExport,
        Approvable::BackupInit,
        Approvable::BackupRestore,
        Approvable::TokenInit,
        Approvable::SignOnce,
    ];

    /// The action's name in the policy file (`[quorum.<name>]`).
    pub fn as_str(self) -> &'static str {
        match self {
            Approvable::Destroy => "destroy",
            Approvable::Resume => "resume",
            Approvable::DeactivateSuspended => "deactivate-suspended",
            Approvable::LeaveCompromised => "leave-compromised",
            Approvable::RecoveryWindow => "recovery-window",
            Approvable::SensitiveGrant => "sensitive-grant",
            Approvable::PolicyApply => "policy-apply",
            Approvable::BackupExport => "backup-export",
            Approvable::BackupInit => "backup-init",
            Approvable::BackupRestore => "backup-restore",
            Approvable::TokenInit => "token-init",
            Approvable::SignOnce => "sign-once",
        }
    }

    /// The action named `name` in the policy file.
    pub fn parse(name: &str) -> Option<Approvable> {
        Approvable::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The quorum when the policy has no `[quorum.<action>]` table.
    ///
    /// Actions that lose keys or change the whole token (destroy,
    /// policy-apply, token-init) need two security officers; backups two
    /// of the security officers and custodians. In those, the requester,
    /// when one of them, is one of the two (`requester_counts`): the
    /// two-person rule. State changes of one key (resume,
    /// deactivate-suspended, leave-compromised, recovery-window) and
    /// sensitive grants need one security officer or key owner other than
    /// the requester. Every request lives 24 hours. A single use
    /// (sign-once) needs one security officer or key owner; its requester
    /// is an application, never an administrator, so there is no
    /// requester to leave out (`requester_counts` is true), and its request
    /// lives as long as the class's `approval_wait`.
    pub fn default_quorum(self) -> Quorum {
        use Role::{Custodian, KeyOwner, SecurityOfficer};
        let (approvals, roles, requester_counts) = match self {
            Approvable::Destroy | Approvable::PolicyApply | Approvable::TokenInit => {
                (2, vec![SecurityOfficer], true)
            }
            Approvable::BackupExport | Approvable::BackupInit | Approvable::BackupRestore => {
                (2, vec![SecurityOfficer, Custodian], true)
            }
            Approvable::Resume
            | Approvable::DeactivateSuspended
            | Approvable::LeaveCompromised
            | Approvable::RecoveryWindow
            | Approvable::SensitiveGrant => (1, vec![SecurityOfficer, KeyOwner], false),
            Approvable::SignOnce => (1, vec![SecurityOfficer, KeyOwner], true),
        };
        Quorum {
            approvals,
            roles,
            requester_counts,
            lifetime: DEFAULT_LIFETIME,
        }
    }
}

impl fmt::Display for Approvable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request's lifetime when its quorum table names none: 24 hours.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// `[quorum.<action>]`: who must approve an action, how many, and for how
/// long a request waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    /// `approvals`: how many distinct administrators approve (at least 1).
    pub approvals: u32,
    /// `roles`: an approval counts when its administrator holds one of
    /// these (never `auditor`).
    pub roles: Vec<Role>,
    /// `requester_counts`: whether the request is its requester's approval
    /// (when the requester holds one of `roles`). False: the approvals come
    /// from administrators other than the requester.
    pub requester_counts: bool,
    /// `lifetime`: a request not approved within this lapses.
    pub lifetime: Duration,
}

impl Quorum {
    /// How many administrators holding one of `roles` the roster needs so
    /// that the quorum can be met whichever of them asks: `approvals`, one
    /// more when the requester's approval does not count.
    pub fn holders_needed(&self) -> u32 {
        if self.requester_counts {
            self.approvals
        } else {
            self.approvals.saturating_add(1)
        }
    }
}

impl super::Policy {
    /// The custodians a backup key's shares are sealed to: the
    /// administrators with the role `custodian` and a `share_recipient`, in
    /// roster order.
    pub fn custodians(&self) -> Vec<keyward_escrow::Custodian> {
        self.administrators
            .iter()
            .filter(|a| a.has_role(Role::Custodian))
            .filter_map(|a| {
                a.share_recipient
                    .as_ref()
                    .map(|recipient| keyward_escrow::Custodian {
                        name: a.name.clone(),
                        recipient: recipient.clone(),
                    })
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The file as serde reads it.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdministrator {
    name: Spanned<String>,
    uids: Spanned<Vec<Spanned<u32>>>,
    roles: Spanned<Vec<Spanned<String>>>,
    public_key: Spanned<String>,
    share_recipient: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuorum {
    approvals: Spanned<u32>,
    roles: Spanned<Vec<Spanned<String>>>,
    requester_counts: Option<Spanned<bool>>,
    lifetime: Option<Spanned<String>>,
}

/// `[quorum.*]` as read: action name to table.
pub(super) type RawQuorums = BTreeMap<Spanned<String>, Spanned<RawQuorum>>;

impl Validator<'_> {
    /// `[[administrator]]`, in file order.
    pub(super) fn administrators(
        &self,
        raw: &[Spanned<RawAdministrator>],
    ) -> Result<Vec<Administrator>, PolicyError> {
        let mut administrators: Vec<Administrator> = Vec::new();
        for admin in raw {
            let admin = admin.get_ref();
            let name = self.name(&admin.name, "administrator")?;
            let what = format!("administrator \"{name}\"");
            if administrators.iter().any(|a| a.name == name) {
                return Err(self.err(
                    admin.name.span(),
                    format!("{what}, name"),
                    format!("a second administrator is named \"{name}\""),
                ));
            }
            if admin.uids.get_ref().is_empty() {
                return Err(self.err(
                    admin.uids.span(),
                    format!("{what}, uids"),
                    "an administrator needs at least one uid",
                ));
            }
            let mut uids = Vec::new();
            for uid in admin.uids.get_ref() {
                let value = *uid.get_ref();
                let problem = if uids.contains(&value) {
                    Some(format!("uid {value} is listed twice"))
                } else {
                    administrators
                        .iter()
                        .find(|a| a.uids.contains(&value))
                        .map(|a| format!("uid {value} is already administrator \"{}\"'s: a uid belongs to one administrator", a.name))
                };
                if let Some(problem) = problem {
                    return Err(self.err(uid.span(), format!("{what}, uids"), problem));
                }
                uids.push(value);
            }
            let roles = self.roles(
                &admin.roles,
                &format!("{what}, roles"),
                "an administrator needs at least one role",
            )?;
            if roles.contains(&Role::Auditor) && roles.len() > 1 {
                return Err(self.err(
                    admin.roles.span(),
                    format!("{what}, roles"),
                    "an auditor is read-only and holds no other role",
                ));
            }
            let public_key = AdministratorKey::parse(admin.public_key.get_ref())
                .map_err(|m| self.err(admin.public_key.span(), format!("{what}, public_key"), m))?;
            if let Some(other) = administrators
                .iter()
                .find(|a| a.public_key.same_key(&public_key))
            {
                return Err(self.err(
                    admin.public_key.span(),
                    format!("{what}, public_key"),
                    format!(
                        "administrator \"{}\" has this key already: each administrator signs with a key of their own",
                        other.name
                    ),
                ));
            }
            let share_recipient = self.share_recipient(admin, &what, &roles, &administrators)?;
            administrators.push(Administrator {
                name,
                uids,
                roles,
                public_key,
                share_recipient,
            });
        }
        Ok(administrators)
    }

    /// `share_recipient`: an age X25519 recipient, of a custodian, no other
    /// administrator's.
    fn share_recipient(
        &self,
        admin: &RawAdministrator,
        what: &str,
        roles: &[Role],
        before: &[Administrator],
    ) -> Result<Option<String>, PolicyError> {
        let Some(raw) = &admin.share_recipient else {
            return Ok(None);
        };
        let field = format!("{what}, share_recipient");
        let recipient = keyward_escrow::parse_recipient(raw.get_ref())
            .map_err(|e| self.err(raw.span(), field.as_str(), e.to_string()))?;
        if !roles.contains(&Role::Custodian) {
            return Err(self.err(
                raw.span(),
                field,
                "only a custodian holds a share of the backup key: add the role \"custodian\" or remove share_recipient",
            ));
        }
        if let Some(other) = before
            .iter()
            .find(|a| a.share_recipient.as_ref() == Some(&recipient))
        {
            return Err(self.err(
                raw.span(),
                field,
                format!(
                    "administrator \"{}\" has this recipient already: each custodian opens their share with an identity of their own",
                    other.name
                ),
            ));
        }
        Ok(Some(recipient))
    }

    /// A non-empty list of known roles, without repeats.
    fn roles(
        &self,
        list: &Spanned<Vec<Spanned<String>>>,
        field: &str,
        empty: &str,
    ) -> Result<Vec<Role>, PolicyError> {
        if list.get_ref().is_empty() {
            return Err(self.err(list.span(), field, empty));
        }
        let mut roles = Vec::new();
        for r in list.get_ref() {
            let role = Role::parse(r.get_ref()).ok_or_else(|| {
                self.err(
                    r.span(),
                    field,
                    format!(
                        "\"{}\" is not one of security-officer, key-owner, operator, auditor, custodian",
                        r.get_ref()
                    ),
                )
            })?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        Ok(roles)
    }

    /// `[quorum.*]`, checked against the roster (which starts at
    /// `roster_span`). `notes` gathers, in lab mode, what strict mode
    /// refuses.
    pub(super) fn quorums(
        &self,
        raw: &RawQuorums,
        administrators: &[Administrator],
        roster_span: Range<usize>,
        mode: Mode,
        notes: &mut Vec<String>,
    ) -> Result<BTreeMap<Approvable, Quorum>, PolicyError> {
        let mut quorums = BTreeMap::new();
        for (action_name, table) in raw {
            let action = Approvable::parse(action_name.get_ref()).ok_or_else(|| {
                let names: Vec<_> = Approvable::ALL.iter().map(|a| a.as_str()).collect();
                self.err(
                    action_name.span(),
                    format!("quorum.{}", action_name.get_ref()),
                    format!(
                        "\"{}\" is not an action under dual control: one of {}",
                        action_name.get_ref(),
                        names.join(", ")
                    ),
                )
            })?;
            let what = format!("quorum.{action}");
            let q = table.get_ref();
            if *q.approvals.get_ref() == 0 {
                return Err(self.err(
                    q.approvals.span(),
                    format!("{what}, approvals"),
                    "at least one approval: leave the table out for the default",
                ));
            }
            let roles = self.roles(
                &q.roles,
                &format!("{what}, roles"),
                "a quorum needs at least one role that approves",
            )?;
            if roles.contains(&Role::Auditor) {
                return Err(self.err(
                    q.roles.span(),
                    format!("{what}, roles"),
                    "an auditor is read-only and approves nothing",
                ));
            }
            let lifetime = match &q.lifetime {
                None => DEFAULT_LIFETIME,
                Some(l) if action == Approvable::SignOnce => {
                    return Err(self.err(
                        l.span(),
                        format!("{what}, lifetime"),
                        "a single use waits as long as its class's approval_wait says",
                    ))
                }
                Some(l) => self.duration(l, format!("{what}, lifetime"))?,
            };
            let requester_counts = match &q.requester_counts {
                Some(r) if action == Approvable::SignOnce => {
                    return Err(self.err(
                        r.span(),
                        format!("{what}, requester_counts"),
                        "the requester of a single use is an application, not an administrator: requester_counts does not apply",
                    ))
                }
                Some(r) => *r.get_ref(),
                None => action == Approvable::SignOnce,
            };
            let quorum = Quorum {
                approvals: *q.approvals.get_ref(),
                roles,
                requester_counts,
                lifetime,
            };
            if administrators.is_empty() {
                let message = "there is no [[administrator]]: without a roster dual control is off";
                match mode {
                    Mode::Strict => return Err(self.err(table.span(), what, message)),
                    Mode::Lab => notes.push(format!("{what}: {message}")),
                }
            }
            quorums.insert(action, quorum);
        }
        if !administrators.is_empty() {
            for action in Approvable::ALL {
                let explicit = quorums.get(&action);
                let quorum = explicit.cloned().unwrap_or_else(|| action.default_quorum());
                let holders = administrators
                    .iter()
                    .filter(|a| a.has_any_role(&quorum.roles))
                    .count();
                let needed = quorum.holders_needed();
                if u32::try_from(holders).unwrap_or(u32::MAX) >= needed {
                    continue;
                }
                let roles: Vec<_> = quorum.roles.iter().map(|r| r.as_str()).collect();
                let what = format!("quorum.{action}");
                let message = format!(
                    "{}{} approval(s) from {}{} need {needed} administrator(s) with those roles; the roster has {holders}",
                    if explicit.is_some() { "" } else { "the default: " },
                    quorum.approvals,
                    roles.join(" or "),
                    if quorum.requester_counts { "" } else { " other than the requester" },
                );
                match mode {
                    Mode::Strict => {
                        // The table, or the roster when the default applies.
                        let span = raw
                            .iter()
                            .find(|(k, _)| k.get_ref() == action.as_str())
                            .map(|(_, t)| t.span())
                            .unwrap_or_else(|| roster_span.clone());
                        return Err(self.err(span, what, message));
                    }
                    Mode::Lab => notes.push(format!("{what}: {message}")),
                }
            }
        }
        Ok(quorums)
    }
}
