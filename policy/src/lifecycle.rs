//! The decisions that follow from key states, operations and purposes
//! (the types are keyward-domain's) alone: the NIST SP 800-57 state table, the transitions between
//! states, and which transitions need approval.
//!
//! Times are [`SystemTime`]: the agent passes `SystemTime::now()`, the
//! inventory stores what it likes and converts at the edge.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::Refusal;

use keyward_domain::{KeyState, Operation};

/// The state table: may a key in `state` be used for `op` at `now`?
///
/// | state | protect | process |
/// |---|---|---|
/// | pre-activation | no | no |
/// | active | yes | yes |
/// | suspended | no | no |
/// | deactivated | no | while `now < process_until` |
/// | compromised | no | no |
/// | destroyed | no (the key does not exist: `CKR_KEY_HANDLE_INVALID`) | no |
///
/// A deactivated key without a known `process_until` processes nothing:
/// an unknown end is treated as an end already passed.
pub fn permits(
    state: KeyState,
    op: Operation,
    now: SystemTime,
    process_until: Option<SystemTime>,
) -> Result<(), Refusal> {
    match state {
        KeyState::Active => Ok(()),
        KeyState::Destroyed => Err(Refusal::KeyDestroyed),
        KeyState::Deactivated if op.is_process() => match process_until {
            Some(until) if now < until => Ok(()),
            _ => Err(Refusal::ProcessPeriodEnded { operation: op }),
        },
        KeyState::PreActivation
        | KeyState::Suspended
        | KeyState::Deactivated
        | KeyState::Compromised => Err(Refusal::KeyState {
            state,
            operation: op,
        }),
    }
}

/// The dates that follow from a key class and a key's activation time.
///
/// Both periods and the rotation interval are counted from activation
/// (SP 800-57's originator-usage and recipient-usage periods start
/// together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cryptoperiod {
    /// When the key was activated.
    pub activated: SystemTime,
    /// Protect operations end here: the key becomes deactivated.
    pub protect_until: SystemTime,
    /// Process operations end here.
    pub process_until: SystemTime,
    /// When the scheduler should rotate the key, if the class rotates.
    pub rotate_at: Option<SystemTime>,
}

impl Cryptoperiod {
    /// The dates for a key activated at `activated`. A period so long that
    /// the date cannot be represented ends at activation instead: the safe
    /// direction (validation keeps periods far below that).
    pub fn new(
        activated: SystemTime,
        protect_period: Duration,
        process_period: Duration,
        rotation_interval: Option<Duration>,
    ) -> Cryptoperiod {
        let add = |d: Duration| activated.checked_add(d).unwrap_or(activated);
        Cryptoperiod {
            activated,
            protect_until: add(protect_period),
            process_until: add(process_period),
            rotate_at: rotation_interval.map(add),
        }
    }
}

/// The state a key is in at `now`, given its stored state and its dates: an
/// active key whose protect period has passed is deactivated, even if the
/// scheduler has not run yet. A missed tick never extends a key's life.
pub fn effective_state(
    stored: KeyState,
    now: SystemTime,
    period: Option<&Cryptoperiod>,
) -> KeyState {
    match (stored, period) {
        (KeyState::Active, Some(p)) if now >= p.protect_until => KeyState::Deactivated,
        _ => stored,
    }
}

/// A lifecycle action taken by an administrator or the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// pre-activation → active.
    Activate,
    /// active → suspended.
    Suspend,
    /// suspended → active.
    Resume,
    /// active or suspended → deactivated.
    Deactivate,
    /// any state but destroyed → compromised.
    Revoke,
    /// any state but destroyed → destroyed.
    Destroy,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 6] = [
        Action::Activate,
        Action::Suspend,
        Action::Resume,
        Action::Deactivate,
        Action::Revoke,
        Action::Destroy,
    ];

    /// The action's name on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::Activate => "activate",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::Deactivate => "deactivate",
            Action::Revoke => "revoke",
            Action::Destroy => "destroy",
        }
    }

    /// The action named `name`.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }

    /// "activated", "destroyed", ...: for messages.
    pub fn past_tense(self) -> &'static str {
        match self {
            Action::Activate => "activated",
            Action::Suspend => "suspended",
            Action::Resume => "resumed",
            Action::Deactivate => "deactivated",
            Action::Revoke => "revoked",
            Action::Destroy => "destroyed",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The state `action` leads to from `from`, or why it cannot be taken.
///
/// ```text
/// pre-activation ─activate→ active ─deactivate→ deactivated
///                           active ─suspend→ suspended ─resume→ active
///                                            suspended ─deactivate→ deactivated
/// any but compromised, destroyed ─revoke→ compromised
/// any but destroyed ─destroy→ destroyed
/// ```
///
/// Compromised is terminal but for destruction: a compromised key is
/// replaced (emergency rotation), never brought back.
pub fn transition(from: KeyState, action: Action) -> Result<KeyState, Refusal> {
    use KeyState::*;
    let to = match (from, action) {
        (PreActivation, Action::Activate) => Active,
        (Active, Action::Suspend) => Suspended,
        (Suspended, Action::Resume) => Active,
        (Active | Suspended, Action::Deactivate) => Deactivated,
        (PreActivation | Active | Suspended | Deactivated, Action::Revoke) => Compromised,
        (PreActivation | Active | Suspended | Deactivated | Compromised, Action::Destroy) => {
            Destroyed
        }
        _ => return Err(Refusal::InvalidTransition { from, action }),
    };
    Ok(to)
}

/// Whether `action` from `from` needs approval (dual control) before it is
/// taken: every step out of suspended or compromised that gives the key
/// back some use (resume, deactivate), and destroy, which cannot be undone.
///
/// Revoke never needs approval, whatever the state: it only takes rights
/// away, and an emergency must not wait for a quorum. An action that is no
/// transition from `from` needs no approval: [`transition`] refuses it.
pub fn needs_approval(from: KeyState, action: Action) -> bool {
    if transition(from, action).is_err() {
        return false;
    }
    match action {
        Action::Destroy => true,
        Action::Revoke => false,
        _ => matches!(from, KeyState::Suspended | KeyState::Compromised),
    }
}

/// [`transition`], refusing with `CKR_ACTION_PROHIBITED` an action that
/// [`needs_approval`] unless `approved` (the quorum has been met).
pub fn request_transition(
    from: KeyState,
    action: Action,
    approved: bool,
) -> Result<KeyState, Refusal> {
    let to = transition(from, action)?;
    if needs_approval(from, action) && !approved {
        return Err(Refusal::NeedsApproval { from, action });
    }
    Ok(to)
}

/// What a key's `action` does to one of its versions, in `state`: the
/// state the version moves to, or `None` when it stays. Called for every
/// version when [`transition`] has allowed the key's own move.
///
/// ```text
/// activate: pre-activation versions become active
/// revoke:   every version not compromised or destroyed becomes compromised
/// destroy:  every version not destroyed is destroyed
/// suspend, resume, deactivate: the key's own state moves, its versions keep
///           theirs (a use needs both states to permit it)
/// ```
pub fn version_transition(action: Action, state: KeyState) -> Option<KeyState> {
    use KeyState::*;
    match (action, state) {
        (Action::Activate, PreActivation) => Some(Active),
        (Action::Revoke, PreActivation | Active | Suspended | Deactivated) => Some(Compromised),
        (Action::Destroy, PreActivation | Active | Suspended | Deactivated | Compromised) => {
            Some(Destroyed)
        }
        _ => None,
    }
}

/// A rotation: a new version of a key that protects from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rotation {
    /// Requested by an administrator or due by the key's class: an active
    /// key stays active, its older versions become deactivated (they
    /// process until the key's process period ends).
    Planned,
    /// The second step of an emergency rotation (`revoke --rotate`), after
    /// the revocation: the compromised key comes back active with its new
    /// version; the compromised versions never come back.
    Emergency,
}

impl Rotation {
    /// The state of keys this rotation is for.
    pub fn rotates(self) -> KeyState {
        match self {
            Rotation::Planned => KeyState::Active,
            Rotation::Emergency => KeyState::Compromised,
        }
    }

    /// The key's state after the rotation from `from`, or why the key
    /// cannot rotate so.
    pub fn key_state(self, from: KeyState) -> Result<KeyState, Refusal> {
        if from != self.rotates() {
            return Err(Refusal::CannotRotate {
                from,
                rotation: self,
            });
        }
        Ok(KeyState::Active)
    }

    /// The state an older version in `state` moves to, or `None` when it
    /// stays: a version is only ever moved further along the lifecycle
    /// (a planned rotation does not bring a compromised version back to
    /// deactivated).
    pub fn demotes(self, state: KeyState) -> Option<KeyState> {
        let to = match self {
            Rotation::Planned => KeyState::Deactivated,
            Rotation::Emergency => KeyState::Compromised,
        };
        (state < to).then_some(to)
    }
}

impl fmt::Display for Rotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rotation::Planned => "rotation",
            Rotation::Emergency => "emergency rotation",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkcs11_sys::{
        CKR_ACTION_PROHIBITED, CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_HANDLE_INVALID,
    };

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn protect_and_process_partition_the_operations() {
        let protect: Vec<_> = Operation::ALL
            .into_iter()
            .filter(|o| o.is_protect())
            .collect();
        let process: Vec<_> = Operation::ALL
            .into_iter()
            .filter(|o| o.is_process())
            .collect();
        use Operation::*;
        assert_eq!(protect, [Sign, Encrypt, Wrap, Derive, Digest]);
        assert_eq!(process, [Verify, Decrypt, Unwrap]);
    }

    /// Every state × every operation, before and after the process period
    /// ends and with no known end.
    #[test]
    fn state_table_full_matrix() {
        use KeyState::*;
        let now = t(1_000);
        let cases = [
            (Some(t(2_000)), "within the process period"),
            (Some(t(1_000)), "process period ends now"),
            (Some(t(500)), "process period ended"),
            (None, "no process period known"),
        ];
        for (until, what) in cases {
            let within = until.is_some_and(|u| now < u);
            for state in KeyState::ALL {
                for op in Operation::ALL {
                    let got = permits(state, op, now, until);
                    let expected_ok = match state {
                        PreActivation | Suspended | Compromised | Destroyed => false,
                        Active => true,
                        Deactivated => op.is_process() && within,
                    };
                    assert_eq!(got.is_ok(), expected_ok, "{state} {op} ({what}): {got:?}");
                    if let Err(refusal) = got {
                        let ckr = if state == Destroyed {
                            CKR_KEY_HANDLE_INVALID
                        } else {
                            CKR_KEY_FUNCTION_NOT_PERMITTED
                        };
                        assert_eq!(refusal.ckr(), ckr, "{state} {op}");
                        assert!(!refusal.to_string().is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn only_destroyed_is_invisible() {
        for state in KeyState::ALL {
            assert_eq!(state.is_visible(), state != KeyState::Destroyed);
        }
    }

    #[test]
    fn transitions_full_matrix() {
        use Action::*;
        use KeyState::*;
        // (from, action) → Some(to) when allowed, and whether it needs approval.
        let expected = |from: KeyState, action: Action| -> Option<(KeyState, bool)> {
            match (from, action) {
                (PreActivation, Activate) => Some((Active, false)),
                (Active, Suspend) => Some((Suspended, false)),
                (Suspended, Resume) => Some((Active, true)),
                (Active, Deactivate) => Some((Deactivated, false)),
                (Suspended, Deactivate) => Some((Deactivated, true)),
                (PreActivation | Active | Suspended | Deactivated, Revoke) => {
                    Some((Compromised, false))
                }
                (Destroyed, Destroy) => None,
                (_, Destroy) => Some((Destroyed, true)),
                _ => None,
            }
        };
        for from in KeyState::ALL {
            for action in Action::ALL {
                let got = transition(from, action);
                match expected(from, action) {
                    Some((to, approval)) => {
                        assert_eq!(got, Ok(to), "{from} {action}");
                        assert_eq!(needs_approval(from, action), approval, "{from} {action}");
                        let unapproved = request_transition(from, action, false);
                        if approval {
                            let refusal = unapproved.unwrap_err();
                            assert_eq!(refusal, Refusal::NeedsApproval { from, action });
                            assert_eq!(refusal.ckr(), CKR_ACTION_PROHIBITED);
                        } else {
                            assert_eq!(unapproved, Ok(to), "{from} {action}");
                        }
                        assert_eq!(request_transition(from, action, true), Ok(to));
                    }
                    None => {
                        assert_eq!(
                            got,
                            Err(Refusal::InvalidTransition { from, action }),
                            "{from} {action}"
                        );
                        assert!(!needs_approval(from, action));
                        assert!(request_transition(from, action, true).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn versions_follow_their_key_full_matrix() {
        use Action::*;
        use KeyState::*;
        for action in Action::ALL {
            for state in KeyState::ALL {
                let expected = match (action, state) {
                    (Activate, PreActivation) => Some(Active),
                    (Revoke, Compromised | Destroyed) => None,
                    (Revoke, _) => Some(Compromised),
                    (Destroy, Destroyed) => None,
                    (Destroy, _) => Some(Destroyed),
                    _ => None,
                };
                assert_eq!(
                    version_transition(action, state),
                    expected,
                    "{action} {state}"
                );
            }
        }
    }

    #[test]
    fn rotations_full_matrix() {
        use KeyState::*;
        for from in KeyState::ALL {
            assert_eq!(
                Rotation::Planned.key_state(from).ok(),
                (from == Active).then_some(Active),
                "{from}"
            );
            assert_eq!(
                Rotation::Emergency.key_state(from).ok(),
                (from == Compromised).then_some(Active),
                "{from}"
            );
            let planned = match from {
                PreActivation | Active | Suspended => Some(Deactivated),
                _ => None,
            };
            assert_eq!(Rotation::Planned.demotes(from), planned, "{from}");
            let emergency = match from {
                Compromised | Destroyed => None,
                _ => Some(Compromised),
            };
            assert_eq!(Rotation::Emergency.demotes(from), emergency, "{from}");
        }
        let r = Rotation::Planned.key_state(Suspended).unwrap_err();
        assert_eq!(
            r.to_string(),
            "a suspended key cannot rotate: rotation is for active keys only"
        );
        assert_eq!(r.ckr(), CKR_ACTION_PROHIBITED);
    }

    #[test]
    fn effective_state_deactivates_expired_keys() {
        let day = Duration::from_secs(86_400);
        let p = Cryptoperiod::new(t(0), day, 2 * day, Some(day / 2));
        assert_eq!(p.protect_until, t(86_400));
        assert_eq!(p.process_until, t(2 * 86_400));
        assert_eq!(p.rotate_at, Some(t(43_200)));
        use KeyState::*;
        assert_eq!(effective_state(Active, t(86_399), Some(&p)), Active);
        assert_eq!(effective_state(Active, t(86_400), Some(&p)), Deactivated);
        assert_eq!(effective_state(Active, t(86_400), None), Active);
        for s in [
            PreActivation,
            Suspended,
            Deactivated,
            Compromised,
            Destroyed,
        ] {
            assert_eq!(effective_state(s, t(10 * 86_400), Some(&p)), s);
        }
        // Unrepresentable end dates fall back to activation.
        let huge = Cryptoperiod::new(t(5), Duration::MAX, Duration::MAX, None);
        assert_eq!(huge.protect_until, t(5));
    }

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::from_name(a.name()), Some(a));
        }
    }
}
