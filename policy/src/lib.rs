//! keyward-policy: the policy file and the pure decisions the agent takes
//! from it. No I/O but reading the policy file; no state; times are passed
//! in as [`std::time::SystemTime`].
//!
//! Layout:
//! - `policy.rs`: the validated [`Policy`] ([`Settings`], [`Application`],
//!   [`KeyClass`], [`Grant`]), its parser and validator
//!   ([`Policy::from_file`], [`Policy::from_str`], [`Policy::lab`]), and the
//!   agent's questions: who a peer is ([`Policy::application_for`],
//!   [`Policy::admit`]), whether a mechanism is allowed
//!   ([`Policy::mechanism_allowed`]), whether an application may use a key
//!   of a class ([`KeyClass::check_use`]).
//! - `policy/roster.rs`: the administrators' roster ([`Administrator`],
//!   [`Role`], [`AdministratorKey`]; [`Policy::administrator_for_uid`];
//!   the custodians' `share_recipient`s, [`Policy::custodians`]) and
//!   the quorums of the actions under dual control ([`Approvable`],
//!   [`Quorum`], [`Policy::quorum`] with the defaults applied). Parsed and
//!   checked; the agent enforces them in a coming release.
//! - keyward-domain's types, re-exported: [`KeyState`], [`Purpose`],
//!   [`Operation`], [`Algorithm`], [`Curve`], [`ApprovalStatus`] (each with
//!   its one text form).
//! - `lifecycle.rs`: [`Action`];
//!   the SP 800-57 state table ([`permits`]), transitions ([`transition`],
//!   [`needs_approval`]), what they do to a key's versions
//!   ([`version_transition`]) and rotations ([`Rotation`]): the one
//!   transition table of keyward; and cryptoperiod dates ([`Cryptoperiod`],
//!   [`effective_state`]).
//! - `template.rs`: generation templates judged against a class
//!   ([`check_generation`], [`check_key_pair_generation`]) and attribute
//!   changes ([`is_weakening`]), over a wire-independent [`Template`] view.
//! - `refusal.rs`: [`Refusal`], each variant declared with its `CK_RV`.
//! - `error.rs`: [`PolicyError`], `FILE:LINE:COLUMN: FIELD: MESSAGE`.
//! - `algorithm.rs` (curves to and from `CKA_EC_PARAMS`: [`CurveParams`]),
//!   `duration.rs` (`90d`), `mechanisms.rs` (`CKM_*` names ↔ values).
//!
//! The file format is documented by `example-policy.toml` beside this
//! crate's `Cargo.toml`; `lab-policy.toml` is [`Policy::lab`] as a file.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod algorithm;
mod duration;
mod error;
mod lifecycle;
mod mechanisms;
mod plural;
mod policy;
mod refusal;
mod rv;
mod template;

pub use algorithm::CurveParams;
pub use duration::{datetime_to_system_time, format_duration, parse_duration, MAX_DURATION};
pub use error::PolicyError;
pub use keyward_domain::{check_key_name, KEY_NAME_MAX};
pub use keyward_domain::{
    Algorithm, ApprovalStatus, Curve, Decision, KeyState, Operation, ParseError, Purpose,
    ReasonCode, ALGORITHM_FORMS,
};
pub use lifecycle::{
    effective_state, needs_approval, permits, request_transition, transition, version_transition,
    Action, Cryptoperiod, Rotation,
};
pub use mechanisms::{mechanism_by_name, mechanism_name};
pub use plural::plural;
pub use policy::{
    judge_key, Administrator, AdministratorKey, Application, Approvable, Grant, KeyClass,
    KeyFinding, KeyFindingKind, Mode, Peer, Policy, Quorum, Role, Settings, DEFAULT_APPROVAL_WAIT,
    DEFAULT_LIFETIME, DEFAULT_MAX_RECOVERY_WINDOW, MAX_APPROVAL_WAIT,
};
pub use refusal::{Mechanism, Refusal};
pub use rv::{
    rv_name, KEYWARD_CONFLICT, KEYWARD_FAILED, KEYWARD_INVALID, KEYWARD_NOT_FOUND, KEYWARD_REFUSED,
};
pub use template::{
    adoption_problems, check_change, check_derivation, check_generation, check_key_pair_generation,
    is_weakening, purpose_flags, Adjustments, AttrValue, KeyPairAdjustments, Template,
};

// CK_ULONG is u64 throughout keyward (LP64 Linux): the pkcs11-sys constants
// are used as u64 directly.
const _: () = assert!(std::mem::size_of::<pkcs11_sys::CK_ULONG>() == 8);
